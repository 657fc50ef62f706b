"""``MultitaskPromptEmbedding``: PEFT's MPT module over the functional core in mpt.py."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from mpt_ref import _checks
from mpt_ref._types import Array, Params
from mpt_ref.core.mpt import mpt_backward, mpt_cache, mpt_forward
from mpt_ref.io.adapter_files import TABLE_KEY
from mpt_ref.modules.base import Module
from mpt_ref.modules.config import SOURCE_INITS, MultitaskPromptTuningConfig
from mpt_ref.modules.init import (
    init_prompt_embedding,
    init_task_factors,
    load_source_checkpoint,
    source_init,
)
from mpt_ref.modules.prompt_embedding import resolve_config


class MultitaskPromptEmbedding(Module):
    """Multitask prompt tuning: out[b] = E[indices[b]] ⊙ (C[t_b] @ R[t_b]).

    Parameters (PEFT order): ``prefix_task_cols`` C (K, T, R), ``prefix_task_rows`` R (K, R, D),
    ``embedding.weight`` E (T, D). Source-checkpoint inits run at construction, also in inference mode,
    as in PEFT.
    """

    config_class = MultitaskPromptTuningConfig

    def __init__(
        self,
        config: MultitaskPromptTuningConfig,
        word_embeddings: Any = None,
        *,
        seed: int | None = None,
        dtype: Any = np.float32,
        init_token_ids: Sequence[int] | None = None,
    ) -> None:
        self.dtype = _checks.float_dtype("dtype", dtype)
        self.config, T, D = resolve_config(config, self.config_class, word_embeddings)
        self.total_virtual_tokens, self.token_dim = T, D
        self.num_tasks, self.num_ranks = config.num_tasks, config.num_ranks
        self.rng = np.random.default_rng(_checks.seed(seed))
        weight = init_prompt_embedding(config, self.rng, word_embeddings, init_token_ids, (T, D), self.dtype)
        cols, rows = init_task_factors(self.rng, self.num_tasks, T, self.num_ranks, D, self.dtype)
        self._params = {"prefix_task_cols": cols, "prefix_task_rows": rows, "embedding.weight": weight}
        if self.config.prompt_tuning_init in SOURCE_INITS:
            source = load_source_checkpoint(config.prompt_tuning_init_state_dict_path)
            self.load_state_dict(source_init(self.config, source, T, D), strict=False)

    def _inputs(self, indices: Any, task_ids: Any) -> tuple[np.ndarray, np.ndarray]:
        ids = _checks.indices(indices, self.total_virtual_tokens, tokens=self.total_virtual_tokens)
        return ids, _checks.task_ids(task_ids, ids.shape[0], self.num_tasks)

    def forward(self, indices: Any, task_ids: Any) -> Array:
        """indices (B, T) in [0, T), task_ids (B,) or (1,) in [0, K) -> (B, T, D)."""
        out, _ = mpt_forward(self._params, *self._inputs(indices, task_ids))
        return out

    def backward(self, grad_output: Any, indices: Any, task_ids: Any) -> Params:
        """Gradient of sum(forward(indices, task_ids) * grad_output), keyed like ``state_dict()``."""
        ids, tasks = self._inputs(indices, task_ids)
        dout = _checks.float_array("grad_output", grad_output, ids.shape + (self.token_dim,), self.dtype)
        return mpt_backward(dout, mpt_cache(self._params, ids, tasks))

    def forward_backward(self, grad_output: Any, indices: Any, task_ids: Any) -> tuple[Array, Params]:
        """(forward(indices, task_ids), backward(grad_output, ...)) from a single forward pass."""
        ids, tasks = self._inputs(indices, task_ids)
        dout = _checks.float_array("grad_output", grad_output, ids.shape + (self.token_dim,), self.dtype)
        out, cache = mpt_forward(self._params, ids, tasks)
        return out, mpt_backward(dout, cache)

    def adapter_tensors(self) -> Params:
        """PEFT's adapter keys: both task factors and the shared prompt as ``prompt_embeddings``."""
        p = self._params
        return {"prefix_task_cols": p["prefix_task_cols"].copy(), "prefix_task_rows": p["prefix_task_rows"].copy(),
                TABLE_KEY: p["embedding.weight"].copy()}

    def get_prompt(self, batch_size: int, task_ids: Any) -> Array:
        """What PEFT's ``get_prompt(batch_size, task_ids)`` returns: forward(arange(T) per row)."""
        B = _checks.positive_int("batch_size", batch_size, minimum=0)
        indices = np.broadcast_to(np.arange(self.total_virtual_tokens), (B, self.total_virtual_tokens))
        return self.forward(indices, task_ids)
