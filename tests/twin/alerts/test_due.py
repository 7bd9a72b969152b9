"""The due-date rule for RUL alerts at its edges: lead time, lower bound, activation, interval shapes."""

from __future__ import annotations

import pytest

from twin.advice import MAX_AHEAD_H, H, rul_due

T = 1_790_000_000_000_000  # µs


def due(rul: float, low: float | None = None, high: float | None = None, lead_h: float = 72.0, at: int = T,
        not_before: int = T):
    return rul_due(at=at, rul=rul, low=low, high=high, unit="cycle", hours_per_unit=1.5, lead_h=lead_h,
                   not_before=not_before)


def test_due_is_the_lower_bound_less_the_lead_time() -> None:
    d = due(100, low=80, high=120)
    assert d.at == T + int((80 * 1.5 - 72) * H)
    assert not d.now
    assert d.reason.startswith("RUL 100 ± 20 cycles ≈ 150 h at 1.5 h/cycle; lower bound 80 cycles ≈ 120 h, ")
    assert "less 72 h lead time: change before " in d.reason
    assert d.reason.endswith(" UTC")


def test_inside_the_lead_time_it_is_due_now_and_says_so() -> None:
    d = due(38, low=29, high=47)
    assert d.now
    assert d.at == T
    assert d.reason == (
        "RUL 38 ± 9 cycles ≈ 57 h at 1.5 h/cycle; lower bound 29 cycles ≈ 43.5 h is inside the 72 h lead time: "
        "due now"
    )


@pytest.mark.parametrize(("low", "now"), [(48.0, True), (48.001, False)])
def test_the_lead_time_edge(low: float, now: bool) -> None:
    """48 cycles × 1.5 h is exactly the 72 h lead time: due now; a hair more is due (just) later."""
    d = due(60, low=low, high=72)
    assert d.now is now
    assert d.at >= T


def test_never_in_the_past_at_the_raise() -> None:
    # diagnosed an hour before the activation, with 30 min to spare: due at the activation, not before it
    d = due(48 + 1 / 3, lead_h=72, at=T - H, not_before=T)  # 72.5 h left
    assert d.at == T
    assert d.now
    assert "has run out: due now" in d.reason
    for rul in (0.0, 1.0, 10.0, 47.9, 48.0, 48.1, 60.0, 500.0):
        assert due(rul, low=max(rul - 5, 0), high=rul + 5).at >= T


def test_without_an_interval_the_estimate_is_the_bound() -> None:
    d = due(100)
    assert d.at == T + int((100 * 1.5 - 72) * H)
    assert d.reason.startswith("RUL 100 cycles ≈ 150 h at 1.5 h/cycle; ≈ 150 h left, less 72 h lead time")


def test_a_negative_or_inverted_bound_is_clamped() -> None:
    assert due(5, low=-3, high=9).now  # a model's interval below zero: no time left
    d = due(100, low=120, high=90)  # an interval that does not hold the estimate: the estimate is the bound
    assert d.at == T + int((100 * 1.5 - 72) * H)


def test_the_lead_time_edge_without_an_interval() -> None:
    """The estimate itself exactly at the lead time: due now; one cycle more: due 1.5 h after the diagnosis."""
    assert due(48).now
    assert due(48).at == T
    d = due(49)
    assert not d.now
    assert d.at == T + int(1.5 * H)


@pytest.mark.parametrize(("low", "high"), [(None, None), (0.0, 0.0), (0.0, 6.0)])
def test_no_life_left_is_due_now(low: float | None, high: float | None) -> None:
    d = due(0.0, low=low, high=high)
    assert d.now
    assert d.at == T
    assert d.reason.startswith("RUL 0")
    assert d.reason.endswith("is inside the 72 h lead time: due now")


def test_a_model_past_the_end_of_life_is_due_now_at_the_activation() -> None:
    # a RUL below zero (the model says the asset has outlived its estimate), diagnosed before the activation
    d = due(-5.0, low=-9.0, high=-1.0, at=T - H, not_before=T)
    assert d.now
    assert d.at == T
    assert "lower bound 0 cycles ≈ 0 h is inside the 72 h lead time: due now" in d.reason


def test_no_lead_time_is_due_when_the_bound_runs_out() -> None:
    d = due(100, low=80, high=120, lead_h=0.0)
    assert d.at == T + int(80 * 1.5 * H)
    assert due(0.0, lead_h=0.0).now


def test_a_huge_rul_gives_a_date_with_its_year() -> None:
    d = due(100_000.0, low=90_000.0, high=110_000.0)  # some 15 years at 1.5 h a cycle
    assert not d.now
    assert d.at == T + int((90_000 * 1.5 - 72) * H)
    assert " 2042 " in d.reason  # not a bare weekday and day that reads as this year


@pytest.mark.parametrize("rul", [1e9, 1e15, 1e300, float("inf")])
def test_a_rul_beyond_any_calendar_is_held_at_the_furthest_date(rul: float) -> None:
    d = due(rul)
    assert not d.now
    assert d.at == T + int(MAX_AHEAD_H * H)
    assert "the furthest a plan looks ahead, 100 years" in d.reason
