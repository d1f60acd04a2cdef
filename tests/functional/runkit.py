"""`make run` as a developer runs it, in a process of its own: its output in files (never an unread
pipe), the servers it started read from its ledger, and every wait a polled, generous deadline."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devkit import children
from devkit.sam import ROOT
from devkit.servers import BIND_ATTEMPTS, free_port

DEADLINE_S = 240.0  # for work that gets slower on a busy machine: generous, and left as soon as it is done


def wait_for(condition: Callable[[], bool], what: str, timeout: float = DEADLINE_S) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.05)


def gone(pid: int) -> bool:
    """The process has exited (a zombie its parent has not reaped yet counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")


def fetch(url: str, headers: Mapping[str, str] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=dict(headers or {}))
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0, b""


def fetch_json(url: str, headers: Mapping[str, str] | None = None) -> tuple[int, Any]:
    status, body = fetch(url, headers)
    return status, json.loads(body) if body else None


@dataclass
class StackRun:
    """One `make run` (or `python -m devkit.localrun`), started in a session of its own."""

    command: Sequence[str]
    env: dict[str, str]
    folder: Path
    ignore_sigint: bool
    port: int = 0
    process: subprocess.Popen[bytes] = field(init=False)

    @classmethod
    def start(
        cls,
        folder: Path,
        command: Sequence[str] = ("make", "-s", "run"),
        env: Mapping[str, str] | None = None,
        ignore_sigint: bool = False,
    ) -> StackRun:
        """`env` adds to this process's environment, which loses REDIS_URL and KAFKA_BOOTSTRAP first;
        `ignore_sigint` starts it with SIGINT ignored, as a shell starts a job in the background."""
        folder.mkdir(parents=True, exist_ok=True)
        environment = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "KAFKA_BOOTSTRAP")}
        # its servers in a ledger of its own, and in the session's, which is checked at its end
        environment = children.with_ledger({**environment, **(env or {})}, folder / "ledger")
        run = cls(command, environment, folder, ignore_sigint)
        run._spawn()
        return run

    def _spawn(self) -> None:
        self.port = free_port()
        with (self.folder / "stdout").open("wb") as stdout, (self.folder / "stderr").open("wb") as stderr:
            # its own process group, as a terminal's foreground job; should the tests die, SIGTERM,
            # which make passes on, stops it the clean way
            self.process = children.spawn(
                self.command,
                death_signal=signal.SIGTERM,
                preexec=_ignore_sigint if self.ignore_sigint else None,
                cwd=ROOT,
                env={**self.env, "PORT": str(self.port)},
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
            )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def stdout(self) -> str:
        return (self.folder / "stdout").read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return (self.folder / "stderr").read_text(errors="replace")

    def banner(self) -> str:
        """What it prints once it serves (up to "Ctrl-C stops it."). A run whose port was taken
        between free_port()'s check and its bind starts again on another."""
        for _ in range(BIND_ATTEMPTS):
            wait_for(lambda: "Ctrl-C stops it." in self.stdout or self.process.poll() is not None, "the banner")
            if "Ctrl-C stops it." in self.stdout:
                return self.stdout
            if f"is port {self.port} taken?" not in self.stderr:
                break
            self._spawn()
        raise AssertionError(f"exited with {self.process.returncode}:\n{self.stderr[-3000:]}")

    def staff(self) -> dict[str, str]:
        """The token the run prints for staff: orders carry no owner, so only staff read them."""
        token = re.search(r"STAFF_TOKEN=(\S+)", self.banner())
        assert token, self.banner()
        return {"Authorization": f"Bearer {token[1]}"}

    def kafka_bootstrap(self) -> str:
        found = re.search(r"^Kafka at (\S+):", self.banner(), re.MULTILINE)
        assert found, self.banner()
        return found[1]

    def redis_url(self) -> str:
        found = re.search(r"\(Redis (redis://\S+),", self.banner())
        assert found, self.banner()
        return found[1]

    def servers(self) -> list[children.Started]:
        """The servers this run started (its ledger)."""
        return children.started(self.folder / "ledger")

    def stack_pid(self) -> int:
        """The Python process that runs the stack (under make, the child that started the servers)."""
        started = self.servers()
        assert started, "no server started yet"
        parent = children.parent(started[0].pid)
        assert parent is not None
        return parent

    def signal_group(self, signum: int) -> None:
        """To the whole process group, as a terminal sends Ctrl-C (SIGINT) or a hang-up (SIGHUP)."""
        os.killpg(self.process.pid, signum)

    def wait_exit(self, timeout: float = DEADLINE_S) -> int:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            stderr = self.stderr[-3000:]
            raise AssertionError(f"still running {timeout:g} s after it was told to stop:\n{stderr}") from None

    def wait_servers_gone(self) -> None:
        wait_for(lambda: not any(children.running(entry) for entry in self.servers()), "its servers to stop")

    def kill(self) -> None:
        """Whatever is left of it, at the end of a test."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
