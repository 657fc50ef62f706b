"""mpt-ref: a NumPy executable specification of PEFT's prompt tuning, multitask prompt tuning (MPT)
and P-tuning modules, with hand-written forward and backward passes. The math lives in spec/.

The package is layered (README "Layout"; the import contract in pyproject.toml): foundation files here
(errors, tolerances, _checks, _types, _version) → core/ → io/ → modules/ → interop/ → onnx_export,
testing/, conformance/, train/, bench/ → cli/. This file only re-exports the public API.
"""

import importlib as _importlib
import sys as _sys

from mpt_ref._version import SPEC_VERSION, __version__
from mpt_ref.errors import (
    CheckpointError,
    ConfigError,
    IndexRangeError,
    InputError,
    InputTypeError,
    MptRefError,
    OutputExistsError,
    RunTimeout,
    WriteError,
)
from mpt_ref.interop.adapter import load_peft_adapter, save_pretrained
from mpt_ref.modules.config import (
    MultitaskPromptTuningConfig,
    MultitaskPromptTuningInit,
    PeftType,
    PromptEncoderConfig,
    PromptEncoderReparameterizationType,
    PromptTuningConfig,
    PromptTuningInit,
    TaskType,
    config_from_dict,
    load_config,
)
from mpt_ref.modules.multitask import MultitaskPromptEmbedding
from mpt_ref.modules.prompt_embedding import PromptEmbedding
from mpt_ref.modules.prompt_encoder import PromptEncoder

# Module paths of 0.1 (flat layout), kept importable: ``from mpt_ref.mpt import mpt_forward`` etc.
_MOVED = {
    "activations": "core.activations", "embedding": "core.embedding", "gradcheck": "core.gradcheck",
    "linear": "core.linear", "lstm": "core.lstm", "lstm_stack": "core.lstm_stack", "mlp_head": "core.mlp_head",
    "mpt": "core.mpt", "checkpoint": "io.checkpoint", "torch_pickle": "io.torch_pickle", "config": "modules.config",
    "init": "modules.init", "multitask": "modules.multitask", "prompt_embedding": "modules.prompt_embedding",
    "prompt_encoder": "modules.prompt_encoder", "adapter": "interop.adapter",
}
for _old, _new in _MOVED.items():
    _sys.modules[f"{__name__}.{_old}"] = _importlib.import_module(f"{__name__}.{_new}")

__all__ = [
    "SPEC_VERSION",
    "__version__",
    "CheckpointError",
    "ConfigError",
    "IndexRangeError",
    "InputError",
    "InputTypeError",
    "MptRefError",
    "MultitaskPromptEmbedding",
    "MultitaskPromptTuningConfig",
    "MultitaskPromptTuningInit",
    "OutputExistsError",
    "PeftType",
    "PromptEmbedding",
    "PromptEncoder",
    "PromptEncoderConfig",
    "PromptEncoderReparameterizationType",
    "PromptTuningConfig",
    "PromptTuningInit",
    "RunTimeout",
    "TaskType",
    "WriteError",
    "config_from_dict",
    "load_peft_adapter",
    "save_pretrained",
    "load_config",
]
