"""Kafka-protocol brokers on loopback, started by the project: no Docker.

- `embedded`: noida-db from PyPI (a Rust binary inside the wheel), the default
  of `make run` because it needs Python alone. Offsets, watermarks,
  `offsets_for_times`, consumer groups and restarts behave as in Kafka.
- `apache`: Apache Kafka itself in KRaft mode (broker and controller in one
  JVM), from the jars Maven fetches into `.local/kafka/` (`devkit/kafka/pom.xml`).
  Needs Java 17+ and Maven.

Each broker gets free ports and a throwaway data directory, and is stopped
(its directory removed) by `remove()`, also at interpreter exit, and by the
kernel when its parent dies (devkit.children). A broker that finds a port
taken before it binds it is started again on other ports.

    python -m devkit.brokers embedded      # prints the bootstrap address, Ctrl-C stops it
"""

from __future__ import annotations

import argparse
import atexit
import base64
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from devkit.children import scratch_directory, spawn
from devkit.servers import BIND_ATTEMPTS, PortTaken, free_port

ROOT = Path(__file__).resolve().parent.parent
KAFKA_POM = ROOT / "devkit" / "kafka" / "pom.xml"
KAFKA_LIB = ROOT / ".local" / "kafka" / "lib"  # ignored by git: Maven copies the jars here
KAFKA_REPO = ROOT / ".local" / "kafka" / "m2"  # Maven's own cache for those jars
BROKER_KINDS = ("embedded", "apache")


class BrokerUnavailable(RuntimeError):
    """This broker cannot run on this machine (a missing binary, Java or Maven)."""


@dataclass
class Broker:
    kind: str
    port: int
    directory: Path
    command: list[str]
    process: subprocess.Popen[bytes] | None = None
    env: dict[str, str] = field(default_factory=dict)
    sasl_port: int | None = None  # a SASL_PLAINTEXT (PLAIN) listener, when users were given

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def sasl_bootstrap(self) -> str:
        assert self.sasl_port is not None, "started without SASL users"
        return f"127.0.0.1:{self.sasl_port}"

    def start(self, timeout: float = 60.0) -> Broker:
        log = self.directory / "broker.log"
        log_from = log.stat().st_size if log.exists() else 0
        with log.open("ab") as output:  # the child writes to its own copy
            self.process = spawn(
                self.command,
                stdout=output,
                stderr=subprocess.STDOUT,
                cwd=self.directory,
                env={**os.environ, **self.env},
            )
        self._wait_ready(timeout, log_from)
        return self

    def stop(self) -> None:
        """A clean shutdown (SIGTERM to its process group), then SIGKILL if it takes too long."""
        if self.process is None:
            return
        _signal_group(self.process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=20)
        self.kill()

    def kill(self) -> None:
        """SIGKILL to the whole process group: a wrapper's children go too."""
        if self.process is not None:
            _signal_group(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def restart(self) -> None:
        """Stop and start again on the same port and data: committed offsets and records survive."""
        self.stop()
        for attempt in range(BIND_ATTEMPTS):  # the port may be held a moment by what it served
            try:
                self.start()
                return
            except PortTaken:
                if attempt == BIND_ATTEMPTS - 1:
                    raise
                time.sleep(0.2)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)

    def _log_since(self, offset: int) -> list[str]:
        path = self.directory / "broker.log"
        if not path.exists():
            return []
        with path.open("rb") as file:
            file.seek(offset)
            return file.read().decode(errors="replace").splitlines()

    def log_tail(self, lines: int = 20) -> str:
        path = self.directory / "broker.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.strip().splitlines()[-lines:])

    def _wait_ready(self, timeout: float, log_from: int = 0) -> None:
        """Until the broker answers metadata requests on its port, as the process we started."""
        from confluent_kafka.admin import AdminClient

        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.process.wait()
                taken = next((m for m in map(_FAILED_TO_BIND.search, self._log_since(log_from)) if m), None)
                if taken is not None:
                    raise PortTaken(int(taken[1] or taken[2]))
                raise RuntimeError(
                    f"{self.kind} Kafka broker exited with {self.process.returncode}:\n{self.log_tail()}"
                )
            # another broker may hold the port: ours then fails to bind and exits, which the check above sees
            if _port_open(self.port) and _listens(self.process.pid, self.port):
                admin = AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 0})
                try:
                    if admin.list_topics(timeout=2).brokers:
                        return
                except Exception:  # not answering metadata requests yet
                    pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.kind} Kafka broker on {self.bootstrap} was not ready within {timeout:.0f}s")


# noida-db: "kafka: port N is already in use"; Apache Kafka: "failed to bind to 127.0.0.1:N: Address already in use"
_FAILED_TO_BIND = re.compile(r"port (\d+) is already in use|bind to [^\s:]+:(\d+)\b.*Address already in use")


def _signal_group(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signum)  # started with start_new_session: its group id is its pid


def available(kind: str) -> str | None:
    """None when `kind` can run here, else why not."""
    try:
        if kind == "embedded":
            _embedded_command(0, Path("."))
        else:
            _apache_command(0, Path("."), check_only=True)
    except BrokerUnavailable as why:
        return str(why)
    return None


def start_broker(kind: str = "embedded", timeout: float = 60.0, sasl_users: dict[str, str] | None = None) -> Broker:
    """`sasl_users` (Apache Kafka only) adds a SASL_PLAINTEXT listener taking those PLAIN users."""
    if kind not in BROKER_KINDS:
        raise ValueError(f"unknown broker {kind!r}; one of {', '.join(BROKER_KINDS)}")
    if sasl_users and kind != "apache":
        raise ValueError("only the apache broker takes SASL users")
    for attempt in range(BIND_ATTEMPTS):
        port = free_port()
        sasl_port = free_port() if sasl_users else None
        directory = scratch_directory(f"kafka-{kind}")
        try:
            if kind == "embedded":
                command = _embedded_command(port, directory)
            else:
                command = _apache_command(port, directory, sasl_port=sasl_port, sasl_users=sasl_users or {})
        except BaseException:
            shutil.rmtree(directory, ignore_errors=True)
            raise
        broker = Broker(kind, port, directory, command, env=_environment(kind), sasl_port=sasl_port)
        try:
            broker.start(timeout)
        except PortTaken:  # one of its ports was taken before it bound them: other ports, a fresh directory
            broker.remove()
            if attempt == BIND_ATTEMPTS - 1:
                raise
            continue
        except BaseException:
            broker.remove()
            raise
        atexit.register(broker.remove)
        return broker
    raise AssertionError("unreachable")


def _embedded_command(port: int, directory: Path) -> list[str]:
    try:  # the binary itself, not the console script that would run it as its child
        import noida_db

        bundled = Path(noida_db.__file__).with_name("noida-db")
        binary: str | None = str(bundled) if bundled.is_file() else None
    except ImportError:
        binary = shutil.which("noida-db", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]))
    if binary is None:
        raise BrokerUnavailable("noida-db is not installed (make dev installs it)")
    data = directory / "data"
    return [binary, "start", "--only", "kafka", "--kafka-port", str(port), "--data-dir", str(data)]


def _environment(kind: str) -> dict[str, str]:
    # a small heap: the broker holds test and demo topics only
    return {"KAFKA_HEAP_OPTS": "-Xmx512m"} if kind == "apache" else {}


def _apache_command(
    port: int,
    directory: Path,
    check_only: bool = False,
    sasl_port: int | None = None,
    sasl_users: dict[str, str] | None = None,
) -> list[str]:
    java = shutil.which("java")
    if java is None:
        raise BrokerUnavailable("Apache Kafka needs Java 17 or later (java is not on PATH)")
    if check_only:
        if not _jars_present() and shutil.which("mvn") is None:
            raise BrokerUnavailable("Apache Kafka's jars are not fetched and Maven (mvn) is not on PATH")
        return []
    fetch_kafka_jars()
    controller = free_port()
    listeners, advertised = [f"PLAINTEXT://127.0.0.1:{port}"], [f"PLAINTEXT://127.0.0.1:{port}"]
    sasl: list[str] = []
    if sasl_port is not None:
        listeners.append(f"SASL_PLAINTEXT://127.0.0.1:{sasl_port}")
        advertised.append(f"SASL_PLAINTEXT://127.0.0.1:{sasl_port}")
        users = " ".join(f'user_{name}="{password}"' for name, password in (sasl_users or {}).items())
        sasl = [
            "sasl.enabled.mechanisms=PLAIN",
            "inter.broker.listener.name=PLAINTEXT",
            "listener.name.sasl_plaintext.plain.sasl.jaas.config="
            f"org.apache.kafka.common.security.plain.PlainLoginModule required {users};",
        ]
    config = directory / "server.properties"
    config.write_text(
        "\n".join(
            [
                "process.roles=broker,controller",
                "node.id=1",
                f"controller.quorum.voters=1@127.0.0.1:{controller}",
                f"listeners={','.join([*listeners, f'CONTROLLER://127.0.0.1:{controller}'])}",
                f"advertised.listeners={','.join(advertised)}",
                "controller.listener.names=CONTROLLER",
                "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT,CONTROLLER:PLAINTEXT",
                *sasl,
                f"log.dirs={directory / 'data'}",
                "offsets.topic.replication.factor=1",
                "offsets.topic.num.partitions=6",
                "transaction.state.log.replication.factor=1",
                "transaction.state.log.min.isr=1",
                "group.initial.rebalance.delay.ms=0",
                "num.partitions=1",
                "",
            ]
        )
    )
    classpath = f"{KAFKA_LIB}/*"
    cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
    formatted = subprocess.run(
        # `=`: a base64 id may start with "-", which would read as an option
        [java, "-cp", classpath, "kafka.tools.StorageTool", "format", f"--cluster-id={cluster_id}", "-c", str(config)],
        capture_output=True,
        text=True,
        check=False,
    )
    if formatted.returncode != 0:
        raise RuntimeError(f"kafka-storage format failed: {formatted.stderr.strip()[-500:]}")
    return [java, "-Xmx512m", "-cp", classpath, "kafka.Kafka", str(config)]


def _jars_present() -> bool:
    return KAFKA_LIB.is_dir() and any(KAFKA_LIB.glob("kafka_2.13-*.jar"))


def fetch_kafka_jars() -> Path:
    """Apache Kafka's jars, fetched once by Maven into `.local/kafka/lib` (never into git)."""
    return fetch_jars(KAFKA_POM, KAFKA_LIB, "kafka_2.13-*.jar", "Apache Kafka")


def fetch_jars(pom: Path, lib: Path, marker: str, what: str) -> Path:
    """The runtime dependencies of `pom` (a pom-packaged list of dependencies), copied once by Maven
    into `lib`; fetched already when `lib` holds a jar matching `marker`. Maven's own cache is
    KAFKA_REPO, which the broker's jars and others share."""
    pom, lib = pom.resolve(), lib.resolve()  # Maven reads a relative path from the pom's folder
    if lib.is_dir() and any(lib.glob(marker)):
        return lib
    mvn = shutil.which("mvn")
    if mvn is None:
        raise BrokerUnavailable(f"{what}'s jars are not fetched and Maven (mvn) is not on PATH")
    lib.mkdir(parents=True, exist_ok=True)
    fetched = subprocess.run(
        [
            mvn, "-q", "-B", "-f", str(pom),
            f"-Dmaven.repo.local={KAFKA_REPO}",
            "dependency:copy-dependencies",
            f"-DoutputDirectory={lib}",
            "-DincludeScope=runtime",
        ],
        capture_output=True,
        text=True,
        check=False,
    )  # fmt: skip
    if fetched.returncode != 0 or not any(lib.glob(marker)):
        raise RuntimeError(f"Maven could not fetch {what}: {(fetched.stdout + fetched.stderr).strip()[-800:]}")
    return lib


def _listens(pid: int, port: int) -> bool:
    """Whether process `pid` holds the socket listening on loopback `port` (True where /proc cannot tell).
    A JVM listens on an IPv6 socket even for 127.0.0.1 (the IPv4-mapped address, in /proc/net/tcp6)."""
    loopback = {
        f"0100007F:{port:04X}",  # 127.0.0.1
        f"00000000:{port:04X}",  # 0.0.0.0
        f"0000000000000000FFFF00000100007F:{port:04X}",  # ::ffff:127.0.0.1
        f"00000000000000000000000001000000:{port:04X}",  # ::1
        f"00000000000000000000000000000000:{port:04X}",  # ::
    }
    try:
        descriptors = os.listdir(f"/proc/{pid}/fd")
        rows = [
            fields
            for table in ("/proc/net/tcp", "/proc/net/tcp6")
            if Path(table).exists()
            for fields in map(str.split, Path(table).read_text().splitlines()[1:])
        ]
    except OSError:
        return True
    sockets = {f"socket:[{fields[9]}]" for fields in rows if fields[1] in loopback and fields[3] == "0A"}
    for descriptor in descriptors:
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{pid}/fd/{descriptor}") in sockets:
                return True
    return False


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Start a local Kafka broker until Ctrl-C.")
    parser.add_argument("kind", nargs="?", default="embedded", choices=BROKER_KINDS)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    broker = start_broker(args.kind)
    print(f"Kafka ({args.kind}) at {broker.bootstrap}; Ctrl-C stops it", flush=True)
    try:
        while broker.process is not None and broker.process.poll() is None:
            time.sleep(1)
        print(f"the broker exited:\n{broker.log_tail()}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        broker.remove()


if __name__ == "__main__":
    sys.exit(main())
