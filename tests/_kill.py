"""Writers killed mid-write: one Python process pays the imports once, then forks a writer per kill.

``kill_writers(setup, write, ...)`` runs ``setup`` (Python source that imports and builds what ``write``
needs) in a fresh process; for each of ``kills`` rounds it forks a child that calls ``write`` (a
statement, with ``i`` = 0, 1, ... and ``sys.argv`` = ``args``) in a loop, waits ``delay()`` seconds,
SIGKILLs the child and calls ``after_kill()`` to check what it left on disk. A fork costs milliseconds
where a fresh interpreter with numpy and onnx costs ~0.7 s, so the tests afford more kills.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

ROOT = Path(__file__).resolve().parents[1]

_LOOP = """
print("ready", flush=True)
for _line in sys.stdin:  # one forked writer per line; its pid on stdout, "reaped" once it is killed
    _pid = os.fork()
    if _pid == 0:
        i = 0
        while True:
            {write}
            i += 1
    print(_pid, flush=True)
    os.waitpid(_pid, 0)
    print("reaped", flush=True)
"""


def kill_writers(setup: str, write: str, args: Sequence[str], *, kills: int, delay: Callable[[], float],
                 after_kill: Callable[[], None], warm: bool = True) -> None:
    """``warm``: call ``write`` once (i = 0) before the first fork, so lazy imports and first-call set-up
    are done and every kill lands in a steady write loop."""
    script = "import os, sys\n" + setup + ("\ni = 0\n" + write + "\n" if warm else "") + _LOOP.format(write=write)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    with subprocess.Popen([sys.executable, "-c", script, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          env=env, cwd=ROOT) as proc:
        assert proc.stdout.readline().strip() == b"ready"
        for _ in range(kills):
            proc.stdin.write(b"go\n")
            proc.stdin.flush()
            pid = int(proc.stdout.readline())  # writing from now on
            time.sleep(delay())
            os.kill(pid, signal.SIGKILL)
            assert proc.stdout.readline().strip() == b"reaped"
            after_kill()
        proc.stdin.close()
    assert proc.returncode == 0
