"""The screens a terminal serves: the files and their headers, who may load them and their data,
and the monitor in a real headless Chromium (Debian's, driven by its chromedriver) watching two
real ``meshpos run`` processes - one stopped and started again under its eyes."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from meshpos.api_screens import FILES, PAGES
from simulations.browser import chromium_missing, headless_chromium
from tests.apiutil import assert_error
from tests.procutil import Proc, Store, ok, online, start, wait

pytestmark = pytest.mark.anyio

async def test_the_pages_and_their_files_are_served_with_a_strict_policy(served: Callable[..., Any]) -> None:
    async with served() as (_, client):
        for path in [*PAGES, *(f"/screens/{name}" for name in FILES)]:
            resp = await client.get(path)
            assert resp.status_code == 200, path
            policy = resp.headers["content-security-policy"]
            assert "default-src 'self'" in policy and "frame-ancestors 'none'" in policy
            assert resp.headers["x-content-type-options"] == "nosniff"
        assert (await client.get("/monitor")).headers["content-type"].startswith("text/html")
        assert (await client.get("/screens/monitor.js")).headers["content-type"].startswith(
            ("text/javascript", "application/javascript"))
        assert_error(await client.get("/screens/../meshpos.db"), 404, 4007)
        assert_error(await client.get("/screens/api.py"), 404, 4007)  # only the screens' own files
        assert (await client.post("/monitor", json={})).status_code == 405


async def test_with_a_token_the_page_loads_and_only_the_browser_on_the_box_reads_without_it(
        served: Callable[..., Any]) -> None:
    async with served(api_token="s3cret-token-for-tests") as (_, client):
        assert (await client.get("/monitor")).status_code == 200  # code, no data: no token needed
        assert_error(await client.get("/api/v1/status"), 401, 4003)  # a program, not a browser
        # a page of this very origin reading its API (browsers send no Origin on a same-origin GET)
        assert (await client.get("/api/v1/status", headers={"Sec-Fetch-Site": "same-origin"})).status_code == 200
        for site in ("cross-site", "same-site", "none"):
            assert_error(await client.get("/api/v1/status", headers={"Sec-Fetch-Site": site}), 401, 4003)
        # the header does not lift the Host check (DNS rebinding) nor the Origin check
        assert_error(await client.get("/api/v1/status", headers={"Sec-Fetch-Site": "same-origin",
                                                                 "Host": "evil.example"}), 403, 4008)


# -- in a browser ----------------------------------------------------------------------------------


@pytest.fixture
def browser() -> Iterator[Any]:
    """Headless Chromium from Debian's packages; without them the test skips - unless
    MESHPOS_REQUIRE_CHROMIUM is set (CI installs them), where it fails."""
    if (missing := chromium_missing()) is not None:
        if os.environ.get("MESHPOS_REQUIRE_CHROMIUM"):
            pytest.fail(missing)
        pytest.skip(missing)
    driver = headless_chromium()
    try:
        yield driver
    finally:
        driver.quit()


def _text(driver: Any, selector: str, attribute: str = "textContent") -> list[str]:
    """What the elements matching ``selector`` hold now, read in one script: the page rebuilds
    its tables every second, so an element found first and read later may be gone."""
    return driver.execute_script(
        "return Array.from(document.querySelectorAll(arguments[0]), e => e[arguments[1]])", selector, attribute)


def _row_state(driver: Any, peer: str) -> str | None:
    states = _text(driver, f'#peers tr[data-peer="{peer}"]', "className")
    return states[0] if states else None


def _sync_cell(driver: Any, document: str, peer: str) -> str | None:
    cells = _text(driver, f'#sync tr[data-document="{document}"] td[data-peer="{peer}"]')
    return cells[0] if cells else None


def _wait(driver: Any, predicate: Callable[[Any], Any], within: float, what: str) -> None:
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        WebDriverWait(driver, within, poll_frequency=0.05).until(predicate)
    except TimeoutException:
        pytest.fail(f"the monitor did not show {what} within {within} s")


@pytest.mark.slow
def test_the_monitor_follows_a_peer_going_away_and_coming_back(launch: Callable[..., Proc], tmp_path: Path,
                                                               browser: Any) -> None:
    store = Store(tmp_path, ["pos-1", "kds-1"], ["pos", "kds"])
    token = tmp_path / "token"
    token.write_text("monitor-test-token-0123456789")
    pos = launch(store.tmp / "pos-1", terminal_id=None, type=None,
                 extra=[*store.args("pos-1"), "--api-token-file", str(token)])
    kds = start(launch, store, "kds-1", "asyncio")
    browser.get(f"{pos.url}/monitor")  # with a token set: the browser on the box reads without it
    _wait(browser, lambda d: _row_state(d, "kds-1") == "online", 15, "kds-1 online")
    assert _text(browser, "#terminal") == ["pos-1 (pos)"]

    with httpx.Client(base_url=pos.url, headers={"Authorization": f"Bearer {token.read_text()}"}) as c:
        ok(c.put("/api/v1/catalog/burger", json={"name": "Burger", "price_cents": 1590, "station": "grill"}))
        order = ok(c.post("/api/v1/orders", json={"items": [{"sku": "burger", "name": "Burger", "qty": 1,
                                                              "unit_price_cents": 1590}]}))
    _wait(browser, lambda d: any(order["id"] in line for line in _text(d, '#events li[data-type="order:created"]')),
          5, "the new order in the event log")
    _wait(browser, lambda d: _text(d, '[data-figure="orders"] .value') == ["1"], 10, "one order in today's figures")

    _wait(browser, lambda d: _sync_cell(d, "tables", "kds-1") == "live, in sync", 5, "tables in sync with kds-1")

    kds.stop()
    _wait(browser, lambda d: _row_state(d, "kds-1") == "offline", 5, "kds-1 offline")
    day = f"orders/{order['business_day']}"
    with httpx.Client(base_url=pos.url, headers={"Authorization": f"Bearer {token.read_text()}"}) as c:
        ok(c.post("/api/v1/orders", json={"items": [{"sku": "burger", "name": "Burger", "qty": 1,
                                                      "unit_price_cents": 1590}]}))
    _wait(browser, lambda d: (_sync_cell(d, day, "kds-1") or "").startswith("offline; lacks "), 5,
          "what kds-1 lacks of the day")
    start(launch, store, "kds-1", "asyncio")
    _wait(browser, lambda d: _row_state(d, "kds-1") == "online", 15, "kds-1 online again")

    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors  # no script error, no refused request
    assert not browser.find_element("id", "banner").is_displayed()


def _ticket_items(driver: Any, order_id: str) -> list[str]:
    return _text(driver, f'article.ticket[data-order-id="{order_id}"] li.item', "className")


@pytest.mark.slow
def test_the_kitchen_display_shows_bumps_and_refuses_like_the_api(launch: Callable[..., Proc], tmp_path: Path,
                                                                  browser: Any) -> None:
    store = Store(tmp_path, ["pos-1", "kds-1"], ["pos", "kds"])
    pos, kds = start(launch, store, "pos-1", "asyncio"), start(launch, store, "kds-1", "trio")
    with pos.client() as c:
        wait(lambda: online(c) == {"kds-1"}, what="kds-1 linked")
        ok(c.put("/api/v1/catalog/burger", json={"name": "Burger", "price_cents": 1590, "station": "grill"}))
        ok(c.patch("/api/v1/inventory/burger", json={"out_of_stock": True}))
        browser.get(f"{kds.url}/kds?station=grill")
        _wait(browser, lambda d: d.execute_script("return document.body.dataset.rendered") == "0", 10,
              "an empty kitchen")
        # an order taken on pos-1 appears on kds-1's page, without a reload
        order = ok(c.post("/api/v1/orders", json={"table": "T4", "items": [
            {"sku": "burger", "name": "Burger", "qty": 2, "unit_price_cents": 1590, "station": "grill"},
            {"sku": "cola", "name": "Cola", "qty": 1, "unit_price_cents": 300, "station": "bar"}]}))
        oid = order["id"]
        _wait(browser, lambda d: _ticket_items(d, oid) == ["item k-queued"], 5, "the ticket (grill items only)")
        assert _text(browser, f'article[data-order-id="{oid}"] header b') == ["Table T4"]
        _wait(browser, lambda d: _text(d, "#eightysix") == ["86: Burger"], 5, "the 86'd burger")
        # a tap on the item moves it on, and pos-1 sees it through the mesh
        browser.find_element("css selector", f'article[data-order-id="{oid}"] li.item button').click()
        _wait(browser, lambda d: _ticket_items(d, oid) == ["item k-preparing"], 5, "the item preparing")
        grill = next(i for i in order["items"] if i["station"] == "grill")
        wait(lambda: next(i for i in ok(c.get(f"/api/v1/orders/{oid}"))["items"]
                          if i["id"] == grill["id"])["kitchen_status"] == "preparing", 10, "the bump on pos-1")
        # a write the rules refuse (kitchen status backwards): the page says why, nothing changes
        browser.execute_script(
            "const o = window.meshposKds.orders.doc.getMap('orders').get(arguments[0]);"
            "o.set(`kitchen:${arguments[1]}:queued`, new Date().toISOString())", oid, grill["id"])
        _wait(browser, lambda d: "forward only" in _text(d, "#banner")[0], 5, "the refusal")
        assert browser.find_element("id", "banner").is_displayed()
        _wait(browser, lambda d: _ticket_items(d, oid) == ["item k-preparing"], 5, "the ticket as it was")
        for client in (c, kds.client()):
            assert next(i for i in ok(client.get(f"/api/v1/orders/{oid}"))["items"]
                        if i["id"] == grill["id"])["kitchen_status"] == "preparing"
        # the ticket's bump: ready, then served - off the screen
        browser.find_element("css selector", f'article[data-order-id="{oid}"] button.bump').click()
        _wait(browser, lambda d: _ticket_items(d, oid) == ["item k-ready"], 5, "the item ready")
        browser.find_element("css selector", f'article[data-order-id="{oid}"] button.bump').click()
        _wait(browser, lambda d: _ticket_items(d, oid) == [], 5, "the ticket gone")
        wait(lambda: {i["id"]: i["kitchen_status"] for i in ok(c.get(f"/api/v1/orders/{oid}"))["items"]}
             == {grill["id"]: "served", next(i["id"] for i in order["items"] if i is not grill): "queued"},
             10, "the grill item served on pos-1, the bar's untouched")
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors


@pytest.mark.slow
def test_the_floor_plan_follows_the_tables(launch: Callable[..., Proc], tmp_path: Path, browser: Any) -> None:
    pos = launch(tmp_path / "pos-1")
    with pos.client() as c:
        for tid, area in (("T1", "patio"), ("T2", "patio"), ("B1", "bar")):
            ok(c.put(f"/api/v1/tables/{tid}", json={"name": tid, "seats": 4, "area": area}))
        browser.get(f"{pos.url}/tables")
        _wait(browser, lambda d: d.execute_script("return document.body.dataset.rendered") == "3", 10, "3 tables")
        assert _text(browser, "section h2") == ["bar", "patio"]
        ok(c.patch("/api/v1/tables/T1", json={"status": "occupied", "waiter": "ana", "guests": 3}))
        ok(c.post("/api/v1/tables/T2/merge", json={"into": "T1"}))
        _wait(browser, lambda d: _text(d, 'article[data-table-id="T1"]', "className") == ["table occupied"], 5,
              "T1 occupied")
        assert "ana" in _text(browser, 'article[data-table-id="T1"]')[0]
        assert "with T2" in _text(browser, 'article[data-table-id="T1"]')[0]
        assert "merged into T1" in _text(browser, 'article[data-table-id="T2"]')[0]
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors
