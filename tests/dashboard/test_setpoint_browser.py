"""The setpoint card in a real browser: a value outside the limits is refused before anything is sent; a
good one opens a confirmation that says what will happen, and once confirmed the card follows the command;
a viewer cannot write."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from plant.site import parse_site
from tests.api_server import serve_api
from tests.dashboard.conftest import ARTIFACTS, PASSWORD, log_in
from tests.twin.test_setpoints import SITE
from twin.api import create_app
from twin.config import TwinSettings
from twin.db import make_engine, make_sessionmaker
from twin.store import TwinStore
from twin.tables import Base, SetpointCommand
from twin.users import create_user

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Any]]:
    engine = make_engine(f"sqlite:///{tmp_path / 'twin.db'}")
    Base.metadata.create_all(engine)
    TwinStore(engine).sync_site(parse_site(SITE))
    with make_sessionmaker(engine)() as s:
        create_user(s, "tess", PASSWORD, "technician")
        create_user(s, "vic", PASSWORD, "viewer")
    with serve_api(create_app(TwinSettings(data_dir=tmp_path, model_dir=tmp_path / "none"), engine)) as url:
        yield url, engine
    engine.dispose()


def _open(browser: Any, url: str, user: str) -> Any:
    page = browser.new_context(viewport={"width": 1366, "height": 900}).new_page()
    page.set_default_timeout(15_000)
    page.errors = []
    page.on("pageerror", lambda e: page.errors.append(str(e)))
    log_in(page, url, user)
    page.goto(url + "/#/asset/p1")
    page.wait_for_selector("[data-setpoint=speed]")
    return page


def test_a_technician_writes_a_setpoint_after_confirming(browser: Any, served: tuple[str, Any]) -> None:
    url, engine = served
    page = _open(browser, url, "tess")
    card = page.locator("[data-setpoint=speed]")
    card.locator("input[data-setpoint-input=speed]").fill("5000")
    card.locator("[data-action=write]").click()
    assert "outside the limits" in card.locator(".error").text_content()
    assert page.locator("[data-confirming]").count() == 0
    card.locator("input[data-setpoint-input=speed]").fill("60")
    card.locator("[data-action=write]").click()
    dialog = page.locator("[data-confirming]")
    assert "60 rpm" in dialog.text_content()
    assert "60 s" in dialog.text_content()  # how long it may wait before it is void
    dialog.locator("input[aria-label=reason]").fill("bearing wear: run slower")
    page.screenshot(path=str(ARTIFACTS / "40-setpoint-confirm.png"))
    dialog.locator("[data-action=confirm-write]").click()
    page.wait_for_selector("[data-setpoint=speed] [data-command-state]")
    assert "60 rpm" in page.locator("[data-setpoint=speed] [data-desired]").text_content()
    with make_sessionmaker(engine)() as s:
        (cmd,) = s.query(SetpointCommand).all()
        assert (cmd.value, cmd.actor, cmd.reason) == (60.0, "tess", "bearing wear: run slower")
    page.screenshot(path=str(ARTIFACTS / "41-setpoint-pending.png"))
    assert not page.errors, page.errors


def test_a_viewer_sees_the_setpoint_but_cannot_write(browser: Any, served: tuple[str, Any]) -> None:
    url, _ = served
    page = _open(browser, url, "vic")
    button = page.locator("[data-setpoint=speed] [data-action=write]")
    assert button.is_disabled()
    assert "technician" in (button.get_attribute("title") or "")
    assert not page.errors, page.errors
