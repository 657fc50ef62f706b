"""The error contract as data: invalid inputs and the exception class each must raise.

Written to ``<vectors>/errors.json`` for ports to replay; ``check_error_case`` replays one on mpt-ref.
Each entry: a module kind and config, the call ("config", "forward" or "backward"), JSON arguments,
and the expected mpt-ref class with the builtin it derives from (what a port should raise).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mpt_ref import errors
from mpt_ref.conformance.cases import MODULE_CLASSES
from mpt_ref.modules.config import config_from_dict
from mpt_ref.modules.kind import Kind

_MPT = {"peft_type": "MULTITASK_PROMPT_TUNING", "num_virtual_tokens": 2, "token_dim": 3, "num_tasks": 2}
_PT = {"peft_type": "PROMPT_TUNING", "num_virtual_tokens": 2, "token_dim": 3}
_ARANGE = [[0, 1], [0, 1]]


def _e(name: str, module: str, config: dict, call: str, args: dict, error: type[errors.MptRefError]) -> dict:
    builtin = next(b for b in (IndexError, TypeError, FileExistsError, ValueError) if issubclass(error, b))
    return {"name": name, "module": module, "config": config, "call": call, "args": args,
            "error": error.__name__, "builtin": builtin.__name__}


ERROR_CASES: tuple[dict[str, Any], ...] = (
    _e("task_ids_none", "mpt", _MPT, "forward", {"indices": _ARANGE, "task_ids": None}, errors.InputError),
    _e("task_ids_negative", "mpt", _MPT, "forward", {"indices": _ARANGE, "task_ids": [0, -1]}, errors.IndexRangeError),
    _e("task_ids_ge_num_tasks", "mpt", _MPT, "forward", {"indices": _ARANGE, "task_ids": [2, 0]}, errors.IndexRangeError),
    _e("task_ids_float", "mpt", _MPT, "forward", {"indices": _ARANGE, "task_ids": [0.0, 1.0]}, errors.InputTypeError),
    _e("task_ids_bool", "mpt", _MPT, "forward", {"indices": _ARANGE, "task_ids": [True, False]}, errors.InputTypeError),
    _e("task_ids_wrong_length", "mpt", _MPT, "forward", {"indices": _ARANGE, "task_ids": [0, 1, 1]}, errors.InputError),
    _e("task_ids_2d", "mpt", _MPT, "forward", {"indices": _ARANGE, "task_ids": [[0], [1]]}, errors.InputError),
    _e("indices_negative", "mpt", _MPT, "forward", {"indices": [[0, -1]], "task_ids": [0]}, errors.IndexRangeError),
    _e("indices_ge_T", "mpt", _MPT, "forward", {"indices": [[0, 2]], "task_ids": [0]}, errors.IndexRangeError),
    _e("indices_1d", "mpt", _MPT, "forward", {"indices": [0, 1], "task_ids": [0]}, errors.InputError),
    _e("indices_wrong_T", "mpt", _MPT, "forward", {"indices": [[0, 1, 1]], "task_ids": [0]}, errors.InputError),
    _e("indices_float", "prompt_embedding", _PT, "forward", {"indices": [[0.0, 1.0]]}, errors.InputTypeError),
    _e("indices_out_of_range_pt", "prompt_embedding", _PT, "forward", {"indices": [[2]]}, errors.IndexRangeError),
    _e("grad_output_wrong_shape", "mpt", _MPT, "backward",
       {"grad_output": np.zeros((2, 2, 4)).tolist(), "indices": _ARANGE, "task_ids": [0, 1]}, errors.InputError),
    _e("config_unknown_init", "mpt", {**_MPT, "prompt_tuning_init": "FANCY"}, "config", {}, errors.ConfigError),
    _e("config_num_tasks_zero", "mpt", {**_MPT, "num_tasks": 0}, "config", {}, errors.ConfigError),
    _e("config_num_ranks_zero", "mpt", {**_MPT, "num_ranks": 0}, "config", {}, errors.ConfigError),
    _e("config_average_needs_one_task", "mpt",
       {**_MPT, "prompt_tuning_init": "AVERAGE_SOURCE_TASKS", "prompt_tuning_init_state_dict_path": "s.safetensors"},
       "config", {}, errors.ConfigError),
    _e("config_source_init_without_path", "mpt", {**_MPT, "num_tasks": 1, "prompt_tuning_init": "EXACT_SOURCE_TASK"},
       "config", {}, errors.ConfigError),
    _e("config_unknown_encoder_type", "mlp_encoder",
       {"peft_type": "P_TUNING", "num_virtual_tokens": 2, "token_dim": 3, "encoder_reparameterization_type": "GRU"},
       "config", {}, errors.ConfigError),
)


def check_error_case(case: dict[str, Any]) -> BaseException | None:
    """Run one error case on mpt-ref; return the exception raised (None if nothing was raised)."""
    try:
        config = config_from_dict(case["config"])
        if case["call"] == "config":
            return None
        module = MODULE_CLASSES[Kind.parse(case["module"])](config, seed=0, dtype=np.float64)
        args = {k: (np.asarray(v, dtype=np.float64) if k == "grad_output" else v) for k, v in case["args"].items()}
        if case["call"] == "forward":
            module.forward(**args)
        else:
            module.backward(args.pop("grad_output"), **args)
    except errors.MptRefError as exc:
        return exc
    return None
