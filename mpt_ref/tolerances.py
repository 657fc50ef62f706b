"""Every comparison tolerance in the project, named, each with its reason. Nothing else holds numbers.

A check passes when |got - want| <= atol + rtol * |want| elementwise (numpy.allclose).
"""

from __future__ import annotations

from typing import NamedTuple


class Tol(NamedTuple):
    rtol: float
    atol: float
    reason: str

    def scaled(self, scale: float) -> Tol:
        """This tolerance with atol per unit of ``scale`` (the magnitude of the compared values), for the
        entries below whose reason says "scaled": rounding error grows with the terms, not the result."""
        return self._replace(atol=self.atol * scale)


# Identical arithmetic on both sides (a refactored path that must not change a single operation).
EXACT = Tol(0.0, 0.0, "identical arithmetic: bit for bit")


# Central differences of a function that is linear in each single parameter entry (embedding, MPT,
# the last Linear): truncation error is zero, what remains is rounding, ~eps*|L|/h with h=1e-6.
GRADCHECK_F64 = Tol(1e-6, 1e-8, "float64 central differences, h=1e-6: rounding ~1e-10 relative")

# Central differences through tanh/sigmoid/ReLU (encoders): truncation O(h^2 f''') ~ 1e-12 plus
# rounding; kinks of ReLU are avoided by the strategies rather than by widening this.
GRADCHECK_NONLINEAR_F64 = Tol(1e-5, 1e-7, "float64 central differences through smooth nonlinearities")

# Directional central differences (core/gradcheck.directional_gradcheck): every entry of a key moves at
# once along v ~ N(0, 1), h = 1e-6. Rounding of L is ~eps per unit of sum|out * dout| (the "magnitude"),
# over 2h: ~1e-10 per unit, so atol is 1e-9 per unit of magnitude (10x). Truncation h^2 |L'''(v,v,v)| / 6
# stays far below 1e-6 of the slope: measured at PEFT's sizes (tests/test_directional_gradients.py), the
# worst error is 2e-8 of the slope (LSTM, train mode), 0.8 % of this allowance.
DIRECTIONAL_F64 = Tol(1e-6, 1e-9, "float64 directional central differences, h=1e-6: atol per unit of sum|out*dout|")

# Same math, same dtype, different association order (grouped-by-task vs per-row, batch subsets).
REORDER_F64 = Tol(1e-12, 1e-14, "float64, same operations in another order: a few ulp")
REORDER_F32 = Tol(1e-5, 1e-6, "float32, same operations in another order: a few ulp of ~1e-7")

# PEFT / torch autograd in float64 against the NumPy reference (issue: ~1e-12).
PEFT_F64 = Tol(1e-12, 1e-12, "float64 torch vs NumPy: different BLAS kernels, a few ulp")
# PEFT in float32 (its native dtype) against the float32 reference: matmul blocking differs.
PEFT_F32 = Tol(1e-5, 1e-6, "float32 torch vs NumPy matmul: different summation order")

# The spec's hand-worked LSTM example prints every number to 10 significant digits.
HAND_WORKED_10_DIGITS = Tol(1e-9, 1e-12, "spec example numbers printed to 10 significant digits")

# NOT a judgment: the flat rtol/atol stamped into each vector's case.json ("tolerance"), a coarse legacy hint
# kept only because the published vectors format (mpt-ref-vectors/2) has the field and older foreign readers
# use it. `mpt-ref verify` never reads it; the criterion is the error model below, written out per entry in
# each case's bounds.safetensors (spec/vectors/README.md, spec/tolerances.md).
VECTORS_LEGACY_HINT = {
    "float64": Tol(1e-10, 1e-12, "legacy hint, not the criterion (bounds.safetensors is): float64, tiny cases"),
    "float32": Tol(1e-5, 1e-6, "legacy hint, not the criterion (bounds.safetensors is): float32, ~100 ulp"),
    "float16": Tol(2e-2, 2e-2, "legacy hint, not the criterion (bounds.safetensors is): float16, ~40 ulp of 2^-11"),
}

# Encoders in float32 against the same math in float64 (ours or PEFT's), atol scaled by max|want| + 1 at
# the call site: T' <= 6 recurrent steps and three matmuls of float32 rounding (eps 6e-8) per output.
F32_ENCODER = Tol(1e-5, 1e-5, "float32 encoder vs float64 / torch float32: rounding through LSTM steps and matmuls")
# Their gradients: BPTT accumulates the rounding of every step in both directions (scaled the same way).
F32_ENCODER_GRADS = Tol(1e-5, 1e-4, "float32 BPTT gradients: per-step rounding accumulated over time and layers")

# The same float64 sums regrouped (the encoder's distinct-work fast path sums dout per token or per row
# group before the backward): error ~ eps · Σ|terms| with |terms| up to ~10 here, so 1e-12 absolute.
REGROUPED_SUMS_F64 = Tol(1e-10, 1e-12, "float64, batch sums regrouped before the backward")

# float64 sigmoid / tanh at points with a closed form (sigmoid(-2) = 1/(1+e^2), tanh(ln3/2) = 1/2): libm's
# exp / tanh are within an ulp or two, and one division rounds once more.
CLOSED_FORM_F64 = Tol(1e-15, 0.0, "float64 libm exp/tanh vs a closed form: a few ulp")

# The error model's exact-value track (Bounded.v, float64) against the float64 reference: the same sums in
# another order; atol for the entries whose sums cancel to ~0 (terms up to ~4^3).
BOUND_VALUES_F64 = Tol(REORDER_F64.rtol, 1e-12, "error model's float64 values vs the reference: reordered sums")

# A float32 parameter against the float64 value it was computed from (one mean of float32 tensors, then
# one rounding to float32: 2^-24 relative each).
F32_ROUNDED = Tol(1e-6, 0.0, "float32 value vs its float64 computation: one or two float32 roundings")
# A float32 product E ⊙ (C @ R) of small rank against float64: a handful of float32 roundings per entry.
F32_SMALL_PRODUCT = Tol(1e-5, 0.0, "float32 E * (C @ R), small rank, vs float64: a few float32 roundings")
# Not a pass tolerance: two different formulas must differ by more than this somewhere to be told apart.
DISTINGUISHABLE = Tol(1e-2, 0.0, "two formulas whose results must differ by more than 1% somewhere")

# torch float64: tanh then atanh twice to read an LSTM layer's input back; atanh amplifies rounding by
# 1/(1 − y²), larger where the gates saturate (bias ±40).
ATANH_ROUND_TRIP_F64 = Tol(1e-9, 0.0, "float64 torch tanh/atanh round trip: rounding amplified near saturation")
# The ratio of two such round trips (a dropped-out layer input over the plain one): 1/(1−p) or 0.
DROPOUT_RATIO_F64 = Tol(1e-6, 1e-6, "ratio of two float64 atanh round trips, amplified rounding near ±1")

# The ONNX oracle (float64 functional core) against a float32 module's forward on small cases (|values|
# up to ~4, a few operations per output).
ORACLE_VS_F32_MODULE = Tol(1e-6, 1e-7, "float64 oracle vs float32 module forward: a few float32 roundings")

# Linearity of every backward in dout, in float64: backward(α·a + b) against α·backward(a) + backward(b).
# Both sides round each product and sum once more or less, so the difference is a few ulp of the
# larger side: atol is applied per unit of max|α·backward(a)| + max|backward(b)| + 1 (testing/properties.py).
LINEARITY_F64 = Tol(0.0, 1e-12, "float64 linearity in dout: a few ulp of the larger side")

# Whole-model ONNX (mpt_ref/serve/whole_model.py: prompt prepend + torch.onnx.export of the base model) on
# onnxruntime CPU vs PeftModel's float32 logits. atol is scaled by s = max |want| at the call site. Both
# sides run the same float32 transformer; onnxruntime fuses and reorders the attention and MLP sums
# (a few ulp per op over 2 layers), and the MPT prompt is rounded once from float64 (folded table) where
# PEFT rounds E ⊙ (C R) in float32. Measured <= 8.9e-8 abs = 2.8e-7 s (s ~ 0.3) on tiny GPT-2 and Llama,
# all four adapter types, B in {1, 3}, S in {4, 9} (spec/serving.md).
SERVE_LOGITS_F32 = Tol(1e-5, 1e-5, "float32 base model in onnxruntime vs torch: fused/reordered sums, measured "
                                   "<= 2.8e-7 s (s = max |logits|)")

# export-model's own check (mpt_ref/serve/model_check.py): the composed model's outputs against the base graph
# run alone on the very inputs_embeds and mask the composed model built. Same graph, same inputs, same
# runtime: what differs is only how onnxruntime optimizes the base graph once it is part of a larger one
# (constant folding and fusions across the seam may regroup a few sums). atol is scaled by max |want|.
SERVE_COMPOSED = {
    "float32": Tol(1e-6, 1e-6, "float32: the base graph inside the composed model vs alone on the same inputs, "
                               "a few ulp of regrouped sums per layer; measured 0 (bit for bit) on tiny GPT-2 "
                               "and Llama"),
    "float16": Tol(1e-3, 1e-3, "float16: as float32, with float16's 2^-11 rounding per regrouped sum"),
}

# A request served alone vs inside a mixed batch by the same server and runtime (tests/test_triton_server.py):
# the same graph, but onnxruntime may block the base model's GEMMs differently for B = 1 and B = 3, a few ulp
# per regrouped float32 sum. atol is scaled by max |logits| at the call site.
SERVED_ALONE_VS_BATCHED_F32 = Tol(1e-6, 1e-6, "float32, one row alone vs in a batch: GEMM blocking by batch size")

# The inputs_embeds a serving engine is fed (prompt rows + word embeddings, tests/test_vllm_serve.py) against
# PeftModel's get_prompt + word_embeddings: the word rows are copied, the prompt rows are the folded table
# (rounded once from float64) where PEFT computes E ⊙ (C R) in float32: ~1 ulp of float32. atol scaled by
# max |want| at the call site.
PROMPT_EMBEDS_F32 = Tol(1e-6, 1e-6, "float32 prompt rows rounded once from float64 vs PEFT's float32 E ⊙ (C R)")

# Serving engines (vLLM on CPU, onnxruntime-genai) running the base model on the prompt-prepended embeddings,
# against PeftModel's float32 logits; atol scaled by s = max |logits| of the request at the call site. Both sides
# are float32 transformers with their own kernels (fused RMSNorm/attention, other GEMM blocking), so each sum of
# n <= max(D, intermediate) terms is regrouped: with the probabilistic bound lam·sqrt(n)·u (lam = 10, n = 384,
# u = 2^-24) that is ~1.2e-5 of the terms' magnitude per stage, over ~6 stages per layer and 2 layers (plus
# softmax / norm amplification of O(1)), i.e. ~1e-4·s; atol = 1e-3·s leaves a factor of ~10 for the
# amplification the estimate does not model. Greedy tokens must agree unless PEFT's own top-2 margin is within
# 2·atol (a near-tie that correct engines may break differently).
ENGINE_LOGITS_F32 = Tol(0.0, 1e-3, "float32 engine vs PeftModel: regrouped sums through 2 layers, derived ~1e-4 s; "
                                   "measured <= 1.1e-6 s on vLLM CPU (offline and HTTP) and onnxruntime-genai")


# ================================================================================================
# The conformance error model (spec/tolerances.md): candidates are judged against the float64 reference
# with a per-element bound computed by mpt_ref/judge/error_bound.py from the case itself. Only the
# constants below are chosen; everything else follows from the computation.
# ================================================================================================


class Rounding(NamedTuple):
    """How a port rounds (see mpt_ref/judge/error_bound.py). u_* are unit roundoffs (half an ulp of 1)."""

    u_acc: float        # sums and products
    u_store: float      # every stored intermediate (and the inputs, when inputs_rounded)
    c_fn: float         # error of the port's exp / sigmoid / tanh, in units of u_store, absolute (|y| <= 1)
    depth_slack: float  # multiplies every rounding term
    tiny: float         # absolute floor per operation (gradual underflow)
    lam: float          # probabilistic bound: |error| <= lam · s (s: root-sum-square propagated rounding)
    reason: str
    inputs_rounded: bool = False  # the port receives params / dout rounded to u_store (float16 graphs)

    def plus(self, other: Rounding) -> Rounding:
        """Two computations' rounding together (first-order bounds add): a candidate and the float64
        reference it is compared with."""
        return Rounding(self.u_acc + other.u_acc, self.u_store + other.u_store,
                        max(self.c_fn, other.c_fn), max(self.depth_slack, other.depth_slack),
                        self.tiny + other.tiny, max(self.lam, other.lam), f"{self.reason}; plus {other.reason}",
                        self.inputs_rounded or other.inputs_rounded)


# c_fn = 8 u: NumPy / libm / Eigen / MLAS exp and tanh are within 1-4 ulp (2-8 u), and a sigmoid written as
# 1/(1+exp(-z)), exp(-|z|)/(1+...) or 0.5·tanh(z/2)+0.5 adds two roundings of a value <= 1; counted as an
# absolute error because the tanh form loses relative accuracy for sigmoid(z) << 1.
_C_FN = 8.0
# depth_slack = 2: γ_n covers any order *within* one sum; a port that merges two stages of the reference
# into one sum (e.g. MPT's dC as one einsum over (b, d) instead of Σ_b then @ R) or adds the two LSTM
# biases separately has at most twice the depth the stage-wise analysis counts for these shapes. The
# stress run (tests/test_oracle_no_false_alarms.py, MPT_REF_STRESS=<cases>) measures the largest ratio |error| / bound actually seen.
_DEPTH_SLACK = 2.0
# lam = 10: the probabilistic bound of Higham & Mary (SIAM J. Sci. Comput. 41(5), 2019): a sum of n terms
# with independent rounding errors is within lam·√n·u·Σ|terms| with probability >= 1 − 2n·exp(−lam²/2)
# (lam = 10: 1 − n·4e-22). Root-sum-square propagation of these scales does not blow up through the
# LSTM recurrence the way the worst case |W_hh|·e does (e grows ~(√H/2)^T; s contracts with Σ_j W_ij²).
_LAMBDA = 10.0
ROUNDING = {
    "float64": Rounding(2.0 ** -53, 2.0 ** -53, _C_FN, _DEPTH_SLACK, 2.3e-308, _LAMBDA,
                        "float64 port: IEEE double, any summation order"),
    "float32": Rounding(2.0 ** -24, 2.0 ** -24, _C_FN, _DEPTH_SLACK, 1.2e-38, _LAMBDA,
                        "float32 port: IEEE single, any summation order"),
    # float16 storage, float32 accumulation (GPU / MLAS half kernels): every stored result rounded to
    # 2^-11, sums and products inside a kernel in float32; floor 6.1e-5 = float16's smallest normal.
    "float16": Rounding(2.0 ** -24, 2.0 ** -11, _C_FN, _DEPTH_SLACK, 6.1e-5, _LAMBDA,
                        "float16 storage with float32 accumulation"),
}
# What a candidate of each dtype is judged with: its own rounding plus the float64 reference's.
CONFORMANCE = {name: r.plus(ROUNDING["float64"]) if name != "float64" else r.plus(r) for name, r in ROUNDING.items()}

# The two float16 classes, by where sums accumulate. float32 accumulation (GPU / MLAS half kernels) is
# CONFORMANCE["float16"]. float16 accumulation (a framework's own float16 scatter-add, einsum and reductions
# on CPU: every partial sum rounded to 2^-11): u_acc = u_store = 2^-11. Its worst case γ_n is infinite past
# n·u >= 1/2 (n >= 512 with the depth slack), where the probabilistic bound λ·√n·u·Σ|terms| alone applies.
ACCUMULATION = {
    "float32": CONFORMANCE["float16"],
    "float16": Rounding(2.0 ** -11, 2.0 ** -11, _C_FN, _DEPTH_SLACK, 6.1e-5, _LAMBDA,
                        "float16 storage with float16 accumulation").plus(ROUNDING["float64"]),
}

# Exported ONNX graphs (onnx_export/parity.py, verify --onnx), keyed by (export dtype, provider): the
# graph's parameters are rounded to the export dtype (inputs_rounded), everything else as for a port.
# ONNX Runtime's float16 CPU kernels and the float16 ReferenceEvaluator (NumPy) accumulate in float32.
# TF32 MatMul (CUDA, use_tf32=1) rounds the factors of every product to a 10-bit mantissa: u_acc = 2^-11.
_GRAPH_F32 = CONFORMANCE["float32"]._replace(inputs_rounded=True, reason="float32 graph: parameters rounded to "
                                             "float32, any summation order, float32 sigmoid/tanh")
_GRAPH_F16 = CONFORMANCE["float16"]._replace(inputs_rounded=True, reason="float16 graph: parameters and every "
                                             "stored result rounded to float16 (2^-11), float32 accumulation")
ONNX_ROUNDING = {
    ("float32", "cpu"): _GRAPH_F32,
    ("float32", "onnx-reference"): _GRAPH_F32,
    ("float32", "cuda"): _GRAPH_F32._replace(reason="float32 CUDA EP, use_tf32=0: IEEE float32, other order"),
    ("float32", "cuda-tf32"): _GRAPH_F32._replace(u_acc=2.0 ** -11 + 2.0 ** -53, reason="float32 CUDA EP with "
                                                  "TF32 MatMul: products of 10-bit-mantissa factors (2^-11)"),
    ("float16", "cpu"): _GRAPH_F16,
    ("float16", "onnx-reference"): _GRAPH_F16,
    ("float16", "cuda"): _GRAPH_F16._replace(reason="float16 CUDA EP: float16 storage, float32 accumulation"),
    ("float16", "cuda-tf32"): _GRAPH_F16._replace(reason="float16 CUDA EP: TF32 applies to float32 MatMul only"),
    # Other runtimes (onnx_export/runtimes.py), each in float32 precision: OpenVINO's CPU default on bf16-capable
    # CPUs is bf16 (u = 2^-8), far outside these bounds, so the runner sets INFERENCE_PRECISION_HINT=f32.
    ("float32", "openvino"): _GRAPH_F32._replace(reason="float32 graph on OpenVINO CPU, INFERENCE_PRECISION_HINT=f32"),
    ("float16", "openvino"): _GRAPH_F16._replace(reason="float16 graph on OpenVINO CPU, INFERENCE_PRECISION_HINT=f32"),
    ("float32", "openvino-ep"): _GRAPH_F32._replace(reason="float32 graph on onnxruntime's OpenVINO EP, FP32"),
    ("float16", "openvino-ep"): _GRAPH_F16._replace(reason="float16 graph on onnxruntime's OpenVINO EP, FP32"),
    ("float32", "tract"): _GRAPH_F32._replace(reason="float32 graph on tract: IEEE single, its own kernels"),
    ("float16", "tract"): _GRAPH_F16._replace(reason="float16 graph on tract: float16 storage"),
}
