"""Unified diffs of the config files a plan writes or removes, with every secret masked."""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from typing import Any, Optional

from agentd.core.redact import MASK, is_secret_param, redact_text
from agentd.plan.model import Plan

# `key: value`, `key = "value"`, `key=value` (YAML, TOML, a unit's Environment=), and
# `--key value` (a command line in ExecStart=).
_ASSIGNED = re.compile(
    r"(?P<key>[A-Za-z0-9_.-]+)(?P<sep>\s*[:=]\s*)(?P<value>\"[^\"]*\"|'[^']*'|[^\s,#\]]+)"
)
_FLAG = re.compile(r"(?P<key>--?[A-Za-z0-9_.-]+)(?P<sep>\s+)(?P<value>[^\s-][^\s]*)")


def secret_key(key: str) -> bool:
    """Whether a config key's value is a credential (masked wherever it is shown)."""
    name = key.lstrip("-").lower()
    # A file's or directory's path is not its content: `token-file: /etc/...` stays readable.
    if name.endswith(("file", "path", "dir")):
        return False
    # registries.yaml's `auth` is base64 of user:password.
    return is_secret_param(name) or name.endswith(("-key", "_key", ".key")) or name == "auth"


def _mask(match: re.Match[str]) -> str:
    key, sep, value = match.group("key", "sep", "value")
    if not secret_key(key):
        # `Environment=K3S_TOKEN=...`: the value may be an assignment of its own.
        return key + sep + _ASSIGNED.sub(_mask, value)
    quote = value[0] if value[:1] in ("'", '"') else ""
    return f"{key}{sep}{quote}{MASK}{quote}"


def mask_line(line: str) -> str:
    """One line of a config file with the values of secret keys and URLs' credentials masked."""
    return redact_text(_FLAG.sub(_mask, _ASSIGNED.sub(_mask, line)))


def _text(content: Optional[bytes]) -> list[str]:
    return [] if content is None else content.decode(errors="replace").splitlines(keepends=True)


def config_diffs(plan: Plan, configs: Mapping[str, Optional[bytes]]) -> list[dict[str, Any]]:
    """For each file the plan configures: its unified diff (`diff`, masked) and line count."""
    out = []
    for a in plan.actions:
        if a.action != "configure" or a.target is None:
            continue
        before = configs.get(a.target)
        lines = list(
            difflib.unified_diff(
                _text(before),
                _text(a.content),
                fromfile=a.target if before is not None else "/dev/null",
                tofile=a.target if a.content is not None else "/dev/null",
            )
        )
        # Masked after diffing, so a changed secret still shows as a changed line. The last
        # line of a file without a final newline still ends its line in the diff.
        text = "".join(mask_line(line.rstrip("\n")) + "\n" for line in lines)
        out.append(
            {"component": a.component, "target": a.target, "diff": text, "lines": len(lines)}
        )
    return out
