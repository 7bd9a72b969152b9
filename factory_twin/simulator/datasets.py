"""The data sets behind the simulated machines: which slice feeds which asset type, column by column.

Three feeds, one per asset type of the example plant, each reading the committed slices in ``examples/data/``
(see its LICENSES.md) in the data set's own format:

    turbofan   NASA C-MAPSS FD001, one row per flight cycle     (space separated, no header)
    cnc_mill   AI4I 2020, one row per machining process         (comma separated, UTF-8 with BOM)
    pump       SKAB, one row per second                         (semicolon separated)

Readers return raw rows (column name → text) so label columns (``Machine failure``, ``anomaly``, the C-MAPSS
``unit``) stay available to tests; ``convert`` types a value for its property.
"""

from __future__ import annotations

import csv
import gzip
import io
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from factory_twin.simulator.errors import SliceError
from factory_twin.simulator.setpoints import Setpoint
from plant.site import DataType
from plant.wire import Scalar

RawRow = dict[str, str]

CMAPSS_SENSORS = (
    "t2", "t24", "t30", "t50", "p2", "p15", "p30", "nf", "nc", "epr", "ps30",
    "phi", "nrf", "nrc", "bpr", "farb", "htbleed", "nf_dmd", "pcnfr_dmd", "w31", "w32",
)  # fmt: skip
CMAPSS_COLUMNS = ("unit", "cycle", "setting1", "setting2", "setting3", *CMAPSS_SENSORS)


def _read_text(path: Path, encoding: str) -> str:
    try:
        raw = path.read_bytes()
        if path.suffix == ".gz":
            raw = gzip.decompress(raw)
        return raw.decode(encoding)
    except FileNotFoundError:
        raise SliceError(f"{path}: data slice not found (run examples/data/make_slices.py)") from None
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise SliceError(f"{path}: cannot read data slice: {exc}") from exc


def read_cmapss(path: Path) -> list[RawRow]:
    """Rows of a C-MAPSS file (unit, cycle, 3 settings, 21 sensors), plain or gzipped."""
    rows: list[RawRow] = []
    for lineno, line in enumerate(_read_text(path, "ascii").splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != len(CMAPSS_COLUMNS):
            raise SliceError(f"{path}:{lineno}: expected {len(CMAPSS_COLUMNS)} numbers, found {len(fields)}")
        rows.append(dict(zip(CMAPSS_COLUMNS, fields, strict=True)))
    return rows


def _read_csv(path: Path, delimiter: str, encoding: str) -> list[RawRow]:
    reader = csv.DictReader(io.StringIO(_read_text(path, encoding)), delimiter=delimiter)
    if not reader.fieldnames:
        raise SliceError(f"{path}: empty file, expected a header line")
    rows: list[RawRow] = []
    for row in reader:
        if None in row or any(v is None for v in row.values()):
            raise SliceError(f"{path}:{reader.line_num}: expected {len(reader.fieldnames)} fields")
        rows.append(row)
    return rows


def read_ai4i(path: Path) -> list[RawRow]:
    """Rows of an AI4I 2020 CSV file (comma separated, byte-order mark tolerated), plain or gzipped."""
    return _read_csv(path, ",", "utf-8-sig")


def read_skab(path: Path) -> list[RawRow]:
    """Rows of a SKAB CSV file (semicolon separated), plain or gzipped."""
    return _read_csv(path, ";", "utf-8")


@dataclass(frozen=True)
class Feed:
    """Which data set feeds an asset type: its slice files in replay order and each property's column.

    Args:
        dataset: the data set's name, for logs.
        files: slice file names under the data directory, replayed one after the other.
        reader: reads one file into raw rows.
        columns: property name → column of the raw row.
        units: property name → the unit the data set uses (published as is; bindings declare it).
        demo_row_s: how long one row lasts at the demo's pace (``factory-twin demo``), seconds at speed 1.
        per_cycle: one row is one cycle of the machine and its models read one frame per row: at the demo's
            pace rows are held, not interpolated, and the asset type's grid is the row's duration.
        counters: properties that count up and reset (stepped, never interpolated downwards).
        setpoints: property → a value the machine takes (served writable over OPC-UA) and the signals it
            drives (``setpoints.py``); not a column of the data set.
    """

    dataset: str
    files: tuple[str, ...]
    reader: Callable[[Path], list[RawRow]]
    columns: Mapping[str, str]
    units: Mapping[str, str]
    demo_row_s: float = 1.0
    per_cycle: bool = False
    counters: frozenset[str] = frozenset()
    setpoints: Mapping[str, Setpoint] = field(default_factory=dict)

    def load(self, data_dir: Path) -> list[RawRow]:
        """All rows of the feed's files, in replay order; every mapped column must be present."""
        rows: list[RawRow] = []
        for name in self.files:
            path = data_dir / name
            part = self.reader(path)
            if not part:
                raise SliceError(f"{path}: no data rows")
            missing = sorted(set(self.columns.values()) - part[0].keys())
            if missing:
                raise SliceError(f"{path}: missing column(s) {', '.join(missing)}")
            rows.extend(part)
        return rows


def convert(raw: str, dtype: DataType, where: str) -> Scalar:
    """The raw text of a cell as a value of ``dtype``; SliceError naming ``where`` if it does not parse."""
    try:
        if dtype == DataType.STRING:
            return raw
        if dtype == DataType.BOOL:
            return float(raw) != 0.0
        number = float(raw)
        if dtype == DataType.INT:
            return int(number)
        return number
    except ValueError:
        raise SliceError(f"{where}: {raw!r} is not a {dtype}") from None


_RANKINE, _PSIA, _RPM = "°R", "psia", "rpm"

TURBOFAN = Feed(
    dataset="NASA C-MAPSS FD001",
    files=("cmapss_train_FD001_units_39_1_69.txt.gz",),
    reader=read_cmapss,
    columns={c: c for c in CMAPSS_COLUMNS if c != "unit"},
    units={
        "cycle": "cycle", "setting1": "", "setting2": "", "setting3": "",
        "t2": _RANKINE, "t24": _RANKINE, "t30": _RANKINE, "t50": _RANKINE,
        "p2": _PSIA, "p15": _PSIA, "p30": _PSIA, "nf": _RPM, "nc": _RPM, "epr": "", "ps30": _PSIA,
        "phi": "pps/psi", "nrf": _RPM, "nrc": _RPM, "bpr": "", "farb": "", "htbleed": "",
        "nf_dmd": _RPM, "pcnfr_dmd": _RPM, "w31": "lbm/s", "w32": "lbm/s",
    },
    # an engine's life (128 to 362 cycles in the slice) takes 10 to 30 minutes at the demo's pace
    demo_row_s=5.0,
    per_cycle=True,
)  # fmt: skip

CNC_MILL = Feed(
    dataset="AI4I 2020",
    files=("ai4i2020_rows_2841-3240.csv.gz",),
    reader=read_ai4i,
    columns={
        "product_type": "Type",
        "air_temperature": "Air temperature [K]",
        "process_temperature": "Process temperature [K]",
        "rotational_speed": "Rotational speed [rpm]",
        "torque": "Torque [Nm]",
        "tool_wear": "Tool wear [min]",
    },
    units={
        "product_type": "", "air_temperature": "K", "process_temperature": "K",
        "rotational_speed": "rpm", "torque": "N·m", "tool_wear": "min",
    },
    # one machining process per row, some 2.5 minutes of tool wear each: a tool's life (about 100 processes) takes
    # some 17 minutes at the demo's pace, the values moving from one process to the next
    demo_row_s=10.0,
    counters=frozenset({"tool_wear"}),
)  # fmt: skip

PUMP = Feed(
    dataset="SKAB",
    files=("skab_valve1_0.csv.gz", "skab_anomaly-free_head600.csv.gz", "skab_valve1_1.csv.gz"),
    reader=read_skab,
    columns={
        "accelerometer1_rms": "Accelerometer1RMS",
        "accelerometer2_rms": "Accelerometer2RMS",
        "current": "Current",
        "pressure": "Pressure",
        "temperature": "Temperature",
        "thermocouple": "Thermocouple",
        "voltage": "Voltage",
        "flow_rate": "Volume Flow RateRMS",
    },
    # SKAB's Pressure is in bar; the plant's property is kPa and its binding says the source sends bar.
    units={
        "accelerometer1_rms": "g", "accelerometer2_rms": "g", "current": "A", "pressure": "bar",
        "temperature": "°C", "thermocouple": "°C", "voltage": "V", "flow_rate": "l/min",
    },
    # SKAB does not record the pump's speed: the replay takes it as a two-pole motor's on 50 Hz mains, and a
    # written speed scales flow (∝ n), pressure, vibration and current (∝ n²), as the affinity laws have it
    setpoints={
        "speed": Setpoint(nominal=2900.0, unit=_RPM, drives={
            "flow_rate": 1.0, "pressure": 2.0, "accelerometer1_rms": 2.0, "accelerometer2_rms": 2.0, "current": 2.0,
        }),
    },
)  # fmt: skip

FEEDS: dict[str, Feed] = {"turbofan": TURBOFAN, "cnc_mill": CNC_MILL, "pump": PUMP}
"""Asset type id → the feed that replays it."""
