"""Helpers for connector tests: in-process asyncua servers on free ports, certificates, a collecting sink."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ipaddress
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from asyncua import Server, ua
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edge_agent.reading import ReadingBatch
from plant.site import Site

NS_URI = "urn:factory-twin:test"


def one_machine_site(
    source: str, spec: dict[str, Any], props: dict[str, Any], bindings: dict[str, dict[str, Any]]
) -> Site:
    """Site ``s`` with one machine ``m1`` (type ``m``, in area ``a``) whose properties ``props`` are bound
    to the one source ``source`` described by ``spec``."""
    machine = {
        "id": "m1",
        "kind": "machine",
        "type": "m",
        "bindings": {k: {"source": source, **v} for k, v in bindings.items()},
    }
    return Site.model_validate(
        {
            "site": {"id": "s"},
            "sources": {source: spec},
            "asset_types": {"m": {"properties": props}},
            "nodes": [{"id": "s", "kind": "site", "children": [{"id": "a", "kind": "area", "children": [machine]}]}],
        }
    )


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def port() -> int:
    return free_port()


@dataclass
class Collector:
    """A sink that keeps every batch and acks it (as the outbox would once durable)."""

    batches: list[ReadingBatch] = field(default_factory=list)
    ack: bool = True
    event: asyncio.Event | None = None

    async def __call__(self, batch: ReadingBatch) -> None:
        self.batches.append(batch)
        if self.ack and batch.ack is not None:
            batch.ack()
        if self.event is not None:
            self.event.set()

    @property
    def readings(self) -> list[Any]:
        return [r for b in self.batches for r in b.readings]

    @property
    def rejected(self) -> list[tuple[str, str]]:
        return [r for b in self.batches for r in b.rejected]

    async def wait_for(self, pred: Callable[[], bool], timeout: float = 10.0) -> None:  # noqa: ASYNC109
        """Wait until ``pred()`` holds, or fail."""
        deadline = asyncio.get_running_loop().time() + timeout
        while not pred():
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"condition not met within {timeout} s")
            await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def running(coro: Awaitable[None]) -> AsyncIterator[asyncio.Task[None]]:
    """Run a connector's ``run`` in a task for the block, then cancel it."""
    task: asyncio.Task[None] = asyncio.ensure_future(coro)
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@contextlib.asynccontextmanager
async def opcua_server(
    port: int,
    names: tuple[str, ...] = ("t1", "t2", "t3"),
    *,
    policies: list[ua.SecurityPolicyType] | None = None,
    cert: tuple[Path, Path] | None = None,
    user_manager: Any = None,
) -> AsyncIterator[tuple[Server, dict[str, Any]]]:
    """An asyncua server on ``port`` with float variables ``ns=2;s=<name>``; stopped afterwards."""
    server = Server(user_manager=user_manager)
    await server.init()
    server.set_endpoint(f"opc.tcp://127.0.0.1:{port}/test/")
    if policies is not None:
        server.set_security_policy(policies)
    if cert is not None:
        await server.load_certificate(str(cert[0]))
        await server.load_private_key(str(cert[1]))
    idx = await server.register_namespace(NS_URI)
    assert idx == 2
    obj = await server.nodes.objects.add_object(idx, "Plant")
    variables = {}
    for name in names:
        var = await obj.add_variable(ua.NodeId(name, idx), f"{idx}:{name}", 0.0)
        variables[name] = var
    await server.start()
    try:
        yield server, variables
    finally:
        await server.stop()


def make_cert(dir_: Path, name: str, uri: str, server: bool) -> tuple[Path, Path]:
    """A self-signed application certificate (PEM) and key for OPC-UA, with the URI in subjectAltName."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.UniformResourceIdentifier(uri),
                    x509.DNSName("localhost"),
                    x509.DNSName(socket.gethostname()),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=True,
                key_encipherment=True,
                data_encipherment=True,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path = dir_ / f"{name}.pem"
    key_path = dir_ / f"{name}-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path
