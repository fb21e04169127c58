"""Durations and maintenance windows: pure functions of time, checked at the edges."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from agentd.core.timespec import (
    day_numbers,
    format_duration,
    parse_clock,
    parse_duration,
    time_zone,
    windows_from_json,
)

UTC = timezone.utc


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        (30, 30.0),
        (1.5, 1.5),
        ("45", 45.0),
        ("30s", 30.0),
        ("5m", 300.0),
        ("1h30m", 5400.0),
        ("2d", 172800.0),
        ("1d2h3m4s", 93784.0),
        ("0.5s", 0.5),
        (" 10 M ", 600.0),
    ],
)
def test_durations(text: int | float | str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "text",
    # The last six: past any sensible duration, where float() or a sleep would overflow
    # (found by tests/scenarios/test_hostile.py: `interval: 1000...0` crashed the settings loader).
    [
        *("", "m", "5 minutes", "1m1h", "-5s", "5x", True, -1),
        *("1e400", "367d", float("inf"), float("nan")),
        pytest.param(10**400, id="10**400"),
        pytest.param(-(10**400), id="-10**400"),
    ],
)
def test_not_durations(text: int | str | bool) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_durations_print_short() -> None:
    assert [format_duration(s) for s in (0, 45, 60, 90, 3600, 5400, 90061)] == [
        "0s",
        "45s",
        "1m",
        "1m30s",
        "1h",
        "1h30m",
        "1d1h1m1s",
    ]


def test_clock_and_days() -> None:
    assert parse_clock("00:00") == 0
    assert parse_clock("23:59") == 23 * 60 + 59
    for bad in ("24:00", "2:00", "02:60", "noon"):
        with pytest.raises(ValueError, match="time of day"):
            parse_clock(bad)
    assert day_numbers(["weekends"]) == (5, 6)
    assert day_numbers(["Monday", "fri", "daily"]) == tuple(range(7))
    with pytest.raises(ValueError, match="not a day"):
        day_numbers(["monkey"])


def _windows(days: list[str], start: str, duration: str, tz: str = "UTC"):  # type: ignore[no-untyped-def]
    return windows_from_json(
        {"timezone": tz, "windows": [{"days": days, "start": start, "duration": duration}]}
    )


def test_a_window_is_open_from_its_start_for_its_duration() -> None:
    w = _windows(["sat"], "02:00", "3h")
    saturday = datetime(2026, 11, 28, tzinfo=UTC)  # a Saturday
    assert not w.open_at(saturday + timedelta(hours=1, minutes=59))
    assert w.open_at(saturday + timedelta(hours=2))
    assert w.open_at(saturday + timedelta(hours=4, minutes=59))
    assert not w.open_at(saturday + timedelta(hours=5))
    assert not w.open_at(saturday + timedelta(days=1, hours=3))  # Sunday


def test_a_window_may_run_past_midnight() -> None:
    w = _windows(["sun"], "23:00", "2h")
    sunday = datetime(2026, 11, 29, tzinfo=UTC)
    assert w.open_at(sunday + timedelta(hours=23, minutes=30))
    assert w.open_at(sunday + timedelta(days=1, minutes=30))  # Monday 00:30: still Sunday's
    assert not w.open_at(sunday + timedelta(days=1, hours=1))
    assert not w.open_at(sunday + timedelta(minutes=30))  # Sunday 00:30: Saturday had none


def test_the_next_opening() -> None:
    w = _windows(["sat", "sun"], "02:00", "3h")
    friday_noon = datetime(2026, 11, 27, 12, tzinfo=UTC)
    assert w.next_opening(friday_noon) == datetime(2026, 11, 28, 2, tzinfo=UTC)
    during = datetime(2026, 11, 28, 3, tzinfo=UTC)
    assert w.next_opening(during) == datetime(2026, 11, 29, 2, tzinfo=UTC)
    sunday_late = datetime(2026, 11, 29, 23, tzinfo=UTC)
    assert w.next_opening(sunday_late) == datetime(2026, 12, 5, 2, tzinfo=UTC)


def test_windows_are_kept_in_their_time_zone_across_daylight_saving() -> None:
    w = _windows(["daily"], "02:30", "1h", "Europe/Berlin")
    # Winter (UTC+1) and summer (UTC+2): the same local time is a different UTC time.
    assert w.open_at(datetime(2026, 1, 15, 1, 45, tzinfo=UTC))
    assert not w.open_at(datetime(2026, 1, 15, 0, 45, tzinfo=UTC))
    assert w.open_at(datetime(2026, 7, 15, 0, 45, tzinfo=UTC))
    assert not w.open_at(datetime(2026, 7, 15, 1, 45, tzinfo=UTC))
    assert w.describe() == "daily 02:30+1h (Europe/Berlin)"


def test_time_zones() -> None:
    assert time_zone("UTC") is UTC
    assert time_zone("local") is not None
    with pytest.raises(ValueError, match="unknown time zone"):
        time_zone("Nowhere/Special")
