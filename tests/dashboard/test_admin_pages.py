"""Users, keys, the audit trail and one's own account in a real browser on the running demo plant, at 1280 px and
at 360 px: an admin creates a user limited to a site, widens and disables it and finds it in the audit trail;
a person changes their password.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select

from tests.dashboard.conftest import ARTIFACTS, PASSWORD, Plant, log_in
from twin.auth import Role
from twin.db import make_sessionmaker
from twin.tables import User
from twin.users import create_user

pytestmark = [pytest.mark.browser, pytest.mark.slow]

WIDTHS = (1280, 360)


@pytest.fixture(params=WIDTHS, ids=lambda w: f"{w}px")
def context(browser: Any, request: pytest.FixtureRequest) -> Iterator[Any]:
    ctx = browser.new_context(viewport={"width": request.param, "height": 900}, accept_downloads=True)
    ctx.width = request.param
    yield ctx
    ctx.close()


def _page(context: Any) -> Any:
    p = context.new_page()
    p.set_default_timeout(20_000)
    p.errors = []
    p.on("pageerror", lambda e: p.errors.append(str(e)))
    p.on("dialog", lambda d: d.accept())  # the confirm() before removing or revoking
    p.width = context.width
    return p


def _fits(page: Any) -> None:
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= page.width, f"{page.url}: {width} px wide at {page.width} px"


def _person(plant: Plant, role: Role) -> str:
    assert plant.stack.engine is not None
    name = f"p-{uuid.uuid4().hex[:8]}"
    with make_sessionmaker(plant.stack.engine)() as s:
        create_user(s, name, PASSWORD, role)
    return name


def _sites_of(plant: Plant, username: str) -> list[str] | None:
    assert plant.stack.engine is not None
    with make_sessionmaker(plant.stack.engine)() as s:
        sites: list[str] | None = s.scalars(select(User.sites).where(User.username == username)).one()
    return sites


def test_an_admin_creates_and_disables_a_user_and_finds_it_in_the_audit_trail(context: Any, plant: Plant) -> None:
    page = _page(context)
    log_in(page, plant.url, _person(plant, Role.ADMIN))
    page.click("nav a[data-nav=users]")
    page.wait_for_selector("#users tbody tr[data-user]")
    _fits(page)
    name = f"w-{uuid.uuid4().hex[:6]}"
    page.fill("#create-user input[name=username]", name)
    page.fill("#create-user input[name=password]", "a long first password")
    page.select_option("#create-user select", "technician")
    page.uncheck("#create-user input[name=new-user-sites-all]")
    page.check("#create-user input[name=new-user-sites][value=demo-plant]")
    page.click("#create-user button[type=submit]")
    row = page.wait_for_selector(f"#users tr[data-user='{name}']")
    assert row.query_selector("[data-field=sites] summary").text_content() == "Demo plant"
    assert _sites_of(plant, name) == ["demo-plant"]
    row.query_selector("[data-field=sites] summary").click()
    row.query_selector("input[name=user-sites-all]").check()
    row.query_selector("[data-field=sites] button[type=submit]").click()
    page.wait_for_selector(f"#users tr[data-user='{name}'] [data-field=sites] summary:text-is('All sites')")
    assert _sites_of(plant, name) is None
    row = page.wait_for_selector(f"#users tr[data-user='{name}']")
    row.query_selector("button[data-action=disable]").click()
    page.wait_for_selector(f"#users tr[data-user='{name}'] button[data-action=enable]")
    page.fill("#create-key input[name=name]", f"wallboard {name}")
    page.fill("#create-key input[name=expires_in_days]", "30")
    page.click("#create-key button[type=submit]")
    shown = page.wait_for_selector("input.key-once")
    assert shown.input_value().startswith("ftk_")
    _fits(page)
    page.screenshot(path=str(ARTIFACTS / f"30-users-{page.width}.png"), full_page=True)

    page.click("nav a[data-nav=audit]")
    page.wait_for_selector("#audit tr[data-id]")
    page.fill("#audit-filters input[name=target]", f"user:{name}")
    page.click("#audit-filters button[type=submit]")
    for _ in range(100):
        actions = page.eval_on_selector_all("#audit tr[data-id] code", "els => els.map(e => e.textContent)")
        if actions == ["user.disable", "user.set_sites", "user.create"]:
            break
        page.wait_for_timeout(100)
    assert actions == ["user.disable", "user.set_sites", "user.create"]
    with page.expect_download() as got:
        page.click("#audit-filters button[data-action=export]")
    assert got.value.suggested_filename.startswith("audit-")
    _fits(page)
    page.screenshot(path=str(ARTIFACTS / f"31-audit-{page.width}.png"), full_page=True)

    refused = _page(context)
    refused.goto(plant.url + "/")
    refused.fill("#login-password input[name=username]", name)
    refused.fill("#login-password input[name=password]", "a long first password")
    refused.click("#login-password button")
    assert "disabled" in refused.wait_for_selector("#login-error:not(:empty)").text_content()
    assert not page.errors + refused.errors


def test_a_person_changes_their_password_and_sees_their_sessions(context: Any, plant: Plant) -> None:
    name = _person(plant, Role.VIEWER)
    page = _page(context)
    log_in(page, plant.url, name)
    assert page.is_hidden("nav a[data-nav=users]")
    assert page.is_hidden("nav a[data-nav=audit]")
    page.click("#who")
    page.wait_for_selector("#my-sessions li")
    _fits(page)
    page.fill("#change-password input[name=current]", "not my password")
    page.fill("#change-password input[name=new]", "my new long password")
    page.fill("#change-password input[name=again]", "my new long password")
    page.click("#change-password button[type=submit]")
    assert "wrong" in page.wait_for_selector("p.error:not(:empty)").text_content()
    page.fill("#change-password input[name=current]", PASSWORD)
    page.fill("#change-password input[name=new]", "my new long password")
    page.fill("#change-password input[name=again]", "my new long password")
    page.click("#change-password button[type=submit]")
    page.wait_for_selector("#toast:not([hidden])")
    page.screenshot(path=str(ARTIFACTS / f"32-account-{page.width}.png"), full_page=True)
    other = _page(context)
    log_in(other, plant.url, name, "my new long password")
    assert not page.errors + other.errors
