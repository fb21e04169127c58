"""Durations ("90s", "5m", "1h30m") and weekly maintenance windows, as pure functions of time."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone, tzinfo
from typing import Any, Union

_DURATION_RE = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+(?:\.\d+)?)s)?$")
_SECONDS = (86400, 3600, 60, 1)
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_FULL_DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_TIME_RE = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")
# Longer than any interval, backoff or window means anything on a node; past it, sleeps and
# timedeltas overflow (`interval: 1e400` would crash the loop instead of being refused).
MAX_DURATION = 366 * 86400


def parse_duration(value: Union[int, float, str]) -> float:
    """Seconds from a number of seconds or a string such as "30s", "5m", "1h30m", "2d"."""
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or a string like 30s, 5m, 1h")
    if isinstance(value, int) and abs(value) > MAX_DURATION:
        seconds = math.inf if value > 0 else -math.inf  # float() of 10**400 would raise
    elif isinstance(value, (int, float)):
        seconds = float(value)
    else:
        text = value.strip().lower().replace(" ", "")
        if re.fullmatch(r"\d+(\.\d+)?", text):
            seconds = float(text)
        else:
            match = _DURATION_RE.match(text)
            if not text or not match or not any(match.groups()):
                raise ValueError(f"not a duration: {value!r} (write e.g. 30s, 5m, 1h30m, 2d)")
            seconds = sum(float(g) * unit for g, unit in zip(match.groups(), _SECONDS) if g)
    if math.isnan(seconds):
        raise ValueError("a duration must be a number of seconds, not NaN")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    if seconds > MAX_DURATION:
        raise ValueError("a duration cannot be longer than 366 days")
    return seconds


def utc_stamp_seconds(stamp: Any) -> float | None:
    """Epoch seconds of agentd's own UTC stamps ("2026-12-02T06:29:56Z"); None for anything else."""
    if not isinstance(stamp, str):
        return None
    import calendar  # noqa: PLC0415 - not on the no-op path, which imports this module
    import time  # noqa: PLC0415

    try:
        return float(calendar.timegm(time.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ")))
    except ValueError:
        return None


def format_duration(seconds: float) -> str:
    """The shortest of "45s", "5m", "1h30m" that says `seconds` (rounded to whole seconds)."""
    total = round(seconds)
    if total < 60:
        return f"{total}s"
    parts = []
    for unit, name in ((86400, "d"), (3600, "h"), (60, "m"), (1, "s")):
        n, total = divmod(total, unit)
        if n:
            parts.append(f"{n}{name}")
    return "".join(parts)


def parse_clock(text: str) -> int:
    """Minutes after midnight from "HH:MM" (24-hour)."""
    match = _TIME_RE.match(text.strip())
    if not match:
        raise ValueError(f"not a time of day: {text!r} (write HH:MM, 24-hour, e.g. 02:30)")
    return int(match.group(1)) * 60 + int(match.group(2))


@dataclass(frozen=True)
class Window:
    """A weekly window: it opens at `start` (minutes after midnight) on each of `days`."""

    days: tuple[int, ...]  # 0 = Monday, as datetime.weekday()
    start: int
    duration_s: float

    def _opening(self, day: datetime) -> datetime:
        midnight = day.replace(hour=0, minute=0, second=0, microsecond=0)
        return midnight + timedelta(minutes=self.start)

    def open_at(self, now: datetime) -> bool:
        # A window may run past midnight (23:00 for 3h), or even span days: look back far enough.
        back = int(self.duration_s // 86400) + 1
        for offset in range(back + 1):
            day = now - timedelta(days=offset)
            if day.weekday() not in self.days:
                continue
            opens = self._opening(day)
            if opens <= now < opens + timedelta(seconds=self.duration_s):
                return True
        return False

    def next_opening(self, now: datetime) -> datetime:
        for offset in range(8):
            day = now + timedelta(days=offset)
            if day.weekday() in self.days:
                opens = self._opening(day)
                if opens > now:
                    return opens
        raise ValueError("a window has at least one day")  # pragma: no cover - model enforces it


@dataclass(frozen=True)
class MaintenanceWindows:
    """When disruptive changes may run: any of `windows`, in time zone `tz`."""

    windows: tuple[Window, ...]
    tz: tzinfo
    tz_name: str

    def open_at(self, now: datetime) -> bool:
        local = now.astimezone(self.tz)
        return any(w.open_at(local) for w in self.windows)

    def next_opening(self, now: datetime) -> datetime:
        local = now.astimezone(self.tz)
        return min(w.next_opening(local) for w in self.windows)

    def describe(self) -> str:
        parts = []
        for w in self.windows:
            days = "daily" if len(w.days) == 7 else ",".join(DAYS[d] for d in w.days)
            parts.append(
                f"{days} {w.start // 60:02d}:{w.start % 60:02d}+{format_duration(w.duration_s)}"
            )
        return f"{'; '.join(parts)} ({self.tz_name})"


def day_numbers(days: Sequence[str]) -> tuple[int, ...]:
    """Weekday numbers from names: mon..sun (or monday..sunday), daily, weekdays, weekends."""
    groups = {"daily": DAYS, "weekdays": DAYS[:5], "weekends": DAYS[5:]}
    full = {name: name[:3] for name in _FULL_DAYS}
    out: set[int] = set()
    for name in days:
        key = name.strip().lower()
        key = full.get(key, key)
        if key in groups:
            out.update(DAYS.index(d) for d in groups[key])
        elif key in DAYS:
            out.add(DAYS.index(key))
        else:
            raise ValueError(f"not a day: {name!r} (mon..sun, daily, weekdays, weekends)")
    return tuple(sorted(out))


def time_zone(name: str) -> tzinfo:
    """UTC, "local" (the node's own zone) or an IANA name such as Europe/Berlin."""
    if name.upper() == "UTC":
        return timezone.utc
    if name == "local":
        local = datetime.now().astimezone().tzinfo
        return local if local is not None else timezone.utc
    import zoneinfo  # noqa: PLC0415

    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"unknown time zone {name!r} (an IANA name like Europe/Berlin, UTC or local)"
        ) from None


def windows_from_json(spec: Mapping[str, Any]) -> MaintenanceWindows:
    """A validated `maintenanceWindow` (settings or desired state, as JSON) made usable."""
    zone = str(spec.get("timezone") or "UTC")
    windows = tuple(
        Window(
            day_numbers(w.get("days") or ["daily"]),
            parse_clock(str(w["start"])),
            parse_duration(w["duration"]),
        )
        for w in spec["windows"]
    )
    return MaintenanceWindows(windows, time_zone(zone), zone)
