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

from mpt_ref.errors import CheckpointError, ConfigError
from mpt_ref.io.adapter_files import (
    CONFIG_NAME,
    ENCODER_NAME,
    FACTOR_KEYS,
    TABLE_KEY,
    read_adapter_bytes,
)
from mpt_ref.io.checkpoint import check_finite, parse_tensors
from mpt_ref.modules.base import Module, register_adapter_loader
from mpt_ref.modules.config import (
    MultitaskPromptTuningConfig,
    MultitaskPromptTuningInit,
    PromptEncoderConfig,
    PromptTuningConfig,
    check_state_shapes,
    config_from_json,
)
from mpt_ref.modules.multitask import MultitaskPromptEmbedding
from mpt_ref.modules.prompt_embedding import PromptEmbedding
from mpt_ref.modules.prompt_encoder import PromptEncoder


def load_peft_adapter(path: str | os.PathLike, *, full_encoder: bool = False, dtype: Any = np.float32) -> Any:
    """The mpt-ref module a PEFT adapter directory describes, holding its weights.

    PROMPT_TUNING -> PromptEmbedding; MULTITASK_PROMPT_TUNING -> MultitaskPromptEmbedding (its
    ``get_prompt(B, task_ids)`` equals PEFT's); P_TUNING -> PromptEncoder in inference mode whose
    ``embedding.weight`` is the saved prompt table (what PEFT itself uses after loading), or with
    ``full_encoder=True`` the trainable encoder from ``mpt_ref_encoder.safetensors``.
    Unlike PEFT (spec/differences.md #22), an MPT source-init config does not need its source file to exist: the
    saved factors replace the init anyway, so none is run. Missing factors are an error here, where
    PEFT silently keeps a random init. Extra keys (``modules_to_save`` entries of the base model) are
    ignored with a warning. The config and the weights always come from one save, even while another
    thread or process saves into ``path`` (io/adapter_files.py).
    """
    if not isinstance(path, (str, os.PathLike)):
        raise CheckpointError(f"path: expected a PEFT adapter directory (str or os.PathLike), got "
                              f"{type(path).__name__}")
    directory = Path(path)
    files = read_adapter_bytes(directory, encoder=full_encoder)
    config = config_from_json(files.config, directory / CONFIG_NAME)
    tensors = parse_tensors(files.weights, files.weights_path)
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
    _check_shapes_before_building(directory, config, tensors)
    if isinstance(config, MultitaskPromptTuningConfig):
        # the saved factors replace any init: build with RANDOM, keep the config's fields as saved
        build = dataclasses.replace(config, prompt_tuning_init=MultitaskPromptTuningInit.RANDOM,
                                    prompt_tuning_init_state_dict_path=None)
        module: Any = MultitaskPromptEmbedding(build, dtype=dtype)
        module.config = config
    elif isinstance(config, PromptTuningConfig):
        module = PromptEmbedding(dataclasses.replace(config, inference_mode=True), dtype=dtype)
    elif isinstance(config, PromptEncoderConfig):
        if full_encoder:
            return _load_full_encoder(directory, config, files.encoder, dtype)
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


def _check_shapes_before_building(directory: Path, config: Any, tensors: dict[str, np.ndarray]) -> None:
    """The config's sizes against the file's tensors, before the module (and its init) is allocated: a
    hostile config asking for 12000 x 12000 beside a small table costs nothing."""
    if config.num_virtual_tokens is None or config.token_dim is None:
        raise ConfigError(f"{directory / CONFIG_NAME}: expected num_virtual_tokens and token_dim, got "
                          f"{config.num_virtual_tokens} and {config.token_dim}")
    t, d = config.total_virtual_tokens, config.token_dim
    want = {TABLE_KEY: (t, d)}
    if isinstance(config, MultitaskPromptTuningConfig):
        k, r = config.num_tasks, config.num_ranks
        want.update({"prefix_task_cols": (k, t, r), "prefix_task_rows": (k, r, d)})
    for key, shape in want.items():
        if tuple(tensors[key].shape) != shape:
            raise CheckpointError(f"{directory}: {key!r}: expected shape {shape} (from {CONFIG_NAME}), got "
                                  f"{tuple(tensors[key].shape)}")


def _load_full_encoder(directory: Path, config: PromptEncoderConfig, data: bytes | None, dtype: Any) -> PromptEncoder:
    path = directory / ENCODER_NAME
    if data is None:
        raise CheckpointError(f"{directory}: expected {ENCODER_NAME} (written by mpt-ref's save_pretrained) for "
                              "full_encoder=True, got none; PEFT saves the prompt table only")
    tensors = parse_tensors(data, path)
    check_finite(tensors, str(path))
    check_state_shapes(config, tensors, str(path))  # before the encoder (and its init) is allocated
    module = PromptEncoder(dataclasses.replace(config, inference_mode=False), dtype=dtype)
    module.load_state_dict(tensors, strict=True)
    return module


def adapter_tensors(module: Any) -> dict[str, np.ndarray]:
    """What PEFT's ``save_pretrained`` stores for ``module``, under the adapter keys."""
    return _module(module).adapter_tensors()


def save_pretrained(module: Any, save_directory: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """``module.save_pretrained(save_directory, overwrite=...)``: a PEFT adapter directory."""
    return _module(module).save_pretrained(save_directory, overwrite=overwrite)


def _module(module: Any) -> Module:
    if not isinstance(module, Module):
        raise ConfigError(f"module: expected a PromptEmbedding, MultitaskPromptEmbedding or PromptEncoder, "
                          f"got {type(module).__name__}")
    return module


register_adapter_loader(load_peft_adapter)  # PromptEmbedding.from_pretrained & co.
