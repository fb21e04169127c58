"""The real Wasm host's scenario machinery: agentd run in the tree, its answers, expectations."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from tests.e2e import realmirror, wasmhost

REPO = wasmhost.REPO
WORK_DIR = realmirror.WORK_DIR
AGENTD_SRC = "/opt/agentd-src"
DESIRED = "/etc/wasm-edge/desired.yaml"


@dataclass
class Outcome:
    key: str
    ok: bool
    message: str
    observed: str = ""


@dataclass
class Command:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    def json(self) -> Any:
        try:
            return json.loads(self.stdout)
        except ValueError:
            return None

    def text(self) -> str:
        return (self.stdout + self.stderr).strip()


@dataclass
class Scenario:
    root: Path
    mirror: realmirror.RealMirror
    url: str
    out: Path
    outcomes: list[Outcome] = field(default_factory=list)
    commands: list[dict[str, Any]] = field(default_factory=list)
    generation: int = 0

    # --- running things in the tree ----------------------------------------------------------

    def sh(self, argv: list[str], name: str, timeout: float = 300.0) -> Command:
        """argv in the tree (agentd's source bound read-only); stdout, stderr and the exit
        status recorded under `out` as NN-name.*."""
        start = time.monotonic()
        result = wasmhost.run(
            self.root,
            argv,
            binds_ro=[(REPO, AGENTD_SRC)],
            env={"PYTHONPATH": AGENTD_SRC, "PYTHONDONTWRITEBYTECODE": "1"},
            timeout=timeout,
        )
        command = Command(
            list(argv), result.returncode, result.stdout, result.stderr, time.monotonic() - start
        )
        stem = self.out / f"{len(self.commands):02d}-{name}"
        stem.with_suffix(".stdout").write_text(result.stdout)
        stem.with_suffix(".stderr").write_text(result.stderr)
        stem.with_suffix(".exit").write_text(f"{result.returncode}\n")
        self.commands.append(
            {"name": name, "argv": list(argv), "exit": result.returncode, "file": stem.name}
        )
        return command

    def agentd(self, name: str, *args: str) -> Command:
        return self.sh(["python3", "-m", "agentd", *args], name)

    def expect(self, key: str, ok: bool, message: str, observed: str = "") -> None:
        self.outcomes.append(Outcome(key, bool(ok), message, observed[:4000]))

    # --- the desired state -------------------------------------------------------------------

    def artifact(self, a: realmirror.Artifact) -> dict[str, Any]:
        return {"amd64": {"url": f"{self.url}/{a.path}", "sha256": a.sha256}}

    def desire(
        self, plugins: dict[str, str], crun: Optional[tuple[str, realmirror.Artifact]] = None
    ) -> None:
        """A new generation of /etc/wasm-edge/desired.yaml: crun (1.21 unless `crun` names a
        version and its artifact) and WasmEdge from the mirror, plugins by name ->
        present/absent. k3s does not exist here: it is left out."""
        self.generation += 1
        crun_version, crun_artifact = crun or (realmirror.CRUN_VERSION, self.mirror.crun)
        doc = {
            "apiVersion": "agentd/v1",
            "kind": "NodeState",
            "generation": self.generation,
            "components": {
                "crun": {
                    "version": crun_version,
                    "artifacts": self.artifact(crun_artifact),
                },
                "wasmedge": {
                    "version": realmirror.WASMEDGE_VERSION,
                    "artifacts": self.artifact(self.mirror.wasmedge),
                    "plugins": [
                        {
                            "name": name,
                            "state": state,
                            "artifacts": self.artifact(self.mirror.plugins[name]),
                        }
                        for name, state in plugins.items()
                    ],
                },
            },
        }
        path = self.root / DESIRED.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        (self.out / f"desired-{self.generation}.yaml").write_text(path.read_text())


def tail(text: str, lines: int = 12) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


# --- reading agentd's answers -------------------------------------------------------------------


def findings(check: Command) -> list[dict[str, Any]]:
    """The findings of `check --json` that are about this host's Wasm stack (cgroup v1 and the
    absent k3s are this machine's, reported on every run)."""
    doc = check.json() or {}
    return [
        f
        for f in doc.get("findings", [])
        if isinstance(f, dict) and f.get("code") not in ("host.cgroup-v1", "k3s.absent")
    ]


def shown(check: Command) -> str:
    doc = check.json() or {}
    head = f"exit {check.returncode} healthy={doc.get('healthy')} wasmReady={doc.get('wasmReady')}"
    return "\n".join([head, *(json.dumps(f) for f in findings(check))])


def component(detect: Command, name: str) -> dict[str, Any]:
    found = ((detect.json() or {}).get("components") or {}).get(name)
    return found if isinstance(found, dict) else {}


def naming(check: Command, *words: str) -> list[dict[str, Any]]:
    """The findings whose message holds every one of `words`."""
    return [f for f in findings(check) if all(w in str(f.get("message", "")) for w in words)]


def healthy(s: Scenario, tag: str, refused: bool = False) -> None:
    """detect, plan and check agree: everything installed, nothing to do, healthy, Wasm ready.
    `refused`: a change is blocked (a rollback's), so the plan's exit is 3 with no action."""
    detect = s.agentd(f"{tag}-detect", "detect", "--json")
    crun, wasmedge = component(detect, "crun"), component(detect, "wasmedge")
    s.expect(
        f"{tag}.detect-crun",
        crun.get("version") == realmirror.CRUN_VERSION
        and crun.get("path") == "/usr/local/bin/crun"
        and "WASM:wasmedge" in (crun.get("features") or []),
        "detect: crun 1.21 with WASM:wasmedge at /usr/local/bin/crun",
        json.dumps(crun),
    )
    plugins = {p.get("name"): p for p in wasmedge.get("plugins") or []}
    s.expect(
        f"{tag}.detect-wasmedge",
        wasmedge.get("version") == realmirror.WASMEDGE_VERSION
        and wasmedge.get("path") == "/usr/local/bin/wasmedge"
        and (plugins.get("agentd_e2e") or {}).get("version") == "0.1.0.0"
        and not wasmedge.get("loadErrors"),
        "detect: WasmEdge 0.14.1 at /usr/local/bin/wasmedge, plugin agentd_e2e 0.1.0.0 loaded",
        json.dumps(wasmedge),
    )
    plan = s.agentd(f"{tag}-plan", "plan", "--desired", DESIRED, "--detailed-exitcode")
    if refused:
        s.expect(
            f"{tag}.plan",
            plan.returncode == 3 and "nothing to do" in plan.stdout and "Refused:" in plan.stdout,
            "plan: nothing to do, the blocked change refused (exit 3)",
            tail(plan.stdout),
        )
    else:
        s.expect(
            f"{tag}.plan", plan.returncode == 0, "plan: nothing to do (exit 0)", tail(plan.stdout)
        )
    check = s.agentd(f"{tag}-check", "check", "--json")
    doc = check.json() or {}
    bad = [f for f in findings(check) if f.get("severity") != "info"]
    s.expect(
        f"{tag}.check",
        check.returncode == 0 and doc.get("healthy") is True and doc.get("wasmReady") is True,
        "check: healthy, Wasm ready",
        shown(check),
    )
    s.expect(f"{tag}.check-clean", not bad, "check: no finding about the Wasm stack", shown(check))
