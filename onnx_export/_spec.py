"""What the exporter needs to know about a module, read once from an mpt_ref module.

Kinds: ``embedding`` (PromptEmbedding, and a PromptEncoder in inference mode, whose forward is the
plain lookup of its stored prompt), ``mpt`` (MultitaskPromptEmbedding), ``mlp`` and ``lstm``
(PromptEncoder). Shape letters as in spec/README.md.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import numpy as np

from mpt_ref.errors import InputError
from mpt_ref.modules.multitask import MultitaskPromptEmbedding
from mpt_ref.modules.prompt_embedding import PromptEmbedding
from mpt_ref.modules.prompt_encoder import PromptEncoder

KINDS = ("embedding", "mpt", "mlp", "lstm")


@dataclasses.dataclass(frozen=True)
class ModuleSpec:
    kind: str                      # one of KINDS
    module_name: str               # the class name, stamped into the ONNX metadata
    params: dict[str, np.ndarray]  # PEFT key -> array (copies, the module's dtype)
    T: int                         # total virtual tokens (rows of E)
    D: int                         # token_dim
    K: int = 0                     # num_tasks (mpt)
    R: int = 0                     # num_ranks (mpt)
    H: int = 0                     # encoder_hidden_size (mlp, lstm)
    L: int = 0                     # encoder_num_layers (lstm)
    config_json: str = "{}"

    @property
    def tokens_fixed(self) -> bool:
        """Whether a graph of this kind needs exactly T tokens per row (faithful and folded alike)."""
        return self.kind == "mpt"


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
    if isinstance(module, MultitaskPromptEmbedding):
        return ModuleSpec("mpt", K=module.num_tasks, R=module.num_ranks, **common)
    if isinstance(module, PromptEncoder) and not module.inference_mode:
        kind = module.encoder_type.value.lower()  # "mlp" or "lstm"
        return ModuleSpec(kind, H=module.hidden_size, L=module.num_layers if kind == "lstm" else 0, **common)
    return ModuleSpec("embedding", **common)
