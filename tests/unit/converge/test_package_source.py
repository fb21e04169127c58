"""crun from the distribution (`source: package`): planned, chosen and installed with apt/dnf."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from agentd.core.components import MANAGED_CONFIG_PATHS
from agentd.core.versions import (
    parse_constraint,
    satisfies,
    upstream_version,
)
from agentd.facts.model import Facts, HostFacts
from agentd.plan.diff import plan
from agentd.plan.model import Plan
from agentd.system.packages import AptPackages, system_packages
from tests.support.mirror import MirrorServer
from tests.support.node import Node
from tests.support.standins import Mirror, desired_document, write_yaml

APT = system_packages()
HOST = HostFacts("amd64", "debian 12", "6.1.0", 2, 4 << 30, 50 << 30, True, 100 << 30)
needs_apt_crun = pytest.mark.skipif(
    not isinstance(APT, AptPackages) or not APT.available("crun"),
    reason="needs apt with a crun package in its lists (Debian: apt-get update)",
)


def doc(version: str, **extra: object) -> dict[str, object]:
    return {
        "apiVersion": "agentd/v1",
        "kind": "NodeState",
        "generation": 1,
        "components": {"crun": {"source": "package", "version": version, **extra}},
    }


@pytest.mark.parametrize(
    ("version", "constraint", "ok"),
    [
        ("1.8.1", ">=1.8.5", False),
        ("1.15", ">=1.8.5", True),
        ("1.15", ">=1.8,<2", True),
        ("2.0", ">=1.8,<2", False),
        ("1.15", "1.15", True),
        ("1.15", "==1.14", False),
        ("1.15", "!=1.14", True),
    ],
)
def test_version_constraints(version: str, constraint: str, ok: bool) -> None:
    assert satisfies(version, constraint) is ok


def test_bad_constraints_and_debian_versions() -> None:
    for bad in ("latest", ">>1.2", ">=", "1.8,,2"):
        with pytest.raises(ValueError, match="not a version constraint"):
            parse_constraint(bad)
    assert upstream_version("1.8.1-1+deb12u1") == "1.8.1"
    assert upstream_version("2:1.15-1.el9") == "1.15"
    assert upstream_version("1.15") == "1.15"


def test_validation_of_a_package_source(tmp_path: Path) -> None:
    node = Node(tmp_path / "root")
    good = write_yaml(tmp_path / "good.yaml", doc(">=1.8.5"))
    assert node.agentd("validate", str(good)).code == 0
    bad = write_yaml(tmp_path / "bad.yaml", doc("latest"))
    res = node.agentd("validate", str(bad))
    assert res.code == 1
    assert f"{bad}:6:5: not a version constraint: 'latest'" in res.stderr
    unused = write_yaml(
        tmp_path / "unused.yaml",
        doc(">=1.8", artifacts={"amd64": {"url": "https://x/crun", "sha256": "0" * 64}}),
    )
    res = node.agentd("validate", str(unused))
    assert res.code == 0
    assert "these artifacts are not used" in res.stderr


@needs_apt_crun
def test_the_error_says_what_the_repositories_offer_and_what_was_asked(tmp_path: Path) -> None:
    """Under --root nothing is installed, but what the repositories offer is this machine's
    real answer (apt-cache madison): Debian 12 offers crun 1.8.1."""
    assert isinstance(APT, AptPackages)
    offered = sorted({upstream_version(v) for v in APT.available("crun")})
    node = Node(tmp_path / "root")
    too_new = write_yaml(tmp_path / "d.yaml", doc(">=99.0"))
    res = node.agentd("apply", "--desired", str(too_new), "--json")
    assert res.code == 1
    error = res.json()["error"]
    assert f"offer crun {', '.join(offered)}" in error
    assert "the desired state asks >=99.0" in error
    assert "nothing was changed" in error
    assert not (node.root / "usr").exists()
    fits = write_yaml(tmp_path / "e.yaml", doc(f">={offered[0]}"))
    ok = node.agentd("apply", "--desired", str(fits), "--json")
    assert ok.code == 0, ok.stderr
    result = ok.json()
    newest = max(
        APT.available("crun"),
        key=lambda v: [int(x) for x in upstream_version(v).split(".") if x.isdigit()],
    )
    assert result["serviceCalls"] == [f"install package crun {newest}"]
    assert result["actions"][0]["package"] == "crun"
    # The containerd template names the package's binary, not /usr/local/bin/crun.
    assert node.state()["inventory"]["crun"]["version"] == upstream_version(newest)


@needs_apt_crun
def test_switching_to_the_package_removes_agentds_own_crun_and_keeps_it_for_rollback(
    sandbox_root: Path, mirror: MirrorServer, mirror_index: Mirror, arch: str
) -> None:
    """Found by the e2e: after `source: package`, the crun agentd had installed from artifacts
    stayed in /usr/local/bin (first on PATH), tracked by nothing once the inventory named the
    package. It goes in the same action, and `agentd rollback crun` brings it back."""
    assert isinstance(APT, AptPackages)
    node = Node(sandbox_root)
    first = node.apply(
        desired_document(mirror.url, mirror_index, arches=(arch,), k3s=None, wasmedge=None)
    )
    assert first.code == 0, first.stderr
    assert node.version_of("/usr/local/bin/crun") == "crun version 1.15"
    offered = min({upstream_version(v) for v in APT.available("crun")})
    package = doc(f">={offered}")
    package["generation"] = 2
    plan = node.agentd("plan", "--desired", str(node.desired(package)), "--json").json()
    [action] = [a for a in plan["actions"] if a["component"] == "crun"]
    assert action["package"] == "crun"
    assert (
        "agentd's crun 1.15 at /usr/local/bin/crun is removed (kept for rollback)"
        in (action["reason"])
    )
    res = node.apply(package)
    assert res.code == 0, res.stderr
    assert not node.path("/usr/local/bin/crun").exists()
    recorded = node.state()["inventory"]["crun"]
    assert recorded["files"] == []  # the package manager's, not agentd's
    # Nothing of agentd's is left to remove (under --root the package itself is only recorded,
    # not installed, so the plan may still install it).
    again = node.agentd("plan", "--desired", str(node.desired(package)), "--json").json()
    assert not any("is removed" in a["reason"] for a in again["actions"]), again["actions"]
    back = node.agentd("rollback", "crun", "--json")
    assert back.code == 0, back.stderr
    assert node.version_of("/usr/local/bin/crun") == "crun version 1.15"
    assert node.state()["inventory"]["crun"]["files"] == ["/usr/local/bin/crun"]


@needs_apt_crun
@pytest.mark.skipif(shutil.which("crun") is None, reason="no distribution crun installed")
def test_the_installed_package_is_what_dpkg_says() -> None:
    assert isinstance(APT, AptPackages)
    installed = APT.installed("crun")
    assert installed is not None
    assert upstream_version(installed).split(".")[0].isdigit()
    assert APT.installed("no-such-package-agentd") is None


def _plan(installed: str | None, constraint: str) -> Plan:
    from agentd.desired.model import DesiredState

    desired = DesiredState.model_validate(doc(constraint))
    facts = Facts(HOST, {}, {"crun": installed})
    return plan(desired, facts, {}, dict.fromkeys(MANAGED_CONFIG_PATHS))


def test_the_plan_for_a_package() -> None:
    kept = _plan("1.8.1-1+deb12u1", ">=1.8")
    assert kept.actions == ()
    assert [u.reason for u in kept.unchanged if u.component == "crun"] == [
        "package crun 1.8.1-1+deb12u1 meets >=1.8"
    ]
    upgrade = _plan("1.8.1-1+deb12u1", ">=1.8.5")
    assert [(a.action, a.from_version, a.to_version, a.package) for a in upgrade.actions] == [
        ("upgrade", "1.8.1", ">=1.8.5", "crun")
    ]
    fresh = _plan(None, ">=1.8.5")
    assert [(a.action, a.package) for a in fresh.actions] == [("install", "crun")]


def test_under_the_service_the_package_manager_runs_outside_its_sandbox(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from agentd.system.packages import outside_the_unit

    monkeypatch.delenv("INVOCATION_ID", raising=False)
    argv = ["apt-get", "install", "-y", "crun=1.8.1-1"]
    assert outside_the_unit(argv, {"DEBIAN_FRONTEND": "noninteractive"}) == argv
    monkeypatch.setenv("INVOCATION_ID", "0123456789abcdef")
    wrapped = outside_the_unit(argv, {"DEBIAN_FRONTEND": "noninteractive"})
    if not Path("/run/systemd/system").is_dir() or not Path("/usr/bin/systemd-run").exists():
        assert wrapped == argv  # not booted with systemd: nothing to step out of
        return
    assert wrapped[:3] == ["/usr/bin/systemd-run", "--wait", "--pipe"]
    assert "--setenv=DEBIAN_FRONTEND=noninteractive" in wrapped
    assert wrapped[-4:] == argv
