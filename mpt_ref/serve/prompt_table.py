"""The prompt table TensorRT-LLM's runtime (and NeMo's TensorRT-LLM export) takes, and a NumPy emulation
of its lookup that pins the semantics (spec/serving.md).

TensorRT-LLM's prompt-tuning embedding takes a ``prompt_table`` of shape (K·T, D) (K tasks of T virtual
tokens each, flattened task-major), a task id per request and ``task_vocab_size`` = T. A token id
``>= vocab_size`` is a prompt token: id ``vocab_size + j`` of a request with task k reads row ``k·T + j``
of the table; every other id reads the word embeddings. PEFT's prepend then reads, for task k,

    input_ids = [vocab_size + 0, ..., vocab_size + T - 1, <the user's ids>]

(T = N for a causal LM). TensorRT-LLM itself is not installable here (no CUDA and no wheel in the
package mirror), so ``trtllm_lookup`` restates its lookup in NumPy; the PEFT tests check it against
PEFT's ``get_prompt``. Unlike TensorRT-LLM, which does not range-check (an id past the task's T rows reads
the next task's rows), the emulation refuses such ids.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from mpt_ref import _checks
from mpt_ref._version import SPEC_VERSION, __version__
from mpt_ref.errors import IndexRangeError, InputError
from mpt_ref.io.staged import StagedSet
from onnx_export._spec import module_spec
from onnx_export.exporter import export_dtype
from onnx_export.reference import prompt_table as reference_prompt_table

FORMAT = "mpt-ref prompt table 1"
OFFSET_RULE = ("a token id >= vocab_size is a prompt token: id vocab_size + j (0 <= j < T) of a request with task k "
               "reads row k*T + j of the flattened (K*T, D) table (TensorRT-LLM: task_vocab_size = T); other ids "
               "read the word embeddings")


def prompt_table(module: Any, dtype: Any = "float32") -> np.ndarray:
    """(K, T, D): row k = the prompt PEFT's ``get_prompt`` gives for task k (K = 1 for PT and P-tuning),
    computed in float64 and rounded once to ``dtype`` (float32 or float16)."""
    spec = module_spec(module)
    table = reference_prompt_table(spec)  # (K, T, D) for MPT, (T, D) otherwise
    if not spec.kind.takes_task_ids:  # one prompt for every row, not one per task
        table = table[None]  # 1,T,D
    return table.astype(export_dtype(dtype))


def sidecar(module: Any, table: np.ndarray, *, vocab_size: int | None = None) -> dict[str, Any]:
    """The JSON sidecar: what a server needs to use ``table`` as PEFT would."""
    spec = module_spec(module)
    K, T, D = table.shape
    config = module.config
    N, subs = int(config.num_virtual_tokens), int(config.num_transformer_submodules)
    task_type = getattr(config.task_type, "value", config.task_type)
    layout = ("input_ids = [vocab_size + 0, ..., vocab_size + N - 1] + the user's ids, attention_mask = [1]*N + the "
              "user's mask, with the request's task id k (PEFT prepends the prompt before the ids)")
    out: dict[str, Any] = {
        "format": FORMAT,
        "peft_type": getattr(config.peft_type, "value", config.peft_type),
        "task_type": task_type,
        "kind": spec.kind.value,
        "num_tasks": K,
        "task_ids": list(range(K)),
        "num_virtual_tokens": N,
        "num_transformer_submodules": subs,
        "total_virtual_tokens": T,
        "task_vocab_size": T,
        "token_dim": D,
        "dtype": table.dtype.name,
        "shape": [K, T, D],
        "prompt_table_shape": [K * T, D],
        "vocab_offset_rule": OFFSET_RULE,
        "input_ids_layout": layout,
        "spec_version": SPEC_VERSION,
        "mpt_ref_version": __version__,
    }
    if subs == 2:
        out["seq2seq"] = (f"PEFT feeds the encoder rows 0..{N - 1} of a task's prompt; for MPT the decoder gets rows "
                          f"{N}..{T - 1} prepended to decoder_inputs_embeds; PT and P-tuning use no decoder prompt")
    if vocab_size is not None:
        V = _checks.positive_int("vocab_size", vocab_size)
        out["vocab_size"] = V
        out["prompt_input_ids"] = list(range(V, V + N))
    return out


TABLE_NAME, SIDECAR_NAME = "prompt_table.npy", "prompt_table.json"


def prompt_table_files(module: Any, *, dtype: Any = "float32", vocab_size: int | None = None) -> dict[str, bytes]:
    """The set ``--format prompt-table`` writes: {TABLE_NAME: the .npy bytes, SIDECAR_NAME: the JSON sidecar
    naming the table's sha256}."""
    table = prompt_table(module, dtype)
    buf = io.BytesIO()
    np.save(buf, table, allow_pickle=False)
    data = buf.getvalue()
    meta = sidecar(module, table, vocab_size=vocab_size)
    meta["file"] = TABLE_NAME
    meta["sha256"] = hashlib.sha256(data).hexdigest()
    return {TABLE_NAME: data, SIDECAR_NAME: (json.dumps(meta, indent=2) + "\n").encode()}


def check_prompt_table(module: Any, directory: str | os.PathLike, *, dtype: Any = "float32") -> TableReport:
    """Read a written set back: the table must be the float64 reference rounded once to ``dtype``, bit for
    bit (spec/serving.md), and the sidecar must name its sha256, shape and dtype."""
    directory = Path(directory)
    problems = []
    data = (directory / TABLE_NAME).read_bytes()
    meta = json.loads((directory / SIDECAR_NAME).read_text())
    got = np.load(io.BytesIO(data), allow_pickle=False)
    want = reference_prompt_table(module_spec(module))
    want = want if want.ndim == 3 else want[None]
    ref = want.astype(export_dtype(dtype))
    if got.shape != want.shape or got.dtype != ref.dtype:
        problems.append(f"table: expected shape {want.shape} dtype {ref.dtype}, got {got.shape} {got.dtype}")
        max_abs = float("inf")
    else:
        max_abs = float(np.abs(got.astype(np.float64) - want).max(initial=0.0))
        if not np.array_equal(got, ref):
            problems.append("table: expected the float64 reference rounded once, got other values")
    if meta.get("sha256") != hashlib.sha256(data).hexdigest():
        problems.append(f"{SIDECAR_NAME}: expected the sha256 of {TABLE_NAME}, got {meta.get('sha256')!r}")
    if meta.get("shape") != list(got.shape) or meta.get("dtype") != got.dtype.name:
        problems.append(f"{SIDECAR_NAME}: expected shape {list(got.shape)} dtype {got.dtype.name}, got "
                        f"{meta.get('shape')} {meta.get('dtype')}")
    bound = float(np.abs(want).max(initial=0.0)) * float(np.finfo(ref.dtype).eps) / 2
    return TableReport(str(directory), max_abs, bound, problems)


@dataclasses.dataclass
class TableReport:
    """What ``check_prompt_table`` found: the written table against the float64 reference."""

    directory: str
    max_abs: float
    bound: float  # one rounding: max |reference| · u of the dtype
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems

    def format(self) -> str:
        lines = [f"check: {self.directory} read back vs the float64 reference: max abs {self.max_abs:.2e} "
                 f"(one rounding: <= {self.bound:.2e}, and bit for bit the reference rounded once)"]
        lines += [f"  FAIL: {p}" for p in self.problems]
        lines.append(f"verdict: {'PASS' if self.ok else 'FAIL'}")
        return "\n".join(lines)


def write_prompt_table(
    module: Any,
    directory: str | os.PathLike,
    *,
    dtype: Any = "float32",
    vocab_size: int | None = None,
    overwrite: bool = False,
) -> tuple[TableReport, Path]:
    """Write DIR/prompt_table.npy (the (K, T, D) table) and DIR/prompt_table.json (its sidecar) as one set:
    staged beside DIR, read back and checked (``check_prompt_table``), and swapped into place only when the
    check passes. Returns (the report, DIR). An existing DIR is replaced only with ``overwrite`` (and only
    when it holds nothing but a previous table set)."""
    directory = Path(directory)
    if directory.suffix == ".npy":
        raise InputError(f"output: expected a directory to hold {TABLE_NAME} and {SIDECAR_NAME} (written as one "
                         f"set), got a path ending in .npy: {str(directory)!r}")
    files = prompt_table_files(module, dtype=dtype, vocab_size=vocab_size)
    with StagedSet(directory, names=files, overwrite=overwrite) as stage:
        for name, data in files.items():
            stage.write(name, data)
        report = check_prompt_table(module, stage.path, dtype=dtype)
        report.directory = str(directory)
        if report.ok:
            stage.commit()
    return report, directory


def prompt_input_ids(input_ids: Any, vocab_size: int, num_virtual_tokens: int) -> np.ndarray:
    """(B, S) -> (B, N + S): PEFT's prepend written as TensorRT-LLM prompt-token ids."""
    ids = _checks.int_array("input_ids", input_ids, ndim=2)
    V = _checks.positive_int("vocab_size", vocab_size)
    N = _checks.positive_int("num_virtual_tokens", num_virtual_tokens)
    prompt = np.broadcast_to(np.arange(V, V + N, dtype=np.int64), (ids.shape[0], N))
    return np.concatenate([prompt, ids], axis=1)


def trtllm_lookup(
    input_ids: Any,
    tasks: Any,
    prompt_table_2d: Any,
    word_embeddings: Any,
    task_vocab_size: int,
) -> np.ndarray:
    """TensorRT-LLM's prompt-tuning embedding in NumPy: input_ids (B, S'), tasks (B,), prompt_table_2d
    (K·T, D), word_embeddings (V, D) -> (B, S', D). An id >= V reads prompt row
    tasks[b]·task_vocab_size + (id - V); other ids read W. Out-of-range ids are refused."""
    ids = _checks.int_array("input_ids", input_ids, ndim=2)
    t = _checks.int_array("tasks", tasks, ndim=1)
    table, w = np.asarray(prompt_table_2d), np.asarray(word_embeddings)
    if table.ndim != 2 or w.ndim != 2 or table.shape[1] != w.shape[1]:
        raise InputError(f"prompt_table_2d, word_embeddings: expected (K*T, D) and (V, D) with one D, got shapes "
                         f"{table.shape} and {w.shape}")
    if t.shape[0] != ids.shape[0]:
        raise InputError(f"tasks: expected length B={ids.shape[0]}, got length {t.shape[0]}")
    T = _checks.positive_int("task_vocab_size", task_vocab_size)
    V, K = w.shape[0], table.shape[0] // T
    if table.shape[0] != K * T:
        raise InputError(f"prompt_table_2d: expected a multiple of task_vocab_size={T} rows, got {table.shape[0]}")
    if (t < 0).any() or (t >= K).any():
        raise IndexRangeError(f"tasks: expected task ids in [0, {K}), got {t.tolist()}")
    if (ids < 0).any() or (ids >= V + T).any():
        raise IndexRangeError(f"input_ids: expected ids in [0, {V + T}) (vocabulary then T={T} prompt ids), got "
                              f"min {ids.min()}, max {ids.max()}")
    is_prompt = ids >= V  # B,S'
    rows = np.where(is_prompt, t[:, None] * T + (ids - V), 0)  # B,S'
    return np.where(is_prompt[..., None], table[rows], w[np.where(is_prompt, 0, ids)])
