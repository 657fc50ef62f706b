"""The small base shared by the PEFT-like classes: a flat params dict under PEFT keys, state dicts."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, NamedTuple

import numpy as np

from mpt_ref._types import Params
from mpt_ref.errors import CheckpointError
from mpt_ref.io.adapter_files import (
    CONFIG_NAME,
    TABLE_KEY,
    WEIGHTS_NAME,
    write_adapter_files,
)
from mpt_ref.io.checkpoint import safetensors_bytes


class LoadResult(NamedTuple):
    """What ``load_state_dict`` did not match (torch's ``_IncompatibleKeys``)."""

    missing_keys: list[str]
    unexpected_keys: list[str]


class Module:
    """Holds ``_params`` (PEFT key -> array, in PEFT's state_dict order) and the module dtype."""

    _params: Params
    dtype: np.dtype
    config: Any

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
                                      f"NumPy cannot convert ({str(exc)[:100]})") from None
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
        self._params.update(staged)
        return LoadResult(missing, unexpected)

    def adapter_tensors(self) -> Params:
        """What PEFT's ``save_pretrained`` stores for this module, under the adapter-file keys."""
        return {TABLE_KEY: self._params["embedding.weight"].copy()}

    def adapter_files(self) -> dict[str, bytes]:
        """The files of this module's PEFT adapter directory, name -> bytes."""
        return {
            CONFIG_NAME: self.config.to_json().encode(),
            WEIGHTS_NAME: safetensors_bytes(self.adapter_tensors(), {"format": "pt"}),
        }

    def save_pretrained(self, save_directory: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write a PEFT adapter directory PEFT loads (``PeftModel.from_pretrained``): adapter_config.json and
        adapter_model.safetensors (metadata {"format": "pt"}); for P-tuning also ``mpt_ref_encoder.safetensors``.
        Every file is written atomically; if any of them exists, nothing is written unless ``overwrite``."""
        return write_adapter_files(save_directory, self.adapter_files(), overwrite=overwrite)

    def __call__(self, *args: Any, **kwargs: Any) -> np.ndarray:
        return self.forward(*args, **kwargs)
