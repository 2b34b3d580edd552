"""The processes of a local deployment: finding them, stopping them, and a watchdog that
stops them when the process that started them dies without doing so (SIGKILL).

Flower's SuperLink and SuperNodes start processes of their own (SuperExec, ServerApp,
ClientApp), which a signal to their parent does not reach, so a deployment is stopped by
walking the process tree (``ps``, so Linux and macOS) from the processes it started.

The watchdog is this file run as a script (standard library only, so that it starts fast
and runs the same code as its parent, whatever ``fedbcs_fl`` the interpreter would
import): ``python processes.py FOLDER``. It reads one PID a line from its stdin: a process
its parent started, or, negated, one that ended and was reaped (its PID may be reused);
``done`` means the parent stopped them itself. At the end of its stdin without ``done``
(the parent died: the system closes the pipe even after SIGKILL) it stops every process
below those PIDs and removes ``FOLDER``.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from contextlib import suppress
from pathlib import Path

STOP_GRACE_SECONDS = 5.0
DONE = "done"


def _process_table() -> dict[int, tuple[int, str]]:
    """pid → (parent pid, state) of every process (``ps``, so Linux and macOS)."""
    lines = subprocess.run(
        ["ps", "-A", "-o", "pid=,ppid=,stat="], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    table = {}
    for line in lines:
        pid, ppid, state = line.split(None, 2)
        table[int(pid)] = (int(ppid), state.strip())
    return table


def descendants(roots: Iterable[int]) -> set[int]:
    """``roots`` and every live process below them."""
    children: dict[int, list[int]] = {}
    table = _process_table()
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found, stack = set(), [p for p in roots if p in table]
    while stack:
        pid = stack.pop()
        if pid not in found:
            found.add(pid)
            stack.extend(children.get(pid, []))
    return found


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, exited but not yet reaped, does not)."""
    state = _process_table().get(pid)
    return state is not None and not state[1].startswith("Z")


def stop_processes(pids: set[int], grace: float = STOP_GRACE_SECONDS) -> None:
    """SIGTERM ``pids``, then SIGKILL those still running after ``grace`` seconds."""
    for pid in pids:
        with suppress(ProcessLookupError):  # exited meanwhile
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(alive(pid) for pid in pids):
        time.sleep(0.1)
    for pid in pids:
        if alive(pid):
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def watch(folder: Path, commands: Iterable[str]) -> None:
    """The watchdog: follow the PIDs of ``commands`` (lines) until ``done`` or their end;
    at their end without ``done``, stop every process below the PIDs and remove
    ``folder``."""
    roots: set[int] = set()
    for line in commands:
        if line.strip() == DONE:
            return
        pid = int(line)
        if pid > 0:
            roots.add(pid)
        else:
            roots.discard(-pid)
    stop_processes(descendants(roots))
    shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C is the parent's to handle
    watch(Path(sys.argv[1]), sys.stdin)
