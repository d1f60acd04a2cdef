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
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

import redis
from redis.backoff import ExponentialBackoff
from redis.cluster import RedisCluster
from redis.retry import Retry

from cachesync.config import Settings

RedisClient = redis.Redis | RedisCluster


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


@lru_cache(maxsize=4)
def get_client(settings: Settings) -> RedisClient:
    """The process-wide client for these settings (created on first use)."""
    options = client_options(settings)
    if settings.cluster:
        return RedisCluster.from_url(settings.redis_url, **options)
    return redis.Redis.from_url(settings.redis_url, **options)
