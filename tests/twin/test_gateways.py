"""Gateways' broker credentials, the topic rules both brokers apply, and the `factory-twin gateways` command."""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy.orm import Session

from factory_twin.cli import cli
from migrations import run as migrations
from twin import gateways
from twin.db import make_engine
from twin.errors import Conflict, InvalidRequest, NotFound
from twin.topic_access import Access, TopicRules, covers, may_touch

ROOT = "factory-twin/v1"


def test_hash_is_mosquittos_pbkdf2_sha512_format() -> None:
    hashed = gateways.hash_password("s3cret-credential")
    _, seven, iterations, salt, digest = hashed.split("$")
    assert (seven, iterations) == ("7", str(gateways.PBKDF2_ITERATIONS))
    assert len(base64.b64decode(salt)) == 12
    assert len(base64.b64decode(digest)) == 64  # SHA-512
    assert gateways.verify_password("s3cret-credential", hashed)
    assert not gateways.verify_password("s3cret-credentia", hashed)


def test_verifies_what_mosquitto_passwd_writes(tmp_path: Path) -> None:
    tool = Path("/usr/bin/mosquitto_passwd")
    if not tool.exists():
        pytest.skip("mosquitto_passwd is not installed")
    f = tmp_path / "passwd"
    subprocess.run([str(tool), "-c", "-b", str(f), "gw-1", "pa55word-from-mosquitto"], check=True)
    hashed = f.read_text().strip().split(":", 1)[1]
    assert hashed.startswith("$7$")
    assert gateways.verify_password("pa55word-from-mosquitto", hashed)
    assert not gateways.verify_password("other", hashed)


@pytest.mark.parametrize("bad", ["", "$7$", "$7$x$y$z", "$6$rounds$abc", "$7$101$!!!$???", "$7$0$AAAA$AAAA",
                                 "$7$99999999999$AAAA$AAAA"])
def test_malformed_hashes_verify_nothing(bad: str) -> None:
    assert not gateways.verify_password("anything", bad)


@pytest.fixture
def db(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'twin.db'}"
    migrations.upgrade(url)
    return url


def test_add_list_revoke_and_add_again(db: str) -> None:
    engine = make_engine(db)
    with Session(engine) as session:
        credential = gateways.add_gateway(session, "line-1")
        assert len(credential) >= 32
        with pytest.raises(Conflict):
            gateways.add_gateway(session, "line-1")
        assert gateways.verify_password(credential, gateways.active_credentials(engine)["line-1"])
        gateways.revoke_gateway(session, "line-1")
        assert gateways.active_credentials(engine) == {}
        assert [g.name for g in gateways.list_gateways(session)] == ["line-1"]
        again = gateways.add_gateway(session, "line-1")  # a revoked gateway gets a new credential
        assert again != credential
        assert not gateways.verify_password(credential, gateways.active_credentials(engine)["line-1"])
        with pytest.raises(NotFound):
            gateways.revoke_gateway(session, "nobody")
    engine.dispose()


@pytest.mark.parametrize("name", ["", "a/b", "+", "#", "gw 1", "x" * 65, "gw\x00", "é", "platform", "plant"])
def test_gateway_ids_are_one_safe_topic_segment(db: str, name: str) -> None:
    engine = make_engine(db)
    with Session(engine) as session, pytest.raises(InvalidRequest):
        gateways.add_gateway(session, name)
    engine.dispose()


@pytest.mark.parametrize(
    ("user", "access", "topic", "allowed"),
    [
        ("gw-a", Access.WRITE, f"{ROOT}/gw-a/uplink", True),
        ("gw-a", Access.WRITE, f"{ROOT}/gw-b/uplink", False),  # another gateway's uplink
        ("gw-a", Access.WRITE, f"{ROOT}/gw-a/ack", False),  # forging its own acks
        ("gw-a", Access.READ, f"{ROOT}/gw-a/ack", True),
        ("gw-a", Access.READ, f"{ROOT}/gw-a/cmd/set", True),
        ("gw-a", Access.READ, f"{ROOT}/gw-b/ack", False),
        ("gw-a", Access.READ, f"{ROOT}/+/ack", False),
        ("gw-a", Access.READ, f"{ROOT}/#", False),
        ("gw-a", Access.READ, "#", False),
        ("gw-a", Access.READ, "+/v1/gw-b/uplink", False),
        ("gw-a", Access.READ, f"$share/g/{ROOT}/+/uplink", False),
        ("gw-a", Access.READ, "plant/hall/pump-1", True),  # the plant's telemetry, outside the root
        ("gw-a", Access.WRITE, f"{ROOT}/gw-a/uplink/#", False),
        ("platform", Access.READ, f"$share/ingest/{ROOT}/+/uplink", True),
        ("platform", Access.READ, f"{ROOT}/+/uplink", True),
        ("platform", Access.WRITE, f"{ROOT}/gw-a/ack", True),
        ("platform", Access.WRITE, f"{ROOT}/gw-a/uplink", False),
        (None, Access.WRITE, f"{ROOT}/gw-a/uplink", False),  # anonymous: nothing under the root
        (None, Access.READ, "#", False),
        (None, Access.WRITE, "plant/hall/pump-1", True),
        (None, Access.READ, "plant/#", True),
    ],
)
def test_topic_rules(user: str | None, access: Access, topic: str, allowed: bool) -> None:
    assert TopicRules(ROOT).allowed(user, access, topic) is allowed


def test_filter_cover_and_reach() -> None:
    assert covers("a/+/c/#", "a/b/c")
    assert covers("a/+/c/#", "a/b/c/d/+")
    assert not covers("a/+/c", "a/#")
    assert not covers("a/b", "a/+")
    assert may_touch("#", "a/b")
    assert may_touch("a/+/x", "a/b")
    assert not may_touch("a/b", "a/b")  # the root itself is not under the root
    assert not may_touch("x/#", "a/b")


def test_cli_add_prints_the_credential_once_and_files_hold_its_hash(
    db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = CliRunner()
    added = runner.invoke(cli, ["gateways", "add", "line-1", "--database-url", db])
    assert added.exit_code == 0, added.output
    credential = added.stdout.strip()
    assert "\n" not in credential
    assert len(credential) >= 32
    assert runner.invoke(cli, ["gateways", "add", "line-2", "--database-url", db]).exit_code == 0
    assert runner.invoke(cli, ["gateways", "revoke", "line-2", "--database-url", db]).exit_code == 0
    listed = runner.invoke(cli, ["gateways", "list", "--database-url", db])
    assert "line-1" in listed.stdout
    assert "revoked" in listed.stdout.splitlines()[1]
    assert credential not in listed.output
    again = runner.invoke(cli, ["gateways", "add", "line-1", "--database-url", db])
    assert again.exit_code != 0
    assert "revoke it first" in again.output

    out = tmp_path / "auth"
    no_platform = runner.invoke(cli, ["gateways", "files", "--out", str(out), "--database-url", db],
                                env={"MQTT_PLATFORM_PASSWORD": ""})
    assert no_platform.exit_code != 0
    assert "MQTT_PLATFORM_PASSWORD" in no_platform.output
    monkeypatch.setenv("MQTT_PLATFORM_PASSWORD", "platform-password-1")
    monkeypatch.setenv("MQTT_PLANT_PASSWORD", "plant-password-1")
    monkeypatch.setenv("AGENT_PW", "provisioned-agent-password")
    wrote = runner.invoke(cli, ["gateways", "files", "--out", str(out), "--database-url", db,
                                "--ensure", "gateway-1=AGENT_PW"])
    assert wrote.exit_code == 0, wrote.output
    users = dict(line.split(":", 1) for line in (out / "passwd").read_text().splitlines())
    assert set(users) == {"platform", "plant", "line-1", "gateway-1"}  # line-2 is revoked
    assert gateways.verify_password(credential, users["line-1"])
    assert gateways.verify_password("provisioned-agent-password", users["gateway-1"])
    assert gateways.verify_password("platform-password-1", users["platform"])
    assert (out / "passwd").stat().st_mode & 0o077 == 0
    acl = (out / "acl").read_text()
    assert f"user line-1\ntopic write {ROOT}/line-1/uplink\ntopic read {ROOT}/line-1/ack\n" in acl
    assert "line-2" not in acl
    assert f"user platform\ntopic read {ROOT}/+/uplink\ntopic write {ROOT}/+/ack\n" in acl
    assert "pattern" not in acl  # no rule that a user name could widen
