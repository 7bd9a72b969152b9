"""Build the small compressed data slices that ``factory-twin simulate`` and the demo replay.

For maintainers only: the demo and the tests read the committed ``*.gz`` files, never the full data
sets. Run it from the repository root after the data sets change::

    python examples/data/make_slices.py [--datasets ../shared/datasets]

Each slice keeps its data set's own format (same header, separators and line ends; only whole lines are
taken), so any loader of the full data set reads the slice too. The gzip header carries no name or time, so
the output is byte-for-byte reproducible. LICENSES.md says which rows were taken; keep it in step with the
constants below.
"""

from __future__ import annotations

import argparse
import gzip
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

# C-MAPSS FD001 training engines, in replay order. Unit 39 has the shortest life of FD001 (128 cycles), so
# its remaining useful life falls below the usual 125-cycle cap from its first cycles: the demo shows RUL
# dropping at once. Unit 1 is a typical life (192 cycles), unit 69 the longest (362 cycles).
CMAPSS_UNITS = (39, 1, 69)

# AI4I 2020 data rows 2840..3239 (0-based, UDI 2841..3240): the first 400-row window of the file that holds
# all five failure modes (TWF, HDF, PWF, OSF, RNF), contiguous so tool wear climbs and resets as on a real
# machine.
AI4I_FIRST_ROW = 2840
AI4I_ROWS = 400

# SKAB, in replay order: valve1/0.csv whole (anomaly: inlet valve closing), the first 600 rows of
# anomaly-free.csv, valve1/1.csv whole. The output names say which file each one is.
SKAB_FILES: tuple[tuple[str, str, int | None], ...] = (
    ("valve1/0.csv", "skab_valve1_0.csv.gz", None),
    ("anomaly-free/anomaly-free.csv", "skab_anomaly-free_head600.csv.gz", 600),
    ("valve1/1.csv", "skab_valve1_1.csv.gz", None),
)


def _write_gz(path: Path, data: bytes) -> None:
    # mtime=0 and no file name in the header: the same input always gives the same bytes.
    with path.open("wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
        gz.write(data)
    print(f"{path}: {len(data)} bytes -> {path.stat().st_size} gzipped")


def cmapss(src: Path, out: Path) -> None:
    """Whole run-to-failure histories of CMAPSS_UNITS from train_FD001.txt, unchanged lines."""
    lines = (src / "cmapss" / "train_FD001.txt").read_bytes().splitlines(keepends=True)
    by_unit: dict[int, list[bytes]] = {}
    for line in lines:
        by_unit.setdefault(int(line.split()[0]), []).append(line)
    data = b"".join(line for unit in CMAPSS_UNITS for line in by_unit[unit])
    _write_gz(out / "cmapss_train_FD001_units_39_1_69.txt.gz", data)


def ai4i(src: Path, out: Path) -> None:
    """The header and AI4I_ROWS data rows from AI4I_FIRST_ROW of ai4i2020.csv; BOM and CRLF kept."""
    lines = (src / "ai4i2020" / "ai4i2020.csv").read_bytes().splitlines(keepends=True)
    header, rows = lines[0], lines[1:]
    data = header + b"".join(rows[AI4I_FIRST_ROW : AI4I_FIRST_ROW + AI4I_ROWS])
    _write_gz(out / "ai4i2020_rows_2841-3240.csv.gz", data)


def skab(src: Path, out: Path) -> None:
    """The SKAB files of SKAB_FILES, whole or their first rows, header and CRLF kept."""
    for name, target, head in SKAB_FILES:
        lines = (src / "skab" / name).read_bytes().splitlines(keepends=True)
        keep = lines if head is None else lines[: head + 1]
        _write_gz(out / target, b"".join(keep))


def main(argv: list[str] | None = None) -> int:
    """Write every slice; the exit status is non-zero when a data set is missing."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", type=Path, default=HERE.parent.parent.parent / "shared" / "datasets")
    parser.add_argument("--out", type=Path, default=HERE, help="where to write the slices (default: here)")
    args = parser.parse_args(argv)
    src: Path = args.datasets
    if not (src / "cmapss").is_dir():
        print(f"data sets not found at {src} (pass --datasets)", file=sys.stderr)
        return 2
    cmapss(src, args.out)
    ai4i(src, args.out)
    skab(src, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
