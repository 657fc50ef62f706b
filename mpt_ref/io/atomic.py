"""Atomic writes of one file or of a whole directory. No partial files, no mixed sets, no stray temporaries
after a normal return or an exception; after a SIGKILL at most a hidden ``.<name>.<pid>.*.mpt-ref-tmp``
sibling, which the next write of the same name removes (its pid no longer runs).

* One file: a temp file beside the target, fsync, rename over the target, fsync the directory.
* A directory (an adapter, a vectors folder): every file is written into a hidden staging directory beside
  the target, fsynced, and the staging directory then takes the target's place in one step: ``rename``
  when the target does not exist, an atomic exchange (Linux ``renameat2(RENAME_EXCHANGE)``) when it does,
  after which the old content (now under the staging name) is removed. A reader, or a kill at any moment,
  sees the old set or the new set, never a mixture.

Files and directories get the modes an ordinary ``open``/``mkdir`` would give under the user's umask
(typically 0644 / 0755), not ``mkstemp``'s 0600.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from mpt_ref.errors import InputError, MptRefError, OutputExistsError, WriteError, shown

TMP_SUFFIX = ".mpt-ref-tmp"


def _umask() -> int:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # no way to read it without setting it elsewhere
    os.umask(mask)
    return mask


def _prefix(name: str) -> str:
    """Temporaries of ``name`` are ``.<name>.<pid>.<random>.mpt-ref-tmp``: the pid tells a later write
    whether the writer is still alive."""
    return f".{name}.{os.getpid()}."


def _sweep(parent: Path, name: str) -> None:
    """Remove temporaries a killed writer left for ``name`` (its pid no longer runs)."""
    head = f".{name}."
    try:
        entries = os.listdir(parent)
    except OSError:
        return
    for entry in entries:
        if not (entry.startswith(head) and entry.endswith(TMP_SUFFIX)):
            continue
        pid = entry[len(head):].split(".", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
            continue  # still running: its save is in progress
        except ProcessLookupError:
            pass
        except OSError:  # pragma: no cover - another user's process: leave it
            continue
        path = parent / entry
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some filesystems refuse fsync on directories
        pass
    finally:
        os.close(fd)


def _write_synced(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
    try:
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def _through_link(path: Path) -> Path:
    """A symlink is kept, never replaced: the file it points to is written, and that must be a regular
    file (``/dev/stdout`` -> a pipe or terminal is refused, not turned into a file)."""
    if not path.is_symlink():
        return path
    try:
        st = path.stat()
    except OSError:
        raise OutputExistsError(f"{path}: expected a regular file to write, got a symlink to nothing (not "
                                "replaced)") from None
    if not stat.S_ISREG(st.st_mode):
        raise OutputExistsError(f"{path}: expected a regular file to write, got a symlink to "
                                f"{'a directory' if stat.S_ISDIR(st.st_mode) else 'a device, FIFO or socket'} "
                                "(not replaced; '-' writes to stdout)")
    return Path(os.path.realpath(path))


def check_output_file(path: str | os.PathLike) -> None:
    """What ``atomic_write_bytes(path, overwrite=True)`` would refuse about the path itself, checked before
    any work: a directory, device, FIFO or socket (or a symlink to one), a path under an existing file."""
    _check_target(_through_link(Path(path)))


def _check_target(path: Path) -> None:
    """An output path must be a regular file (or new), under directories (or new ones): never a device,
    FIFO or directory replaced by a rename, never a path under an existing file."""
    if "\0" in str(path):
        raise InputError(f"path: expected no NUL character, got {shown(path)!r}")
    try:
        st = path.lstat()
    except FileNotFoundError:
        st = None
    except OSError as exc:
        if exc.errno == errno.ENOTDIR:
            st = None  # reported below, naming the file in the way
        else:
            raise
    if st is not None and not (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)):
        kind = "a directory" if stat.S_ISDIR(st.st_mode) else "a device, FIFO or socket"
        raise OutputExistsError(f"{path}: expected a regular file to write, got {kind} (not replaced)")
    for parent in path.parents:
        if parent.exists() or parent.is_symlink():
            if not parent.is_dir():
                raise OutputExistsError(f"{path}: expected a directory at {parent}, got an existing file")
            break


@contextmanager
def _writing(path: object) -> Iterator[None]:
    """An OSError while writing (read-only filesystem, full disk, a name over the filesystem's limit) as one
    WriteError naming the path; the old files are intact (nothing was swapped in)."""
    try:
        yield
    except MptRefError:
        raise
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise WriteError(exc.errno, f"{shown(path)}: expected a writable location, got {reason} (nothing was "
                                    "changed)") from None


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, overwrite: bool = False) -> Path:
    """Write ``data`` to ``path`` atomically; refuse an existing file unless ``overwrite``."""
    with _writing(path):
        return _write_bytes(Path(path), data, overwrite)


def _write_bytes(path: Path, data: bytes, overwrite: bool) -> Path:
    if (path.exists() or path.is_symlink()) and not overwrite:
        raise OutputExistsError(f"{path}: expected a new file, got an existing one (pass overwrite=True / --force)")
    path = _through_link(path)
    _check_target(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _sweep(path.parent, path.name)
    fd, tmp = tempfile.mkstemp(prefix=_prefix(path.name), suffix=TMP_SUFFIX, dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):  # pragma: no cover - non-glibc platforms
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):  # pragma: no cover - filesystem without it
        return False
    raise OSError(err, os.strerror(err), str(b))


def atomic_write_directory(directory: str | os.PathLike, files: Mapping[str, bytes], *,
                           keep: Callable[[Path], bool] | None = None,
                           check_existing: Callable[[Path], None] | None = None) -> Path:
    """Make ``directory`` hold ``files`` (relative path -> bytes), all at once.

    If ``directory`` exists, ``check_existing(directory)`` is called first (it raises to refuse), and the
    existing entries for which ``keep(entry)`` is true and that ``files`` does not replace are carried over
    (hard links, so nothing is copied and nothing can be lost); every other entry goes with the old set.
    A directory another writer creates meanwhile is treated as existing (``check_existing`` judges it).
    """
    with _writing(directory):
        return _write_directory(directory, files, keep, check_existing)


def _write_directory(directory: str | os.PathLike, files: Mapping[str, bytes], keep: Callable[[Path], bool] | None,
                     check_existing: Callable[[Path], None] | None) -> Path:
    if "\0" in os.fspath(directory):
        raise InputError(f"path: expected no NUL character, got {shown(os.fspath(directory))!r}")
    directory = Path(os.path.realpath(directory))  # a symlinked target: write where it points, keep the link
    if directory.exists() and not directory.is_dir():
        raise OutputExistsError(f"{directory}: expected a directory, got an existing file")
    exists = directory.is_dir()
    if exists and check_existing is not None:
        check_existing(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    umask = _umask()
    _sweep(directory.parent, directory.name)
    stage = Path(tempfile.mkdtemp(prefix=_prefix(directory.name), suffix=TMP_SUFFIX, dir=directory.parent))
    swapped = False
    try:
        os.chmod(stage, stat.S_IMODE(directory.stat().st_mode) if exists else 0o777 & ~umask)  # keep a mode
        for rel, data in files.items():
            target = stage / rel
            if target.parent != stage:
                target.parent.mkdir(parents=True, exist_ok=True, mode=0o777 & ~umask)
            _write_synced(target, data, 0o666 & ~umask)
        if not exists:
            for sub in _dirs(stage):
                _fsync_dir(sub)
            try:
                os.rename(stage, directory)
                swapped = True
                stage = None  # type: ignore[assignment]
            except OSError as exc:
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
                exists = True  # another writer made the directory meanwhile: judged as an existing one
                if check_existing is not None:
                    check_existing(directory)
        if exists:
            if keep is not None:
                _carry_over(directory, stage, keep, skip={Path(rel).parts[0] for rel in files})
            for sub in _dirs(stage):
                _fsync_dir(sub)
            if _exchange(stage, directory):
                swapped = True
            else:  # pragma: no cover - filesystems without RENAME_EXCHANGE: two renames, a short window
                old = Path(tempfile.mkdtemp(prefix=_prefix(directory.name), suffix=TMP_SUFFIX, dir=directory.parent))
                os.rmdir(old)
                os.rename(directory, old)
                os.rename(stage, directory)
                stage, swapped = old, True
        _fsync_dir(directory.parent)
    finally:
        if stage is not None:
            shutil.rmtree(stage, ignore_errors=True)  # the new set on failure, the old set after a swap
    assert swapped
    return directory


def _dirs(root: Path) -> Iterable[Path]:
    yield root
    for dirpath, dirnames, _ in os.walk(root):
        for d in dirnames:
            yield Path(dirpath) / d


def _carry_over(old: Path, stage: Path, keep: Callable[[Path], bool], skip: set[str]) -> None:
    for entry in old.iterdir():
        if entry.name in skip or not keep(entry):
            continue
        st = entry.lstat()
        if stat.S_ISDIR(st.st_mode):
            raise OutputExistsError(f"{entry}: expected only files beside the adapter files, got a directory "
                                    "(save into a directory of its own)")
        os.link(entry, stage / entry.name, follow_symlinks=False)
