"""Bad training and evaluation files: a clear error naming the file and the problem, or the documented fallback."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from models import regimes, rul
from models.datasets import CMAPSS_SENSORS, CMAPSS_SETTINGS, load_ai4i, load_cmapss, load_skab, parse_rows
from models.errors import DataError, WindowRejected
from models.features import features

pytestmark = pytest.mark.datasets


def _cmapss_lines(datasets: Path, name: str, engines: int) -> list[str]:
    path = datasets / "cmapss" / name
    text = gzip.decompress(path.read_bytes()).decode() if path.suffix == ".gz" else path.read_text()
    return [line for line in text.splitlines(keepends=True) if int(line.split()[0]) <= engines]


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(lines))
    return path


@pytest.fixture(scope="module")
def fd001(datasets: Path) -> list[str]:
    return _cmapss_lines(datasets, "train_FD001.txt", 10)


def test_a_truncated_cmapss_file_names_the_file_and_line(fd001: list[str], tmp_path: Path) -> None:
    cut = _write(tmp_path / "train_FD001.txt", [*fd001[:-1], fd001[-1][:40]])
    with pytest.raises(DataError, match=rf"train_FD001.txt: 1 rows with missing .* truncated .* line {len(fd001)}"):
        load_cmapss([cut])


def test_missing_columns_and_nan_runs_are_refused(fd001: list[str], tmp_path: Path) -> None:
    narrow = _write(tmp_path / "train_FD001.txt", [" ".join(line.split()[:25]) + "\n" for line in fd001])
    with pytest.raises(DataError, match=r"train_FD001.txt: expected 26 columns, found 25"):
        load_cmapss([narrow])
    holes = [line if not 50 <= i < 60 else line.replace(line.split()[7], "NaN", 1) for i, line in enumerate(fd001)]
    with pytest.raises(DataError, match=r"test_FD001.txt: 10 rows with missing or non-numeric values .* line 51"):
        load_cmapss([_write(tmp_path / "test_FD001.txt", holes)])


def test_cycles_out_of_order_and_unpaired_truth_are_refused(fd001: list[str], tmp_path: Path) -> None:
    swapped = [fd001[1], fd001[0], *fd001[2:]]
    with pytest.raises(DataError, match=r"line 1: engine 1 cycle 2 where 1 was expected"):
        load_cmapss([_write(tmp_path / "train_FD001.txt", swapped)])
    test = _write(tmp_path / "test_FD001.txt", fd001)
    with pytest.raises(DataError, match=r"test_FD001.txt: no RUL_FD001 file"):
        load_cmapss([test])
    with pytest.raises(DataError, match=r"RUL_FD001.txt: 3 values for the 10 engines of test_FD001.txt"):
        load_cmapss([test, _write(tmp_path / "RUL_FD001.txt", ["10\n", "20\n", "30\n"])])
    with pytest.raises(DataError, match=r"RUL_FD001.txt: not a RUL file"):
        load_cmapss([test, _write(tmp_path / "RUL_FD001.txt", ["ten\n"] * 10)])


def test_a_subset_name_never_seen_is_read_like_any_other(fd001: list[str], tmp_path: Path) -> None:
    # The same code for sub-sets it was not written against: the name only pairs a test file with its truth.
    data = load_cmapss([_write(tmp_path / "train_FD007.txt", fd001)])
    assert data.train is not None
    assert data.train["unit"].str.startswith("FD007/").all()
    assert data.source("train", "FD007/3") == "train_FD007.txt"
    with pytest.raises(DataError, match=r"not a C-MAPSS file name"):
        load_cmapss([_write(tmp_path / "train_FDX.txt", fd001)])


def test_regimes_are_found_from_the_data_and_constant_sensors_left_out(datasets: Path) -> None:
    single = load_cmapss([datasets / "cmapss" / "train_FD001.txt"]).train
    multi = load_cmapss([datasets / "cmapss" / "train_FD002.txt.gz"]).train
    assert single is not None
    assert multi is not None
    one = regimes.fit(single, CMAPSS_SETTINGS, CMAPSS_SENSORS)
    six = regimes.fit(multi, CMAPSS_SETTINGS, CMAPSS_SENSORS)
    assert len(one.regimes.centres) == 1
    assert len(six.regimes.centres) == 6
    assert six.silhouette is not None
    assert six.silhouette > regimes.SEPARATED
    # Three conditions: the number follows the data, not a constant.
    three = multi[np.isin(six_of(six, multi), [0, 2, 4])]
    assert len(regimes.fit(three, CMAPSS_SETTINGS, CMAPSS_SENSORS).regimes.centres) == 3
    assert one.dropped["t2"] == "constant"
    assert set(one.sensors) == set(rul.SENSORS)  # FD001's usual 14
    stuck = single.assign(t24=642.0)
    assert regimes.fit(stuck, CMAPSS_SETTINGS, CMAPSS_SENSORS).dropped["t24"] == "constant"


def six_of(found: regimes.Found, frame: pd.DataFrame) -> np.ndarray:
    from models.features import nearest_regime

    return nearest_regime(frame[list(CMAPSS_SETTINGS)].to_numpy(float), found.regimes.centres, found.regimes.scale)[0]


def test_an_unknown_regime_or_a_stuck_sensor_in_evaluation_data_names_the_file(datasets: Path) -> None:
    cmapss = datasets / "cmapss"
    single = load_cmapss([cmapss / "train_FD001.txt"]).train
    assert single is not None
    spec = rul.spec_for(regimes.fit(single, CMAPSS_SETTINGS, CMAPSS_SENSORS))
    other = load_cmapss([cmapss / "test_FD002.txt.gz", cmapss / "RUL_FD002.txt.gz"])
    with pytest.raises(DataError, match=r"test_FD002.txt.gz: rows in no operating regime the model knows"):
        rul.check_frame(other, "test", spec)
    own = load_cmapss([cmapss / "test_FD001.txt", cmapss / "RUL_FD001.txt"])
    rul.check_frame(own, "test", spec)
    assert own.test is not None
    stuck = type(own)(own.train, own.test.assign(ps30=47.5), own.truth, own.sources)
    with pytest.raises(DataError, match=r"test_FD001.txt: sensors \['ps30'\] are constant over all 13096 rows"):
        rul.check_frame(stuck, "test", spec)
    # On the edge the same window is refused, not diagnosed (the agent counts it as skipped).
    window = spec.probe()[None].copy()
    window[0, -1, 1] = 42.0  # altitude of a condition FD001 never flew
    with pytest.raises(WindowRejected, match=r"unknown_regime"):
        features(window, spec)


def test_bad_ai4i_and_skab_files_name_the_file_and_lines(datasets: Path, tmp_path: Path) -> None:
    lines = (datasets / "ai4i2020" / "ai4i2020.csv").read_text(encoding="utf-8-sig").splitlines(keepends=True)
    cut = _write(tmp_path / "ai4i.csv", [*lines[:101], lines[101][:30]])
    with pytest.raises(DataError, match=r"ai4i.csv: 1 rows with a missing.* truncated file\?\), the first at line 102"):
        load_ai4i([cut])
    with pytest.raises(DataError, match=r"rows 1-500 asked, the table has 100"):
        load_ai4i([_write(tmp_path / "ai4i100.csv", lines[:101])], parse_rows("1-500"))
    with pytest.raises(DataError, match=r"expected FIRST-LAST"):
        parse_rows("7000")
    skab = (datasets / "skab" / "valve1" / "0.csv").read_text().splitlines(keepends=True)
    gap = [line if not 200 <= i < 205 else line.split(";")[0] + ";" * 10 + "\n" for i, line in enumerate(skab)]
    with pytest.raises(DataError, match=r"0.csv: 5 rows with a missing, non-numeric or NaN value \(lines 201-205"):
        load_skab([_write(tmp_path / "0.csv", gap)])
    with pytest.raises(DataError, match=r"not a SKAB CSV, missing columns"):
        load_skab([_write(tmp_path / "1.csv", [line.rsplit(";", 3)[0] + "\n" for line in skab])])
