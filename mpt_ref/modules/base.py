"""The small base shared by the PEFT-like classes: a flat params dict under PEFT keys, state dicts, and
the one body of ``forward`` / ``backward`` / ``forward_backward`` every class uses. (The PEFT adapter
files: modules/peft_files.py.)

Each class supplies hooks: ``_prepare(*inputs, draw=..., **kw)`` (validate, return the validated inputs
as a ``Prepared``), ``_forward_core(prepared) -> (out, cache)``, ``_cache_core(prepared) -> cache``
(default: the forward's cache) and ``_backward_core(dout, cache) -> grads``.

The two-call path. ``backward(dout, inputs)`` is stateless: its result is the gradient at the current
parameters for those inputs, whatever was called before. To not pay a second forward after
``forward(inputs)``, the last forward's cache is reused only when that is provably the same
computation:

- the validated inputs are equal by value to the ones the forward saw (the forward keeps its own
  copies, so a caller mutating its arrays in place in between is seen), and
- the parameters are the ones the forward read: parameter arrays are read-only (an in-place write
  raises ``ValueError``), the only writers are ``load_state_dict`` and ``set_parameters``, and both bump
  ``_version``, which the saved cache is stamped with (the check itself: kernels/reuse.py).
"""

from __future__ import annotations

from typing import Any, Mapping, NamedTuple

import numpy as np

from mpt_ref import _checks
from mpt_ref._types import Array, IntArray, Params
from mpt_ref.errors import CheckpointError, shown
from mpt_ref.kernels.parallel import threads
from mpt_ref.kernels.reuse import LastForward, owned
from mpt_ref.modules.peft_files import HEAD_TASK_TYPES, PeftFiles, register_adapter_loader

__all__ = ["HEAD_TASK_TYPES", "LoadResult", "Module", "Prepared", "register_adapter_loader"]


class Prepared(NamedTuple):
    """A call's validated inputs, as every class's hooks pass them on."""

    indices: IntArray                          # B,T'
    task_ids: IntArray | None = None           # B or 1   (MultitaskPromptEmbedding)
    dropout_scales: list[Array] | None = None  # L−1 of (B,T',2H), entries 0 or 1/(1−p)   (PromptEncoder
                                               # in train mode with dropout; None: no dropout)


class LoadResult(NamedTuple):
    """What ``load_state_dict`` did not match (torch's ``_IncompatibleKeys``)."""

    missing_keys: list[str]
    unexpected_keys: list[str]


def _read_only(value: np.ndarray) -> np.ndarray:
    value.flags.writeable = False
    return value


class Module(PeftFiles):
    """Holds ``_params`` (PEFT key -> read-only array, in PEFT's state_dict order) and the module dtype."""

    _params: Params
    dtype: np.dtype
    config: Any
    token_dim: int
    _version: int = 0
    _last: LastForward | None = None

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

    # the config fields a repr shows, where the config has them and they are set
    _REPR_FIELDS = ("task_type", "num_virtual_tokens", "token_dim", "num_transformer_submodules", "num_tasks",
                    "num_ranks", "encoder_reparameterization_type", "encoder_hidden_size", "encoder_num_layers",
                    "encoder_dropout", "inference_mode")

    def __repr__(self) -> str:
        """The config summary, dtype, seed and mode, then every parameter's key and shape."""
        config = getattr(self, "config", None)
        fields = [(k, getattr(config, k, None)) for k in self._REPR_FIELDS]
        summary = ", ".join(f"{k}={getattr(v, 'value', v)!s}" for k, v in fields if v is not None)
        mode = "" if getattr(self, "training", None) is None else f", {'train' if self.training else 'eval'} mode"
        params = getattr(self, "_params", {})
        total = sum(v.size for v in params.values())
        lines = [f"{type(self).__name__}({summary}; dtype={np.dtype(self.dtype).name}, "
                 f"seed={getattr(self, 'seed', None)}{mode}; {total:,} parameters)"]
        lines += [f"  {k}: {tuple(v.shape)}" for k, v in params.items()]
        return "\n".join(lines)

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

    def __call__(self, *args: Any, **kwargs: Any) -> np.ndarray:
        return self.forward(*args, **kwargs)

    # -- forward / backward, written once for every class ------------------------------------------

    def _prepare(self, *inputs: Any, draw: bool, **kwargs: Any) -> Prepared:
        """Validated inputs. ``draw``: the forward may draw what was omitted (dropout masks)."""
        raise NotImplementedError

    def _out_shape(self, prepared: Prepared) -> tuple[int, ...]:
        return prepared.indices.shape + (self.token_dim,)  # B,T',D

    def _forward_core(self, prepared: Prepared) -> tuple[np.ndarray, Any]:
        raise NotImplementedError

    def _cache_core(self, prepared: Prepared) -> Any:
        """What the backward needs; classes override it when that is cheaper than a forward."""
        return self._forward_core(prepared)[1]

    def _backward_core(self, dout: np.ndarray, cache: Any) -> Params:
        raise NotImplementedError

    def _forward(self, *inputs: Any, **kwargs: Any) -> np.ndarray:
        threads()  # every call checks MPT_REF_THREADS (read on first use), whether or not its sizes use the pool
        prepared = owned(self._prepare(*inputs, draw=True, **kwargs))
        out, cache = self._forward_core(prepared)
        self._last = LastForward(self._version, prepared, cache)
        return out

    def _dout(self, dout: Any, prepared: Prepared) -> np.ndarray:
        return _checks.float_array("dout", dout, self._out_shape(prepared), self.dtype)

    def _backward(self, dout: Any, *inputs: Any, **kwargs: Any) -> Params:
        threads()
        prepared = self._prepare(*inputs, draw=False, **kwargs)
        dout = self._dout(dout, prepared)
        cache = self._last.cache_for(self._version, prepared) if self._last is not None else None
        if cache is None:  # no forward of the same computation to reuse (kernels/reuse.py)
            cache = self._cache_core(prepared)
        return self._backward_core(dout, cache)

    def _forward_backward(self, dout: Any, *inputs: Any, **kwargs: Any) -> tuple[np.ndarray, Params]:
        threads()
        prepared = self._prepare(*inputs, draw=False, **kwargs)
        dout = self._dout(dout, prepared)
        out, cache = self._forward_core(prepared)
        return out, self._backward_core(dout, cache)
