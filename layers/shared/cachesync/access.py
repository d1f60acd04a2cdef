"""Who may read an order: the caller's verified token against the deploy's ownership rule.

The HTTP API's JWT authorizer checks the token (signature, issuer, audience, times)
before the function runs and hands its claims over as
`requestContext.authorizer.jwt` (claims as strings; `scopes` only on routes that
ask for scopes, so the scopes are read from the `scope` or `scp` claim too). Which
orders a valid token may read is decided here, on the order itself:

- a token with the staff scope (`STAFF_SCOPE`) reads any order;
- with an ownership rule (`ORDER_OWNER_FIELD`, `ORDER_OWNER_CLAIM`), a shopper reads
  the orders whose owner field equals the token's claim, exactly; any other order
  answers as a missing one would, so ids that are not yours tell you nothing;
- without a rule (orders carry no owner, as Datagen's do), only staff read orders.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from cachesync.config import Settings


class Unauthenticated(Exception):
    """The request carries no verified token: the route was reached without the authorizer."""


class Forbidden(Exception):
    """A verified token that may not read orders at all."""


@dataclass(frozen=True, slots=True)
class Caller:
    claims: Mapping[str, str]
    scopes: frozenset[str]

    @classmethod
    def from_event(cls, event: Mapping[str, Any]) -> Caller:
        """The caller as the JWT authorizer described it in the payload v2 event."""
        jwt = ((event.get("requestContext") or {}).get("authorizer") or {}).get("jwt")
        if not isinstance(jwt, dict) or not isinstance(jwt.get("claims"), dict):
            raise Unauthenticated("no verified token: this route must sit behind the API's JWT authorizer")
        claims = {str(k): v if isinstance(v, str) else str(v) for k, v in jwt["claims"].items()}
        scopes = set(jwt.get("scopes") or ())
        for name in ("scope", "scp"):
            # API Gateway hands a list claim over as "[a b]"
            scopes.update(claims.get(name, "").strip("[]").split())
        return cls(claims, frozenset(str(s) for s in scopes))


class OrderAccess:
    def __init__(self, settings: Settings):
        self.staff_scope = settings.staff_scope
        self.owner_claim = settings.order_owner_claim
        self.owner_path = tuple(settings.order_owner_field.split(".")) if settings.order_owner_field else None

    def needs_order(self, caller: Caller) -> bool:
        """Whether reading the order can change the answer; raises Forbidden when nothing can."""
        if self.staff_scope in caller.scopes:
            return False
        if self.owner_path is None:
            raise Forbidden(f"reading orders needs a token with the {self.staff_scope} scope")
        if not caller.claims.get(self.owner_claim):
            raise Forbidden(f"reading your orders needs a token with the {self.owner_claim} claim")
        return True

    def owns(self, caller: Caller, order: bytes) -> bool:
        """Whether the order's owner field equals the caller's claim (after `needs_order`)."""
        assert self.owner_path is not None
        try:
            value: Any = orjson.loads(order)
        except orjson.JSONDecodeError:
            try:  # what orjson refuses and a topic may still carry (integers beyond 64 bits)
                value = json.loads(order)
            except (ValueError, RecursionError):
                return False  # no readable owner: staff only
        for part in self.owner_path:
            if not isinstance(value, dict):
                return False
            value = value.get(part)
        if isinstance(value, bool) or not isinstance(value, str | int):
            return False
        return str(value) == caller.claims.get(self.owner_claim)
