"""Initialisation strategies for prompt embeddings and MPT task factors. Rules: spec/init.md.

Draw order (all from one ``numpy.random.Generator``): E ~ N(0, 1), then the SAMPLE_VOCAB ids, then
C ~ N(0, 0.02²), then R ~ N(0, 0.02²). Values are drawn in float64 and cast, so a float32 module equals
the float64 module of the same seed rounded to float32.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mpt_ref import _checks
from mpt_ref._types import Array
from mpt_ref.errors import CheckpointError, ConfigError, InputError
from mpt_ref.io.limits import exc_text, read_regular_file
from mpt_ref.modules.config import (
    MultitaskPromptTuningConfig,
    MultitaskPromptTuningInit,
    PromptTuningConfig,
)

MPT_FACTOR_STD = 0.02  # PEFT: torch.normal(0, 0.02) for prefix_task_cols and prefix_task_rows


def normal(rng: np.random.Generator, shape: tuple[int, ...], std: float, dtype: np.dtype) -> Array:
    return (rng.standard_normal(shape) * std).astype(dtype)


def word_embedding_rows(word_embeddings: Any, token_ids: np.ndarray, token_dim: int, dtype: np.dtype) -> Array:
    """word_embeddings (V,D) [token_ids] cast to ``dtype`` (PEFT copies and casts to float32)."""
    if word_embeddings is None:
        raise InputError("word_embeddings: expected an ndarray (V, D) for TEXT / SAMPLE_VOCAB init, got None")
    table = np.asarray(word_embeddings)
    if table.ndim != 2 or not np.issubdtype(table.dtype, np.floating):
        raise InputError(f"word_embeddings: expected a float ndarray (V, D), got {_checks._describe(table)}")
    if table.shape[1] != token_dim:
        raise InputError(f"word_embeddings: expected D={token_dim} columns (token_dim), got shape {table.shape}")
    _checks.in_range("init token ids", token_ids, table.shape[0], "vocabulary size V")
    return table[token_ids].astype(dtype)


def cycle_ids(ids: Sequence[int], total: int) -> np.ndarray:
    """PEFT's TEXT rule: prompt token k is ids[k mod n] (truncate when n >= T, else repeat)."""
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    if ids.size == 0:
        raise ConfigError("prompt_tuning_init_text: expected text that tokenizes to >= 1 token, got 0 tokens")
    return ids[np.arange(total) % ids.size]


def tokenize_init_text(config: PromptTuningConfig) -> list[int]:
    """Token ids of ``prompt_tuning_init_text`` from a local ``tokenizer.json`` (optional ``tokenizers``).

    ``tokenizer_name_or_path`` must be a tokenizer.json file or a directory containing one; special
    tokens are added as PEFT's AutoTokenizer call does by default. Hub names are not downloaded: pass
    ``init_token_ids=`` to the module instead.
    """
    try:
        from tokenizers import Tokenizer
    except ImportError as exc:
        raise ConfigError(
            "prompt_tuning_init='TEXT': expected init_token_ids=... or the optional 'tokenizers' package "
            "to read tokenizer_name_or_path (pip install 'mpt-ref[text]'), got neither"
        ) from exc
    path = Path(config.tokenizer_name_or_path)
    path = path / "tokenizer.json" if path.is_dir() else path
    if not path.is_file():
        raise ConfigError(
            f"tokenizer_name_or_path: expected a local tokenizer.json or a directory holding one, got {path}"
            " (pass init_token_ids=... for tokenizers that are not on disk)"
        )
    text = read_regular_file(path, MAX_TOKENIZER_BYTES, ConfigError, "tokenizer.json")  # no FIFO, device, huge file
    try:
        return Tokenizer.from_str(text.decode("utf-8")).encode(config.prompt_tuning_init_text).ids
    except Exception as exc:  # noqa: BLE001 - the library raises a bare Exception for a file it cannot read
        raise ConfigError(f"tokenizer_name_or_path: expected a tokenizer.json the tokenizers library reads, got "
                          f"{path} ({exc_text(exc)})") from None


MAX_TOKENIZER_BYTES = 64 << 20  # a tokenizer.json with a 250k vocabulary is ~20 MB


def init_prompt_embedding(
    config: PromptTuningConfig,
    rng: np.random.Generator,
    word_embeddings: Any,
    init_token_ids: Sequence[int] | None,
    shape: tuple[int, int],
    dtype: np.dtype,
) -> Array:
    """``embedding.weight`` (T,D) by RANDOM / SAMPLE_VOCAB / TEXT. TEXT and SAMPLE_VOCAB are skipped in
    inference mode, as in PEFT (the weights are expected from a checkpoint)."""
    T, D = shape
    weight = normal(rng, (T, D), 1.0, dtype)  # nn.Embedding default N(0, 1)
    init = getattr(config.prompt_tuning_init, "value", config.prompt_tuning_init)
    if config.inference_mode or init not in ("TEXT", "SAMPLE_VOCAB"):
        return weight
    if init == "SAMPLE_VOCAB":
        if word_embeddings is None:
            raise InputError("word_embeddings: expected an ndarray (V, D) for SAMPLE_VOCAB init, got None")
        rows = np.shape(word_embeddings)[0] if np.ndim(word_embeddings) == 2 else 0
        if rows < 1:
            raise InputError(f"word_embeddings: expected a (V, D) vocabulary of V >= 1 rows for SAMPLE_VOCAB init, "
                             f"got shape {np.shape(word_embeddings)}")
        ids = rng.integers(0, rows, size=T)  # uniform, with replacement
    else:
        if init_token_ids is None:
            init_token_ids = tokenize_init_text(config)
        ids = cycle_ids(_checks.int_array("init_token_ids", np.asarray(init_token_ids).reshape(-1), ndim=1), T)
    return word_embedding_rows(word_embeddings, ids, D, dtype)


def init_task_factors(
    rng: np.random.Generator, num_tasks: int, total_tokens: int, num_ranks: int, token_dim: int, dtype: np.dtype
) -> tuple[Array, Array]:
    """prefix_task_cols (K,T,R) then prefix_task_rows (K,R,D), each N(0, 0.02²)."""
    cols = normal(rng, (num_tasks, total_tokens, num_ranks), MPT_FACTOR_STD, dtype)
    rows = normal(rng, (num_tasks, num_ranks, token_dim), MPT_FACTOR_STD, dtype)
    return cols, rows


def load_source_checkpoint(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Tensors of an MPT source checkpoint: ``.safetensors`` or a PyTorch ``.bin`` (read without torch)."""
    from mpt_ref.io.checkpoint import read_tensors

    return read_tensors(path)


def _source_tensor(source: dict[str, np.ndarray], key: str, shape: tuple[int, ...], what: str) -> np.ndarray:
    if key not in source:
        raise CheckpointError(
            f"source checkpoint: expected key {key!r} for {what}, got keys {sorted(source)}"
        )
    arr = source[key]
    if not np.issubdtype(arr.dtype, np.floating):
        raise CheckpointError(f"source checkpoint {key!r}: expected a float tensor, got dtype {arr.dtype}")
    if arr.ndim != len(shape) or any(s is not None and a != s for a, s in zip(arr.shape, shape)):
        want = "(" + ", ".join("K" if s is None else str(s) for s in shape) + ")"
        raise CheckpointError(f"source checkpoint {key!r}: expected shape {want} for {what}, got {arr.shape}")
    return arr


def source_init(config: MultitaskPromptTuningConfig, source: dict[str, np.ndarray], T: int, D: int) -> dict[str, np.ndarray]:
    """The params a source-checkpoint init loads (PEFT keys, source dtype).

    AVERAGE_SOURCE_TASKS: mean over tasks of C and of R separately (a product of averages, as PEFT),
    EXACT_SOURCE_TASK: task ``prompt_tuning_init_task`` of C and R; both also load E.
    ONLY_SOURCE_SHARED: E only (C and R keep their random init).
    """
    init = config.prompt_tuning_init
    what = f"{init.value} init (T={T}, D={D}, R={config.num_ranks})"
    loaded = {"embedding.weight": _source_tensor(source, "prompt_embeddings", (T, D), what)}
    if init == MultitaskPromptTuningInit.ONLY_SOURCE_SHARED:
        return loaded
    R = config.num_ranks
    cols = _source_tensor(source, "prefix_task_cols", (None, T, R), what)  # Ks,T,R
    rows = _source_tensor(source, "prefix_task_rows", (cols.shape[0], R, D), what)  # Ks,R,D
    if init == MultitaskPromptTuningInit.AVERAGE_SOURCE_TASKS:
        loaded["prefix_task_cols"] = cols.mean(axis=0, keepdims=True)  # 1,T,R
        loaded["prefix_task_rows"] = rows.mean(axis=0, keepdims=True)  # 1,R,D
    else:
        task = config.prompt_tuning_init_task
        if task >= cols.shape[0]:
            raise ConfigError(
                f"prompt_tuning_init_task: expected a source task in [0, {cols.shape[0]}) "
                f"(the source checkpoint has {cols.shape[0]} tasks), got {task}"
            )
        loaded["prefix_task_cols"] = cols[task : task + 1]  # 1,T,R
        loaded["prefix_task_rows"] = rows[task : task + 1]  # 1,R,D
    return loaded
