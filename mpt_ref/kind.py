"""``Kind``: the one name for what a module computes. Every layer that differs by kind keeps one table
keyed by it (core and kernel ops, error bounds, the exact evaluator, ONNX builders and oracle, test
strategies, vector cases, CLI choices); tests/test_kind_tables.py fails when a table misses a kind, so
adding a kind is one entry per table.

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

    @property
    def takes_task_ids(self) -> bool:
        """Whether the forward reads a task id per batch row beside the indices (TAKES_TASK_IDS)."""
        return TAKES_TASK_IDS[self]

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
        """The kind a config builds (read from its class's PEFT_TYPE; a P-tuning config in inference
        mode builds the table lookup)."""
        peft_type = _peft_type(config)
        if peft_type == "P_TUNING":
            if config.inference_mode:
                return cls.PROMPT_EMBEDDING
            return cls._encoder(config.encoder_reparameterization_type)
        if peft_type not in _BY_PEFT_TYPE:
            raise ConfigError(f"config: expected a prompt-learning config, got {type(config).__name__}")
        return _BY_PEFT_TYPE[peft_type]

    @classmethod
    def of(cls, module: Any) -> Kind:
        """What ``module`` computes (an inference-mode PromptEncoder is a table lookup)."""
        config = getattr(module, "config", None)
        if config is None:
            raise ConfigError(f"module: expected an mpt_ref module, got {type(module).__name__}")
        if _peft_type(config) == "P_TUNING":
            return cls.PROMPT_EMBEDDING if module.inference_mode else cls._encoder(module.encoder_type)
        return cls.of_config(config)

    @classmethod
    def _encoder(cls, encoder_type: Any) -> Kind:
        return cls.LSTM_ENCODER if getattr(encoder_type, "value", encoder_type) == "LSTM" else cls.MLP_ENCODER


def _peft_type(config: Any) -> Any:
    """The PeftType value of a config's class ("PROMPT_TUNING", ...), None for anything else."""
    return getattr(getattr(type(config), "PEFT_TYPE", None), "value", None)


# forward(indices, task_ids) or forward(indices): the inputs of every case, vector, graph and served model
TAKES_TASK_IDS = {Kind.PROMPT_EMBEDDING: False, Kind.MPT: True, Kind.MLP_ENCODER: False, Kind.LSTM_ENCODER: False}

_ALIASES = {"embedding": Kind.PROMPT_EMBEDDING, "prompt_tuning": Kind.PROMPT_EMBEDDING,
            "mlp": Kind.MLP_ENCODER, "lstm": Kind.LSTM_ENCODER}
_BY_PEFT_TYPE = {"PROMPT_TUNING": Kind.PROMPT_EMBEDDING, "MULTITASK_PROMPT_TUNING": Kind.MPT}
