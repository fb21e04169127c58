"""Model types shared by the desired state and the settings: strict models, durations, windows."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Optional

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    WithJsonSchema,
    field_validator,
)

from agentd.core import names
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


def _checked(why: Callable[[str], Optional[str]], what: str = "") -> Callable[[str], str]:
    def check(value: str) -> str:
        reason = why(value)
        if reason:
            shown = repr(value) if len(value) <= 70 else f"{value[:64]!r}..."
            raise ValueError(f"{what} {shown}: {reason}".lstrip())
        return value

    return check


# Kubernetes' syntax (agentd/core/names.py): what the API server would refuse, validate refuses
# first, at its FILE:LINE:COL.
DnsLabel = Annotated[
    str,
    AfterValidator(_checked(names.dns1123_label_error)),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": f"^{names.DNS1123_LABEL_FMT}$",
            "maxLength": names.DNS1123_LABEL_MAX,
        }
    ),
]
DnsSubdomain = Annotated[
    str,
    AfterValidator(_checked(names.dns1123_subdomain_error)),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": f"^{names.DNS1123_SUBDOMAIN_FMT}$",
            "maxLength": names.DNS1123_SUBDOMAIN_MAX,
        }
    ),
]
LabelKey = Annotated[
    str,
    AfterValidator(_checked(names.label_key_error, "label key")),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": f"^({names.DNS1123_SUBDOMAIN_FMT}/)?{names.QUALIFIED_NAME_FMT}$",
        }
    ),
]
LabelValue = Annotated[
    str,
    AfterValidator(_checked(names.label_value_error, "label value")),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": f"^{names.LABEL_VALUE_FMT}$",
            "maxLength": names.LABEL_VALUE_MAX,
        }
    ),
]
Labels = dict[LabelKey, LabelValue]
# Plugin and override names: they become file names, state keys and lines of output.
SafeName = Annotated[
    str,
    AfterValidator(_checked(names.safe_name_error)),
    WithJsonSchema({"type": "string", "pattern": f"^{names.SAFE_NAME_FMT}$"}),
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
