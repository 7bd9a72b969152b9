"""MQTT over TLS with user and password, against a private Mosquitto started for the test on a free port."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from edge_agent.connectors.factory import build_connectors
from edge_agent.connectors.mqtt import MqttConnector
from tests.mqtt_peer import MqttPeer

from .conftest import Collector, free_port, running
from .test_mqtt import mqtt_site

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
PASSWD = shutil.which("mosquitto_passwd")
pytestmark = pytest.mark.skipif(
    not (Path(MOSQUITTO).exists() and PASSWD), reason="mosquitto and mosquitto_passwd are needed"
)


def _pem(path: Path, obj: x509.Certificate | rsa.RSAPrivateKey) -> Path:
    if isinstance(obj, x509.Certificate):
        path.write_bytes(obj.public_bytes(serialization.Encoding.PEM))
    else:
        path.write_bytes(
            obj.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    return path


def _cert(
    subject: str, key: rsa.RSAPrivateKey, issuer: tuple[x509.Name, rsa.RSAPrivateKey] | None
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer[0] if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=7))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    if issuer is not None:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    return builder.sign(issuer[1] if issuer else key, hashes.SHA256())


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    """A Mosquitto with TLS and a password file; yields its port and the CA file."""
    d = tmp_path_factory.mktemp("mosq")
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca = _cert("test-ca", ca_key, None)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    server = _cert("localhost", key, (ca.subject, ca_key))
    ca_file = _pem(d / "ca.pem", ca)
    _pem(d / "server.pem", server)
    _pem(d / "server-key.pem", key)
    subprocess.run([PASSWD, "-c", "-b", str(d / "passwd"), "agent", "pa55"], check=True, capture_output=True)
    port = free_port()
    (d / "mosquitto.conf").write_text(
        f"user root\npersistence false\nallow_anonymous false\npassword_file {d / 'passwd'}\n"
        f"listener {port} 127.0.0.1\ncafile {ca_file}\n"
        f"certfile {d / 'server.pem'}\nkeyfile {d / 'server-key.pem'}\n"
    )
    log = d / "mosquitto.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [MOSQUITTO, "-c", str(d / "mosquitto.conf")], stdout=out, stderr=subprocess.STDOUT
        )
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                proc.wait()
                pytest.fail(f"private mosquitto did not start: {log.read_text()}")
            time.sleep(0.05)
    yield port, ca_file
    proc.terminate()
    proc.wait(10)


def _publish(port: int, ca_file: Path, topic: str, payload: bytes) -> None:
    with MqttPeer("127.0.0.1", port, username="agent", password="pa55", ca_file=str(ca_file)) as client:
        client.publish(topic, payload)


def test_tls_with_username_and_password(tls_broker: tuple[int, Path]) -> None:
    port, ca_file = tls_broker
    site = mqtt_site(
        f"mqtts://127.0.0.1:{port}",
        {"v": {"topic": "tls/v", "path": "v"}},
        client_id="tls-agent",
        ca_file=str(ca_file),
        username="agent",
        password_env="MQTT_PW",
    )

    async def main() -> None:
        (conn,) = build_connectors(site, env={"MQTT_PW": "pa55"})
        assert isinstance(conn, MqttConnector)
        assert conn.options.tls
        sink = Collector()
        async with running(conn.run(sink)):
            await sink.wait_for(lambda: conn.status()["connected"] is True)
            await asyncio.to_thread(_publish, port, ca_file, "tls/v", b'{"v": 42}')
            await sink.wait_for(lambda: [r.raw for r in sink.readings] == [42])

        (wrong,) = build_connectors(site, env={"MQTT_PW": "nope"})
        async with running(wrong.run(Collector())):
            await Collector().wait_for(lambda: bool(wrong.status()["last_error"]))
        assert wrong.status()["connected"] is False
        assert "refused" in str(wrong.status()["last_error"])

    asyncio.run(main())


def test_untrusted_broker_certificate_is_refused(tls_broker: tuple[int, Path]) -> None:
    port, _ca = tls_broker
    site = mqtt_site(
        f"mqtts://127.0.0.1:{port}",
        {"v": {"topic": "tls/v", "path": "v"}},
        client_id="tls-agent-2",
        username="agent",
        password_env="MQTT_PW",
    )

    async def main() -> None:
        (conn,) = build_connectors(site, env={"MQTT_PW": "pa55"})
        async with running(conn.run(Collector())):
            await Collector().wait_for(lambda: bool(conn.status()["last_error"]))
        assert "CERTIFICATE_VERIFY_FAILED" in str(conn.status()["last_error"]) or "certificate" in str(
            conn.status()["last_error"]
        )

    asyncio.run(main())
