"""All the health checks, in order: small units that name what is wrong and its real cause."""

from __future__ import annotations

from collections.abc import Callable

from agentd.health.containerd import check_containerd
from agentd.health.crun import check_crun
from agentd.health.findings import CheckInput, Finding
from agentd.health.k3s import check_k3s
from agentd.health.preflight import check_host
from agentd.health.wasmedge import check_dns, check_wasmedge
from agentd.health.workload import check_workload


def check_addons(inp: CheckInput) -> list[Finding]:
    """Gatekeeper's checks, imported only where the desired state has add-ons: most nodes have
    none, and the daemon keeps its memory for them."""
    if not ((inp.desired or {}).get("addons") or {}).get("gatekeeper"):
        return []
    from agentd.health.addons import check_addons as check  # noqa: PLC0415

    return check(inp)


CHECKS: tuple[Callable[[CheckInput], list[Finding]], ...] = (
    check_host,
    check_k3s,
    check_addons,  # after check_k3s: it asks the cluster through the kube that check leaves
    check_crun,
    check_containerd,
    check_wasmedge,
    check_dns,
)


def run_checks(inp: CheckInput) -> list[Finding]:
    """Every check in order, then the workload probe, which explains with the others' findings."""
    findings: list[Finding] = []
    for check in CHECKS:
        findings += check(inp)
    findings += check_workload(inp, findings)
    return findings
