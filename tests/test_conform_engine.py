"""The one engine under assert_conforms and conform: its messages, dtypes, state kept between calls, the
two float16 classes; and what ``verify --candidate`` now checks (dtype per case, missing keys, --quiet,
the --module hint, version and digest in the JSON)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from _ports import Port
from safetensors.numpy import save_file

import mpt_ref.cli
from mpt_ref.conformance import vectors as vec
from mpt_ref.conformance.verify import selected_cases
from mpt_ref.errors import InputError
from mpt_ref.testing.conformance import assert_conforms

VECTORS = Path(__file__).resolve().parents[1] / "spec" / "vectors"
MPT = Port("matmul").callables("mpt")


# -- assert_conforms -------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["bfloat16", "int32", np.int64, "float8"])
def test_unsupported_dtype_is_an_input_error_naming_the_supported_ones(dtype):
    with pytest.raises(InputError, match="dtype: expected one of float64, float32, float16, got"):
        assert_conforms(*MPT, module="mpt", dtype=dtype)


def test_accumulation_is_a_float16_choice():
    with pytest.raises(InputError, match="accumulation"):
        assert_conforms(*MPT, module="mpt", dtype="float32", accumulation="float16")
    with pytest.raises(InputError, match="accumulation"):
        assert_conforms(*MPT, module="mpt", dtype="float16", accumulation="bfloat16")


def test_failure_message_first_and_short_then_the_reproduction():
    fwd, bwd = MPT
    with pytest.raises(AssertionError) as info:
        assert_conforms(lambda p, *a: fwd(p, *a) * 1.001, bwd, module="mpt", max_examples=20, seed=0)
    msg = str(info.value)
    first, _, rest = msg.partition("\n")
    assert first.startswith("mpt port disagrees with mpt-ref in 1 tensor(s) of the minimal failing case")
    assert "judged as float64" in first
    body, _, repro = msg.partition("--- hypothesis reproduction ---")
    assert "minimal case:" in body and len(body.splitlines()) < 15
    assert any(w in repro for w in ("Falsifying", "Failing test case", "fixed edge case"))
    assert info.value.__cause__ is None and info.value.__suppress_context__  # no chained hypothesis traceback


def test_a_port_keeping_gradients_between_calls_is_reported_as_such():
    fwd, bwd = MPT
    kept: dict = {}

    def accumulating_backward(p, dout, *args):  # the classic: gradient buffers never zeroed
        grads = bwd(p, dout, *args)
        for k, g in grads.items():
            kept[k] = kept[k] + g if k in kept and kept[k].shape == g.shape else g
        return {k: kept[k].copy() for k in grads}

    with pytest.raises(AssertionError, match="keeps state between calls"):
        assert_conforms(fwd, accumulating_backward, module="mpt", max_examples=5, seed=0)


def test_a_port_left_in_train_mode_is_caught_in_eval_cases():
    """Eval cases with encoder_dropout > 0 and L >= 2: a port applying dropout there differs between calls."""
    fwd, bwd = Port("matmul").callables("lstm_encoder")
    rng = np.random.default_rng(0)

    def train_mode_forward(params, indices, masks, config):
        L = sum(k.startswith("lstm_head.weight_ih_l") and not k.endswith("_reverse") for k in params)
        if masks is None and config.encoder_dropout > 0 and L >= 2:
            H = params["lstm_head.weight_hh_l0"].shape[1]
            masks = [rng.random(indices.shape + (2 * H,)) >= config.encoder_dropout for _ in range(L - 1)]
        return fwd(params, indices, masks, config)

    with pytest.raises(AssertionError) as info:
        assert_conforms(train_mode_forward, module="lstm_encoder", max_examples=5, seed=0, dropout=False,
                        shrink=False)
    minimal = str(info.value).split("minimal case:")[1].split("\n")[1]  # an eval case with p > 0
    assert "'encoder_dropout': 0.0" not in minimal and "'encoder_dropout': 0." in minimal


class FakeTorchTensor:
    """What assert_conforms sees of a torch tensor with requires_grad: detach(), cpu(), numpy()."""

    def __init__(self, a):
        self.a, self.detached = a, False

    def detach(self):
        out = FakeTorchTensor(self.a)
        out.detached = True
        return out

    def cpu(self):
        return self

    def numpy(self):
        if not self.detached:
            raise RuntimeError("Can't call numpy() on Tensor that requires grad. Use tensor.detach().numpy() instead.")
        return self.a


def test_tensors_with_requires_grad_are_detached():
    fwd, bwd = MPT
    assert_conforms(lambda *a: FakeTorchTensor(fwd(*a)),
                    lambda *a: {k: FakeTorchTensor(v) for k, v in bwd(*a).items()}, module="mpt", max_examples=3)


def test_real_torch_tensors_with_requires_grad():
    torch = pytest.importorskip("torch")
    fwd, bwd = MPT
    assert_conforms(lambda *a: torch.from_numpy(fwd(*a)).requires_grad_(),
                    lambda *a: {k: torch.from_numpy(v).requires_grad_() for k, v in bwd(*a).items()},
                    module="mpt", max_examples=3)


def half_accumulating_mpt():
    """MPT written the natural way with float16 parameters: every product, partial sum and scatter-add
    rounded to float16 (np.add.at and loops on float16 arrays), as a framework's own CPU float16 kernels."""
    def prompts(C, R):
        P = np.zeros((C.shape[0], C.shape[1], R.shape[2]), np.float16)
        for r in range(C.shape[2]):
            P = P + C[:, :, r:r + 1] * R[:, r:r + 1, :]
        return P

    def forward(p, indices, task_ids, config):
        tasks = np.broadcast_to(task_ids, (indices.shape[0],))
        return p["embedding.weight"][indices] * prompts(p["prefix_task_cols"], p["prefix_task_rows"])[tasks]

    def backward(p, dout, indices, task_ids, config):
        C, R, E = p["prefix_task_cols"], p["prefix_task_rows"], p["embedding.weight"]
        tasks = np.broadcast_to(task_ids, (indices.shape[0],))
        P = prompts(C, R)
        dE = np.zeros_like(E)
        np.add.at(dE, indices.reshape(-1), (dout * P[tasks]).reshape(-1, E.shape[1]))
        dP = np.zeros_like(P)
        for b, t in enumerate(tasks):
            dP[t] = dP[t] + dout[b] * E[indices[b]]
        dC, dR = np.zeros_like(C), np.zeros_like(R)
        for d in range(R.shape[2]):
            dC = dC + dP[:, :, d:d + 1] * R[:, None, :, d]
        for t in range(C.shape[1]):
            dR = dR + C[:, t, :, None] * dP[:, t:t + 1, :]
        return {"prefix_task_cols": dC, "prefix_task_rows": dR, "embedding.weight": dE}

    return forward, backward


def test_float16_accumulation_fails_the_float32_class_with_a_hint_and_passes_its_own():
    port = half_accumulating_mpt()
    with pytest.raises(AssertionError) as info:
        assert_conforms(*port, module="mpt", dtype="float16", max_examples=100, seed=0)
    msg = str(info.value)
    assert "judged as float16 storage, float32 accumulation" in msg.splitlines()[0]
    assert "hint: the errors fit float16 storage, float16 accumulation" in msg and "accumulation='float16'" in msg
    assert_conforms(*port, module="mpt", dtype="float16", accumulation="float16", max_examples=100, seed=0)


# -- verify --candidate ------------------------------------------------------------------------------------


def write_candidate(root: Path, names, convert=lambda t: t, key="output") -> Path:
    for name in names:
        case = vec.read_case(VECTORS, name)
        (root / name).mkdir(parents=True)
        save_file({key: convert(case.tensors["output"]["output"])}, str(root / name / "output.safetensors"))
        save_file({k: convert(v) for k, v in case.tensors["grads"].items()}, str(root / name / "grads.safetensors"))
    return root


def verify(*args: str) -> int:
    return mpt_ref.cli.main(["verify", "--vectors", str(VECTORS), *args])


def test_float64_outputs_for_float32_cases_fail(tmp_path, capsys):
    names = selected_cases(VECTORS, "mpt")
    cand = write_candidate(tmp_path / "c", names, convert=lambda t: t.astype(np.float64))
    assert verify("--candidate", str(cand), "--module", "mpt", "--quiet") == 1
    out = capsys.readouterr().out
    assert "mpt_k3_r2_f32" in out and "dtype float64 != expected float32" in out
    assert "dtype float64 != expected float16" in out


def test_a_missing_key_names_the_keys_found(tmp_path, capsys):
    names = selected_cases(VECTORS, "mpt")
    cand = write_candidate(tmp_path / "c", names, key="out")
    assert verify("--candidate", str(cand), "--module", "mpt", "--quiet") == 1
    assert "missing key 'output' in output.safetensors (keys found: ['out'])" in capsys.readouterr().out
    cand2 = tmp_path / "d"
    write_candidate(cand2, names)
    name = names[0]
    grads = vec.read_case(VECTORS, name).tensors["grads"]
    save_file({("E" if k == "embedding.weight" else k): v for k, v in grads.items()},
              str(cand2 / name / "grads.safetensors"))
    assert verify("--candidate", str(cand2), "--module", "mpt", "--quiet") == 1
    assert "missing key 'embedding.weight' in grads.safetensors (keys found: ['E'," in capsys.readouterr().out


def test_quiet_prints_the_verdict_alone_on_a_pass(tmp_path, capsys):
    names = selected_cases(VECTORS, "mpt")
    cand = write_candidate(tmp_path / "c", names)
    assert verify("--candidate", str(cand), "--module", "mpt", "--quiet") == 0
    out = capsys.readouterr()
    assert out.out.splitlines() == [f"PASS: {out.out.split(': ')[1].split(' in ')[0]} in {len(names)} cases "
                                    "(outputs and gradients)"]
    assert out.err == ""


def test_module_hint_when_one_kind_passes_and_the_others_fail(tmp_path, capsys):
    cand = write_candidate(tmp_path / "c", selected_cases(VECTORS, "mpt"))
    assert verify("--candidate", str(cand), "--quiet", "--json", str(tmp_path / "r.json")) == 1
    out = capsys.readouterr().out
    assert "hint: every case of " in out and "--module mpt)" in out
    body = json.loads((tmp_path / "r.json").read_text())
    assert "--module mpt" in body["hint"]


def test_json_records_version_and_vectors_digest(tmp_path, capsys):
    cand = write_candidate(tmp_path / "c", selected_cases(VECTORS, "mpt"))
    assert verify("--candidate", str(cand), "--module", "mpt", "--quiet", "--json", str(tmp_path / "r.json")) == 0
    body = json.loads((tmp_path / "r.json").read_text())
    assert body["mpt_ref_version"] == mpt_ref.__version__
    assert body["vectors_digest"] == hashlib.sha256((VECTORS / "index.json").read_bytes()).hexdigest()


def test_the_vectors_hold_the_new_cases():
    index = vec.read_index(VECTORS)["cases"]
    records = {n: vec.read_case(VECTORS, n).record for n in index}
    assert any(r["dtype"] == "float16" and r["accumulation"] == "float32" for r in records.values())
    assert any(r["dtype"] == "float16" and r["accumulation"] == "float16" for r in records.values())
    assert any(r["mode"] == "train" for r in records.values())
    assert any(r["mode"] == "eval" and r["config"]["encoder_dropout"] > 0 and r["config"].get("encoder_num_layers", 0) >= 2
               and r["module"] == "lstm_encoder" for r in records.values())
    for r in records.values():  # every config field explicit, PEFT's defaults included
        assert {"num_transformer_submodules", "inference_mode"} <= set(r["config"])
        if r["module"].endswith("encoder"):
            assert {"encoder_dropout", "encoder_num_layers", "encoder_hidden_size"} <= set(r["config"])
        if r["module"] == "mpt":
            assert {"num_tasks", "num_ranks"} <= set(r["config"])
