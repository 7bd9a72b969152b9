"""A shift's maintenance workflow in a real browser, on the running demo plant, at 1280 px and at 360 px: an alert
changing mode live, a comment typed while live events arrive, a work order from an alert to done, the logbook
entry it leaves, the plan exported; no page wider than the screen.

Waits are on conditions (a selector, a text, a value read back), never on a fixed sleep.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import icalendar
import pytest

from plant.wire import Diagnosis, UplinkBatch, now_us
from tests.dashboard.conftest import PASSWORD, Plant
from tests.dashboard.test_browser import _shot, _wait_until
from twin.db import make_sessionmaker
from twin.live import live_bus_for
from twin.tables import Alert

pytestmark = [pytest.mark.browser, pytest.mark.slow]

WIDTHS = (1280, 360)
MODES = ("OSF", "PWF", "HDF", "TWF")


@pytest.fixture(params=WIDTHS, ids=lambda w: f"{w}px")
def page(browser: Any, plant: Plant, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A fresh browser context at the given width, logged in as the technician; page errors fail the test."""
    context = browser.new_context(viewport={"width": request.param, "height": 900}, accept_downloads=True)
    p = context.new_page()
    p.set_default_timeout(20_000)
    errors: list[str] = []
    p.on("pageerror", lambda e: errors.append(str(e)))
    p.width = request.param
    p.goto(plant.url + "/")
    p.fill("#login-password input[name=username]", "tess")
    p.fill("#login-password input[name=password]", PASSWORD)
    p.click("#login-password button")
    p.wait_for_selector("#tree li")
    p.wait_for_selector("#conn[data-state=live]")
    yield p
    context.close()
    assert not errors, errors


def _fits(page: Any) -> None:
    """No horizontal scroll: the page is no wider than the screen."""
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= page.width, f"{page.url}: {width} px wide at {page.width} px"


def _predict(plant: Plant, mode: str) -> None:
    """The mill's fault model predicts ``mode``, stored and announced as an agent's diagnosis would be. Stamped
    20 s ahead, so the live mill's own diagnoses (older) cannot overtake it while the test looks."""
    stack = plant.stack
    assert stack.platform is not None
    assert stack.engine is not None
    d = Diagnosis(node="mill-1", task="faults", ts=now_us() + 20_000_000, model="ai4i-faults", version="test",
                  confidence=0.95, label=mode, probability=0.95)  # fmt: skip
    batch = UplinkBatch(gateway="browser-test", batch=uuid.uuid4().hex, sent=now_us(), diagnoses=[d])
    result = stack.platform.store.apply(batch)
    live_bus_for(stack.engine).listener(batch, result)


def _fault_alert(plant: Plant) -> tuple[int, str] | None:
    assert plant.stack.engine is not None
    with make_sessionmaker(plant.stack.engine)() as s:
        a = s.query(Alert).filter(Alert.rule == "failure-predicted", Alert.active.is_(True)).first()
        return (a.id, a.condition) if a else None


def _next_mode(plant: Plant) -> tuple[int, str]:
    """Predict a mode other than the one the mill's fault alert shows; the alert's id and the new mode."""
    current = _fault_alert(plant)
    mode = next(m for m in MODES if current is None or m != current[1])
    _predict(plant, mode)
    _wait_until(lambda: (_fault_alert(plant) or (0, ""))[1] == mode, 20, f"the fault alert to follow {mode}")
    found = _fault_alert(plant)
    assert found is not None
    return found[0], mode


def test_an_alert_follows_the_mode_live_and_a_comment_survives_live_updates(page: Any, plant: Plant) -> None:
    alert_id, mode = _next_mode(plant)
    page.goto(plant.url + "/#/alerts")
    card = f'[data-alert="{alert_id}"]'
    page.wait_for_selector(f"{card} [data-condition]:text-is('{mode}')")
    assert mode in page.text_content(f"{card} [data-reason]")
    page.evaluate("window.__marker = 'same page'")
    # a person starts a comment on another alert
    other = f'[data-alert="{plant.alerts["motor-current"]}"]'
    page.click(f"{other} [data-action=comment]")
    box = f"{other} textarea[name=comment]"
    page.wait_for_selector(box)
    page.type(box, "Motor runs hot, ")
    # meanwhile the mill's alert changes mode twice: live updates reach the list, the other card is patched
    for _ in range(2):
        _, mode = _next_mode(plant)
        page.wait_for_selector(f"{card} [data-condition]:text-is('{mode}')")
        assert page.input_value(box) == "Motor runs hot, "  # not wiped
        assert page.evaluate("document.activeElement.name") == "comment"  # still where the person types
    assert page.evaluate("window.__marker") == "same page"  # patched in place, never reloaded
    page.type(box, "checking the fan.")
    _fits(page)
    _shot(page, f"20-comment-during-live-updates-{page.width}")
    page.click(f"{other} form[data-form=comment] button[type=submit]")
    _wait_until(lambda: "comment added" in (page.text_content("#toast") or ""), 10, "the comment toast")
    page.click(f"{other} [data-history] summary")
    typed = "Motor runs hot, checking the fan."
    page.wait_for_selector(f"{other} [data-history] li[data-kind=comment]:has-text('{typed}')")
    # the mill's alert history shows each change of mode with its reason
    page.click(f"{card} [data-history] summary")
    page.wait_for_selector(f"{card} [data-history] li[data-kind=change]")


def test_a_work_order_from_an_alert_to_done_and_into_the_logbook(page: Any, plant: Plant) -> None:
    page.goto(plant.url + "/#/asset/pump-1")
    card = f'#open-alerts [data-alert="{plant.alerts["motor-current"]}"]'
    page.click(f"{card} [data-action='work order']")
    form = f"{card} form[data-form=work-order]"
    _wait_until(lambda: page.input_value(f"{form} input[name=task]") != "", 10, "the task from the knowledge base")
    assert page.input_value(f"{form} input[name=task]") == "Motor current high"
    assert page.input_value(f"{form} input[name=due]") != ""
    page.fill(f"{form} input[name=assignee]", "tess")
    page.click(f"{form} button[type=submit]")
    _wait_until(lambda: "opened" in (page.text_content("#toast") or ""), 10, "the work order toast")
    wo_id = (page.text_content("#toast") or "").split("#")[1].split()[0]
    _fits(page)
    page.goto(plant.url + "/#/work-orders")
    wo = f'[data-wo="{wo_id}"]'
    page.wait_for_selector(wo)
    assert "Motor current high" in page.text_content(wo)
    page.click(f"{wo} [data-action=start]")
    page.wait_for_selector(f'{wo} [data-state="in_progress"]')
    page.click(f"{wo} [data-action=complete]")
    page.select_option(f"{wo} select[name=verdict]", "true_fault")
    page.fill(f"{wo} input[name=cause]", "fan blocked by dust")
    page.fill(f"{wo} input[name=time_spent_h]", "0.5")
    _fits(page)
    _shot(page, f"21-work-order-complete-{page.width}")
    page.click(f"{wo} form[data-form=complete] button[type=submit]")
    # done orders leave the default list (open and in progress); the done filter shows it
    page.wait_for_selector(wo, state="detached")
    page.click("#wo-states button:has-text('done')")
    page.wait_for_selector(f'{wo} [data-state="done"]')
    page.goto(plant.url + "/#/asset/pump-1")
    page.wait_for_selector(f"#logbook tr[data-source=work_orders][data-kind=done]:has-text('Work order #{wo_id} done')")
    assert "fan blocked by dust" in page.text_content(f"#logbook tr[data-kind=done]:has-text('#{wo_id}')")
    _fits(page)
    _shot(page, f"22-logbook-{page.width}")


def test_the_plan_is_exported_as_csv_and_calendar(page: Any, plant: Plant, tmp_path: Path) -> None:
    page.goto(plant.url + "/#/plan")
    page.wait_for_selector("#plan tbody tr[data-alert]")
    _fits(page)
    _shot(page, f"23-plan-{page.width}")
    with page.expect_download() as info:
        page.click("[data-export=csv]")
    path = tmp_path / "plan.csv"
    info.value.save_as(path)
    assert path.read_text(encoding="utf-8").startswith("due,overdue,priority,asset,")
    with page.expect_download() as info:
        page.click("[data-export=ics]")
    path = tmp_path / "plan.ics"
    info.value.save_as(path)
    assert info.value.suggested_filename.endswith(".ics")
    cal = icalendar.Calendar.from_ical(path.read_bytes())
    assert cal.walk("VEVENT"), "no event in the exported calendar"
    pages = (("#/", "#tree li"), ("#/alerts", "#alert-list [data-alert]"), ("#/work-orders", "#wo-list"))
    for page_hash, ready in pages:
        page.goto(plant.url + "/" + page_hash)
        page.wait_for_selector(ready)
        _fits(page)


def test_the_dashboard_follows_the_system_dark_mode_and_the_keyboard(browser: Any, plant: Plant) -> None:
    context = browser.new_context(viewport={"width": 360, "height": 800}, color_scheme="dark")
    page = context.new_page()
    try:
        page.goto(plant.url + "/")
        page.wait_for_selector("#login-password")
        background = page.evaluate("getComputedStyle(document.documentElement).backgroundColor")
        assert background == "rgb(18, 22, 26)", background  # the dark palette, not the light one
        # signing in from the keyboard alone: tab to the fields, type, press Enter
        page.keyboard.press("Tab")
        focused = []
        for _ in range(8):
            name = "document.activeElement.getAttribute('name') || document.activeElement.tagName"
            focused.append(page.evaluate(name))
            if focused[-1] == "username":
                break
            page.keyboard.press("Tab")
        assert "username" in focused
        page.keyboard.type("tess")
        page.keyboard.press("Tab")
        page.keyboard.type(PASSWORD)
        page.keyboard.press("Enter")
        page.wait_for_selector("#tree li")
        _shot(page, "24-dark-360")
    finally:
        context.close()
