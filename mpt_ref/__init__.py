"""mpt-ref: a NumPy executable specification of PEFT's prompt tuning, multitask prompt tuning (MPT)
and P-tuning modules, with hand-written forward and backward passes. The math lives in spec/."""

from .config import (
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
from .errors import (
    CheckpointError,
    ConfigError,
    IndexRangeError,
    InputError,
    InputTypeError,
    MptRefError,
    OutputExistsError,
)
from .adapter import load_peft_adapter, save_pretrained
from .multitask import MultitaskPromptEmbedding
from .prompt_embedding import PromptEmbedding
from .prompt_encoder import PromptEncoder

SPEC_VERSION = "0.1"
__version__ = "0.1.0"

__all__ = [
    "SPEC_VERSION",
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
    "TaskType",
    "config_from_dict",
    "load_peft_adapter",
    "save_pretrained",
    "load_config",
]
