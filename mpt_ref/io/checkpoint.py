"""Checkpoint files: the safetensors library's own loader behind a size- and type-checked read, an
atomic writer, and one ``read_tensors`` entry point that also reads PyTorch ``.bin`` files (without
torch, see torch_pickle.py).

Acceptance is the safetensors library's (``safetensors.deserialize``): a file it refuses is refused here,
and a file it accepts loads as exactly its tensors. On top of it mpt-ref refuses (spec/checkpoints.md):
files that are not regular files or exceed ``max_bytes`` (checked before reading, then read exactly to
their size), and dtypes outside F64/F32/F16/BF16/I64/I32/I16/I8/U8/BOOL. Every failure is a
``CheckpointError`` naming the file and the problem; nothing is executed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from mpt_ref.errors import CheckpointError, shown
from mpt_ref.io.atomic import atomic_write_bytes
from mpt_ref.io.limits import MAX_BYTES, bf16_to_float32, exc_text, read_regular_file

MAX_HEADER_BYTES = 100 << 20   # safetensors' own header limit (100 MB): the header read never goes past it
MAX_TENSORS = 1 << 16          # tensors in one file: a whole model has thousands, an adapter one to three

# safetensors dtype names -> NumPy dtypes (little-endian). BF16 is widened to float32 exactly.
SAFETENSORS_DTYPES = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype("<u2"),
    "I64": np.dtype("<i8"), "I32": np.dtype("<i4"), "I16": np.dtype("<i2"), "I8": np.dtype("i1"),
    "U8": np.dtype("u1"), "BOOL": np.dtype("?"),
}
NUMPY_TO_SAFETENSORS = {v: k for k, v in SAFETENSORS_DTYPES.items() if k != "BF16"}


def _fail(path: str, what: str) -> CheckpointError:
    return CheckpointError(f"{path}: expected a valid safetensors file, got {what}")


def parse_safetensors(data: bytes, *, path: str = "<bytes>") -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """(tensors, metadata) from the bytes of a safetensors file, as the safetensors library reads them."""
    from safetensors import SafetensorError, deserialize

    if not isinstance(data, bytes):
        data = bytes(data)
    _count_tensors(data, path)
    try:
        flat = deserialize(data)  # validates header length, JSON, dtypes, shapes, offsets, coverage
    except SafetensorError as exc:
        raise _fail(path, f"a file the safetensors library refuses ({exc_text(exc)})") from None
    except Exception as exc:  # noqa: BLE001 - a library panic or overflow must not escape as another type
        raise _fail(path, f"a file the safetensors library cannot read ({exc_text(exc)})") from None
    n = int.from_bytes(data[:8], "little")  # the library checked it
    try:
        header = json.loads(data[8 : 8 + n].decode("utf-8"))
        metadata = header.get("__metadata__") or {}
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError, AttributeError) as exc:  # pragma: no cover
        raise _fail(path, f"a header Python's json cannot read ({type(exc).__name__})") from None
    if not isinstance(metadata, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise _fail(path, "__metadata__ that is not a str -> str mapping")  # pragma: no cover - the library checks
    out = {}
    for key, info in flat:
        dtype = info["dtype"]
        if dtype not in SAFETENSORS_DTYPES:
            raise _fail(path, f"tensor {shown(key)!r} of unsupported dtype {dtype!r} (supported {sorted(SAFETENSORS_DTYPES)})")
        np_dtype = SAFETENSORS_DTYPES[dtype]
        arr = np.frombuffer(info["data"], dtype=np_dtype).reshape(info["shape"])
        out[key] = bf16_to_float32(arr) if dtype == "BF16" else arr.astype(np_dtype.newbyteorder("="), copy=False)  # the library's own writable copy
    return out, dict(metadata)


def _count_tensors(data: bytes, path: str) -> None:
    """Refuse more than MAX_TENSORS tensors from the header's bytes, before the library builds one
    object per tensor (10**6 empty tensors in a 60 MB file took 2.4 GB). Every tensor needs its own JSON
    object, and a brace outside a string cannot be escaped, so the braces outside strings bound the count."""
    if len(data) < 8:
        return  # the library reports it
    n = min(int.from_bytes(data[:8], "little"), MAX_HEADER_BYTES, len(data) - 8)
    header = data[8 : 8 + n]
    if header.count(b"{") <= MAX_TENSORS + 2:
        return  # fast path: not even that many braces
    objects = _braces_outside_strings(header) - 1  # less the header object itself
    if objects > MAX_TENSORS + 1:  # one more: the __metadata__ object
        raise _fail(path, f"a header of about {objects} tensors (expected at most {MAX_TENSORS} in one file)")


def _braces_outside_strings(text: bytes) -> int:
    """``{`` outside JSON strings, in one pass and constant memory (a regex restarting at every quote of an
    unterminated string would take quadratic time; re.sub of 10**6 strings took 1 GB). The rest of an
    unterminated string (invalid JSON, refused by the library) is counted as if outside: an upper bound."""
    braces, pos = 0, 0
    while True:
        start = text.find(b'"', pos)
        if start < 0:
            return braces + text.count(b"{", pos)
        braces += text.count(b"{", pos, start)
        end = start + 1
        while True:  # the closing quote: one preceded by an even number of backslashes
            end = text.find(b'"', end)
            if end < 0:
                return braces + text.count(b"{", start)
            slashes = end - 1
            while text[slashes] == 0x5C:  # 0x5C: backslash; text[start] is a quote, so this stops
                slashes -= 1
            if (end - 1 - slashes) % 2 == 0:
                break
            end += 1
        pos = end + 1


def read_safetensors(path: str | os.PathLike, *, max_bytes: int = MAX_BYTES) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    path = Path(path)
    data = read_regular_file(path, max_bytes, CheckpointError, "checkpoint file")
    return parse_safetensors(data, path=str(path))


def read_tensors(path: str | os.PathLike, *, max_bytes: int = MAX_BYTES) -> dict[str, np.ndarray]:
    """Tensors of a ``.safetensors`` file, or of a PyTorch ``.bin``/``.pt``/``.pth`` zip checkpoint
    (read without torch and without executing anything)."""
    path = Path(path)
    _check_suffix(path)
    return parse_tensors(read_regular_file(path, max_bytes, CheckpointError, "checkpoint file"), path,
                         max_bytes=max_bytes)


def _check_suffix(path: Path) -> None:
    if path.suffix not in (".safetensors", ".bin", ".pt", ".pth"):
        raise CheckpointError(f"{path}: expected a .safetensors or PyTorch .bin/.pt/.pth file, got suffix "
                              f"{path.suffix!r}")


def parse_tensors(data: bytes, path: str | os.PathLike, *, max_bytes: int = MAX_BYTES) -> dict[str, np.ndarray]:
    """``read_tensors`` of bytes already read; ``path``'s suffix names the format."""
    path = Path(path)
    _check_suffix(path)
    if path.suffix == ".safetensors":
        return parse_safetensors(data, path=str(path))[0]
    from mpt_ref.io.torch_pickle import parse_torch_checkpoint

    return parse_torch_checkpoint(data, path=str(path), max_bytes=max_bytes)


def check_finite(tensors: Mapping[str, np.ndarray], path: str) -> None:
    for key, value in tensors.items():
        if np.issubdtype(value.dtype, np.floating) and not np.isfinite(value).all():
            raise CheckpointError(f"{path}: expected finite values in {key!r}, got NaN or inf")


def safetensors_bytes(tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None) -> bytes:
    """Serialize with the safetensors library (contiguous little-endian copies; PEFT's {"format": "pt"})."""
    from safetensors.numpy import save

    for key, value in tensors.items():
        if np.dtype(value.dtype).newbyteorder("<") not in NUMPY_TO_SAFETENSORS:
            raise CheckpointError(f"tensor {key!r}: expected a safetensors dtype, got {value.dtype}")
    arrays = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    return save(arrays, metadata=dict(metadata or {"format": "pt"}))


def write_safetensors(path: str | os.PathLike, tensors: Mapping[str, np.ndarray], *,
                      metadata: Mapping[str, str] | None = None, overwrite: bool = False) -> Path:
    """Write atomically; refuse an existing file unless ``overwrite``."""
    return atomic_write_bytes(path, safetensors_bytes(tensors, metadata), overwrite=overwrite)
