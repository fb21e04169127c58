"""`agentd settings`: validate the agent settings and print them with every default filled in."""

from __future__ import annotations

import argparse
import copy
import sys
from collections.abc import Mapping
from typing import Any

import yaml

from agentd.cli.exits import print_json
from agentd.core.paths import Paths
from agentd.core.redact import MASK, redact_url
from agentd.settings.snapshot import load_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout")


def _redacted(raw: Mapping[str, Any]) -> dict[str, Any]:
    """The settings to show: the source URL's and registries' credentials masked (for logs)."""
    shown = copy.deepcopy(dict(raw))
    source = shown.get("source")
    if isinstance(source, dict) and isinstance(source.get("url"), str):
        source["url"] = redact_url(source["url"])
    for config in (shown.get("registries") or {}).get("configs", {}).values():
        auth = config.get("auth") or {}
        for secret in ("password", "auth"):
            if auth.get(secret):
                auth[secret] = MASK
    return shown


def handle(args: argparse.Namespace) -> int:
    settings = getattr(args, "settings", None)
    config = load_config(Paths(args.root), settings.absolute() if settings else None)
    shown = _redacted(config.raw)
    if args.json:
        print_json({"valid": True, "origin": config.origin, "settings": shown})
    else:
        sys.stdout.write(f"# effective settings, from {config.origin}\n")
        sys.stdout.write(yaml.safe_dump(shown, sort_keys=False))
    return 0
