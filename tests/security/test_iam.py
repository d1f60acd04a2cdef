"""ElastiCache IAM authentication: the token is botocore's SigV4 presigned connect request,
it is cached and refreshed on time, and the connection factory uses it by configuration."""

from __future__ import annotations

import datetime
import hashlib
import hmac
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

import botocore.auth
import pytest
import redis
from botocore.compat import HAS_CRT
from botocore.credentials import Credentials
from botocore.hooks import HierarchicalEmitter
from botocore.model import ServiceId
from botocore.signers import RequestSigner

from cachesync.config import ConfigError, Settings
from cachesync.connection import client_options, get_client
from cachesync.iam_auth import ElastiCacheIAMProvider
from cachesync.ingest import build_ingestor
from devkit import acl
from devkit.generator import EventGenerator
from tests.security.tlskit import Pki, TlsServer

ACCESS_KEY, SECRET_KEY = "AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
FROZEN = datetime.datetime(2026, 3, 1, 12, 30, 45)
REGION = "eu-west-1"


@pytest.fixture
def frozen_clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[datetime.datetime]]:
    """botocore's signing clock, held at FROZEN until a test moves it."""
    now = [FROZEN]

    def clock(remove_tzinfo: bool = True) -> datetime.datetime:
        return now[0] if remove_tzinfo else now[0].replace(tzinfo=datetime.UTC)

    monkeypatch.setattr(botocore.auth, "get_current_datetime", clock)
    if HAS_CRT:  # botocore signs with the AWS CRT when it is installed (not in the Lambda runtime)
        from botocore.crt import auth as crt_auth

        monkeypatch.setattr(crt_auth, "get_current_datetime", clock)
    yield now


def botocore_presigned(credentials: Credentials, cache: str, user: str, serverless: bool) -> str:
    """The token as AWS documents it: RequestSigner.generate_presigned_url, minus https://.

    botocore signs through the AWS CRT when it is installed (here, but not in the Lambda
    runtime, where the provider's pure-Python SigV4QueryAuth runs): then this is an
    independent implementation, whose query parameters come in another order."""
    emitter = HierarchicalEmitter()  # the signer keeps only a weak reference to it
    signer = RequestSigner(ServiceId("elasticache"), REGION, "elasticache", "v4", credentials, emitter)
    query = f"Action=connect&User={quote(user)}" + ("&ResourceType=ServerlessCache" if serverless else "")
    url = signer.generate_presigned_url(
        {"method": "GET", "url": f"https://{cache}/?{query}", "body": {}, "headers": {}, "context": {}},
        operation_name="connect",
        expires_in=900,
        region_name=REGION,
    )
    return str(url).removeprefix("https://")


@pytest.mark.parametrize("serverless", [False, True])
@pytest.mark.parametrize("session_token", [None, "FQoGZXIvYXdzEXAMPLE//token=="])
def test_the_token_is_botocores_presigned_connect_request(
    frozen_clock: Any, serverless: bool, session_token: str | None
) -> None:
    credentials = Credentials(ACCESS_KEY, SECRET_KEY, session_token)
    provider = ElastiCacheIAMProvider("app-user", "orders-cache", REGION, serverless, credentials=credentials)
    token = provider.sign()
    reference = botocore_presigned(credentials, "orders-cache", "app-user", serverless)
    if HAS_CRT:
        assert _split(token) == _split(reference)
    else:
        assert token == reference

    assert not token.startswith("https://")
    assert token.partition("/?")[0] == "orders-cache"
    params = params_of(token)
    assert params["Action"] == "connect" and params["User"] == "app-user"
    assert params.get("ResourceType") == ("ServerlessCache" if serverless else None)
    assert params["X-Amz-Algorithm"] == "AWS4-HMAC-SHA256"
    assert params["X-Amz-Credential"] == f"{ACCESS_KEY}/20260301/{REGION}/elasticache/aws4_request"
    assert params["X-Amz-Date"] == "20260301T123045Z"
    assert params["X-Amz-Expires"] == "900"
    assert params["X-Amz-SignedHeaders"] == "host"
    assert params.get("X-Amz-Security-Token") == session_token
    assert params["X-Amz-Signature"] == _sigv4_signature(token), "not a valid SigV4 signature"


def params_of(token: str) -> dict[str, str]:
    return dict(parse_qsl(token.partition("/?")[2], keep_blank_values=True))


def _split(token: str) -> tuple[str, list[tuple[str, str]]]:
    host, _, query = token.partition("/?")
    return host, sorted(parse_qsl(query, keep_blank_values=True))


def _sigv4_signature(token: str) -> str:
    """SigV4 computed from the specification (not botocore), over the token's own parameters."""
    parts = urlsplit("https://" + token)
    params = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "X-Amz-Signature"]
    canonical_query = "&".join(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in sorted(params))
    canonical_request = "\n".join(
        ["GET", "/", canonical_query, f"host:{parts.netloc}", "", "host", hashlib.sha256(b"").hexdigest()]
    )
    stamp = dict(params)["X-Amz-Date"]
    scope = f"{stamp[:8]}/{REGION}/elasticache/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", stamp, scope, hashlib.sha256(canonical_request.encode()).hexdigest()])
    key = f"AWS4{SECRET_KEY}".encode()
    for part in (stamp[:8], REGION, "elasticache", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_the_token_is_cached_and_refreshed_before_it_expires(frozen_clock: list[datetime.datetime]) -> None:
    clock = Clock()
    provider = ElastiCacheIAMProvider(
        "app-user", "orders-cache", REGION, credentials=Credentials(ACCESS_KEY, SECRET_KEY), clock=clock
    )
    signed: list[str] = []
    sign = provider.sign
    provider.sign = lambda: signed.append(sign()) or signed[-1]  # type: ignore[method-assign]

    user, first = provider.get_credentials()
    assert user == "app-user" and len(signed) == 1
    for elapsed in (1, 300, 599.9):  # every new connection within 10 minutes reuses the token
        clock.now = 1_000_000.0 + elapsed
        assert provider.get_credentials() == ("app-user", first)
    assert len(signed) == 1

    # 10 minutes on, with 5 of its 15 minutes left, the next connection gets a new token
    clock.now = 1_000_600.0
    frozen_clock[0] = FROZEN + datetime.timedelta(seconds=600)
    _, second = provider.get_credentials()
    assert len(signed) == 2 and second != first
    assert "X-Amz-Date=20260301T124045Z" in second
    assert provider.get_credentials() == ("app-user", second)

    clock.now -= 3600  # the clock stepped back: never trust a token "from the future"
    provider.get_credentials()
    assert len(signed) == 3


def test_refresh_must_come_before_expiry() -> None:
    with pytest.raises(ValueError, match="refresh_after"):
        ElastiCacheIAMProvider("u", "c", REGION, refresh_after=900)


IAM_ENV = {
    "REDIS_URL": "rediss://orders-cache-abc123.serverless.euw1.cache.amazonaws.com:6379/0",
    "REDIS_CLUSTER": "true",
    "REDIS_IAM_AUTH": "true",
    "REDIS_USERNAME": "cachesync-ingest",
    "REDIS_IAM_CACHE_NAME": "Orders-Cache",
    "REDIS_IAM_SERVERLESS": "true",
    "AWS_REGION": REGION,
}


def test_the_factory_uses_the_provider_when_configured() -> None:
    options = client_options(Settings.from_env(IAM_ENV))
    provider = options["credential_provider"]
    assert isinstance(provider, ElastiCacheIAMProvider)
    assert (provider.user, provider.cache_name, provider.region, provider.serverless) == (
        "cachesync-ingest",
        "orders-cache",
        REGION,
        True,
    )
    assert "password" not in options and "username" not in options
    assert options["ssl_cert_reqs"] == "required" and options["ssl_check_hostname"] is True
    without = client_options(Settings.from_env({**IAM_ENV, "REDIS_IAM_AUTH": "false"}))
    assert "credential_provider" not in without


@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        ({"REDIS_URL": "redis://cache:6379/0"}, "rediss://"),
        ({"REDIS_USERNAME": ""}, "REDIS_USERNAME"),
        ({"REDIS_IAM_CACHE_NAME": ""}, "REDIS_IAM_CACHE_NAME"),
        ({"AWS_REGION": ""}, "AWS_REGION"),
        ({"REDIS_SECRET_ARN": "arn:aws:secretsmanager:eu-west-1:1:secret:x"}, "exclude"),
    ],
)
def test_incomplete_iam_configuration_is_refused(change: dict[str, str], complaint: str) -> None:
    with pytest.raises(ConfigError, match=complaint):
        Settings.from_env({**IAM_ENV, **change})


def test_ingest_authenticates_with_the_token_over_tls(
    frozen_clock: Any, tls_redis: TlsServer, pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real server whose user's password is the token the frozen clock gives: the factory,
    configured for IAM, must send exactly that user and token (AUTH) to get in."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    settings = Settings.from_env(
        {
            "REDIS_URL": tls_redis.url(),
            "REDIS_CA_CERT": str(pki.ca),
            "REDIS_IAM_AUTH": "true",
            "REDIS_USERNAME": "iam-ingest",
            "REDIS_IAM_CACHE_NAME": "local-cache",
            "AWS_REGION": REGION,
            "REDIS_RETRIES": "0",
        }
    )
    # the password: the token as AWS's recipe makes it, derived here without the provider. The
    # server compares it byte for byte, so botocore signs in pure Python, as in the Lambda runtime
    # (its CRT signer, installed here, orders two query parameters otherwise; ElastiCache reads any order).
    monkeypatch.setitem(botocore.auth.AUTH_TYPE_MAPS, "v4-query", botocore.auth.SigV4QueryAuth)
    expected = botocore_presigned(Credentials(ACCESS_KEY, SECRET_KEY), "local-cache", "iam-ingest", serverless=False)
    assert params_of(expected)["X-Amz-Signature"] == _sigv4_signature(expected)
    admin = redis.Redis.from_url(tls_redis.admin_url)
    admin.flushall()
    admin.execute_command(*acl.ingest_rule(settings).setuser_args("iam-ingest", expected))

    client = get_client(settings)
    assert client.ping() is True
    outcome = build_ingestor(settings).process(EventGenerator(seed=3).batch(50))
    assert outcome.applied == 50
    assert "iam-ingest" in {c["user"] for c in admin.client_list() if c.get("name") == "cachesync"}

    admin.execute_command("ACL", "SETUSER", "iam-ingest", "resetpass", ">a-stale-token")
    client.connection_pool.disconnect()
    with pytest.raises(redis.exceptions.AuthenticationError):
        client.ping()
