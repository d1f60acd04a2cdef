"""Fixtures for the read API suites: a real Valkey, the real ApiFunction handler
loaded from template.yaml the way `sam local invoke` would, and a local API
Gateway (devkit.apigw) that turns requests into payload v2 events.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping

import pytest
import redis

from cachesync import config
from devkit import servers
from devkit.apigw import LocalGateway, Route, http_routes
from devkit.sam import LocalContext, describe, load_handler
from tests.api.apikit import Api


@pytest.fixture(scope="session")
def api_routes() -> list[Route]:
    return http_routes("ApiFunction")


@pytest.fixture(scope="session")
def api_valkey() -> Iterator[servers.ServerProcess]:
    server = servers.start_server()
    yield server
    server.remove()


@pytest.fixture(scope="session")
def load_api(api_routes: list[Route]) -> Callable[..., Api]:
    """Loads a fresh ApiFunction module with the template's environment plus `env`.

    The module reads its settings and logger configuration at import, so the
    environment is put back right after: other suites see the process unchanged.
    """

    def load(redis_url: str, parameters: Mapping[str, str] | None = None, **env: str) -> Api:
        """`parameters`: template parameters besides RedisUrl; `env`: variables over the template's."""
        function = describe("ApiFunction", {"RedisUrl": redis_url, **(parameters or {})})
        saved = dict(os.environ)
        try:
            os.environ.update(function.environment)
            os.environ.update({"REDIS_URL": redis_url, **env})
            config.settings.cache_clear()
            handler = load_handler(function)
        finally:
            os.environ.clear()
            os.environ.update(saved)
            config.settings.cache_clear()
        return Api(handler, LocalGateway(handler, api_routes, lambda: LocalContext(function)), function)

    return load


@pytest.fixture(scope="session")
def api(api_valkey: servers.ServerProcess, load_api: Callable[..., Api]) -> Api:
    return load_api(api_valkey.url)


@pytest.fixture
def store(api_valkey: servers.ServerProcess) -> Iterator[redis.Redis]:
    """A client on the API's Valkey, emptied before each test."""
    client = redis.Redis.from_url(api_valkey.url)
    client.flushall()
    yield client
    client.close()
