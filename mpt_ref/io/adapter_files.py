"""The files of a PEFT adapter directory, as bytes: which weights file to read, and writing the set.

Knows no module class: the classes (modules/) hand over ``{file name: bytes}``; interop/adapter.py turns
a directory back into a module.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from mpt_ref.errors import CheckpointError, OutputExistsError
from mpt_ref.io.atomic import atomic_write_directory

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
WEIGHTS_BIN_NAME = "adapter_model.bin"
ENCODER_NAME = "mpt_ref_encoder.safetensors"  # mpt-ref's extra: full P-tuning encoder weights
TABLE_KEY = "prompt_embeddings"  # PEFT's adapter-file name for embedding.weight
FACTOR_KEYS = ("prefix_task_cols", "prefix_task_rows")


def weights_file(directory: Path) -> Path:
    """The adapter's weights file: adapter_model.safetensors, else adapter_model.bin (PEFT's preference)."""
    for name in (WEIGHTS_NAME, WEIGHTS_BIN_NAME):
        if (directory / name).exists() or (directory / name).is_symlink():  # read_regular_file checks the kind
            return directory / name
    raise CheckpointError(f"{directory}: expected {WEIGHTS_NAME} or {WEIGHTS_BIN_NAME}, got neither")


ADAPTER_NAMES = frozenset({CONFIG_NAME, WEIGHTS_NAME, WEIGHTS_BIN_NAME, ENCODER_NAME})


def write_adapter_files(directory: str | os.PathLike, files: Mapping[str, bytes], *, overwrite: bool = False) -> Path:
    """Write ``files`` into ``directory`` as one set (io/atomic.py: staged, fsynced, swapped into place):
    a kill or a full disk leaves the old adapter or the new one, never one save's config beside another's
    weights. If the directory holds adapter files, nothing is written unless ``overwrite``; then the old
    adapter files all go (a stale ``adapter_model.bin`` or encoder file included) and any other file in the
    directory stays."""
    directory = Path(directory)
    existing = sorted(name for name in ADAPTER_NAMES if (directory / name).exists() or (directory / name).is_symlink())
    if existing and not overwrite:
        raise OutputExistsError(f"{directory}: expected no adapter files, got existing {existing} (pass overwrite=True)")
    atomic_write_directory(directory, files, keep=lambda entry: entry.name not in ADAPTER_NAMES)
    return directory
