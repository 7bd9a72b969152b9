"""`factory-twin gateways`: the edge gateways allowed on the broker, and Mosquitto's password and ACL files.

``gateways add`` prints the new credential, and only it, on stdout, once::

    PASSWORD=$(factory-twin gateways add line-2)       # the agent's EDGE_BROKER_URL: mqtt://line-2:$PASSWORD@...
    factory-twin gateways files --out deploy/mqtt-auth # then reload Mosquitto (SIGHUP)
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import click
import structlog
from sqlalchemy import Engine, inspect
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from factory_twin.cli.listing import echo_rows
from factory_twin.logs import configure_logging
from plant.wire import TOPIC_ROOT, from_us
from twin import gateways as registry
from twin.config import TwinSettings
from twin.db import make_engine, make_sessionmaker
from twin.errors import Conflict, InvalidRequest, NotFound
from twin.tables import TwinGateway
from twin.topic_access import PLANT_USER, PLATFORM_USER, TopicRules

_DATA_DIR = click.option("--data-dir", type=click.Path(path_type=Path), envvar="TWIN_DATA_DIR", default=None,
                         help="the platform's data directory (its SQLite file); default: TWIN_DATA_DIR, else var")
_DATABASE_URL = click.option("--database-url", envvar="TWIN_DATABASE_URL", default=None,
                             help="SQLAlchemy URL; default: TWIN_DATABASE_URL, else the SQLite file of the data dir")


def _db_url(data_dir: Path | None, database_url: str | None) -> str:
    if data_dir is None:
        return TwinSettings(database_url=database_url).db_url
    return TwinSettings(data_dir=data_dir, database_url=database_url).db_url


@contextmanager
def _engine(data_dir: Path | None, database_url: str | None) -> Iterator[Engine]:
    """The twin's database; a clear error if it is unreachable or older than the gateways table."""
    engine = make_engine(_db_url(data_dir, database_url))
    try:
        try:
            if not inspect(engine).has_table(TwinGateway.__tablename__):
                raise click.ClickException(
                    f"the database {engine.url.render_as_string(hide_password=True)} has no gateways table: "
                    "run `factory-twin db upgrade` first"
                )
        except SQLAlchemyError as exc:
            raise click.ClickException(f"cannot open the database: {str(exc).splitlines()[0]}") from None
        yield engine
    finally:
        engine.dispose()


@contextmanager
def _session(data_dir: Path | None, database_url: str | None) -> Iterator[Session]:
    with _engine(data_dir, database_url) as engine, make_sessionmaker(engine)() as session:
        yield session


@click.group()
def gateways() -> None:
    """Edge gateways: each logs in to the broker with its own credential and writes only its own topics."""
    if not structlog.is_configured():
        configure_logging()  # to stderr: stdout carries the credential alone


@gateways.command()
@click.argument("name")
@click.option("--password-stdin", is_flag=True, help="read the credential from stdin instead of making one")
@_DATA_DIR
@_DATABASE_URL
def add(name: str, password_stdin: bool, data_dir: Path | None, database_url: str | None) -> None:
    """Register gateway NAME and print its broker credential: shown this once, only its hash is stored."""
    password = sys.stdin.readline().rstrip("\r\n") if password_stdin else None
    if password_stdin and len(password or "") < 16:
        raise click.ClickException("a gateway credential needs at least 16 characters")
    with _session(data_dir, database_url) as session:
        try:
            credential = registry.add_gateway(session, name, password)
        except (Conflict, InvalidRequest) as exc:
            raise click.ClickException(str(exc)) from None
    click.echo(credential)
    click.echo(f"gateway {name} added: log in to the broker as {name!r} with the credential above (shown once); "
               "then run `factory-twin gateways files` and reload the broker", err=True)


@gateways.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="one JSON object per gateway")
@_DATA_DIR
@_DATABASE_URL
def list_(as_json: bool, data_dir: Path | None, database_url: str | None) -> None:
    """List gateways (name, state, added, revoked); never their credentials."""
    with _session(data_dir, database_url) as session:
        rows = registry.list_gateways(session)
        fields = [{"name": r.name, "active": r.revoked_at is None, "created_at": from_us(r.created_at).isoformat(),
                   "revoked_at": None if r.revoked_at is None else from_us(r.revoked_at).isoformat()}
                  for r in rows]
    listed = [(f, f"{f['name']:<24}  added {f['created_at']}  {_state(f)}") for f in fields]
    echo_rows(listed, as_json, "no gateways yet: `factory-twin gateways add NAME`")


def _state(fields: Mapping[str, object]) -> str:
    return "active" if fields["active"] else f"revoked {fields['revoked_at']}"


@gateways.command()
@click.argument("name")
@_DATA_DIR
@_DATABASE_URL
def revoke(name: str, data_dir: Path | None, database_url: str | None) -> None:
    """Revoke gateway NAME: the embedded broker refuses it at once, Mosquitto after `gateways files` and a reload."""
    with _session(data_dir, database_url) as session:
        try:
            registry.revoke_gateway(session, name)
        except NotFound as exc:
            raise click.ClickException(str(exc)) from None
    click.echo(f"revoked gateway {name}", err=True)


@gateways.command()
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="directory for `passwd` and `acl` (Mosquitto's password_file and acl_file)")
@click.option("--topic-root", default=TOPIC_ROOT, show_default=True, help="root of the uplink and ack topics")
@click.option("--platform-password-env", default="MQTT_PLATFORM_PASSWORD", show_default=True,
              help=f"variable holding the password of the platform's ingest user {PLATFORM_USER!r}")
@click.option("--plant-password-env", default="MQTT_PLANT_PASSWORD", show_default=True,
              help=f"variable holding the password of the plant's devices' user {PLANT_USER!r} (unset: no such user)")
@click.option("--plant-topic", "plant_topics", multiple=True, default=("plant/#",), show_default=True,
              help="topics of the plant's own telemetry, which gateways may read (repeat)")
@click.option("--ensure", "ensure", multiple=True, metavar="NAME=VAR",
              help="add gateway NAME with the credential in variable VAR, or update it (provisioning; repeat)")
@_DATA_DIR
@_DATABASE_URL
def files(out: Path, topic_root: str, platform_password_env: str, plant_password_env: str,
          plant_topics: tuple[str, ...], ensure: tuple[str, ...], data_dir: Path | None,
          database_url: str | None) -> None:
    """Write Mosquitto's password file and ACL file for the active gateways, the platform and the plant."""
    platform_password = os.environ.get(platform_password_env, "")
    if not platform_password:
        raise click.ClickException(f"set {platform_password_env} to the platform's broker password")
    users = {PLATFORM_USER: registry.hash_password(platform_password)}
    plant_password = os.environ.get(plant_password_env, "")
    if plant_password:
        users[PLANT_USER] = registry.hash_password(plant_password)
    with _engine(data_dir, database_url) as engine:
        _ensure(engine, ensure)
        active = registry.active_credentials(engine)
    clash = set(active) & {PLATFORM_USER, PLANT_USER}
    if clash:
        raise click.ClickException(f"gateway ids {sorted(clash)} are reserved broker users: revoke them")
    out.mkdir(parents=True, exist_ok=True)
    rules = TopicRules(topic_root)
    _write(out / "passwd", registry.password_file(users | active))
    _write(out / "acl", rules.mosquitto_acl(list(active), plant_topics, PLANT_USER if plant_password else None))
    click.echo(f"wrote {out / 'passwd'} and {out / 'acl'}: {len(active)} gateways", err=True)


def _ensure(engine: Engine, specs: tuple[str, ...]) -> None:
    with make_sessionmaker(engine)() as session:
        for spec in specs:
            name, _, var = spec.partition("=")
            password = os.environ.get(var, "") if var else ""
            if not password:
                raise click.ClickException(f"--ensure {spec}: set the variable {var or '(none given)'}")
            try:
                registry.set_credential(session, name, password)
            except InvalidRequest as exc:
                raise click.ClickException(str(exc)) from None


def _write(path: Path, text: str) -> None:
    """Replace ``path`` atomically, readable by its owner only (Mosquitto warns about wider modes)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)
