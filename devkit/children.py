"""Server processes that die with the process that started them, however it ends.

`spawn()` starts a server (Valkey, Redis, a Kafka broker, a worker) in a session of its
own, so a Ctrl-C in the terminal reaches only its parent, which stops it in
order. On Linux the child also asks the kernel for SIGKILL when its parent
goes (PR_SET_PDEATHSIG), so a parent killed with SIGKILL, or one that never
reaches its clean-up, takes its servers with it. The kernel sends that signal
when the parent *thread* that forked the child ends, so every child is forked
by one thread that lives as long as the process.

A server's scratch directory (`scratch_directory()`) names the process that made it, so a run
that was SIGKILLed before its clean-up leaves a directory the next run removes.

When `CACHESYNC_SERVER_LEDGER` names a file (or several, separated by
os.pathsep), each server started appends a line to each (pid, its start time,
the command), in whichever process started it: the test suite checks at its
end that none of them still runs, and a test its own command's servers.
"""

from __future__ import annotations

import ctypes
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LEDGER_VARIABLE = "CACHESYNC_SERVER_LEDGER"
SCRATCH_PREFIX = "cachesync-"
OWNER_FILE = ".owner"  # in a scratch directory: the pid and start time of the process that made it
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>

_jobs: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
_forker: threading.Thread | None = None
_forker_lock = threading.Lock()
_libc: Any = None


def spawn(
    command: Sequence[str],
    death_signal: int = signal.SIGKILL,
    preexec: Callable[[], None] | None = None,
    **options: Any,
) -> subprocess.Popen[bytes]:
    """subprocess.Popen(command, **options) in a session of its own, tied to this process's life:
    `death_signal` when this process ends (SIGTERM for a child that stops its own children, as
    make passes it on), and `preexec` run in the child before it starts the command."""
    options["start_new_session"] = True
    if sys.platform == "linux":
        options["preexec_fn"] = _die_with(os.getpid(), death_signal, preexec)
    elif preexec is not None:
        options["preexec_fn"] = preexec
    started: Future[subprocess.Popen[bytes]] = Future()

    def fork() -> None:
        try:
            started.set_result(subprocess.Popen(list(command), **options))
        except BaseException as error:
            started.set_exception(error)

    if threading.current_thread() is _forker:
        fork()
    else:
        _start_forker().put(fork)
    process = started.result()
    _record(process.pid, command)
    return process


def _start_forker() -> queue.SimpleQueue[Callable[[], None]]:
    global _forker
    with _forker_lock:
        if _forker is None:
            # a daemon: it ends only with the process, and with it every child it forked
            _forker = threading.Thread(target=_fork_forever, name="server-forker", daemon=True)
            _forker.start()
    return _jobs


def _fork_forever() -> None:
    while True:
        _jobs.get()()


def _die_with(parent: int, death_signal: int, preexec: Callable[[], None] | None) -> Callable[[], None]:
    global _libc
    if _libc is None:  # loaded here, not in the child between fork and exec
        _libc = ctypes.CDLL(None, use_errno=True)
    libc = _libc

    def in_child() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, death_signal, 0, 0, 0)
        if os.getppid() != parent:  # the parent was gone before the line above took effect
            os.kill(os.getpid(), death_signal)
        if preexec is not None:
            preexec()

    return in_child


# --- the ledger ------------------------------------------------------------------


@dataclass(frozen=True)
class Started:
    pid: int
    start_time: str  # the kernel's start time of the process: a pid reused later is not this one
    command: str


def _record(pid: int, command: Sequence[str]) -> None:
    line = f"{pid}\t{_start_time(pid)}\t{' '.join(command)[:300]}\n".encode()
    for ledger in filter(None, os.environ.get(LEDGER_VARIABLE, "").split(os.pathsep)):
        descriptor = os.open(ledger, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(descriptor, line)  # one write of a short line: whole, whatever else appends
        finally:
            os.close(descriptor)


def with_ledger(env: dict[str, str], ledger: Path) -> dict[str, str]:
    """`env` with `ledger` added to the ledgers its processes record their servers in."""
    inherited = env.get(LEDGER_VARIABLE, "")
    return {**env, LEDGER_VARIABLE: os.pathsep.join(filter(None, [inherited, str(ledger)]))}


def started(ledger: Path) -> list[Started]:
    """Every server the ledger lists."""
    if not ledger.exists():
        return []
    entries = []
    for line in ledger.read_text().splitlines():
        pid, start_time, command = line.split("\t", 2)
        entries.append(Started(int(pid), start_time, command))
    return entries


def running(entry: Started) -> bool:
    """Whether that process still runs (a zombie waiting for its parent to reap it does not)."""
    try:
        stat = Path(f"/proc/{entry.pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:  # no /proc here: whether any process has that pid
        try:
            os.kill(entry.pid, 0)
        except ProcessLookupError:
            return False
        return True
    fields = stat.rsplit(")", 1)[1].split()
    return fields[0] not in ("Z", "X") and fields[19] == entry.start_time


def still_running(ledger: Path, within: float = 0.0) -> list[Started]:
    """The ledger's servers that still run, after up to `within` seconds of waiting for those whose
    parent has gone (the kernel kills them; this process's own servers are not waited for)."""
    deadline = time.monotonic() + within
    while True:
        alive = [entry for entry in started(ledger) if running(entry)]
        if all(parent(entry.pid) == os.getpid() for entry in alive) or time.monotonic() >= deadline:
            return alive
        time.sleep(0.1)


def parent(pid: int) -> int | None:
    """The pid of a process's parent (None where /proc cannot tell)."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def _start_time(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return "?"


# --- scratch directories -----------------------------------------------------------


def scratch_directory(kind: str) -> Path:
    """A fresh directory for a server's files, after removing those whose owner has gone."""
    remove_orphaned_scratch()
    directory = Path(tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}{kind}-"))
    (directory / OWNER_FILE).write_text(f"{os.getpid()}\t{_start_time(os.getpid())}\n")
    return directory


def remove_orphaned_scratch(parent: Path | None = None) -> list[Path]:
    """Removes the scratch directories whose owner no longer runs; returns them. A directory
    without an owner file is left alone: it may be another program's, or one being made."""
    removed = []
    for directory in (parent or Path(tempfile.gettempdir())).glob(SCRATCH_PREFIX + "*"):
        try:
            pid, start_time = (directory / OWNER_FILE).read_text().split()
            owner = Started(int(pid), start_time, "")
        except (OSError, ValueError):
            continue
        if not running(owner):
            shutil.rmtree(directory, ignore_errors=True)
            removed.append(directory)
    return removed
