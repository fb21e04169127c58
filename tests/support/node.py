"""A sandbox node for tests: runs the real `agentd` command with --root and reads what it left."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.standins import write_yaml


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


@dataclass
class Node:
    """A sandbox root driven through the `agentd` command line, as a user would drive it."""

    root: Path

    def agentd(self, *args: str, env: dict[str, str] | None = None, timeout: float = 60) -> Result:
        full_env = {**os.environ, "AGENTD_ROOT": "", **(env or {})}
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "agentd",
                "--root",
                str(self.root),
                "--log-format",
                "json",
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=full_env,
            check=False,
        )
        return Result(proc.returncode, proc.stdout, proc.stderr)

    def apply(self, doc: dict[str, Any], *args: str) -> Result:
        return self.agentd("apply", "--desired", str(self.desired(doc)), "--json", *args)

    def desired(self, doc: dict[str, Any], name: str = "desired.yaml") -> Path:
        return write_yaml(self.root.parent / name, doc)

    def path(self, node_path: str) -> Path:
        return self.root / node_path.lstrip("/")

    def read(self, node_path: str) -> str:
        return self.path(node_path).read_text()

    def version_of(self, node_path: str) -> str:
        """The first line the installed stand-in prints for --version."""
        out = subprocess.run(
            [str(self.path(node_path)), "--version"], capture_output=True, text=True, check=True
        )
        return out.stdout.splitlines()[0]

    def state(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.read("/var/lib/wasm-edge/state.json"))
        return data

    def tree(self) -> dict[str, str]:
        """Every file and symlink under the root outside agentd's state dir and its metrics
        file (both change with every run), with its content."""
        out: dict[str, str] = {}
        for p in sorted(self.root.rglob("*")):
            rel = "/" + str(p.relative_to(self.root))
            if rel.startswith(("/var/lib/wasm-edge", "/var/lib/prometheus")):
                continue
            if p.is_symlink():
                out[rel] = "-> " + os.readlink(p)
            elif p.is_file():
                out[rel] = p.read_bytes().hex()
        return out
