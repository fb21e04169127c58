"""The checks of one booted host, in order (packaging/README.md, "End-to-end runs")."""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.e2e.armv7 import armv7_node
from tests.e2e.container import Container, ContainerError
from tests.e2e.hosts import UNAME_MACHINES, HostSpec
from tests.e2e.packages import Built
from tests.support.standins import ARCHES, Mirror, desired_document, upstream_builds

UNIT = "wasm-edge-agentd.service"
K3S_UNIT = "k3s.service"
PACKAGE = "wasm-edge-agentd"
SETTINGS = "/etc/wasm-edge/agentd.yaml"
DESIRED = "/etc/wasm-edge/desired.yaml"
DROPIN_CRUN = "/etc/wasm-edge/desired.d/50-crun.yaml"
DROPIN_PACKAGE = "/etc/wasm-edge/desired.d/60-crun-package.yaml"
TOKEN_FILE = "/etc/wasm-edge/k3s-token"
STATE_DIR = "/var/lib/wasm-edge"
WANTS_LINK = f"/etc/systemd/system/multi-user.target.wants/{UNIT}"
INSIDE = "/mnt/e2e"  # where the packages are bound in, read-only

K3S_VERSION = "v1.30.4+k3s1"
CRUN_FIRST = "1.15"
CRUN_DROPIN = "1.16"
DROPIN_LABEL = "e2e.agentd.io/dropin=2"
WASMEDGE_VERSION = "0.14.1"
PLUGIN = "wasi_nn-ggml"
MIRROR_VERSIONS = {
    "k3s_versions": (K3S_VERSION,),
    "crun_versions": (CRUN_FIRST, CRUN_DROPIN),
    "wasmedge_versions": (WASMEDGE_VERSION,),
    "plugins": (PLUGIN,),
}
# What an operator adds to the shipped (all-commented) agentd.yaml; it must survive upgrades.
# Remediation off: the stand-ins cannot pass two health checks (the WasmEdge stand-in runs the
# WASI probe with this machine's Python and wasmtime, which the node lacks; its libwasmedge is
# not an ELF file, so ldconfig does not cache it), and agentd would otherwise reinstall WasmEdge
# and run ldconfig as fixes, in runs of their own. The checks still run and report.
OPERATOR_EDIT = (
    "\n# Added by the e2e run, as an operator would: kept across upgrades.\n"
    "labels:\n  site: e2e-lab\n"
    "health:\n  remediate: false\n"
)
# Debian 12's crun (bookworm main; the point releases keep 1.8.1).
BOOKWORM_CRUN = "1.8.1"
SHOW = ("ActiveState", "SubState", "StatusText", "NRestarts", "MainPID", "Type", "Result")


class E2EFailure(Exception):
    """A check failed; the message says what was expected and what was found."""


@dataclass
class Step:
    name: str
    seconds: float
    ok: bool
    detail: str = ""


@dataclass
class HostResult:
    host: str
    release: str
    ok: bool = False
    error: str = ""
    steps: list[Step] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)
    observations: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "release": self.release,
            "ok": self.ok,
            "error": self.error,
            "figures": self.figures,
            "observations": self.observations,
            "steps": [
                {"name": s.name, "seconds": round(s.seconds, 2), "ok": s.ok, "detail": s.detail}
                for s in self.steps
            ],
        }


def _yaml(doc: dict[str, Any]) -> str:
    return yaml.safe_dump(doc, sort_keys=False, default_flow_style=False)


def first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else ""


class Scenario:
    """One host's run. Each step is timed; the first failed check ends the run."""

    def __init__(
        self,
        spec: HostSpec,
        node: Container,
        built: Built,
        mirror: Mirror,
        base_url: str,
        result: HostResult,
        progress: Callable[[str], None],
    ) -> None:
        self.spec = spec
        self.node = node
        self.built = built
        self.mirror = mirror
        self.base_url = base_url
        self.result = result
        self.progress = progress
        # WasmEdge has no armv7 build: there the same document converges without it (refused).
        self.wasmedge = upstream_builds("wasmedge", spec.agentd_arch)

    # --- bookkeeping ------------------------------------------------------------------------

    @contextmanager
    def step(self, name: str) -> Iterator[Step]:
        record = Step(name, 0.0, False)
        start = time.monotonic()
        self.progress(f"{self.spec.name}: {name} ...")
        try:
            yield record
            record.ok = True
        except (E2EFailure, ContainerError) as exc:
            record.detail = str(exc)
            raise
        finally:
            record.seconds = time.monotonic() - start
            self.result.steps.append(record)
            verdict = "ok" if record.ok else "FAILED"
            self.progress(f"{self.spec.name}: {name}: {verdict} ({record.seconds:.1f} s)")

    def check(self, condition: bool, message: str) -> None:
        if not condition:
            raise E2EFailure(message)

    def observe(self, text: str) -> None:
        self.result.observations.append(text)
        self.progress(f"{self.spec.name}:   note: {text}")

    def timeout(self, seconds: float) -> float:
        return seconds * self.spec.slow

    # --- reading the node -------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        result = self.node.run(["agentd", "status", "--json"], check=False, timeout=60)
        try:
            doc = json.loads(result.stdout)
        except ValueError:
            return {}
        return doc if isinstance(doc, dict) else {}

    def wait_for_run(self, generation: int, outcome: str, timeout: float) -> dict[str, Any]:
        """Poll `agentd status --json` until the last run is this generation with this outcome."""
        deadline = time.monotonic() + self.timeout(timeout)
        doc: dict[str, Any] = {}
        while time.monotonic() < deadline:
            doc = self.status()
            last = doc.get("lastRun") or {}
            if last.get("generation") == generation and last.get("outcome") == outcome:
                return doc
            time.sleep(0.5)
        last = doc.get("lastRun") or {}
        daemon = doc.get("daemon") or {}
        raise E2EFailure(
            f"no {outcome} run of generation {generation} within {self.timeout(timeout):.0f}s; "
            f"last run: generation {last.get('generation')} {last.get('outcome')}: "
            f"{last.get('error')}; daemon: {daemon.get('status')}"
        )

    def wait_active(self, unit: str, timeout: float) -> dict[str, str]:
        deadline = time.monotonic() + self.timeout(timeout)
        shown: dict[str, str] = {}
        while time.monotonic() < deadline:
            shown = self.node.show(unit, *SHOW)
            if shown.get("ActiveState") == "active":
                return shown
            if shown.get("ActiveState") == "failed":
                break
            time.sleep(0.2)
        raise E2EFailure(f"{unit} is not active: {shown}")

    def wait_status_text(self, text: str, timeout: float) -> str:
        """Poll the unit's StatusText (agentd's STATUS=) until it contains `text`."""
        deadline = time.monotonic() + self.timeout(timeout)
        status = ""
        while time.monotonic() < deadline:
            status = self.node.show(UNIT, "StatusText").get("StatusText", "")
            if text in status:
                return status
            time.sleep(0.2)
        raise E2EFailure(f"StatusText never said {text!r}; it says {status!r}")

    def journal(self, unit: str) -> list[dict[str, Any]]:
        out = self.node.run(["journalctl", "-u", unit, "-o", "json", "--no-pager"], timeout=60)
        entries = []
        for line in out.stdout.splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict):
                entries.append(entry)
        return entries

    def version_of(self, path: str) -> str:
        return first_line(self.node.run([path, "--version"]).stdout)

    def package_version(self) -> str | None:
        if self.spec.package == "rpm":
            result = self.node.run(
                ["rpm", "-q", "--qf", "%{VERSION}-%{RELEASE}", PACKAGE], check=False
            )
        else:
            result = self.node.run(
                ["dpkg-query", "-W", "-f=${db:Status-Abbrev}|${Version}", PACKAGE], check=False
            )
            status, _, version = result.stdout.partition("|")
            return version if result.returncode == 0 and status.startswith("ii") else None
        return result.stdout.strip() if result.returncode == 0 else None

    # --- the desired state ------------------------------------------------------------------

    def desired(self, generation: int) -> dict[str, Any]:
        return desired_document(
            self.base_url,
            self.mirror,
            generation=generation,
            k3s=K3S_VERSION,
            crun=CRUN_FIRST,
            wasmedge=WASMEDGE_VERSION,
            plugins=(PLUGIN,),
            arches=ARCHES,
        )

    def bump(self, generation: int) -> None:
        """A new generation in desired.yaml, after a drop-in changed: only the first source
        sets the generation (a drop-in's is ignored)."""
        self.node.write(DESIRED, _yaml(self.desired(generation)))

    def crun_dropin(self) -> dict[str, Any]:
        crun = desired_document(
            self.base_url, self.mirror, crun=CRUN_DROPIN, k3s=None, wasmedge=None, arches=ARCHES
        )["components"]["crun"]
        # crun alone is no reason to restart k3s (containerd runs whatever file BinaryName
        # names); a k3s flag is: the drop-in carries one, so k3s.service is restarted.
        k3s = {"config": {"node-label": [DROPIN_LABEL]}}
        return {"components": {"crun": crun, "k3s": k3s}}

    # --- the run ----------------------------------------------------------------------------

    def run(self) -> None:
        self.install()
        self.unit_ready()
        self.operator_settings()
        self.first_converge()
        self.installed_files()
        self.k3s_service(generation=1)
        self.journal_fields()
        if self.spec.agentd_arch == "armv7":
            armv7_node(self)
        self.dropin_reconverges()
        if self.spec.package_source:
            self.crun_from_the_distribution()
        self.upgrade()
        self.remove()
        if self.spec.package == "deb":
            self.purge()

    def _install_command(self, package: Path, upgrade: bool) -> list[str]:
        inside = f"{INSIDE}/{package.parent.parent.name}/{package.parent.name}/{package.name}"
        if self.spec.package == "rpm":
            # Debian's rpm database is empty: /bin/sh, python3, systemd and the glibc/libgcc_s
            # sonames the package Requires are dpkg's, which rpm cannot see (--nodeps).
            # --force-debian silences Debian's "use Alien instead" warning. What that leaves
            # unproven: packaging/README.md.
            return ["rpm", "-U" if upgrade else "-i", "--nodeps", "--force-debian", inside]
        # --no-install-recommends: the install is offline (python3, the one dependency not in
        # every Debian, was debootstrapped in); the recommended git, gnupg, python3-systemd...
        # would come from the network.
        return ["apt-get", "install", "-y", "--no-install-recommends", inside]

    def install(self) -> None:
        with self.step("install the package") as step:
            argv = self._install_command(self.built.first, upgrade=False)
            if self.spec.package == "rpm":
                # What rpm says without the two flags (nothing is installed with --test).
                for flags in ([], ["--force-debian"]):
                    bare = self.node.run(["rpm", "-i", "--test", *flags, argv[-1]], check=False)
                    said = " / ".join((bare.stdout + bare.stderr).strip().splitlines()[:6])
                    self.observe(f"rpm -i --test {' '.join(flags)}: exit {bare.returncode}: {said}")
            start = time.monotonic()
            out = self.node.run(argv, timeout=300)
            seconds = time.monotonic() - start
            self.result.figures["install_s"] = round(seconds, 2)
            text = out.stdout + out.stderr
            if self.spec.package == "deb":
                fetched = [line for line in text.splitlines() if re.match(r"Get:\d+ http", line)]
                self.check(not fetched, f"the install downloaded packages: {fetched}")
            version = self.package_version()
            self.check(
                version == f"{self.built.version}-1",
                f"installed version {version!r}, expected {self.built.version}-1",
            )
            # Written by postinst / %post (the sandboxed unit cannot write /usr); checked before
            # any agentd command runs outside the sandbox, which could write it too.
            pyc = self.node.run(
                ["find", "/usr/lib/wasm-edge-agentd/agentd", "-name", "*.pyc"], check=False
            ).stdout.split()
            self.check(bool(pyc), "no bytecode under /usr/lib/wasm-edge-agentd after the install")
            step.detail = f"{' '.join(argv)}: {seconds:.1f} s"

    def unit_ready(self) -> None:
        with self.step("unit active and READY") as step:
            # The .deb's postinst starts the unit and waits for READY=1; the .rpm starts it with
            # --no-block, so it may still be activating.
            shown = self.wait_active(UNIT, 120)
            self.check(shown.get("Type") == "notify", f"Type={shown.get('Type')}")
            self.check(shown.get("SubState") == "running", f"SubState={shown.get('SubState')}")
            # For Type=notify, active means READY=1 arrived; the STATUS line came with it.
            self.check(bool(shown.get("StatusText")), "no StatusText (no STATUS= from agentd)")
            self.check(shown.get("NRestarts") == "0", f"NRestarts={shown.get('NRestarts')}")
            enabled = self.node.run(["systemctl", "is-enabled", UNIT], check=False).stdout
            self.check(enabled.strip() == "enabled", f"is-enabled: {enabled.strip()}")
            step.detail = f"StatusText={shown['StatusText']!r}"
            self.result.figures["status_before_desired"] = shown["StatusText"]
            version = self.node.run(["agentd", "--version"]).stdout.strip()
            self.result.figures["agentd_version"] = version
            python = self.node.run(["python3", "--version"]).stdout.strip()
            self.result.figures["python"] = python
            systemd = first_line(self.node.run(["systemctl", "--version"]).stdout)
            self.result.figures["systemd"] = systemd
            machine = self.node.run(["uname", "-m"]).stdout.strip()
            self.result.figures["uname_m"] = machine
            want = UNAME_MACHINES[self.spec.arch]
            self.check(machine == want, f"uname -m says {machine}, expected {want}")
            # The sandbox as the kernel sees it (under qemu-user, what the emulator made of it).
            proc = self.node.run(["cat", f"/proc/{shown['MainPID']}/status"], check=False).stdout
            kernel = {
                key: value.strip()
                for key, _, value in (line.partition(":") for line in proc.splitlines())
                if key in ("Seccomp", "NoNewPrivs", "CapBnd")
            }
            self.result.figures["daemon_sandbox"] = kernel
            self.check(kernel.get("NoNewPrivs") == "1", f"the daemon's /proc status: {kernel}")
            if not self.spec.foreign:
                self.check(kernel.get("CapBnd") == "0" * 16, f"capabilities left: {kernel}")
                self.sandbox_view(shown["MainPID"])

    def sandbox_view(self, pid: str) -> None:
        """The daemon's own mount namespace: what it may write, what not; and the exposure
        systemd-analyze gives the loaded unit (packaging/README.md, "The unit's sandbox")."""
        probe = 'for p in "$@"; do if test -w "$p"; then echo "$p rw"; else echo "$p ro"; fi; done'
        paths = {
            "/etc/rancher": "rw",
            "/etc/systemd/system": "rw",
            "/usr/local/bin": "rw",
            "/var/lib/wasm-edge": "rw",
            "/etc": "ro",
            "/etc/wasm-edge": "ro",
            "/etc/ld.so.cache": "ro",
            "/usr/local/sbin": "ro",
        }
        out = self.node.run(["nsenter", "-t", pid, "-m", "--", "sh", "-c", probe, "-", *paths])
        seen = dict(line.rsplit(" ", 1) for line in out.stdout.splitlines())
        self.check(seen == paths, f"the daemon's view: {seen}, expected {paths}")
        security = self.node.run(["systemd-analyze", "security", "--no-pager", UNIT]).stdout
        found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", security)
        exposure = float(found.group(1)) if found else None
        self.result.figures["exposure"] = exposure
        self.check(exposure is not None and exposure <= 2.0, f"exposure {exposure}")

    def operator_settings(self) -> None:
        with self.step("operator edits agentd.yaml, reload"):
            shipped = self.node.read(SETTINGS)
            self.node.write(SETTINGS, shipped + OPERATOR_EDIT)
            pid = self.node.show(UNIT, "MainPID")["MainPID"]
            self.node.run(["systemctl", "reload", UNIT])
            settings = json.loads(self.node.run(["agentd", "settings", "--json"]).stdout)
            labels = (settings.get("settings") or settings).get("labels")
            self.check(labels == {"site": "e2e-lab"}, f"agentd settings: labels {labels}")
            health = (settings.get("settings") or settings).get("health") or {}
            self.check(health.get("remediate") is False, f"agentd settings: health {health}")
            shown = self.wait_active(UNIT, 30)
            self.check(shown["MainPID"] == pid, "a reload restarted the daemon")

    def first_converge(self) -> None:
        with self.step("desired state on 127.0.0.1 mirror: converge generation 1") as step:
            self.node.write(TOKEN_FILE, secrets.token_hex(16) + "\n", mode="0600")
            start = time.monotonic()
            self.node.write(DESIRED, _yaml(self.desired(1)))
            doc = self.wait_for_run(1, "converged", 120)
            seconds = time.monotonic() - start
            self.result.figures["converge_generation_1_s"] = round(seconds, 2)
            actions = [f"{a.get('action')} {a.get('component')}" for a in doc["lastRun"]["actions"]]
            step.detail = f"{seconds:.1f} s: {', '.join(actions)}"
            self.check(doc.get("lastAppliedGeneration") == 1, f"status: {doc}")
            status = self.node.run(["agentd", "status"])
            self.check(
                "last applied generation: 1" in status.stdout,
                f"agentd status says: {status.stdout}",
            )
            inventory = doc.get("inventory") or {}
            wanted = [("k3s", K3S_VERSION), ("crun", CRUN_FIRST)]
            wanted += [("wasmedge", WASMEDGE_VERSION)] if self.wasmedge else []
            for name, version in wanted:
                got = (inventory.get(name) or {}).get("version")
                self.check(got == version, f"status inventory {name}: {got}, expected {version}")
            self.check(
                (f"wasmedge/plugins/{PLUGIN}" in inventory) == self.wasmedge,
                f"status inventory and plugin {PLUGIN}: {sorted(inventory)}",
            )
            # The worker records the run before the daemon, its parent, sends the new STATUS.
            self.wait_status_text("converged generation 1", 30)

    def installed_files(self) -> None:
        with self.step("installed files and versions"):
            arch = self.spec.agentd_arch
            expected = {
                "/usr/local/bin/k3s": f"k3s version {K3S_VERSION} (abcd1234)",
                "/usr/local/bin/crun": f"crun version {CRUN_FIRST}",
            }
            if self.wasmedge:
                wasmedge = f"/usr/local/bin/wasmedge version {WASMEDGE_VERSION}"
                expected["/usr/local/bin/wasmedge"] = wasmedge
            for path, line in expected.items():
                got = self.version_of(path)
                self.check(got == line, f"{path} --version: {got!r}, expected {line!r}")
            # The bytes are the mirror's (sha256-verified on the way in).
            for component, version, path in (
                ("k3s", K3S_VERSION, "/usr/local/bin/k3s"),
                ("crun", CRUN_FIRST, "/usr/local/bin/crun"),
            ):
                want = self.mirror.file(component, version, arch).read_bytes()
                got_bytes = (self.node.root / path.lstrip("/")).read_bytes()
                self.check(got_bytes == want, f"{path} is not the mirror's {component} {version}")
            files = ["/etc/rancher/k3s/config.yaml"]
            if self.wasmedge:
                listed = self.node.run(["/usr/local/bin/wasmedge", "--version"]).stdout
                self.check(
                    '(plugin "wasi_nn")' in listed,
                    f"wasmedge does not load the plugin: {listed!r}",
                )
                files += [
                    "/usr/local/lib/libwasmedge.so.0",
                    "/usr/local/lib/wasmedge/libwasmedgePluginWasiNN.so",
                ]
            for path in (
                *files,
                "/etc/systemd/system/k3s.service",
                "/var/lib/rancher/k3s/agent/etc/containerd/config.toml.tmpl",
                f"{STATE_DIR}/state.json",
            ):
                self.check(self.node.exists(path), f"{path} is missing")
            config = self.node.read("/etc/rancher/k3s/config.yaml")
            self.check(f"token-file: {TOKEN_FILE}" in config, f"k3s config: {config!r}")
            template = self.node.read("/var/lib/rancher/k3s/agent/etc/containerd/config.toml.tmpl")
            self.check("crun-wasm" in template, "the containerd template has no crun-wasm runtime")
            # ldconfig ran after WasmEdge went in (the stand-in library is not an ELF file, so
            # the loader's cache itself cannot list it).
            calls = (self.status().get("lastRun") or {}).get("serviceCalls") or []
            if self.wasmedge:
                self.check("ldconfig" in calls, f"no ldconfig among the service calls: {calls}")
            for call in ("systemctl daemon-reload", "systemctl restart k3s.service"):
                self.check(call in calls, f"no {call!r} among the service calls: {calls}")

    def k3s_service(self, generation: int) -> dict[str, str]:
        with self.step(
            f"k3s.service (stand-in) started by agentd, active (generation {generation})"
        ):
            shown = self.wait_active(K3S_UNIT, 60)
            self.check(shown.get("Type") == "notify", f"k3s.service Type={shown.get('Type')}")
            self.check(shown.get("SubState") == "running", f"k3s.service: {shown}")
            enabled = self.node.run(["systemctl", "is-enabled", K3S_UNIT], check=False).stdout
            self.check(enabled.strip() == "enabled", f"k3s.service is-enabled: {enabled.strip()}")
            messages = [str(e.get("MESSAGE", "")) for e in self.journal(K3S_UNIT)]
            self.check(
                any("READY=1 sent" in m for m in messages),
                f"k3s.service journal has no READY=1 from the stand-in: {messages[-5:]}",
            )
            return shown

    def journal_fields(self) -> None:
        with self.step("journal: AGENTD_COMPONENT / AGENTD_ACTION / AGENTD_GENERATION") as step:
            entries = self.journal(UNIT)
            actions = {
                (e.get("AGENTD_COMPONENT"), e.get("AGENTD_ACTION"))
                for e in entries
                if "AGENTD_COMPONENT" in e and "AGENTD_ACTION" in e
            }
            generations = {e["AGENTD_GENERATION"] for e in entries if "AGENTD_GENERATION" in e}
            pairs = [("crun", "install"), ("k3s", "install")]
            pairs += [("wasmedge", "install")] if self.wasmedge else []
            for pair in pairs:
                self.check(pair in actions, f"no journal entry with {pair}: {sorted(actions)}")
            self.check("1" in generations, f"no AGENTD_GENERATION=1: {sorted(generations)}")
            all_three = [
                e
                for e in entries
                if {"AGENTD_COMPONENT", "AGENTD_ACTION", "AGENTD_GENERATION"} <= e.keys()
            ]
            self.check(bool(all_three), "no journal entry carries all three fields")
            installs = [e for e in entries if e.get("AGENTD_ACTION") == "install"]
            untagged = [e for e in installs if "AGENTD_GENERATION" not in e]
            step.detail = (
                f"{len(actions)} (component, action) pairs, generations {sorted(generations)}; "
                f"entries with all three: {len(all_three)} "
                f"({sorted({(e['AGENTD_COMPONENT'], e['AGENTD_ACTION']) for e in all_three})})"
            )
            # `journalctl AGENTD_GENERATION=1` must list what generation 1 installed.
            self.check(
                bool(installs) and not untagged,
                f"{len(untagged)} of {len(installs)} per-action journal entries "
                "(AGENTD_ACTION=install) carry no AGENTD_GENERATION",
            )
            health = self.status().get("health") or {}
            codes = sorted(str(f.get("code")) for f in health.get("findings") or [])
            self.observe(f"health after generation 1 (stand-ins): {codes}")

    def dropin_reconverges(self) -> None:
        title = "drop-in (crun 1.16, a k3s flag; generation 2) reconverges; k3s restarted"
        with self.step(title) as step:
            before = self.node.show(K3S_UNIT, "MainPID", "ExecMainStartTimestampMonotonic")
            start = time.monotonic()
            self.node.write(DROPIN_CRUN, _yaml(self.crun_dropin()))
            self.bump(2)
            doc = self.wait_for_run(2, "converged", 60)
            seconds = time.monotonic() - start
            self.result.figures["reconverge_dropin_s"] = round(seconds, 2)
            got = self.version_of("/usr/local/bin/crun")
            self.check(got == f"crun version {CRUN_DROPIN}", f"crun after the drop-in: {got!r}")
            actions = [(a.get("action"), a.get("component")) for a in doc["lastRun"]["actions"]]
            self.check(("upgrade", "crun") in actions, f"generation 2 actions: {actions}")
            self.check(("configure", "k3s/config") in actions, f"k3s config kept: {actions}")
            self.check(("restart", "k3s") in actions, f"no k3s restart in {actions}")
            reason = next(
                str(a.get("reason"))
                for a in doc["lastRun"]["actions"]
                if (a.get("action"), a.get("component")) == ("restart", "k3s")
            )
            self.check("crun" not in reason, f"k3s restarted for a crun upgrade: {reason}")
            config = self.node.read("/etc/rancher/k3s/config.yaml")
            self.check(DROPIN_LABEL in config, f"k3s config without the drop-in's flag: {config}")
            after = self.k3s_service(generation=2)
            self.check(
                after["MainPID"] != before["MainPID"],
                f"k3s.service MainPID {after['MainPID']} unchanged: not restarted",
            )
            entries = self.journal(UNIT)
            self.check(
                any(e.get("AGENTD_GENERATION") == "2" for e in entries),
                "no journal entry with AGENTD_GENERATION=2",
            )
            self.check(
                any(
                    e.get("AGENTD_COMPONENT") == "crun" and e.get("AGENTD_ACTION") == "upgrade"
                    for e in entries
                ),
                "no journal entry for the crun upgrade",
            )
            step.detail = f"{seconds:.1f} s: {actions}"

    def crun_from_the_distribution(self) -> None:
        asked = ">=1.8.5"
        with self.step(f"source: package, crun {asked}: refused, naming {BOOKWORM_CRUN}") as step:
            dropin = {"components": {"crun": {"source": "package", "version": asked}}}
            start = time.monotonic()
            self.node.write(DROPIN_PACKAGE, _yaml(dropin))
            self.bump(3)
            doc = self.wait_for_run(3, "failed", 300)
            self.result.figures["package_refused_s"] = round(time.monotonic() - start, 2)
            error = str(doc["lastRun"].get("error"))
            step.detail = error
            self.check(BOOKWORM_CRUN in error, f"the error does not name {BOOKWORM_CRUN}: {error}")
            self.check(asked in error, f"the error does not name {asked}: {error}")
            self.check(
                self.node.run(["dpkg-query", "-W", "crun"], check=False).returncode != 0
                or "ii"
                not in self.node.run(
                    ["dpkg-query", "-W", "-f=${db:Status-Abbrev}", "crun"], check=False
                ).stdout,
                "crun was installed although no version fits",
            )
            status = self.wait_status_text("failed: ", 30)
            self.check(BOOKWORM_CRUN in status, f"StatusText does not say why: {status!r}")
            self.observe(f"StatusText after the refusal: {status!r}")
        asked = ">=1.8"
        with self.step(f"source: package, crun {asked}: apt-get installs Debian's crun") as step:
            dropin = {"components": {"crun": {"source": "package", "version": asked}}}
            start = time.monotonic()
            self.node.write(DROPIN_PACKAGE, _yaml(dropin))
            self.bump(4)
            doc = self.wait_for_run(4, "converged", 600)
            seconds = time.monotonic() - start
            self.result.figures["package_install_s"] = round(seconds, 2)
            query = self.node.run(["dpkg-query", "-W", "-f=${db:Status-Abbrev}|${Version}", "crun"])
            status, _, version = query.stdout.partition("|")
            self.check(status.startswith("ii"), f"crun is not installed: {query.stdout!r}")
            self.check(version.startswith(BOOKWORM_CRUN), f"crun {version} installed")
            got = self.version_of("/usr/bin/crun")
            self.check(got == f"crun version {BOOKWORM_CRUN}", f"/usr/bin/crun: {got!r}")
            # It ran outside the unit's sandbox, as a transient unit of PID 1 (systemd-run).
            boot_log = self.node.run(["journalctl", "-b", "-o", "cat", "--no-pager"], timeout=60)
            transient = [line for line in boot_log.stdout.splitlines() if "agentd: apt-get" in line]
            self.check(
                any("agentd: apt-get install" in line for line in transient),
                f"no transient 'agentd: apt-get install' unit in the journal: {transient}",
            )
            actions = [
                (a.get("action"), a.get("component"), a.get("package"))
                for a in doc["lastRun"]["actions"]
            ]
            step.detail = f"{seconds:.1f} s: crun {version}; {actions}; " + "; ".join(
                line for line in transient if line.startswith("Started")
            )
            local = (
                self.version_of("/usr/local/bin/crun")
                if self.node.exists("/usr/local/bin/crun")
                else "absent"
            )
            template = self.node.read("/var/lib/rancher/k3s/agent/etc/containerd/config.toml.tmpl")
            binary = [line.strip() for line in template.splitlines() if "BinaryName" in line]
            self.check(
                'BinaryName = "/usr/bin/crun"' in binary,
                f"the containerd template does not name the package's crun: {binary}",
            )
            # agentd's own crun from artifacts would come first on PATH and be tracked by
            # nothing: the package's install removes it (kept for rollback).
            self.check(local == "absent", f"agentd's /usr/local/bin/crun stays: {local!r}")
            recorded = (self.status().get("inventory") or {}).get("crun") or {}
            self.check(
                recorded.get("files") == [],
                f"the inventory's crun is not the package's: {recorded}",
            )

    def upgrade(self) -> None:
        with self.step("upgrade to a higher version: conffile kept, service restarted") as step:
            before = self.node.show(UNIT, "MainPID")["MainPID"]
            argv = self._install_command(self.built.upgrade, upgrade=True)
            start = time.monotonic()
            self.node.run(argv, timeout=300)
            self.result.figures["upgrade_s"] = round(time.monotonic() - start, 2)
            version = self.package_version()
            self.check(
                version == f"{self.built.upgrade_version}-1",
                f"version after the upgrade: {version!r}",
            )
            self.check(
                OPERATOR_EDIT in self.node.read(SETTINGS),
                "the operator's edit of agentd.yaml is gone after the upgrade",
            )
            self.check(
                not self.node.exists(SETTINGS + ".dpkg-new")
                and not self.node.exists(SETTINGS + ".rpmnew"),
                "the upgrade left a new agentd.yaml beside the operator's",
            )
            shown = self.wait_active(UNIT, 120)
            self.check(
                shown["MainPID"] != before,
                f"MainPID {shown['MainPID']} unchanged: not restarted by the upgrade",
            )
            doc = self.status()
            last = doc.get("lastAppliedGeneration")
            self.check(last in (2, 4), f"after the upgrade, last applied generation {last}")
            step.detail = f"{before} -> {shown['MainPID']}, {shown['StatusText']!r}"

    def remove(self) -> None:
        with self.step("remove: stopped, disabled, state kept; k3s keeps running") as step:
            if self.spec.package == "rpm":
                argv = ["rpm", "-e", PACKAGE]
            else:
                argv = ["apt-get", "remove", "-y", PACKAGE]
            self.node.run(argv, timeout=120)
            shown = self.node.show(UNIT, "ActiveState", "LoadState", "UnitFileState")
            self.check(shown.get("ActiveState") in ("inactive", ""), f"after remove: {shown}")
            enabled = self.node.run(["systemctl", "is-enabled", UNIT], check=False).stdout.strip()
            self.check(enabled != "enabled", f"still enabled after remove ({enabled})")
            self.check(not self.node.exists("/usr/bin/agentd"), "/usr/bin/agentd is still there")
            self.check(self.node.exists(f"{STATE_DIR}/state.json"), f"{STATE_DIR} was not kept")
            self.check(self.node.exists(DESIRED), "the operator's desired.yaml was removed")
            self.check(self.node.exists("/usr/local/bin/k3s"), "k3s went with the package")
            k3s = self.node.show(K3S_UNIT, "ActiveState")["ActiveState"]
            self.check(k3s == "active", f"k3s.service is {k3s} after the package was removed")
            pycache = self.node.run(
                ["find", "/usr/lib/wasm-edge-agentd", "-name", "__pycache__"], check=False
            ).stdout.strip()
            self.check(not pycache, f"bytecode left behind: {pycache[:200]}")
            link = self.node.run(["test", "-L", WANTS_LINK], check=False).returncode == 0
            if self.spec.package == "rpm":
                # %preun: systemctl --no-reload disable --now.
                self.check(not link, f"rpm -e left {WANTS_LINK}")
            step.detail = f"is-enabled: {enabled or '(nothing)'}; {shown}; {WANTS_LINK}: " + (
                "still there (dangling until purge)" if link else "gone"
            )
            if link:
                self.observe(
                    f"after {argv[0]} remove the unit file is gone but {WANTS_LINK} is kept "
                    "(dangling) until purge: not masked, not disabled"
                )

    def purge(self) -> None:
        with self.step("purge: state and agentd.yaml removed, operator's files kept"):
            self.node.run(["apt-get", "purge", "-y", PACKAGE], timeout=120)
            self.check(not self.node.exists(STATE_DIR), f"{STATE_DIR} is still there")
            self.check(not self.node.exists(SETTINGS), f"{SETTINGS} is still there")
            self.check(self.node.exists(DESIRED), "purge removed the operator's desired.yaml")
            state = self.node.run(
                ["dpkg-query", "-W", "-f=${db:Status-Abbrev}", PACKAGE], check=False
            )
            self.check(state.stdout.strip() in ("", "un", "pn"), f"dpkg: {state.stdout!r}")
            self.check(not self.node.exists(WANTS_LINK), f"{WANTS_LINK} is left after purge")
            self.check(
                self.node.run(["test", "-L", WANTS_LINK], check=False).returncode != 0,
                f"{WANTS_LINK} (dangling) is left after purge",
            )
