"""What the exporter needs to know about a module, read once from an mpt_ref module.

The kind is ``mpt_ref.kind.Kind.of(module)`` (an inference-mode PromptEncoder is a plain
lookup of its stored prompt, PROMPT_EMBEDDING). Shape letters as in spec/README.md.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import numpy as np

from mpt_ref.errors import InputError
from mpt_ref.kind import Kind
from mpt_ref.modules.multitask import MultitaskPromptEmbedding
from mpt_ref.modules.prompt_embedding import PromptEmbedding
from mpt_ref.modules.prompt_encoder import PromptEncoder


@dataclasses.dataclass(frozen=True)
class ModuleSpec:
    kind: Kind
    module_name: str               # the class name, stamped into the ONNX metadata
    params: dict[str, np.ndarray]  # PEFT key -> array (copies, the module's dtype)
    T: int                         # total virtual tokens (rows of E)
    D: int                         # token_dim
    K: int = 0                     # num_tasks (mpt)
    R: int = 0                     # num_ranks (mpt)
    H: int = 0                     # encoder_hidden_size (mlp, lstm)
    L: int = 0                     # encoder_num_layers (lstm)
    config_json: str = "{}"

    def fixed_tokens(self, variant: str) -> int | None:
        """T when a graph of this kind and variant needs rows of exactly T tokens, else None: MPT always
        (its task prompt has T rows, as the module itself requires), the folded LSTM (one table row per
        PEFT position)."""
        if self.kind == Kind.MPT or (self.kind == Kind.LSTM_ENCODER and variant == "folded"):
            return self.T
        return None


def module_spec(module: Any) -> ModuleSpec:
    """Read a PromptEmbedding, MultitaskPromptEmbedding or PromptEncoder; anything else is refused."""
    if not isinstance(module, (PromptEmbedding, MultitaskPromptEmbedding, PromptEncoder)):
        raise InputError(
            "module: expected an mpt_ref PromptEmbedding, MultitaskPromptEmbedding or PromptEncoder, "
            f"got {type(module).__name__}"
        )
    params = module.state_dict()
    config = json.dumps(module.config.to_dict(), sort_keys=True, default=str)
    common = dict(module_name=type(module).__name__, params=params, T=module.total_virtual_tokens,
                  D=module.token_dim, config_json=config)
    kind = Kind.of(module)
    if kind == Kind.MPT:
        return ModuleSpec(kind, K=module.num_tasks, R=module.num_ranks, **common)
    if kind.is_encoder:
        return ModuleSpec(kind, H=module.hidden_size, L=module.num_layers if kind == Kind.LSTM_ENCODER else 0, **common)
    return ModuleSpec(kind, **common)
