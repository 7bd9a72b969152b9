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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from models.errors import DataError

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
    """C-MAPSS files of one or more sub-sets, with sub-set-qualified unit ids ("FD001/7")."""

    train: pd.DataFrame | None
    test: pd.DataFrame | None
    truth: pd.Series | None  # true RUL after the last test cycle, indexed by unit id


def _cmapss_table(path: Path, subset: str) -> pd.DataFrame:
    text = read_bytes(path).decode("ascii", errors="replace")
    try:
        frame = pd.read_csv(io.StringIO(text), sep=r"\s+", header=None, engine="c")
    except (ValueError, pd.errors.ParserError) as exc:
        raise DataError(f"{path}: not a C-MAPSS table ({exc})") from None
    if frame.shape[1] != len(CMAPSS_COLUMNS):
        raise DataError(f"{path}: expected {len(CMAPSS_COLUMNS)} columns, found {frame.shape[1]}")
    frame.columns = list(CMAPSS_COLUMNS)
    frame["unit"] = subset + "/" + frame["unit"].astype(int).astype(str)
    return frame


def load_cmapss(paths: Sequence[Path]) -> CmapssData:
    """Train, test and RUL files of any C-MAPSS sub-sets, recognised by their names (train_FD001.txt[.gz])."""
    parts: dict[str, list[pd.DataFrame]] = {"train": [], "test": []}
    truths: list[pd.Series] = []
    for path in expand(paths):
        match = _CMAPSS_NAME.search(path.name)
        if match is None:
            raise DataError(f"{path.name}: not a C-MAPSS file name (train_FD00x, test_FD00x, RUL_FD00x)")
        kind, subset = match.group(1).lower(), match.group(2).upper()
        if kind == "rul":
            values = np.loadtxt(io.StringIO(read_bytes(path).decode("ascii")), ndmin=1)
            ids = [f"{subset}/{i + 1}" for i in range(len(values))]
            truths.append(pd.Series(values, index=ids, name="rul"))
        else:
            parts[kind].append(_cmapss_table(path, subset))
    train = pd.concat(parts["train"], ignore_index=True) if parts["train"] else None
    test = pd.concat(parts["test"], ignore_index=True) if parts["test"] else None
    truth = pd.concat(truths) if truths else None
    return CmapssData(train=train, test=test, truth=truth)


def load_ai4i(paths: Sequence[Path]) -> pd.DataFrame:
    """The AI4I 2020 CSV (UTF-8 with a byte-order mark), columns renamed to the plant's property names."""
    frames = []
    for path in expand(paths):
        text = read_bytes(path).decode("utf-8-sig")
        frame = pd.read_csv(io.StringIO(text))
        missing = sorted(set(AI4I_COLUMNS) - set(frame.columns))
        if missing:
            raise DataError(f"{path}: not the AI4I 2020 CSV, missing columns {missing}")
        frames.append(frame[list(AI4I_COLUMNS)].rename(columns=AI4I_COLUMNS))
    return pd.concat(frames, ignore_index=True)


def load_skab(paths: Sequence[Path]) -> list[pd.DataFrame]:
    """SKAB CSVs (';' separated), one frame per file, pressure converted from bar to kPa.

    Each frame carries ``file`` (its path relative to the data set when recognisable) and, for labelled
    files, ``anomaly`` and ``changepoint``; the anomaly-free file has no label columns.
    """
    frames = []
    for path in expand(paths):
        text = read_bytes(path).decode("utf-8-sig")
        frame = pd.read_csv(io.StringIO(text), sep=";")
        missing = sorted(set(SKAB_COLUMNS) - set(frame.columns))
        if missing:
            raise DataError(f"{path}: not a SKAB CSV, missing columns {missing}")
        out = frame[list(SKAB_COLUMNS)].rename(columns=SKAB_COLUMNS).astype(np.float64)
        out["pressure"] = out["pressure"] * BAR_TO_KPA
        for label in ("anomaly", "changepoint"):
            if label in frame.columns:
                out[label] = frame[label].astype(int)
        out.attrs["file"] = file_name(path)
        frames.append(out)
    return frames
