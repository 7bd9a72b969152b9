"""OPC-UA security: Sign, SignAndEncrypt (Basic256Sha256, client certificate), user and password."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from asyncua import ua
from asyncua.crypto.permission_rules import User, UserRole

from edge_agent.connectors.factory import build_connectors
from edge_agent.connectors.opcua import OpcUaConnector
from edge_agent.errors import ConfigError

from .conftest import Collector, make_cert, opcua_server, running
from .test_opcua import opcua_site

CLIENT_URI = "urn:factory-twin:test-agent"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    d = tmp_path_factory.mktemp("pki")
    return {
        "server": make_cert(d, "server", "urn:freeopcua:python:server", server=True),
        "client": make_cert(d, "client", CLIENT_URI, server=False),
    }


class Passwords:
    """Accepts one user with one password; everything else is refused."""

    def get_user(
        self, iserver: Any, username: str | None = None, password: str | None = None, certificate: Any = None
    ) -> User | None:
        if username is None:
            return User(role=UserRole.User)
        return User(role=UserRole.User) if (username, password) == ("op", "s3cret") else None


POLICY = {
    "Sign": ua.SecurityPolicyType.Basic256Sha256_Sign,
    "SignAndEncrypt": ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt,
}


def secure_site(port: int, certs: dict[str, tuple[Path, Path]], mode: str, **extra: Any) -> Any:
    security = {
        "mode": mode,
        "certificate": str(certs["client"][0]),
        "private_key": str(certs["client"][1]),
        **extra,
    }
    return opcua_site(
        port,
        {"p1": {"node_id": "ns=2;s=t1", "sampling_ms": 50}},
        publishing_interval_ms=50,
        security=security,
        timeout_s=3,
    )


def run_connector(site: Any, env: dict[str, str] | None = None) -> OpcUaConnector:
    settings = type("S", (), {"backoff_initial_s": 0.2, "backoff_cap_s": 0.5})
    (conn,) = build_connectors(site, settings, env=env or {})
    assert isinstance(conn, OpcUaConnector)
    return conn


@pytest.mark.parametrize("mode", ["Sign", "SignAndEncrypt"])
def test_secure_modes_with_client_certificate(
    mode: str, port: int, certs: dict[str, tuple[Path, Path]]
) -> None:
    async def main() -> None:
        async with opcua_server(port, policies=[POLICY[mode]], cert=certs["server"]) as (_s, var):
            conn = run_connector(secure_site(port, certs, mode))
            sink = Collector()
            async with running(conn.run(sink)):
                await var["t1"].write_value(4.5)
                await sink.wait_for(lambda: any(r.raw == 4.5 for r in sink.readings))
            assert conn.status()["last_error"] == ""

    asyncio.run(main())


def test_username_and_password_over_encrypted_channel(port: int, certs: dict[str, tuple[Path, Path]]) -> None:
    async def main() -> None:
        async with opcua_server(
            port, policies=[POLICY["SignAndEncrypt"]], cert=certs["server"], user_manager=Passwords()
        ) as (_s, var):
            site = secure_site(port, certs, "SignAndEncrypt", username="op", password_env="OPC_PW")
            good = run_connector(site, {"OPC_PW": "s3cret"})
            sink = Collector()
            async with running(good.run(sink)):
                await var["t1"].write_value(8.0)
                await sink.wait_for(lambda: any(r.raw == 8.0 for r in sink.readings))

            bad = run_connector(site, {"OPC_PW": "wrong"})
            async with running(bad.run(Collector())):
                await Collector().wait_for(lambda: bool(bad.status()["last_error"]), timeout=10)
            assert bad.status()["connected"] is False
            assert "BadUserAccessDenied" in str(bad.status()["last_error"]) or "Identity" in str(
                bad.status()["last_error"]
            )

    asyncio.run(main())


def test_mode_the_server_does_not_offer_is_a_security_error(
    port: int, certs: dict[str, tuple[Path, Path]]
) -> None:
    async def main() -> None:
        async with opcua_server(port, policies=[ua.SecurityPolicyType.NoSecurity]) as _:
            conn = run_connector(secure_site(port, certs, "SignAndEncrypt"))
            async with running(conn.run(Collector())):
                await Collector().wait_for(lambda: bool(conn.status()["last_error"]), timeout=10)
            assert "security mode" in str(conn.status()["last_error"])

    asyncio.run(main())


def test_missing_password_variable_is_a_config_error(port: int, certs: dict[str, tuple[Path, Path]]) -> None:
    site = secure_site(port, certs, "Sign", username="op", password_env="NOT_SET_ANYWHERE")
    with pytest.raises(ConfigError, match="NOT_SET_ANYWHERE"):
        build_connectors(site, env={})
