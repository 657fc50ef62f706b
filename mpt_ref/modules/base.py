"""The small base shared by the PEFT-like classes: a flat params dict under PEFT keys, state dicts, and
the one body of ``forward`` / ``backward`` / ``forward_backward`` every class uses.

Each class supplies four hooks: ``_prepare(*inputs, draw=..., **kw)`` (validate, return the validated
inputs as a tuple), ``_forward_core(prepared) -> (out, cache)``, ``_cache_core(prepared) -> cache``
(default: the forward's cache) and ``_backward_core(dout, cache) -> grads``, plus ``_out_shape``.

The two-call path. ``backward(dout, inputs)`` is stateless: its result is the gradient at the current
parameters for those inputs, whatever was called before. To not pay a second forward after
``forward(inputs)``, the last forward's cache is reused only when that is provably the same
computation:

- the validated inputs are equal by value to the ones the forward saw (the forward keeps its own
  copies, so a caller mutating its arrays in place in between is seen), and
- the parameters are the ones the forward read: parameter arrays are read-only (an in-place write
  raises ``ValueError``), the only writers are ``load_state_dict`` and ``set_parameters``, and both bump
  ``_version``, which the saved cache is stamped with.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Callable, Mapping, NamedTuple

import numpy as np

from mpt_ref import _checks
from mpt_ref._types import Params
from mpt_ref._version import PEFT_VERSION
from mpt_ref.errors import CheckpointError, ConfigError, shown
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


class LoadResult(NamedTuple):
    """What ``load_state_dict`` did not match (torch's ``_IncompatibleKeys``)."""

    missing_keys: list[str]
    unexpected_keys: list[str]


def _read_only(value: np.ndarray) -> np.ndarray:
    value.flags.writeable = False
    return value


def _owned(value: Any) -> Any:
    """A private copy of validated inputs (arrays copied, tuples/lists walked, anything else as is)."""
    if isinstance(value, np.ndarray):
        return value.copy()
    if isinstance(value, (tuple, list)):
        return type(value)(_owned(v) for v in value)
    return value


def _same(a: Any, b: Any) -> bool:
    """Equal by value: arrays of the same dtype and shape with equal entries, sequences item by item."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.dtype == b.dtype
                and a.shape == b.shape and bool(np.array_equal(a, b)))
    if isinstance(a, (tuple, list)) or isinstance(b, (tuple, list)):
        return (isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)) and len(a) == len(b)
                and all(_same(x, y) for x, y in zip(a, b)))
    return a is b or a == b


class _LastForward(NamedTuple):
    version: int     # the module's _version when the forward ran
    prepared: tuple  # its validated inputs (private copies)
    cache: Any


class Module:
    """Holds ``_params`` (PEFT key -> read-only array, in PEFT's state_dict order) and the module dtype."""

    _params: Params
    dtype: np.dtype
    config: Any
    _version: int = 0
    _last: _LastForward | None = None

    # -- parameters -------------------------------------------------------------------------------

    def _install(self, params: Params) -> None:
        """Make ``params`` the module's parameters (arrays owned by the module, marked read-only) and
        invalidate every saved forward cache."""
        self._params = {k: _read_only(v) for k, v in params.items()}
        self._version += 1
        self._last = None

    def set_parameters(self, updates: Mapping[str, Any]) -> None:
        """Write new values for some parameters (same validation as ``load_state_dict(strict=False)``,
        unknown keys refused). The way to change a parameter: the arrays themselves are read-only."""
        unknown = [k for k in updates if k not in self._params]
        if unknown:
            raise CheckpointError(f"updates: expected keys among {list(self._params)}, got unknown {unknown}")
        self.load_state_dict(updates, strict=False)

    def state_dict(self) -> Params:
        """Copies of the parameters, in PEFT's key order."""
        return {k: v.copy() for k, v in self._params.items()}

    def parameter_shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: v.shape for k, v in self._params.items()}

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True) -> LoadResult:
        """Copy arrays in, cast to the module dtype. Shapes must match exactly, even when not strict
        (as torch). strict=True also refuses missing and unexpected keys. Values must be finite once cast to the
        module dtype (float64 1e300 into float32 is an error, not inf). Nothing is changed on error."""
        if not isinstance(state_dict, Mapping):
            raise CheckpointError(f"state_dict: expected a mapping of key -> array, got {type(state_dict).__name__}")
        missing = [k for k in self._params if k not in state_dict]
        unexpected = [k for k in state_dict if k not in self._params]
        if strict and (missing or unexpected):
            raise CheckpointError(
                f"state_dict: expected keys {list(self._params)}, got missing {missing}, unexpected {unexpected}"
            )
        staged = {}
        for key in self._params.keys() & state_dict.keys():
            try:
                value = np.asarray(state_dict[key])
            except (ValueError, TypeError) as exc:  # ragged nested lists
                raise CheckpointError(f"state_dict[{key!r}]: expected an array, got {type(state_dict[key]).__name__} "
                                      f"NumPy cannot convert ({shown(exc)})") from None
            if not np.issubdtype(value.dtype, np.floating):
                raise CheckpointError(f"state_dict[{key!r}]: expected a float array, got dtype {value.dtype}")
            if value.shape != self._params[key].shape:
                raise CheckpointError(
                    f"state_dict[{key!r}]: expected shape {self._params[key].shape}, got {value.shape}"
                )
            with np.errstate(over="ignore", invalid="ignore"):
                cast = value.astype(self.dtype)  # always a copy
            if not np.isfinite(cast).all():
                what = "NaN or inf" if not np.isfinite(value).all() else f"values beyond the range of {self.dtype}"
                raise CheckpointError(f"state_dict[{key!r}]: expected finite values in {self.dtype}, got {what}")
            staged[key] = cast
        self._install({**self._params, **staged})
        return LoadResult(missing, unexpected)

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

    def __call__(self, *args: Any, **kwargs: Any) -> np.ndarray:
        return self.forward(*args, **kwargs)

    # -- forward / backward, written once for every class ------------------------------------------

    def _prepare(self, *inputs: Any, draw: bool, **kwargs: Any) -> tuple:
        """Validated inputs. ``draw``: the forward may draw what was omitted (dropout masks)."""
        raise NotImplementedError

    def _out_shape(self, prepared: tuple) -> tuple[int, ...]:
        raise NotImplementedError

    def _forward_core(self, prepared: tuple) -> tuple[np.ndarray, Any]:
        raise NotImplementedError

    def _cache_core(self, prepared: tuple) -> Any:
        """What the backward needs; classes override it when that is cheaper than a forward."""
        return self._forward_core(prepared)[1]

    def _backward_core(self, dout: np.ndarray, cache: Any) -> Params:
        raise NotImplementedError

    def _forward(self, *inputs: Any, **kwargs: Any) -> np.ndarray:
        prepared = _owned(self._prepare(*inputs, draw=True, **kwargs))
        out, cache = self._forward_core(prepared)
        self._last = _LastForward(self._version, prepared, cache)
        return out

    def _dout(self, dout: Any, prepared: tuple) -> np.ndarray:
        return _checks.float_array("dout", dout, self._out_shape(prepared), self.dtype)

    def _backward(self, dout: Any, *inputs: Any, **kwargs: Any) -> Params:
        prepared = self._prepare(*inputs, draw=False, **kwargs)
        dout = self._dout(dout, prepared)
        last = self._last
        if last is not None and last.version == self._version and _same(last.prepared, prepared):
            cache = last.cache  # the same computation as the last forward (module docstring)
        else:
            cache = self._cache_core(prepared)
        return self._backward_core(dout, cache)

    def _forward_backward(self, dout: Any, *inputs: Any, **kwargs: Any) -> tuple[np.ndarray, Params]:
        prepared = self._prepare(*inputs, draw=False, **kwargs)
        dout = self._dout(dout, prepared)
        out, cache = self._forward_core(prepared)
        return out, self._backward_core(dout, cache)
