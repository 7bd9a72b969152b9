"""Users and keys an admin can run: roles, disabling, passwords, sessions, key expiry and rotation, and the rule
that someone must always be able to administer. Bad input gets a clear 4xx, never a 500."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from httpx import Response
from sqlalchemy import Engine, select

from factory_twin.cli import cli
from factory_twin.credentials import FILE_NAME, demo_credentials
from migrations import run as migrations
from plant.wire import now_us
from tests.conftest import module_app, reset_app
from twin import auth
from twin.api import create_app
from twin.auth import Role, create_key
from twin.config import TwinSettings
from twin.db import make_engine, make_sessionmaker
from twin.tables import ApiKey, AuditRecord, Base
from twin.users import create_user

PASSWORD = "correct horse battery"


@dataclass
class Api:
    client: TestClient
    engine: Engine

    def call(self, method: str, path: str, token: str | None, **kw: Any) -> Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return self.client.request(method, "/api/v1" + path, headers=headers, **kw)

    def login(self, username: str, password: str = PASSWORD) -> Response:
        return self.client.post("/api/v1/session", json={"username": username, "password": password})

    def token(self, username: str, password: str = PASSWORD) -> str:
        r = self.login(username, password)
        assert r.status_code == 201, r.text
        return str(r.json()["token"])

    def key(self, role: Role, **kw: Any) -> str:
        with make_sessionmaker(self.engine)() as s:
            return create_key(s, role, f"{role.value} key", **kw)


@pytest.fixture(scope="module")
def app(module_db_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """One database and app for the module; ``api`` empties them for each test."""
    with module_app(module_db_url, TwinSettings(data_dir=tmp_path_factory.mktemp("users"))) as (client, engine):
        yield Api(client, engine)


@pytest.fixture
def api(app: Api) -> Api:
    """Users ada (admin), tess (technician); no standing admin key: ada is the only way to administer."""
    reset_app(app.client)
    with make_sessionmaker(app.engine)() as s:
        create_user(s, "ada", PASSWORD, Role.ADMIN)
        create_user(s, "tess", PASSWORD, Role.TECHNICIAN)
    return app


# --- the last admin -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("PATCH", "/users/ada", {"disabled": True}),
        ("PATCH", "/users/ada", {"role": "engineer"}),
        ("DELETE", "/users/ada", None),
    ],
)
def test_the_last_admin_cannot_be_disabled_demoted_or_removed(api: Api, method: str, path: str,
                                                               body: dict[str, Any] | None) -> None:
    ada = api.token("ada")
    r = api.call(method, path, ada, json=body)
    assert r.status_code == 409, r.text
    assert "last active admin" in r.json()["detail"]
    assert api.call("GET", "/users/ada", ada).json()["role"] == "admin"
    # with a second admin it is allowed
    assert api.call("PATCH", "/users/tess", ada, json={"role": "admin"}).status_code == 200
    assert api.call(method, path, ada, json=body).status_code in (200, 204)


def test_the_last_admin_key_cannot_be_revoked(api: Api) -> None:
    key = api.key(Role.ADMIN)
    ada = api.token("ada")
    assert api.call("PATCH", "/users/ada", key, json={"role": "viewer"}).status_code == 200  # the key remains
    r = api.call("DELETE", f"/keys/{key[:16]}", key)
    assert r.status_code == 409
    assert "last active admin" in r.json()["detail"]
    assert api.call("GET", "/keys", key).status_code == 200
    assert api.call("GET", "/keys", ada).status_code == 403  # ada's session took her new role at once


def test_an_admin_key_of_a_disabled_user_does_not_count(api: Api) -> None:
    ada_key = api.key(Role.ADMIN, owner="ada")
    r = api.call("PATCH", "/users/ada", ada_key, json={"disabled": True})
    assert r.status_code == 409  # her own key would stop with her


# --- disabling, roles, passwords, sessions ------------------------------------------------------------------------


def test_a_disabled_user_cannot_log_in_and_their_sessions_and_keys_stop(api: Api) -> None:
    ada = api.token("ada")
    tess = api.token("tess")
    tess_key = api.key(Role.TECHNICIAN, owner="tess")
    assert api.call("GET", "/session", tess_key).status_code == 200
    assert api.call("PATCH", "/users/tess", ada, json={"disabled": True}).json()["disabled"] is True
    assert api.call("GET", "/session", tess).status_code == 401
    r = api.call("GET", "/session", tess_key)
    assert r.status_code == 401
    assert "disabled" in r.json()["detail"]
    refused = api.login("tess")
    assert refused.status_code == 401
    assert "disabled" in refused.json()["detail"]
    assert api.login("tess", "wrong password").json()["detail"] == "unknown user or wrong password"  # no hint
    api.call("PATCH", "/users/tess", ada, json={"disabled": False})
    assert api.call("GET", "/session", tess_key).status_code == 200  # the key works again
    assert api.call("GET", "/session", tess).status_code == 401  # the ended session does not
    assert api.login("tess").status_code == 201


def test_a_role_change_applies_to_open_sessions(api: Api) -> None:
    ada, tess = api.token("ada"), api.token("tess")
    assert api.call("GET", "/keys", tess).status_code == 403
    api.call("PATCH", "/users/tess", ada, json={"role": "admin"})
    assert api.call("GET", "/keys", tess).status_code == 200
    assert api.call("GET", "/session", tess).json()["role"] == "admin"


def test_change_own_password(api: Api) -> None:
    first, second = api.token("tess"), api.token("tess")
    wrong = api.call("POST", "/account/password", second, json={"current": "not it at all", "new": "a new long one"})
    assert wrong.status_code == 403
    assert "current password" in wrong.json()["detail"]
    short = api.call("POST", "/account/password", second, json={"current": PASSWORD, "new": "short"})
    assert short.status_code == 422
    same = api.call("POST", "/account/password", second, json={"current": PASSWORD, "new": PASSWORD})
    assert same.status_code == 422
    ok = api.call("POST", "/account/password", second, json={"current": PASSWORD, "new": "a new long one"})
    assert ok.status_code == 204
    assert api.call("GET", "/session", first).status_code == 401  # other sessions end
    assert api.call("GET", "/session", second).status_code == 200  # this one stays
    assert api.login("tess").status_code == 401
    assert api.login("tess", "a new long one").status_code == 201


def test_an_api_key_has_no_password_to_change(api: Api) -> None:
    key = api.key(Role.ADMIN)
    r = api.call("POST", "/account/password", key, json={"current": PASSWORD, "new": "a new long one"})
    assert r.status_code == 403
    assert api.call("GET", "/account/sessions", key).status_code == 403


def test_admin_resets_a_password_and_sessions_end(api: Api) -> None:
    ada, tess = api.token("ada"), api.token("tess")
    assert api.call("POST", "/users/tess/password", ada, json={"password": "reset by ada"}).status_code == 204
    assert api.call("GET", "/session", tess).status_code == 401
    assert api.login("tess").status_code == 401
    again = api.token("tess", "reset by ada")
    assert api.call("GET", "/users/tess", ada).json()["password_changed_at"] is not None
    assert api.call("POST", "/users/tess/password", again, json={"password": "not mine to set"}).status_code == 403


def test_list_and_end_sessions(api: Api) -> None:
    ada = api.token("ada")
    one, two = api.token("tess"), api.token("tess")
    listed = api.call("GET", "/users/tess/sessions", ada).json()
    assert [s["prefix"] for s in listed] == [two[:16], one[:16]]
    mine = api.call("GET", "/account/sessions", two).json()
    assert [s["current"] for s in mine] == [True, False]
    assert api.call("DELETE", f"/account/sessions/{one[:16]}", two).status_code == 204
    assert api.call("GET", "/session", one).status_code == 401
    assert api.call("DELETE", f"/account/sessions/{one[:16]}", two).status_code == 404
    assert api.call("DELETE", f"/users/tess/sessions/{two[:16]}", ada).status_code == 204
    assert api.call("GET", "/session", two).status_code == 401
    api.token("tess")
    assert api.call("DELETE", "/users/tess/sessions", ada).status_code == 204
    assert api.call("GET", "/users/tess", ada).json()["sessions"] == 0


def test_users_list_never_shows_a_password(api: Api) -> None:
    ada = api.token("ada")
    body = api.call("GET", "/users", ada).json()
    assert [u["username"] for u in body["items"]] == ["ada", "tess"]
    assert "scrypt" not in json.dumps(body)
    assert body["items"][0]["sessions"] == 1


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("POST", "/users", {"username": "bad name", "password": PASSWORD, "role": "viewer"}, 422),
        ("POST", "/users", {"username": "x" * 65, "password": PASSWORD, "role": "viewer"}, 422),
        ("POST", "/users", {"username": "olga", "password": "short", "role": "viewer"}, 422),
        ("POST", "/users", {"username": "olga", "password": PASSWORD, "role": "agent"}, 422),
        ("POST", "/users", {"username": "olga", "password": PASSWORD, "role": "root"}, 422),
        ("POST", "/users", {"username": "olga\x00", "password": PASSWORD, "role": "viewer"}, 422),
        ("POST", "/users", {"username": "tess", "password": PASSWORD, "role": "viewer"}, 409),
        ("POST", "/users", {"username": "olga", "password": PASSWORD, "role": "viewer", "admin": True}, 422),
        ("PATCH", "/users/nobody", {"disabled": True}, 404),
        ("PATCH", "/users/tess", {"role": "agent"}, 422),
        ("PATCH", "/users/tess", {"disabled": "maybe"}, 422),
        ("PATCH", "/users/bad%20name", {"disabled": True}, 422),
        ("POST", "/users/tess/password", {"password": "short"}, 422),
        ("DELETE", "/users/tess/sessions/ftk_zz", None, 422),
        ("DELETE", "/users/tess/sessions/ftk_000000000000", None, 404),
        ("POST", "/keys", {"role": "viewer", "expires_in_days": 0}, 422),
        ("POST", "/keys", {"role": "viewer", "expires_in_days": 100_000}, 422),
        ("POST", "/keys", {"role": "viewer", "owner": "nobody"}, 404),
        ("POST", "/keys/ftk_000000000000/rotate", {}, 404),
        ("POST", "/keys/ftk_000000000000/rotate", {"grace_s": -1}, 422),
        ("DELETE", "/keys/not%20a%20prefix", None, 422),
    ],
)
def test_bad_input_is_a_clear_4xx(api: Api, method: str, path: str, body: Any, status: int) -> None:
    r = api.call(method, path, api.token("ada"), json=body)
    assert r.status_code == status, r.text
    assert r.json()["detail"]


# --- keys: expiry, rotation, last use ------------------------------------------------------------------------------


def test_an_expired_key_is_401(api: Api) -> None:
    expired = api.key(Role.VIEWER, expires_at=now_us() - 1)
    r = api.call("GET", "/session", expired)
    assert r.status_code == 401
    assert "expired" in r.json()["detail"]
    admin = api.key(Role.ADMIN)
    made = api.call("POST", "/keys", admin, json={"role": "viewer", "expires_in_days": 30}).json()
    assert made["expires_at"] is not None
    assert made["state"] == "active"
    assert api.call("GET", "/session", made["key"]).status_code == 200
    listed = {k["prefix"]: k for k in api.call("GET", "/keys", admin).json()["items"]}
    assert listed[expired[:16]]["state"] == "expired"


def test_a_rotated_key_works_through_its_grace_period_and_not_after(api: Api) -> None:
    admin = api.key(Role.ADMIN)
    old = api.call("POST", "/keys", admin, json={"role": "viewer", "name": "wallboard"}).json()["key"]
    r = api.call("POST", f"/keys/{old[:16]}/rotate", admin, json={"grace_s": 3600})
    assert r.status_code == 201, r.text
    new = r.json()
    assert (new["name"], new["role"], new["replaces"]) == ("wallboard", "viewer", old[:16])
    assert api.call("GET", "/session", old).status_code == 200  # in its grace period
    assert api.call("GET", "/session", new["key"]).status_code == 200
    again = api.call("POST", f"/keys/{new['key'][:16]}/rotate", admin, json={"grace_s": 0}).json()
    stale = api.call("GET", "/session", new["key"])
    assert stale.status_code == 401
    assert again["prefix"] in stale.json()["detail"]  # says what replaced it
    assert api.call("GET", "/session", again["key"]).status_code == 200
    with make_sessionmaker(api.engine)() as s:  # after the grace period
        s.get(ApiKey, auth.get_key(s, old).id).expires_at = now_us() - 1  # type: ignore[union-attr]
        s.commit()
    assert api.call("GET", "/session", old).status_code == 401


def test_rotation_uses_the_configured_grace_by_default(api: Api) -> None:
    admin = api.key(Role.ADMIN)
    viewer = api.key(Role.VIEWER)
    before = now_us()
    body = api.call("POST", f"/keys/{viewer[:16]}/rotate", admin).json()
    from datetime import datetime

    grace = datetime.fromisoformat(body["old_expires_at"]).timestamp() * 1e6 - before
    assert 86_399e6 < grace < 86_401e6


def test_revoked_keys_and_sessions_cannot_be_rotated(api: Api) -> None:
    admin = api.key(Role.ADMIN)
    viewer = api.key(Role.VIEWER)
    api.call("DELETE", f"/keys/{viewer[:16]}", admin)
    assert api.call("POST", f"/keys/{viewer[:16]}/rotate", admin).status_code == 409
    session = api.token("tess")
    assert api.call("POST", f"/keys/{session[:16]}/rotate", admin).status_code == 409


def test_last_use_is_shown_and_written_at_most_once_a_minute(api: Api) -> None:
    admin = api.key(Role.ADMIN)
    viewer = api.key(Role.VIEWER)
    for _ in range(5):
        api.call("GET", "/session", viewer)
    listed = {k["prefix"]: k for k in api.call("GET", "/keys", admin).json()["items"]}
    first = listed[viewer[:16]]["last_used_at"]
    assert first is not None
    api.call("GET", "/session", viewer)
    listed = {k["prefix"]: k for k in api.call("GET", "/keys", admin).json()["items"]}
    assert listed[viewer[:16]]["last_used_at"] == first


# --- the command line on the demo's database ----------------------------------------------------------------------


def test_cli_users_and_keys_work_on_the_demo_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("TWIN_DATABASE_URL", "TWIN_DATA_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    missing = runner.invoke(cli, ["users", "list"])
    assert missing.exit_code != 0
    assert "db upgrade --url sqlite:///var/demo/twin.db" in missing.output
    migrations.upgrade(f"sqlite:///{tmp_path / 'var/demo/twin.db'}")  # what the demo does at start

    def run(*args: str, stdin: str | None = None) -> Any:
        result = runner.invoke(cli, list(args), input=stdin)
        return result

    made = run("users", "create", "alice", "--role", "admin", "--password-stdin", stdin="a long password\n")
    assert made.exit_code == 0, made.output
    assert run("users", "create", "bob", "--role", "viewer", "--password-stdin", stdin="short\n").exit_code != 0
    last = run("users", "disable", "alice")
    assert last.exit_code != 0
    assert "last active admin" in last.output
    assert run("users", "create", "bob", "--role", "technician", "--password-stdin",
               stdin="bob's long password\n").exit_code == 0
    assert run("users", "set-role", "bob", "engineer").exit_code == 0
    assert run("users", "disable", "bob").exit_code == 0
    assert run("users", "enable", "bob").exit_code == 0
    assert run("users", "reset-password", "bob", "--password-stdin", stdin="a new one for bob\n").exit_code == 0
    assert run("users", "disable", "nobody").exit_code != 0
    listed = run("users", "list", "--json")
    rows = [json.loads(line) for line in listed.stdout.splitlines() if line.startswith("{")]
    assert [(r["username"], r["role"], r["disabled"]) for r in rows] == [("alice", "admin", False),
                                                                        ("bob", "engineer", False)]
    key = run("keys", "create", "--role", "viewer", "--expires-in-days", "7", "--user", "bob").stdout.strip()
    assert key.startswith("ftk_")
    rotated = run("keys", "rotate", key[:16], "--grace-hours", "0")
    assert rotated.exit_code == 0, rotated.output
    # the same database the demo (and its API) uses: bob logs in there
    engine = make_engine(f"sqlite:///{tmp_path / 'var/demo/twin.db'}")
    try:
        with TestClient(create_app(TwinSettings(data_dir=tmp_path / "var/demo"), engine)) as client:
            r = client.post("/api/v1/session", json={"username": "bob", "password": "a new one for bob"})
            assert r.status_code == 201, r.text
            assert r.json()["role"] == "engineer"
            assert client.get("/api/v1/session", headers={"Authorization": f"Bearer {key}"}).status_code == 401
        with make_sessionmaker(engine)() as s:
            actions = [a for a, in s.execute(select(AuditRecord.action).order_by(AuditRecord.id))]
            actors = set(s.scalars(select(AuditRecord.actor).where(AuditRecord.action != "session.login")))
    finally:
        engine.dispose()
    assert actions[:8] == ["user.create", "user.create", "user.set_role", "user.disable", "user.enable",
                           "user.reset_password", "key.create", "key.rotate"]
    assert all(a.startswith("cli") for a in actors)
    other = run("users", "list", "--data-dir", str(tmp_path / "elsewhere"))
    assert other.exit_code != 0  # another directory, another database



@pytest.mark.parametrize(("group", "hint"), [("users", "factory-twin users create NAME --role admin"),
                                             ("keys", "factory-twin keys create --role admin")])
def test_cli_list_of_nothing_says_how_to_begin_and_its_json_is_empty(tmp_path: Path, group: str, hint: str) -> None:
    url = f"sqlite:///{tmp_path / 'twin.db'}"
    migrations.upgrade(url)
    runner = CliRunner()
    plain = runner.invoke(cli, [group, "list", "--database-url", url])
    assert plain.exit_code == 0, plain.output
    assert plain.stdout == ""
    assert hint in plain.stderr
    as_json = runner.invoke(cli, [group, "list", "--json", "--database-url", url])
    assert as_json.exit_code == 0, as_json.output
    assert as_json.stdout == ""
    assert hint not in as_json.stderr

# --- the demo's credential ----------------------------------------------------------------------------------------


def test_the_demo_makes_its_admin_key_once_per_data_directory(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'twin.db'}"
    migrations.upgrade(url)
    engine = make_engine(url)
    try:
        with make_sessionmaker(engine)() as s:
            first = demo_credentials(s, tmp_path, "gw")
            again = demo_credentials(s, tmp_path, "gw")
            assert first.new
            assert not again.new
            assert (again.admin_key, again.agent_key) == (first.admin_key, first.agent_key)
            path = tmp_path / FILE_NAME
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
            assert json.loads(path.read_text())["admin_key"] == first.admin_key
            auth.revoke_key(s, first.admin_key)  # revoked: the next run makes a new one
            third = demo_credentials(s, tmp_path, "gw")
            assert third.new
            assert third.admin_key != first.admin_key
            assert third.agent_key == first.agent_key
            path.write_text("not json")  # damaged: replaced, not a crash
            assert demo_credentials(s, tmp_path, "gw").new
            admins = s.scalars(select(ApiKey).where(ApiKey.role == "admin", ApiKey.revoked.is_(False))).all()
            assert len(admins) == 2
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_two_admins_demoting_each_other_at_once_leave_one_admin(pg_url: str) -> None:
    import threading

    from twin import users
    from twin.errors import Conflict

    engine = make_engine(pg_url)
    Base.metadata.create_all(engine)
    maker = make_sessionmaker(engine)
    try:
        with maker() as s:
            create_user(s, "ada", PASSWORD, Role.ADMIN)
            create_user(s, "bob", PASSWORD, Role.ADMIN)
        first = maker()
        users.set_role(first, "ada", Role.VIEWER)  # checked, not yet committed: holds the check's lock
        outcome: dict[str, str] = {}

        def second() -> None:
            with maker() as s:
                try:
                    users.set_role(s, "bob", Role.VIEWER)
                    s.commit()
                    outcome["bob"] = "demoted"
                except Conflict:
                    outcome["bob"] = "refused"

        thread = threading.Thread(target=second)
        thread.start()
        thread.join(0.5)
        assert thread.is_alive()  # waits for the first check's transaction
        first.commit()
        first.close()
        thread.join(10)
        assert outcome == {"bob": "refused"}
    finally:
        engine.dispose()


def test_a_key_does_no_more_than_the_person_it_belongs_to(api: Api) -> None:
    ada = api.token("ada")
    admin_key_of_tess = api.key(Role.ADMIN, owner="tess")
    assert api.call("GET", "/session", admin_key_of_tess).json()["role"] == "technician"
    assert api.call("GET", "/keys", admin_key_of_tess).status_code == 403
    api.call("PATCH", "/users/tess", ada, json={"role": "admin"})
    assert api.call("GET", "/keys", admin_key_of_tess).status_code == 200
