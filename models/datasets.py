"""Loaders for the public data sets in their own formats, plain or gzip-compressed.

Column names become the property names of ``examples/plant.yaml`` and values its units, so a model trained
here reads the same signals the edge agent delivers. Training side only: imports pandas.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from models.errors import DataError
from models.features import AI4I_TYPES

CMAPSS_SETTINGS = ("setting1", "setting2", "setting3")
CMAPSS_SENSORS = (
    "t2", "t24", "t30", "t50", "p2", "p15", "p30", "nf", "nc", "epr", "ps30",
    "phi", "nrf", "nrc", "bpr", "farb", "htbleed", "nf_dmd", "pcnfr_dmd", "w31", "w32",
)  # fmt: skip
CMAPSS_COLUMNS = ("unit", "cycle", *CMAPSS_SETTINGS, *CMAPSS_SENSORS)

AI4I_COLUMNS = {
    "Type": "product_type",
    "Air temperature [K]": "air_temperature",
    "Process temperature [K]": "process_temperature",
    "Rotational speed [rpm]": "rotational_speed",
    "Torque [Nm]": "torque",
    "Tool wear [min]": "tool_wear",
    "Machine failure": "machine_failure",
    "TWF": "TWF",
    "HDF": "HDF",
    "PWF": "PWF",
    "OSF": "OSF",
    "RNF": "RNF",
}

SKAB_COLUMNS = {
    "Accelerometer1RMS": "accelerometer1_rms",
    "Accelerometer2RMS": "accelerometer2_rms",
    "Current": "current",
    "Pressure": "pressure",
    "Temperature": "temperature",
    "Thermocouple": "thermocouple",
    "Voltage": "voltage",
    "Volume Flow RateRMS": "flow_rate",
}
BAR_TO_KPA = 100.0  # SKAB records bar; the plant declares kPa

_CMAPSS_NAME = re.compile(r"(train|test|RUL)_(FD\d{3})", re.IGNORECASE)


def read_bytes(path: Path) -> bytes:
    """A file's content, decompressed when it is gzip (recognised by its magic bytes, not its name)."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror}") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise DataError(f"{path}: corrupt gzip data ({exc})") from None
    return raw


def files_hash(paths: Sequence[Path]) -> str:
    """sha256 over the decompressed contents of the data files, in name order: the training-data hash."""
    digest = hashlib.sha256()
    for path in sorted(expand(paths), key=file_name):
        digest.update(read_bytes(path))
    return digest.hexdigest()


def file_name(path: Path) -> str:
    """A data file's name with its folder (SKAB repeats ``0.csv`` in several folders)."""
    return f"{path.parent.name}/{path.name}"


def file_names(paths: Sequence[Path]) -> list[str]:
    """Names (with folder) of the data files behind the paths given, sorted."""
    return sorted(file_name(p) for p in expand(paths))


def expand(paths: Sequence[Path]) -> list[Path]:
    """Files named directly, plus the data files found under any directory named."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found.extend(sorted(p for p in path.rglob("*") if p.is_file() and _is_data_name(p.name)))
        elif path.is_file():
            found.append(path)
        else:
            raise DataError(f"no such file or directory: {path}")
    if not found:
        raise DataError(f"no data files in {', '.join(map(str, paths))}")
    return found


def _is_data_name(name: str) -> bool:
    return name.endswith((".txt", ".csv", ".txt.gz", ".csv.gz")) and not name.lower().startswith("readme")


@dataclass(frozen=True)
class CmapssData:
    """C-MAPSS files of one or more sub-sets, with sub-set-qualified unit ids ("FD001/7").

    ``sources`` names the file each part came from (``"train/FD001"`` → ``train_FD001.txt``), so an error found
    later can name it. Any sub-set name of the NASA pattern (FD001 … FD004, or a new one) is accepted: nothing
    here depends on which it is.
    """

    train: pd.DataFrame | None
    test: pd.DataFrame | None
    truth: pd.Series | None  # true RUL after the last test cycle, indexed by unit id
    sources: dict[str, str] = field(default_factory=dict)

    def source(self, kind: str, unit: str) -> str:
        """The file a unit of the train or test part came from."""
        return self.sources.get(f"{kind}/{unit.split('/')[0]}", kind)


def _cmapss_table(path: Path, subset: str) -> pd.DataFrame:
    text = read_bytes(path).decode("ascii", errors="replace")
    try:
        frame = pd.read_csv(io.StringIO(text), sep=r"\s+", header=None, engine="c")
    except (ValueError, pd.errors.ParserError) as exc:
        raise DataError(f"{path}: not a C-MAPSS table ({exc})") from None
    if frame.shape[1] != len(CMAPSS_COLUMNS):
        raise DataError(f"{path}: expected {len(CMAPSS_COLUMNS)} columns, found {frame.shape[1]}")
    frame.columns = list(CMAPSS_COLUMNS)
    numeric = frame.apply(pd.to_numeric, errors="coerce")
    bad = numeric.isna().any(axis=1).to_numpy()
    if bad.any():
        first = int(np.argmax(bad))
        raise DataError(
            f"{path}: {int(bad.sum())} rows with missing or non-numeric values (NaN, or fewer than "
            f"{len(CMAPSS_COLUMNS)} numbers: a truncated file?), the first at line {first + 1}"
        )
    _check_cycles(path, numeric)
    numeric["unit"] = subset + "/" + numeric["unit"].astype(int).astype(str)
    return numeric


def _check_cycles(path: Path, frame: pd.DataFrame) -> None:
    """Each engine's rows are consecutive cycles 1, 2, 3, … in one block (the windows rely on it)."""
    unit = frame["unit"].to_numpy()
    cycle = frame["cycle"].to_numpy()
    starts = np.r_[True, unit[1:] != unit[:-1]]
    expected = np.where(starts, 1, np.r_[0, cycle[:-1]] + 1)
    wrong = (cycle != expected) | (starts & pd.Series(unit).duplicated().to_numpy())
    if wrong.any():
        line = int(np.argmax(wrong))
        raise DataError(
            f"{path}: line {line + 1}: engine {int(unit[line])} cycle {cycle[line]:g} where {expected[line]:g} was "
            "expected (each engine's rows must be its cycles 1, 2, 3, … in one block)"
        )


def _rul_table(path: Path, subset: str) -> pd.Series:
    try:
        values = np.loadtxt(io.StringIO(read_bytes(path).decode("ascii", errors="replace")), ndmin=1)
    except ValueError as exc:
        raise DataError(f"{path}: not a RUL file, one number per line ({exc})") from None
    if values.ndim != 1 or not len(values) or not np.isfinite(values).all() or (values < 0).any():
        raise DataError(f"{path}: a RUL file holds one non-negative number per line")
    ids = [f"{subset}/{i + 1}" for i in range(len(values))]
    return pd.Series(values, index=ids, name="rul")


def load_cmapss(paths: Sequence[Path]) -> CmapssData:
    """Train, test and RUL files of any C-MAPSS sub-sets, recognised by their names (train_FD001.txt[.gz])."""
    parts: dict[str, list[pd.DataFrame]] = {"train": [], "test": []}
    truths: list[pd.Series] = []
    sources: dict[str, str] = {}
    for path in expand(paths):
        match = _CMAPSS_NAME.search(path.name)
        if match is None:
            raise DataError(f"{path.name}: not a C-MAPSS file name (train_FD00x, test_FD00x, RUL_FD00x)")
        kind, subset = match.group(1).lower(), match.group(2).upper()
        if f"{kind}/{subset}" in sources:
            raise DataError(f"{path.name}: a second {kind} file of {subset} (also {sources[kind + '/' + subset]})")
        sources[f"{kind}/{subset}"] = path.name
        if kind == "rul":
            truths.append(_rul_table(path, subset))
        else:
            parts[kind].append(_cmapss_table(path, subset))
    train = pd.concat(parts["train"], ignore_index=True) if parts["train"] else None
    test = pd.concat(parts["test"], ignore_index=True) if parts["test"] else None
    truth = pd.concat(truths) if truths else None
    data = CmapssData(train=train, test=test, truth=truth, sources=sources)
    _check_truth(data)
    return data


def _check_truth(data: CmapssData) -> None:
    """Every test file has a RUL file with one value per engine, and every RUL file a test file."""
    tests = {k.split("/")[1] for k in data.sources if k.startswith("test/")}
    ruls = {k.split("/")[1] for k in data.sources if k.startswith("rul/")}
    for subset in sorted(tests ^ ruls):
        have = data.sources.get(f"test/{subset}") or data.sources[f"rul/{subset}"]
        lacking = "RUL" if subset in tests else "test"
        raise DataError(f"{have}: no {lacking}_{subset} file given with it (test and RUL files come in pairs)")
    for subset in sorted(tests):
        assert data.test is not None
        assert data.truth is not None
        engines = data.test["unit"][data.test["unit"].str.startswith(subset + "/")].nunique()
        values = int(data.truth.index.str.startswith(subset + "/").sum())
        if engines != values:
            raise DataError(
                f"{data.sources['rul/' + subset]}: {values} values for the {engines} engines of "
                f"{data.sources['test/' + subset]}"
            )


Rows = tuple[int, int]  # data rows first..last of a table, 1-based and inclusive (the header not counted)


def parse_rows(text: str) -> Rows:
    """``"1-7000"`` as (1, 7000); DataError when it is not a range of data rows."""
    try:
        first, last = (int(x) for x in text.split("-"))
    except ValueError:
        raise DataError(f"rows {text!r}: expected FIRST-LAST, e.g. 1-7000") from None
    if not 1 <= first <= last:
        raise DataError(f"rows {text!r}: need 1 <= FIRST <= LAST")
    return first, last


def load_ai4i(paths: Sequence[Path], rows: Rows | None = None) -> pd.DataFrame:
    """The AI4I 2020 CSV (UTF-8 with a byte-order mark), columns renamed to the plant's property names.

    ``rows`` keeps data rows first..last (1-based) of the table (several files: of their concatenation).
    """
    frames = []
    for path in expand(paths):
        text = read_bytes(path).decode("utf-8-sig", errors="replace")
        try:
            frame = pd.read_csv(io.StringIO(text))
        except (ValueError, pd.errors.ParserError) as exc:
            raise DataError(f"{path}: not a CSV table ({exc})") from None
        missing = sorted(set(AI4I_COLUMNS) - set(frame.columns))
        if missing:
            raise DataError(f"{path}: not the AI4I 2020 CSV, missing columns {missing}")
        frame = frame[list(AI4I_COLUMNS)].rename(columns=AI4I_COLUMNS)
        _check_ai4i(path, frame)
        frames.append(frame)
    table = pd.concat(frames, ignore_index=True)
    if rows is None:
        return table
    first, last = rows
    if last > len(table):
        names = ", ".join(p.name for p in expand(paths))
        raise DataError(f"{names}: rows {first}-{last} asked, the table has {len(table)}")
    return table.iloc[first - 1 : last].reset_index(drop=True)


def _check_ai4i(path: Path, frame: pd.DataFrame) -> None:
    """Numbers where numbers belong, a known product type, 0/1 labels; DataError names the first bad line."""
    numeric = [c for c in frame.columns if c != "product_type"]
    values = frame[numeric].apply(pd.to_numeric, errors="coerce")
    bad = values.isna().any(axis=1).to_numpy() | ~frame["product_type"].isin(AI4I_TYPES).to_numpy()
    labels = values[["machine_failure", "TWF", "HDF", "PWF", "OSF", "RNF"]]
    bad |= ~labels.isin([0, 1]).all(axis=1).to_numpy()
    if bad.any():
        line = int(np.argmax(bad)) + 2  # the header is line 1
        raise DataError(
            f"{path}: {int(bad.sum())} rows with a missing, non-numeric or out-of-range value (a truncated "
            f"file?), the first at line {line}"
        )
    frame[numeric] = values


def load_skab(paths: Sequence[Path]) -> list[pd.DataFrame]:
    """SKAB CSVs (';' separated), one frame per file, pressure converted from bar to kPa.

    Each frame carries ``file`` (its path relative to the data set when recognisable) and, for labelled
    files, ``anomaly`` and ``changepoint``; the anomaly-free file has no label columns. A file with a missing,
    non-numeric or NaN value (a gap in the recording, a truncated last line) or a label other than 0/1 is
    refused, naming the lines: scoring across a gap would judge a window the machine never ran.
    """
    frames = []
    for path in expand(paths):
        text = read_bytes(path).decode("utf-8-sig", errors="replace")
        try:
            frame = pd.read_csv(io.StringIO(text), sep=";")
        except (ValueError, pd.errors.ParserError) as exc:
            raise DataError(f"{path}: not a SKAB CSV ({exc})") from None
        missing = sorted(set(SKAB_COLUMNS) - set(frame.columns))
        if missing:
            raise DataError(f"{path}: not a SKAB CSV, missing columns {missing}")
        labels = [c for c in ("anomaly", "changepoint") if c in frame.columns]
        values = frame[[*SKAB_COLUMNS, *labels]].apply(pd.to_numeric, errors="coerce")
        bad = values.isna().any(axis=1).to_numpy() | ~values[labels].isin([0, 1]).all(axis=1).to_numpy()
        if bad.any():
            lines = np.flatnonzero(bad) + 2  # the header is line 1
            raise DataError(
                f"{path}: {lines.size} rows with a missing, non-numeric or NaN value (lines {lines[0]}-{lines[-1]}; "
                "a gap in the recording or a truncated file?)"
            )
        out = values[list(SKAB_COLUMNS)].rename(columns=SKAB_COLUMNS).astype(np.float64)
        out["pressure"] = out["pressure"] * BAR_TO_KPA
        for label in labels:
            out[label] = values[label].astype(int)
        out.attrs["file"] = file_name(path)
        frames.append(out)
    return frames
