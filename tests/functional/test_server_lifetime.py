"""The servers the project starts: tied to their parent's life, listed for the suite's final check,
and never mistaken for someone else's server on a port taken before they bind it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from devkit import brokers, children, servers
from devkit.sam import ROOT
from tests.functional.runkit import gone, wait_for

# started from a thread that has ended by the time it prints: the kernel's parent-death signal
# follows the thread that forked, so the servers must outlive that thread and die with the process
_PARENT = """
import threading, time
from devkit import brokers, servers
started = {}
thread = threading.Thread(target=lambda: started.update(broker=brokers.start_broker("embedded")))
thread.start()
thread.join()
valkey = servers.start_server()
print(started["broker"].process.pid, valkey.process.pid, started["broker"].directory, valkey.directory, flush=True)
time.sleep(600)
"""


def test_servers_die_with_a_parent_killed_with_sigkill(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger"
    env = children.with_ledger(dict(os.environ), ledger)
    parent = subprocess.Popen(
        [sys.executable, "-c", _PARENT], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    try:
        assert parent.stdout is not None
        broker, valkey, *scratch = parent.stdout.readline().split()
        broker_pid, valkey_pid = int(broker), int(valkey)
        listed = {entry.pid: entry for entry in children.started(ledger)}
        assert set(listed) == {broker_pid, valkey_pid}  # the ledger names what a child process started
        assert all(children.running(entry) for entry in listed.values())  # alive after their thread ended
        parent.kill()  # no clean-up of any kind runs
        parent.wait()
        wait_for(lambda: not any(children.running(entry) for entry in listed.values()), "the servers to die")
        # their files outlive them (no clean-up ran) until a later server's start removes them
        assert all(Path(directory).is_dir() for directory in scratch)
        servers.start_server().remove()
        assert not any(Path(directory).exists() for directory in scratch)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        if parent.stdout is not None:
            parent.stdout.close()


_LEAVES_ONE = """
from devkit import servers

LEFT = []


def test_leaves_a_server_running() -> None:
    LEFT.append(servers.start_server())
"""

_STOPS_IT = """
from devkit import servers


def test_stops_its_server() -> None:
    servers.start_server().remove()
"""


@pytest.mark.parametrize(("test", "left"), [(_LEAVES_ONE, True), (_STOPS_IT, False)])
def test_the_session_fails_when_a_test_leaves_a_server_running(tmp_path: Path, test: str, left: bool) -> None:
    (tmp_path / "test_inner.py").write_text(textwrap.dedent(test))
    env = {k: v for k, v in os.environ.items() if k != children.LEDGER_VARIABLE}  # a session of its own
    command = [sys.executable, "-m", "pytest", "-c", "pyproject.toml", "--rootdir", ".", "-p", "tests.conftest"]
    session = subprocess.run(
        [*command, str(tmp_path / "test_inner.py")], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert ("1 passed" in session.stdout) and ("servers left running" in session.stdout) == left, session.stdout
    assert session.returncode == (1 if left else 0), session.stdout
    named = [int(line.split()[1].rstrip(":")) for line in session.stdout.splitlines() if line.startswith("  pid ")]
    assert len(named) == (1 if left else 0)
    assert all(gone(pid) for pid in named)  # and it was stopped, so the next run starts clean


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port that passes free_port()'s check, then is taken before the server binds it."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


def test_a_valkey_whose_port_is_taken_starts_on_another(taken_port: int, monkeypatch: pytest.MonkeyPatch) -> None:
    other = servers.start_server()  # another server, answering on the port ours wanted
    try:
        ports = iter([taken_port, other.port, servers.free_port()])
        monkeypatch.setattr(servers, "free_port", lambda: next(ports))
        server = servers.start_server()
        try:
            assert server.port not in (taken_port, other.port)
            answering = redis.Redis(port=server.port).info("server")["process_id"]
            assert int(answering) == server.process.pid
        finally:
            server.remove()
    finally:
        other.remove()


def test_a_broker_whose_port_is_taken_starts_on_another(taken_port: int, monkeypatch: pytest.MonkeyPatch) -> None:
    ports = iter([taken_port, servers.free_port()])
    monkeypatch.setattr(brokers, "free_port", lambda: next(ports))
    broker = brokers.start_broker("embedded")
    try:
        assert broker.port != taken_port and broker.process is not None
        assert brokers._listens(broker.process.pid, broker.port)
    finally:
        broker.remove()


def test_a_port_still_taken_after_every_attempt_is_a_clear_error(
    taken_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(servers, "free_port", lambda: taken_port)
    monkeypatch.setattr(servers, "BIND_ATTEMPTS", 3)
    with pytest.raises(servers.PortTaken, match=f"port {taken_port} was taken"):
        servers.start_server()
