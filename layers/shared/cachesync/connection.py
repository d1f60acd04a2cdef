"""The one Redis connection factory, shared by both functions.

Clients are created once per process and reused across warm invocations.
Standalone or cluster (ElastiCache Serverless and cluster-mode caches need the
cluster client), TLS from a `rediss://` URL (certificate and host name always
verified, against REDIS_CA_CERT or the system trust store), ACL credentials from
the URL, the environment, a Secrets Manager secret fetched once through
Powertools Parameters, or ElastiCache IAM tokens (`cachesync.iam_auth`).
Every call has explicit timeouts and a bounded, backed-off retry on connection
errors, so a dead cache fails an invocation quickly instead of
hanging until the Lambda timeout.

Lambda SnapStart (ApiFunction) snapshots the initialized process and resumes copies
of it later, elsewhere, possibly days later: a socket, a secret or an IAM token in
the snapshot would be stale. The runtime hooks registered here drop every client
(its connections, the cached secret and token with it) before the snapshot, and
after a restore build them again with a secret fetched anew and a freshly signed
token, and connect, so the first request finds a working connection.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from collections import OrderedDict
from typing import Any

import redis
from redis.backoff import ExponentialBackoff
from redis.cluster import RedisCluster
from redis.retry import Retry

from cachesync import snapstart
from cachesync.config import Settings

RedisClient = redis.Redis | RedisCluster

logger = logging.getLogger(__name__)


# The cache refusing a function's credentials or permissions: no retry helps until someone fixes the
# cache user, its secret or its access string (docs/operations.md, CacheAuthAlarm).
AUTH_FAILURES = (
    redis.exceptions.AuthenticationError,  # WRONGPASS, NOAUTH
    redis.exceptions.AuthorizationError,
    redis.exceptions.NoPermissionError,  # NOPERM
)
# what Redis 7 and Valkey answer when a script calls a command its user may not run
_DENIED_IN_SCRIPT = ("user executing the script can't run this command", "ACL failure in script", "NOPERM")


def cache_auth_failure(error: BaseException | None) -> BaseException | None:
    """The WRONGPASS, NOAUTH or NOPERM behind `error`, if any: the cluster client wraps what
    it met while connecting, and a script's denied call comes back as a plain ResponseError."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, AUTH_FAILURES):
            return error
        if isinstance(error, redis.exceptions.ResponseError) and any(m in str(error) for m in _DENIED_IN_SCRIPT):
            return error
        error = error.__cause__ or error.__context__
    return None


def client_options(settings: Settings) -> dict[str, Any]:
    options: dict[str, Any] = {
        "socket_timeout": settings.socket_timeout,
        "socket_connect_timeout": settings.connect_timeout,
        "retry": Retry(ExponentialBackoff(cap=0.5, base=0.02), settings.retries),
        "retry_on_error": [redis.exceptions.ConnectionError, redis.exceptions.TimeoutError],
        "health_check_interval": 30,
        "client_name": "cachesync",
        # no CLIENT SETINFO on connect: Redis 7.0 lacks it, the ACL users do not grant it
        # (devkit/acl.py), and it costs two round trips per new connection
        "driver_info": None,
    }
    if settings.tls:
        options.update(tls_options(settings))
    if settings.iam_auth:
        from cachesync.iam_auth import provider_for

        options["credential_provider"] = provider_for(settings)  # a fresh token per connection
        return options
    username, password = credentials(settings)
    if username:
        options["username"] = username
    if password:
        options["password"] = password
    return options


def tls_options(settings: Settings) -> dict[str, Any]:
    """Certificate and host name verification always on; the CA bundle from REDIS_CA_CERT or the system."""
    options: dict[str, Any] = {"ssl_cert_reqs": "required", "ssl_check_hostname": True}
    if settings.redis_ca_cert:
        options["ssl_ca_certs"] = settings.redis_ca_cert
    return options


def credentials(settings: Settings) -> tuple[str | None, str | None]:
    """(username, password) for the Redis ACL user, or (None, None) to use the URL's."""
    if not settings.redis_secret_arn:
        return settings.redis_username, None
    from aws_lambda_powertools.utilities import parameters  # imported only when a secret is used

    secret = parameters.get_secret(settings.redis_secret_arn, max_age=3600)
    text = secret.decode() if isinstance(secret, bytes) else str(secret)
    try:
        document = json.loads(text)
    except ValueError:
        return settings.redis_username, text  # a plain password
    if not isinstance(document, dict) or "password" not in document:
        raise ValueError('REDIS_SECRET_ARN must hold a password or JSON {"username", "password"}')
    return document.get("username") or settings.redis_username, document["password"]


_CLIENTS_KEPT = 4  # a function uses one; tests and tools switch between a few servers
_clients: OrderedDict[Settings, RedisClient] = OrderedDict()
_clients_lock = threading.Lock()


def get_client(settings: Settings) -> RedisClient:
    """The process-wide client for these settings (created on first use)."""
    with _clients_lock:
        client = _clients.get(settings)
        if client is None:
            client = _clients[settings] = _new_client(settings)
            while len(_clients) > _CLIENTS_KEPT:
                _clients.popitem(last=False)  # the least recently used: its sockets close with it
        else:
            _clients.move_to_end(settings)
        return client


def _new_client(settings: Settings) -> RedisClient:
    options = client_options(settings)
    if settings.cluster:
        return RedisCluster.from_url(settings.redis_url, **options)
    return redis.Redis.from_url(settings.redis_url, **options)


def drop_clients() -> list[Settings]:
    """Closes every client (their pooled connections) and forgets them, and the cached secrets
    with them: the next `get_client` builds a client with credentials fetched or signed anew.
    Returns the settings the clients were for."""
    with _clients_lock:
        dropped = list(_clients.items())
        _clients.clear()
    for _, client in dropped:
        try:
            client.close()
        except redis.exceptions.RedisError as error:  # closing a dead connection may complain
            logger.warning("closing a cache client failed", extra={"error": repr(error)})
    if "aws_lambda_powertools.utilities.parameters" in sys.modules:  # only if a secret was read
        from aws_lambda_powertools.utilities import parameters

        parameters.clear_caches()  # type: ignore[no-untyped-call]
    return [settings for settings, _ in dropped]


# --- Lambda SnapStart runtime hooks ---------------------------------------------------
_restore_after_snapshot: list[Settings] = []


def before_snapshot() -> None:
    """No connection, secret or token may go into the snapshot: close and forget them all."""
    _restore_after_snapshot[:] = drop_clients()


def after_restore() -> None:
    """Build the clients the snapshot's process had again, with a fresh secret and IAM token, and
    connect them now. Never raises: a cache that cannot be reached yet is the first request's
    concern (its 503), not a failed restore."""
    drop_clients()  # anything opened between the snapshot and now belongs to the old process
    for settings in _restore_after_snapshot:
        try:
            get_client(settings).ping()
        except Exception as error:  # a failing hook fails the restore; the request can say more
            logger.warning("reconnecting to the cache after a restore failed", extra={"error": repr(error)})


snapstart.register(before_snapshot=before_snapshot, after_restore=after_restore)
