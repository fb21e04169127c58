"""The k3s check: installed, its unit active, the API answering, this node Ready."""

from __future__ import annotations

from agentd.core.paths import K3S_UNITS, SYSTEMD_DIR
from agentd.health.findings import CheckInput, Finding, last_line, wanted
from agentd.health.kube import Kube


def _k3s_unit(inp: CheckInput) -> str:
    k3s = wanted(inp, "k3s")
    if k3s is not None:
        return K3S_UNITS[str(k3s.get("role", "server"))]
    agent = K3S_UNITS["agent"]
    return agent if inp.paths.under(f"{SYSTEMD_DIR}/{agent}").exists() else K3S_UNITS["server"]


def check_k3s(inp: CheckInput) -> list[Finding]:
    """The desired tokenFile present, then k3s's own state."""
    return _token_file(inp) + _k3s_state(inp)


def _token_file(inp: CheckInput) -> list[Finding]:
    """A tokenFile the desired state names must exist: k3s cannot join a cluster without it
    (validate only warns: it may run on another machine than the node)."""
    token = (wanted(inp, "k3s") or {}).get("tokenFile")
    if not isinstance(token, str) or not token.startswith("/"):
        return []
    if inp.paths.under(token).exists():
        return []
    return [
        Finding(
            "k3s.token-file-missing",
            "error",
            "k3s",
            f"the desired tokenFile {token} does not exist: k3s cannot join the cluster with it",
            f"put the cluster's token in {token} (mode 0600, owned by root)",
        )
    ]


def _k3s_state(inp: CheckInput) -> list[Finding]:
    """k3s installed, its unit active, the API answering, this node Ready. One finding when k3s
    is not there or not running, never a cascade of failures behind it."""
    paths, found = inp.paths, inp.facts.component("k3s")
    if not found.installed:
        if wanted(inp, "k3s") is not None:
            return [
                Finding(
                    "k3s.missing",
                    "error",
                    "k3s",
                    "k3s is in the desired state but not installed",
                    "let agentd converge (agentd apply)",
                    "converge",
                )
            ]
        return [
            Finding(
                "k3s.absent",
                "info",
                "k3s",
                "k3s is not installed: the cluster checks are skipped",
                "nothing to do unless this node should run k3s",
            )
        ]
    unit = _k3s_unit(inp)
    systemctl = paths.find_binary("systemctl")
    if systemctl is not None:
        state = inp.runner([str(systemctl), "is-active", unit], 10)
        active = state.stdout.strip() or "unknown"
        if active != "active":
            return [
                Finding(
                    "k3s.inactive",
                    "error",
                    "k3s",
                    f"{unit} is {active}: the cluster checks are skipped",
                    f"systemctl restart {unit}; see journalctl -u {unit}",
                    "restart:k3s",
                )
            ]
    if not paths.under("/etc/rancher/k3s/k3s.yaml").exists():
        inp.notes["api"] = False
        if unit == K3S_UNITS["agent"]:
            why, remedy = "a k3s agent has none", "nothing to do: a server checks the cluster"
        else:
            why = "k3s writes it at its first start"
            remedy = f"start k3s (systemctl start {unit}) if it has never run"
        return [
            Finding(
                "k3s.no-kubeconfig",
                "info",
                "k3s",
                f"no /etc/rancher/k3s/k3s.yaml ({why}): the API and node checks are skipped",
                remedy,
            )
        ]
    kube = Kube(inp, paths.under(found.path or "/usr/local/bin/k3s"))
    ready = kube("get", "--raw", "/readyz")
    if not ready.ok or ready.stdout.strip() != "ok":
        inp.notes["api"] = False
        return [
            Finding(
                "k3s.api-unreachable",
                "error",
                "k3s",
                f"the Kubernetes API does not answer: {last_line(ready)}",
                f"check journalctl -u {unit}; the API server listens on 127.0.0.1:6443",
                "restart:k3s",
            )
        ]
    inp.notes["api"] = True
    inp.notes["kube"] = kube
    node, result = kube.json("get", "node", inp.node_name)
    if node is None:
        return [
            Finding(
                "k3s.node-missing",
                "error",
                "k3s",
                f"node {inp.node_name!r} is not in the cluster: {last_line(result)}",
                "set health.nodeName in /etc/wasm-edge/agentd.yaml if k3s names this node "
                "otherwise (node-name in its config)",
            )
        ]
    inp.notes["node"] = node
    conditions = (node.get("status") or {}).get("conditions") or []
    ready_cond = next((c for c in conditions if c.get("type") == "Ready"), None)
    if ready_cond is None or ready_cond.get("status") != "True":
        why = (ready_cond or {}).get("message") or (ready_cond or {}).get("reason") or "unknown"
        return [
            Finding(
                "k3s.node-not-ready",
                "error",
                "k3s",
                f"node {inp.node_name} is not Ready: {why}",
                f"see kubectl describe node {inp.node_name} and journalctl -u {unit}",
            )
        ]
    return []
