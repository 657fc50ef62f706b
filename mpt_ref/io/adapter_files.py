"""The files of a PEFT adapter directory, as bytes: reading one whole save, and writing the set.

Knows no module class: the classes (modules/) hand over ``{file name: bytes}``; interop/adapter.py turns
a directory back into a module.

A save replaces the whole directory in one step (io/atomic.py), so a reader that opens the directory once
and reads every file relative to that handle reads one save's files, never one save's config beside
another save's weights. If the save it holds is swapped out and deleted while it reads (a file vanishes),
it reads again from the directory now at the path.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

from mpt_ref.errors import CheckpointError, ConfigError, MptRefError, OutputExistsError
from mpt_ref.io.atomic import atomic_write_directory
from mpt_ref.io.limits import MAX_BYTES, MAX_CONFIG_BYTES, exc_text, read_regular_file

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
WEIGHTS_BIN_NAME = "adapter_model.bin"
ENCODER_NAME = "mpt_ref_encoder.safetensors"  # mpt-ref's extra: full P-tuning encoder weights
TABLE_KEY = "prompt_embeddings"  # PEFT's adapter-file name for embedding.weight
FACTOR_KEYS = ("prefix_task_cols", "prefix_task_rows")


class AdapterBytes(NamedTuple):
    """The files of one save of an adapter directory."""

    config: bytes         # adapter_config.json
    weights_path: Path    # adapter_model.safetensors, else adapter_model.bin (PEFT's preference)
    weights: bytes
    encoder: bytes | None  # mpt_ref_encoder.safetensors when asked for and present


RETRIES = 1000  # saves swapped in while one read runs; each retry means another save completed meanwhile


def read_adapter_bytes(directory: str | os.PathLike, *, encoder: bool = False) -> AdapterBytes:
    """The config and weights (and, with ``encoder``, mpt-ref's encoder file) of one save of ``directory``."""
    directory = Path(directory)
    if "\0" in str(directory):
        raise CheckpointError("path: expected a PEFT adapter directory, got a path with a NUL character")
    for _ in range(RETRIES):
        try:
            dfd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0))
        except (FileNotFoundError, NotADirectoryError):
            raise CheckpointError(f"path: expected a PEFT adapter directory, got {directory}") from None
        except OSError as exc:
            raise CheckpointError(f"{directory}: expected a readable adapter directory, got {exc_text(exc)}") from None
        try:
            return _read_set(directory, dfd, encoder)
        except MptRefError:
            if _still_current(directory, dfd):
                raise  # the directory read is the one at the path: the error is the adapter's own
        finally:
            os.close(dfd)
    raise CheckpointError(f"{directory}: expected one save to finish while reading, got {RETRIES} saves "
                          "swapped in meanwhile")  # pragma: no cover - needs a writer faster than the reader


def _read_set(directory: Path, dfd: int, encoder: bool) -> AdapterBytes:
    config = read_regular_file(directory / CONFIG_NAME, MAX_CONFIG_BYTES, ConfigError, CONFIG_NAME, dir_fd=dfd)
    for name in (WEIGHTS_NAME, WEIGHTS_BIN_NAME):
        try:
            os.stat(name, dir_fd=dfd, follow_symlinks=False)
        except FileNotFoundError:
            continue
        weights = read_regular_file(directory / name, MAX_BYTES, CheckpointError, "checkpoint file", dir_fd=dfd)
        break
    else:
        raise CheckpointError(f"{directory}: expected {WEIGHTS_NAME} or {WEIGHTS_BIN_NAME}, got neither")
    extra = None
    if encoder:
        try:
            os.stat(ENCODER_NAME, dir_fd=dfd, follow_symlinks=False)
        except FileNotFoundError:
            if not _still_current(directory, dfd):  # deleted with a save swapped out, not absent from it
                raise CheckpointError(f"{directory}: swapped while being read") from None
        else:
            extra = read_regular_file(directory / ENCODER_NAME, MAX_BYTES, CheckpointError, "checkpoint file",
                                      dir_fd=dfd)
    return AdapterBytes(config, directory / name, weights, extra)


def _still_current(directory: Path, dfd: int) -> bool:
    """Whether the directory held open is still the one at the path (no save swapped it out)."""
    try:
        here, held = os.stat(directory), os.fstat(dfd)
    except OSError:
        return False
    return stat.S_ISDIR(here.st_mode) and (here.st_dev, here.st_ino) == (held.st_dev, held.st_ino) and held.st_nlink > 0


ADAPTER_NAMES = frozenset({CONFIG_NAME, WEIGHTS_NAME, WEIGHTS_BIN_NAME, ENCODER_NAME})


def write_adapter_files(directory: str | os.PathLike, files: Mapping[str, bytes], *, overwrite: bool = False) -> Path:
    """Write ``files`` into ``directory`` as one set (io/atomic.py: staged, fsynced, swapped into place):
    a kill or a full disk leaves the old adapter or the new one, never one save's config beside another's
    weights. If the directory holds adapter files, nothing is written unless ``overwrite``; then the old
    adapter files all go (a stale ``adapter_model.bin`` or encoder file included) and any other file in the
    directory stays."""
    directory = Path(directory)

    def refuse_existing(path: Path) -> None:
        existing = sorted(name for name in ADAPTER_NAMES if os.path.lexists(path / name))
        if existing and not overwrite:
            raise OutputExistsError(f"{directory}: expected no adapter files, got existing {existing} (pass "
                                    "overwrite=True)")

    refuse_existing(directory)
    atomic_write_directory(directory, files, keep=lambda entry: entry.name not in ADAPTER_NAMES,
                           check_existing=refuse_existing)
    return directory
