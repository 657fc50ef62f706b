"""``PromptEmbedding``: PEFT's prompt-tuning module over the functional core in embedding.py."""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

from mpt_ref import _checks
from mpt_ref._types import Array, Params
from mpt_ref.core.embedding import EmbeddingCache, embedding_backward, embedding_forward
from mpt_ref.errors import ConfigError
from mpt_ref.modules.base import Module
from mpt_ref.modules.config import PromptTuningConfig
from mpt_ref.modules.init import init_prompt_embedding


def resolve_config(config: Any, config_cls: type, word_embeddings: Any) -> tuple[Any, int, int]:
    """(config, T, D); a None token_dim is taken from word_embeddings (as PEFT takes it from the base
    model) and filled into a copy of the config."""
    if not isinstance(config, config_cls):
        raise ConfigError(f"config: expected a {config_cls.__name__}, got {type(config).__name__}")
    T = config.total_virtual_tokens
    D = config.token_dim
    if D is None:
        if word_embeddings is None:
            raise ConfigError("token_dim: expected an integer >= 1 (or word_embeddings to take it from), got None")
        D = int(np.shape(word_embeddings)[-1])
        config = dataclasses.replace(config, token_dim=D)
    return config, T, D


class PromptEmbedding(Module):
    """Prompt tuning: out = E[indices], E = ``embedding.weight`` (T, D).

    word_embeddings: the base model's (V, D) table, used by TEXT and SAMPLE_VOCAB init.
    init_token_ids: token ids for TEXT init (else read with the optional ``tokenizers`` package).
    """

    config_class = PromptTuningConfig

    def __init__(
        self,
        config: PromptTuningConfig,
        word_embeddings: Any = None,
        *,
        seed: int | None = None,
        dtype: Any = np.float32,
        init_token_ids: Sequence[int] | None = None,
    ) -> None:
        self.dtype = _checks.float_dtype("dtype", dtype)
        self.config, T, D = resolve_config(config, self.config_class, word_embeddings)
        self.total_virtual_tokens, self.token_dim = T, D
        self.seed = seed  # the init seed (None: fresh entropy), stamped into ONNX exports
        self.rng = np.random.default_rng(seed)
        weight = init_prompt_embedding(config, self.rng, word_embeddings, init_token_ids, (T, D), self.dtype)
        self._install({"embedding.weight": weight})

    def _prepare(self, indices: Any, *, draw: bool) -> tuple[np.ndarray]:
        return (_checks.indices(indices, self.total_virtual_tokens),)  # B,T'

    def _out_shape(self, prepared: tuple) -> tuple[int, ...]:
        return prepared[0].shape + (self.token_dim,)  # B,T',D

    def _forward_core(self, prepared: tuple) -> tuple[Array, EmbeddingCache]:
        return embedding_forward(self._params["embedding.weight"], prepared[0])

    def _cache_core(self, prepared: tuple) -> EmbeddingCache:
        return EmbeddingCache(prepared[0], self.total_virtual_tokens)  # the gather is not needed

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
