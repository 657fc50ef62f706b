"""A set of files written whole or not at all: staged in a hidden sibling directory, checked there, then
swapped into place in one step (spec/serving.md).

    with StagedSet(target_dir, names=("table.npy", "table.json"), overwrite=force) as stage:
        stage.write("table.npy", data)
        stage.write("table.json", sidecar)
        if check(stage.path).ok:
            stage.commit()      # rename (new target) or atomic exchange (existing target)

Leaving the block without ``commit`` (an exception, a failed check) removes the staging directory and
leaves the target as it was. The guarantees are those of ``atomic_write_directory`` (mpt_ref/io/atomic.py),
whose pieces this reuses: a SIGKILL, a file-size quota (EFBIG) or a full disk (ENOSPC) at any moment leaves
the old set or the new set, never a mixture; what a killed writer staged is a hidden
``.<name>.<pid>.*.mpt-ref-tmp`` sibling that the next write of the same target removes, and since the
target was never touched a retry is not refused as existing. The difference from ``atomic_write_directory``:
the caller can read (check) the staged files before they replace anything.

An existing target is replaced only with ``overwrite`` and only when it holds nothing but entries a set
of this kind writes (``names``): a user's directory with other files is refused, not swept away.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType

from mpt_ref.errors import InputError, OutputExistsError, shown
from mpt_ref.io.atomic import _dirs, _exchange, _fsync_dir, _prefix, _sweep, _umask, _write_synced, TMP_SUFFIX


def _top(rel: str) -> str:
    return Path(rel).parts[0]


class StagedSet:
    """Files staged beside ``target`` (a directory), swapped into its place by ``commit``."""

    def __init__(self, target: str | os.PathLike, *, names: Iterable[str], overwrite: bool = False) -> None:
        if "\0" in os.fspath(target):
            raise InputError(f"path: expected no NUL character, got {shown(os.fspath(target))!r}")
        self.target = Path(os.path.realpath(target))  # a symlinked target: write where it points
        self.names = {_top(n) for n in names}
        if self.target.exists() and not self.target.is_dir():
            raise OutputExistsError(f"{self.target}: expected a directory for this set of files, got an existing file")
        for parent in self.target.parents:
            if parent.exists():
                if not parent.is_dir():
                    raise OutputExistsError(f"{self.target}: expected a directory at {parent}, got an existing file")
                break
        self.exists = self.target.is_dir()
        if self.exists:
            self._check_existing(overwrite)
        self.target.parent.mkdir(parents=True, exist_ok=True)
        self._umask = _umask()
        _sweep(self.target.parent, self.target.name)
        self.path: Path | None = Path(tempfile.mkdtemp(prefix=_prefix(self.target.name), suffix=TMP_SUFFIX,
                                                       dir=self.target.parent))
        os.chmod(self.path, stat.S_IMODE(self.target.stat().st_mode) if self.exists else 0o777 & ~self._umask)
        self.written: list[str] = []
        self.committed = False

    def _check_existing(self, overwrite: bool) -> None:
        entries = sorted(os.listdir(self.target))
        if not entries:
            return  # an empty directory: nothing to lose
        if not overwrite:
            raise OutputExistsError(f"{self.target}: expected a new directory, got an existing one holding "
                                    f"{entries[:8]} (pass overwrite=True / --force to replace the set)")
        foreign = [e for e in entries if e not in self.names]
        if foreign:
            raise OutputExistsError(f"{self.target}: expected only the files of a previous export "
                                    f"{sorted(self.names)} to replace, got other entries {foreign[:8]} "
                                    "(not removed; write into a directory of its own)")

    def write(self, rel: str, data: bytes) -> Path:
        """Stage ``data`` as ``rel`` (a relative path inside the set), fsynced."""
        if self.path is None:
            raise InputError("stage: expected an open staged set, got one already committed or discarded")
        rel_path = Path(rel)
        if rel_path.is_absolute() or ".." in rel_path.parts or _top(rel) not in self.names:
            raise InputError(f"rel: expected a relative path under one of {sorted(self.names)}, got {rel!r}")
        target = self.path / rel_path
        if target.parent != self.path:
            target.parent.mkdir(parents=True, exist_ok=True, mode=0o777 & ~self._umask)
        _write_synced(target, data, 0o666 & ~self._umask)
        self.written.append(rel)
        return target

    def add_file(self, rel: str, source: str | os.PathLike) -> Path:
        """Stage an existing file as ``rel``: a hard link where the filesystem allows (nothing copied, the
        source untouched), else a copy, fsynced."""
        target = self.write(rel, b"")
        target.unlink()
        try:
            os.link(source, target)
        except OSError:
            shutil.copyfile(source, target)
            os.chmod(target, 0o666 & ~self._umask)
            fd = os.open(target, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        return target

    def commit(self) -> Path:
        """Swap the staged set into the target's place; the old set (if any) is removed afterwards."""
        if self.path is None:
            raise InputError("stage: expected an open staged set, got one already committed or discarded")
        for sub in _dirs(self.path):
            _fsync_dir(sub)
        if self.exists:
            if not _exchange(self.path, self.target):  # pragma: no cover - filesystems without RENAME_EXCHANGE
                old = Path(tempfile.mkdtemp(prefix=_prefix(self.target.name), suffix=TMP_SUFFIX,
                                            dir=self.target.parent))
                os.rmdir(old)
                os.rename(self.target, old)
                os.rename(self.path, self.target)
                self.path = old
            # self.path now holds the old set
        else:
            os.rename(self.path, self.target)
            self.path = None
        _fsync_dir(self.target.parent)
        self.committed = True
        self.discard()
        return self.target

    def discard(self) -> None:
        """Remove the staging directory (the new set before a commit, the old one after)."""
        if self.path is not None:
            shutil.rmtree(self.path, ignore_errors=True)
            self.path = None

    def __enter__(self) -> StagedSet:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.discard()
