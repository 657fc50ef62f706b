"""``MultitaskPromptEmbedding``: PEFT's MPT module over the fast path kernels/mpt.py (plain statement:
core/mpt.py)."""

from __future__ import annotations

from typing import Any

import numpy as np

from mpt_ref import _checks
from mpt_ref._types import Array, Params
from mpt_ref.kernels.mpt import MptCache, mpt_backward, mpt_cache, mpt_forward
from mpt_ref.io.adapter_files import TABLE_KEY
from mpt_ref.modules.base import Prepared
from mpt_ref.modules.config import SOURCE_INITS, MultitaskPromptTuningConfig
from mpt_ref.modules.init import (
    init_task_factors,
    load_source_checkpoint,
    source_init,
)
from mpt_ref.modules.prompt_table import PromptTableModule


class MultitaskPromptEmbedding(PromptTableModule):
    """Multitask prompt tuning: out[b] = E[indices[b]] ⊙ (C[t_b] @ R[t_b]).

    Parameters (PEFT order): ``prefix_task_cols`` C (K, T, R), ``prefix_task_rows`` R (K, R, D),
    ``embedding.weight`` E (T, D). Source-checkpoint inits run at construction, also in inference mode,
    as in PEFT.
    """

    config_class = MultitaskPromptTuningConfig

    def _init_params(self, weight: Array) -> None:
        T, D = self.total_virtual_tokens, self.token_dim
        self.num_tasks, self.num_ranks = self.config.num_tasks, self.config.num_ranks
        cols, rows = init_task_factors(self.rng, self.num_tasks, T, self.num_ranks, D, self.dtype)
        self._install({"prefix_task_cols": cols, "prefix_task_rows": rows, "embedding.weight": weight})
        if self.config.prompt_tuning_init in SOURCE_INITS:
            source = load_source_checkpoint(self.config.prompt_tuning_init_state_dict_path)
            self.load_state_dict(source_init(self.config, source, T, D), strict=False)

    def _prepare(self, indices: Any, task_ids: Any, *, draw: bool) -> Prepared:
        ids = _checks.indices(indices, self.total_virtual_tokens, tokens=self.total_virtual_tokens)  # B,T
        return Prepared(ids, _checks.task_ids(task_ids, ids.shape[0], self.num_tasks))  # B|1

    def _forward_core(self, prepared: Prepared) -> tuple[Array, MptCache]:
        return mpt_forward(self._params, prepared.indices, prepared.task_ids)

    def _cache_core(self, prepared: Prepared) -> MptCache:
        return mpt_cache(self._params, prepared.indices, prepared.task_ids)  # no (B,T,D) output formed

    def _backward_core(self, dout: Array, cache: MptCache) -> Params:
        return mpt_backward(dout, cache)

    def forward(self, indices: Any, task_ids: Any) -> Array:
        """indices (B, T) in [0, T), task_ids (B,) or (1,) in [0, K) -> (B, T, D)."""
        return self._forward(indices, task_ids)

    def backward(self, dout: Any, indices: Any, task_ids: Any) -> Params:
        """Gradient of sum(forward(indices, task_ids) * dout), keyed like ``state_dict()``. Reuses the
        last forward's work when it provably applies (modules/base.py), else recomputes."""
        return self._backward(dout, indices, task_ids)

    def forward_backward(self, dout: Any, indices: Any, task_ids: Any) -> tuple[Array, Params]:
        """(forward(indices, task_ids), backward(dout, ...)) from a single forward pass."""
        return self._forward_backward(dout, indices, task_ids)

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
