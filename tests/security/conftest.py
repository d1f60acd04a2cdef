"""Fixtures for the security suites: TLS material, a TLS-enabled Redis 7, ACL users,
and the two function handlers loaded fresh with a given environment."""

from __future__ import annotations

import importlib.util
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import redis

from cachesync import config
from cachesync.config import Settings
from devkit import acl, servers
from tests.security.tlskit import Pki, TlsCluster, TlsServer, make_pki, start_tls_cluster, start_tls_server
from tests.unavailable import unavailable

ROOT = Path(__file__).resolve().parents[2]
# user names of their own, so they do not collide with users other suites create
USERS = {"ingest": "cachesync-ingest", "api": "cachesync-api"}
PASSWORDS = {"ingest": "ingest-pass-7f3a", "api": "api-pass-19c2"}


def userinfo(role: str) -> str:
    return f"{USERS[role]}:{PASSWORDS[role]}"


Handler = Callable[[dict[str, Any], Any], Any]


@pytest.fixture(scope="session")
def redis7_binary() -> str:
    binary = servers.redis_binary()
    if binary is None:
        unavailable("redis-server is not installed (apt-get install -y redis-server)")
    return binary


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def tls_redis(redis7_binary: str, pki: Pki) -> Iterator[TlsServer]:
    """Redis 7 with a certificate for 127.0.0.1 and localhost, signed by the test CA."""
    server = start_tls_server(redis7_binary, pki.server_cert, pki.server_key, pki.ca)
    yield server
    server.server.remove()


@pytest.fixture(scope="session")
def wrong_host_redis(redis7_binary: str, pki: Pki) -> Iterator[TlsServer]:
    """Redis 7 whose certificate (signed by the test CA) names another host."""
    server = start_tls_server(redis7_binary, pki.wrong_host_cert, pki.wrong_host_key, pki.ca)
    yield server
    server.server.remove()


@pytest.fixture(scope="session")
def tls_cluster(redis7_binary: str, pki: Pki) -> Iterator[TlsCluster]:
    """A 3-master Redis 7 cluster that speaks only verified TLS to clients (and TLS on its bus)."""
    cluster = start_tls_cluster(redis7_binary, pki)
    yield cluster
    cluster.remove()


def create_users(admin_url: str, settings: Settings | None = None, cluster: bool = False) -> None:
    """The two least-privilege users of devkit.acl, on one server."""
    settings = settings or Settings.from_env({})
    admin = redis.Redis.from_url(admin_url)
    admin.execute_command(*acl.ingest_rule(settings, cluster).setuser_args(USERS["ingest"], PASSWORDS["ingest"]))
    admin.execute_command(*acl.api_rule(settings, cluster).setuser_args(USERS["api"], PASSWORDS["api"]))
    admin.close()


@pytest.fixture
def load_function(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str, dict[str, str]], Handler]]:
    """Imports functions/<name>/app.py afresh with `env`, as a new Lambda environment would."""

    def load(name: str, env: dict[str, str]) -> Handler:
        monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "true")
        monkeypatch.setenv("POWERTOOLS_SERVICE_NAME", f"cachesync-{name}")
        for variable, value in env.items():
            monkeypatch.setenv(variable, value)
        config.settings.cache_clear()  # the handlers read the settings once, at import or first use
        path = ROOT / "functions" / name / "app.py"
        spec = importlib.util.spec_from_file_location(f"_security_{name}_{uuid.uuid4().hex}", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        handler: Handler = module.lambda_handler
        return handler

    yield load
    config.settings.cache_clear()


def lambda_context(name: str) -> Any:
    return SimpleNamespace(
        function_name=name,
        function_version="$LATEST",
        memory_limit_in_mb=512,
        invoked_function_arn=f"arn:aws:lambda:us-east-1:123456789012:function:{name}",
        aws_request_id=str(uuid.uuid4()),
        get_remaining_time_in_millis=lambda: 30_000,
    )
