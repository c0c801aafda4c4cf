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
from tests.procutil import Proc, Store, ok, start

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

    kds.stop()
    _wait(browser, lambda d: _row_state(d, "kds-1") == "offline", 5, "kds-1 offline")
    start(launch, store, "kds-1", "asyncio")
    _wait(browser, lambda d: _row_state(d, "kds-1") == "online", 15, "kds-1 online again")

    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors  # no script error, no refused request
    assert not browser.find_element("id", "banner").is_displayed()
