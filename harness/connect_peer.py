"""The Kafka Connect Redis sink of the original design, run for `make bench-connect`.

The connector is `jcustenborder/kafka-connect-redis`, built from its source with
Maven; Connect's runtime is `org.apache.kafka:connect-runtime` from Maven
Central, fetched as the local broker's jars are (devkit.brokers.fetch_jars).
Both land in `.local/connect/`, which git ignores. Its worker runs
`org.apache.kafka.connect.cli.ConnectStandalone` with the Java on PATH.

The source is looked up in this order: `--peer-source`, `$CONNECT_REDIS_SOURCE`,
then `../shared/peers/kafka-connect-redis` beside the repository. It needs a
`pom.xml` that builds from Maven Central alone: the project's own pom names a
repository that is not Maven Central. Without a source, the bench falls back to
harness.sink_peer and says so.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from devkit import brokers

ROOT = Path(__file__).resolve().parent.parent
SOURCE_VARIABLE = "CONNECT_REDIS_SOURCE"
DEFAULT_SOURCE = ROOT.parent / "shared" / "peers" / "kafka-connect-redis"
UPSTREAM = "https://github.com/jcustenborder/kafka-connect-redis"
CONNECT_POM = ROOT / "harness" / "connect" / "pom.xml"
LOCAL = ROOT / ".local" / "connect"  # ignored by git
RUNTIME_LIB = LOCAL / "runtime"
BUILD = LOCAL / "build"  # a copy of the source: Maven writes target/ beside the pom
PLUGINS = LOCAL / "plugins"
CONNECTOR_CLASS = "com.github.jcustenborder.kafka.connect.redis.RedisSinkConnector"
STANDALONE = "org.apache.kafka.connect.cli.ConnectStandalone"
TASK_SOURCE = Path("src/main/java/com/github/jcustenborder/kafka/connect/redis/RedisSinkTask.java")
FLUSH_INTERVAL_MS = 1000  # Connect's offset.flush.interval.ms; its default is 60 000


class PeerSourceMissing(RuntimeError):
    """A peer source was named (option or variable) but holds no buildable connector."""


@dataclass(frozen=True)
class PeerSource:
    """Where the connector's source is, or why there is none (`path` None: the fallback)."""

    path: Path | None
    origin: str  # "--peer-source", "$CONNECT_REDIS_SOURCE" or "default"
    note: str


def fallback_note(looked_at: Path) -> str:
    return (
        f"no Kafka Connect Redis sink source at {looked_at}: the peer is harness/sink_peer.py, a hand-written "
        f"consumer doing what a sink task does. To run the real connector, clone {UPSTREAM} to "
        f"../shared/peers/kafka-connect-redis (beside this repository) with a pom.xml that builds from Maven "
        f"Central alone (its own pom needs a repository that is not Maven Central), or pass its path with "
        f"--peer-source or ${SOURCE_VARIABLE}"
    )


def find_source(option: str | None = None, env: Mapping[str, str] | None = None) -> PeerSource:
    """The connector's source: the option, else the variable, else the default place. A path named
    by the option or the variable must hold the source; the default place may be absent (fallback)."""
    env = os.environ if env is None else env
    named = [(option, "--peer-source"), (env.get(SOURCE_VARIABLE) or None, f"${SOURCE_VARIABLE}")]
    for value, origin in named:
        if value:
            path = Path(value).expanduser().resolve()
            missing = _missing(path)
            if missing:
                raise PeerSourceMissing(f"{origin} names {path}, which {missing}")
            return PeerSource(path, origin, f"the connector built from {path} ({origin})")
    path = DEFAULT_SOURCE.resolve()
    if _missing(path):
        return PeerSource(None, "default", fallback_note(path))
    return PeerSource(path, "default", f"the connector built from {path}")


def _missing(path: Path) -> str:
    """Why `path` is no connector source ('' when it is one)."""
    if not path.is_dir():
        return "is not a directory"
    if not (path / "pom.xml").is_file():
        return "has no pom.xml"
    if not (path / TASK_SOURCE).is_file():
        return f"has no {TASK_SOURCE} (not the source of {UPSTREAM})"
    return ""


def build_plugin(source: Path, build: Path = BUILD, plugins: Path = PLUGINS) -> Path:
    """The connector's jar and its runtime dependencies in one plugin folder (Connect's plugin.path
    is its parent); built again when a source file is newer than the last build."""
    mvn = shutil.which("mvn")
    folder = plugins / "kafka-connect-redis"
    built = sorted(folder.glob("kafka-connect-redis-*.jar")) if folder.is_dir() else []
    newest_source = max(p.stat().st_mtime for p in source.rglob("*") if p.is_file())
    if built and built[0].stat().st_mtime >= newest_source:
        return plugins
    if mvn is None:
        raise brokers.BrokerUnavailable("the connector is not built and Maven (mvn) is not on PATH")
    shutil.rmtree(build, ignore_errors=True)
    shutil.copytree(source, build, ignore=shutil.ignore_patterns("target", ".git"))
    command = [mvn, "-q", "-B", "-f", str(build / "pom.xml"), f"-Dmaven.repo.local={brokers.KAFKA_REPO}", "package"]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    jars = sorted((build / "target").glob("kafka-connect-redis-*.jar"))
    if result.returncode != 0 or not jars:
        raise RuntimeError(f"Maven could not build the connector: {(result.stdout + result.stderr).strip()[-800:]}")
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for jar in [*jars, *(build / "target" / "lib").glob("*.jar")]:
        shutil.copy2(jar, folder / jar.name)
    return plugins


def fetch_runtime() -> Path:
    return brokers.fetch_jars(CONNECT_POM, RUNTIME_LIB, "connect-runtime-*.jar", "Kafka Connect")


def worker_properties(bootstrap: str, directory: Path, plugins: Path, rest_port: int, instance: str) -> str:
    """A standalone worker: raw string keys and byte values as the connector wants them, a REST
    listener on a free port, and static group membership (as our mappings use), so a restarted
    worker takes its partitions back at once instead of waiting for the killed one's session."""
    return "\n".join(
        [
            f"bootstrap.servers={bootstrap}",
            "key.converter=org.apache.kafka.connect.storage.StringConverter",
            "value.converter=org.apache.kafka.connect.converters.ByteArrayConverter",
            f"offset.storage.file.filename={directory / 'connect.offsets'}",
            f"offset.flush.interval.ms={FLUSH_INTERVAL_MS}",
            f"plugin.path={plugins}",
            "plugin.discovery=only_scan",  # the connector has no ServiceLoader manifest
            f"listeners=http://127.0.0.1:{rest_port}",
            f"consumer.group.instance.id={instance}",
            "consumer.session.timeout.ms=10000",
            "consumer.heartbeat.interval.ms=1000",
            "",
        ]
    )


def connector_properties(name: str, topic: str, redis_port: int, database: int) -> str:
    return "\n".join(
        [
            f"name={name}",
            f"connector.class={CONNECTOR_CLASS}",
            "tasks.max=1",
            f"topics={topic}",
            f"redis.hosts=127.0.0.1:{redis_port}",
            f"redis.database={database}",
            "",
        ]
    )


def group_of(name: str) -> str:
    """The consumer group a sink connector's tasks commit to."""
    return f"connect-{name}"


def standalone_command(directory: Path, worker: str, connector: str, runtime: Path = RUNTIME_LIB) -> list[str]:
    """Writes the two properties files into `directory`; the command that runs the worker."""
    java = shutil.which("java")
    if java is None:
        raise brokers.BrokerUnavailable("Kafka Connect needs Java 17 or later (java is not on PATH)")
    (directory / "worker.properties").write_text(worker)
    (directory / "connector.properties").write_text(connector)
    return [
        java,
        "-Xmx512m",
        "-cp",
        f"{runtime}/*",
        STANDALONE,
        str(directory / "worker.properties"),
        str(directory / "connector.properties"),
    ]
