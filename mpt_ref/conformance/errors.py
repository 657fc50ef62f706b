"""The error contract as data: invalid inputs and the exception class each must raise.

Written to ``<vectors>/errors.json`` for ports to replay; ``check_error_case`` replays one on mpt-ref.
Each entry: a module kind, config and dtype, the call ("config", "construct", "forward" or "backward"),
JSON arguments (with the dtype of any list argument that is not the default), the expected mpt-ref class
with the builtin it derives from (what a port should raise) and a regex of mpt-ref's own message.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mpt_ref import errors
from mpt_ref.conformance.cases import MODULE_CLASSES
from mpt_ref.modules.config import config_from_dict
from mpt_ref.kind import Kind
from mpt_ref.modules.prompt_encoder import PromptEncoder

_MPT = {"peft_type": "MULTITASK_PROMPT_TUNING", "num_virtual_tokens": 2, "token_dim": 3, "num_tasks": 2}
_PT = {"peft_type": "PROMPT_TUNING", "num_virtual_tokens": 2, "token_dim": 3}
_MLP = {"peft_type": "P_TUNING", "num_virtual_tokens": 2, "token_dim": 2, "encoder_reparameterization_type": "MLP"}
_LSTM = {**_MLP, "encoder_reparameterization_type": "LSTM", "encoder_hidden_size": 1, "encoder_num_layers": 3,
         "encoder_dropout": 0.5}
_ARANGE = [[0, 1], [0, 1]]


def _e(name: str, module: str, config: dict, call: str, args: dict, error: type[errors.MptRefError], message: str,
       *, dtype: str = "float64", arg_dtypes: dict[str, str] | None = None) -> dict:
    """One case. ``message``: a regex mpt-ref's message matches (ports check the class, not the text);
    ``arg_dtypes``: dtype of a list argument when it is not the default (ids int64, dout the module dtype)."""
    builtin = next(b for b in (IndexError, TypeError, FileExistsError, ValueError) if issubclass(error, b))
    return {"name": name, "module": module, "config": config, "dtype": dtype, "call": call, "args": args,
            "arg_dtypes": arg_dtypes or {}, "error": error.__name__, "builtin": builtin.__name__, "message": message}


_BAD_TASK_IDS = [  # (name, task_ids, error, message) for the MPT module above (K = 2, B = 2)
    ("none", None, errors.InputError, "cannot be None"),
    ("negative", [0, -1], errors.IndexRangeError, r"\[0, 2\).*got -1"),
    ("ge_num_tasks", [2, 0], errors.IndexRangeError, r"\[0, 2\).*got 2"),
    ("float", [0.0, 1.0], errors.InputTypeError, "integer dtype"),
    ("bool", [True, False], errors.InputTypeError, "integer dtype"),
    ("wrong_length", [0, 1, 1], errors.InputError, "length B=2 or 1, got length 3"),
    ("2d", [[0], [1]], errors.InputError, "1-D"),
    ("string", "0", errors.InputTypeError, "integer dtype"),
]
_BAD_INDICES = [  # (name, module, config, indices, error, message); PT and encoders T = 2
    ("negative", "mpt", _MPT, [[0, -1], [0, 1]], errors.IndexRangeError, r"indices.*\[0, 2\).*got -1"),
    ("ge_T", "mpt", _MPT, [[0, 1], [2, 1]], errors.IndexRangeError, r"indices.*got 2 at position \(1, 0\)"),
    ("1d", "mpt", _MPT, [0, 1], errors.InputError, "2-D"),
    ("wrong_T", "mpt", _MPT, [[0, 1, 1], [0, 1, 1]], errors.InputError, "T=2"),
    ("float", "mpt", _MPT, [[0.0, 1.0], [0.0, 1.0]], errors.InputTypeError, "integer dtype"),
    ("none", "mpt", _MPT, None, errors.InputError, "got None"),
    ("float_pt", "prompt_embedding", _PT, [[0.0, 1.0]], errors.InputTypeError, "integer dtype"),
    ("out_of_range_pt", "prompt_embedding", _PT, [[2]], errors.IndexRangeError, r"indices.*\[0, 2\).*got 2"),
] + [
    (f"{what}_{kind}", kind, cfg, ids, error, message)
    for kind, cfg in (("mlp_encoder", _MLP), ("lstm_encoder", {**_LSTM, "encoder_dropout": 0.0}))
    for what, ids, error, message in (
        ("ge_T", [[0, 2]], errors.IndexRangeError, r"indices.*\[0, 2\).*got 2"),
        ("negative", [[0, -1]], errors.IndexRangeError, "got -1"),
        ("1d", [0, 1], errors.InputError, "2-D"),
        ("float", [[0.0, 1.0]], errors.InputTypeError, "integer dtype"),
        ("none", None, errors.InputError, "got None"),
    )
]
_ZEROS_MPT = [[[0.0] * 3] * 2] * 2  # B=2, T=2, D=3
_ZEROS_ENC = [[[0.0] * 2] * 2]      # B=1, T=2, D=2

ERROR_CASES: tuple[dict[str, Any], ...] = (
    *(_e(f"task_ids_{n}", "mpt", _MPT, "forward", {"indices": _ARANGE, "task_ids": t}, err, msg)
      for n, t, err, msg in _BAD_TASK_IDS),
    *(_e(f"task_ids_{n}_backward", "mpt", _MPT, "backward", {"dout": _ZEROS_MPT, "indices": _ARANGE, "task_ids": t},
         err, msg) for n, t, err, msg in _BAD_TASK_IDS),
    *(_e(f"indices_{n}", kind, cfg, "forward", {"indices": ids, **({"task_ids": [0, 0]} if kind == "mpt" else {})},
         err, msg) for n, kind, cfg, ids, err, msg in _BAD_INDICES),
    *(_e(f"indices_{n}_backward", kind, cfg, "backward", {"dout": _ZEROS_ENC, "indices": ids}, err, msg)
      for n, kind, cfg, ids, err, msg in _BAD_INDICES if kind.endswith("encoder")),
    _e("grad_output_wrong_shape", "mpt", _MPT, "backward",
       {"dout": np.zeros((2, 2, 4)).tolist(), "indices": _ARANGE, "task_ids": [0, 1]}, errors.InputError,
       r"expected shape \(2, 2, 3\)"),
    _e("dout_float32_into_float64", "mpt", _MPT, "backward", {"dout": _ZEROS_MPT, "indices": _ARANGE, "task_ids": [0, 1]},
       errors.InputTypeError, "float64", arg_dtypes={"dout": "float32"}),
    _e("dout_int", "mpt", _MPT, "backward", {"dout": _ZEROS_MPT, "indices": _ARANGE, "task_ids": [0, 1]},
       errors.InputTypeError, "float64", arg_dtypes={"dout": "int64"}),
    _e("dout_wrong_shape_encoder", "lstm_encoder", _LSTM, "backward", {"dout": [[[0.0] * 3] * 2], "indices": [[0, 1]]},
       errors.InputError, r"expected shape \(1, 2, 2\)", dtype="float32"),
    _e("dout_float64_into_float32", "lstm_encoder", _LSTM, "backward", {"dout": _ZEROS_ENC, "indices": [[0, 1]]},
       errors.InputTypeError, "float32", dtype="float32", arg_dtypes={"dout": "float64"}),
    _e("dout_int_encoder", "lstm_encoder", _LSTM, "backward", {"dout": _ZEROS_ENC, "indices": [[0, 1]]},
       errors.InputTypeError, "float32", dtype="float32", arg_dtypes={"dout": "int64"}),
    _e("dout_none", "lstm_encoder", _LSTM, "backward", {"dout": None, "indices": [[0, 1]]},
       errors.InputError, "got None", dtype="float32"),
    _e("dropout_masks_too_few", "lstm_encoder", _LSTM, "forward",
       {"indices": [[0, 1]], "dropout_masks": [[[[True, True]] * 2]]}, errors.InputError, "L-1=2", dtype="float32",
       arg_dtypes={"dropout_masks": "bool"}),
    _e("dropout_masks_not_bool", "lstm_encoder", _LSTM, "forward",
       {"indices": [[0, 1]], "dropout_masks": [[[[1.0, 1.0]] * 2]] * 2}, errors.InputTypeError,
       r"dropout_masks\[0\].*bool", dtype="float32", arg_dtypes={"dropout_masks": "float64"}),
    _e("dropout_masks_wrong_shape", "lstm_encoder", _LSTM, "forward",
       {"indices": [[0, 1]], "dropout_masks": [[[[True, True]] * 2], [[[True, True, True]] * 2]]}, errors.InputError,
       r"dropout_masks\[1\]: expected shape \(1, 2, 2\)", dtype="float32", arg_dtypes={"dropout_masks": "bool"}),
    _e("config_unknown_init", "mpt", {**_MPT, "prompt_tuning_init": "FANCY"}, "config", {}, errors.ConfigError,
       "prompt_tuning_init"),
    _e("config_num_tasks_zero", "mpt", {**_MPT, "num_tasks": 0}, "config", {}, errors.ConfigError, "num_tasks"),
    _e("config_num_ranks_zero", "mpt", {**_MPT, "num_ranks": 0}, "config", {}, errors.ConfigError, "num_ranks"),
    _e("config_average_needs_one_task", "mpt",
       {**_MPT, "prompt_tuning_init": "AVERAGE_SOURCE_TASKS", "prompt_tuning_init_state_dict_path": "s.safetensors"},
       "config", {}, errors.ConfigError, "num_tasks"),
    _e("config_source_init_without_path", "mpt", {**_MPT, "num_tasks": 1, "prompt_tuning_init": "EXACT_SOURCE_TASK"},
       "config", {}, errors.ConfigError, "prompt_tuning_init_state_dict_path"),
    _e("config_unknown_encoder_type", "mlp_encoder",
       {"peft_type": "P_TUNING", "num_virtual_tokens": 2, "token_dim": 3, "encoder_reparameterization_type": "GRU"},
       "config", {}, errors.ConfigError, "Prompt encoder type not recognized"),
    _e("module_dtype_int", "lstm_encoder", _LSTM, "construct", {}, errors.InputTypeError, "float32 or float64",
       dtype="int64"),
    _e("encoder_without_token_dim", "mlp_encoder", {"peft_type": "P_TUNING", "num_virtual_tokens": 2}, "construct", {},
       errors.ConfigError, "token_dim.*got None"),
)


def _arg(case: dict[str, Any], key: str, value: Any) -> Any:
    if value is None:
        return None
    if key == "dropout_masks":
        return [np.asarray(m, dtype=case["arg_dtypes"].get(key, "bool")) for m in value]
    if key == "dout":
        return np.asarray(value, dtype=case["arg_dtypes"].get(key, case["dtype"]))
    return np.asarray(value, dtype=case["arg_dtypes"][key]) if key in case["arg_dtypes"] else value


def check_error_case(case: dict[str, Any]) -> BaseException | None:
    """Run one error case on mpt-ref; return the exception raised (None if nothing was raised)."""
    try:
        config = config_from_dict(case["config"])
        if case["call"] == "config":
            return None
        module = MODULE_CLASSES[Kind.parse(case["module"])](config, seed=0, dtype=np.dtype(case["dtype"]))
        if case["call"] == "construct":
            return None
        args = {k: _arg(case, k, v) for k, v in case["args"].items()}
        if isinstance(module, PromptEncoder) and "dropout_masks" not in args:
            module.eval()  # encoder cases without masks: no dropout applies
        if case["call"] == "forward":
            module.forward(**args)
        else:
            module.backward(args.pop("dout"), **args)
    except errors.MptRefError as exc:
        return exc
    return None
