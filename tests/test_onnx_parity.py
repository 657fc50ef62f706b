"""Differential tests: exported graphs on onnxruntime (CPU) and onnx.reference.ReferenceEvaluator
against the float64 reference, for every module, both variants, float32 and float16, random configs
(S = 2, L = 1..3, T = 1, B = 1 included) and batch sizes the export never saw; the id policy of
spec/onnx.md (NaN where an output depends on an invalid id, errors for impossible shapes); CUDA when
available."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
from hypothesis import given, note, settings
from hypothesis import strategies as st

import mpt_ref
from mpt_ref import tolerances as tol
from mpt_ref.testing import strategies as hs
from onnx_export import expected_output, export
from onnx_export._spec import module_spec
from onnx_export.parity import check_parity, compare, expected_with_bound, onnx_rounding, ulp_distance
from onnx_export.runtimes import Runner, available_providers

RUNTIMES = ("cpu", "onnx-reference")
CUDA = [p for p in ("cuda", "cuda-tf32") if p in available_providers()]
needs_cuda = pytest.mark.skipif(not CUDA, reason="CUDAExecutionProvider not in onnxruntime.get_available_providers()")


def build(kind: str, config, seed: int = 0):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PEFT's MLP num_layers warning is not under test here
        return {"embedding": mpt_ref.PromptEmbedding, "mpt": mpt_ref.MultitaskPromptEmbedding,
                "mlp": mpt_ref.PromptEncoder, "lstm": mpt_ref.PromptEncoder}[kind](config, seed=seed)


@st.composite
def modules(draw, kind: str):
    """A module of ``kind`` with a random config and either its own init (realistic scales: a fresh MPT
    prompt is ~1e-4) or U(-2, 2) parameters."""
    config = draw({"embedding": hs.prompt_tuning_configs(max_tokens=3, max_dim=5),
                   "mpt": hs.mpt_configs(max_tokens=3, max_dim=5),
                   "mlp": hs.encoder_configs("MLP", max_dim=5),
                   "lstm": hs.encoder_configs("LSTM", max_layers=3)}[kind])
    module = build(kind, config, seed=draw(st.integers(0, 2**16), label="init seed"))
    if draw(st.booleans(), label="uniform params"):
        module.load_state_dict({k: draw(hs.finite_arrays(v.shape, np.float64, 2.0), label=k)
                                for k, v in module.state_dict().items()})
    return module


@st.composite
def feeds(draw, module, variant: str, batch: int):
    """In-range inputs for a batch: PEFT's arange rows or random indices; MPT task ids of length B or 1."""
    spec = module_spec(module)
    T = spec.T
    fixed = spec.kind == "mpt" or (spec.kind == "lstm_encoder" and variant == "folded")
    tokens = T if fixed else draw(hs.dims(1, T + 2), label="tokens")
    out = {"indices": draw(hs.prompt_indices(batch, T, tokens))}
    if spec.kind == "mpt":
        out["task_ids"] = draw(hs.task_id_arrays(batch, spec.K))
    return out


def check_all_runtimes(model, module, variant, batches, data):
    spec = module_spec(module)
    dtype = onnx.helper.tensor_dtype_to_np_dtype(model.graph.output[0].type.tensor_type.elem_type).name
    for provider in RUNTIMES:
        runner = Runner(model, provider)  # one session, several batch sizes
        for B in batches:
            f = data.draw(feeds(module, variant, B), label=f"feeds B={B}")
            want, bound = expected_with_bound(spec, f, variant, onnx_rounding(dtype, provider))
            c = compare(f"B={B}", provider, runner.run(f), want, bound)
            note(repr(c))
            assert c.ok, c


def differential(kind):
    @settings(max_examples=30)  # each example builds 4 sessions; ~0.1 s
    @given(data=st.data(), variant=st.sampled_from(["faithful", "folded", "folded-any"]), dtype=st.sampled_from(["float32", "float16"]),
           batches=st.lists(hs.dims(1, 5), min_size=2, max_size=2, unique=True))
    def test(data, variant, dtype, batches):
        module = data.draw(modules(kind), label="module")
        model = export(module, variant=variant, dtype=dtype)
        onnx.checker.check_model(model, full_check=True)
        onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
        check_all_runtimes(model, module, variant, batches, data)

    return test


test_prompt_embedding_matches_reference = differential("embedding")
test_mpt_matches_reference = differential("mpt")
test_mlp_encoder_matches_reference = differential("mlp")
test_lstm_encoder_matches_reference = differential("lstm")


EDGE_CONFIGS = {
    "embedding": [mpt_ref.PromptTuningConfig(num_virtual_tokens=1, token_dim=1),
                  mpt_ref.PromptTuningConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=2, token_dim=3)],
    "mpt": [mpt_ref.MultitaskPromptTuningConfig(num_virtual_tokens=1, token_dim=1, num_tasks=1, num_ranks=1),
            mpt_ref.MultitaskPromptTuningConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=2, token_dim=3,
                                                num_tasks=4, num_ranks=5)],
    "mlp": [mpt_ref.PromptEncoderConfig(num_virtual_tokens=1, token_dim=1, encoder_hidden_size=1),
            mpt_ref.PromptEncoderConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=2, token_dim=3)],
    "lstm": [mpt_ref.PromptEncoderConfig(num_virtual_tokens=1, token_dim=1, encoder_hidden_size=1,
                                         encoder_reparameterization_type="LSTM", encoder_num_layers=1),
             mpt_ref.PromptEncoderConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=2, token_dim=3,
                                         encoder_hidden_size=2, encoder_reparameterization_type="LSTM",
                                         encoder_num_layers=3)],
}


@pytest.mark.parametrize("kind", sorted(EDGE_CONFIGS))
@pytest.mark.parametrize("which", [0, 1], ids=["T=1", "S=2"])
@pytest.mark.parametrize("variant", ["faithful", "folded", "folded-any"])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_edge_configs_with_the_parity_checker(kind, which, variant, dtype):
    """T=1, D=1, H=1, K=1, R=1, L=1; and S=2 with L=3, R > D; batch 1 and others (parity_cases)."""
    module = build(kind, EDGE_CONFIGS[kind][which])
    for batch in (1, 4):
        report = check_parity(export(module, variant=variant, dtype=dtype), module, providers=RUNTIMES, batch=batch)
        assert report.ok, report.format()


# -- the comparison itself ------------------------------------------------------------------------------


def test_ulp_distance_counts_representable_values():
    x = np.array([1.0, -1.0, 0.0, -0.0, 65504.0], dtype=np.float16)
    with np.errstate(over="ignore"):
        up = np.nextafter(x, np.float16(np.inf))  # 65504 -> inf, the next bit pattern
    np.testing.assert_array_equal(ulp_distance(up, x.astype(np.float64)), [1, 1, 1, 1, 1])
    np.testing.assert_array_equal(ulp_distance(np.float32([0.0, -0.0]), np.float64([-0.0, 0.0])), [0, 0])
    tiny = np.finfo(np.float32).smallest_subnormal
    np.testing.assert_array_equal(ulp_distance(np.float32([tiny]), np.float64([-tiny])), [2])


def test_compare_flags_nan_pattern_inf_shape_and_error():
    t = np.array([[1e-5, 1e-5]])  # the per-entry bound
    want = np.array([[1.0, np.nan]])
    assert compare("c", "cpu", np.float32([[1.0, np.nan]]), want, t).ok
    assert not compare("c", "cpu", np.float32([[1.0, 0.0]]), want, t).ok  # NaN missing
    assert not compare("c", "cpu", np.float32([[np.nan, np.nan]]), want, t).ok  # NaN extra
    assert not compare("c", "cpu", np.float32([[np.inf, np.nan]]), want, t).ok
    assert not compare("c", "cpu", np.float32([1.0, np.nan]), want, t).ok  # shape
    assert not compare("c", "cpu", np.float32([[1.001, np.nan]]), want, t).ok  # 1e-3 > 1e-5


def test_a_prompt_below_float16_range_is_judged_against_the_underflow_floor():
    """Found by hypothesis: an MPT prompt of 3.8e-23 (T=D=R=1) is 0 in float16; the bound's per-operation
    floor (float16's smallest normal number, tolerances.ROUNDING) covers the vanished prompt."""
    module = build("mpt", EDGE_CONFIGS["mpt"][0])  # T=D=K=R=1
    module.load_state_dict({"prefix_task_cols": np.full((1, 1, 1), 1e-8), "prefix_task_rows": np.full((1, 1, 1), 1e-8),
                            "embedding.weight": np.full((1, 1), 3.783e-7)})
    spec = module_spec(module)
    f = {"indices": np.zeros((1, 1), np.int64), "task_ids": np.zeros(1, np.int64)}
    want, bound = expected_with_bound(spec, f, "faithful", onnx_rounding("float16", "cpu"))
    assert compare("c", "cpu", np.float16([[[0.0]]]), want, bound).ok
    assert not compare("c", "cpu", np.float16([[[1e-3]]]), want, bound).ok


# -- the id policy (spec/onnx.md), expected NaN patterns written out here ------------------------------

BIG = 2**40


def run_both(model, f):
    return [Runner(model, p).run(f) for p in RUNTIMES]


@pytest.mark.parametrize("variant", ["faithful", "folded-any"])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_mpt_faithful_nans_exactly_what_invalid_ids_reach(dtype, variant):
    module = build("mpt", EDGE_CONFIGS["mpt"][1])  # T=4, K=4
    T, K = 4, 4
    idx = np.tile(np.arange(T), (7, 1))
    tasks = np.array([0, -1, K, BIG, -BIG, 3, 2])
    idx[5, 2], idx[6, 0] = T, -1
    model = export(module, dtype=dtype, variant=variant)  # folded-any: the faithful policy, any rows
    for got in run_both(model, {"indices": idx, "task_ids": tasks}):
        nan = np.isnan(got)
        assert nan[1:5].all() and nan[5, 2].all() and nan[6, 0].all()  # bad task rows, bad positions
        assert nan.sum() == 4 * T * 3 + 2 * 3  # nothing else
        want = module.forward(np.where(idx < 0, 0, idx % T), np.where((tasks >= 0) & (tasks < K), tasks, 0))
        want = np.where(nan, np.nan, want.astype(np.float64))  # the class on the rows that stay valid
        _, bound = expected_with_bound(module_spec(module), {"indices": idx, "task_ids": tasks}, "faithful",
                                       onnx_rounding(dtype, "cpu"))
        c = compare("valid rows", "cpu", got, want, bound)
        assert c.ok, c


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_mpt_folded_serves_peft_rows_and_nans_the_others(dtype):
    """Folded MPT: PEFT's rows are one Gather of the task prompt table (test_onnx_export's
    test_folded_tables); a row that is not arange(T) (in range or not) and a row with an invalid task id
    come out NaN, whatever the other rows of the batch; folded-any serves every row."""
    module = build("mpt", EDGE_CONFIGS["mpt"][1])
    T, K = 4, 4
    idx = np.tile(np.arange(T), (6, 1))
    idx[3] = [1, 0, 2, 3]  # in range but not PEFT's arange row: NaN in the folded graph, served by folded-any
    idx[4, 1] = -3
    tasks = np.array([2, -1, K, 0, 1, 3])
    spec, feeds = module_spec(module), {"indices": idx, "task_ids": tasks}
    for variant in ("folded", "folded-any"):
        for provider, got in zip(RUNTIMES, run_both(export(module, variant=variant, dtype=dtype), feeds)):
            want, bound = expected_with_bound(spec, feeds, variant, onnx_rounding(dtype, provider))
            assert np.isnan(got[[1, 2]]).all() and np.isnan(got[4, 1]).all()
            assert not np.isnan(got[[0, 5]]).any()
            assert np.isnan(got[[3, 4]]).all() if variant == "folded" else not np.isnan(got[3]).any()
            assert compare("mixed rows", provider, got, want, bound).ok


@pytest.mark.parametrize("kind", ["embedding", "mlp", "lstm"])
@pytest.mark.parametrize("variant", ["faithful", "folded", "folded-any"])
def test_invalid_indices_nan_positions_or_rows(kind, variant):
    module = build(kind, EDGE_CONFIGS[kind][1])  # T=4
    T = 4
    idx = np.tile(np.arange(T), (4, 1))
    idx[1, 2], idx[2, 0], idx[3] = -1, BIG, [3, 2, 1, 0]
    for got in run_both(export(module, variant=variant), {"indices": idx}):
        nan = np.isnan(got)
        assert (nan.all(axis=2) | ~nan.any(axis=2)).all()  # whole output vectors only
        nan = nan.all(axis=2)
        want = np.zeros_like(nan)
        if kind == "lstm":  # an LSTM output depends on its whole row
            want[[1, 2]] = True
            if variant == "folded":
                want[3] = True  # a table serves arange rows only
        else:
            want[1, 2] = want[2, 0] = True
        np.testing.assert_array_equal(nan, want)


@pytest.mark.parametrize("variant", ["faithful", "folded", "folded-any"])
def test_impossible_shapes_fail_or_give_nan_instead_of_broadcasting(variant):
    module = build("mpt", EDGE_CONFIGS["mpt"][1])
    model = export(module, variant=variant)
    ok = np.tile(np.arange(4), (3, 1))
    for provider in RUNTIMES:
        runner = Runner(model, provider)
        assert runner.run({"indices": ok, "task_ids": np.array([1])}).shape == (3, 4, 3)  # length 1 broadcasts
        for f in ({"indices": ok, "task_ids": np.array([0, 1])},  # length neither B nor 1
                  {"indices": ok[:, :3], "task_ids": np.array([0, 1, 2])}):  # T tokens required
            with pytest.raises(Exception):
                runner.run(f)
        # B=1 must not broadcast up to 3 (nor take the first id): NaN rows of the input's shape
        out = runner.run({"indices": ok[:1], "task_ids": np.array([0, 1, 2])})
        assert out.shape == (1, 4, 3) and np.isnan(out).all()


def test_reference_oracle_agrees_with_the_classes_on_valid_inputs():
    """expected_output (functional cores) vs the public classes' forward, which validate and dispatch."""
    rng = np.random.default_rng(0)
    for kind, configs in EDGE_CONFIGS.items():
        module = build(kind, configs[1])
        module = module.eval() if kind in ("mlp", "lstm") else module
        idx = np.tile(np.arange(4), (3, 1))
        extra = {"task_ids": rng.integers(0, 4, 3)} if kind == "mpt" else {}
        for variant in ("faithful", "folded"):
            want = module.forward(idx, **extra)
            got = expected_output(module_spec(module), idx, **extra, variant=variant)
            np.testing.assert_allclose(got, want, rtol=tol.ORACLE_VS_F32_MODULE.rtol, atol=tol.ORACLE_VS_F32_MODULE.atol)


# -- CUDA (skipped without a GPU) ---------------------------------------------------------------------


@needs_cuda
@pytest.mark.parametrize("kind", sorted(EDGE_CONFIGS))
@pytest.mark.parametrize("variant", ["faithful", "folded"])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_cuda_parity_and_id_policy(kind, variant, dtype):
    module = build(kind, EDGE_CONFIGS[kind][1])
    report = check_parity(export(module, variant=variant, dtype=dtype), module, providers=CUDA, batch=5)
    assert report.ok, report.format()  # parity_cases include the invalid-id case: NaN exactly as on CPU


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_mpt_folded_any_serves_distinct_rows_as_the_reference(dtype):
    """Random index rows (not PEFT's) and mixed tasks: the folded-any graph equals the float64 class
    within the parity tolerance, with no NaN anywhere."""
    module = build("mpt", EDGE_CONFIGS["mpt"][1])  # T=4, D=3, K=4, R=5
    rng = np.random.default_rng(1)
    idx, tasks = rng.integers(0, 4, (6, 4)), rng.integers(0, 4, 6)
    spec, feeds = module_spec(module), {"indices": idx, "task_ids": tasks}
    for provider, got in zip(RUNTIMES, run_both(export(module, variant="folded-any", dtype=dtype), feeds)):
        want, bound = expected_with_bound(spec, feeds, "folded-any", onnx_rounding(dtype, provider))
        assert not np.isnan(want).any()
        c = compare("distinct rows", provider, got, want, bound)
        assert c.ok, c


def test_mpt_folded_any_graph_is_two_gathers_and_one_mul_on_the_output():
    """No MatMul: the per-task factor table replaces C and R; the only ops touching (B,T,D) are the
    two Gathers and the Mul."""
    model = export(build("mpt", EDGE_CONFIGS["mpt"][1]), variant="folded-any")
    inferred = onnx.shape_inference.infer_shapes(model)
    floats = {v.name for v in [*inferred.graph.value_info, *inferred.graph.output]
              if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}
    ops = [n.op_type for n in model.graph.node if n.output[0] in floats]  # the ops on float values
    assert "MatMul" not in ops and ops.count("Mul") == 1 and ops.count("Gather") == 2
    names = {t.name for t in model.graph.initializer}
    assert {"embedding.weight", "task_prompt_factors"} <= names and "prefix_task_cols" not in names
