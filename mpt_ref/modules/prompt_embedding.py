"""``PromptEmbedding``: PEFT's prompt-tuning module over the functional core in embedding.py."""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

from mpt_ref import _checks
from mpt_ref._types import Array, Params
from mpt_ref.core.embedding import embedding_backward, embedding_forward
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
        self.rng = np.random.default_rng(_checks.seed(seed))
        weight = init_prompt_embedding(config, self.rng, word_embeddings, init_token_ids, (T, D), self.dtype)
        self._params = {"embedding.weight": weight}

    def _indices(self, indices: Any) -> np.ndarray:
        return _checks.indices(indices, self.total_virtual_tokens)

    def forward(self, indices: Any) -> Array:
        """indices (B, T') in [0, T) -> (B, T', D)."""
        out, _ = embedding_forward(self._params["embedding.weight"], self._indices(indices))
        return out

    def backward(self, grad_output: Any, indices: Any) -> Params:
        """Gradient of sum(forward(indices) * grad_output) -> {"embedding.weight": (T, D)}."""
        ids = self._indices(indices)
        dout = _checks.float_array("grad_output", grad_output, ids.shape + (self.token_dim,), self.dtype)
        _, cache = embedding_forward(self._params["embedding.weight"], ids)
        return {"embedding.weight": embedding_backward(dout, cache)}

    def forward_backward(self, grad_output: Any, indices: Any) -> tuple[Array, Params]:
        """(forward(indices), backward(grad_output, indices)) from a single forward pass."""
        ids = self._indices(indices)
        dout = _checks.float_array("grad_output", grad_output, ids.shape + (self.token_dim,), self.dtype)
        out, cache = embedding_forward(self._params["embedding.weight"], ids)
        return out, {"embedding.weight": embedding_backward(dout, cache)}

    def get_prompt(self, batch_size: int) -> Array:
        """What PEFT's ``get_prompt`` returns: forward(arange(T)) repeated over the batch (B, T, D)."""
        B = _checks.positive_int("batch_size", batch_size, minimum=0)
        return np.repeat(self._params["embedding.weight"][None], B, axis=0)
