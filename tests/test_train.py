"""The MPT training loop and experiment (mpt_ref/train): gradients of every loss and of the frozen base
model against central differences, optimizer parity with torch.optim, the task generator, every method
learning, the source checkpoint through every PEFT init, the statistics, reproducibility, and
``mpt-ref train-demo`` (--json schema, --plot, --quick)."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import sys

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

import mpt_ref.cli
import mpt_ref.errors
from mpt_ref import tolerances as tol
from mpt_ref.core.gradcheck import numeric_gradients
from mpt_ref.testing import strategies as hs
from mpt_ref.testing.assertions import assert_close
from mpt_ref.train.base_model import BaseModel, base_backward, base_forward
from mpt_ref.train.data import FAMILIES, FamilySpec, make_family, sample
from mpt_ref.train.experiment import QUICK, Settings, run
from mpt_ref.train.loop import Batch, train
from mpt_ref.train.losses import cross_entropy, distillation_kl, mse
from mpt_ref.train.methods import METHODS, Context
from mpt_ref.train.optim import SGD, Adam
from mpt_ref.train.report import caption, summarize
from mpt_ref.train.source import source_stage
from mpt_ref.train.stats import mean_ci, signs, t975


def numeric(f, x):
    return numeric_gradients(lambda p: f(p["x"]), {"x": x.copy()})["x"][1].reshape(x.shape)


@given(hs.finite_arrays((3, 4)), hs.finite_arrays((3, 4)), st.floats(0.5, 4.0))
def test_loss_gradients_match_central_differences(s, t, temperature):
    labels = np.array([0, 3, 1])
    for name, f in [("cross_entropy", lambda x: cross_entropy(x, labels)),
                    ("kl", lambda x: distillation_kl(x, t, temperature)), ("mse", lambda x: mse(x, t))]:
        assert_close(name, f(s)[1], numeric(lambda x: f(x)[0], s), tol.GRADCHECK_NONLINEAR_F64)


def test_kl_is_zero_for_equal_logits_and_positive_otherwise():
    z = np.array([[1.0, -2.0, 0.5]])
    assert distillation_kl(z, z, 2.0)[0] == pytest.approx(0.0, abs=1e-15)
    assert distillation_kl(z, z[:, ::-1], 2.0)[0] > 0


@given(st.integers(0, 2**16), st.booleans())
def test_base_model_prompt_gradient_matches_central_differences(seed, with_hidden):
    rng = np.random.default_rng(seed)
    model = BaseModel.init(vocab=11, dim=4, classes=3, seed=seed)
    prompt = rng.standard_normal((2, 3, 4))
    ids, mask = rng.integers(0, 11, (2, 5)), np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1.0]])
    dlogits, dhidden = rng.standard_normal((2, 3)), rng.standard_normal((2, 4)) if with_hidden else None

    def scalar(p):
        logits, hidden, _ = base_forward(model, p, ids, mask)
        return float((logits * dlogits).sum() + (0 if dhidden is None else (hidden * dhidden).sum()))

    _, _, cache = base_forward(model, prompt, ids, mask)
    assert_close("dprompt", base_backward(model, dlogits, dhidden, cache), numeric(scalar, prompt),
                 tol.GRADCHECK_NONLINEAR_F64)


def test_masked_tokens_do_not_change_the_output():
    model = BaseModel.init(11, 4, 2, seed=0)
    prompt = np.ones((1, 2, 4))
    mask = np.array([[1, 1, 0.0]])
    a = base_forward(model, prompt, np.array([[1, 2, 3]]), mask)[0]
    b = base_forward(model, prompt, np.array([[1, 2, 9]]), mask)[0]
    np.testing.assert_allclose(a, b, rtol=tol.EXACT.rtol, atol=tol.EXACT.atol)


@pytest.mark.peft
@pytest.mark.parametrize("name, ours, theirs", [
    ("sgd", lambda p: SGD(p, lr=0.1), lambda t, p: t.optim.SGD(p, lr=0.1)),
    ("sgd momentum nesterov wd", lambda p: SGD(p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01),
     lambda t, p: t.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)),
    ("sgd momentum dampening", lambda p: SGD(p, lr=0.1, momentum=0.5, dampening=0.3),
     lambda t, p: t.optim.SGD(p, lr=0.1, momentum=0.5, dampening=0.3)),
    ("adam defaults", lambda p: Adam(p), lambda t, p: t.optim.Adam(p)),
    ("adam wd", lambda p: Adam(p, lr=0.01, betas=(0.8, 0.9), eps=1e-6, weight_decay=0.1),
     lambda t, p: t.optim.Adam(p, lr=0.01, betas=(0.8, 0.9), eps=1e-6, weight_decay=0.1)),
])
def test_optimizers_match_torch_step_for_step(name, ours, theirs):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    params = {"a": rng.standard_normal((3, 2)), "b": rng.standard_normal(4)}
    tparams = [torch.tensor(v.copy(), requires_grad=True) for v in params.values()]
    opt, topt = ours(params), theirs(torch, tparams)
    for _ in range(6):
        grads = {k: rng.standard_normal(v.shape) for k, v in params.items()}
        for tp, g in zip(tparams, grads.values()):
            tp.grad = torch.tensor(g)
        opt.step(grads)
        topt.step()
        for (k, v), tp in zip(params.items(), tparams):
            assert_close(f"{name} {k}", v, tp.detach().numpy(), tol.PEFT_F64)



# ---- the task generator -------------------------------------------------------------------------------

SPEC = FamilySpec()


@given(st.sampled_from(FAMILIES), st.integers(0, 2**20), st.integers(1, 40))
@example("lexicon", 0, 16)  # the old generator forced ties to class 1: ~70 % of labels were 1
def test_sample_gives_exactly_half_of_each_class_with_labels_by_the_sign_of_summed_polarity(family, seed, half):
    task = make_family(family, ["t"], SPEC, seed)[0]
    ids, mask, labels = sample(task, 2 * half, SPEC, np.random.default_rng(seed))
    assert (labels == 0).sum() == half and (labels == 1).sum() == half  # chance is exactly 0.5
    score = np.array([sum(int(task.polarity[t]) for t, m in zip(row, mrow) if m) for row, mrow in zip(ids, mask)])
    assert np.all(score != 0)  # no ties: nothing is forced toward a class
    np.testing.assert_array_equal(labels, (score > 0).astype(int))
    lengths = mask.sum(axis=1)
    assert lengths.min() >= SPEC.min_length and lengths.max() <= SPEC.max_length
    assert np.all(ids[mask == 0] == 0) and np.all(ids[mask == 1] != 0)


def test_lexicon_family_shares_tokens_and_no_two_tasks_are_equal():
    tasks = make_family("lexicon", [f"t{i}" for i in range(12)], SPEC, seed=0)
    polar = [set(np.flatnonzero(t.polarity)) for t in tasks]
    for i in range(12):
        for j in range(i + 1, 12):
            assert polar[i] & polar[j], "tasks of a family share structure to transfer"
            assert not np.array_equal(tasks[i].polarity, tasks[j].polarity), "no target equals a source"
    conflicts = sum(bool(np.any(tasks[i].polarity * tasks[j].polarity < 0)) for i in range(12) for j in range(i))
    assert conflicts > 0, "domain tokens conflict between some tasks"


@pytest.mark.parametrize("call, match", [
    (lambda: make_family("nope", ["t"], SPEC, 0), "family"),
    (lambda: sample(make_family("lexicon", ["t"], SPEC, 0)[0], 3, SPEC, np.random.default_rng(0)), "even"),
    (lambda: make_family("lexicon", ["t"], FamilySpec(vocab=20), 0), "vocab"),
])
def test_generator_refuses_bad_arguments(call, match):
    with pytest.raises(mpt_ref.errors.ConfigError, match=match):
        call()


# ---- statistics -----------------------------------------------------------------------------------------

def test_ci_matches_the_textbook_t_interval_on_known_data():
    # 1..5: mean 3, s = sqrt(2.5), t_{0.975,4} = 2.776445 (tables): half-width 2.776445 * sqrt(2.5 / 5)
    got = mean_ci([1.0, 2.0, 3.0, 4.0, 5.0])
    assert got.mean == pytest.approx(3.0) and got.n == 5
    assert got.ci95 == pytest.approx(1.963243, abs=1e-6)
    # two values 0.1 and 0.3: s = 0.141421, t_{0.975,1} = 12.706205
    assert mean_ci([0.1, 0.3]).ci95 == pytest.approx(12.706205 * 0.1, rel=1e-6)
    assert np.isnan(mean_ci([0.7]).ci95)


@pytest.mark.parametrize("df, t", [(31, 2.039513), (40, 2.021075), (60, 2.000298), (120, 1.979930), (1000, 1.962339)])
def test_t_quantile_beyond_the_table_matches_published_values(df, t):
    assert t975(df) == pytest.approx(t, abs=2e-5)


@given(st.lists(st.floats(-1, 1), min_size=2, max_size=40))
def test_ci_half_width_is_t_times_the_standard_error(values):
    n = len(values)
    mean = sum(values) / n
    s = (sum((v - mean) ** 2 for v in values) / (n - 1)) ** 0.5
    got = mean_ci(values)
    assert got.mean == pytest.approx(mean, abs=1e-12)
    assert got.ci95 == pytest.approx(t975(n - 1) * s / n**0.5, rel=1e-9, abs=1e-12)


def test_signs_mark_each_replicate():
    assert signs([0.1, -0.2, 0.0]) == "+-0"


# ---- the stages and the methods -------------------------------------------------------------------------

TINY = Settings(replicates=2, sources=3, dev_targets=1, test_targets=1, shots=(2, 4), draws=1, teacher_steps=20,
                multitask_steps=24, target_steps=4, curve_every=8, test_examples=32, dev_examples=16,
                curve_examples=16, lr_grids=(("scratch", (0.1, 0.3)), ("transfer", (0.01,)), ("encoder", (0.01,))))


@pytest.fixture(scope="module")
def stage(tmp_path_factory):
    model = BaseModel.init(SPEC.vocab, TINY.dim, 2, seed=0)
    tasks = make_family("lexicon", ["s0", "s1", "s2", "target"], SPEC, seed=0)
    path = tmp_path_factory.mktemp("src") / "src.safetensors"
    return model, tasks, source_stage(model, tasks[:3], TINY, path, seed=0, progress=lambda m: None)


def test_teachers_start_from_one_common_init(tmp_path):
    s = dataclasses.replace(TINY, teacher_steps=1, curve_every=1)
    model = BaseModel.init(SPEC.vocab, s.dim, 2, seed=0)
    tasks = make_family("lexicon", ["a", "b", "c"], SPEC, seed=0)
    out = source_stage(model, tasks, s, tmp_path / "x.safetensors", seed=0, progress=lambda m: None)
    tables = [t.state_dict()["embedding.weight"] for t in out.teachers]
    for w in tables[1:]:  # one Adam step moves each entry by at most lr: the starts were equal
        assert np.abs(w - tables[0]).max() <= 2 * s.teacher_lr + 1e-12


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.name)
def test_every_method_learns_its_target_shots(stage, method):
    model, tasks, source = stage
    shots = Batch(*sample(tasks[3], 16, SPEC, np.random.default_rng(0)), 0)
    module = method.build(Context(TINY, model, source, shots, seed=0))
    lr = dict(TINY.lr_grids)[method.grid][-1] * (10 if method.grid != "scratch" else 1)
    hist = train(model, module, lambda step: shots, steps=30, lr=lr)
    assert np.all(np.isfinite(hist["loss"]))
    assert hist["loss"][-1] < hist["loss"][0] - 0.01, (method.name, hist["loss"][0], hist["loss"][-1])


def test_source_checkpoint_loads_through_every_peft_init(stage):
    model, tasks, source = stage
    sd = {k: v.astype(np.float32).astype(np.float64) for k, v in source.mpt.state_dict().items()}
    shots = Batch(*sample(tasks[3], 8, SPEC, np.random.default_rng(0)), 0)
    ctx = Context(TINY, model, source, shots, seed=0)
    built = {m.name: m.build(ctx).state_dict() for m in METHODS if m.name.startswith("MPT ")}
    for name in ("MPT AVERAGE_SOURCE_TASKS", "MPT EXACT_SOURCE_TASK", "MPT ONLY_SOURCE_SHARED"):
        np.testing.assert_array_equal(built[name]["embedding.weight"], sd["embedding.weight"])
    np.testing.assert_array_equal(built["MPT AVERAGE_SOURCE_TASKS"]["prefix_task_cols"][0],
                                  sd["prefix_task_cols"].astype(np.float32).mean(axis=0))
    assert any(np.array_equal(built["MPT EXACT_SOURCE_TASK"]["prefix_task_rows"][0], sd["prefix_task_rows"][k])
               for k in range(3))
    assert np.abs(built["MPT ONLY_SOURCE_SHARED"]["prefix_task_cols"]).max() < 0.2  # PEFT's N(0, 0.02^2)


def test_runs_are_reproducible_and_independent_of_the_process_count(tmp_path):
    a = run(TINY, tmp_path / "a", progress=lambda m: None, jobs=1)
    b = run(TINY, tmp_path / "b", progress=lambda m: None, jobs=2)
    strip = lambda reps: [{k: v for k, v in r.items() if k != "seconds"} for r in reps]  # noqa: E731
    assert strip(a) == strip(b)
    assert (tmp_path / "a" / "mpt_source.safetensors").read_bytes() == (tmp_path / "b" / "mpt_source.safetensors").read_bytes()
    c = run(dataclasses.replace(TINY, seed=1), tmp_path / "c", progress=lambda m: None)
    assert strip(c) != strip(a)


def test_learning_rates_are_chosen_without_the_test_targets(tmp_path):
    a = run(TINY, tmp_path / "a", progress=lambda m: None)
    b = run(dataclasses.replace(TINY, test_examples=48, draws=2), tmp_path / "b", progress=lambda m: None)
    assert [r["lr"] for r in a] == [r["lr"] for r in b]  # only the dev targets decide
    assert [r["accuracy"] for r in a] != [r["accuracy"] for r in b]  # while the test numbers did change


def test_summary_contrasts_are_paired_differences_per_replicate(tmp_path):
    reps = run(TINY, tmp_path, progress=lambda m: None)
    doc = summarize(reps, TINY)
    c = next(c for c in doc["contrasts"] if c["b"] == "PT random" and c["shots"] == 2)
    diffs = [r["accuracy"]["MPT"][2] - r["accuracy"]["PT random"][2] for r in reps]
    assert c["mean"] == pytest.approx(sum(diffs) / 2)
    assert c["signs"] == "".join("+" if d > 0 else "-" if d < 0 else "0" for d in diffs)


def _fake_replicate(r, acc):
    names = [m.name for m in METHODS]
    return {"accuracy": {n: {4: acc.get(n, 0.6) + 0.001 * r} for n in names},
            "zero_shot": {n: {4: 0.5} for n in names}, "lr": {n: {4: 0.01} for n in names},
            "params": {n: 256 for n in names}, "stored": {"MPT": 496},
            "source_accuracy": {"MPT": 0.9, "MPT shared prompt P* alone": 0.7, "MPT AVERAGE_SOURCE_TASKS config": 0.75},
            "curves": {"MPT": [0.6, 0.8]}}


def test_caption_says_where_mpt_loses_and_where_it_wins():
    s = dataclasses.replace(TINY, shots=(4,))
    reps = [_fake_replicate(r, {"MPT": 0.70 + 0.01 * (r % 2), "PT random": 0.58, "PT multitask prompt": 0.76})
            for r in range(4)]
    text = caption(summarize(reps, s))
    assert "MPT − PT random = +0.125 at 4 shots per class (the 95 % CI excludes 0; MPT ahead in 4 of 4 replicates)" in text
    assert "MPT loses, with the CI excluding 0, to: PT multitask prompt at 4 shots (-0.055)" in text
    noisy = [_fake_replicate(r, {"MPT": 0.6 + (0.2 if r % 2 else -0.2), "PT random": 0.58}) for r in range(4)]
    assert "the 95 % CI includes 0" in caption(summarize(noisy, s))


# ---- the command ----------------------------------------------------------------------------------------

def _has_matplotlib():
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """One `train-demo --quick` run (with --plot when matplotlib is there): (stdout, json path, png path)."""
    out = tmp_path_factory.mktemp("quick")
    argv = ["train-demo", "--quick", "--seed", "3", "--markdown", "--json", str(out / "r.json")]
    if _has_matplotlib():
        argv += ["--plot", str(out / "r.png")]
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert mpt_ref.cli.main(argv) == 0
    return buf.getvalue(), out / "r.json", out / "r.png"


def test_quick_mode_prints_every_method_the_contrasts_and_a_caption(quick_run):
    text = quick_run[0]
    for m in METHODS:
        assert m.name in text
    assert "chance 0.500" in text and "paired contrasts" in text and "MPT − PT random = " in text
    assert "source-task accuracy" in text and "parameters stored" in text
    assert "| method | params/task | zero-shot | 4 shots | 32 shots |" in text  # --markdown


def test_json_holds_the_documented_schema(quick_run):
    doc = json.loads(quick_run[1].read_text())
    assert doc["chance"] == 0.5
    names = [m.name for m in METHODS]
    assert "PT random" in names and "MPT" in names
    assert {(r["method"], r["shots"]) for r in doc["results"]} == {(n, k) for n in names for k in QUICK.shots}
    for r in doc["results"]:
        assert {"method", "shots", "mean", "ci95"} <= set(r) and 0 <= r["mean"] <= 1
    assert {c["b"] for c in doc["contrasts"]} == set(names) - {"MPT"}
    for c in doc["contrasts"]:
        assert {"a", "b", "shots", "mean", "ci95", "signs"} <= set(c)
        assert c["a"] == "MPT" and len(c["signs"]) == doc["replicates"] and set(c["signs"]) <= set("+-0")


def test_same_seed_same_json(quick_run, tmp_path):
    assert mpt_ref.cli.main(["train-demo", "--quick", "--seed", "3", "--json", str(tmp_path / "b.json")]) == 0
    assert (tmp_path / "b.json").read_bytes() == quick_run[1].read_bytes()


def test_the_heap_padding_is_asked_of_glibc_only():
    """train-demo keeps 64 MiB at the top of glibc's heap (cli/train_demo.keep_heap): freed activations
    were returned to the kernel and faulted in again, 43 % of `--quick`'s wall time. Elsewhere: a no-op."""
    import platform

    from mpt_ref.cli.train_demo import keep_heap

    assert keep_heap() is (platform.system() == "Linux" and platform.libc_ver()[0] == "glibc")


@pytest.mark.skipif(not _has_matplotlib(), reason="matplotlib absent: pip install 'mpt-ref[plot]' (CI's plot step has it)")
def test_plot_writes_a_png(quick_run):
    data = quick_run[2].read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_plot_without_matplotlib_says_how_to_get_it_and_exits_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    assert mpt_ref.cli.main(["train-demo", "--quick", "--plot", str(tmp_path / "p.png")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install 'mpt-ref[plot]'" in err[0]
    assert not (tmp_path / "p.png").exists()


@pytest.mark.parametrize("argv", [["--shots", "4,4"], ["--shots", "x"], ["--replicates", "0"], ["--family", "nope"]])
def test_bad_arguments_exit_2(argv):
    with pytest.raises(SystemExit) as exc:
        mpt_ref.cli.main(["train-demo", *argv])
    assert exc.value.code == 2
