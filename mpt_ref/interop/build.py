"""A module from what a user names on the command line: a config file (or a built-in default kind), an
optional checkpoint under PEFT keys, a seed. Used by ``mpt-ref export/parity`` and ``verify --onnx``."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from mpt_ref.io.adapter_files import TABLE_KEY
from mpt_ref.io.checkpoint import read_tensors
from mpt_ref.modules.config import (
    MultitaskPromptTuningConfig,
    PromptEncoderConfig,
    PromptLearningConfig,
    PromptTuningConfig,
    TaskType,
    check_state_shapes,
    load_config,
)
from mpt_ref.kind import Kind
from mpt_ref.modules.multitask import MultitaskPromptEmbedding
from mpt_ref.modules.prompt_embedding import PromptEmbedding
from mpt_ref.modules.prompt_encoder import PromptEncoder

DEFAULT_CONFIGS = {
    Kind.PROMPT_EMBEDDING: lambda: PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=10, token_dim=32),
    Kind.MPT: lambda: MultitaskPromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=10, token_dim=32,
                                               num_tasks=3, num_ranks=2),
    Kind.MLP_ENCODER: lambda: PromptEncoderConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=10, token_dim=32,
                                       encoder_hidden_size=16),
    Kind.LSTM_ENCODER: lambda: PromptEncoderConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=10, token_dim=32,
                                        encoder_hidden_size=16, encoder_reparameterization_type="LSTM",
                                        encoder_num_layers=2),
}


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """A checkpoint (.safetensors, or a torch .bin read without torch) -> {key: ndarray}; a PEFT
    adapter's ``prompt_embeddings`` is read as ``embedding.weight``."""
    tensors = read_tensors(path)
    if TABLE_KEY in tensors and "embedding.weight" not in tensors:
        tensors["embedding.weight"] = tensors.pop(TABLE_KEY)
    return tensors


def build_module(config_path: str | None, checkpoint: str | None, kind: Kind | str, seed: int, *,
                 config: PromptLearningConfig | None = None, state: dict[str, Any] | None = None) -> Any:
    """The module the command exports / checks (see the module docstring); ``config`` and ``state``
    given directly take the place of ``config_path`` and ``checkpoint``. The checkpoint's shapes are
    compared with the config's before the module (and its init) is allocated."""
    if config is None:
        config = load_config(config_path) if config_path else DEFAULT_CONFIGS[Kind.parse(kind)]()
    if state is None and checkpoint:
        state = read_checkpoint(checkpoint)
    if state is not None:
        check_state_shapes(config, state, str(checkpoint or "weights"))
    if isinstance(config, PromptEncoderConfig):
        # PEFT writes inference_mode=true into every saved config, so the flag says nothing here: the
        # heads are built unless the checkpoint holds the prompt table alone (a PEFT adapter file).
        table_only = state is not None and set(state) == {"embedding.weight"}
        config = dataclasses.replace(config, inference_mode=table_only)
    if isinstance(config, MultitaskPromptTuningConfig):
        module: Any = MultitaskPromptEmbedding(config, seed=seed)
    elif isinstance(config, PromptTuningConfig):
        module = PromptEmbedding(config, seed=seed)
    else:
        module = PromptEncoder(config, seed=seed).eval()
    if state is not None:
        module.load_state_dict(state, strict=True)
    return module
