"""A shift's maintenance workflow in a real browser, on the running demo plant, at 1280 px and at 360 px: an alert
changing mode live, a comment typed while live events arrive, a work order from an alert to done, the logbook
entry it leaves, the plan exported; no page wider than the screen.

Waits are on conditions (a selector, a text, a value read back), never on a fixed sleep.
"""

from __future__ import annotations

import csv
import io
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import icalendar
import pytest

from plant.wire import Diagnosis, UplinkBatch, now_us
from tests.dashboard.conftest import ARTIFACTS, PASSWORD, Plant, log_in
from tests.dashboard.test_browser import _chart_title, _shot, _wait_until
from twin.alerts import lifecycle
from twin.db import make_sessionmaker
from twin.live import live_bus_for
from twin.tables import Alert, TwinNode

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
    log_in(p, plant.url, "tess")
    p.wait_for_selector("#conn[data-state=live]")
    yield p
    context.close()
    assert not errors, errors


def _fits(page: Any) -> int:
    """No horizontal scroll: the page is no wider than the screen. Its width."""
    width = int(page.evaluate("Math.max(document.documentElement.scrollWidth, document.body.scrollWidth)"))
    assert width <= page.width, f"{page.url}: {width} px wide at {page.width} px"
    # nor a box within it that scrolls sideways (a table wider than its card); a text field scrolls its own text
    wide = page.eval_on_selector_all(
        "main *", "els => els.filter(e => !['INPUT', 'SELECT', 'TEXTAREA'].includes(e.tagName) && "
        "e.scrollWidth > e.clientWidth + 1 && getComputedStyle(e).overflowX !== 'visible')"
        ".map(e => `${e.tagName}#${e.id}.${e.className}: ${e.scrollWidth} > ${e.clientWidth}`)")  # fmt: skip
    assert not wide, f"{page.url}: boxes scrolling sideways at {page.width} px: {wide}"
    return width


def _download(page: Any, selector: str, path: Path) -> Any:
    """Click ``selector`` and save the file it downloads to ``path``; the download."""
    with page.expect_download() as info:
        page.click(selector)
    info.value.save_as(path)
    return info.value


def _needs_ack(plant: Plant) -> int:
    """What the platform counts as waiting for acknowledgement, read over the API."""
    headers = {"Authorization": f"Bearer {plant.admin_key}"}
    return int(httpx.get(plant.url + "/api/v1/alerts/summary", headers=headers, timeout=10).json()["needs_ack"])


def _badge(page: Any) -> int:
    """The number on the Alerts badge (hidden at 0)."""
    return 0 if page.is_hidden("#alert-count") else int(page.text_content("#alert-count") or "0")


def _badge_is_right(page: Any, plant: Plant) -> None:
    """The badge shows the platform's count (live alerts may move it meanwhile: it must follow)."""
    _wait_until(lambda: _badge(page) == _needs_ack(plant), 15, "the badge to show the alerts awaiting acknowledgement")


def _raise_rul_alert(plant: Plant) -> int:
    """An engine's RUL alert of its own (the plan item a test works on), as the alert engine raises one."""
    assert plant.stack.engine is not None
    with make_sessionmaker(plant.stack.engine)() as s:
        node = s.get(TwinNode, "engine-1")
        assert node is not None
        now = now_us()
        evidence = {"ts": now, "rul": 60.0, "rul_low": 52.0, "rul_high": 68.0, "unit": "cycle"}
        alert = lifecycle.raise_alert(
            s, key=f"engine-1/degradation/{uuid.uuid4().hex[:8]}", node_id="engine-1", node_path=node.path,
            asset_type="turbofan", rule="degradation", kind="rul", condition="RUL", severity="high",
            criticality="high", level=1, message="Engine degradation", value=60.0, evidence=evidence, at=now,
            unit="cycles", limit=70.0, reason="RUL 60 ± 8 cycles, below the 70 cycles horizon",
        )  # fmt: skip
        s.commit()
        return alert.id


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


def _learning(plant: Plant, share: float, ready_in_s: float) -> None:
    """The pump's anomaly model says it is still learning the pump's baseline, as an agent's model does; stamped
    20 s ahead like ``_predict``."""
    stack = plant.stack
    assert stack.platform is not None
    assert stack.engine is not None
    now = now_us()
    d = Diagnosis(node="pump-1", task="anomaly", ts=now + 20_000_000, model="skab-anomaly", version="test",
                  confidence=0.0, learning=share, ready_at=now + int(ready_in_s * 1e6))  # fmt: skip
    batch = UplinkBatch(gateway="browser-test", batch=uuid.uuid4().hex, sent=now, diagnoses=[d])
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


def _work_order_form(page: Any, where: str, task: str) -> str:
    """Open the work-order form of the alert card or plan row ``where``: its task is ``task`` (from the knowledge
    base) and it has a due date; assign it to tess. The form's selector."""
    page.click(f"{where} [data-action='work order']")
    form = f"{where} form[data-form=work-order]"
    _wait_until(lambda: page.input_value(f"{form} input[name=task]") != "", 10, "the task from the knowledge base")
    assert page.input_value(f"{form} input[name=task]") == task
    assert page.input_value(f"{form} input[name=due]") != ""
    page.fill(f"{form} input[name=assignee]", "tess")
    return form


def _submit_work_order(page: Any, form: str) -> str:
    """Submit the work-order form; the id of the order opened, from the toast."""
    page.click(f"{form} button[type=submit]")
    _wait_until(lambda: "opened" in (page.text_content("#toast") or ""), 10, "the work order toast")
    return (page.text_content("#toast") or "").split("#")[1].split()[0]


def test_a_work_order_from_an_alert_to_done_and_into_the_logbook(page: Any, plant: Plant, tmp_path: Path) -> None:
    page.goto(plant.url + "/#/asset/pump-1")
    card = f'#open-alerts [data-alert="{plant.alerts["motor-current"]}"]'
    form = _work_order_form(page, card, "Motor current high")
    wo_id = _submit_work_order(page, form)
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
    # the logbook exported: the same entry in the CSV
    saved = _download(page, "#logbook-csv", tmp_path / "logbook.csv")
    assert saved.suggested_filename.startswith("logbook-pump-1-")
    rows = list(csv.DictReader(io.StringIO((tmp_path / "logbook.csv").read_text(encoding="utf-8"))))
    done = [r for r in rows if r["ref"] == f"work-order/{wo_id}" and r["kind"] == "done"]
    assert done, rows[:5]
    assert "fan blocked by dust" in done[0]["detail"]
    # the verdict went to the alert as feedback for the models, and the alert is acknowledged
    page.goto(plant.url + "/#/alerts?open=0&subtree=pump-1")
    alert = f'[data-alert="{plant.alerts["motor-current"]}"]'
    page.wait_for_selector(alert)
    assert page.get_attribute(f"{alert} [data-state]", "data-state") in ("active_ack", "normal")
    page.click(f"{alert} [data-history] summary")
    given = f"{alert} [data-history] li[data-kind=feedback]:has-text('fan blocked by dust')"
    page.wait_for_selector(given)
    assert "feedback: true fault" in page.text_content(given)
    _badge_is_right(page, plant)


def test_the_plan_is_exported_as_csv_and_calendar(page: Any, plant: Plant, tmp_path: Path) -> None:
    page.goto(plant.url + "/#/plan")
    page.wait_for_selector("#plan tbody tr[data-alert]")
    _fits(page)
    _shot(page, f"23-plan-{page.width}")
    _download(page, "[data-export=csv]", tmp_path / "plan.csv")
    assert (tmp_path / "plan.csv").read_text(encoding="utf-8").startswith("due,overdue,priority,asset,")
    saved = _download(page, "[data-export=ics]", tmp_path / "plan.ics")
    assert saved.suggested_filename.endswith(".ics")
    cal = icalendar.Calendar.from_ical((tmp_path / "plan.ics").read_bytes())
    assert cal.walk("VEVENT"), "no event in the exported calendar"


def test_a_work_order_from_a_plan_item(page: Any, plant: Plant) -> None:
    alert_id = _raise_rul_alert(plant)
    page.goto(plant.url + "/#/plan")
    row = f'#plan tbody tr[data-alert="{alert_id}"]'
    page.wait_for_selector(row)
    assert "lower bound 52 cycles" in page.text_content(f"{row} td[data-label=Due]")  # due from the RUL interval
    form = _work_order_form(page, row, "Engine degradation")
    _fits(page)
    _shot(page, f"25-plan-work-order-{page.width}")
    wo_id = _submit_work_order(page, form)
    # the plan item now names its work order, and leads to it
    link = f"{row} a[href='#/work-orders?id={wo_id}']"
    page.wait_for_selector(link)
    assert "open · tess" in page.text_content(f"{row} td[data-label='Work order']")
    page.click(link)
    page.wait_for_selector(f'[data-wo="{wo_id}"].highlight')
    assert "Engine degradation" in page.text_content(f'[data-wo="{wo_id}"]')
    _fits(page)


def test_a_model_still_learning_says_so_and_when_it_will_judge(page: Any, plant: Plant) -> None:
    _learning(plant, 0.4, ready_in_s=150)
    page.goto(plant.url + "/#/asset/pump-1")
    page.wait_for_selector("#learning", state="visible")
    text = page.text_content("#learning") or ""
    assert "The anomaly model is learning this machine's normal operation: 40 % of the healthy data it needs." in text
    assert "First verdicts about " in text
    assert "still learning" in (page.text_content("#diagnoses") or "")  # not "No diagnoses"
    _fits(page)
    _shot(page, f"27-learning-{page.width}", full=False)


# what each machine's page opens on: the site model's key signals, with their units and alarm limits
KEY_SIGNALS = {
    "mill-1": [("tool_wear [min]", ["HI 200 min", "HIHI 230 min"]), ("torque [N·m]", ["HI 65 N·m", "HIHI 72 N·m"]),
               ("rotational_speed [rpm]", ["LO 1250 rpm", "LOLO 1170 rpm"])],
    "pump-1": [("accelerometer1_rms [g]", ["HI 0.3 g", "HIHI 0.45 g"]), ("flow_rate [l/min]", ["LO 15 l/min"]),
               ("current [A]", ["HI 4.5 A", "HIHI 6 A"])],
    "engine-1": [("t50 [°R]", ["HI 1432 °R", "HIHI 1440 °R"]), ("ps30 [psia]", []), ("nc [rpm]", [])],
}  # fmt: skip


@pytest.mark.parametrize("node", list(KEY_SIGNALS))
def test_an_asset_page_opens_on_its_key_signals_with_units_and_limits(page: Any, plant: Plant, node: str) -> None:
    page.goto(plant.url + f"/#/asset/{node}")
    expected = KEY_SIGNALS[node]
    titles = "#charts .chart-title"

    def read() -> list[str]:
        return list(page.eval_on_selector_all(titles, "els => els.map(e => e.textContent)"))

    _wait_until(lambda: len(read()) == len(expected) and all(read()), 20, f"the titles of {node}'s charts")
    got = read()
    assert [t.split(" — ")[0] for t in got] == [name for name, _ in expected], got
    for title, (_, limits) in zip(got, expected, strict=True):
        assert all(limit in title.split(" — limits ")[-1] for limit in limits), title
    # the chips above the charts say which are shown: the same key signals
    pressed = page.eval_on_selector_all("#trend-props [aria-pressed=true]", "els => els.map(e => e.textContent)")
    assert sorted(pressed) == sorted(name.split(" ")[0] for name, _ in expected), pressed
    _fits(page)


def _ready_asset(page: Any) -> None:
    page.wait_for_selector("#values tr")
    _wait_until(lambda: _chart_title(page) != "", 15, "the first chart's title once its data has loaded")


def _with_work_order_form(page: Any) -> None:
    page.wait_for_selector("#alert-list [data-alert] [data-action='work order']")
    page.click("#alert-list [data-alert] [data-action='work order'] >> nth=0")
    page.wait_for_selector("#alert-list form[data-form=work-order]")


def _alarm_rate(page: Any) -> None:
    page.wait_for_selector("#alarm-rate .hint")
    assert "EEMUA 191" in page.text_content("#alarm-rate")


def test_every_page_fits_the_screen_and_shows_the_alarm_rate(page: Any, plant: Plant) -> None:
    """Every page of the dashboard, each machine's page and a card with its form open: no horizontal scroll. The
    widths measured land in test-artifacts/dashboard/widths-<screen>.json."""
    pages: list[tuple[str, Any]] = [
        ("#/", lambda p: (p.wait_for_selector("#tree li"), _alarm_rate(p))),
        ("#/alerts", lambda p: (p.wait_for_selector("#alert-list [data-alert]"), _alarm_rate(p))),
        ("#/alerts?open=0", _with_work_order_form),
        ("#/plan", lambda p: p.wait_for_selector("#plan tbody tr[data-alert]")),
        ("#/work-orders?state=open&state=in_progress&state=done&state=cancelled", lambda p: p.wait_for_selector(
            "#wo-list")),
        *((f"#/asset/{node}", _ready_asset) for node in ("mill-1", "pump-1", "engine-1", "press-9")),
        ("#/asset/demo-plant", lambda p: p.wait_for_selector("#values")),
    ]  # fmt: skip
    widths: dict[str, int] = {}
    for i, (page_hash, ready) in enumerate(pages):
        page.goto(plant.url + "/" + page_hash)
        ready(page)
        widths[page_hash] = _fits(page)
        _shot(page, f"28-page-{i}-{page.width}")
    _badge_is_right(page, plant)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / f"widths-{page.width}.json").write_text(json.dumps(widths, indent=1), encoding="utf-8")


def test_the_dashboard_follows_the_system_dark_mode_and_the_keyboard(browser: Any, plant: Plant) -> None:
    context = browser.new_context(viewport={"width": 360, "height": 800}, color_scheme="dark")
    page = context.new_page()
    try:
        page.goto(plant.url + "/")
        page.wait_for_selector("#login-password")
        page.width = 360
        _fits(page)  # the sign-in page too
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
        # on to the alerts by the keyboard, with a visible focus ring, and an action opened with Enter
        _tab_to(page, "document.activeElement.dataset.nav === 'alerts'", "the Alerts link")
        assert page.evaluate("getComputedStyle(document.activeElement).outlineStyle") == "solid"
        page.keyboard.press("Enter")
        page.wait_for_selector("#alert-list [data-alert] [data-action=comment]")
        _tab_to(page, "document.activeElement.dataset.action === 'comment'", "an alert's Comment button", presses=60)
        page.keyboard.press("Enter")
        page.wait_for_selector("#alert-list textarea[name=comment]")
        assert page.evaluate("document.activeElement.name") == "comment"  # the form takes the focus
        _shot(page, "26-keyboard-comment-360")
    finally:
        context.close()


def test_an_action_form_puts_the_focus_where_the_person_must_type(browser: Any, plant: Plant) -> None:
    context = browser.new_context(viewport={"width": 360, "height": 800})
    page = context.new_page()
    try:
        log_in(page, plant.url, "erin")  # an engineer: every action of an open alert
        page.goto(plant.url + "/#/alerts")
        card = "#alert-list [data-alert]"
        page.wait_for_selector(f"{card} [data-action=shelve]")
        # the required field, at once (not after a timer): a shelve's reason, not the minutes it already holds
        for action, field in (("shelve", "reason"), ("comment", "comment"), ("work order", "task"),
                              ("feedback", "verdict")):
            page.locator(f"{card} [data-action='{action}']").first.click()
            assert page.evaluate("document.activeElement.getAttribute('aria-label')") == field, action
    finally:
        context.close()


def _tab_to(page: Any, check: str, what: str, presses: int = 30) -> None:
    """Press Tab until ``check`` (a script) holds for the focused element."""
    for _ in range(presses):
        page.keyboard.press("Tab")
        if page.evaluate(check):
            return
    raise AssertionError(f"{what} not reached with {presses} presses of Tab")
