"""Conformance cases as data, and how each is built into (module, inputs, dout).

A case names a module kind, a config in ``adapter_config.json`` form, a seed, a dtype and the input
shape. ``build_case`` is the only place that turns a case into arrays: the module is constructed with
``seed`` (mpt_ref's init, spec/init.md), inputs and the upstream gradient come from
``numpy.random.default_rng(seed + 1)`` in a fixed draw order (indices, task ids, dout, then the dropout
keep masks of a train-mode case). float16 cases: the float32 module's parameters rounded to float16,
judged with the case's ``accumulation`` class (float32: half kernels; float16: float16 reductions).
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save_file

from mpt_ref.conformance.exact import exact_output_and_grads
from mpt_ref.conformance.exact_train import lstm_encoder_train
from mpt_ref.modules.config import config_from_dict
from mpt_ref.kind import Kind
from mpt_ref.modules.multitask import MultitaskPromptEmbedding
from mpt_ref.modules.prompt_embedding import PromptEmbedding
from mpt_ref.modules.prompt_encoder import PromptEncoder

MODULE_CLASSES = {
    Kind.PROMPT_EMBEDDING: PromptEmbedding,
    Kind.MPT: MultitaskPromptEmbedding,
    Kind.MLP_ENCODER: PromptEncoder,
    Kind.LSTM_ENCODER: PromptEncoder,
}


@dataclasses.dataclass(frozen=True)
class CaseSpec:
    name: str
    module: Kind                     # given as its value, e.g. "mpt"
    config: dict[str, Any]           # adapter_config.json form
    description: str
    seed: int = 0
    dtype: str = "float64"
    batch: int = 3
    indices: str = "arange"          # "arange" (PEFT's rows) or "random" (any ids in [0, T), repeats)
    task_ids: tuple[int, ...] | None = None  # MPT only; None draws B ids in [0, K)
    source_tasks: int = 0            # MPT source inits: tasks in the generated source checkpoint
    accumulation: str | None = None  # float16 only: "float32" (default class) or "float16"
    train: bool = False              # LSTM train mode: explicit dropout keep masks (inputs dropout_mask_k)

    def __post_init__(self) -> None:
        object.__setattr__(self, "module", Kind.parse(self.module))
        if self.task_ids is not None and len(self.task_ids) not in (self.batch, 1):
            raise ValueError(f"{self.name}: task_ids length {len(self.task_ids)} is neither batch={self.batch} nor 1")


def _mpt(**kw: Any) -> dict[str, Any]:
    return {"peft_type": "MULTITASK_PROMPT_TUNING", "task_type": "CAUSAL_LM", **kw}


def _pt(**kw: Any) -> dict[str, Any]:
    return {"peft_type": "PROMPT_TUNING", "task_type": "CAUSAL_LM", **kw}


_SOURCE = {"prompt_tuning_init_state_dict_path": "source.safetensors"}  # relative to the case directory


def _enc(kind: str, **kw: Any) -> dict[str, Any]:
    return {"peft_type": "P_TUNING", "task_type": "CAUSAL_LM", "encoder_reparameterization_type": kind, **kw}


CASES: tuple[CaseSpec, ...] = (
    # prompt tuning
    CaseSpec("pt_basic", "prompt_embedding", _pt(num_virtual_tokens=4, token_dim=5), "PEFT-shaped rows"),
    CaseSpec("pt_random_ids", "prompt_embedding", _pt(num_virtual_tokens=3, token_dim=4), "repeated ids: scatter-add",
             indices="random", batch=4),
    CaseSpec("pt_b1_t1", "prompt_embedding", _pt(num_virtual_tokens=1, token_dim=3), "B = 1, T = 1", batch=1),
    # multitask prompt tuning
    CaseSpec("mpt_k3_r2", "mpt", _mpt(num_virtual_tokens=4, token_dim=6, num_tasks=3, num_ranks=2),
             "repeated and unsorted task ids", task_ids=(2, 0, 2, 1), batch=4),
    CaseSpec("mpt_len1_task_ids", "mpt", _mpt(num_virtual_tokens=3, token_dim=4, num_tasks=3, num_ranks=2),
             "length-1 task_ids broadcast over B = 3", task_ids=(1,)),
    CaseSpec("mpt_k1_r1", "mpt", _mpt(num_virtual_tokens=3, token_dim=4, num_tasks=1, num_ranks=1),
             "K = 1, R = 1 (the paper's rank one)", task_ids=(0, 0), batch=2),
    CaseSpec("mpt_r_gt_d", "mpt", _mpt(num_virtual_tokens=2, token_dim=2, num_tasks=2, num_ranks=5),
             "R > D", task_ids=(1, 0), batch=2),
    CaseSpec("mpt_b1_t1", "mpt", _mpt(num_virtual_tokens=1, token_dim=3, num_tasks=2, num_ranks=2),
             "B = 1, T = 1", task_ids=(1,), batch=1),
    CaseSpec("mpt_s2_seq2seq", "mpt", _mpt(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=2, token_dim=4, num_tasks=2,
                                           num_ranks=2), "S = 2: T = 2N rows", task_ids=(0, 1, 1)),
    CaseSpec("mpt_random_ids", "mpt", _mpt(num_virtual_tokens=3, token_dim=4, num_tasks=3, num_ranks=2),
             "distinct index rows with repeats", indices="random", batch=4),
    CaseSpec("mpt_init_average", "mpt", _mpt(num_virtual_tokens=3, token_dim=4, num_ranks=2, **_SOURCE,
                                             prompt_tuning_init="AVERAGE_SOURCE_TASKS"),
             "AVERAGE_SOURCE_TASKS from a K=3 source: product of the averaged factors", task_ids=(0,),
             source_tasks=3),
    CaseSpec("mpt_init_exact", "mpt", _mpt(num_virtual_tokens=3, token_dim=4, num_ranks=2, **_SOURCE,
                                           prompt_tuning_init="EXACT_SOURCE_TASK", prompt_tuning_init_task=2),
             "EXACT_SOURCE_TASK: source task 2 of 3", task_ids=(0,), source_tasks=3),
    CaseSpec("mpt_init_shared", "mpt", _mpt(num_virtual_tokens=3, token_dim=4, num_ranks=2, num_tasks=2, **_SOURCE,
                                            prompt_tuning_init="ONLY_SOURCE_SHARED"),
             "ONLY_SOURCE_SHARED: E from the source, factors random", task_ids=(1, 0, 1), source_tasks=3),
    CaseSpec("mpt_k3_r2_f32", "mpt", _mpt(num_virtual_tokens=4, token_dim=6, num_tasks=3, num_ranks=2),
             "float32 (PEFT's dtype)", dtype="float32", task_ids=(2, 0, 2, 1), batch=4),
    # P-tuning encoders (random, gate-asymmetric LSTM weights: PyTorch's U(±1/√H) init, never all-equal)
    CaseSpec("mlp_basic", "mlp_encoder", _enc("MLP", num_virtual_tokens=3, token_dim=4, encoder_hidden_size=5),
             "MLP head D→H→H→D"),
    CaseSpec("mlp_s2_h1", "mlp_encoder", _enc("MLP", task_type="SEQ_2_SEQ_LM", num_virtual_tokens=2, token_dim=3,
                                              encoder_hidden_size=1), "S = 2, H = 1", batch=2),
    CaseSpec("mlp_f32", "mlp_encoder", _enc("MLP", num_virtual_tokens=3, token_dim=4, encoder_hidden_size=6),
             "float32", dtype="float32"),
) + tuple(
    CaseSpec(f"lstm_l{L}", "lstm_encoder",
             _enc("LSTM", num_virtual_tokens=4, token_dim=3, encoder_hidden_size=2, encoder_num_layers=L),
             f"bidirectional LSTM, L = {L}", seed=L)
    for L in (1, 2, 3)
) + (
    CaseSpec("lstm_t1_b1", "lstm_encoder",
             _enc("LSTM", num_virtual_tokens=1, token_dim=2, encoder_hidden_size=3, encoder_num_layers=2),
             "T = 1, B = 1", batch=1),
    CaseSpec("lstm_s2_random_ids", "lstm_encoder",
             _enc("LSTM", task_type="SEQ_2_SEQ_LM", num_virtual_tokens=2, token_dim=3, encoder_hidden_size=2,
                  encoder_num_layers=2), "S = 2 with distinct index rows", indices="random"),
    CaseSpec("lstm_l2_f32", "lstm_encoder",
             _enc("LSTM", num_virtual_tokens=4, token_dim=3, encoder_hidden_size=4, encoder_num_layers=2),
             "float32", dtype="float32"),
    # past kernels' vector/tile widths: B >= 8, H >= 16, D >= 33, T == R > 1 (a port wrong only in a loop's
    # tail or past one tile fails these and none of the small ones)
    CaseSpec("pt_wide", "prompt_embedding", _pt(num_virtual_tokens=5, token_dim=33), "D = 33, B = 9, repeated ids",
             indices="random", batch=9),
    CaseSpec("mpt_wide_t_eq_r", "mpt", _mpt(num_virtual_tokens=5, token_dim=33, num_tasks=3, num_ranks=5),
             "T == R = 5, D = 33, B = 9, unsorted repeated tasks", task_ids=(2, 0, 2, 1, 1, 0, 2, 2, 1), batch=9),
    CaseSpec("mpt_wide_f32", "mpt", _mpt(num_virtual_tokens=17, token_dim=65, num_tasks=2, num_ranks=17),
             "float32, T == R = 17, D = 65, B = 8", dtype="float32", task_ids=(1, 0, 0, 1, 1, 1, 0, 1), batch=8),
    CaseSpec("mlp_wide", "mlp_encoder", _enc("MLP", num_virtual_tokens=4, token_dim=33, encoder_hidden_size=17),
             "H = 17, D = 33, B = 8", batch=8),
    CaseSpec("mlp_wide_f32", "mlp_encoder", _enc("MLP", num_virtual_tokens=9, token_dim=17, encoder_hidden_size=33),
             "float32, H = 33, D = 17, B = 9", dtype="float32", batch=9),
    CaseSpec("lstm_wide", "lstm_encoder",
             _enc("LSTM", num_virtual_tokens=5, token_dim=9, encoder_hidden_size=17, encoder_num_layers=2),
             "H = 17, D = 9, T = 5, L = 2, B = 8", batch=8),
    CaseSpec("lstm_wide_f32", "lstm_encoder",
             _enc("LSTM", num_virtual_tokens=9, token_dim=33, encoder_hidden_size=16, encoder_num_layers=1),
             "float32, H = 16, D = 33, T = 9, B = 9", dtype="float32", batch=9),
    # config fields a port can get wrong silently: eval mode with encoder_dropout > 0 (a port left in train
    # mode drops units between LSTM layers), the MLP with encoder_dropout set (PEFT's MLP has no dropout)
    CaseSpec("lstm_eval_dropout", "lstm_encoder",
             _enc("LSTM", num_virtual_tokens=3, token_dim=4, encoder_hidden_size=3, encoder_num_layers=3,
                  encoder_dropout=0.5), "eval mode, encoder_dropout = 0.5, L = 3: no dropout applies", batch=4),
    CaseSpec("mlp_eval_dropout", "mlp_encoder",
             _enc("MLP", num_virtual_tokens=3, token_dim=4, encoder_hidden_size=5, encoder_dropout=0.5),
             "encoder_dropout = 0.5 on the MLP: PEFT's MLP head has no dropout"),
    # train mode with explicit keep masks (inputs dropout_mask_k, kept values x 1/(1 - p))
    CaseSpec("lstm_train_masks", "lstm_encoder",
             _enc("LSTM", num_virtual_tokens=3, token_dim=3, encoder_hidden_size=2, encoder_num_layers=3,
                  encoder_dropout=0.5), "train mode, L = 3, p = 0.5, explicit dropout masks", train=True),
    CaseSpec("lstm_train_masks_f32", "lstm_encoder",
             _enc("LSTM", num_virtual_tokens=4, token_dim=5, encoder_hidden_size=4, encoder_num_layers=2,
                  encoder_dropout=0.5), "float32 train mode, L = 2, p = 0.5, explicit dropout masks",
             dtype="float32", batch=5, train=True),
    # float16 storage, both accumulation classes (case.json "accumulation")
    CaseSpec("mpt_f16", "mpt", _mpt(num_virtual_tokens=4, token_dim=9, num_tasks=3, num_ranks=2),
             "float16 storage, float32 accumulation", dtype="float16", task_ids=(2, 0, 2, 1, 1), batch=5,
             indices="random"),
    CaseSpec("mpt_f16_acc16", "mpt", _mpt(num_virtual_tokens=4, token_dim=9, num_tasks=3, num_ranks=2),
             "float16 storage, float16 accumulation", dtype="float16", task_ids=(2, 0, 2, 1, 1), batch=5,
             indices="random", accumulation="float16"),
    CaseSpec("mlp_f16", "mlp_encoder", _enc("MLP", num_virtual_tokens=3, token_dim=6, encoder_hidden_size=5),
             "float16 storage, float32 accumulation", dtype="float16", batch=4),
    CaseSpec("mlp_f16_acc16", "mlp_encoder", _enc("MLP", num_virtual_tokens=3, token_dim=6, encoder_hidden_size=5),
             "float16 storage, float16 accumulation", dtype="float16", batch=4, accumulation="float16"),
)


def source_tensors(spec: CaseSpec) -> dict[str, np.ndarray]:
    """The float32 MPT source checkpoint of a source-init case, from default_rng(seed + 2)."""
    rng = np.random.default_rng(spec.seed + 2)
    c = spec.config
    T = c["num_virtual_tokens"] * (2 if c.get("task_type") == "SEQ_2_SEQ_LM" else 1)
    K, R, D = spec.source_tasks, c["num_ranks"], c["token_dim"]
    return {
        "prompt_embeddings": rng.standard_normal((T, D)).astype(np.float32),
        "prefix_task_cols": rng.standard_normal((K, T, R)).astype(np.float32),
        "prefix_task_rows": rng.standard_normal((K, R, D)).astype(np.float32),
    }


def build_case_module(spec: CaseSpec) -> Any:
    config = dict(spec.config)
    with tempfile.TemporaryDirectory() as tmp:
        if spec.source_tasks:
            path = Path(tmp) / config["prompt_tuning_init_state_dict_path"]
            save_file(source_tensors(spec), str(path))
            config["prompt_tuning_init_state_dict_path"] = str(path)
        built = np.float32 if spec.dtype == "float16" else np.dtype(spec.dtype)  # no float16 module: rounded below
        module = MODULE_CLASSES[spec.module](config_from_dict(config), seed=spec.seed, dtype=built)
    if spec.dtype == "float16":
        module.load_state_dict({k: v.astype(np.float16).astype(np.float32) for k, v in module.state_dict().items()})
    if spec.source_tasks:  # the config names the source as the case directory has it, not the temp copy
        module.config = dataclasses.replace(module.config, **_SOURCE)
    if isinstance(module, PromptEncoder):
        return module.train() if spec.train else module.eval()
    return module


def build_inputs(spec: CaseSpec, module: Any) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """(inputs, dout) for ``module``; inputs has "indices" and, for MPT, "task_ids"."""
    rng = np.random.default_rng(spec.seed + 1)
    T, D, B = module.total_virtual_tokens, module.token_dim, spec.batch
    if spec.indices == "arange":
        indices = np.tile(np.arange(T, dtype=np.int64), (B, 1))
    else:
        indices = rng.integers(0, T, size=(B, T), dtype=np.int64)
    inputs = {"indices": indices}
    if spec.module == Kind.MPT:
        tasks = spec.task_ids if spec.task_ids is not None else rng.integers(0, module.num_tasks, size=B)
        inputs["task_ids"] = np.asarray(tasks, dtype=np.int64)
    dout = rng.standard_normal((B, T, D)).astype(spec.dtype)
    if spec.train:
        p, H = module.config.encoder_dropout, module.config.encoder_hidden_size or D
        inputs["dropout_masks"] = [rng.random((B, T, 2 * H)) >= p for _ in range(module.num_layers - 1)]
    return inputs, dout


def run_reference(spec: CaseSpec) -> dict[str, Any]:
    """Everything a vector holds: params, inputs, dout (file key grad_output), output and parameter
    gradients.

    params and inputs come from the module (seeded generators: the same bits everywhere); output and
    grads from conformance/exact.py (exact sums, decimal sigmoid/tanh), not from the module's NumPy
    path, whose BLAS and SIMD kernels differ in the last bits between machines. The module agrees with
    them within the case tolerance (tests/test_vectors.py)."""
    module = build_case_module(spec)
    inputs, dout = build_inputs(spec, module)
    params = {k: v.astype(spec.dtype) for k, v in module.state_dict().items()}
    layers = module.num_layers if spec.module == "lstm_encoder" else 0
    if spec.train:
        p = module.config.encoder_dropout
        scales = [m.astype(np.float64) / (1 - p) for m in inputs["dropout_masks"]]
        output, grads = lstm_encoder_train(params, inputs["indices"], dout, scales, layers)
    else:
        output, grads = exact_output_and_grads(spec.module, params, inputs, dout, num_layers=layers)
    return {"params": params, "inputs": inputs, "dout": dout, "output": output, "grads": grads}
