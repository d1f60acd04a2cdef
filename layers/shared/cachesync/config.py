"""Settings read once from the environment into typed, immutable objects.

Every knob the functions have lives here, so a reader can see the whole
configuration surface in one place and tests can build a `Settings` directly.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlparse

if TYPE_CHECKING:
    from cachesync.values import ValueFormat


class ConfigError(ValueError):
    """The environment describes a configuration that cannot work."""


# How a topic's records become Redis writes (cachesync.projections): one document per key (a
# string), stock events on a sorted set per store, one hash or one JSON document per key, or an
# entry appended to a stream per record.
DOCUMENT, STOCK_LEDGER, HASH, JSON, STREAM = "document", "stock_ledger", "hash", "json", "stream"
KINDS = (DOCUMENT, STOCK_LEDGER, HASH, JSON, STREAM)
# What a write does to a key that holds a value already: replace it, or merge into it (hash: the
# record's fields set, the others kept; json: JSON.MERGE, RFC 7396). Only the kinds listed merge.
REPLACE, MERGE = "replace", "merge"
MERGING_KINDS = (HASH, JSON)
# Debezium change events (op, before, after): for the kinds that hold one value per key.
DEBEZIUM = "debezium"
ENVELOPE_KINDS = (DOCUMENT, HASH, JSON)
# What an entry of topics.toml may hold; anything else is a mistake worth naming.
ENTRY_FIELDS = frozenset(
    {
        "name", "kind", "topic", "key_prefix", "key_field", "record_key", "ttl_seconds", "schema",
        "value_format", "value_schema", "value_wire_format", "contract", "example",
        "on_update", "envelope", "ttl_header", "max_length",
    }
)  # fmt: skip

TOPICS_FILE = Path(__file__).with_name("topics.toml")

# ElastiCache Serverless refuses a request of more than 3,999 arguments. The planner
# (cachesync.plan) counts each call's arguments and closes it before the limit; the
# mutations per call are bounded too, since a script blocks the server while it runs.
MAX_REQUEST_ARGUMENTS = 3999
MAX_SCRIPT_BATCH_SIZE = (MAX_REQUEST_ARGUMENTS - 5) // 2
# A hash or a stream entry travels field by field, two arguments each, and one record's fields
# cannot be split across requests: a call of one key carries at most this many, after the call's
# own 5 arguments, the entry's 3 (its key, position field and op count), an `after` check's 2
# and the op's at most 5 (code, offset, TTL and its counts), with one to spare (cachesync.plan).
MAX_RECORD_FIELDS = (MAX_REQUEST_ARGUMENTS - 16) // 2


@dataclass(frozen=True)
class TopicConfig:
    """How one Kafka topic is projected into Redis: an entry of topics.toml, with the
    environment's overrides applied."""

    name: str  # the entry's name in topics.toml: orders, inventory, products, ...
    kind: str  # DOCUMENT or STOCK_LEDGER
    topic: str  # the Kafka topic name
    key_prefix: str  # Redis key prefix, e.g. "orders" gives "orders:<id>"
    key_field: str  # JSON field of the value that names the Redis key
    ttl_seconds: int = 0  # 0 means the key never expires
    # JSON Schema (canonical JSON text) every value must match, or None: no validation
    # beyond what the projection needs. Text, not a dict, so the settings stay hashable.
    schema: str | None = None
    # Avro or Protobuf values and their schema (cachesync.values); None: JSON values
    value_format: ValueFormat | None = None
    on_update: str = REPLACE  # REPLACE or MERGE (hash and json only)
    envelope: str | None = None  # DEBEZIUM: the value is a change event; None: the value is the row
    ttl_header: str | None = None  # a record header whose value in seconds sets the key's TTL
    max_length: int = 0  # stream: trim to about this many entries (MAXLEN ~); 0: never trimmed


@dataclass(frozen=True)
class Settings:
    redis_url: str = "redis://127.0.0.1:6379/0"
    cluster: bool = False
    redis_username: str | None = None
    redis_secret_arn: str | None = None  # Secrets Manager secret with the ACL user's password
    # TLS (rediss://): CA bundle to verify the server with; None trusts the system store,
    # which holds the Amazon roots that ElastiCache certificates chain to.
    redis_ca_cert: str | None = None
    # IAM authentication (ElastiCache, Valkey 7.2+ / Redis OSS 7+): the password is a
    # SigV4-presigned elasticache:Connect request for `redis_username` on this cache.
    iam_auth: bool = False
    iam_cache_name: str | None = None  # replication group id or serverless cache name
    iam_serverless: bool = False
    aws_region: str | None = None
    socket_timeout: float = 1.0
    connect_timeout: float = 1.0
    retries: int = 3  # bounded retries on connection errors, with exponential backoff
    topics: tuple[TopicConfig, ...] = field(default_factory=tuple)
    max_value_bytes: int = 1_048_576
    dlq_queue_url: str | None = None
    dlq_stream_key: str = "deadletter:ingest"
    dlq_stream_maxlen: int = 10_000
    # Records per server-side script call: large enough to amortise the round
    # trip, small enough not to block Redis for long (a script blocks the server while it runs).
    script_batch_size: int = 1000
    # Acknowledged means replicated (cachesync.transport): None waits for one replica on each
    # primary written that has replicas; 0 never waits; N waits for N. The wait is bounded.
    wait_replicas: int | None = None
    wait_timeout_ms: int = 1000
    # Read API: the bounds that keep every read one small round trip (CORS is the HTTP API's,
    # in template.yaml, not the function's).
    products_max_skus: int = 100  # SKUs per GET /products?skus=...
    inventory_default_limit: int = 50
    inventory_max_limit: int = 500
    inventory_sku_sort_max: int = 10_000  # sort=sku reads the whole set: refuse bigger stores
    retry_after_seconds: int = 1  # Retry-After on 503 while Redis is unreachable
    # Who may read an order (cachesync.access): a token with `staff_scope` reads any; with an
    # owner rule, a shopper reads the orders whose `order_owner_field` (a dotted path into the
    # order's JSON) equals the token's `order_owner_claim`. No rule: staff only.
    order_owner_field: str | None = None
    order_owner_claim: str = "sub"
    staff_scope: str = "cachesync/staff"

    def topic(self, name: str) -> TopicConfig | None:
        return self.topics_by_name.get(name)

    def key_prefix(self, name: str) -> str:
        """The Redis key prefix of the topics.toml entry `name` (orders, inventory, products, ...)."""
        return next((t.key_prefix for t in self.topics if t.name == name), name)

    @cached_property
    def topics_by_name(self) -> dict[str, TopicConfig]:
        # cached_property writes the instance __dict__ directly, which a frozen dataclass allows
        return {t.topic: t for t in self.topics}

    @property
    def tls(self) -> bool:
        return self.redis_url.startswith("rediss://")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        url = env.get("REDIS_URL", cls.redis_url)
        scheme = urlparse(url).scheme
        if scheme not in ("redis", "rediss"):
            raise ConfigError(f"REDIS_URL must start with redis:// or rediss://, got {scheme or url!r}")
        iam_auth = _bool(env, "REDIS_IAM_AUTH", False)
        if iam_auth:
            _check_iam(env, scheme)
        return cls(
            redis_url=url,
            cluster=_bool(env, "REDIS_CLUSTER", False),
            redis_username=env.get("REDIS_USERNAME") or None,
            redis_secret_arn=env.get("REDIS_SECRET_ARN") or None,
            redis_ca_cert=env.get("REDIS_CA_CERT") or None,
            iam_auth=iam_auth,
            iam_cache_name=env.get("REDIS_IAM_CACHE_NAME") or None,
            iam_serverless=_bool(env, "REDIS_IAM_SERVERLESS", False),
            aws_region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or None,
            socket_timeout=_number(env, "REDIS_SOCKET_TIMEOUT", 1.0, float),
            connect_timeout=_number(env, "REDIS_CONNECT_TIMEOUT", 1.0, float),
            retries=_number(env, "REDIS_RETRIES", 3, int),
            topics=_topics(env),
            max_value_bytes=_number(env, "MAX_VALUE_BYTES", 1_048_576, int),
            dlq_queue_url=env.get("DLQ_QUEUE_URL") or None,
            dlq_stream_key=env.get("DLQ_STREAM_KEY") or "deadletter:ingest",
            dlq_stream_maxlen=_number(env, "DLQ_STREAM_MAXLEN", 10_000, int),
            script_batch_size=_script_batch_size(env),
            wait_replicas=_number(env, "REDIS_WAIT_REPLICAS", 0, int) if env.get("REDIS_WAIT_REPLICAS") else None,
            wait_timeout_ms=_number(env, "REDIS_WAIT_TIMEOUT_MS", 1000, int, minimum=1),
            products_max_skus=_number(env, "PRODUCTS_MAX_SKUS", 100, int, minimum=1),
            inventory_default_limit=_number(env, "INVENTORY_DEFAULT_LIMIT", 50, int, minimum=1),
            inventory_max_limit=_number(env, "INVENTORY_MAX_LIMIT", 500, int, minimum=1),
            inventory_sku_sort_max=_number(env, "INVENTORY_SKU_SORT_MAX", 10_000, int, minimum=1),
            retry_after_seconds=_number(env, "RETRY_AFTER_SECONDS", 1, int, minimum=1),
            order_owner_field=_owner_field(env),
            order_owner_claim=_single_word(env, "ORDER_OWNER_CLAIM", "sub"),
            staff_scope=_single_word(env, "STAFF_SCOPE", "cachesync/staff"),
        )


def _topics(env: Mapping[str, str]) -> tuple[TopicConfig, ...]:
    topics = tuple(_topic_config(env, entry) for entry in topic_entries())
    owners: dict[str, str] = {}
    for topic in topics:
        # a key's applied positions are per partition, not per topic: one prefix, one topic
        other = owners.setdefault(topic.key_prefix, topic.name)
        if other != topic.name:
            raise ConfigError(f"topics {other!r} and {topic.name!r} share the key prefix {topic.key_prefix!r}")
    return topics


def _check_iam(env: Mapping[str, str], scheme: str) -> None:
    """IAM authentication needs TLS, a user, a cache name and a region, and no password secret."""
    if scheme != "rediss":
        raise ConfigError("REDIS_IAM_AUTH needs a rediss:// REDIS_URL: ElastiCache accepts IAM tokens over TLS only")
    missing = [name for name in ("REDIS_USERNAME", "REDIS_IAM_CACHE_NAME") if not env.get(name)]
    if not (env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")):
        missing.append("AWS_REGION")
    if missing:
        raise ConfigError(f"REDIS_IAM_AUTH needs {', '.join(missing)}")
    if env.get("REDIS_SECRET_ARN"):
        raise ConfigError("REDIS_IAM_AUTH and REDIS_SECRET_ARN exclude each other: choose IAM or a password")


@lru_cache(maxsize=1)
def topic_entries() -> tuple[dict[str, Any], ...]:
    """The entries of topics.toml, checked: the table every per-topic setting starts from."""
    with TOPICS_FILE.open("rb") as table:
        entries = tuple(tomllib.load(table).get("topic", ()))
    names: set[str] = set()
    for number, entry in enumerate(entries, 1):
        where = f"{TOPICS_FILE.name} entry {number}"
        if isinstance(entry.get("name"), str) and entry["name"]:
            where += f" ({entry['name']})"
        for required in ("name", "kind", "topic", "key_prefix", "key_field"):
            if not isinstance(entry.get(required), str) or not entry[required]:
                raise ConfigError(f"{where} needs `{required}`")
        if not _ENTRY_NAME.fullmatch(entry["name"]) or entry["name"] in names:
            raise ConfigError(f"{where}: name {entry['name']!r} must be unique, lower case letters and digits")
        if entry["kind"] not in KINDS:
            raise ConfigError(f"{where}: kind must be one of {', '.join(KINDS)}, got {entry['kind']!r}")
        _check_shape(where, entry)
        names.add(entry["name"])
    return entries


def _check_shape(where: str, entry: Mapping[str, Any]) -> None:
    """The options an entry's kind can take, and only those."""
    kind = entry["kind"]
    unknown = sorted(set(entry) - ENTRY_FIELDS)
    if unknown:
        raise ConfigError(
            f"{where}: unknown field {', '.join(map(repr, unknown))} (known: {', '.join(sorted(ENTRY_FIELDS))})"
        )
    on_update = entry.get("on_update", REPLACE)
    if on_update not in (REPLACE, MERGE):
        raise ConfigError(f"{where}: on_update must be {REPLACE} or {MERGE}, got {on_update!r}")
    if on_update == MERGE and kind not in MERGING_KINDS:
        raise ConfigError(f'{where}: on_update = "merge" needs kind {" or ".join(MERGING_KINDS)}, not {kind}')
    envelope = entry.get("envelope")
    if envelope is not None and envelope != DEBEZIUM:
        raise ConfigError(f"{where}: envelope must be {DEBEZIUM!r} (or left out), got {envelope!r}")
    if envelope == DEBEZIUM and kind not in ENVELOPE_KINDS:
        raise ConfigError(
            f'{where}: envelope = "debezium" needs a kind that holds one row per key '
            f"({', '.join(ENVELOPE_KINDS)}), not {kind}"
        )
    if "max_length" in entry:
        length = entry["max_length"]
        if kind != STREAM:
            raise ConfigError(f"{where}: max_length is for kind stream, not {kind}")
        if type(length) is not int or length < 0:
            raise ConfigError(f"{where}: max_length must be a whole number of entries, at least 0, got {length!r}")
    header = entry.get("ttl_header")
    if header is not None and (not isinstance(header, str) or not header):
        raise ConfigError(f"{where}: ttl_header must name a record header, got {header!r}")
    ttl = entry.get("ttl_seconds", 0)
    if type(ttl) is not int or ttl < 0:
        raise ConfigError(f"{where}: ttl_seconds must be a whole number of seconds, at least 0, got {ttl!r}")


_ENTRY_NAME = re.compile(r"[a-z][a-z0-9]{0,30}")


def _topic_config(env: Mapping[str, str], entry: Mapping[str, Any]) -> TopicConfig:
    upper = entry["name"].upper()
    prefix = env.get(f"{upper}_KEY_PREFIX") or entry["key_prefix"]
    if "{" in prefix or "}" in prefix:
        raise ConfigError(f"{upper}_KEY_PREFIX must not contain braces (they pick the cluster hash slot)")
    return TopicConfig(
        name=entry["name"],
        kind=entry["kind"],
        topic=env.get(f"TOPIC_{upper}") or entry["topic"],
        key_prefix=prefix,
        key_field=env.get(f"{upper}_KEY_FIELD") or entry["key_field"],
        ttl_seconds=_number(env, f"{upper}_TTL_SECONDS", int(entry.get("ttl_seconds", 0)), int),
        schema=_schema(env, f"{upper}_SCHEMA", entry.get("schema")),
        value_format=_value_format(env, upper, entry),
        on_update=entry.get("on_update", REPLACE),
        envelope=entry.get("envelope"),
        ttl_header=entry.get("ttl_header"),
        max_length=int(entry.get("max_length", 0)),
    )


def _value_format(env: Mapping[str, str], upper: str, entry: Mapping[str, Any]) -> ValueFormat | None:
    """`<NAME>_VALUE_FORMAT`, `_VALUE_SCHEMA` and `_VALUE_WIRE_FORMAT`, else the entry's
    `value_format`, `value_schema` and `value_wire_format` (cachesync.values)."""
    kind = env.get(f"{upper}_VALUE_FORMAT") or entry.get("value_format") or "json"
    if kind.strip().lower() == "json":
        return None  # the values module (and Powertools' Kafka utility) is imported only when needed
    from cachesync import values

    schema = env.get(f"{upper}_VALUE_SCHEMA") or entry.get("value_schema") or ""
    wire = env.get(f"{upper}_VALUE_WIRE_FORMAT") or entry.get("value_wire_format") or ""
    try:
        return values.load(kind, schema, wire)
    except values.ValueFormatError as error:
        raise ConfigError(f"{upper}_VALUE_FORMAT {kind}: {error}") from None


def _schema(env: Mapping[str, str], name: str, default: str | None = None) -> str | None:
    setting = env.get(name) or default
    if not setting:
        return None
    from cachesync import schemas

    try:
        return schemas.load(setting)
    except schemas.SchemaError as error:
        raise ConfigError(f"{name} {error}") from None


def _script_batch_size(env: Mapping[str, str]) -> int:
    size = _number(env, "SCRIPT_BATCH_SIZE", 1000, int, minimum=1)
    if size > MAX_SCRIPT_BATCH_SIZE:
        raise ConfigError(
            f"SCRIPT_BATCH_SIZE must be at most {MAX_SCRIPT_BATCH_SIZE}, got {size}: a call of more mutations "
            f"could exceed the {MAX_REQUEST_ARGUMENTS} arguments ElastiCache Serverless accepts in one request"
        )
    return size


def _owner_field(env: Mapping[str, str]) -> str | None:
    """ORDER_OWNER_FIELD: a field of the order, or a dotted path to one (`customer.id`)."""
    raw = (env.get("ORDER_OWNER_FIELD") or "").strip()
    if not raw:
        return None
    if any(c.isspace() for c in raw) or "" in raw.split("."):
        raise ConfigError(f"ORDER_OWNER_FIELD must be a field name or a dotted path such as customer.id, got {raw!r}")
    return raw


def _single_word(env: Mapping[str, str], name: str, default: str) -> str:
    raw = (env.get(name) or "").strip() or default
    if any(c.isspace() for c in raw):
        raise ConfigError(f"{name} must be one word without spaces, got {raw!r}")
    return raw


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be true or false, got {raw!r}")


_N = TypeVar("_N", int, float)


def _number(env: Mapping[str, str], name: str, default: _N, kind: type[_N], minimum: _N | int = 0) -> _N:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a {kind.__name__}, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {raw!r}")
    return value


@lru_cache(maxsize=1)
def settings() -> Settings:
    """The process-wide settings, read from the environment on first use."""
    return Settings.from_env()
