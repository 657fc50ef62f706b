"""What PromptEmbedding and MultitaskPromptEmbedding share: the constructor that validates the config,
takes D from the base model's word embeddings when the config leaves it None, seeds the generator and
draws the prompt table E (T, D) with the config's init strategy (modules/init.py)."""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

from mpt_ref import _checks
from mpt_ref._types import Array
from mpt_ref.errors import ConfigError
from mpt_ref.modules.base import Module
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


class PromptTableModule(Module):
    """A module whose parameters start from a prompt table E (T, D); subclasses add the rest in
    ``_init_params``. word_embeddings: the base model's (V, D) table, used by TEXT and SAMPLE_VOCAB init
    (and for D when the config has none); init_token_ids: token ids for TEXT init (else read with the
    optional ``tokenizers`` package)."""

    config_class: type

    def __init__(
        self,
        config: Any,
        word_embeddings: Any = None,
        *,
        seed: int | None = None,
        dtype: Any = np.float32,
        init_token_ids: Sequence[int] | None = None,
    ) -> None:
        self.dtype = _checks.float_dtype("dtype", dtype)
        self.config, T, D = resolve_config(config, self.config_class, word_embeddings)
        self.total_virtual_tokens, self.token_dim = T, D
        self.seed = _checks.seed(seed)  # the init seed (None: fresh entropy), stamped into ONNX exports
        self.rng = np.random.default_rng(self.seed)
        weight = init_prompt_embedding(self.config, self.rng, word_embeddings, init_token_ids, (T, D), self.dtype)
        self._init_params(weight)

    def _init_params(self, weight: Array) -> None:
        raise NotImplementedError
