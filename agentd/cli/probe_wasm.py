"""`agentd probe-wasm`: write the health probe's WASI program, to package in a probe image."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from agentd.health.probe import PROBE_OUTPUT, probe_module


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out", type=Path, help="write it to this file (default: stdout, when not a terminal)"
    )


def handle(args: argparse.Namespace) -> int:
    module = probe_module()
    if args.out is not None:
        args.out.write_bytes(module)
        line = PROBE_OUTPUT.decode().strip()
        sys.stderr.write(
            f"wrote {args.out} ({len(module)} bytes; it prints {line!r}).\n"
            "Package it as /probe.wasm in an image FROM scratch and set health.probe.image.\n"
        )
        return 0
    if sys.stdout.isatty():
        sys.stderr.write("agentd: error: the probe is binary; redirect it or pass --out FILE\n")
        return 1
    sys.stdout.buffer.write(module)
    return 0
