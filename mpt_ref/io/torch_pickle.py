"""Read PyTorch zip checkpoints (``torch.save`` of a dict of tensors, e.g. ``adapter_model.bin``)
without torch and without executing anything.

A zip checkpoint holds ``<root>/data.pkl`` (a pickle of the dict) and ``<root>/data/<key>`` (raw
storages). The pickle is read by an Unpickler whose ``find_class`` answers only the handful of globals
a plain tensor dict needs, each with an inert stand-in: ``torch._utils._rebuild_tensor_v2`` (and
``_rebuild_parameter``), the ``torch.*Storage`` types, ``collections.OrderedDict``. Every other global
(``os.system``, ``builtins.eval``, ...) is refused, so no code in the file can run. Storages are read from
the archive with sizes checked against the declared sizes and a total cap (zip bombs), member names are
checked (absolute paths, ``..``), and each tensor's size/stride/offset is checked against its storage
before it is materialised with NumPy.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from mpt_ref.errors import CheckpointError
from mpt_ref.io.limits import MAX_BYTES, bf16_to_float32

STORAGE_DTYPES = {
    "FloatStorage": np.dtype("<f4"), "DoubleStorage": np.dtype("<f8"), "HalfStorage": np.dtype("<f2"),
    "BFloat16Storage": np.dtype("<u2"), "LongStorage": np.dtype("<i8"), "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"), "CharStorage": np.dtype("i1"), "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}
MAX_PICKLE_BYTES = 16 << 20  # a tensor dict's pickle is tiny; 16 MiB is generous


class _StorageType:
    def __init__(self, name: str) -> None:
        self.name, self.dtype = name, STORAGE_DTYPES[name]


class _Storage:
    def __init__(self, data: np.ndarray, bf16: bool) -> None:
        self.data, self.bf16 = data, bf16


class _Tensor(np.ndarray):
    """Marker subclass so the loader can tell rebuilt tensors from other pickled values."""


def _rebuild_tensor_v2(storage: Any, offset: Any, size: Any, stride: Any, requires_grad: Any = False,
                       backward_hooks: Any = None, metadata: Any = None) -> np.ndarray:
    if not isinstance(storage, _Storage):
        raise CheckpointError(f"tensor: expected a storage reference, got {type(storage).__name__}")
    ints = lambda t: isinstance(t, tuple) and all(type(v) is int for v in t)  # noqa: E731
    if type(offset) is not int or not ints(size) or not ints(stride) or len(size) != len(stride):
        raise CheckpointError(f"tensor: expected int offset, size and stride of equal rank, got {offset!r}, {size!r}, {stride!r}")
    if offset < 0 or any(s < 0 for s in size) or any(s < 0 for s in stride):
        raise CheckpointError(f"tensor: expected non-negative offset/size/stride, got {offset}, {size}, {stride}")
    data = storage.data
    if 0 in size:
        view = np.zeros(size, dtype=data.dtype)
    else:
        last = offset + sum((d - 1) * s for d, s in zip(size, stride))  # the farthest element read
        if last >= data.size:
            raise CheckpointError(f"tensor: size {size} stride {stride} offset {offset} reads past its storage "
                                  f"of {data.size} elements")
        view = np.lib.stride_tricks.as_strided(data[offset:], shape=size, strides=[s * data.itemsize for s in stride])
    arr = bf16_to_float32(view) if storage.bf16 else view.astype(view.dtype.newbyteorder("="))
    return arr.view(_Tensor)


def _rebuild_parameter(data: Any, requires_grad: Any = False, backward_hooks: Any = None) -> np.ndarray:
    if not isinstance(data, _Tensor):
        raise CheckpointError(f"parameter: expected a tensor, got {type(data).__name__}")
    return data


ALLOWED = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("collections", "OrderedDict"): collections.OrderedDict,
    **{("torch", name): _StorageType(name) for name in STORAGE_DTYPES},
}


class _Unpickler(pickle.Unpickler):
    def __init__(self, data: bytes, read_storage: Any) -> None:
        super().__init__(io.BytesIO(data))
        self._read_storage = read_storage

    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED[(module, name)]
        except KeyError:
            raise CheckpointError(
                f"pickle: expected only tensor-rebuilding globals, got {module}.{name} (refused, never called)"
            ) from None

    def persistent_load(self, pid: Any) -> _Storage:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], _StorageType)
                and isinstance(pid[2], str) and type(pid[4]) is int and pid[4] >= 0):
            raise CheckpointError(f"pickle: expected a ('storage', type, key, location, numel) reference, got {str(pid)[:120]}")
        storage_type, key, numel = pid[1], pid[2], pid[4]
        return self._read_storage(key, storage_type, numel)


def _safe_root(names: list[str], path: str) -> str:
    roots = set()
    for name in names:
        p = PurePosixPath(name)
        if p.is_absolute() or ".." in p.parts or "\\" in name or not p.parts:
            raise CheckpointError(f"{path}: expected relative archive member names, got {name!r}")
        roots.add(p.parts[0])
    pkl = [n for n in names if PurePosixPath(n).parts[1:] == ("data.pkl",)]
    if len(roots) != 1 or len(pkl) != 1:
        raise CheckpointError(f"{path}: expected one top-level folder holding data.pkl (a torch zip checkpoint), "
                              f"got members {names[:5]}")
    return roots.pop()


def read_torch_checkpoint(path: str | os.PathLike, *, max_bytes: int = MAX_BYTES) -> dict[str, np.ndarray]:
    """{key: ndarray} of a torch-saved dict of tensors. Legacy (non-zip) pickles are refused."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise CheckpointError(f"{path}: expected an existing checkpoint file, got a missing path") from None
    if size > max_bytes:
        raise CheckpointError(f"{path}: expected at most {max_bytes} bytes, got {size}")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path}: expected a PyTorch zip checkpoint (torch.save since 1.6), got another format")
    try:
        with zipfile.ZipFile(path) as zf:
            return _read_archive(zf, str(path), max_bytes)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, NotImplementedError) as exc:
        raise CheckpointError(f"{path}: expected a readable zip archive, got {type(exc).__name__}: {exc}") from None


def _read_archive(zf: zipfile.ZipFile, path: str, max_bytes: int) -> dict[str, np.ndarray]:
    infos = {i.filename: i for i in zf.infolist()}
    root = _safe_root(list(infos), path)
    total = sum(i.file_size for i in infos.values())
    if total > max_bytes:
        raise CheckpointError(f"{path}: expected at most {max_bytes} uncompressed bytes, got {total} declared")

    def member(name: str, limit: int) -> bytes:
        info = infos.get(f"{root}/{name}")
        if info is None:
            raise CheckpointError(f"{path}: expected archive member {root}/{name}, got none")
        if info.file_size > limit:
            raise CheckpointError(f"{path}: member {name} declares {info.file_size} bytes (limit {limit})")
        with zf.open(info) as f:
            data = f.read(limit + 1)  # never more than the limit, whatever the header claims
        if len(data) != info.file_size:
            raise CheckpointError(f"{path}: member {name} holds {len(data)} bytes, declares {info.file_size}")
        return data

    byteorder = infos.get(f"{root}/byteorder")
    if byteorder is not None and member("byteorder", 16) != b"little":
        raise CheckpointError(f"{path}: expected little-endian storages, got byteorder {member('byteorder', 16)!r}")
    storages: dict[str, _Storage] = {}

    def read_storage(key: str, storage_type: _StorageType, numel: int) -> _Storage:
        if key not in storages:
            if "/" in key or key in ("", ".", ".."):
                raise CheckpointError(f"{path}: expected a plain storage key, got {key!r}")
            nbytes = numel * storage_type.dtype.itemsize
            raw = member(f"data/{key}", min(nbytes, max_bytes))
            if len(raw) != nbytes:
                raise CheckpointError(f"{path}: storage {key} holds {len(raw)} bytes, {numel} x {storage_type.name} declared")
            data = np.frombuffer(raw, dtype=storage_type.dtype)
            storages[key] = _Storage(data, bf16=storage_type.name == "BFloat16Storage")
        return storages[key]

    try:
        obj = _Unpickler(member("data.pkl", MAX_PICKLE_BYTES), read_storage).load()
    except CheckpointError:
        raise
    except Exception as exc:  # malformed pickles raise many types (UnpicklingError, TypeError, ...)
        raise CheckpointError(f"{path}: expected a pickled dict of tensors, got a broken pickle "
                              f"({type(exc).__name__}: {str(exc)[:120]})") from None
    if not isinstance(obj, dict) or not all(isinstance(k, str) and isinstance(v, _Tensor) for k, v in obj.items()):
        raise CheckpointError(f"{path}: expected a dict of str -> tensor, got {type(obj).__name__}")
    return {k: np.asarray(v).view(np.ndarray) for k, v in obj.items()}
