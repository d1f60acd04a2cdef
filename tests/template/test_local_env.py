"""events/sam-local-env.json, the `--env-vars` file for `sam local invoke` with Docker.

`sam local invoke` only sets the variables a function declares in the template and
silently ignores the others, so the file must name exactly the template's variables.
What Docker adds (the container, host.docker.internal) is not tested here; the file's
environment is, on the real handlers against a real server.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis

from cachesync import config
from devkit import servers
from devkit.sam import LocalContext, describe, load_handler, local_stacks
from tests.template.cfn import ROOT, TEMPLATE

ENV_FILE = ROOT / "events" / "sam-local-env.json"
FUNCTIONS = ("IngestFunction", "ApiFunction")


def env_file() -> dict[str, dict[str, str]]:
    loaded: dict[str, dict[str, str]] = json.loads(ENV_FILE.read_text())
    return loaded


def template_variables(logical_id: str) -> set[str]:
    """The variable names the template gives the function (its own and the Globals'), as SAM reads them."""
    from samcli.lib.providers.sam_function_provider import SamFunctionProvider

    stacks = local_stacks(TEMPLATE)
    function = SamFunctionProvider(stacks).get(logical_id)
    assert function is not None, logical_id
    return set((function.environment or {}).get("Variables", {}))


def test_the_file_names_exactly_each_functions_template_variables() -> None:
    variables = env_file()
    assert set(variables) == set(FUNCTIONS)  # no "Parameters": every function's list is complete
    for function in FUNCTIONS:
        declared = template_variables(function)
        assert set(variables[function]) == declared, (
            f"{function}: missing {sorted(declared - set(variables[function]))}, "
            f"not in the template (ignored by sam local) {sorted(set(variables[function]) - declared)}"
        )
        assert all(isinstance(value, str) for value in variables[function].values()), function


@pytest.mark.parametrize("function", FUNCTIONS)
def test_the_file_points_at_a_plain_redis_on_the_docker_host(function: str) -> None:
    settings = config.Settings.from_env(env_file()[function])
    assert urlsplit(settings.redis_url).hostname == "host.docker.internal"
    assert not (settings.cluster or settings.tls or settings.iam_auth)
    assert not (settings.redis_username or settings.redis_secret_arn)  # nothing to fetch from AWS
    assert settings.dlq_queue_url is None  # dead letters to the Redis stream, not SQS


@pytest.fixture(scope="module")
def valkey() -> Iterator[servers.ServerProcess]:
    server = servers.start_server()
    yield server
    server.remove()


def _invoke(monkeypatch: pytest.MonkeyPatch, function: str, env: dict[str, str], event: str) -> Any:
    """One invocation of the function with exactly `env` for the template's variables."""
    for name in template_variables(function):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    config.settings.cache_clear()  # the handlers read the settings once per process
    handler = load_handler(describe(function))
    return handler(json.loads((ROOT / "events" / event).read_text()), LocalContext(describe(function)))


def test_both_handlers_work_with_the_files_environment(
    valkey: servers.ServerProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    # host.docker.internal exists only inside the container: here it is this test's server
    variables = {f: {**env_file()[f], "REDIS_URL": valkey.url} for f in FUNCTIONS}
    try:
        summary = _invoke(monkeypatch, "IngestFunction", variables["IngestFunction"], "kafka-orders.json")
        assert summary["applied"] >= 1, summary
        reply = _invoke(monkeypatch, "ApiFunction", variables["ApiFunction"], "api-get-order.json")
        assert reply["statusCode"] == 200, reply
        cached = redis.Redis.from_url(valkey.url).get("orders:18")
        assert cached is not None and json.loads(cached)["orderid"] == 18
        assert reply["body"].encode() == cached  # the order as the ingest left it
    finally:
        monkeypatch.undo()
        config.settings.cache_clear()
