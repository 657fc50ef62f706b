"""``Kind``: the one name for what a module computes, used by the conformance cases, the exporter, the
bench and the CLI.

    PROMPT_EMBEDDING  out = E[indices]                       PromptEmbedding, and a PromptEncoder in
                                                             inference mode (a stored prompt table)
    MPT               out = E[indices] ⊙ (C[t] @ R[t])       MultitaskPromptEmbedding
    MLP_ENCODER       out = MLP(E[indices])                  PromptEncoder, encoder type MLP
    LSTM_ENCODER      out = MLP(BiLSTM(E[indices]))          PromptEncoder, encoder type LSTM

``Kind.parse`` also takes the spellings of mpt-ref 0.1 ("embedding", "prompt-tuning", "mlp", "lstm"),
which older ONNX metadata and command lines carry.
"""

from __future__ import annotations

import enum
from typing import Any

from mpt_ref.errors import ConfigError
from mpt_ref.modules.config import (
    MultitaskPromptTuningConfig,
    PromptEncoderConfig,
    PromptEncoderReparameterizationType,
    PromptTuningConfig,
)


class Kind(str, enum.Enum):
    PROMPT_EMBEDDING = "prompt_embedding"
    MPT = "mpt"
    MLP_ENCODER = "mlp_encoder"
    LSTM_ENCODER = "lstm_encoder"

    def __str__(self) -> str:
        return self.value

    @property
    def is_encoder(self) -> bool:
        return self in (Kind.MLP_ENCODER, Kind.LSTM_ENCODER)

    @classmethod
    def parse(cls, name: Any) -> Kind:
        """A Kind from its value or a 0.1 alias; anything else is a ConfigError naming the choices."""
        if isinstance(name, Kind):
            return name
        key = str(name).strip().lower().replace("-", "_")
        kind = _ALIASES.get(key) or next((k for k in cls if k.value == key), None)
        if kind is None:
            raise ConfigError(f"kind: expected one of {[k.value for k in cls]}, got {name!r}")
        return kind

    @classmethod
    def of_config(cls, config: Any) -> Kind:
        """The kind a config builds (a P-tuning config in inference mode builds the table lookup)."""
        if isinstance(config, MultitaskPromptTuningConfig):
            return cls.MPT
        if isinstance(config, PromptTuningConfig):
            return cls.PROMPT_EMBEDDING
        if isinstance(config, PromptEncoderConfig):
            if config.inference_mode:
                return cls.PROMPT_EMBEDDING
            lstm = config.encoder_reparameterization_type == PromptEncoderReparameterizationType.LSTM
            return cls.LSTM_ENCODER if lstm else cls.MLP_ENCODER
        raise ConfigError(f"config: expected a prompt-learning config, got {type(config).__name__}")

    @classmethod
    def of(cls, module: Any) -> Kind:
        """What ``module`` computes (an inference-mode PromptEncoder is a table lookup)."""
        config = getattr(module, "config", None)
        if config is None:
            raise ConfigError(f"module: expected an mpt_ref module, got {type(module).__name__}")
        if isinstance(config, PromptEncoderConfig):
            if module.inference_mode:
                return cls.PROMPT_EMBEDDING
            return cls.LSTM_ENCODER if module.encoder_type == PromptEncoderReparameterizationType.LSTM else cls.MLP_ENCODER
        return cls.of_config(config)


_ALIASES = {"embedding": Kind.PROMPT_EMBEDDING, "prompt_tuning": Kind.PROMPT_EMBEDDING,
            "mlp": Kind.MLP_ENCODER, "lstm": Kind.LSTM_ENCODER}
