"""What a module writes and reads as a PEFT adapter directory: the adapter tensors and config PEFT's
``save_pretrained`` stores, the files as bytes, ``save_pretrained`` and ``from_pretrained``.

A mixin of modules/base.py's ``Module``; it reads only ``self._params`` and ``self.config``.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Callable

from mpt_ref._types import Params
from mpt_ref._version import PEFT_VERSION
from mpt_ref.errors import ConfigError
from mpt_ref.io.adapter_files import (
    CONFIG_NAME,
    TABLE_KEY,
    WEIGHTS_NAME,
    write_adapter_files,
)
from mpt_ref.io.checkpoint import safetensors_bytes
from mpt_ref.modules.model_card import MODEL_CARD_NAME, model_card

# task types whose PEFT model saves a head of the base model with the adapter (PEFT's modules_to_save)
HEAD_TASK_TYPES = {"SEQ_CLS": ["classifier", "score"], "TOKEN_CLS": ["classifier", "score"],
                   "QUESTION_ANS": ["qa_outputs"]}

# load_peft_adapter, registered by mpt_ref.interop.adapter (the layer above, which knows every class)
# so that ``Cls.from_pretrained`` works without this layer importing upward.
_ADAPTER_LOADER: Callable[..., Any] | None = None


def register_adapter_loader(loader: Callable[..., Any]) -> None:
    global _ADAPTER_LOADER
    _ADAPTER_LOADER = loader


class PeftFiles:
    """PEFT adapter files of a module (``_params`` under PEFT keys, ``config``)."""

    _params: Params
    config: Any

    def adapter_tensors(self) -> Params:
        """What PEFT's ``save_pretrained`` stores for this module, under the adapter-file keys."""
        return {TABLE_KEY: self._params["embedding.weight"].copy()}

    def saved_config(self) -> Any:
        """The config as ``save_pretrained`` writes it: refused without a task_type (PEFT would build a
        plain PeftModel that ignores the prompt), ``peft_version`` filled in as PEFT does."""
        task_type = getattr(self.config, "task_type", None)
        if task_type is None:
            raise ConfigError(
                "config.task_type: expected one of CAUSAL_LM, SEQ_2_SEQ_LM, SEQ_CLS, TOKEN_CLS, QUESTION_ANS, "
                "FEATURE_EXTRACTION, got None: PeftModel.from_pretrained would build a plain PeftModel that "
                "silently ignores the prompt (its logits equal the base model's); set task_type in the config"
            )
        kind = getattr(task_type, "value", task_type)
        if kind in HEAD_TASK_TYPES:
            raise ConfigError(
                f"config.task_type: expected CAUSAL_LM, SEQ_2_SEQ_LM or FEATURE_EXTRACTION for an adapter mpt-ref "
                f"writes, got {kind}: PEFT's {kind} adapters also hold the base model's trained head "
                f"(modules_to_save {HEAD_TASK_TYPES[kind]}), which a prompt module does not have, so "
                "PeftModel.from_pretrained would fail (KeyError 'base_model.<head>.weight')"
            )
        if self.config.peft_version is None:
            return dataclasses.replace(self.config, peft_version=PEFT_VERSION)
        return self.config

    def adapter_files(self) -> dict[str, bytes]:
        """The files of this module's PEFT adapter directory, name -> bytes (the model card apart)."""
        return {
            CONFIG_NAME: self.saved_config().to_json().encode(),
            WEIGHTS_NAME: safetensors_bytes(self.adapter_tensors(), {"format": "pt"}),
        }

    def save_pretrained(self, save_directory: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write a PEFT adapter directory PEFT loads (``PeftModel.from_pretrained``): adapter_config.json and
        adapter_model.safetensors (metadata {"format": "pt"}); for P-tuning also ``mpt_ref_encoder.safetensors``;
        a model card README.md unless the directory already has one (PEFT updates its own).
        The config needs a ``task_type`` (ConfigError otherwise: PEFT would ignore the prompt).
        Every file is written atomically; if any of them exists, nothing is written unless ``overwrite``."""
        files = self.adapter_files()
        if not os.path.exists(Path(save_directory) / MODEL_CARD_NAME):  # False for a path too long: the write says
            files[MODEL_CARD_NAME] = model_card(self.saved_config()).encode()
        return write_adapter_files(save_directory, files, overwrite=overwrite)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, **kwargs: Any) -> Any:
        """Load a PEFT adapter directory of this class (``mpt_ref.load_peft_adapter(path, **kwargs)``,
        refusing an adapter of another kind). PromptEncoder: ``full_encoder=True`` restores the trainable
        encoder mpt-ref saved beside PEFT's prompt table."""
        if _ADAPTER_LOADER is None:  # pragma: no cover - importing mpt_ref registers it
            raise ConfigError("from_pretrained: expected mpt_ref.interop.adapter to be imported, got none")
        module = _ADAPTER_LOADER(path, **kwargs)
        if type(module) is not cls:
            raise ConfigError(f"{path}: expected an adapter of a {cls.__name__}, got one of a {type(module).__name__} "
                              f"(peft_type {module.config.peft_type.value}); mpt_ref.load_peft_adapter loads any")
        return module
