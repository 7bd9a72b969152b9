"""CSV and iCalendar exports: what a spreadsheet or a calendar reads is what was meant, and nothing runs."""

from __future__ import annotations

import csv
import io

import icalendar

from twin.exports import CalendarEvent, csv_text, ical_text

T = 1_796_600_000_000_000  # µs


def test_csv_defuses_formulas_but_keeps_numbers() -> None:
    text = csv_text(("a", "b"), [["=HYPERLINK(\"x\")", -3.5], ["@SUM(A1)", "+1"], ["plain, with comma", None]])
    rows = list(csv.reader(io.StringIO(text)))
    assert rows == [["a", "b"], ["'=HYPERLINK(\"x\")", "-3.5"], ["'@SUM(A1)", "+1"], ["plain, with comma", ""]]
    assert text.count("\r\n") == 4


def test_icalendar_is_rfc_5545_with_folded_lines_and_escaped_text() -> None:
    long = "Ölwechsel; Spindel, Lager — " * 10  # multi-byte characters across the 75-octet fold
    event = CalendarEvent(uid="plan-alert-7@factory-twin", start=T, minutes=90, summary=f"[high] mill-1: {long}",
                          description="line one\nline two; with, commas", location="/demo-plant/mill-1/",
                          priority="high")
    text = ical_text([event], stamp=T, name="plan")
    lines = text.split("\r\n")
    assert lines[-1] == ""
    assert all(len(line.encode("utf-8")) <= 75 for line in lines)
    assert "\n" not in text.replace("\r\n", "")
    (ev,) = icalendar.Calendar.from_ical(text).walk("VEVENT")
    assert str(ev["SUMMARY"]) == f"[high] mill-1: {long}"
    assert str(ev["DESCRIPTION"]) == "line one\nline two; with, commas"
    assert (ev["DTEND"].dt - ev["DTSTART"].dt).total_seconds() == 90 * 60
    assert int(ev["PRIORITY"]) == 3
    assert str(ev["UID"]) == "plan-alert-7@factory-twin"
    assert "DTSTAMP" in ev
