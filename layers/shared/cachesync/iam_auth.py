"""IAM authentication for ElastiCache (Valkey 7.2+, Redis OSS 7+).

With an IAM-enabled ElastiCache user, the password sent in AUTH/HELLO is a
SigV4-presigned `elasticache:Connect` request instead of a stored secret:

    GET https://<cache name>/?Action=connect&User=<user id>[&ResourceType=ServerlessCache]

signed for the `elasticache` service with X-Amz-Expires=900, minus the
`https://` scheme. ElastiCache checks the token only when a connection
authenticates; a connection lives on after the token expires (ElastiCache closes
it after 12 hours, and redis-py's retry reconnects with a fresh token).

The provider signs with the function's role credentials (the Lambda
environment's), caches the token, and signs a new one `refresh_after` seconds
after the last, well before the 15 minutes run out, so a connection opened at
any moment gets a token with minutes to spare.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

from redis.credentials import CredentialProvider

from cachesync.config import Settings

SERVICE = "elasticache"
TOKEN_LIFETIME_SECONDS = 900  # the longest ElastiCache accepts
REFRESH_AFTER_SECONDS = 600  # a cached token is at least 5 minutes from expiry when used


class ElastiCacheIAMProvider(CredentialProvider):
    """(user, token) for redis-py; thread-safe, one signature per `refresh_after` seconds."""

    def __init__(
        self,
        user: str,
        cache_name: str,
        region: str,
        serverless: bool = False,
        credentials: Any = None,
        clock: Callable[[], float] = time.time,
        refresh_after: float = REFRESH_AFTER_SECONDS,
    ):
        if not 0 < refresh_after < TOKEN_LIFETIME_SECONDS:
            raise ValueError(f"refresh_after must be between 0 and {TOKEN_LIFETIME_SECONDS} seconds")
        # ElastiCache names are lower case; the signed host must be exactly the cache name.
        self.user, self.cache_name, self.region = user, cache_name.lower(), region
        self.serverless = serverless
        self._credentials = credentials
        self._clock, self._refresh_after = clock, refresh_after
        self._lock = threading.Lock()
        self._token: str | None = None
        self._signed_at = 0.0

    def get_credentials(self) -> tuple[str, str]:
        with self._lock:
            now = self._clock()
            if self._token is None or now - self._signed_at >= self._refresh_after or now < self._signed_at:
                self._token = self.sign()
                self._signed_at = now
            return self.user, self._token

    def sign(self) -> str:
        """A fresh token: the presigned connect request without its scheme."""
        from botocore.auth import SigV4QueryAuth  # botocore ships with the Lambda Python runtime
        from botocore.awsrequest import AWSRequest

        request = AWSRequest(method="GET", url=self.request_url())
        SigV4QueryAuth(self._frozen_credentials(), SERVICE, self.region, expires=TOKEN_LIFETIME_SECONDS).add_auth(
            request
        )
        url: str = request.prepare().url
        return url.removeprefix("https://")

    def request_url(self) -> str:
        query = {"Action": "connect", "User": self.user}
        if self.serverless:
            query["ResourceType"] = "ServerlessCache"
        return f"https://{self.cache_name}/?{urlencode(query)}"

    def _frozen_credentials(self) -> Any:
        credentials = self._credentials
        if credentials is None:
            import botocore.session

            # resolved on each signature: role credentials rotate, botocore refreshes them
            credentials = botocore.session.get_session().get_credentials()
        if credentials is None:
            raise RuntimeError("REDIS_IAM_AUTH is on but no AWS credentials were found to sign the token with")
        return credentials.get_frozen_credentials() if hasattr(credentials, "get_frozen_credentials") else credentials


def provider_for(settings: Settings) -> ElastiCacheIAMProvider:
    """The provider the settings describe (`Settings.from_env` has checked they are complete)."""
    if not (settings.redis_username and settings.iam_cache_name and settings.aws_region):
        raise ValueError("IAM authentication needs REDIS_USERNAME, REDIS_IAM_CACHE_NAME and AWS_REGION")
    return ElastiCacheIAMProvider(
        settings.redis_username, settings.iam_cache_name, settings.aws_region, serverless=settings.iam_serverless
    )
