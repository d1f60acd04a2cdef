"""Helpers for the read API suites (imported by the tests and conftest.py)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import redis

from cachesync import keys
from devkit.apigw import HttpReply, LocalGateway, reply_from
from devkit.sam import Handler, LocalContext, LocalFunction

ORIGIN = "https://shop.example"
OTHER_ORIGIN = "http://localhost:5173"
STAFF_SCOPE = "cachesync/staff"  # the template's StaffScope default: reads any order


def caller(subject: str = "staff-1", scopes: Iterable[str] = (STAFF_SCOPE,), **claims: str) -> dict[str, Any]:
    """`requestContext.authorizer` as the JWT authorizer hands it over: claims as strings, and
    `scopes` null on a route that asks for none (the function reads the `scope` claim then)."""
    scope = " ".join(scopes)
    return {"jwt": {"claims": {"sub": subject, **({"scope": scope} if scope else {}), **claims}, "scopes": None}}


@dataclass
class Reply:
    status: int
    headers: dict[str, str]  # lower-cased names
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Api:
    """The ApiFunction handler behind a local API Gateway."""

    handler: Handler
    gateway: LocalGateway
    function: LocalFunction

    def get(
        self,
        target: str,
        origin: str | None = None,
        method: str = "GET",
        authorizer: dict[str, Any] | None = None,
        **headers: str,
    ) -> Reply:
        """The request through the gateway; with `authorizer` (see `caller`), as one whose token
        the JWT authorizer has passed (this gateway runs no authorizer of its own)."""
        sent = [("Host", "api.example"), *((k.replace("_", "-"), v) for k, v in headers.items())]
        if origin:
            sent.append(("Origin", origin))
        if authorizer is None:
            return _reply(self.gateway.request(method, target, sent))
        event = self.gateway.event(method, target, sent)
        assert event is not None, f"no route for {method} {target}"
        event["requestContext"]["authorizer"] = authorizer
        return _reply(reply_from(self.invoke(event)))

    def invoke(self, event: dict[str, Any]) -> dict[str, Any]:
        """The handler called directly with an event, as Lambda does."""
        result: dict[str, Any] = self.handler(event, LocalContext(self.function))
        return result


def _reply(raw: HttpReply) -> Reply:
    return Reply(raw.status, {k.lower(): v for k, v in raw.headers}, raw.body)


def stock(client: redis.Redis, store_id: str, quantities: dict[str, float]) -> None:
    if quantities:
        client.zadd(keys.inventory_key(store_id), {keys.sku_member(s): q for s, q in quantities.items()})


def walk(api: Api, store_id: str, query: str, limit: int, between: Callable[[], None] = lambda: None) -> list[Any]:
    """Every item of every page, following nextCursor to the end."""
    items: list[Any] = []
    cursor: str | None = None
    for _ in range(10_000):
        target = f"/stores/{store_id}/inventory?limit={limit}{query}" + (f"&cursor={cursor}" if cursor else "")
        reply = api.get(target)
        assert reply.status == 200, reply.body
        page = reply.json
        assert len(page["items"]) <= limit
        items.extend(page["items"])
        cursor = page["nextCursor"]
        if cursor is None:
            return items
        between()
    raise AssertionError("paging did not end")


def skus(items: Iterable[dict[str, Any]]) -> list[str]:
    return [item["sku"] for item in items]
