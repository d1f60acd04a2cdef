"""Every public read costs Redis O(log N + page size), whatever cursor, limit or filter it
carries: proved on a store of tens of thousands of equal quantities (out of stock), on
Valkey, Redis 7 and a cluster, with what Redis itself records per request (harness.read_cost):
the commands it ran (INFO commandstats, a script's own calls included) and, from MONITOR,
the entries each of them read. Never a duration."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import redis
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from redis.cluster import RedisCluster

from cachesync import keys
from cachesync.reads import Reader, encode_cursor
from harness import read_cost
from tests.api.apikit import Api, skus
from tests.conftest import Target

TIES = 30_000
# an O(log N) descent per command, and few commands: a search through one tie group by rank
# at most, one probe per halving
COMMAND_BUDGET = 8 + 2 * math.ceil(math.log2(TIES))


def raw_client(target: Target) -> redis.Redis | RedisCluster:
    return RedisCluster.from_url(target.url) if target.cluster else redis.Redis.from_url(target.url)


@pytest.fixture
def tie_store(target: Target, load_api: Callable[..., Api]) -> tuple[Api, redis.Redis | RedisCluster]:
    client = raw_client(target)
    read_cost.build_store(client, TIES)
    api = load_api(target.url, REDIS_CLUSTER=str(target.cluster).lower())
    for request in read_cost.requests(TIES):  # connected, scripts loaded: what follows is steady state
        api.get(request.target)
    return api, client


def test_every_public_request_reads_a_page_and_a_few_probes_at_most(
    tie_store: tuple[Api, redis.Redis | RedisCluster],
) -> None:
    api, client = tie_store
    with read_cost.Recorder(client, watch=True) as recorder:
        for request in read_cost.requests(TIES):
            cost = recorder.request(api.gateway, request.what, request.target)
            assert cost.status in (200, 400), (request.what, cost.status)
            assert cost.watched, request.what
            assert cost.entries is not None, (request.what, cost.watched)
            assert cost.entries <= request.items + 1 + COMMAND_BUDGET, (request.what, cost.entries, cost.watched)
            # a product list is one MGET, or on a cluster one per slot (pipelined per node)
            per_key = request.items if request.target.startswith("/products?") else 0
            assert 0 < cost.total_commands <= COMMAND_BUDGET + per_key, (request.what, cost.commands)


def test_a_page_costs_the_same_wherever_its_cursor_points_in_a_tie_group(
    tie_store: tuple[Api, redis.Redis | RedisCluster],
) -> None:
    api, client = tie_store
    by_name = {r.what: r for r in read_cost.requests(TIES)}
    with read_cost.Recorder(client, watch=True) as recorder:

        def cost(what: str) -> tuple[int, int | None]:
            measured = recorder.request(api.gateway, what, by_name[what].target)
            assert measured.status == 200, measured
            return measured.total_commands, measured.entries

        at_start = cost("cursor at the tie group's start")
        assert cost("cursor mid tie group") == at_start
        assert cost("cursor at the tie group's end") == at_start
        assert cost("low stock, cursor at the end") == at_start
        # a cursor whose SKU left (or never was there) is looked up in the tie group: the same
        # cost at its middle and beyond its end, within a probe per halving of the group
        stale, beyond = cost("stale cursor (SKU gone)"), cost("forged cursor after every tie")
        for commands, entries in (stale, beyond):
            assert commands <= at_start[0] + 2 + math.ceil(math.log2(TIES))
            assert entries is not None and at_start[1] is not None
            assert entries <= at_start[1] + 2 + math.ceil(math.log2(TIES))


def test_walking_the_whole_tie_group_reads_each_entry_about_once(
    tie_store: tuple[Api, redis.Redis | RedisCluster],
) -> None:
    api, client = tie_store
    limit, seen, pages = 500, [], 0
    cursor: str | None = None
    with read_cost.Recorder(client, watch=True) as recorder:
        entries = 0
        while True:
            target = f"/stores/{read_cost.STORE}/inventory?limit={limit}" + (f"&cursor={cursor}" if cursor else "")
            measured = recorder.request(api.gateway, "walk", target)
            assert measured.status == 200 and measured.entries is not None
            entries += measured.entries
            page = api.get(target).json  # the same page again, for its items (reads are idempotent)
            seen += page["items"]
            pages += 1
            cursor = page["nextCursor"]
            if cursor is None:
                break
    members = client.zrange(keys.inventory_key(read_cost.STORE), 0, -1)  # Redis's own (quantity, SKU) order
    assert skus(seen) == [keys.sku_from_member(m.decode()) for m in members]
    total = len(members)
    # each page reads its items, one more to know there is a next page, and a few probes
    assert entries <= total + pages * (2 + COMMAND_BUDGET)


# --- resuming from any cursor: the page a reference model gives ----------------------------
SKU_ALPHABET = "0129AZaz._:-"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    stock=st.dictionaries(
        st.text(SKU_ALPHABET, min_size=1, max_size=6).filter(keys.IDENTIFIER.fullmatch),
        st.sampled_from([0, 0, 0, 1, 2, 2.5, -3]),  # mostly ties
        min_size=1,
        max_size=60,
    ),
    limit=st.integers(1, 12),
    below=st.one_of(st.none(), st.integers(-4, 4)),
    data=st.data(),
)
def test_a_page_resumes_where_its_cursor_would_sit_whether_or_not_its_sku_is_still_there(
    target: Target,
    stock: dict[str, float],
    limit: int,
    below: int | None,
    data: st.DataObject,
) -> None:
    client = target.client()
    key = keys.inventory_key("store1")
    client.delete(key)
    client.zadd(key, {keys.sku_member(s): q for s, q in stock.items()})
    # a cursor on a SKU of the store at its quantity, at another quantity, or on one never there
    sku = data.draw(st.one_of(st.sampled_from(sorted(stock)), st.text(SKU_ALPHABET, min_size=1, max_size=6)))
    assume(keys.IDENTIFIER.fullmatch(sku))
    score = data.draw(st.one_of(st.just(stock.get(sku, 0)), st.sampled_from([0, 1, 2.5, -3, 7, 1e300, -1e300])))

    page = Reader(client, target.settings()).inventory(
        "store1", below=below, limit=limit, cursor=encode_cursor("quantity", below, score, sku)
    )

    # the model: (quantity, member bytes) order, strictly after (score, member), under `below`
    position = (float(score), keys.sku_member(sku).encode())
    after = sorted(
        (float(q), keys.sku_member(s).encode())
        for s, q in stock.items()
        if (float(q), keys.sku_member(s).encode()) > position and (below is None or q < below)
    )
    assert [(float(i.quantity), keys.sku_member(i.sku).encode()) for i in page.items] == after[:limit]
    assert (page.next_cursor is not None) == (len(after) > limit)
