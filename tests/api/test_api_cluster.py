"""The read API on a 3-master Redis Cluster (ElastiCache Serverless and cluster-mode caches)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import pytest
from redis.cluster import RedisCluster, key_slot

from cachesync import keys
from devkit import servers
from tests.api.apikit import Api, caller, skus, walk

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def cluster() -> Iterator[servers.LocalCluster]:
    local = servers.start_cluster()
    yield local
    local.stop()


@pytest.fixture(scope="module")
def on_cluster(cluster: servers.LocalCluster, load_api: Callable[..., Api]) -> Api:
    client = RedisCluster.from_url(cluster.url)
    client.set(keys.order_key("18"), b'{"orderid": 18}')
    for n in range(30):
        client.set(keys.product_key(f"p{n}"), json.dumps({"sku": f"p{n}", "name": "n", "price": n}).encode())
    client.zadd(keys.inventory_key("store1"), {keys.sku_member(f"{n:03d}"): n % 4 for n in range(45)})
    client.close()
    return load_api(cluster.url, REDIS_CLUSTER="true")


def test_product_list_across_slots(on_cluster: Api) -> None:
    wanted = [f"p{n}" for n in range(0, 30, 3)] + ["nope"]
    assert len({key_slot(keys.product_key(s).encode()) for s in wanted}) > 3  # really spread over the nodes
    body = on_cluster.get("/products?skus=" + ",".join(wanted)).json
    assert [p["sku"] for p in body["items"]] == wanted[:-1]
    assert body["missing"] == ["nope"]


def test_every_route_on_a_cluster(on_cluster: Api) -> None:
    assert on_cluster.get("/orders/18", authorizer=caller()).body == b'{"orderid": 18}'
    assert on_cluster.get("/products/p7").json["price"] == 7
    assert on_cluster.get("/stores/store1/inventory/007").json == {"sku": "007", "quantity": 3}
    assert on_cluster.get("/health").json["redis"]["reachable"] is True
    low = on_cluster.get("/stores/store1/inventory?below=1&limit=500").json["items"]
    assert skus(low) == [f"{n:03d}" for n in range(0, 45, 4)]


@pytest.mark.parametrize("sort", ["quantity", "sku"])
def test_paging_on_a_cluster(on_cluster: Api, sort: str) -> None:
    items = walk(on_cluster, "store1", f"&sort={sort}", 4)
    assert sorted(skus(items)) == [f"{n:03d}" for n in range(45)]
    assert len(items) == 45
