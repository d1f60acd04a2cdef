"""Least-privilege Redis ACL users for the two functions, as data (operator tooling, not in the layer).

One user per function, so a compromised or buggy read path cannot write, and
neither can flush, reconfigure, enumerate (KEYS, SCAN) or touch keys outside
its projections. The access strings here are what docs/security.md shows, what
the tests apply to real Redis 7 and Valkey 8 servers, and what an ElastiCache
RBAC user takes as its `AccessString` (`on`, key patterns, `-@all`, then the
commands; no password, no `reset`, no Redis 7-only selectors or `%R~`). Operators
print them with `python -m devkit.acl`; the functions never need them at runtime.

Lua scripts run their inner commands under the caller's ACL: the ingest user may
load and run scripts, but a script can only do what the user could do itself,
so the inner commands of the writer's `fence.lua` are listed here too.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from cachesync import keys
from cachesync.config import DOCUMENT, HASH, JSON, STOCK_LEDGER, STREAM, Settings

# What every connection of the shared factory sends: PING (health checks) and
# CLIENT SETNAME (client_name "cachesync"); the factory turns redis-py's CLIENT
# SETINFO off. AUTH and HELLO need no permission.
CONNECTION_COMMANDS = ("ping", "client|setname")
# What the cluster client needs to find its nodes and slots (ElastiCache Serverless
# and cluster-mode caches): redis-py reads CLUSTER SLOTS and the COMMAND table. While a
# node-based cluster reshards, a slot under migration answers ASK for the keys already
# moved, and the client must send ASKING on the target's connection before the command.
# No READONLY: every read goes to the primaries (the cluster client's default; cachesync
# never reads from replicas), so the users need no replica reads.
CLUSTER_COMMANDS = ("cluster|slots", "cluster|shards", "command", "asking")

# The ingest path: the writer's script (EVAL, or EVALSHA with SCRIPT LOAD after
# NOSCRIPT: any of them lets a user run a script of its own, so allowing all three
# grants nothing more), the commands its script calls for the configured kinds
# (fence_commands), WAIT and ROLE (acknowledged means replicated: the writer waits for a
# standalone primary's replicas, which ROLE lists; cachesync.transport),
# and XADD to the dead-letter stream.
INGEST_SCRIPT_COMMANDS = ("eval", "evalsha", "script|load", "wait", "role")
DEAD_LETTER_COMMANDS = ("xadd",)
# The operator's figures (cachesync.opstats): IngestFunction adds a batch's entry to a stream
# and its partitions' offsets to a hash; the read API's admin route reads both, and the newest
# dead letters of the stream. One key each, so no SCAN.
OPSTATS_KEYS = (keys.BATCH_STATS_KEY, keys.PROCESSED_KEY)
OPSTATS_WRITE_COMMANDS = ("xadd", "hset")
OPSTATS_READ_COMMANDS = ("xrevrange", "hgetall")
# Maintenance (cachesync.maintenance: MaintenanceFunction, MappingFailuresFunction): status
# reads the offsets hashes and the stream's length; a rebuild scans for a topic's keys,
# deletes them and its offsets; markers are offsets-hash fields. No script, no data writes
# but DEL. SCAN lists every key name (ACL key patterns do not filter it): hence a user of
# its own rather than more rights for the ingest user.
MAINTENANCE_COMMANDS = ("scan", "del", "hget", "hset", "hdel", "hkeys", "hgetall", "hscan", "xlen")

# The read API: GET/MGET documents, ZSCORE/ZRANGE inventory, EXISTS, and the paging
# scripts (EVALSHA, EVAL on NOSCRIPT) whose inner commands are EXISTS, ZRANGE, ZSCORE,
# ZRANK, ZCOUNT and ZCARD (cachesync.reads).
API_COMMANDS = ("get", "mget", "zscore", "zrank", "zcount", "zcard", "zrange", "exists", "evalsha", "eval")


@dataclass(frozen=True)
class AccessRule:
    """One function's Redis user: the commands it may run and the keys it may touch."""

    role: str
    commands: tuple[str, ...]
    key_patterns: tuple[str, ...]

    def rules(self) -> list[str]:
        """The ACL rules after `on`: key patterns, then `-@all`, then each allowed command."""
        return [*(f"~{p}" for p in self.key_patterns), "-@all", *(f"+{c}" for c in self.commands)]

    def access_string(self) -> str:
        """The ElastiCache RBAC `AccessString` (also valid after `ACL SETUSER <name>`)."""
        return " ".join(["on", *self.rules()])

    def setuser_args(self, username: str, password: str) -> list[str]:
        """`ACL SETUSER` arguments for a self-managed server (tests, local runs)."""
        return ["ACL", "SETUSER", username, "reset", "on", f">{password}", *self.rules()]


def script_commands(script: str) -> tuple[str, ...]:
    """The commands a Lua script calls (`redis.call('X'` / `redis.pcall('X'`), lower case, sorted."""
    return tuple(sorted({name.lower() for name in re.findall(r"redis\.p?call\(\s*['\"]([\w.]+)['\"]", script)}))


def apply_lua_commands() -> tuple[str, ...]:
    """The commands of the script the writer runs (fence.lua)."""
    from cachesync.transport import FENCE_SCRIPT

    return script_commands(FENCE_SCRIPT)


# What fence.lua calls for itself (the keys' positions), and for each kind's writes: the ingest
# user gets the commands of the kinds topics.toml configures, no others (a cache without the
# JSON commands refuses an access string that names them). Together they are every command
# fence.lua calls (tests/security keeps them in step).
FENCE_COMMANDS = ("hmget", "hset")
KIND_COMMANDS: dict[str, tuple[str, ...]] = {
    DOCUMENT: ("set", "mset", "del"),
    STOCK_LEDGER: ("zincrby", "zadd", "zrem", "expire"),
    HASH: ("del", "hset", "hdel", "expire"),
    JSON: ("json.set", "json.merge", "exists", "persist", "del", "expire"),
    STREAM: ("xadd", "expire"),
}


# A standalone server's positions moved into one hash, once, before the writer's first write
# (cachesync.layout): the layout field's HGET and HSET, EXISTS over the slots' hashes, and its
# script's commands (each slot's hash read, merged into the one hash, replaced by a marker).
LAYOUT_COMMANDS = ("hget", "exists", "hgetall", "hmget", "hset", "set")


def fence_commands(settings: Settings) -> tuple[str, ...]:
    """The commands fence.lua runs for the topics these settings configure, sorted."""
    commands = set(FENCE_COMMANDS)
    for topic in settings.topics:
        commands.update(KIND_COMMANDS[topic.kind])
    return tuple(sorted(commands))


def _prefixes(settings: Settings) -> list[str]:
    return [topic.key_prefix for topic in settings.topics]


def ingest_rule(settings: Settings, cluster: bool | None = None) -> AccessRule:
    """The ingest user: its data keys, the applied-offsets hashes, the dead-letter stream."""
    patterns = [keys.data_key(prefix, "*") for prefix in _prefixes(settings)]
    patterns.append(keys.OFFSETS_PATTERN)
    # the stream always: with a queue configured it takes the letters while SQS is down
    patterns.append(settings.dlq_stream_key)
    patterns += OPSTATS_KEYS
    commands = [*CONNECTION_COMMANDS, *INGEST_SCRIPT_COMMANDS, *fence_commands(settings)]
    others = (*LAYOUT_COMMANDS, *DEAD_LETTER_COMMANDS, *OPSTATS_WRITE_COMMANDS)
    commands += dict.fromkeys(c for c in others if c not in commands)
    return AccessRule("ingest", _with_cluster(commands, settings, cluster), tuple(patterns))


def maintenance_rule(settings: Settings, cluster: bool | None = None) -> AccessRule:
    """The maintenance user: the ingest user's keys, to read, clear and mark; nothing else."""
    patterns = [keys.data_key(prefix, "*") for prefix in _prefixes(settings)]
    patterns += [keys.OFFSETS_PATTERN, settings.dlq_stream_key]
    commands = [*CONNECTION_COMMANDS, *MAINTENANCE_COMMANDS]
    return AccessRule("maintenance", _with_cluster(commands, settings, cluster), tuple(patterns))


def api_rule(settings: Settings, cluster: bool | None = None) -> AccessRule:
    """The read API user: read-only commands on the data keys, and the operator's figures with the
    dead-letter stream for the admin route (never the offsets hashes)."""
    patterns = (*(keys.data_key(prefix, "*") for prefix in _prefixes(settings)), *OPSTATS_KEYS, settings.dlq_stream_key)
    commands = [*CONNECTION_COMMANDS, *API_COMMANDS, *OPSTATS_READ_COMMANDS]
    return AccessRule("api", _with_cluster(commands, settings, cluster), patterns)


def _with_cluster(commands: Sequence[str], settings: Settings, cluster: bool | None) -> tuple[str, ...]:
    on_cluster = settings.cluster if cluster is None else cluster
    return tuple([*commands, *CLUSTER_COMMANDS] if on_cluster else commands)


def main() -> None:
    """Print the users' access strings for the settings in the environment.

    `REDIS_CLUSTER=true DLQ_QUEUE_URL=... python -m devkit.acl` gives the strings
    for a deployment with those settings (ElastiCache `AccessString`).
    """
    config = Settings.from_env()
    for rule in (ingest_rule(config), api_rule(config), maintenance_rule(config)):
        print(f"{rule.role}: {rule.access_string()}")


if __name__ == "__main__":
    main()
