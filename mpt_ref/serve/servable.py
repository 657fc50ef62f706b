"""What a serving export refuses before writing anything (spec/serving.md, "Refusals").

Every serving format puts the adapter's prompt in front of a base model that is *not* part of the adapter.
That is what PEFT serves only when the adapter holds nothing but prompt parameters and PEFT applies the
prompt at all:

* ``task_type`` null: PEFT builds a plain ``PeftModel`` whose forward ignores the prompt (its logits are
  the base model's), so a prepended prompt would be silently wrong. Refused as ``save_pretrained`` refuses
  such a config.
* SEQ_CLS / TOKEN_CLS / QUESTION_ANS: PEFT trains the base model's head with the prompt
  (``modules_to_save``) and saves it in the adapter (``base_model.score.weight``, ...). The exports carry
  prompts only, and a base ONNX graph's initializer names do not map back to the head's parameter names
  reliably, so these adapters are refused, naming the head keys, rather than served with the base model's
  untrained head.
* Any other key beside the prompt parameters (``modules_to_save`` of a causal LM, e.g. ``lm_head``): the
  same reason.
"""

from __future__ import annotations

import os
from typing import Any

from mpt_ref.errors import ConfigError
from mpt_ref.io.adapter_files import FACTOR_KEYS, TABLE_KEY, read_adapter_bytes
from mpt_ref.io.checkpoint import parse_tensors
from mpt_ref.modules.base import HEAD_TASK_TYPES

PROMPT_KEYS = (TABLE_KEY, *FACTOR_KEYS)


def extra_adapter_keys(directory: str | os.PathLike) -> list[str]:
    """The keys of an adapter directory's weights file that are not prompt parameters."""
    files = read_adapter_bytes(directory)  # one save's weights, as the loader reads them
    return sorted(set(parse_tensors(files.weights, files.weights_path)) - set(PROMPT_KEYS))


def check_servable(module: Any, adapter_dir: str | os.PathLike | None = None) -> None:
    """Raise ConfigError when serving ``module``'s prompt in front of a base model would not be what PEFT
    serves (the module docstring); ``adapter_dir``: the PEFT adapter directory it was loaded from."""
    task_type = getattr(module.config, "task_type", None)
    where = f"{adapter_dir}: " if adapter_dir is not None else ""
    if task_type is None:
        raise ConfigError(
            f"{where}config.task_type: expected one of CAUSAL_LM, SEQ_2_SEQ_LM, FEATURE_EXTRACTION, got None: PEFT "
            "builds a plain PeftModel for such an adapter, which ignores the prompt (its logits equal the base "
            "model's), so a served prompt would be silently wrong; save_pretrained refuses this config too")
    kind = getattr(task_type, "value", task_type)
    extra = extra_adapter_keys(adapter_dir) if adapter_dir is not None else []
    if kind in HEAD_TASK_TYPES:
        held = extra or [f"base_model.{m}.weight" for m in HEAD_TASK_TYPES[kind]]
        raise ConfigError(
            f"{where}config.task_type: expected CAUSAL_LM, SEQ_2_SEQ_LM or FEATURE_EXTRACTION to serve, got {kind}: "
            f"PEFT serves it with the base model's head trained alongside the prompt (adapter keys {held}), which "
            "the exports do not carry; exporting the prompt alone would pair it with the base model's untrained "
            "head (its logits differ from PeftModel's)")
    if extra:
        raise ConfigError(
            f"{where}adapter keys: expected only the prompt parameters {[k for k in PROMPT_KEYS]}, got also {extra} "
            "(modules_to_save of the base model, trained with the prompt), which the exports do not carry: the "
            "served model would differ from PeftModel's")
