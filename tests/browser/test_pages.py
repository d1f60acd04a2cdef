"""The storefront and the operator's page in Chromium, against make run's stack."""

from __future__ import annotations

import json
import os
import signal
import time
from typing import Any

from devkit import localjwt
from devkit.generator import RawRecord
from devkit.localrun import LocalRun
from harness.browser import first_contentful_paint_ms
from tests.browser.conftest import Page, api_json

TIMEOUT_MS = 20_000


def rows(page: Any, selector: str) -> list[dict[str, str]]:
    """Each body row of a table: its data-* attributes and its cells' text."""
    return list(
        page.eval_on_selector_all(
            f"{selector} tbody tr",
            """rows => rows.map(r => ({...r.dataset, cells: [...r.cells].map(c => c.textContent.trim()),
                                       quantity: (r.querySelector('[data-quantity]') || {}).dataset?.quantity}))""",
        )
    )


def sign_in(page: Any, base: str, token: str) -> None:
    """What a sign-in redirect does: the token in the fragment, which the page keeps and takes out."""
    page.goto(f"{base}/#access_token={token}")
    page.wait_for_function("() => !location.hash.includes('access_token')")


def test_the_storefront_loads_against_make_runs_stack(page: Page, run: LocalRun) -> None:
    shown = page.open("/")
    shown.wait_for_selector("#products tbody tr", timeout=TIMEOUT_MS)
    assert shown.title() == "Products · cachesync shop"
    expected = api_json(run, "/stores/store1/inventory?sort=sku&limit=20")["items"]
    listed = rows(shown, "#products")
    assert [r["sku"] for r in listed] == [i["sku"] for i in expected]
    assert [float(r["quantity"]) for r in listed] == [i["quantity"] for i in expected]
    names = api_json(run, f"/products?skus={','.join(i['sku'] for i in expected)}")["items"]
    assert [r["cells"][0] for r in listed] == [p["name"] for p in names]  # names from the products topic
    fcp = first_contentful_paint_ms(shown)
    assert fcp is not None and fcp > 0  # reported by `make screenshots`, never asserted against a bound
    assert not page.console_errors


def test_a_products_stock_changes_on_the_page_after_an_inventory_event(page: Page, run: LocalRun) -> None:
    assert run.feed is not None
    sku = run.generator.skus[7]
    shown = page.open(f"/#/product/{sku}")
    cell = shown.locator('#stock tr[data-store="store2"] [data-quantity]')
    cell.wait_for(timeout=TIMEOUT_MS)
    before = float(cell.get_attribute("data-quantity") or "nan")
    target = int(before) + 137
    event = {"type": "count", "store": "store2", "sku": sku, "units": target, "eventtime": int(time.time() * 1000)}
    run.feed.produce([RawRecord("inventory", f"store2:{sku}".encode(), json.dumps(event).encode())])
    run.feed.flush()
    # through Kafka, the mapping, IngestFunction and Redis, then the page's next poll
    shown.wait_for_selector(
        f'#stock tr[data-store="store2"] [data-quantity="{target}"]', timeout=TIMEOUT_MS
    )  # fmt: skip
    assert api_json(run, f"/stores/store2/inventory/{sku}")["quantity"] == target
    assert not page.console_errors


def test_the_low_stock_view_matches_the_api(page: Page, run: LocalRun) -> None:
    shown = page.open("/#/stock/store1?below=10")
    shown.wait_for_selector("#inventory tbody tr", timeout=TIMEOUT_MS)
    expected = api_json(run, "/stores/store1/inventory?sort=quantity&below=10&limit=20")
    listed = rows(shown, "#inventory")
    assert expected["items"], "make run seeds low stock in store1"
    assert [(r["sku"], float(r["quantity"])) for r in listed] == [(i["sku"], i["quantity"]) for i in expected["items"]]
    assert all(float(r["quantity"]) < 10 for r in listed)
    assert shown.locator("#below").input_value() == "10"
    # paging: the page after the first is the API's page after its cursor
    shown.goto(f"{run.url}/#/stock/store3")
    shown.wait_for_selector("#inventory tbody tr", timeout=TIMEOUT_MS)
    first = api_json(run, "/stores/store3/inventory?sort=quantity&limit=20")
    shown.click("a[rel=next]")
    shown.wait_for_function("() => location.hash.includes('cursor=')")
    shown.wait_for_selector("#inventory tbody tr", timeout=TIMEOUT_MS)
    second = api_json(run, f"/stores/store3/inventory?sort=quantity&limit=20&cursor={first['nextCursor']}")
    shown.wait_for_function(
        "sku => document.querySelector('#inventory tbody tr').dataset.sku === sku", arg=second["items"][0]["sku"]
    )
    assert [r["sku"] for r in rows(shown, "#inventory")] == [i["sku"] for i in second["items"]]
    assert not page.console_errors


def test_a_503_is_shown_as_retryable_and_the_page_recovers(page: Page, run: LocalRun) -> None:
    assert run.valkey is not None
    pid = run.valkey.process.pid
    os.kill(pid, signal.SIGSTOP)  # Redis stops answering: the API answers 503 with Retry-After
    try:
        shown = page.open("/#/stock/store4")
        notice = shown.locator('[data-state="unavailable"]')
        notice.wait_for(timeout=TIMEOUT_MS)
        assert "Retrying in 1 s" in notice.inner_text()  # the API's Retry-After: 1
        assert notice.get_attribute("role") == "status"
    finally:
        os.kill(pid, signal.SIGCONT)
    # the page retries by itself when Retry-After says, and shows the stock again
    shown.wait_for_selector("#inventory tbody tr", timeout=TIMEOUT_MS)
    assert shown.locator('[data-state="unavailable"]').count() == 0
    uncaught = [e for e in page.console_errors if e.startswith("uncaught")]
    assert not uncaught  # the browser logs each 503 response; the page itself throws nothing


def test_the_order_lookup_asks_to_sign_in_without_a_token(page: Page, run: LocalRun) -> None:
    asked: list[str] = []
    page.page.on("request", lambda request: asked.append(request.url))
    shown = page.open("/#/order?id=18")
    shown.locator('[data-state="signin"]').wait_for(timeout=TIMEOUT_MS)
    assert shown.get_by_role("heading", name="Sign in to look up an order").is_visible()
    assert not [url for url in asked if "/orders/" in url]  # no token, no call
    # signed in as staff (the link make run prints), the same lookup shows the order
    sign_in(shown, run.url, run.staff_token)
    shown.goto(f"{run.url}/#/order?id=18")
    shown.wait_for_selector("#order", timeout=TIMEOUT_MS)
    order = api_json(run, "/orders/18", token=run.staff_token)
    assert shown.locator("#order dd").first.inner_text() == str(order["orderid"])
    assert "#access_token" not in shown.url  # taken out of the address bar
    # a shopper reads no order here (no ownership rule: the generated orders have no owner)
    sign_in(shown, run.url, run.shopper_token)
    shown.goto(f"{run.url}/#/order?id=20")  # not 18: the browser may answer that from its cache (max-age=5)
    refused = shown.locator('[data-state="forbidden"]')
    refused.wait_for(timeout=TIMEOUT_MS)
    assert "cannot look up orders" in refused.inner_text() and "cachesync/staff" in refused.inner_text()
    assert shown.locator("#order").count() == 0
    # a token that has expired since: back to the sign-in state
    expired = localjwt.mint(localjwt.signing_key(), "shopper-1", now=time.time() - 7200, lifetime_s=60)
    sign_in(shown, run.url, expired)
    shown.goto(f"{run.url}/#/order?id=19")  # not 18: the browser may answer that from its cache (max-age=5)
    shown.locator('[data-state="signin"]').wait_for(timeout=TIMEOUT_MS)
    assert "expired" in shown.locator('[data-state="signin"]').inner_text()


def test_the_operators_page_shows_the_admin_route_and_needs_its_scope(page: Page, run: LocalRun) -> None:
    shown = page.open("/admin.html")
    shown.locator('[data-state="signin"]').wait_for(timeout=TIMEOUT_MS)
    shown.goto(f"{run.url}/admin.html#access_token={run.shopper_token}")
    shown.reload()
    shown.locator('[data-state="signin"]').wait_for(timeout=TIMEOUT_MS)
    assert "admin scope" in shown.locator('[data-state="signin"]').inner_text()
    shown.goto(f"{run.url}/admin.html#access_token={run.admin_token}")
    shown.reload()
    shown.wait_for_selector("#partition-table tbody tr", timeout=TIMEOUT_MS)
    stats = api_json(run, "/admin/stats", token=run.admin_token)
    shown_rows = {r["partition"]: r["cells"] for r in rows(shown, "#partition-table")}
    expected = {f"{t}-{p}": offset for t, parts in stats["partitions"].items() for p, offset in parts.items()}
    assert set(shown_rows) == set(expected) and len(expected) == 18  # 3 topics, 6 partitions each
    ends = run.kafka_end_offsets()["topics"]
    for name, cells in shown_rows.items():
        topic, partition = name.rsplit("-", 1)
        assert int(cells[1]) == expected[name]  # rate 0: nothing moves between the two reads
        assert int(cells[2]) == ends[topic][partition]
        assert int(cells[3]) == ends[topic][partition] - 1 - expected[name] == 0  # all applied
    assert shown.locator('[data-tile="applied"] dd').inner_text()
    assert shown.locator("svg.chart").count() == 1


def test_the_pages_make_no_console_errors(page: Page, run: LocalRun) -> None:
    sku = run.generator.skus[3]
    visits = [
        ("/", "#products tbody tr"),
        (f"/#/product/{sku}", "#stock tbody tr"),
        ("/#/stock/store1?below=10", "#inventory tbody tr"),
        ("/#/order", '[data-state="signin"]'),
        (f"/#access_token={run.staff_token}", "#products tbody tr"),
        ("/#/order?id=18", "#order"),
        (f"/admin.html#access_token={run.admin_token}", "#partition-table tbody tr"),
    ]
    for path, ready in visits:
        shown = page.open(path)
        if path.startswith("/admin.html"):
            shown.reload()
        shown.wait_for_selector(ready, timeout=TIMEOUT_MS)
    assert page.console_errors == []
