"""Validation of loaded YAML against a pydantic model, every error at its FILE:LINE:COL."""

from __future__ import annotations

import difflib
from typing import Any, Optional, TypeVar, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from agentd.schema.yamlload import Loaded, Loc, Pos, _resolve, locate

Model = TypeVar("Model", bound=BaseModel)


def _model_at(root: type[BaseModel], loc: Loc) -> Optional[type[BaseModel]]:
    """The pydantic model that a mapping at `loc` is validated against, if there is one."""
    tp: Any = root
    for item in loc:
        tp = _unwrap_optional(tp)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            if item not in tp.model_fields:
                continue  # a union tag or the like, not a field
            tp = tp.model_fields[str(item)].annotation
        elif get_origin(tp) is list:
            tp = get_args(tp)[0]
        elif get_origin(tp) is dict:
            tp = get_args(tp)[1]
        else:
            return None
    tp = _unwrap_optional(tp)
    return tp if isinstance(tp, type) and issubclass(tp, BaseModel) else None


def _unwrap_optional(tp: Any) -> Any:
    if get_origin(tp) is Union:
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _yaml_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, (int, float)):
        return f"the number {value!r}"
    if isinstance(value, str):
        return f"the string {value!r}" if len(value) <= 40 else "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


_EXPECTED = {
    "string_type": "a string",
    "int_type": "an integer",
    "float_type": "a number",
    "bool_type": "a boolean",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "list_type": "a list",
}


def _label(path: Loc) -> str:
    if not path:
        return ""
    last = path[-1]
    if isinstance(last, int) and not isinstance(last, bool):
        return f"{_label(path[:-1])}[{last}]"
    return str(last)


def _unknown_field(root: type[BaseModel], loc: Loc) -> str:
    name = str(loc[-1])
    model = _model_at(root, loc[:-1])
    if model is None:
        return f"unknown field {name!r}"
    known = list(model.model_fields)
    what = "component" if loc[:-1] == ("components",) else "field"
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.8)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"unknown {what} {name!r} ({hint}known: {', '.join(known)})"


def _explain(root: type[BaseModel], loaded: Loaded, error: ErrorDetails) -> tuple[Pos, str]:
    loc: Loc = tuple(error["loc"])
    kind = error["type"]
    value = error.get("input")
    if kind == "extra_forbidden":
        return locate(loaded, loc, key=True), _unknown_field(root, loc)
    if kind == "missing":
        return locate(loaded, loc[:-1]), f"missing field {str(loc[-1])!r}"
    path, at_key = _resolve(loaded, loc)
    label = _label(path)
    if at_key and path:
        # pydantic reports a key as it compares it (true as 1): name it only when it is text.
        named = f" {value!r}" if isinstance(value, str) else ""
        label = f"{_label(path[:-1])} key{named}".lstrip()
    message = error["msg"].removeprefix("Value error, ")
    if kind in _EXPECTED:
        message = f"expected {_EXPECTED[kind]}, got {_yaml_kind(value)}"
        if kind == "string_type" and isinstance(value, (bool, int, float)):
            message += " (quote it to keep it a string)"
    elif kind == "string_pattern_mismatch" and label == "sha256" and isinstance(value, str):
        if len(value) == 64 and value.lower() != value:
            message = "must be 64 lowercase hexadecimal digits (this has upper case)"
        else:
            message = f"must be 64 lowercase hexadecimal digits (got {len(value)} characters)"
    pos = locate(loaded, loc)
    # Our own validators' messages stand alone; pydantic's ("Input should be ...") need the name.
    return pos, f"{label}: {message}" if label and kind != "value_error" else message


def _lines(found: list[tuple[Pos, str]], prefix: str = "") -> list[str]:
    return list(dict.fromkeys(f"{pos}: {prefix}{message}" for pos, message in sorted(found)))


def check_schema(
    model: type[Model], loaded: Loaded
) -> tuple[Optional[Model], list[tuple[Pos, str]]]:
    """`loaded` as an instance of `model`, or the schema errors, each at its place in the YAML."""
    try:
        return model.model_validate(loaded.data), []
    except ValidationError as exc:
        return None, [_explain(model, loaded, error) for error in exc.errors(include_url=False)]


def format_problems(found: list[tuple[Pos, str]], prefix: str = "") -> list[str]:
    """`FILE:LINE:COL: message` lines, sorted by place, each once."""
    return _lines(found, prefix)
