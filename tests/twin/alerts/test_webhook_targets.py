"""Webhook targets: refused on the address a name resolves to at delivery, pinned to the checked address."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from tests.twin.alerts.conftest import fleet_site
from tests.twin.alerts.receiver import Receiver
from tests.twin.alerts.test_webhooks import FAST, churn, drain, statuses, subscribe
from twin.api import create_app
from twin.auth import Role, create_key
from twin.config import TwinSettings
from twin.tables import WebhookDelivery
from twin.webhooks import DeliveryWorker, TargetPolicy, TargetRefused, forbidden_reason
from twin.webhooks.target import Resolver


def names(table: dict[str, list[str]]) -> Resolver:
    """A resolver answering from ``table`` (host → addresses), as DNS would; unknown names do not resolve."""

    def resolve(host: str, port: int) -> list[str]:
        if host not in table:
            raise OSError(f"{host}: name does not resolve")
        return table[host]

    return resolve


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("127.8.9.10", "loopback"),
        ("::1", "loopback"),
        ("169.254.169.254", "metadata"),
        ("fd00:ec2::254", "metadata"),
        ("169.254.1.1", "link-local"),
        ("fe80::1", "link-local"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.10", "private"),
        ("fd12:3456::1", "private"),
        ("100.64.0.1", "carrier-grade NAT"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("224.0.0.251", "multicast"),
        ("ff02::1", "multicast"),
        ("240.0.0.1", "reserved"),
        ("192.0.2.1", "not globally routable"),
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:169.254.169.254", "metadata"),
        ("64:ff9b::a00:1", "private"),
        ("2002:7f00:1::", "loopback"),
    ],
)
def test_non_public_addresses_are_named(address: str, reason: str) -> None:
    found = forbidden_reason(ipaddress.ip_address(address))
    assert found is not None
    assert reason in found


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111", "::ffff:8.8.8.8"])
def test_public_addresses_pass(address: str) -> None:
    assert forbidden_reason(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/",
        "http:///nohost",
        "https://user:pw@example.com/",
        "https://example.com/#frag",
        "https://example.com:99999/",
        "http://[::1/",
        "http://127.0.0.1:8000/",
        "http://[::1]:8000/",
        "http://169.254.169.254/latest/meta-data/",
        "http://[fd00:ec2::254]/",
        "http://10.0.0.5/",
        "http://100.64.1.1/",
        "http://0.0.0.0:5432/",
        "http://[::ffff:7f00:1]/",
        "http://localhost:5432/",
        "http://LOCALHOST./",
        "http://db.localhost/",
        "http://ip6-localhost/",
        "http://2130706433/",
        "http://0x7f.1/",
        "http://017700000001:8080/",
        "http://[fe80::1%25eth0]/",
    ],
)
def test_forbidden_urls_are_refused_before_any_lookup(url: str) -> None:
    policy = TargetPolicy(resolver=names({}))
    with pytest.raises(TargetRefused):
        policy.check_url(url)


def test_international_names_are_sent_as_dns_spells_them() -> None:
    policy = TargetPolicy(resolver=names({"xn--bcher-kva.example": ["93.184.216.34"]}))
    target = policy.resolve("https://bücher.example/hook")
    assert (target.host, target.host_header(), target.ip) == ("xn--bcher-kva.example", "xn--bcher-kva.example",
                                                              "93.184.216.34")  # fmt: skip


def test_the_allowlist_opens_the_plants_own_receivers_but_never_metadata() -> None:
    policy = TargetPolicy(allow_private=("10.20.0.0/16", "127.0.0.1", "alerts.plant.lan"),
                          resolver=names({"alerts.plant.lan": ["192.168.7.7"]}))  # fmt: skip
    assert policy.check_url("http://10.20.3.4:9000/h").host == "10.20.3.4"
    assert policy.resolve("http://127.0.0.1:9000/h").ip == "127.0.0.1"
    assert policy.resolve("https://alerts.plant.lan/h").ip == "192.168.7.7"
    with pytest.raises(TargetRefused, match="private"):
        policy.check_url("http://10.21.0.1/")  # outside the allowed network
    wide = TargetPolicy(allow_private=("0.0.0.0/0", "::/0"))
    for url in ("http://169.254.169.254/", "http://[fd00:ec2::254]/"):
        with pytest.raises(TargetRefused, match="metadata"):
            wide.check_url(url)


def test_names_are_judged_on_every_address_they_resolve_to() -> None:
    policy = TargetPolicy(resolver=names({
        "hooks.example.com": ["93.184.216.34"],
        "rebind.example.com": ["127.0.0.1"],
        "mixed.example.com": ["93.184.216.34", "10.0.0.7"],
        "meta.example.com": ["169.254.169.254"],
        "v6.example.com": ["2606:4700:4700::1111", "::1"],
    }))  # fmt: skip
    target = policy.resolve("https://hooks.example.com/x?a=1")
    assert (target.ip, target.pinned_url(), target.host_header()) == (
        "93.184.216.34", "https://93.184.216.34:443/x?a=1", "hooks.example.com")  # fmt: skip
    for host, reason in [("rebind", "loopback"), ("mixed", "private"), ("meta", "metadata"), ("v6", "loopback")]:
        with pytest.raises(TargetRefused, match=reason):
            policy.resolve(f"https://{host}.example.com/")
    with pytest.raises(OSError):
        policy.resolve("https://gone.example.com/")  # does not resolve: retried later, not refused for good


def test_a_name_resolving_to_loopback_is_not_delivered_to(sqlite_db: Engine) -> None:
    with Receiver() as rx:
        port = rx.server.server_address[1]
        subscribe(sqlite_db, f"http://hooks.example.com:{port}/hook")
        churn(sqlite_db, fleet_site(1), rounds=1, assets=1)
        policy = TargetPolicy(resolver=names({"hooks.example.com": ["127.0.0.1"]}))
        drain(DeliveryWorker(sqlite_db, policy=policy, config=FAST), sqlite_db,
              until=lambda: statuses(sqlite_db).get("dead") == 2)  # fmt: skip
    assert rx.requests == []
    with Session(sqlite_db) as s:
        errors = set(s.scalars(select(WebhookDelivery.last_error)))
    assert len(errors) == 1
    assert "hooks.example.com (127.0.0.1) is a loopback address" in errors.pop()


def test_localhost_stored_before_the_policy_is_refused_at_delivery(sqlite_db: Engine) -> None:
    with Receiver() as rx:
        subscribe(sqlite_db, f"http://localhost:{rx.server.server_address[1]}/hook")  # the system resolver
        churn(sqlite_db, fleet_site(1), rounds=1, assets=1)
        drain(DeliveryWorker(sqlite_db, config=FAST), sqlite_db, until=lambda: statuses(sqlite_db).get("dead") == 2)
    assert rx.requests == []


def test_an_allowed_receiver_gets_the_pinned_address_with_its_name(sqlite_db: Engine) -> None:
    """The name exists in no DNS: only the checked address, not a second lookup, can have reached the receiver."""
    with Receiver() as rx:
        port = rx.server.server_address[1]
        subscribe(sqlite_db, f"http://cmms.plant.lan:{port}/hook")
        churn(sqlite_db, fleet_site(1), rounds=1, assets=1)
        policy = TargetPolicy(allow_private=("cmms.plant.lan",), resolver=names({"cmms.plant.lan": ["127.0.0.1"]}))
        drain(DeliveryWorker(sqlite_db, policy=policy, config=FAST), sqlite_db,
              until=lambda: statuses(sqlite_db).get("delivered") == 2)  # fmt: skip
    assert [r.headers["host"] for r in rx.requests] == [f"cmms.plant.lan:{port}"] * 2


def test_tls_goes_to_the_checked_address_with_the_name_for_sni(sqlite_db: Engine) -> None:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200)

    subscribe(sqlite_db, "https://hooks.example.com/ft")
    churn(sqlite_db, fleet_site(1), rounds=1, assets=1)
    policy = TargetPolicy(resolver=names({"hooks.example.com": ["93.184.216.34"]}))
    worker = DeliveryWorker(sqlite_db, policy=policy, config=FAST, transport=httpx.MockTransport(answer))
    assert worker.run_batch() == 1  # one per asset at a time: events of an asset go in order
    worker.close()
    (req,) = seen
    assert str(req.url) == "https://93.184.216.34/ft"
    assert req.headers["host"] == "hooks.example.com"
    assert req.extensions["sni_hostname"] == "hooks.example.com"


def test_a_redirect_is_a_failed_delivery_not_followed(sqlite_db: Engine) -> None:
    with Receiver(lambda n, body: "307") as rx:
        subscribe(sqlite_db, rx.url)
        churn(sqlite_db, fleet_site(1), rounds=1, assets=1)
        policy = TargetPolicy(allow_private=("127.0.0.1",))
        drain(DeliveryWorker(sqlite_db, policy=policy, config=FAST), sqlite_db,
              until=lambda: statuses(sqlite_db).get("dead") == 2)  # fmt: skip
    assert len(rx.requests) == 2  # one try each, nothing followed
    with Session(sqlite_db) as s:
        assert all("redirects are not followed" in e for e in s.scalars(select(WebhookDelivery.last_error)))


def test_the_api_refuses_forbidden_targets_with_the_reason(sqlite_db: Engine, tmp_path: Path) -> None:
    app = create_app(TwinSettings(data_dir=tmp_path, webhook_allow_private=["10.20.0.0/16"]), sqlite_db)
    with Session(sqlite_db) as s:
        admin = {"Authorization": f"Bearer {create_key(s, Role.ADMIN, 'admin')}"}
    with TestClient(app) as client:
        for url, why in [
            ("http://169.254.169.254/latest/meta-data/", "metadata"),
            ("http://127.0.0.1:5432/", "loopback"),
            ("http://localhost:1883/", "loopback"),
            ("http://192.168.0.10/", "private"),
            ("https://ops:pw@hooks.example.com/", "credentials"),
            ("file:///etc/passwd", "http or https"),
        ]:
            r = client.post("/api/v1/webhooks", headers=admin, json={"name": "x", "url": url})
            assert r.status_code == 422, url
            assert why in r.json()["detail"], r.json()
        r = client.post("/api/v1/webhooks", headers=admin, json={"name": "cmms", "url": "http://10.20.1.5:8080/h"})
        assert r.status_code == 201, r.text
        sub = r.json()["id"]
        r = client.patch(f"/api/v1/webhooks/{sub}", headers=admin, json={"url": "http://[::1]/"})
        assert r.status_code == 422
        assert "loopback" in r.json()["detail"]
