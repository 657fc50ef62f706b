"""A port in any language, run as a process (spec/conform-protocol.md), as an engine port.

Persistent mode (default): the command is started once; mpt-ref writes one case directory path per line
on its stdin and reads one reply line from its stdout: ``ok`` (outputs written into the directory) or
``error <message>``. Per-case mode: ``CMD CASE_DIR`` is run once per case; exit status 0 means ok.

Each call has a timeout. A port that dies (EOF, a signal, a non-zero exit) is a ``crash``, one that
does not answer in time a ``timeout`` (it is killed and restarted for the next case), an answer other
than ``ok`` / ``error ...`` a ``protocol`` failure; each reported with the tail of the port's stderr.
"""

from __future__ import annotations

import os
import select
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import IO

from mpt_ref.conformance.case_dir import case_files, read_results
from mpt_ref.errors import InputError, shown
from mpt_ref.kind import Kind
from mpt_ref.testing.engine import PortFailure, PortResult, PrecisionClass
from mpt_ref.testing.strategies import Case

MAX_REPLY = 64 * 1024   # bytes of one reply line
STDERR_TAIL = 1500      # characters of the port's stderr quoted in a failure


def parse_command(command: str) -> list[str]:
    try:
        argv = shlex.split(command)
    except ValueError as exc:
        raise InputError(f"--exec: expected a command line, got {shown(command)!r} ({exc})") from None
    if not argv:
        raise InputError("--exec: expected a command line, got an empty one")
    return argv


class ExecPort:
    """``port(kind, case, gradients)`` for the engine. Use as a context manager (stops the process and
    removes the case directories)."""

    def __init__(self, command: str, pc: PrecisionClass, *, persistent: bool = True, timeout: float = 30.0,
                 workdir: str | Path | None = None, keep: bool = False) -> None:
        self.argv = parse_command(command)
        self.command, self.pc, self.persistent, self.timeout, self.keep = command, pc, persistent, timeout, keep
        self._own_root = workdir is None
        self.root = Path(tempfile.mkdtemp(prefix="mpt-ref-conform-")) if workdir is None else Path(workdir)
        self.root.mkdir(parents=True, exist_ok=True)
        self.calls = 0
        self.cases = 0
        self._dir: Path | None = None      # the current case directory, renamed for each new case
        self._case: Case | None = None     # the case written there (held, so its identity stays unique)
        self._gradients = False
        self.proc: subprocess.Popen | None = None
        self._stderr: IO[bytes] | None = None
        self._buf = b""

    # process --------------------------------------------------------------------------------------
    def _start(self) -> subprocess.Popen:
        if self._stderr is not None:
            self._stderr.close()
        self._stderr = tempfile.TemporaryFile(dir=self.root)
        try:
            proc = subprocess.Popen(self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr,
                                    start_new_session=True)
        except OSError as exc:
            raise InputError(f"--exec: cannot start {shown(self.argv[0])!r}: {exc.strerror or exc}") from None
        self._buf = b""
        return proc

    def stderr_tail(self) -> str:
        if self._stderr is None:
            return ""
        self._stderr.flush()
        size = self._stderr.seek(0, os.SEEK_END)
        self._stderr.seek(max(0, size - STDERR_TAIL))
        text = self._stderr.read().decode("utf-8", "replace").strip()
        return f"; stderr: ...{text[-STDERR_TAIL:]}" if text else ""

    def _kill(self) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the port and anything it started
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                try:
                    pipe.close()
                except OSError:
                    pass
        self.proc = None

    def _readline(self, deadline: float) -> bytes | None:
        """One reply line, or None on EOF; PortFailure("timeout") past the deadline."""
        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise PortFailure("timeout", f"no reply within {self.timeout:g} s")
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                return None
            self._buf += chunk
            if len(self._buf) > MAX_REPLY and b"\n" not in self._buf:
                raise PortFailure("protocol", f"a reply line longer than {MAX_REPLY} bytes (print logs to stderr)")
        line, self._buf = self._buf.split(b"\n", 1)
        return line

    def _died(self, what: str) -> PortFailure:
        assert self.proc is not None
        try:
            rc = self.proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            rc = None
        tail = self.stderr_tail()
        self._kill()
        status = ("still running" if rc is None else f"killed by signal {-rc}" if rc < 0 else f"exit status {rc}")
        return PortFailure("crash", f"the port {what} ({status}){tail}")

    def _ask(self, case_dir: Path) -> None:
        if self.proc is None or self.proc.poll() is not None:
            self.proc = self._start()
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(os.fsencode(case_dir) + b"\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            raise self._died("closed its stdin") from None
        try:
            line = self._readline(time.monotonic() + self.timeout)
        except PortFailure as f:
            if f.what == "timeout":
                f = PortFailure("timeout", f.message + self.stderr_tail())
            self._kill()  # restarted for the next case
            raise f from None
        if line is None:
            raise self._died("exited without replying")
        try:
            self._reply(line.decode("utf-8", "replace").rstrip("\r"))
        except PortFailure as f:
            if f.what == "protocol":  # replies may be out of step now: the next case starts a fresh process
                self._kill()
            raise

    def _reply(self, text: str) -> None:
        if text == "ok":
            return
        if text == "error" or text.startswith("error "):
            raise PortFailure("error", f"the port reported: {shown(text[6:].strip()) or '(no message)'}")
        raise PortFailure("protocol", f"expected a reply 'ok' or 'error <message>', got {shown(text, 120)!r} "
                                      "(a port prints its logs to stderr, not stdout)")

    def _run_once(self, case_dir: Path) -> None:
        if self._stderr is not None:
            self._stderr.close()
        self._stderr = tempfile.TemporaryFile(dir=self.root)
        try:
            proc = subprocess.Popen([*self.argv, os.fspath(case_dir)], stdin=subprocess.DEVNULL,
                                    stdout=self._stderr, stderr=self._stderr, start_new_session=True)
        except OSError as exc:
            raise InputError(f"--exec: cannot start {shown(self.argv[0])!r}: {exc.strerror or exc}") from None
        try:
            rc = proc.wait(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise PortFailure("timeout", f"did not finish within {self.timeout:g} s{self.stderr_tail()}") from None
        if rc < 0:
            raise PortFailure("crash", f"the port was killed by signal {-rc}{self.stderr_tail()}")
        if rc != 0:
            raise PortFailure("error", f"the port exited with status {rc}{self.stderr_tail()}")

    # the engine's port ---------------------------------------------------------------------------------
    def _case_dir(self, kind: Kind, case: Case, gradients: bool) -> Path:
        """The directory of ``case``: written once per case (a repeated call finds the same inputs, its
        previous outputs removed). Directories are renamed and emptied rather than removed and created
        (much cheaper on common file systems); each new case gets a new name."""
        if self._dir is not None and self._case is case and self._gradients == gradients:
            for name in ("output.safetensors", "grads.safetensors"):
                (self._dir / name).unlink(missing_ok=True)
            return self._dir
        self.cases += 1
        path = self.root / f"case-{self.cases:06d}"
        if self._dir is None or self.keep:
            path.mkdir()
        else:
            os.rename(self._dir, path)
            for entry in list(path.iterdir()):
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
        for fname, data in case_files(f"case-{self.cases}", kind, case, self.pc, gradients).items():
            (path / fname).write_bytes(data)
        self._dir, self._case, self._gradients = path, case, gradients
        return path

    def __call__(self, kind: Kind, case: Case, gradients: bool) -> PortResult:
        self.calls += 1
        case_dir = self._case_dir(kind, case, gradients)
        (self._ask if self.persistent else self._run_once)(case_dir)
        return read_results(case_dir, gradients)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.close()  # EOF: the port's loop ends
                self.proc.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                pass
        self._kill()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None
        if self._own_root and not self.keep:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> ExecPort:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
