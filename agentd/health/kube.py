"""`k3s kubectl` on this node, for the checks that ask the cluster."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from agentd.health.findings import CheckInput
from agentd.system.commands import CommandResult


class Kube:
    """`k3s kubectl` on this node (it finds the cluster through /etc/rancher/k3s/k3s.yaml)."""

    def __init__(self, inp: CheckInput, k3s: Path) -> None:
        self.inp = inp
        self.k3s = k3s

    def __call__(self, *args: str, stdin: Optional[bytes] = None, timeout: float = 20) -> Any:
        # Commands run without HOME: kubectl would keep its discovery cache in the working
        # directory. It goes to the state dir instead.
        cache = self.inp.paths.state_dir / "kube-cache"
        return self.inp.runner(
            [str(self.k3s), "kubectl", f"--cache-dir={cache}", *args],
            timeout,
            input_bytes=stdin,
        )

    def json(self, *args: str) -> tuple[Optional[dict[str, Any]], CommandResult]:
        result = self(*args, "-o", "json")
        if not result.ok:
            return None, result
        try:
            data = json.loads(result.stdout)
        except ValueError:
            return None, result
        return (data if isinstance(data, dict) else None), result
