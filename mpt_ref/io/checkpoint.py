"""Checkpoint files: a hardened safetensors reader, an atomic writer, and one ``read_tensors`` entry
point that also reads PyTorch ``.bin`` files (without torch, see torch_pickle.py).

The reader validates everything before it allocates: the 8-byte header length against the file size
and a cap, the header JSON, every dtype, shape and byte range (in bounds, exact size, no overlap), and
the total size against ``max_bytes``. Anything off is a ``CheckpointError`` naming the file and the
problem; nothing is executed and nothing larger than the file itself is allocated.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Mapping

import numpy as np

from mpt_ref.errors import CheckpointError
from mpt_ref.io.atomic import atomic_write_bytes
from mpt_ref.io.limits import MAX_BYTES, bf16_to_float32

MAX_HEADER_BYTES = 100 << 20   # safetensors' own header limit: 100 MB

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
    """(tensors, metadata) from the bytes of a safetensors file, every field validated first."""
    if len(data) < 8:
        raise _fail(path, f"{len(data)} bytes (shorter than the 8-byte header length)")
    n = int.from_bytes(data[:8], "little")
    if n > MAX_HEADER_BYTES or n > len(data) - 8:
        raise _fail(path, f"a header length of {n} bytes in a {len(data)}-byte file (limit {MAX_HEADER_BYTES})")
    try:
        header = json.loads(data[8 : 8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise _fail(path, f"an unreadable JSON header ({type(exc).__name__})") from None
    if not isinstance(header, dict):
        raise _fail(path, f"a JSON header of type {type(header).__name__}")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise _fail(path, "__metadata__ that is not a str -> str mapping")
    body = memoryview(data)[8 + n :]
    spans, tensors = [], {}
    for key, info in header.items():
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            raise _fail(path, f"tensor {key!r} with entry {str(info)[:100]}")
        dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if dtype not in SAFETENSORS_DTYPES:
            raise _fail(path, f"tensor {key!r} of unsupported dtype {dtype!r} (supported {sorted(SAFETENSORS_DTYPES)})")
        if not isinstance(shape, list) or not all(type(s) is int and 0 <= s < 1 << 40 for s in shape):
            raise _fail(path, f"tensor {key!r} with shape {str(shape)[:100]}")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)
                and 0 <= offsets[0] <= offsets[1] <= len(body)):
            raise _fail(path, f"tensor {key!r} with byte range {str(offsets)[:100]} outside the {len(body)}-byte body")
        np_dtype = SAFETENSORS_DTYPES[dtype]
        size = int(np.prod(shape, dtype=object)) * np_dtype.itemsize
        if offsets[1] - offsets[0] != size:
            raise _fail(path, f"tensor {key!r}: {offsets[1] - offsets[0]} bytes for shape {shape} {dtype} ({size} needed)")
        spans.append((offsets[0], offsets[1], key))
        tensors[key] = (np_dtype, shape, offsets)
    spans.sort()
    for (_, end, a), (start, _, b) in zip(spans, spans[1:]):
        if start < end:
            raise _fail(path, f"overlapping byte ranges of tensors {a!r} and {b!r}")
    out = {}
    for key, (np_dtype, shape, (start, end)) in tensors.items():
        arr = np.frombuffer(body[start:end], dtype=np_dtype).reshape(shape)  # a view of the file bytes
        out[key] = bf16_to_float32(arr) if header[key]["dtype"] == "BF16" else arr.astype(np_dtype.newbyteorder("="))
    return out, metadata


def _read_capped(path: Path, max_bytes: int) -> bytes:
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise CheckpointError(f"{path}: expected an existing checkpoint file, got a missing path") from None
    if not path.is_file():
        raise CheckpointError(f"{path}: expected a regular file, got something else")
    if size > max_bytes:
        raise CheckpointError(f"{path}: expected at most {max_bytes} bytes, got {size}")
    with open(path, "rb") as f:
        return f.read(max_bytes + 1)


def read_safetensors(path: str | os.PathLike, *, max_bytes: int = MAX_BYTES) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    path = Path(path)
    return parse_safetensors(_read_capped(path, max_bytes), path=str(path))


def read_tensors(path: str | os.PathLike, *, max_bytes: int = MAX_BYTES) -> dict[str, np.ndarray]:
    """Tensors of a ``.safetensors`` file, or of a PyTorch ``.bin``/``.pt``/``.pth`` zip checkpoint
    (read without torch and without executing anything)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return read_safetensors(path, max_bytes=max_bytes)[0]
    if path.suffix in (".bin", ".pt", ".pth"):
        from mpt_ref.io.torch_pickle import read_torch_checkpoint

        return read_torch_checkpoint(path, max_bytes=max_bytes)
    raise CheckpointError(f"{path}: expected a .safetensors or PyTorch .bin/.pt/.pth file, got suffix {path.suffix!r}")


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
