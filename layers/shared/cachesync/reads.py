"""The read side: what the API asks Redis, one round trip per request.

Plain functions over a Redis client, no HTTP: the API handler maps the
exceptions here to status codes. Every key name comes from `keys`, and every
identifier is checked against `keys.IDENTIFIER` before it becomes part of a
key, so no input can reach another key, the applied-offsets hashes, or
a pattern.

Inventory paging uses keyset cursors: the cursor holds the last item returned
((quantity, sku) or sku), never an offset, so items written or removed
elsewhere in the set while a client pages do not shift the pages.

- sort=sku: every SKU that stays in the store for the whole walk is returned
  exactly once, whatever happens to its quantity meanwhile.
- sort=quantity: every SKU whose quantity does not change during the walk is
  returned exactly once; one whose quantity changes may move across the
  cursor and show up twice or not at all (it is listed where it was, or where
  it is now).

What a request costs Redis is bounded whatever the client sends, since cursors
are the client's to forge: a sort=quantity page is O(log N + page size) from
any cursor (O(log² N) when the cursor's SKU moved or is not in the store), and
sort=sku, which has to read the store, counts it first in O(log N) and refuses
one of more than INVENTORY_SKU_SORT_MAX SKUs without reading it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import time
from dataclasses import dataclass
from typing import Any, Literal, cast

import orjson
import redis
from redis.cluster import RedisCluster

from cachesync import keys
from cachesync.config import Settings

Sort = Literal["quantity", "sku"]
SORTS: tuple[Sort, ...] = ("quantity", "sku")
CURSOR_VERSION = 1
_SKU_PREFIX = keys.SKU_MEMBER_PREFIX.encode()


class ReadError(Exception):
    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class BadRequest(ReadError):
    """The request cannot be answered as asked (the client should change it)."""


class NotFound(ReadError):
    """The cache holds nothing under that name."""


@dataclass(frozen=True, slots=True)
class InventoryItem:
    sku: str
    quantity: int | float

    def as_dict(self) -> dict[str, Any]:
        return {"sku": self.sku, "quantity": self.quantity}


@dataclass(frozen=True, slots=True)
class InventoryPage:
    store: str
    sort: Sort
    below: int | None
    # the items as InventoryItem.as_dict() has them: plain dicts, because a page builds
    # up to 500 of them per request and dicts are cheaper to build than frozen dataclasses
    rows: list[dict[str, Any]]
    next_cursor: str | None

    @property
    def items(self) -> list[InventoryItem]:
        return [InventoryItem(row["sku"], row["quantity"]) for row in self.rows]

    def as_dict(self) -> dict[str, Any]:
        return {
            "store": self.store,
            "sort": self.sort,
            "below": self.below,
            "items": self.rows,
            "nextCursor": self.next_cursor,
        }

    def to_json(self) -> bytes:
        """as_dict() as compact JSON."""
        try:
            return orjson.dumps(self.as_dict())
        except orjson.JSONEncodeError:  # a quantity beyond 64-bit integers
            return json.dumps(self.as_dict(), separators=(",", ":")).encode()


@dataclass(frozen=True, slots=True)
class ProductList:
    documents: list[bytes]  # the cached JSON of each SKU found, in the order asked
    missing: list[str]

    def to_json(self) -> bytes:
        # the documents are spliced in as cached: no parse and re-serialise per product
        return b'{"items":[' + b",".join(self.documents) + b'],"missing":' + orjson.dumps(self.missing) + b"}"


# A page of the store in (quantity, member) order: at most ARGV[2] entries (one more than a
# page, to know whether there is a next page) with scores below ARGV[1] ('' for no bound),
# after the cursor's (score ARGV[3], member ARGV[4]) when there is one; false when the store
# has no sorted set. Every step is O(log N) or reads the page itself, whatever the cursor:
# - the cursor's member still holds its score (the usual case): the page starts after its
#   rank (ZRANK), however many entries share that score;
# - it moved, left, or was never there (a stale or forged cursor): where (score, member)
#   would sit is found by bisecting its score's tie group by rank, one entry per probe.
# Members are compared byte by byte, as Redis orders them (Lua's `<` on strings follows
# the server's locale).
_PAGE_SCRIPT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local below, want = ARGV[1], tonumber(ARGV[2])
local high = below == '' and '+inf' or '(' .. below
if #ARGV < 4 then
  return redis.call('ZRANGE', KEYS[1], '-inf', high, 'BYSCORE', 'LIMIT', 0, want, 'WITHSCORES')
end
local score, member = ARGV[3], ARGV[4]
local function beyond(this, that)
  local n = math.min(#this, #that)
  for i = 1, n do
    local x, y = string.byte(this, i), string.byte(that, i)
    if x ~= y then return x > y end
  end
  return #this > #that
end
local start
local held = redis.call('ZSCORE', KEYS[1], member)
if held and tonumber(held) == tonumber(score) then
  start = redis.call('ZRANK', KEYS[1], member) + 1
else
  local low = redis.call('ZCOUNT', KEYS[1], '-inf', '(' .. score)
  local high_rank = low + redis.call('ZCOUNT', KEYS[1], score, score)
  while low < high_rank do
    local middle = math.floor((low + high_rank) / 2)
    if beyond(redis.call('ZRANGE', KEYS[1], middle, middle)[1], member) then
      high_rank = middle
    else
      low = middle + 1
    end
  end
  start = low
end
local page = redis.call('ZRANGE', KEYS[1], start, start + want - 1, 'WITHSCORES')
if below == '' then return page end
local limit = tonumber(below)
for i = 2, #page, 2 do
  if tonumber(page[i]) >= limit then
    local kept = {}
    for j = 1, i - 2 do kept[j] = page[j] end
    return kept
  end
end
return page
"""
_PAGE_SHA = hashlib.sha1(_PAGE_SCRIPT.encode()).hexdigest()

# sort=sku: the store's entries below ARGV[1] ('' for no bound), at most ARGV[2] of them, or
# how many there are (a number) when there are more: counted in O(log N), never read; false
# when the store has no sorted set (Redis deletes an emptied one).
_SKU_SORT_SCRIPT = """
local below, cap = ARGV[1], tonumber(ARGV[2])
local total = redis.call('ZCARD', KEYS[1])
if total == 0 then return false end
local count = below == '' and total or redis.call('ZCOUNT', KEYS[1], '-inf', '(' .. below)
if count > cap then return count end
return redis.call('ZRANGE', KEYS[1], '-inf', below == '' and '+inf' or '(' .. below, 'BYSCORE',
                  'LIMIT', 0, cap, 'WITHSCORES')
"""
_SKU_SORT_SHA = hashlib.sha1(_SKU_SORT_SCRIPT.encode()).hexdigest()


class Reader:
    def __init__(self, client: redis.Redis | RedisCluster, settings: Settings):
        self._client = client
        self._settings = settings
        self._orders = settings.key_prefix("orders")
        self._products = settings.key_prefix("products")
        self._inventory = settings.key_prefix("inventory")

    # --- documents -----------------------------------------------------------
    def order(self, order_id: str) -> bytes:
        key = keys.order_key(_identifier(order_id, "order id"), self._orders)
        value = cast("bytes | None", self._client.get(key))
        if value is None:
            raise NotFound(f"order {order_id} not found")
        return value

    def product(self, sku: str) -> bytes:
        key = keys.product_key(_identifier(sku, "sku"), self._products)
        value = cast("bytes | None", self._client.get(key))
        if value is None:
            raise NotFound(f"product {sku} not found")
        return value

    def products(self, skus: str) -> ProductList:
        """`skus` as the query string has it: comma-separated, order kept, repeats dropped."""
        wanted = list(dict.fromkeys(s.strip() for s in skus.split(",")))
        if not wanted or "" in wanted:
            raise BadRequest("skus must be a comma-separated list of SKUs, without empty entries")
        if len(wanted) > self._settings.products_max_skus:
            raise BadRequest(f"at most {self._settings.products_max_skus} SKUs per request, got {len(wanted)}")
        for sku in wanted:
            _identifier(sku, "sku")
        names = [keys.product_key(s, self._products) for s in wanted]
        if isinstance(self._client, RedisCluster):
            # one MGET per slot, pipelined per node: a plain MGET across slots is CROSSSLOT
            values = cast("list[bytes | None]", self._client.mget_nonatomic(names))
        else:
            values = cast("list[bytes | None]", self._client.mget(names))
        return ProductList(
            documents=[v for v in values if v is not None],
            missing=[s for s, v in zip(wanted, values, strict=True) if v is None],
        )

    # --- inventory -----------------------------------------------------------
    def inventory_item(self, store: str, sku: str) -> InventoryItem:
        key = keys.inventory_key(_identifier(store, "store id"), self._inventory)
        score = self._client.zscore(key, keys.sku_member(_identifier(sku, "sku")))
        if score is None:
            raise NotFound(f"sku {sku} is not stocked in store {store}")
        return InventoryItem(sku, _quantity(score))

    def inventory(
        self,
        store: str,
        *,
        sort: Sort = "quantity",
        below: int | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> InventoryPage:
        key = keys.inventory_key(_identifier(store, "store id"), self._inventory)
        if sort not in SORTS:
            raise BadRequest(f"sort must be one of {', '.join(SORTS)}")
        limit = self._settings.inventory_default_limit if limit is None else limit
        if not 1 <= limit <= self._settings.inventory_max_limit:
            raise BadRequest(f"limit must be between 1 and {self._settings.inventory_max_limit}")
        after = decode_cursor(cursor, sort, below) if cursor else None
        if sort == "quantity":
            entries = self._by_quantity(key, below, after, limit)
        else:
            entries = self._by_sku(key, below, after, limit)
        if entries is None:
            raise NotFound(f"store {store} has no inventory")
        prefix, cut = _SKU_PREFIX, len(_SKU_PREFIX)
        rows = [
            {"sku": (m[cut:] if m.startswith(prefix) else m).decode(), "quantity": int(s) if s.is_integer() else s}
            for m, s in entries[:limit]
        ]  # keys.sku_from_member and _quantity, inlined: this runs for every item of every page
        next_cursor = None
        if len(entries) > limit:
            next_cursor = encode_cursor(sort, below, entries[limit - 1][1], str(rows[-1]["sku"]))
        return InventoryPage(store, sort, below, rows, next_cursor)

    def _by_quantity(
        self, key: str, below: int | None, after: tuple[float, str] | None, limit: int
    ) -> list[tuple[bytes, float]] | None:
        args: tuple[str | int, ...] = ("" if below is None else str(below), limit + 1)
        if after is not None:
            args += (repr(after[0]), keys.sku_member(after[1]))
        reply = self._script(_PAGE_SCRIPT, _PAGE_SHA, key, args)
        if reply is None:  # Lua false
            return None
        return [(m, float(s)) for m, s in zip(reply[0::2], reply[1::2], strict=True)]

    def _by_sku(
        self, key: str, below: int | None, after: tuple[float, str] | None, limit: int
    ) -> list[tuple[bytes, float]] | None:
        # the set is ordered by quantity, so a SKU order means reading the (bounded) set
        cap = self._settings.inventory_sku_sort_max
        reply = self._script(_SKU_SORT_SCRIPT, _SKU_SORT_SHA, key, ("" if below is None else str(below), cap))
        if reply is None:
            return None
        if isinstance(reply, int):
            raise BadRequest(f"this store holds more than {cap} SKUs: page it with sort=quantity")
        entries = sorted(zip(reply[0::2], reply[1::2], strict=True))
        if after is not None:
            # bytes compare like Redis orders members (memcmp)
            start = keys.sku_member(after[1]).encode()
            entries = [(m, s) for m, s in entries if m > start]
        return [(m, float(s)) for m, s in entries[: limit + 1]]

    def _script(self, script: str, sha: str, key: str, args: tuple[str | int, ...]) -> Any:
        try:
            return self._client.evalsha(sha, 1, key, *args)
        except redis.exceptions.NoScriptError:
            return self._client.eval(script, 1, key, *args)  # loads it for next time

    # --- health ----------------------------------------------------------------
    def ping_ms(self) -> float:
        """Round-trip time of a PING in milliseconds; raises the Redis error when unreachable."""
        started = time.perf_counter()
        self._client.ping()
        return round((time.perf_counter() - started) * 1000, 3)


def encode_cursor(sort: Sort, below: int | None, score: float, sku: str) -> str:
    # bound to the query it came from, so it cannot be replayed against another one
    raw = json.dumps([CURSOR_VERSION, sort, below, score, sku], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, sort: Sort, below: int | None) -> tuple[float, str]:
    """(score, sku) of the last item of the previous page."""
    invalid = BadRequest("cursor is not valid: pass back the nextCursor of the previous page unchanged")
    if len(cursor) > 512:
        raise invalid
    try:
        decoded = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, binascii.Error):
        raise invalid from None
    if not (isinstance(decoded, list) and len(decoded) == 5 and decoded[0] == CURSOR_VERSION):
        raise invalid
    _, cursor_sort, cursor_below, score, sku = decoded
    if isinstance(score, bool) or not isinstance(score, int | float) or not isinstance(sku, str):
        raise invalid
    try:
        score = float(score)  # an integer beyond a double's range raises
    except OverflowError:
        raise invalid from None
    if not math.isfinite(score) or not keys.IDENTIFIER.fullmatch(sku):
        raise invalid
    if cursor_sort != sort or cursor_below != below:
        raise BadRequest("cursor belongs to another query: keep sort and below as they were on the first page")
    return score, sku


def _identifier(value: str, what: str) -> str:
    try:
        return keys.check_identifier(value, what)
    except keys.InvalidIdentifier as error:
        raise BadRequest(str(error)) from None


def _quantity(score: float) -> int | float:
    # scores are doubles; stock counts are whole numbers, so show them as integers
    return int(score) if score.is_integer() else score
