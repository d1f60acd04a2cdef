"""Helpers for the read API suites (imported by the tests and conftest.py)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import redis

from cachesync import keys
from devkit.apigw import HttpReply, LocalGateway
from devkit.sam import Handler, LocalContext, LocalFunction

ORIGIN = "https://shop.example"
OTHER_ORIGIN = "http://localhost:5173"


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

    def get(self, target: str, origin: str | None = None, method: str = "GET", **headers: str) -> Reply:
        sent = [("Host", "api.example"), *((k.replace("_", "-"), v) for k, v in headers.items())]
        if origin:
            sent.append(("Origin", origin))
        return _reply(self.gateway.request(method, target, sent))

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
