"""Files people take elsewhere: CSV for spreadsheets and iCalendar (RFC 5545) for calendars.

CSV follows RFC 4180 (CRLF, a header, quoting where needed). A cell that a spreadsheet would run as a formula
(starting with ``=``, ``+``, ``-``, ``@``, tab or CR, when not a number) is prefixed with ``'``: notes are typed
by people, and a file opened in a spreadsheet must not run what they typed.

iCalendar: one VEVENT per item with a stable UID (the same item keeps its UID, so a calendar updates it instead of
adding a copy), DTSTAMP, DTSTART/DTEND in UTC, SUMMARY, DESCRIPTION, LOCATION, PRIORITY and CATEGORIES; text
escaped (``\\``, ``;``, ``,``, newlines), lines folded at 75 octets, CRLF line ends.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from plant.wire import from_us

PRODID = "-//factory-twin//maintenance plan//EN"
_FORMULA = ("=", "+", "-", "@", "\t", "\r")
_ICAL_PRIORITY = {"critical": 1, "high": 3, "medium": 5, "low": 7}  # RFC 5545: 1 highest, 9 lowest


def _cell(value: object) -> str:
    text = "" if value is None else str(value)
    if text.startswith(_FORMULA) and not _is_number(text):
        return "'" + text
    return text


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def csv_text(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """CSV with a header line, CRLF line ends, formula-looking cells defused."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow([_cell(v) for v in row])
    return buf.getvalue()


def iso(us: int | None) -> str:
    """µs as ISO 8601 UTC (``2026-12-06T14:00:00Z``), or ""."""
    return "" if us is None else from_us(us).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class CalendarEvent:
    """One item for a calendar.

    Args:
        uid: stable and unique (``plan-alert-12@factory-twin``).
        start: µs.
        minutes: how long the work takes.
        summary: one line.
        description: the details (may span lines).
        location: where (the asset's path).
        priority: critical, high, medium or low.
    """

    uid: str
    start: int
    minutes: int
    summary: str
    description: str
    location: str
    priority: str


def _utc(us: int) -> str:
    return from_us(us).strftime("%Y%m%dT%H%M%SZ")


def _escape(text: str) -> str:
    return (
        text.replace("\\", "\\\\").replace(";", "\\;").replace(",", "\\,").replace("\r\n", "\n").replace("\n", "\\n")
    )


def _fold(line: str) -> list[str]:
    """A content line folded at 75 octets, never inside a UTF-8 character (RFC 5545 3.1)."""
    out: list[str] = []
    current, size, limit = "", 0, 75
    for ch in line:
        n = len(ch.encode("utf-8"))
        if size + n > limit:
            out.append(current)
            current, size, limit = " ", 1, 75
        current += ch
        size += n
    out.append(current)
    return out


def ical_text(events: Iterable[CalendarEvent], *, stamp: int, name: str) -> str:
    """An iCalendar file (VCALENDAR of VEVENTs) with CRLF line ends."""
    lines = ["BEGIN:VCALENDAR", "VERSION:2.0", f"PRODID:{PRODID}", "CALSCALE:GREGORIAN", "METHOD:PUBLISH",
             f"X-WR-CALNAME:{_escape(name)}"]  # fmt: skip
    for e in events:
        lines += [
            "BEGIN:VEVENT",
            f"UID:{e.uid}",
            f"DTSTAMP:{_utc(stamp)}",
            f"DTSTART:{_utc(e.start)}",
            f"DTEND:{_utc(e.start + max(e.minutes, 1) * 60_000_000)}",
            f"SUMMARY:{_escape(e.summary)}",
            f"DESCRIPTION:{_escape(e.description)}",
            f"LOCATION:{_escape(e.location)}",
            f"PRIORITY:{_ICAL_PRIORITY.get(e.priority, 5)}",
            "CATEGORIES:MAINTENANCE",
            "TRANSP:TRANSPARENT",
            "END:VEVENT",
        ]
    lines.append("END:VCALENDAR")
    return "".join(part + "\r\n" for line in lines for part in _fold(line))


def filename_stamp(us: int) -> str:
    """A time for a file name: ``20261206-1400``."""
    return datetime.fromtimestamp(us / 1e6).astimezone().strftime("%Y%m%d-%H%M")
