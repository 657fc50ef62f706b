"""PEFT adapter directories, both ways: ``load_peft_adapter(path)`` and ``save_pretrained(module, dir)``.

A PEFT prompt-learning adapter directory holds ``adapter_config.json`` and ``adapter_model.safetensors``
(preferred) or ``adapter_model.bin``, with the adapter keys of spec/README.md: ``prompt_embeddings``
(T, D), plus ``prefix_task_cols`` / ``prefix_task_rows`` for MPT. P-tuning adapters hold the encoder's
*output* (PEFT saves them pre-reparameterized), so they load as an inference-mode lookup table; mpt-ref
additionally writes ``mpt_ref_encoder.safetensors`` with the full encoder weights, which
``load_peft_adapter(path, full_encoder=True)`` restores for further training.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from .checkpoint import check_finite, read_tensors, safetensors_bytes
from .config import (
    CONFIG_NAME, MultitaskPromptTuningConfig, MultitaskPromptTuningInit, PromptEncoderConfig, PromptTuningConfig,
    load_config,
)
from ._io import atomic_write_bytes
from .errors import CheckpointError, ConfigError, OutputExistsError
from .multitask import MultitaskPromptEmbedding
from .prompt_embedding import PromptEmbedding
from .prompt_encoder import PromptEncoder

WEIGHTS_NAME = "adapter_model.safetensors"
WEIGHTS_BIN_NAME = "adapter_model.bin"
ENCODER_NAME = "mpt_ref_encoder.safetensors"  # mpt-ref's extra: full P-tuning encoder weights
TABLE_KEY = "prompt_embeddings"
FACTOR_KEYS = ("prefix_task_cols", "prefix_task_rows")


def _weights_file(directory: Path) -> Path:
    for name in (WEIGHTS_NAME, WEIGHTS_BIN_NAME):
        if (directory / name).is_file():
            return directory / name
    raise CheckpointError(f"{directory}: expected {WEIGHTS_NAME} or {WEIGHTS_BIN_NAME}, got neither")


def load_peft_adapter(path: str | os.PathLike, *, full_encoder: bool = False, dtype: Any = np.float32) -> Any:
    """The mpt-ref module a PEFT adapter directory describes, holding its weights.

    PROMPT_TUNING -> PromptEmbedding; MULTITASK_PROMPT_TUNING -> MultitaskPromptEmbedding (its
    ``get_prompt(B, task_ids)`` equals PEFT's); P_TUNING -> PromptEncoder in inference mode whose
    ``embedding.weight`` is the saved prompt table (what PEFT itself uses after loading), or with
    ``full_encoder=True`` the trainable encoder from ``mpt_ref_encoder.safetensors``.
    Unlike PEFT (quirk Q4), an MPT source-init config does not need its source file to exist: the
    saved factors replace the init anyway, so none is run. Missing factors are an error here, where
    PEFT silently keeps a random init. Extra keys (``modules_to_save`` entries of the base model) are
    ignored with a warning.
    """
    directory = Path(path)
    if not directory.is_dir():
        raise CheckpointError(f"path: expected a PEFT adapter directory, got {directory}")
    config = load_config(directory / CONFIG_NAME)
    tensors = read_tensors(_weights_file(directory))
    check_finite(tensors, str(directory))
    if TABLE_KEY not in tensors:
        raise CheckpointError(f"{directory}: expected key {TABLE_KEY!r}, got keys {sorted(tensors)}")
    wanted = {TABLE_KEY}
    if isinstance(config, MultitaskPromptTuningConfig):
        wanted |= set(FACTOR_KEYS)
        missing = [k for k in FACTOR_KEYS if k not in tensors]
        if missing:
            raise CheckpointError(f"{directory}: expected MPT keys {list(FACTOR_KEYS)}, got {missing} missing "
                                  "(PEFT would silently keep a random init)")
        # the saved factors replace any init: build with RANDOM, keep the config's fields as saved
        build = dataclasses.replace(config, prompt_tuning_init=MultitaskPromptTuningInit.RANDOM,
                                    prompt_tuning_init_state_dict_path=None)
        module: Any = MultitaskPromptEmbedding(build, dtype=dtype)
        module.config = config
    elif isinstance(config, PromptTuningConfig):
        module = PromptEmbedding(dataclasses.replace(config, inference_mode=True), dtype=dtype)
    elif isinstance(config, PromptEncoderConfig):
        if full_encoder:
            return _load_full_encoder(directory, config, dtype)
        warnings.warn(f"{directory}: P-tuning adapters hold the encoder output only; loaded as an inference-mode "
                      "prompt table (PromptEncoder.inference_mode=True)", UserWarning, stacklevel=2)
        module = PromptEncoder(dataclasses.replace(config, inference_mode=True), dtype=dtype)
    else:  # pragma: no cover - load_config only returns the three classes
        raise ConfigError(f"config: expected a prompt-learning config, got {type(config).__name__}")
    extra = sorted(set(tensors) - wanted)
    if extra:
        warnings.warn(f"{directory}: ignoring keys that are not prompt parameters: {extra}", UserWarning, stacklevel=2)
    state = {("embedding.weight" if k == TABLE_KEY else k): tensors[k] for k in wanted}
    module.load_state_dict(state, strict=True)
    return module


def _load_full_encoder(directory: Path, config: PromptEncoderConfig, dtype: Any) -> PromptEncoder:
    path = directory / ENCODER_NAME
    if not path.is_file():
        raise CheckpointError(f"{directory}: expected {ENCODER_NAME} (written by mpt-ref's save_pretrained) for "
                              "full_encoder=True, got none; PEFT saves the prompt table only")
    tensors = read_tensors(path)
    check_finite(tensors, str(path))
    module = PromptEncoder(dataclasses.replace(config, inference_mode=False), dtype=dtype)
    module.load_state_dict(tensors, strict=True)
    return module


def adapter_tensors(module: Any) -> dict[str, np.ndarray]:
    """What PEFT's ``save_pretrained`` stores for ``module``, under the adapter keys."""
    if isinstance(module, MultitaskPromptEmbedding):
        sd = module.state_dict()
        return {FACTOR_KEYS[0]: sd[FACTOR_KEYS[0]], FACTOR_KEYS[1]: sd[FACTOR_KEYS[1]],
                TABLE_KEY: sd["embedding.weight"]}
    if isinstance(module, PromptEncoder):
        return {TABLE_KEY: module.prompt_table()}  # the eval-mode encoder output (PEFT: pre-reparameterized)
    if isinstance(module, PromptEmbedding):
        return {TABLE_KEY: module.state_dict()["embedding.weight"]}
    raise ConfigError(f"module: expected a PromptEmbedding, MultitaskPromptEmbedding or PromptEncoder, "
                      f"got {type(module).__name__}")


def save_pretrained(module: Any, save_directory: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write a PEFT adapter directory PEFT loads (``PeftModel.from_pretrained``): adapter_config.json and
    adapter_model.safetensors (metadata {"format": "pt"}); for P-tuning also ``mpt_ref_encoder.safetensors``.
    Every file is written atomically; if any of them exists, nothing is written unless ``overwrite``."""
    directory = Path(save_directory)
    files = {
        CONFIG_NAME: module.config.to_json().encode(),
        WEIGHTS_NAME: safetensors_bytes(adapter_tensors(module), {"format": "pt"}),
    }
    if isinstance(module, PromptEncoder) and not module.inference_mode:
        files[ENCODER_NAME] = safetensors_bytes(module.state_dict(), {"format": "mpt-ref", "note": "full encoder"})
    existing = [name for name in files if (directory / name).exists()]
    if existing and not overwrite:
        raise OutputExistsError(f"{directory}: expected no adapter files, got existing {existing} (pass overwrite=True)")
    for name, data in files.items():
        atomic_write_bytes(directory / name, data, overwrite=True)
    return directory
