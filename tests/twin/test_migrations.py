"""Migrations against the models, downgrade to base, the schema check and the `factory-twin db` commands."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from sqlalchemy import inspect

from factory_twin.cli import cli
from migrations import run
from migrations.check import check_schema
from twin.db import make_engine
from twin.errors import SchemaOutdated


def _tables(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def test_upgrade_matches_the_models(db_url: str) -> None:
    run.upgrade(db_url)
    assert run.current(db_url) == run.head()
    diffs = run.differences(db_url)
    assert diffs == [], f"models and migrations differ, add a revision (alembic autogenerate): {diffs[:3]}"


def test_migrated_tables_match_their_models(db_url: str) -> None:
    """Every table the migrations create is exactly as modelled (tables still without a revision aside)."""
    run.upgrade(db_url)
    created = _tables(db_url)
    diffs = [d for d in run.differences(db_url) if not (isinstance(d, tuple) and d[0] in ("add_table",))
             and not (isinstance(d, tuple) and d[0] == "add_index" and d[1].table.name not in created)]
    assert diffs == []
    assert {"twin_nodes", "twin_properties", "twin_history", "ingest_rejections"} <= created


def test_downgrade_to_base_leaves_no_tables(db_url: str) -> None:
    run.upgrade(db_url)
    run.downgrade(db_url, "base")
    assert _tables(db_url) == set()
    assert run.current(db_url) is None
    run.upgrade(db_url)  # and up again
    assert "twin_history" in _tables(db_url)


def test_schema_check_refuses_an_outdated_database(sqlite_url: str) -> None:
    with pytest.raises(SchemaOutdated, match="run `factory-twin db upgrade`"):
        check_schema(sqlite_url)
    run.upgrade(sqlite_url)
    assert check_schema(sqlite_url) == run.head()
    run.downgrade(sqlite_url, "base")
    with pytest.raises(SchemaOutdated, match="factory-twin db upgrade"):
        check_schema(sqlite_url)


def test_schema_check_names_both_revisions(sqlite_url: str) -> None:
    run.upgrade(sqlite_url)
    engine = make_engine(sqlite_url)
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = '0000'")
    engine.dispose()
    with pytest.raises(SchemaOutdated, match=f"revision 0000, the code expects {run.head()}"):
        check_schema(sqlite_url)


def test_db_commands(sqlite_url: str) -> None:
    runner = CliRunner()
    checked = runner.invoke(cli, ["db", "check", "--url", sqlite_url])
    assert checked.exit_code != 0
    assert "factory-twin db upgrade" in checked.output
    up = runner.invoke(cli, ["db", "upgrade", "--url", sqlite_url])
    assert up.exit_code == 0, up.output
    assert f"revision {run.head()}" in up.output
    assert runner.invoke(cli, ["db", "check", "--url", sqlite_url]).exit_code == 0
    current = runner.invoke(cli, ["db", "current", "--url", sqlite_url])
    assert f"current: {run.head()}" in current.output
    down = runner.invoke(cli, ["db", "downgrade", "--url", sqlite_url, "base"])
    assert down.exit_code == 0
    assert "base" in down.output
    assert _tables(sqlite_url) == set()


def test_db_upgrade_takes_the_url_from_settings(sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from twin.config import get_settings

    monkeypatch.setenv("TWIN_DATABASE_URL", sqlite_url)
    get_settings.cache_clear()
    try:
        assert CliRunner().invoke(cli, ["db", "upgrade"]).exit_code == 0
    finally:
        get_settings.cache_clear()
    assert run.current(sqlite_url) == run.head()


def test_scripts_ship_inside_the_package() -> None:
    assert (run.SCRIPT_LOCATION / "env.py").is_file()
    assert any(run.SCRIPT_LOCATION.joinpath("versions").glob("0001_*.py"))
