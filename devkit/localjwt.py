"""Tokens for the local gateway, checked the way the HTTP API's JWT authorizer checks them.

`make run` has no identity provider, so it signs its own tokens with an RSA key
it keeps in `.local/jwt/` (ignored by git, made on first use) and checks them
against that key's JWKS, as API Gateway checks a deployed provider's tokens
against the keys at its issuer's `jwks_uri`:

- the token comes from the identity source, alone or after `Bearer `;
- an RSA signature (RS256/384/512) by the JWKS key its `kid` names;
- `iss` is the authorizer's issuer; `aud` is one of its audiences (or, with no
  `aud`, `client_id` is); `exp` is in the future, `nbf` and `iat` are not;
- a route with scopes needs one of them in `scope` (space-separated) or `scp`.

A failed check is 401 `{"message":"Unauthorized"}` with a `www-authenticate`
header saying why; a valid token without the route's scope is 403
`{"message":"Forbidden"}`. A passed one reaches the function as
`requestContext.authorizer.jwt`: the claims as strings, and the scopes.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from devkit.sam import ROOT

KEY_FILE = ROOT / ".local" / "jwt" / "signing-key.pem"
# what `make run` passes for the template's JwtIssuer and JwtAudience parameters
LOCAL_ISSUER = "https://idp.cachesync.local"
LOCAL_AUDIENCE = "cachesync-local"
ALGORITHMS = ("RS256", "RS384", "RS512")  # API Gateway takes RSA-signed tokens only


def signing_key(path: Path = KEY_FILE) -> rsa.RSAPrivateKey:
    """The local issuer's private key, made (and kept, readable by its owner only) on first use."""
    if path.exists():
        loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(loaded, rsa.RSAPrivateKey):
            raise SystemExit(f"{path} is not an RSA key: delete it to make a new one")
        return loaded
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path.parent.mkdir(parents=True, exist_ok=True)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    temporary = path.with_suffix(f".{uuid.uuid4().hex}.tmp")
    temporary.touch(mode=0o600)
    temporary.write_bytes(pem)
    temporary.replace(path)  # two runs starting at once: one key wins, both read it back
    return signing_key(path)


def public_jwk(key: rsa.RSAPrivateKey) -> dict[str, str]:
    """The public half as a JWK, its `kid` the RFC 7638 thumbprint."""
    numbers = key.public_key().public_numbers()

    def b64(value: int) -> str:
        raw = value.to_bytes((value.bit_length() + 7) // 8, "big")
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    jwk = {"e": b64(numbers.e), "kty": "RSA", "n": b64(numbers.n)}
    thumbprint = hashlib.sha256(json.dumps(jwk, separators=(",", ":"), sort_keys=True).encode()).digest()
    kid = base64.urlsafe_b64encode(thumbprint).rstrip(b"=").decode()
    return {**jwk, "kid": kid, "use": "sig", "alg": "RS256"}


def jwks(key: rsa.RSAPrivateKey) -> dict[str, Any]:
    return {"keys": [public_jwk(key)]}


def mint(
    key: rsa.RSAPrivateKey,
    subject: str,
    scopes: Iterable[str] = (),
    issuer: str = LOCAL_ISSUER,
    audience: str = LOCAL_AUDIENCE,
    lifetime_s: int = 12 * 3600,
    now: float | None = None,
    **claims: Any,
) -> str:
    """A signed access token, as an OIDC provider would issue it."""
    issued = int(time.time() if now is None else now)
    payload: dict[str, Any] = {
        "iss": issuer,
        "sub": subject,
        "aud": audience,
        "iat": issued,
        "nbf": issued,
        "exp": issued + lifetime_s,
        "jti": uuid.uuid4().hex,
        **({"scope": " ".join(scopes)} if scopes else {}),
        **claims,
    }
    return jwt.encode(payload, key, algorithm="RS256", headers={"kid": public_jwk(key)["kid"]})


@dataclass(frozen=True)
class Verdict:
    """What the authorizer decided: `status` 200 to pass the request on, else the answer."""

    status: int
    claims: dict[str, Any] = field(default_factory=dict)
    scopes: list[str] | None = None
    www_authenticate: str | None = None

    def context(self) -> dict[str, Any]:
        """`requestContext.authorizer` of the payload v2 event: claims as strings, as API Gateway sends them."""
        claims = {k: v if isinstance(v, str) else _claim_text(v) for k, v in self.claims.items()}
        return {"jwt": {"claims": claims, "scopes": self.scopes}}


def _claim_text(value: Any) -> str:
    if isinstance(value, list):
        return "[" + " ".join(str(v) for v in value) + "]"
    return str(value).lower() if isinstance(value, bool) else str(value)


def _refused(description: str, scopes: Sequence[str] = ()) -> Verdict:
    challenge = f'Bearer scope="{" ".join(scopes)}" error="invalid_token" error_description="{description}"'
    return Verdict(401, www_authenticate=challenge)


@dataclass(frozen=True)
class JwtAuthorizer:
    """An HTTP API JWT authorizer: issuer, audiences, identity source, and the keys it trusts."""

    issuer: str
    audiences: tuple[str, ...]
    keys: Mapping[str, Any]  # kid -> public key
    identity_header: str = "authorization"

    @classmethod
    def from_jwks(
        cls, issuer: str, audiences: Iterable[str], key_set: Mapping[str, Any], identity_header: str = "authorization"
    ) -> JwtAuthorizer:
        keys = {k["kid"]: jwt.PyJWK.from_dict(k).key for k in key_set.get("keys", []) if k.get("kty") == "RSA"}
        return cls(issuer, tuple(audiences), keys, identity_header.lower())

    def authorize(self, headers: Mapping[str, str], route_scopes: Sequence[str] = ()) -> Verdict:
        """`headers` lower-cased, repeats joined; `route_scopes` what the route asks for (any one)."""
        raw = (headers.get(self.identity_header) or "").strip()
        if not raw:
            return Verdict(401, www_authenticate="Bearer")
        token = raw[7:].strip() if raw[:7].lower() == "bearer " else raw
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            return _refused("the token is not a valid JWT", route_scopes)
        if header.get("alg") not in ALGORITHMS:
            return _refused("the token is not signed with an RSA algorithm", route_scopes)
        key = self.keys.get(str(header.get("kid")))
        if key is None:
            return _refused("the token's kid is not one of the issuer's keys", route_scopes)
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=list(ALGORITHMS),
                issuer=self.issuer,
                options={"require": ["exp", "iss"], "verify_aud": False, "verify_iat": True},
            )
        except jwt.ExpiredSignatureError:
            return _refused("the token has expired", route_scopes)
        except jwt.ImmatureSignatureError:
            return _refused("the token is not valid yet", route_scopes)
        except jwt.InvalidIssuerError:
            return _refused("the token does not have a valid issuer", route_scopes)
        except jwt.InvalidSignatureError:
            return _refused("the token's signature is not valid", route_scopes)
        except jwt.PyJWTError as error:
            return _refused(f"the token is not valid: {error}", route_scopes)
        audience = claims.get("aud", claims.get("client_id"))  # client_id only when there is no aud
        audiences = audience if isinstance(audience, list) else [audience]
        if not any(a in self.audiences for a in audiences if isinstance(a, str)):
            return _refused("the token does not have a valid audience", route_scopes)
        granted = _scopes(claims)
        if route_scopes and not set(route_scopes) & set(granted):
            challenge = (
                f'Bearer scope="{" ".join(route_scopes)}" error="insufficient_scope" '
                'error_description="the token does not have the required scopes"'
            )
            return Verdict(403, claims=claims, www_authenticate=challenge)
        return Verdict(200, claims=claims, scopes=granted if route_scopes else None)


def _scopes(claims: Mapping[str, Any]) -> list[str]:
    granted: list[str] = []
    for name in ("scope", "scp"):
        value = claims.get(name)
        if isinstance(value, str):
            granted += value.split()
        elif isinstance(value, list):
            granted += [str(v) for v in value]
    return granted
