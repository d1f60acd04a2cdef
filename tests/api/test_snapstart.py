"""ApiFunction under SnapStart: the runtime hooks close what must not be snapshotted and a
restored handler reconnects, with credentials fetched anew, against a real Valkey.

The hooks run as Lambda runs them (harness.snapstart_hooks): before the snapshot, then
after a restore. Between the two the tests do to the server what a restore days later, on
another host, would find: no connection of the old process alive, a rotated password.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws

from devkit import servers
from harness.snapstart_hooks import Hook, run_after_restore, run_before_snapshot
from tests.api.apikit import Api

PRODUCT = {"sku": "3746317213", "name": "lamp"}


@pytest.fixture
def valkey() -> Iterator[servers.ServerProcess]:
    server = servers.start_server()
    yield server
    server.remove()


def _hooks_of(api: Api) -> Callable[[Hook], bool]:
    """This handler's hooks and the connection module's, not those of other loaded copies."""
    module_globals = inspect.unwrap(api.handler).__globals__  # the handler module's, under its decorators

    def ours(function: Hook) -> bool:
        return function.__module__ == "cachesync.connection" or function.__globals__ is module_globals

    return ours


def _cachesync_clients(server: servers.ServerProcess) -> dict[str, dict[str, str]]:
    """The server's client connections named by the functions' client, by their address (ids
    start again when a server restarts; a client's port is its own)."""
    listed = server.admin().execute_command("CLIENT", "LIST")
    text = listed.decode() if isinstance(listed, bytes) else str(listed)
    clients = {}
    for line in text.strip().splitlines():
        fields = dict(field.split("=", 1) for field in line.split() if "=" in field)
        if fields.get("name") == "cachesync":
            clients[fields["addr"]] = fields
    return clients


def _seed(server: servers.ServerProcess) -> None:
    server.admin().set(f"products:{PRODUCT['sku']}", json.dumps(PRODUCT))


def test_hooks_are_registered_where_the_runtime_looks(valkey: servers.ServerProcess, load_api: Any) -> None:
    import snapshot_restore_py

    api = load_api(valkey.url)
    ours = _hooks_of(api)
    before = [f.__name__ for f, _, _ in snapshot_restore_py.get_before_snapshot() if ours(f)]
    after = [f.__name__ for f, _, _ in snapshot_restore_py.get_after_restore() if ours(f)]
    # the handler's priming runs first (reverse order of registration), the connections close last
    assert before == ["before_snapshot", "prime_routes"]
    assert after == ["after_restore"]


def test_the_snapshot_holds_no_connection_and_a_restored_handler_reconnects(
    valkey: servers.ServerProcess, load_api: Any
) -> None:
    _seed(valkey)
    api = load_api(valkey.url)
    assert api.get(f"/products/{PRODUCT['sku']}").status == 200
    opened = set(_cachesync_clients(valkey))
    assert opened, "the request went through a pooled connection"

    assert run_before_snapshot(_hooks_of(api)) == 2
    servers.wait_for(lambda: not _cachesync_clients(valkey), timeout=10, what="the connections to close")

    # restored elsewhere: the server restarted meanwhile, nothing of the old process is left
    valkey.restart()
    _seed(valkey)
    assert run_after_restore(_hooks_of(api)) == 1
    # the hook connected before any request, on a connection the snapshot never had
    reconnected = set(_cachesync_clients(valkey))
    assert reconnected and not reconnected & opened

    reply = api.get(f"/products/{PRODUCT['sku']}")
    assert reply.status == 200 and json.loads(reply.body) == PRODUCT


def test_a_restored_handler_fetches_a_rotated_password(
    valkey: servers.ServerProcess, load_api: Any, aws_test_credentials: None
) -> None:
    admin = valkey.admin()
    admin.execute_command("ACL", "SETUSER", "api", "on", ">before-snapshot", "~*", "+@all")
    _seed(valkey)
    with mock_aws():
        secrets = boto3.client("secretsmanager", region_name="us-east-1")
        arn = secrets.create_secret(
            Name="cachesync/api", SecretString=json.dumps({"username": "api", "password": "before-snapshot"})
        )["ARN"]
        api = load_api(valkey.url, REDIS_SECRET_ARN=arn, AWS_DEFAULT_REGION="us-east-1")
        path = f"/products/{PRODUCT['sku']}"
        assert api.get(path).status == 200

        # the password rotates while the snapshot waits; the old process's connections are gone
        admin.execute_command("ACL", "SETUSER", "api", "resetpass", ">after-restore")
        secrets.put_secret_value(
            SecretId=arn, SecretString=json.dumps({"username": "api", "password": "after-restore"})
        )
        admin.execute_command("CLIENT", "KILL", "USER", "api")
        # without the hooks the handler keeps the password it read at first: refused
        refused = api.get(path)
        assert refused.status == 500 and b"cannot sign in" in refused.body

        run_before_snapshot(_hooks_of(api))
        run_after_restore(_hooks_of(api))
        reply = api.get(path)
        assert reply.status == 200, reply.body
        users = {c["user"] for c in _cachesync_clients(valkey).values()}
        assert users == {"api"}


def test_a_cache_unreachable_at_restore_fails_no_restore(valkey: servers.ServerProcess, load_api: Any) -> None:
    _seed(valkey)
    api = load_api(valkey.url)
    assert api.get(f"/products/{PRODUCT['sku']}").status == 200
    run_before_snapshot(_hooks_of(api))
    valkey.stop()
    run_after_restore(_hooks_of(api))  # logs a warning, raises nothing: the restore goes on
    assert api.get(f"/products/{PRODUCT['sku']}").status == 503  # the request says the cache is down
    valkey.restart()
    _seed(valkey)
    assert api.get(f"/products/{PRODUCT['sku']}").status == 200


def test_dropping_the_clients_closes_their_connections(valkey: servers.ServerProcess) -> None:
    from cachesync.config import Settings
    from cachesync.connection import drop_clients, get_client

    settings = Settings.from_env({"REDIS_URL": valkey.url})
    client = get_client(settings)
    assert client.ping() and _cachesync_clients(valkey)
    assert settings in drop_clients()
    servers.wait_for(lambda: not _cachesync_clients(valkey), timeout=10, what="the connections to close")
    assert get_client(settings) is not client  # the next use builds a new client
