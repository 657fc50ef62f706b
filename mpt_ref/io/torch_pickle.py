"""Read PyTorch zip checkpoints (``torch.save`` of a dict of tensors, e.g. ``adapter_model.bin``)
without torch and without executing anything.

A zip checkpoint holds ``<root>/data.pkl`` (a pickle of the dict), ``<root>/version`` and
``<root>/data/<key>`` (raw storages). The pickle is read by a small interpreter (the pure-Python
``pickle._Unpickler`` with its opcode table cut down to what a tensor dict needs) whose globals are
inert stand-ins made fresh for every load, so nothing one file does can reach the next load:
``torch._utils._rebuild_tensor_v2`` (and ``_rebuild_parameter``), the ``torch.*Storage`` types,
``collections.OrderedDict``. Every other global is refused, and so are BUILD/NEWOBJ on anything but an
``OrderedDict``, REDUCE on anything but the rebuild functions and ``OrderedDict()``, and dict keys that
are not strings (hashing an attacker's nested tuple can take exponential time). Error messages describe
attacker values with ``reprlib`` or by type name only.

The archive is checked before the pickle runs: one top-level folder, relative member names, no duplicate
names, stored (uncompressed, unencrypted) members only, declared sizes within the file. Every storage is
read at exactly its declared size, and every tensor must lie inside its storage with no more elements
than it (stride 0 and overlapping views are refused: torch returns views, this reader copies), so the
memory used is bounded by the storages' own bytes.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import re
import struct
import zipfile
from pathlib import Path, PurePosixPath
from struct import error as struct_error
from typing import Any

import numpy as np

from mpt_ref.errors import CheckpointError, shown
from mpt_ref.io.limits import (
    MAX_BYTES,
    bf16_to_float32,
    exc_text,
    read_regular_file,
    short,
)

STORAGE_DTYPES = {
    "FloatStorage": np.dtype("<f4"), "DoubleStorage": np.dtype("<f8"), "HalfStorage": np.dtype("<f2"),
    "BFloat16Storage": np.dtype("<u2"), "LongStorage": np.dtype("<i8"), "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"), "CharStorage": np.dtype("i1"), "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}
MAX_PICKLE_BYTES = 16 << 20  # a tensor dict's pickle is tiny; 16 MiB is generous
MAX_RANK = 64


class _Frozen:
    """Stand-ins refuse attribute writes and BUILD, so a pickle cannot alter them."""

    __slots__ = ()

    def __setattr__(self, name: str, value: Any) -> None:
        raise CheckpointError(f"pickle: expected no attribute writes on {type(self).__name__}, got {shown(name, 40)!r}")

    def __setstate__(self, state: Any) -> None:
        raise CheckpointError(f"pickle: expected BUILD only on an OrderedDict, got {type(self).__name__}")


class _StorageType(_Frozen):
    __slots__ = ("dtype", "name")

    def __init__(self, name: str) -> None:
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "dtype", STORAGE_DTYPES[name])


class _Storage(_Frozen):
    __slots__ = ("bf16", "data")

    def __init__(self, data: np.ndarray, bf16: bool) -> None:
        object.__setattr__(self, "data", data)
        object.__setattr__(self, "bf16", bf16)


class _Tensor:
    """A rebuilt tensor (not yet materialised: the copies are made once the pickle is accepted)."""

    __slots__ = ("offset", "size", "storage", "stride")

    def __init__(self, storage: _Storage, offset: int, size: tuple[int, ...], stride: tuple[int, ...]) -> None:
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

    def __setstate__(self, state: Any) -> None:
        raise CheckpointError("pickle: expected BUILD only on an OrderedDict, got a tensor (torch's legacy set_)")

    @property
    def numel(self) -> int:
        n = 1
        for s in self.size:
            n *= s
        return n

    def materialise(self) -> np.ndarray:
        data = self.storage.data
        if self.numel == 0:
            view = np.zeros(self.size, dtype=data.dtype)
        else:
            view = np.lib.stride_tricks.as_strided(data[self.offset:], shape=self.size,
                                                   strides=[s * data.itemsize for s in self.stride])
        return bf16_to_float32(view) if self.storage.bf16 else view.astype(view.dtype.newbyteorder("="))


def _int_tuple(value: Any) -> bool:
    return type(value) is tuple and len(value) <= MAX_RANK and all(type(v) is int for v in value)


def _rebuild_tensor_v2(storage: Any, offset: Any, size: Any, stride: Any, requires_grad: Any,
                       backward_hooks: Any, metadata: Any = None) -> _Tensor:
    if not isinstance(storage, _Storage):
        raise CheckpointError(f"tensor: expected a storage reference, got {type(storage).__name__}")
    if type(offset) is not int or not _int_tuple(size) or not _int_tuple(stride) or len(size) != len(stride):
        raise CheckpointError(f"tensor: expected int offset, size and stride of equal rank <= {MAX_RANK}, got "
                              f"{short(offset)}, {short(size)}, {short(stride)}")
    if offset < 0 or any(s < 0 for s in size) or any(s < 0 for s in stride):
        raise CheckpointError(f"tensor: expected non-negative offset/size/stride, got {short(offset)}, "
                              f"{short(size)}, {short(stride)}")
    _check_flags(storage, requires_grad, backward_hooks)
    if not (metadata is None or (type(metadata) in (dict, collections.OrderedDict) and not metadata)):
        raise CheckpointError(f"tensor: expected no tensor metadata (conj/neg bits change values), got "
                              f"{type(metadata).__name__}")
    tensor = _Tensor(storage, offset, size, stride)
    elements = storage.data.size
    if tensor.numel:
        last = offset + sum((d - 1) * s for d, s in zip(size, stride))  # the farthest element read
        if last >= elements:
            raise CheckpointError(f"tensor: size {short(size)} stride {short(stride)} offset {offset} reads past its "
                                  f"storage of {elements} elements")
        if tensor.numel > elements:
            raise CheckpointError(f"tensor: expected at most the {elements} elements of its storage, got size "
                                  f"{short(size)} with stride {short(stride)} (stride 0 or overlapping views: "
                                  "mpt-ref copies, it does not return views)")
    return tensor


def _check_flags(storage: _Storage, requires_grad: Any, backward_hooks: Any) -> None:
    if type(requires_grad) is not bool:
        raise CheckpointError(f"tensor: expected a bool requires_grad, got {type(requires_grad).__name__}")
    if requires_grad and storage.data.dtype.kind not in "f" and not storage.bf16:
        raise CheckpointError(f"tensor: expected requires_grad only on floating tensors, got {storage.data.dtype}")
    if not (type(backward_hooks) is collections.OrderedDict and not backward_hooks):
        raise CheckpointError(f"tensor: expected no backward hooks (an empty OrderedDict), got "
                              f"{type(backward_hooks).__name__}")


def _rebuild_parameter(data: Any, requires_grad: Any, backward_hooks: Any) -> _Tensor:
    if not isinstance(data, _Tensor):
        raise CheckpointError(f"parameter: expected a tensor, got {type(data).__name__}")
    _check_flags(data.storage, requires_grad, backward_hooks)
    return data


_P = pickle  # opcode names
_OPS = {  # torch.load(weights_only=True)'s opcode table, less EMPTY_SET (sets hash attacker values)
    _P.PROTO, _P.STOP, _P.MARK, _P.NONE, _P.NEWTRUE, _P.NEWFALSE, _P.BININT, _P.BININT1, _P.BININT2, _P.LONG1,
    _P.BINFLOAT, _P.BINUNICODE, _P.SHORT_BINSTRING, _P.EMPTY_TUPLE, _P.TUPLE, _P.TUPLE1, _P.TUPLE2, _P.TUPLE3,
    _P.EMPTY_LIST, _P.APPEND, _P.APPENDS, _P.EMPTY_DICT, _P.SETITEM, _P.SETITEMS, _P.BINPUT, _P.LONG_BINPUT,
    _P.BINGET, _P.LONG_BINGET, _P.GLOBAL, _P.REDUCE, _P.BUILD, _P.NEWOBJ, _P.BINPERSID,
}
_OPNAMES = {op.code.encode("latin-1")[0]: op.name for op in __import__("pickletools").opcodes}


class _Dispatch(dict):
    def __missing__(self, key: int) -> Any:
        raise CheckpointError(f"pickle: expected only tensor-dict opcodes, got {_OPNAMES.get(key, hex(key))}")


class _Unpickler(pickle._Unpickler):  # type: ignore[name-defined]
    """Opcode-restricted interpreter. Everything it can build: None/bool/int/float/str, tuples, lists,
    dicts with str keys, fresh OrderedDicts, storage references and tensors."""

    dispatch = _Dispatch({k: v for k, v in pickle._Unpickler.dispatch.items()  # type: ignore[attr-defined]
                          if bytes([k]) in _OPS})

    def __init__(self, data: bytes, read_storage: Any) -> None:
        super().__init__(io.BytesIO(data), encoding="utf-8")  # torch decodes SHORT_BINSTRING as UTF-8
        self._read_storage = read_storage
        # fresh stand-ins for every load: no object survives from one file to the next
        self._globals: dict[tuple[str, str], Any] = {
            ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
            ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
            ("collections", "OrderedDict"): collections.OrderedDict,
            **{("torch", name): _StorageType(name) for name in STORAGE_DTYPES},
        }

    def find_class(self, module: Any, name: Any) -> Any:
        key = (module, name)
        if type(module) is str and type(name) is str and key in self._globals:
            return self._globals[key]
        raise CheckpointError(f"pickle: expected only tensor-rebuilding globals, got {shown(short(module), 80)}."
                              f"{shown(short(name), 80)} (refused, never called)".replace("'", ""))

    def persistent_load(self, pid: Any) -> _Storage:
        if not (type(pid) is tuple and len(pid) == 5 and type(pid[0]) is str and pid[0] == "storage"
                and isinstance(pid[1], _StorageType) and type(pid[2]) is str and type(pid[3]) is str
                and type(pid[4]) is int and pid[4] >= 0):
            raise CheckpointError(f"pickle: expected a ('storage', type, key, location, numel) reference, got {short(pid)}")
        return self._read_storage(pid[2], pid[1], pid[4])

    def load_proto(self) -> None:  # torch accepts any protocol number (with a warning)
        self.proto = self.read(1)[0]

    dispatch[_P.PROTO[0]] = load_proto

    # the opcodes that call or mutate, narrowed to what a tensor dict needs
    def load_reduce(self) -> None:
        args = self.stack.pop()
        func = self.stack[-1]
        if type(args) is not tuple:
            raise CheckpointError(f"pickle: expected a tuple of REDUCE arguments, got {type(args).__name__}")
        if func is collections.OrderedDict:
            if args:
                raise CheckpointError("pickle: expected OrderedDict() without arguments, got arguments")
            self.stack[-1] = collections.OrderedDict()
        elif func is _rebuild_tensor_v2 or func is _rebuild_parameter:
            if len(args) > 7:
                raise CheckpointError(f"pickle: expected at most 7 arguments to a tensor rebuild, got {len(args)}")
            self.stack[-1] = func(*args)
        else:
            raise CheckpointError(f"pickle: expected REDUCE of a tensor rebuild or OrderedDict, got {type(func).__name__}")

    dispatch[_P.REDUCE[0]] = load_reduce

    def load_newobj(self) -> None:
        args = self.stack.pop()
        cls = self.stack.pop()
        if cls is not collections.OrderedDict or args != ():
            raise CheckpointError(f"pickle: expected NEWOBJ only of OrderedDict(), got {type(cls).__name__}")
        self.append(collections.OrderedDict())

    dispatch[_P.NEWOBJ[0]] = load_newobj

    def load_build(self) -> None:
        state = self.stack.pop()
        inst = self.stack[-1]
        if type(inst) is not collections.OrderedDict:
            raise CheckpointError(f"pickle: expected BUILD only on an OrderedDict, got {type(inst).__name__}")
        if type(state) is not dict or not all(type(k) is str for k in state):
            raise CheckpointError(f"pickle: expected an attribute dict for BUILD, got {type(state).__name__}")
        # torch's state_dict() carries ``_metadata`` this way; it holds nothing a tensor needs: dropped

    dispatch[_P.BUILD[0]] = load_build

    def _set(self, target: Any, items: list[Any]) -> None:
        if type(target) not in (dict, collections.OrderedDict):
            raise CheckpointError(f"pickle: expected SETITEM on a dict, got {type(target).__name__}")
        for i in range(0, len(items) - 1, 2):
            if type(items[i]) is not str:
                raise CheckpointError(f"pickle: expected str dict keys, got {type(items[i]).__name__}")
            target[items[i]] = items[i + 1]
        if len(items) % 2:
            raise CheckpointError("pickle: expected key/value pairs for SETITEMS, got an odd count")

    def load_setitem(self) -> None:
        value = self.stack.pop()
        key = self.stack.pop()
        self._set(self.stack[-1], [key, value])

    dispatch[_P.SETITEM[0]] = load_setitem

    def load_setitems(self) -> None:
        items = self.pop_mark()
        self._set(self.stack[-1], items)

    dispatch[_P.SETITEMS[0]] = load_setitems

    def load_append(self) -> None:
        value = self.stack.pop()
        if type(self.stack[-1]) is not list:
            raise CheckpointError(f"pickle: expected APPEND on a list, got {type(self.stack[-1]).__name__}")
        self.stack[-1].append(value)

    dispatch[_P.APPEND[0]] = load_append

    def load_appends(self) -> None:
        items = self.pop_mark()
        if type(self.stack[-1]) is not list:
            raise CheckpointError(f"pickle: expected APPENDS on a list, got {type(self.stack[-1]).__name__}")
        self.stack[-1].extend(items)

    dispatch[_P.APPENDS[0]] = load_appends


def _check_zip_structure(data: bytes, zf: zipfile.ZipFile, path: str) -> None:
    """What torch's zip reader (miniz) refuses and Python's zipfile tolerates: data before the archive,
    multi-disk fields, entry counts that disagree, a stored member whose sizes differ, a local header that
    is missing or points past the end of the file."""
    bad = lambda what: CheckpointError(f"{path}: expected a well-formed zip archive as torch.load reads it, got {what}")
    eocd = data.rfind(b"PK\x05\x06", max(0, len(data) - (1 << 16) - 22))
    if eocd < 0 or len(data) - eocd < 22:
        raise bad("no end-of-central-directory record")
    disk, cd_disk, n_here, n_total, cd_size, cd_offset = struct.unpack_from("<HHHHII", data, eocd + 4)
    if (disk, cd_disk) != (0, 0) and (disk, cd_disk) != (0xFFFF, 0xFFFF):
        raise bad(f"multi-disk fields ({disk}, {cd_disk})")
    if n_here != n_total:
        raise bad(f"{n_here} entries on this disk of {n_total}")
    loc = eocd - 20
    if loc >= 0 and data[loc:loc + 4] == b"PK\x06\x07":
        z_disk, z_offset, z_disks = struct.unpack_from("<IQI", data, loc + 4)
        if z_disk != 0 or z_disks != 1 or data[z_offset:z_offset + 4] != b"PK\x06\x06":
            raise bad("an inconsistent zip64 end-of-central-directory locator")
        (size64, _, _, disk64, cd_disk64, n_here64, n_total64, cd_size, cd_offset) = struct.unpack_from(
            "<QHHIIQQQQ", data, z_offset + 4)
        if size64 < 44 or (disk64, cd_disk64) != (0, 0) or n_here64 != n_total64:
            raise bad("multi-disk zip64 fields")
        n_total = n_total64
    if zf.start_dir != cd_offset or cd_offset + cd_size > len(data) or cd_size < 46 * n_total:
        raise bad("a central directory that is not where the end record says (data before the archive?)")
    if len(zf.infolist()) != n_total:
        raise bad(f"{len(zf.infolist())} central entries, {n_total} declared")
    at, end = cd_offset, cd_offset + cd_size  # the central entries must tile the central directory exactly
    for _ in range(n_total):
        if at + 46 > end or data[at:at + 4] != b"PK\x01\x02":
            raise bad("a central directory entry out of place")
        n, e, c = struct.unpack_from("<HHH", data, at + 28)
        at += 46 + n + e + c
    if at != end:
        raise bad(f"central directory entries covering {at - cd_offset} of its {cd_size} bytes")
    for info in zf.infolist():
        if info.external_attr & 0x10 or info.filename.endswith("/"):  # miniz treats it as a directory
            raise bad(f"member {shown(info.filename)!r} marked as a directory")
        if info.volume != 0:
            raise bad(f"member {shown(info.filename)!r} on disk {info.volume}")
        if info.compress_type == zipfile.ZIP_STORED and info.compress_size != info.file_size:
            raise bad(f"member {shown(info.filename)!r} with sizes {info.compress_size} != {info.file_size}")
        at = info.header_offset
        if data[at:at + 4] != b"PK\x03\x04" or at + 30 > len(data):
            raise bad(f"no local header for member {shown(info.filename)!r}")
        name_len, extra_len = struct.unpack_from("<HH", data, at + 26)
        raw_name = info.orig_filename.encode("utf-8" if info.flag_bits & 0x800 else "cp437")
        if data[at + 30 : at + 30 + name_len] != raw_name:
            raise bad(f"a local header name that differs from the central one for {shown(info.filename)!r}")
        if at + 30 + name_len + extra_len + info.compress_size > len(data):
            raise bad(f"member {shown(info.filename)!r} reaching past the end of the file")
        pos, extra = 0, data[at + 30 + name_len : at + 30 + name_len + extra_len]
        while pos + 4 <= len(extra):  # the local extra fields must tile their area exactly
            pos += 4 + struct.unpack_from("<H", extra, pos + 2)[0]
        if pos != len(extra):
            raise bad(f"a malformed local extra field for member {shown(info.filename)!r}")


def _archive_root(infos: list[zipfile.ZipInfo], path: str) -> str:
    names = [i.filename for i in infos]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise CheckpointError(f"{path}: expected unique archive member names, got {shown(dup)!r} twice "
                              "(readers disagree on which copy counts)")
    roots = set()
    for info in infos:
        name = info.filename
        if not info.flag_bits & 0x800:  # zipfile read the name as cp437; torch reads every name as UTF-8
            try:
                name.encode("cp437").decode("utf-8")
            except UnicodeError:
                raise CheckpointError(f"{path}: expected UTF-8 archive member names, got {shown(name)!r}") from None
        p = PurePosixPath(name)
        if p.is_absolute() or ".." in p.parts or "\\" in name or len(p.parts) < 2:
            raise CheckpointError(f"{path}: expected relative archive member names inside one folder, got {shown(name)!r}")
        if info.flag_bits & 0x2041:  # encrypted, strong encryption, masked local headers (torch refuses all)
            raise CheckpointError(f"{path}: expected unencrypted archive members, got {shown(name)!r} encrypted")
        if info.compress_type != zipfile.ZIP_STORED:
            raise CheckpointError(f"{path}: expected stored (uncompressed) members as torch.save writes, got "
                                  f"{shown(name)!r} with compression method {info.compress_type}")
        roots.add(p.parts[0])
    if len(roots) != 1:
        raise CheckpointError(f"{path}: expected one top-level folder holding data.pkl (a torch zip checkpoint), "
                              f"got {len(roots)} folders")
    return roots.pop()


def read_torch_checkpoint(path: str | os.PathLike, *, max_bytes: int = MAX_BYTES) -> dict[str, np.ndarray]:
    """{key: ndarray} of a torch-saved dict of tensors. Legacy (non-zip) pickles are refused."""
    path = Path(path)
    data = read_regular_file(path, max_bytes, CheckpointError, "checkpoint file")
    return parse_torch_checkpoint(data, path=str(path), max_bytes=max_bytes)


def parse_torch_checkpoint(data: bytes, *, path: str = "<bytes>", max_bytes: int = MAX_BYTES,
                           stored_dtypes: dict[str, str] | None = None) -> dict[str, np.ndarray]:
    """The tensors of the bytes of a torch zip checkpoint; every failure is a CheckpointError. A dict
    passed as ``stored_dtypes`` receives each tensor's dtype as stored (``bfloat16`` is widened to
    float32 in the result)."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            _check_zip_structure(data, zf, path)
            return _read_archive(zf, path, max_bytes, stored_dtypes)
    except CheckpointError as exc:  # the pickle's refusals name the tensor or opcode: add the file
        text = str(exc)
        if text.startswith(f"{path}:"):
            raise
        raise CheckpointError(f"{path}: {text}") from None
    except RecursionError:
        raise CheckpointError(f"{path}: expected a pickled dict of tensors, got a structure nested too deep") from None
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, NotImplementedError, ValueError, TypeError,
            KeyError, IndexError, AttributeError, OverflowError, UnicodeError, RuntimeError, pickle.UnpicklingError,
            MemoryError, struct_error) as exc:
        raise CheckpointError(f"{path}: expected a PyTorch zip checkpoint (torch.save since 1.6), got an unreadable "
                              f"one ({exc_text(exc)})") from None


def _read_archive(zf: zipfile.ZipFile, path: str, max_bytes: int,
                  stored_dtypes: dict[str, str] | None = None) -> dict[str, np.ndarray]:
    infos_list = zf.infolist()
    root = _archive_root(infos_list, path)
    infos = {i.filename: i for i in infos_list}
    total = sum(i.file_size for i in infos_list)
    if total > max_bytes:
        raise CheckpointError(f"{path}: expected at most {max_bytes} uncompressed bytes, got {total} declared")

    def member(name: str, limit: int) -> bytes:
        info = infos.get(f"{root}/{name}")
        if info is None:
            raise CheckpointError(f"{path}: expected archive member {shown(root)}/{shown(name)}, got none")
        if info.file_size > limit:
            raise CheckpointError(f"{path}: member {shown(name)} declares {info.file_size} bytes (limit {limit})")
        with zf.open(info) as f:
            raw = f.read(limit + 1)  # never more than the limit, whatever the header claims
        if len(raw) != info.file_size:
            raise CheckpointError(f"{path}: member {shown(name)} holds {len(raw)} bytes, declares {info.file_size}")
        return raw

    if f"{root}/data.pkl" not in infos:
        raise CheckpointError(f"{path}: expected {shown(root)}/data.pkl (a torch zip checkpoint), got none")
    names = [f"{root}/version", f"{root}/.data/version"]
    version = next((n for n in names if n in infos), None)
    if version is None:
        raise CheckpointError(f"{path}: expected a {shown(root)}/version record (torch.load requires one), got none")
    text = member(version[len(root) + 1:], 32)
    if not re.fullmatch(rb"[0-9]{1,3}\n?", text) or not 1 <= int(text) <= 20:
        raise CheckpointError(f"{path}: expected a format version 1..20, got {shown(text, 32)!r}")
    if f"{root}/.storage_alignment" in infos:  # torch.load parses it with int()
        try:
            int(member(".storage_alignment", 32))
        except ValueError:
            raise CheckpointError(f"{path}: expected an integer .storage_alignment record, got another value") from None
    if f"{root}/.data/serialization_id" in infos:  # torch.load decodes it as UTF-8
        try:
            member(".data/serialization_id", 1024).decode("utf-8")
        except UnicodeDecodeError:
            raise CheckpointError(f"{path}: expected a UTF-8 .data/serialization_id record, got other bytes") from None
    if f"{root}/byteorder" in infos:
        order = member("byteorder", 16)
        if order != b"little":
            raise CheckpointError(f"{path}: expected little-endian storages, got byteorder {order!r}")
    storages: dict[str, _Storage] = {}

    def read_storage(key: str, storage_type: _StorageType, numel: int) -> _Storage:
        if key not in storages:
            if "/" in key or key in ("", ".", ".."):
                raise CheckpointError(f"{path}: expected a plain storage key, got {shown(key)!r}")
            nbytes = numel * storage_type.dtype.itemsize
            raw = member(f"data/{key}", min(nbytes, max_bytes))
            if len(raw) != nbytes:
                raise CheckpointError(f"{path}: storage {shown(key)} holds {len(raw)} bytes, {numel} x "
                                      f"{storage_type.name} declared")
            storages[key] = _Storage(np.frombuffer(raw, dtype=storage_type.dtype),
                                     bf16=storage_type.name == "BFloat16Storage")
        return storages[key]

    obj = _Unpickler(member("data.pkl", MAX_PICKLE_BYTES), read_storage).load()
    if type(obj) not in (dict, collections.OrderedDict) or not all(
            type(k) is str and type(v) is _Tensor for k, v in obj.items()):
        raise CheckpointError(f"{path}: expected a dict of str -> tensor, got {type(obj).__name__}")
    budget = sum(s.data.size for s in storages.values())
    if sum(t.numel for t in obj.values()) > budget:
        raise CheckpointError(f"{path}: expected tensors holding at most the {budget} elements of their storages, got "
                              f"{sum(t.numel for t in obj.values())} (shared storages: mpt-ref copies, it does not "
                              "return views)")
    if stored_dtypes is not None:
        stored_dtypes.update({k: "bfloat16" if v.storage.bf16 else v.storage.data.dtype.newbyteorder("=").name
                              for k, v in obj.items()})
    return {k: v.materialise() for k, v in obj.items()}
