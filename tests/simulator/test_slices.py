"""The committed data slices: they load, hold what LICENSES.md promises, and bad slices fail clearly."""

from __future__ import annotations

import gzip
import importlib.util
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from factory_twin.simulator import examples
from factory_twin.simulator.datasets import (
    CMAPSS_COLUMNS,
    CNC_MILL,
    FEEDS,
    PUMP,
    TURBOFAN,
    convert,
    read_ai4i,
    read_cmapss,
    read_skab,
)
from factory_twin.simulator.errors import SliceError
from plant.site import DataType

DATA = examples.data_dir()
SLICES = sorted(DATA.glob("*.gz"))


def test_slices_are_small_and_all_used() -> None:
    assert sum(p.stat().st_size for p in SLICES) < 2_000_000
    used = {name for feed in FEEDS.values() for name in feed.files}
    assert used == {p.name for p in SLICES}
    licences = (DATA / "LICENSES.md").read_text(encoding="utf-8")
    for p in SLICES:
        assert p.name in licences


class TestCmapss:
    def test_whole_histories_engine_39_first(self) -> None:
        rows = TURBOFAN.load(DATA)
        units = [int(r["unit"]) for r in rows]
        assert list(dict.fromkeys(units)) == [39, 1, 69]
        for unit, life in ((39, 128), (1, 192), (69, 362)):
            cycles = [int(r["cycle"]) for r in rows if int(r["unit"]) == unit]
            assert cycles == list(range(1, life + 1)), f"engine {unit} is not a whole run to failure"

    def test_same_format_as_the_data_set(self) -> None:
        path = DATA / TURBOFAN.files[0]
        frame = pd.read_csv(path, sep=r"\s+", header=None)
        assert frame.shape == (682, 26)
        first = gzip.decompress(path.read_bytes()).split(b"\n", 1)[0]
        assert first.startswith(b"39 1 ")
        assert first.endswith(b"  ")


class TestAi4i:
    def test_every_failure_mode_and_product_type(self) -> None:
        rows = CNC_MILL.load(DATA)
        assert [int(r["UDI"]) for r in rows] == list(range(2841, 3241))
        for mode in ("Machine failure", "TWF", "HDF", "PWF", "OSF", "RNF"):
            assert any(r[mode] == "1" for r in rows), f"no {mode} row"
        assert set(Counter(r["Type"] for r in rows)) == {"L", "M", "H"}

    def test_header_bom_and_crlf_kept(self) -> None:
        raw = gzip.decompress((DATA / CNC_MILL.files[0]).read_bytes())
        assert raw.startswith(b"\xef\xbb\xbfUDI,Product ID,Type,")
        assert raw.count(b"\r\n") == 401
        frame = pd.read_csv(DATA / CNC_MILL.files[0], encoding="utf-8-sig")
        assert list(frame.columns)[:3] == ["UDI", "Product ID", "Type"]
        assert len(frame) == 400


class TestSkab:
    def test_valve_experiments_hold_their_anomaly(self) -> None:
        for name, n_rows, first_anomaly in (
            ("skab_valve1_0.csv.gz", 1147, 573),
            ("skab_valve1_1.csv.gz", 1145, 572),
        ):
            rows = read_skab(DATA / name)
            assert len(rows) == n_rows
            flags = [float(r["anomaly"]) for r in rows]
            assert flags.index(1.0) == first_anomaly
            assert sum(float(r["changepoint"]) for r in rows) >= 3

    def test_anomaly_free_head_and_replay_order(self) -> None:
        rows = read_skab(DATA / "skab_anomaly-free_head600.csv.gz")
        assert len(rows) == 600
        assert "anomaly" not in rows[0]
        assert PUMP.files[0] == "skab_valve1_0.csv.gz"
        frame = pd.read_csv(DATA / "skab_valve1_0.csv.gz", sep=";", index_col="datetime", parse_dates=True)
        assert frame["Pressure"].abs().max() < 2  # bar, not kPa


@pytest.mark.datasets
def test_slices_rebuild_byte_for_byte(datasets: Path, tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("make_slices", DATA / "make_slices.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--datasets", str(datasets), "--out", str(tmp_path)]) == 0
    for committed in SLICES:
        assert (tmp_path / committed.name).read_bytes() == committed.read_bytes(), committed.name


@pytest.mark.datasets
def test_slice_lines_are_the_data_sets_lines(datasets: Path) -> None:
    full = (datasets / "cmapss" / "train_FD001.txt").read_bytes().splitlines()
    part = gzip.decompress((DATA / TURBOFAN.files[0]).read_bytes()).splitlines()
    assert set(part) <= set(full)
    ai4i = (datasets / "ai4i2020" / "ai4i2020.csv").read_bytes().splitlines()
    assert gzip.decompress((DATA / CNC_MILL.files[0]).read_bytes()).splitlines() == [
        ai4i[0],
        *ai4i[2841:3241],
    ]


class TestBadSlices:
    def test_missing_file_names_the_fix(self, tmp_path: Path) -> None:
        with pytest.raises(SliceError, match=r"not found \(run examples/data/make_slices.py\)"):
            read_cmapss(tmp_path / "nope.txt.gz")

    def test_truncated_gzip(self, tmp_path: Path) -> None:
        bad = tmp_path / "cut.csv.gz"
        bad.write_bytes((DATA / CNC_MILL.files[0]).read_bytes()[:200])
        with pytest.raises(SliceError, match=r"cut\.csv\.gz: cannot read data slice"):
            read_ai4i(bad)

    def test_short_cmapss_row_names_the_line(self, tmp_path: Path) -> None:
        bad = tmp_path / "train.txt"
        bad.write_text("1 1 " + " ".join(["0.5"] * 24) + "\n1 2 0.1\n")
        with pytest.raises(SliceError, match=r"train.txt:2: expected 26 numbers, found 3"):
            read_cmapss(bad)

    def test_ragged_csv_row(self, tmp_path: Path) -> None:
        bad = tmp_path / "skab.csv"
        bad.write_text("datetime;Current\n2020-01-01 00:00:00;1.0\n2020-01-01 00:00:01\n")
        with pytest.raises(SliceError, match=r"skab.csv:3: expected 2 fields"):
            read_skab(bad)

    def test_missing_column(self, tmp_path: Path) -> None:
        (tmp_path / PUMP.files[0]).write_bytes(gzip.compress(b"datetime;Current\n2020-01-01 00:00:00;1.0\n"))
        with pytest.raises(SliceError, match=r"missing column.*Accelerometer1RMS"):
            PUMP.load(tmp_path)

    def test_empty_file(self, tmp_path: Path) -> None:
        (tmp_path / TURBOFAN.files[0]).write_bytes(gzip.compress(b""))
        with pytest.raises(SliceError, match="no data rows"):
            TURBOFAN.load(tmp_path)

    def test_value_that_does_not_parse(self) -> None:
        with pytest.raises(SliceError, match=r"row 7: 'abc' is not a float"):
            convert("abc", DataType.FLOAT, "row 7")
        assert convert("42.0", DataType.INT, "x") == 42
        assert convert("1", DataType.BOOL, "x") is True
        assert convert("M", DataType.STRING, "x") == "M"


def test_cmapss_columns_match_the_plant() -> None:
    from plant.site import load_site

    site = load_site(examples.example_site_path())
    assert set(site.asset_types["turbofan"].properties) == set(CMAPSS_COLUMNS) - {"unit"}
