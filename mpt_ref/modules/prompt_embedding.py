"""``PromptEmbedding``: PEFT's prompt-tuning module over the fast path kernels/embedding.py
(plain statement: core/embedding.py)."""

from __future__ import annotations

from typing import Any

import numpy as np

from mpt_ref import _checks
from mpt_ref._types import Array, Params
from mpt_ref.kernels.embedding import EmbeddingCache, embedding_backward, embedding_forward
from mpt_ref.modules.base import Prepared
from mpt_ref.modules.config import PromptTuningConfig
from mpt_ref.modules.prompt_table import PromptTableModule


class PromptEmbedding(PromptTableModule):
    """Prompt tuning: out = E[indices], E = ``embedding.weight`` (T, D).

    Constructor: ``PromptEmbedding(config, word_embeddings=None, *, seed, dtype, init_token_ids)``
    (modules/prompt_table.py).
    """

    config_class = PromptTuningConfig

    def _init_params(self, weight: Array) -> None:
        self._install({"embedding.weight": weight})

    def _prepare(self, indices: Any, *, draw: bool) -> Prepared:
        return Prepared(_checks.indices(indices, self.total_virtual_tokens))  # B,T'

    def _forward_core(self, prepared: Prepared) -> tuple[Array, EmbeddingCache]:
        return embedding_forward(self._params["embedding.weight"], prepared.indices)

    def _cache_core(self, prepared: Prepared) -> EmbeddingCache:
        return EmbeddingCache(prepared.indices, self.total_virtual_tokens)  # the gather is not needed

    def _backward_core(self, dout: Array, cache: EmbeddingCache) -> Params:
        return {"embedding.weight": embedding_backward(dout, cache)}

    def forward(self, indices: Any) -> Array:
        """indices (B, T') in [0, T) -> (B, T', D)."""
        return self._forward(indices)

    def backward(self, dout: Any, indices: Any) -> Params:
        """Gradient of sum(forward(indices) * dout) -> {"embedding.weight": (T, D)}."""
        return self._backward(dout, indices)

    def forward_backward(self, dout: Any, indices: Any) -> tuple[Array, Params]:
        """(forward(indices), backward(dout, indices)) from a single forward pass."""
        return self._forward_backward(dout, indices)

    def get_prompt(self, batch_size: int) -> Array:
        """What PEFT's ``get_prompt`` returns: forward(arange(T)) repeated over the batch (B, T, D)."""
        B = _checks.positive_int("batch_size", batch_size, minimum=0)
        return np.repeat(self._params["embedding.weight"][None], B, axis=0)
