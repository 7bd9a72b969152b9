"""The dashboard in a real browser (headless Debian Chromium through Playwright) on the running demo plant.

Screenshots of every step land in test-artifacts/dashboard/ (kept by CI as artifacts).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
import uvicorn

from tests.dashboard.conftest import ARTIFACTS, Plant, log_in
from twin.api import create_app
from twin.broker import free_port
from twin.config import TwinSettings

pytestmark = [pytest.mark.browser, pytest.mark.slow]

LAPTOP = {"width": 1366, "height": 900}
TABLET = {"width": 820, "height": 1180}
LIVE_ASSET, LIVE_PROP = "engine-1", "t24"  # replayed over OPC-UA: a new value every half second


@pytest.fixture
def page(browser: Any, plant: Plant) -> Iterator[Any]:
    """A fresh browser context (no stored token) with page errors collected and failing the test."""
    context = browser.new_context(viewport=LAPTOP)
    p = context.new_page()
    p.set_default_timeout(15_000)
    errors: list[str] = []
    p.on("pageerror", lambda e: errors.append(str(e)))
    # the page's Content-Security-Policy refuses inline script and style: anything it blocks is a bug
    p.on("console", lambda m: errors.append(m.text) if "Content Security Policy" in m.text else None)
    p.errors = errors
    yield p
    context.close()
    assert not errors, errors


def _shot(page: Any, name: str, full: bool = True) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=full)


def _wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``check`` from Python: the page's CSP forbids the string evaluation wait_for_function uses."""
    ends = time.monotonic() + timeout
    while not check():
        if time.monotonic() > ends:
            raise AssertionError(f"not within {timeout:g} s: {what}")
        time.sleep(0.2)


def _chart_title(page: Any) -> str:
    """The first trend chart's title ('' until its data has arrived)."""
    return str(page.text_content("#charts .chart-title") or "")


def test_open_the_plant_search_and_see_a_value_change_live(page: Any, plant: Plant) -> None:
    page.goto(plant.url + "/")
    _shot(page, "01-login")
    log_in(page, plant.url, "tess")
    page.wait_for_selector("#conn[data-state=live]")
    assert page.text_content("#who") == "tess · technician"
    assert page.get_attribute('[data-node="pump-1"] .dot', "data-health") == "alarm"
    assert page.get_attribute('[data-node="demo-plant"] .dot', "data-health") == "alarm"  # rolled up
    # silent for ten minutes and its anomaly score over the threshold
    assert page.get_attribute('[data-node="press-9"] .dot', "data-health") == "warning"
    _shot(page, "02-plant")
    page.fill("#search", "turbofan")
    page.wait_for_selector('[data-node="pump-1"]', state="detached")
    assert page.is_visible(f'[data-node="{LIVE_ASSET}"]')
    _shot(page, "03-plant-search")
    page.click(f'[data-node="{LIVE_ASSET}"] a.name')
    cell = f'#values tr[data-prop="{LIVE_PROP}"] [data-value]'
    page.wait_for_selector(cell)
    _wait_until(lambda: page.text_content(cell) != "—", 15, f"a value of {LIVE_PROP}")
    first = page.text_content(cell)
    # the page is not reloaded: a changed value arrives over the live feed
    page.evaluate("window.__marker = 'same page'")
    _wait_until(lambda: page.text_content(cell) != first, 20, f"{LIVE_PROP} changing from {first}")
    assert page.evaluate("window.__marker") == "same page"
    assert page.text_content(f'#values tr[data-prop="{LIVE_PROP}"] .badge') == "good"
    assert page.is_hidden("#stale")
    _wait_until(lambda: _chart_title(page) != "", 10, "the first chart's title once its data has loaded")
    assert " point" in _chart_title(page) or "buckets" in _chart_title(page)
    _shot(page, "04-asset-live")


def test_a_technician_acknowledges_an_alert_and_sees_its_state_change(page: Any, plant: Plant) -> None:
    log_in(page, plant.url, "tess")
    page.goto(plant.url + "/#/alerts")
    card = f'[data-alert="{plant.alerts["motor-current"]}"]'
    page.wait_for_selector(f"{card} [data-advice] strong")  # the advice beside the alert
    assert page.get_attribute(f"{card} [data-state]", "data-state") == "active_unack"
    assert page.is_disabled(f"{card} [data-action=shelve]")  # shelving is for engineers
    _shot(page, "05-alerts-before")
    page.click(f"{card} [data-action=acknowledge]")
    page.wait_for_selector(f'{card} [data-state="active_ack"]')
    assert "acknowledged by session:tess" in page.text_content(card)
    assert page.is_hidden(f"{card} [data-action=acknowledge]")
    assert page.text_content("#toast") == f"Alert #{plant.alerts['motor-current']}: acknowledged"
    _shot(page, "06-alerts-acknowledged")
    # what was found, for retraining
    page.click(f"{card} [data-action=feedback]")
    page.select_option(f"{card} select[aria-label=verdict]", "false_alarm")
    page.fill(f"{card} textarea", "sensor cable loose")
    page.click(f"{card} form button[type=submit]")
    _wait_until(lambda: "feedback recorded" in (page.text_content("#toast") or ""), 10, "the feedback toast")


def test_a_viewer_cannot_acknowledge(page: Any, plant: Plant) -> None:
    log_in(page, plant.url, "vic")
    page.goto(plant.url + "/#/alerts")
    card = f'[data-alert="{plant.alerts["pump-anomaly"]}"]'
    page.wait_for_selector(card)
    button = f"{card} [data-action=acknowledge]"
    assert page.is_disabled(button)
    assert page.get_attribute(button, "title") == "needs the technician role"
    assert "Read-only" in page.text_content(card)
    # and the API refuses it anyway, whatever the page shows
    status = page.evaluate(
        """async (id) => (await fetch(`/api/v1/alerts/${id}/acknowledge`, {method: "POST",
             headers: {Authorization: `Bearer ${sessionStorage.getItem("factory-twin.token")}`}})).status""",
        plant.alerts["pump-anomaly"],
    )
    assert status == 403
    page.reload()
    page.wait_for_selector(f'{card} [data-state="active_unack"]')
    _shot(page, "07-viewer-read-only")


def _serve(plant: Plant, port: int) -> tuple[uvicorn.Server, threading.Thread]:
    """A second API server on the plant's database, one this test may stop."""
    assert plant.stack.engine is not None
    app = create_app(TwinSettings(), plant.stack.engine)
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_config=None, access_log=False, timeout_graceful_shutdown=1
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    _wait_until(lambda: server.started, 10, "the second API server to listen")
    return server, thread


def test_a_lost_connection_is_shown_and_recovers(page: Any, plant: Plant) -> None:
    port = free_port()
    server, thread = _serve(plant, port)
    try:
        page.goto(f"http://127.0.0.1:{port}/")
        page.fill("#login-key input[name=api_key]", plant.admin_key)
        page.click("#login-key button")
        page.wait_for_selector("#conn[data-state=live]")
        assert page.is_hidden("#banner")
        server.should_exit = True  # the platform goes away under the open page
        thread.join(timeout=15)
        page.wait_for_selector("#conn[data-state=lost]", timeout=20_000)
        assert "Connection to the platform lost" in page.text_content("#banner")
        _shot(page, "08-connection-lost", full=False)
        server, thread = _serve(plant, port)  # back: the page reconnects by itself
        page.wait_for_selector("#conn[data-state=live]", timeout=30_000)
        assert page.is_hidden("#banner")
    finally:
        server.should_exit = True
        thread.join(timeout=15)


def test_api_key_login_on_a_tablet_and_the_printable_plan(browser: Any, plant: Plant) -> None:
    context = browser.new_context(viewport=TABLET, has_touch=True)
    page = context.new_page()
    try:
        page.goto(plant.url + "/")
        page.fill("#login-key input[name=api_key]", plant.admin_key)
        page.click("#login-key button")
        page.wait_for_selector("#tree li")
        page.goto(plant.url + "/#/asset/pump-1")
        page.wait_for_selector("#open-alerts [data-alert] [data-advice] strong")
        _shot(page, "09-tablet-asset")
        page.goto(plant.url + "/#/asset/press-9")  # its sensor went quiet ten minutes ago
        page.wait_for_selector("#stale", state="visible")
        assert "Data is stale" in page.text_content("#stale")
        assert page.get_attribute('#values tr[data-prop="force"]', "class") == "stale"
        # the canvas appears before its data: the title is written when the trend arrives
        _wait_until(lambda: _chart_title(page) != "", 10, "the first chart's title once its data has loaded")
        assert "min/max shaded" in _chart_title(page)  # an hour of 1 s data, bucketed
        # zoom: drag across a tenth of the chart (some 6 minutes); the server sends that stretch point by point
        box = page.locator("#charts canvas").first.bounding_box()
        assert box is not None
        y = box["y"] + box["height"] / 2
        page.mouse.move(box["x"] + box["width"] * 0.45, y)
        page.mouse.down()
        page.mouse.move(box["x"] + box["width"] * 0.5, y, steps=5)
        page.mouse.move(box["x"] + box["width"] * 0.55, y, steps=5)
        page.mouse.up()
        page.wait_for_selector("#reset-zoom")
        _wait_until(lambda: "points" in _chart_title(page), 10, "raw points when zoomed in")
        _shot(page, "11-tablet-zoomed")
        page.click("#reset-zoom")
        page.wait_for_selector("#reset-zoom", state="detached")
        page.wait_for_selector("#diagnoses canvas")
        titles = page.eval_on_selector_all("#diagnoses .chart-title", "els => els.map(e => e.textContent)")
        # edge and platform scores on charts of their own, each with its threshold
        assert titles == ["Anomaly score, edge model, threshold 1", "Remaining useful life [cycles], with its interval"]
        _shot(page, "10-tablet-stale-asset")
        page.goto(plant.url + "/#/plan")
        page.wait_for_selector("#plan tbody tr")
        dues = page.eval_on_selector_all("#plan tbody tr", "rows => rows.map(r => r.cells[0].textContent)")
        assert len(dues) >= 2  # the two raised here, and any the live plant's own rules raised meanwhile
        page.emulate_media(media="print")
        assert page.is_hidden("header.top")
        assert page.is_hidden("text=Print")
        _shot(page, "12-plan-print")
    finally:
        context.close()


def test_a_guessed_name_is_locked_out_and_the_form_says_for_how_long(page: Any, plant: Plant) -> None:
    page.goto(plant.url + "/")
    for i in range(6):
        page.fill("#login-password input[name=username]", "mallory")
        page.fill("#login-password input[name=password]", f"guess number {i}")
        page.click("#login-password button")
        expected = "unknown user or wrong password" if i < 5 else "too many failed sign-ins for this user name"
        _wait_until(lambda e=expected: e in (page.text_content("#login-error") or ""), 10, expected)
    assert re.search(r"try again in \d+ s", page.text_content("#login-error") or "")
    _shot(page, "login-locked-out")


def test_the_api_docs_render_with_no_internet(browser: Any, plant: Plant) -> None:
    """Swagger UI and ReDoc draw the API from the platform's own files: every request that would leave the
    platform is refused and recorded, and none is made."""
    context = browser.new_context(viewport=LAPTOP)
    page = context.new_page()
    host = urlsplit(plant.url).netloc
    elsewhere: list[str] = []

    def only_the_platform(route: Any) -> None:
        if urlsplit(route.request.url).netloc == host:
            route.continue_()
        else:
            elsewhere.append(route.request.url)
            route.abort("internetdisconnected")

    context.route("**/*", only_the_platform)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    try:
        page.goto(plant.url + "/docs")
        page.wait_for_selector(".swagger-ui .opblock-tag", timeout=30_000)  # the operations, grouped by tag
        assert page.locator(".swagger-ui .opblock").count() > 20
        assert "factory-twin" in page.text_content(".swagger-ui .info .title")
        _shot(page, "30-docs-offline", full=False)
        page.goto(plant.url + "/redoc")
        page.wait_for_selector("redoc .menu-content", timeout=30_000)
        page.wait_for_selector("redoc h1:has-text('factory-twin')", timeout=30_000)
        assert page.locator("redoc h2").count() > 20  # a heading per operation
        _shot(page, "31-redoc-offline", full=False)
    finally:
        context.close()
    assert not elsewhere, f"the docs asked other hosts for {elsewhere}"
    # ReDoc's bundle names one outside file, the Redocly logo under its menu: the page's policy refuses it
    # before any request is made, and nothing else is missing
    refused_logo = "'https://cdn.redoc.ly/redoc/logo-mini.svg' violates the following Content Security Policy"
    assert not [e for e in errors if refused_logo not in e], errors
