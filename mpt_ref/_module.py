"""The small base shared by the PEFT-like classes: a flat params dict under PEFT keys, state dicts."""

from __future__ import annotations

from typing import Any, Mapping, NamedTuple

import numpy as np

from ._types import Params
from .errors import CheckpointError


class LoadResult(NamedTuple):
    """What ``load_state_dict`` did not match (torch's ``_IncompatibleKeys``)."""

    missing_keys: list[str]
    unexpected_keys: list[str]


class Module:
    """Holds ``_params`` (PEFT key -> array, in PEFT's state_dict order) and the module dtype."""

    _params: Params
    dtype: np.dtype

    def state_dict(self) -> Params:
        """Copies of the parameters, in PEFT's key order."""
        return {k: v.copy() for k, v in self._params.items()}

    def parameter_shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: v.shape for k, v in self._params.items()}

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True) -> LoadResult:
        """Copy arrays in, cast to the module dtype. Shapes must match exactly, even when not strict
        (as torch). strict=True also refuses missing and unexpected keys. Nothing is changed on error."""
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
            value = np.asarray(state_dict[key])
            if not np.issubdtype(value.dtype, np.floating):
                raise CheckpointError(f"state_dict[{key!r}]: expected a float array, got dtype {value.dtype}")
            if value.shape != self._params[key].shape:
                raise CheckpointError(
                    f"state_dict[{key!r}]: expected shape {self._params[key].shape}, got {value.shape}"
                )
            staged[key] = value.astype(self.dtype)  # always a copy
        self._params.update(staged)
        return LoadResult(missing, unexpected)

    def save_pretrained(self, save_directory: Any, *, overwrite: bool = False) -> Any:
        """Write a PEFT adapter directory (see mpt_ref.adapter.save_pretrained)."""
        from .adapter import save_pretrained

        return save_pretrained(self, save_directory, overwrite=overwrite)

    def __call__(self, *args: Any, **kwargs: Any) -> np.ndarray:
        return self.forward(*args, **kwargs)
