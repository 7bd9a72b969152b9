"""The platform's model registry: upload, list, promote, download, failure reports; bad archives; who may do what."""

from __future__ import annotations

import hashlib
import json
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from sqlalchemy import Engine, func, select

from factory_twin.cli import cli
from twin.api import create_app
from twin.auth import Role, create_key
from twin.config import TwinSettings
from twin.db import make_sessionmaker
from twin.model_registry import pack
from twin.tables import ModelFailure, ModelVersion

from ..api_server import serve_api
from ..model_archives import add_machine, files_of, model_copy, set_file, tar_gz

GZIP = {"Content-Type": "application/gzip"}


@dataclass
class Api:
    client: TestClient
    engine: Engine
    keys: dict[Role, str]

    def call(self, method: str, path: str, role: Role | None, **kw: Any) -> Any:
        headers = {**kw.pop("headers", {}), **({"Authorization": f"Bearer {self.keys[role]}"} if role else {})}
        return self.client.request(method, "/api/v1" + path, headers=headers, **kw)

    def upload(self, data: bytes, role: Role = Role.ENGINEER) -> Any:
        return self.call("POST", "/models", role, content=data, headers=GZIP)

    def stored(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(ModelVersion)).scalar_one())


@pytest.fixture
def engine(empty_engine: Engine) -> Engine:
    return add_machine(empty_engine, "p1", "pump")


def _app(engine: Engine, tmp_path: Path, **settings: Any) -> Any:
    return create_app(TwinSettings(data_dir=tmp_path, model_dir=tmp_path / "no-registry", **settings), engine)


@pytest.fixture
def api(engine: Engine, tmp_path: Path) -> Iterator[Api]:
    with make_sessionmaker(engine)() as s:
        keys = {role: create_key(s, role, f"{role.value}-key") for role in Role}
    with TestClient(_app(engine, tmp_path)) as client:
        yield Api(client, engine, keys)


@pytest.fixture
def light(tmp_path: Path) -> Path:
    """The committed anomaly model without its teacher: small and quick to load."""
    return model_copy(tmp_path / "m", drop=("teacher",))


def test_upload_list_promote_download_and_report(api: Api, light: Path, tmp_path: Path) -> None:
    data = pack(light)
    r = api.upload(data)
    assert r.status_code == 201, r.text
    sha = hashlib.sha256(data).hexdigest()
    assert r.json() == {"task": "anomaly", "name": "skab-pump-anomaly", "version": "1.0.0", "sha256": sha}
    assert api.upload(data).status_code == 200  # the same again: kept, not stored twice
    assert api.upload(pack(light)).json()["sha256"] == sha  # packing is reproducible
    newer = model_copy(tmp_path / "n", new_version="1.1.0", drop=("teacher",))
    assert api.upload(pack(newer)).status_code == 201

    (v11, v10) = api.call("GET", "/models", Role.VIEWER).json()["items"]
    assert (v11["version"], v10["version"]) == ("1.1.0", "1.0.0")  # newest first
    assert v10["variants"] == ["student", "student-int8"]
    assert v10["metrics"]["student-int8"]["f1"] == pytest.approx(0.788, abs=1e-3)
    assert (v10["uploaded_by"], v10["size"], v10["promoted_for"], v10["failures"]) == (
        "engineer-key",
        len(data),
        [],
        [],
    )

    assert api.call("GET", "/models/promoted", Role.AGENT).json() == {}
    r = api.call("POST", "/models/anomaly/1.1.0/promote", Role.ENGINEER, json={"asset_type": "pump"})
    assert r.status_code == 200, r.text
    promoted = api.call("GET", "/models/promoted", Role.AGENT).json()
    assert promoted["pump"]["anomaly"]["version"] == "1.1.0"
    api.call("POST", "/models/anomaly/1.0.0/promote", Role.ENGINEER, json={"asset_type": "pump"})  # roll back
    assert api.call("GET", "/models/promoted", Role.AGENT).json() == {
        "pump": {"anomaly": {"version": "1.0.0", "sha256": sha}}
    }

    archive = api.call("GET", "/models/anomaly/1.0.0/archive", Role.AGENT)
    assert archive.status_code == 200
    assert archive.content == data
    assert archive.headers["X-Model-Sha256"] == hashlib.sha256(archive.content).hexdigest() == sha
    assert archive.headers["content-type"] == "application/gzip"

    report = {"gateway": "gw-7", "asset_type": "pump", "reason": "score left its range: 1e9"}
    for _ in range(2):
        assert api.call("POST", "/models/anomaly/1.0.0/failures", Role.AGENT, json=report).status_code == 201
    v10 = api.call("GET", "/models", Role.AGENT).json()["items"][1]
    assert v10["promoted_for"] == ["pump"]
    (failure,) = v10["failures"]
    assert {k: failure[k] for k in ("gateway", "asset_type", "reason", "count")} == {**report, "count": 2}


def test_same_version_with_other_content_is_a_conflict(api: Api, light: Path, tmp_path: Path) -> None:
    assert api.upload(pack(light)).status_code == 201

    def reword(m: dict[str, Any]) -> None:
        m["description"] = "another model under the same number"

    other = model_copy(tmp_path / "o", drop=("teacher",), edit=reword)
    r = api.upload(pack(other))
    assert r.status_code == 409
    assert "new version" in r.json()["detail"]
    items = api.call("GET", "/models", Role.VIEWER).json()["items"]
    assert [i["sha256"] for i in items] == [hashlib.sha256(pack(light)).hexdigest()]


def _bad_archives(light: Path) -> dict[str, tuple[bytes, str]]:
    """name → (archive, a part of the reason the API must give)."""
    files = files_of(light)
    manifest = json.loads((light / "manifest.json").read_text())
    no_manifest = [f for f in files if f[0] != "manifest.json"]
    link = tarfile.TarInfo("student.onnx")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    dot = tarfile.TarInfo(".")  # a regular file whose name is only "."
    many_folders = [tarfile.TarInfo(f"d{i}") for i in range(100)]
    for folder in many_folders:
        folder.type = tarfile.DIRTYPE
    unknown_task = {**manifest, "task": "weather"}
    bad_version = {**manifest, "version": "../../etc"}
    no_input = {**manifest, "input": {"signals": ["x"]}}
    comma_threshold = {**manifest, "cascade": {"confidence_threshold": "0,5"}}  # read by agents, after loading
    return {
        "not gzip": (b"PK\x03\x04 a zip file, say", "not a gzip-compressed tar archive"),
        "gzip, not tar": (_gzip(b"hello " * 200), "not a gzip-compressed tar archive"),
        "empty": (b"", "not a gzip-compressed tar archive"),
        "missing manifest": (tar_gz(no_manifest), "no manifest.json"),
        "manifest not JSON": (tar_gz([*no_manifest, ("manifest.json", b"{nope")]), "unreadable manifest.json"),
        "unknown task": (tar_gz([*no_manifest, ("manifest.json", json.dumps(unknown_task).encode())]), "unknown task"),
        "version not a name": (tar_gz([*no_manifest, ("manifest.json", json.dumps(bad_version).encode())]), "version"),
        "manifest of the wrong shape": (
            tar_gz([*no_manifest, ("manifest.json", json.dumps(no_input).encode())]),
            "malformed manifest.json",
        ),
        "cascade threshold not a number": (
            tar_gz([*no_manifest, ("manifest.json", json.dumps(comma_threshold).encode())]),
            "cascade.confidence_threshold '0,5' is not a number in [0, 1]",
        ),
        "path escapes": (tar_gz([*files, ("../evil.onnx", b"x")]), "outside a model directory"),
        "absolute path": (tar_gz([*files, ("/tmp/evil.onnx", b"x")]), "outside a model directory"),
        "symlink": (tar_gz([f for f in files if f[0] != "student.onnx"] + [link]), "not a regular file"),
        "two directories": (tar_gz([(f"a/{n}", d) for n, d in files] + [("b/x.onnx", b"x")]), "more than one"),
        "stray file": (tar_gz([*files, ("notes.txt", b"hi")]), "does not list: ['notes.txt']"),
        "a file named '.'": (tar_gz([*files, dot]), "has no file name"),
        "thousands of entries, say": (tar_gz([*many_folders, *files]), "more than 64 entries"),
        "default variant missing": (tar_gz([f for f in files if f[0] != "student-int8.onnx"]), "default variant"),
    }


def _gzip(data: bytes) -> bytes:
    import gzip

    return gzip.compress(data)


def test_bad_archives_are_refused_with_the_reason_and_nothing_is_stored(api: Api, light: Path) -> None:
    for name, (data, reason) in _bad_archives(light).items():
        r = api.upload(data)
        assert r.status_code == 422, (name, r.text)
        assert r.headers["content-type"].startswith("application/problem+json")
        assert reason in r.json()["detail"], (name, r.json()["detail"])
    assert api.stored() == 0


def test_sha_mismatch_and_unloadable_onnx_are_refused(api: Api, tmp_path: Path) -> None:
    tampered = model_copy(tmp_path / "t", drop=("teacher",))
    set_file(tampered, "student.onnx", (tampered / "student.onnx").read_bytes()[:-1] + b"\0", update_manifest=False)
    r = api.upload(pack(tampered))
    assert r.status_code == 422
    assert "student.onnx: sha256" in r.json()["detail"]
    assert "does not match the manifest" in r.json()["detail"]

    broken = model_copy(tmp_path / "b", drop=("teacher",))
    set_file(broken, "student-int8.onnx", b"\x08\x07 not a protobuf graph at all", update_manifest=True)
    r = api.upload(pack(broken))
    assert r.status_code == 422
    assert "student-int8 does not load" in r.json()["detail"]
    assert "not a loadable ONNX model" in r.json()["detail"]
    assert str(tmp_path) not in r.json()["detail"]  # no platform paths in the answer
    assert api.stored() == 0


def test_an_archive_over_the_limit_is_refused_before_it_is_read(engine: Engine, light: Path, tmp_path: Path) -> None:
    with make_sessionmaker(engine)() as s:
        key = create_key(s, Role.ENGINEER)
    with TestClient(_app(engine, tmp_path, model_max_bytes=100_000)) as client:
        r = client.post("/api/v1/models", content=pack(light) + b"\0" * 100_000,
                        headers={**GZIP, "Authorization": f"Bearer {key}"})  # fmt: skip
        assert r.status_code == 422
        assert "exceeds the limit of 100000" in r.json()["detail"]


def test_headers_count_against_the_unpacked_budget(engine: Engine, light: Path, tmp_path: Path) -> None:
    # A pax header is read whole into memory: a few KB of gzip can hold megabytes of it (or gigabytes).
    bomb = tarfile.TarInfo("notes")
    bomb.pax_headers = {"comment": "x" * 3_000_000}
    data = tar_gz([bomb, *files_of(light)])
    assert len(data) < 100_000
    with make_sessionmaker(engine)() as s:
        key = create_key(s, Role.ENGINEER)
    with TestClient(_app(engine, tmp_path, model_max_bytes=100_000)) as client:
        r = client.post("/api/v1/models", content=data, headers={**GZIP, "Authorization": f"Bearer {key}"})
        assert r.status_code == 422
        assert "unpacks to more than a model may hold" in r.json()["detail"]
        assert "TWIN_MODEL_MAX_BYTES" in r.json()["detail"]  # what to do about it


def test_an_archive_with_its_files_in_one_folder_is_accepted(api: Api, light: Path) -> None:
    data = tar_gz([(f"1.0.0/{name}", blob) for name, blob in files_of(light)])
    r = api.upload(data)
    assert r.status_code == 201, r.text


def test_promote_needs_a_known_version_and_asset_type(api: Api, light: Path) -> None:
    api.upload(pack(light))
    r = api.call("POST", "/models/anomaly/9.9.9/promote", Role.ENGINEER, json={"asset_type": "pump"})
    assert r.status_code == 404
    r = api.call("POST", "/models/anomaly/1.0.0/promote", Role.ENGINEER, json={"asset_type": "pumpp"})
    assert r.status_code == 422
    assert "unknown asset type 'pumpp'" in r.json()["detail"]
    assert api.call("POST", "/models/anomaly/1.0.0/promote", Role.ENGINEER, json={}).status_code == 422
    r = api.call("POST", "/models/anomaly/9.9.9/failures", Role.AGENT, json={"gateway": "g", "asset_type": "pump",
                                                                             "reason": "x"})  # fmt: skip
    assert r.status_code == 404
    assert api.call("GET", "/models/anomaly/9.9.9/archive", Role.AGENT).status_code == 404


def test_who_may_do_what(api: Api, light: Path) -> None:
    data = pack(light)
    for role in (Role.AGENT, Role.VIEWER, Role.TECHNICIAN):
        r = api.upload(data, role)
        assert r.status_code == 403, role
        assert "engineer" in r.json()["detail"]
    assert api.upload(data, Role.ADMIN).status_code == 201
    assert api.stored() == 1
    promote = ("POST", "/models/anomaly/1.0.0/promote")
    report = ("POST", "/models/anomaly/1.0.0/failures")
    reads = [("GET", "/models"), ("GET", "/models/promoted"), ("GET", "/models/anomaly/1.0.0/archive")]
    body = {"json": {"asset_type": "pump", "gateway": "g", "reason": "r"}}
    for role in Role:
        for method, path in reads:
            assert api.call(method, path, role).status_code == 200, (role, path)
        expected = 200 if role >= Role.ENGINEER else 403
        assert api.call(*promote, role, json={"asset_type": "pump"}).status_code == expected, role
        expected = 201 if role >= Role.ENGINEER or role is Role.AGENT else 403
        r = api.call(*report, role, json={"gateway": "g", "asset_type": "pump", "reason": "r"})
        assert r.status_code == expected, (role, r.text)
    for method, path in [*reads, promote, report, ("POST", "/models")]:
        assert api.call(method, path, None, **body).status_code == 401
    # an agent key reaches nothing of the twin itself
    for path in ("/nodes", "/alerts", "/knowledge", "/keys"):
        assert api.call("GET", path, Role.AGENT).status_code == 403, path
    with api.engine.connect() as conn:  # the same gateway and asset type: one row, counted (agent, engineer, admin)
        assert conn.execute(select(ModelFailure.count)).scalars().all() == [3]


def test_models_cli_against_a_running_platform(engine: Engine, light: Path, tmp_path: Path) -> None:
    with make_sessionmaker(engine)() as s:
        key = create_key(s, Role.ENGINEER, "ci")
        viewer = create_key(s, Role.VIEWER, "wallboard")
    runner = CliRunner()
    with serve_api(_app(engine, tmp_path)) as url:
        common = ["--platform", url, "--key", key]
        r = runner.invoke(cli, ["models", "upload", str(light), *common])
        assert r.exit_code == 0, r.output
        assert "uploaded anomaly 1.0.0 (skab-pump-anomaly, sha256" in r.output
        r = runner.invoke(cli, ["models", "upload", str(light), *common])
        assert "already uploaded anomaly 1.0.0" in r.output
        r = runner.invoke(cli, ["models", "promote", "anomaly", "1.0.0", "--asset-type", "pump", *common])
        assert r.exit_code == 0, r.output
        assert "promoted anomaly 1.0.0 for pump" in r.output
        r = runner.invoke(cli, ["models", "list", "--platform", url], env={"FACTORY_TWIN_KEY": viewer})
        assert r.exit_code == 0, r.output
        assert "anomaly  1.0.0" in r.output
        assert "promoted: pump" in r.output
        r = runner.invoke(cli, ["models", "list", "--json", *common])
        assert json.loads(r.output)["count"] == 1
        # errors say what the platform said, and fail
        r = runner.invoke(cli, ["models", "promote", "anomaly", "1.0.0", "--asset-type", "pump", "--platform", url,
                                "--key", viewer])  # fmt: skip
        assert r.exit_code != 0
        assert "403: this action needs the engineer role" in r.output
        r = runner.invoke(cli, ["models", "upload", str(tmp_path), *common])
        assert r.exit_code != 0
        assert "no manifest.json" in r.output
    r = runner.invoke(cli, ["models", "list", "--platform", url, "--key", key])
    assert r.exit_code != 0
    assert "cannot reach the platform" in r.output
