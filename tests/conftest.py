"""Real Redis servers for the suites: a private Valkey (always), Debian's Redis 7
(when installed; required in CI), and a local 3-master Valkey cluster.

Servers start once per test session on free loopback ports and are flushed
before each test that asks for one. Every server the session starts, in this
process or in a command a test runs, is listed in a ledger
(devkit.children): the session fails if one of them still runs at its end.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from redis.cluster import RedisCluster

from cachesync.config import Settings
from cachesync.connection import RedisClient, get_client
from devkit import children, servers
from harness.proxy import StallingProxy
from tests.unavailable import REQUIRE_ALL_VARIABLE, require_all, unavailable


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Under CACHESYNC_REQUIRE_ALL_SERVERS=1 (CI) nothing may skip: a skip that did not go through
    tests.unavailable (one in a file that calls pytest.skip itself) fails all the same."""
    report = yield
    if report.skipped and require_all() and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped under {REQUIRE_ALL_VARIABLE}=1, where nothing may skip: {reason}"
    return report


@dataclass
class Target:
    """One Redis deployment under test."""

    name: str
    url: str
    cluster: bool

    def settings(self, **env: str) -> Settings:
        return Settings.from_env({"REDIS_URL": self.url, "REDIS_CLUSTER": str(self.cluster).lower(), **env})

    def client(self, **env: str) -> RedisClient:
        return get_client(self.settings(**env))

    def flush(self) -> None:
        if self.cluster:
            RedisCluster.from_url(self.url).flushall()
        else:
            redis.Redis.from_url(self.url).flushall()


@pytest.fixture(scope="session")
def valkey_server() -> Iterator[servers.ServerProcess]:
    server = servers.start_server(servers.valkey_binary())
    yield server
    server.remove()


@pytest.fixture(scope="session")
def redis7_server() -> Iterator[servers.ServerProcess]:
    binary = servers.redis_binary()
    if binary is None:
        unavailable("redis-server is not installed (apt-get install -y redis-server)")
    server = servers.start_server(binary)
    yield server
    server.remove()


@pytest.fixture(scope="session")
def valkey_cluster() -> Iterator[servers.LocalCluster]:
    cluster = servers.start_cluster(servers.valkey_binary())
    yield cluster
    cluster.stop()


@pytest.fixture(params=["valkey", "redis7", "cluster"])
def target(request: pytest.FixtureRequest) -> Target:
    """Each test using this runs against standalone Valkey 8, Redis 7 and a 3-master cluster."""
    if request.param == "cluster":
        cluster = request.getfixturevalue("valkey_cluster")
        chosen = Target("cluster", cluster.url, cluster=True)
    else:
        server = request.getfixturevalue(f"{request.param}_server")
        chosen = Target(request.param, server.url, cluster=False)
    chosen.flush()
    return chosen


@pytest.fixture
def valkey(valkey_server: servers.ServerProcess) -> Target:
    """Standalone Valkey only, for tests where the deployment does not matter."""
    chosen = Target("valkey", valkey_server.url, cluster=False)
    chosen.flush()
    return chosen


@pytest.fixture
def aws_test_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """A region and made-up credentials: botocore signs with them; moto or a refusing port answers."""
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")


@pytest.fixture
def valkey_proxy() -> Iterator[tuple[servers.ServerProcess, StallingProxy]]:
    """A private Valkey behind a proxy that can stall, as a network that stops answering."""
    server = servers.start_server()
    proxy = StallingProxy(server.port)
    yield server, proxy
    proxy.close()
    server.remove()


# --- servers left running ------------------------------------------------------------
LEFT_RUNNING_GRACE_S = 30.0  # a server whose parent was just killed may take a moment to go


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get(children.LEDGER_VARIABLE):  # a session run by another session: its ledger
        return
    folder = Path(tempfile.mkdtemp(prefix="cachesync-ledger-"))
    config.stash[_LEDGER] = folder
    os.environ[children.LEDGER_VARIABLE] = str(folder / "servers")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    folder = session.config.stash.get(_LEDGER, None)
    if folder is None:
        return
    left = children.still_running(folder / "servers", within=LEFT_RUNNING_GRACE_S)
    shutil.rmtree(folder, ignore_errors=True)
    if not left:
        return
    for entry in left:  # stopped now, so that the next run starts clean
        with contextlib.suppress(ProcessLookupError):
            os.kill(entry.pid, signal.SIGKILL)
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    lines = [f"{len(left)} server(s) the tests started were still running at the end of the session:"]
    lines += [f"  pid {entry.pid}: {entry.command}" for entry in left]
    if reporter is not None:
        reporter.write_sep("=", "servers left running", red=True)
        reporter.write_line("\n".join(lines))
    session.exitstatus = pytest.ExitCode.TESTS_FAILED


_LEDGER = pytest.StashKey[Path]()
