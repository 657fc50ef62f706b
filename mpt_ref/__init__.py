"""mpt-ref: a NumPy executable specification of PEFT's prompt tuning, multitask prompt tuning (MPT)
and P-tuning modules, with hand-written forward and backward passes. The math lives in spec/.

The package is layered (README "Layout"; the import contract in pyproject.toml): foundation files here
(errors, tolerances, _checks, _types, _version) → core/ → io/ → modules/ → interop/ → onnx_export,
testing/, conformance/, train/, bench/ → cli/. This file only re-exports the public API, lazily:
``import mpt_ref`` loads the version and the exceptions; a class is imported on first use
(``mpt_ref.PromptEncoder``), so ``mpt-ref --version`` never loads NumPy or onnx.
"""

from __future__ import annotations

import importlib as _importlib
import importlib.abc as _abc
import importlib.machinery as _machinery
import sys as _sys
from typing import Any

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

# public name -> the module that defines it, imported on first access (PEP 562 module __getattr__)
_LAZY = {
    "load_peft_adapter": "interop.adapter", "save_pretrained": "interop.adapter",
    **{name: "modules.config" for name in (
        "MultitaskPromptTuningConfig", "MultitaskPromptTuningInit", "PeftType", "PromptEncoderConfig",
        "PromptEncoderReparameterizationType", "PromptTuningConfig", "PromptTuningInit", "TaskType",
        "config_from_dict", "load_config")},
    "MultitaskPromptEmbedding": "modules.multitask",
    "PromptEmbedding": "modules.prompt_embedding",
    "PromptEncoder": "modules.prompt_encoder",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(_importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
        globals()[name] = value  # later accesses skip this function
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


# Module paths of 0.1 (flat layout), kept importable: ``from mpt_ref.mpt import mpt_forward`` etc. A
# meta-path finder answers them with the module at its new path, imported only when asked for.
_MOVED = {
    "activations": "core.activations", "embedding": "core.embedding", "gradcheck": "core.gradcheck",
    "linear": "core.linear", "lstm": "core.lstm", "lstm_stack": "core.lstm_stack", "mlp_head": "core.mlp_head",
    "mpt": "core.mpt", "checkpoint": "io.checkpoint", "torch_pickle": "io.torch_pickle", "config": "modules.config",
    "init": "modules.init", "multitask": "modules.multitask", "prompt_embedding": "modules.prompt_embedding",
    "prompt_encoder": "modules.prompt_encoder", "adapter": "interop.adapter",
}


class _MovedModules(_abc.MetaPathFinder, _abc.Loader):
    """``mpt_ref.<old>`` -> the module ``mpt_ref.<new>`` itself (one object under both names); and
    ``mpt_ref.modules.peft_files`` gets a stand-in adapter loader (``Cls.from_pretrained``), which imports the
    interop layer on first use, since this package no longer imports it eagerly."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname == _BASE:
            spec = _machinery.PathFinder.find_spec(fullname, path)
            if spec is not None and spec.loader is not None:
                spec.loader = _ThenRegister(spec.loader)
            return spec
        package, _, old = fullname.rpartition(".")
        if package != __name__ or old not in _MOVED:
            return None
        return _machinery.ModuleSpec(fullname, self)

    def create_module(self, spec: Any) -> Any:
        module = _importlib.import_module(f"{__name__}.{_MOVED[spec.name.rpartition('.')[2]]}")
        spec.loader_state = module.__spec__  # the import system stamps the alias's spec on it next
        return module

    def exec_module(self, module: Any) -> None:
        module.__spec__ = module.__spec__.loader_state  # its own spec back: the module is already run


_BASE = f"{__name__}.modules.peft_files"  # holds the adapter-loader registry


def _load_peft_adapter(*args: Any, **kwargs: Any) -> Any:
    return _importlib.import_module(f"{__name__}.interop.adapter").load_peft_adapter(*args, **kwargs)


class _ThenRegister(_abc.Loader):
    """The file loader of modules/peft_files.py, then ``register_adapter_loader(_load_peft_adapter)`` (the
    interop layer registers the real one when it is imported)."""

    def __init__(self, loader: Any) -> None:
        self._loader = loader

    def __getattr__(self, name: str) -> Any:  # get_source, get_filename, ... (tracebacks, inspect)
        return getattr(self._loader, name)

    def create_module(self, spec: Any) -> Any:
        return self._loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        self._loader.exec_module(module)
        if module._ADAPTER_LOADER is None:
            module.register_adapter_loader(_load_peft_adapter)


if not any(isinstance(f, _MovedModules) for f in _sys.meta_path):
    _sys.meta_path.insert(0, _MovedModules())

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
