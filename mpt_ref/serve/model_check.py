"""The check ``export-model`` runs on what it writes (spec/serving.md, "Checking a whole model").

The composed model is run on onnxruntime CPU for a few (B, S) cases (left padding on one row; for MPT a
different task per row) and judged in two steps, so that every number has a bound:

1. What it hands the base graph, against the reference: ``inputs_embeds[:, :N]`` against the float64
   reference prompt within the per-entry error bound of a prompt graph in the base graph's dtype (the
   error model of spec/tolerances.md, as ``mpt-ref parity`` judges prompt graphs); ``inputs_embeds[:, N:]``
   equal to the base weights' W[input_ids] in that dtype, bit for bit; the extended mask equal to
   ``concat(ones(B, N), attention_mask)``, bit for bit.
2. The base graph's own computation: every output of the composed model against the base graph alone,
   run on the same ``inputs_embeds`` and mask, within ``SERVE_COMPOSED`` (mpt_ref/tolerances.py).

A runtime error (e.g. a base graph whose internal shapes were fixed at export time) is a failed check.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto

from mpt_ref.errors import shown
from mpt_ref.modules.bounds import TensorCheck, check_tensor
from mpt_ref.tolerances import SERVE_COMPOSED
from onnx_export._spec import module_spec
from onnx_export.exporter import INPUT_INDICES, INPUT_TASK_IDS
from onnx_export.parity import expected_with_bound, onnx_rounding
from onnx_export.prepend import ATTENTION_MASK, EXTENDED_MASK, INPUT_IDS, INPUTS_EMBEDS, TASK_IDS

MASK_NUMPY = {TensorProto.INT64: np.int64, TensorProto.INT32: np.int32, TensorProto.FLOAT: np.float32,
              TensorProto.FLOAT16: np.float16, TensorProto.BOOL: np.bool_}
SHAPES = ((2, 3), (1, 6))  # (B, S) checked when the base graph leaves the batch axis free


@dataclasses.dataclass
class ModelReport:
    comparisons: list[TensorCheck]
    dtype: str
    variant: str

    @property
    def ok(self) -> bool:
        return bool(self.comparisons) and all(c.ok for c in self.comparisons)

    def max_abs(self, tensor_prefix: str) -> float:
        vals = [c.max_abs for c in self.comparisons if c.tensor.startswith(tensor_prefix) and np.isfinite(c.max_abs)]
        return max(vals, default=float("nan"))

    def format(self) -> str:
        lines = [f"check: the written model on onnxruntime CPU (dtype={self.dtype}, prompt variant={self.variant})",
                 f"{'case':<12} {'tensor':<34} {'max abs':>9} {'/bound':>7}  verdict"]
        for c in self.comparisons:
            verdict = "OK" if c.ok else f"FAIL: {c.describe()}"
            lines.append(f"{c.case:<12} {c.tensor:<34} {c.max_abs:>9.2e} {c.ratio:>7.2g}  {verdict}")
        lines.append(f"  bound prompt rows: per-entry error bound, {onnx_rounding(self.dtype, 'cpu').reason} "
                     "(spec/tolerances.md)")
        lines.append("  bound token rows, mask: bit for bit (W[input_ids] of the base weights; ones(B, N) then the mask)")
        tol = SERVE_COMPOSED[self.dtype]
        lines.append(f"  bound outputs vs the base graph alone: |diff| <= {tol.atol:g}·max|want| + {tol.rtol:g}·|want| "
                     f"({tol.reason})")
        lines.append(f"verdict: {'PASS' if self.ok else 'FAIL'}")
        return "\n".join(lines)


def _with_outputs(model: onnx.ModelProto, names: list[str]) -> bytes:
    """``model`` with the intermediate edges ``names`` added as graph outputs (for the check only)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    copy.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names)
    return copy.SerializeToString()


def _session(data: bytes) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def _feeds(spec: Any, V: int, B: int, S: int, mask_elem: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, V, size=(B, S)).astype(np.int64)
    mask = np.ones((B, S), dtype=np.int64)
    if B > 1 and S > 1:
        mask[0, : S // 2] = 0  # left padding on the first row
    feeds = {INPUT_IDS: ids, ATTENTION_MASK: mask.astype(MASK_NUMPY[mask_elem])}
    if spec.kind.takes_task_ids:
        feeds[TASK_IDS] = (np.arange(B, dtype=np.int64) + seed) % spec.K
    return feeds


def check_whole_model(model: onnx.ModelProto, base: onnx.ModelProto, module: Any, word_embeddings: np.ndarray, *,
                      variant: str, dtype: str, mask_elem: int, n_prompt: int, batch: int | None = None
                      ) -> ModelReport:
    """Run ``model`` (the composition of ``module``'s prepend graph with ``base``) and judge it (module doc).
    batch: the base graph's fixed batch size, None when its batch axis is free."""
    spec = module_spec(module)
    V = word_embeddings.shape[0]
    shapes = SHAPES if batch is None else ((batch, 3), (batch, 6))
    outputs = [o.name for o in model.graph.output]
    rounding = onnx_rounding(dtype, "cpu")
    tol = SERVE_COMPOSED[dtype]
    checks: list[TensorCheck] = []
    try:
        composed = _session(_with_outputs(model, [INPUTS_EMBEDS, EXTENDED_MASK]))
        alone = _session(base.SerializeToString())
    except Exception as exc:  # noqa: BLE001 - onnxruntime refusing the graph is a failed check, reported
        return ModelReport([TensorCheck.failed("load", "model", f"{type(exc).__name__}: {shown(exc)}", "cpu")],
                           dtype, variant)
    for seed, (B, S) in enumerate(shapes):
        case = f"B={B} S={S}"
        feeds = _feeds(spec, V, B, S, mask_elem, seed)
        try:
            *got, embeds, mask = composed.run(None, feeds)
        except Exception as exc:  # noqa: BLE001 - e.g. a base graph with shapes fixed at export time
            checks.append(TensorCheck.failed(case, "run", f"{type(exc).__name__}: {shown(exc)}", "cpu"))
            continue
        prompt_feeds = {INPUT_INDICES: np.tile(np.arange(spec.T, dtype=np.int64), (B, 1))}
        if spec.kind.takes_task_ids:
            prompt_feeds[INPUT_TASK_IDS] = feeds[TASK_IDS]
        want, bound = expected_with_bound(spec, prompt_feeds, variant, rounding)
        checks.append(check_tensor(case, "inputs_embeds[:, :N] (prompt)", embeds[:, :n_prompt],
                                   want[:, :n_prompt], bound[:, :n_prompt], provider="cpu"))
        tokens = word_embeddings.astype(embeds.dtype)[feeds[INPUT_IDS]].astype(np.float64)
        checks.append(check_tensor(case, "inputs_embeds[:, N:] (W[ids])", embeds[:, n_prompt:], tokens, 0.0,
                                   provider="cpu"))
        want_mask = np.concatenate([np.ones((B, n_prompt)), feeds[ATTENTION_MASK].astype(np.float64)], axis=1)
        checks.append(check_tensor(case, "extended_attention_mask", np.asarray(mask, dtype=np.float64), want_mask,
                                   0.0, provider="cpu"))
        try:
            ref = alone.run(None, {INPUTS_EMBEDS: embeds, ATTENTION_MASK: mask})
        except Exception as exc:  # noqa: BLE001
            checks.append(TensorCheck.failed(case, "base graph alone", f"{type(exc).__name__}: {shown(exc)}", "cpu"))
            continue
        for name, g, w in zip(outputs, got, ref):
            w64 = np.asarray(w, dtype=np.float64)
            finite = w64[np.isfinite(w64)]
            scale = float(np.abs(finite).max()) if finite.size else 0.0
            checks.append(check_tensor(case, f"{name} vs base graph alone", np.asarray(g), w64,
                                       tol.atol * scale + tol.rtol * np.abs(w64), provider="cpu"))
    return ModelReport(checks, dtype, variant)
