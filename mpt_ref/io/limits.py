"""What every file reader shares: size caps, the one way to read a user's file (regular files only,
checked before reading, exactly their size), bounded descriptions of hostile values, bfloat16 widening."""

from __future__ import annotations

import os
import reprlib
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from mpt_ref.errors import shown

MAX_BYTES = 8 << 30        # default cap on one checkpoint file: 8 GiB
MAX_CONFIG_BYTES = 1 << 20  # adapter_config.json: a few hundred bytes in practice; 1 MiB is generous
MAX_MODEL_BYTES = 2 << 30   # an ONNX model is one protobuf message, which cannot exceed 2 GiB

_repr = reprlib.Repr()
_repr.maxlevel, _repr.maxstring, _repr.maxother, _repr.maxlist, _repr.maxtuple, _repr.maxdict = 3, 60, 60, 6, 6, 6


def short(value: Any) -> str:
    """A bounded description of an attacker-built value: ``reprlib`` (depth 3, 6 items, 60 chars), never
    ``str()`` of the whole structure (a 659-byte pickle builds a value whose ``str`` doubles per level)."""
    try:
        return shown(_repr.repr(value))
    except Exception:  # noqa: BLE001 - a hostile __repr__ must not escape
        return f"<{type(value).__name__}>"


def exc_text(exc: BaseException) -> str:
    """``TypeName: first message line`` of an exception, bounded; never ``str()`` of attacker objects."""
    arg = exc.args[0] if exc.args and isinstance(exc.args[0], str) else ""
    return f"{type(exc).__name__}: {shown(arg, 160)}" if arg else type(exc).__name__


def read_regular_file(path: str | os.PathLike, max_bytes: int, error: Callable[[str], Exception],
                      what: str = "file", *, dir_fd: int | None = None) -> bytes:
    """The bytes of a regular file of at most ``max_bytes``, read exactly to its size.

    Opened non-blocking (a FIFO neither hangs the open nor gets read), then checked with ``fstat`` on the
    open descriptor (no race with a rename): anything but a regular file (FIFO, socket, device such as a
    symlink to /dev/zero, directory) is refused before a byte is read, and so is a size over the cap.
    ``error(message)`` builds the exception raised (CheckpointError or ConfigError). With ``dir_fd`` (an
    open directory), ``path.name`` is opened relative to that directory, whatever ``path`` names now."""
    path = Path(path)
    if "\0" in str(path):
        raise error(f"{shown(path)!r}: expected a path without NUL characters, got one")
    try:
        flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
        fd = os.open(path.name, flags, dir_fd=dir_fd) if dir_fd is not None else os.open(path, flags)
    except FileNotFoundError:
        raise error(f"{path}: expected an existing {what}, got a missing path") from None
    except IsADirectoryError:
        raise error(f"{path}: expected a regular {what}, got a directory") from None
    except OSError as exc:
        raise error(f"{path}: expected a readable {what}, got {exc_text(exc)}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = ("a directory" if stat.S_ISDIR(st.st_mode) else "a FIFO" if stat.S_ISFIFO(st.st_mode)
                    else "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else "not a regular file")
            raise error(f"{path}: expected a regular {what}, got {kind}")
        size = st.st_size
        if size > max_bytes:
            raise error(f"{path}: expected at most {max_bytes} bytes, got {size}")
        chunks, got = [], 0
        while got < size:
            chunk = os.read(fd, min(size - got, 1 << 30))
            if not chunk:
                raise error(f"{path}: expected {size} bytes, got {got} (the file shrank while being read)")
            chunks.append(chunk)
            got += len(chunk)
        if os.read(fd, 1):
            raise error(f"{path}: expected {size} bytes, got more (the file grew while being read)")
        return b"".join(chunks)  # one chunk (files < 1 GiB): the same object, no copy
    except OSError as exc:
        raise error(f"{path}: expected a readable {what}, got {exc_text(exc)}") from None
    finally:
        os.close(fd)


def bf16_to_float32(bits: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns (uint16) -> float32, exactly (bfloat16 is float32's upper half)."""
    return (bits.astype(np.uint32) << 16).view(np.float32)
