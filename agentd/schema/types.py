"""Model types shared by the desired state and the settings: strict models, durations, windows."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema, field_validator

from agentd.core.timespec import (
    MaintenanceWindows,
    day_numbers,
    parse_clock,
    parse_duration,
    time_zone,
    windows_from_json,
)


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


def _duration(value: Any) -> Any:
    if isinstance(value, (int, float, str)) and not isinstance(value, bool):
        return parse_duration(value)
    return value


# Seconds, written as a number or as "30s", "5m", "1h30m", "2d".
Duration = Annotated[
    float,
    BeforeValidator(_duration),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number", "minimum": 0},
                {"type": "string", "pattern": r"^(\d+d)?(\d+h)?(\d+m)?(\d+(\.\d+)?s)?$"},
            ]
        }
    ),
]


class WindowSpec(StrictModel):
    """One weekly window: opens at `start` on each of `days`, stays open for `duration`."""

    days: list[str] = Field(default_factory=lambda: ["daily"], min_length=1)
    start: str
    duration: Duration

    @field_validator("days")
    @classmethod
    def _days(cls, days: list[str]) -> list[str]:
        day_numbers(days)
        return days

    @field_validator("start")
    @classmethod
    def _start(cls, start: str) -> str:
        parse_clock(start)
        return start

    @field_validator("duration")
    @classmethod
    def _positive(cls, duration: float) -> float:
        if not 0 < duration <= 7 * 86400:
            raise ValueError("a window lasts more than 0s and at most 7d")
        return duration


class MaintenanceWindowSpec(StrictModel):
    """When disruptive changes (a k3s restart or upgrade) may run; others run at any time."""

    timezone: str = "UTC"
    windows: list[WindowSpec] = Field(min_length=1)

    @field_validator("timezone")
    @classmethod
    def _zone(cls, name: str) -> str:
        time_zone(name)
        return name

    def compile(self) -> MaintenanceWindows:
        return windows_from_json(self.model_dump(mode="json"))
