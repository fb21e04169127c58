"""The planner as a pure function: desired state, facts, inventory and configs in, reasons out."""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping
from dataclasses import replace
from typing import Any, Optional

import pytest

from agentd.core.components import MANAGED_CONFIG_PATHS
from agentd.core.errors import DesiredStateError
from agentd.desired.model import DesiredState
from agentd.facts.model import ComponentFacts, Facts, HostFacts, PluginFact
from agentd.plan import render
from agentd.plan.diff import plan
from agentd.plan.model import Action, Plan
from agentd.state.inventory import InventoryEntry

K3S_BIN = "/usr/local/bin/k3s"
CRUN_BIN = "/usr/local/bin/crun"
WASMEDGE_BIN = "/usr/local/bin/wasmedge"
NN_PLUGIN = "/usr/local/lib/wasmedge/libwasmedgePluginWasiNN.so"
CRYPTO_PLUGIN = "/usr/local/lib/wasmedge/libwasmedgePluginWasiCrypto.so"
K3S_CONFIG = "/etc/rancher/k3s/config.yaml"
SERVER_UNIT = "/etc/systemd/system/k3s.service"
AGENT_UNIT = "/etc/systemd/system/k3s-agent.service"
TEMPLATE_V1 = "/var/lib/rancher/k3s/agent/etc/containerd/config.toml.tmpl"
TEMPLATE_V3 = "/var/lib/rancher/k3s/agent/etc/containerd/config-v3.toml.tmpl"
MANIFEST = "/var/lib/rancher/k3s/server/manifests/agentd-runtimeclasses.yaml"
NN = "wasmedge/plugins/wasi_nn-ggml"

HOST = HostFacts(
    arch="amd64",
    os="debian 12",
    kernel="6.1.0-18-amd64",
    cpus=2,
    memory_bytes=2 << 30,
    disk_free_bytes=20 << 30,
    cgroup_v2=True,
)


def sha(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def artifacts(name: str, arches: tuple[str, ...] = ("amd64", "arm64")) -> dict[str, Any]:
    return {
        arch: {"url": f"https://releases.example.test/{name}-{arch}.tar.gz", "sha256": sha(name)}
        for arch in arches
    }


BASE_DOC: dict[str, Any] = {
    "apiVersion": "agentd/v1",
    "kind": "NodeState",
    "generation": 7,
    "components": {
        "k3s": {
            "version": "v1.30.4+k3s1",
            "artifacts": artifacts("k3s-v1.30.4+k3s1"),
            "tokenFile": "/etc/wasm-edge/k3s-token",
            "config": {"write-kubeconfig-mode": "0644", "node-label": ["wasm=true"]},
        },
        "crun": {"version": "1.15", "artifacts": artifacts("crun-1.15")},
        "wasmedge": {
            "version": "0.14.1",
            "artifacts": artifacts("wasmedge-0.14.1"),
            "plugins": [{"name": "wasi_nn-ggml", "artifacts": artifacts("wasi_nn-ggml-0.14.1")}],
        },
    },
    "runtimeClasses": [
        {"name": "crun-wasm", "handler": "crun-wasm", "nodeSelector": {"wasm": "true"}}
    ],
}


def doc() -> dict[str, Any]:
    """A fresh, mutable copy of the base document."""
    return copy.deepcopy(BASE_DOC)


def desired(document: dict[str, Any] | None = None) -> DesiredState:
    return DesiredState.model_validate(document if document is not None else BASE_DOC)


def managed(version: str, path: str, **kw: Any) -> ComponentFacts:
    return ComponentFacts(installed=True, version=version, path=path, managed=True, **kw)


K3S_OK = managed("v1.30.4+k3s1", K3S_BIN, commit="abcd1234")
CRUN_OK = managed("1.15", CRUN_BIN, features=("SYSTEMD", "WASM:wasmedge"))
WASMEDGE_OK = managed(
    "0.14.1", WASMEDGE_BIN, plugins=(PluginFact("wasi_nn-ggml", NN_PLUGIN, managed=True),)
)


def node_facts(arch: str, components: Mapping[str, Optional[ComponentFacts]]) -> Facts:
    """The converged node's facts, with `components` replacing (None: dropping) entries."""
    comps: dict[str, ComponentFacts] = {"k3s": K3S_OK, "crun": CRUN_OK, "wasmedge": WASMEDGE_OK}
    for name, value in components.items():
        if value is None:
            comps.pop(name, None)
        else:
            comps[name] = value
    return Facts(host=replace(HOST, arch=arch), components=comps)


def facts(arch: str = "amd64", **components: Optional[ComponentFacts]) -> Facts:
    return node_facts(arch, components)


def empty_facts(arch: str = "amd64") -> Facts:
    return Facts(host=replace(HOST, arch=arch))


def inventory(plugin_version: str = "0.14.1") -> dict[str, InventoryEntry]:
    return {
        "k3s": InventoryEntry("v1.30.4+k3s1", sha("k3s"), [K3S_BIN]),
        "crun": InventoryEntry("1.15", sha("crun"), [CRUN_BIN]),
        "wasmedge": InventoryEntry("0.14.1", sha("wasmedge"), [WASMEDGE_BIN]),
        NN: InventoryEntry(plugin_version, sha("nn"), [NN_PLUGIN]),
    }


def no_configs() -> dict[str, Optional[bytes]]:
    return dict.fromkeys(MANAGED_CONFIG_PATHS)


def configs_for(state: DesiredState, crun_path: str = CRUN_BIN) -> dict[str, Optional[bytes]]:
    """What a node converged to `state` holds: exactly what the renderers produce."""
    out = no_configs()
    k3s = state.components.k3s
    assert k3s is not None
    assert k3s.version is not None
    out[K3S_CONFIG] = render.k3s_config(k3s)
    out[f"/etc/systemd/system/{render.k3s_unit_name(k3s.role)}"] = render.k3s_unit(k3s.role)
    template = TEMPLATE_V3 if render.uses_containerd2(k3s.version) else TEMPLATE_V1
    out[template] = render.containerd_template(k3s.version, crun_path)
    if k3s.role == "server" and state.runtimeClasses:
        out[MANIFEST] = render.runtimeclass_manifest(state.runtimeClasses)
    return out


def steps(p: Plan) -> list[tuple[str, str]]:
    return [(a.component, a.action) for a in p.actions]


def action(p: Plan, component: str, verb: str | None = None) -> Action:
    found = [a for a in p.actions if a.component == component and verb in (None, a.action)]
    assert len(found) == 1, steps(p)
    return found[0]


def unchanged(p: Plan) -> dict[str, str]:
    return {u.component: u.reason for u in p.unchanged}


def converged_plan(**components: Optional[ComponentFacts]) -> Plan:
    state = desired()
    return plan(state, node_facts("amd64", components), inventory(), configs_for(state))


# --- a new node and a converged one ------------------------------------------------------------


def test_empty_node_installs_runtime_then_k3s_then_configures_then_restarts_once() -> None:
    p = plan(desired(), empty_facts(), {}, no_configs())
    assert steps(p) == [
        ("wasmedge", "install"),
        (NN, "install"),
        ("crun", "install"),
        ("k3s", "install"),
        ("k3s/config", "configure"),
        ("k3s/unit", "configure"),
        ("k3s/containerd", "configure"),
        ("k3s/runtimeclasses", "configure"),
        ("k3s", "restart"),
    ]
    restarts = [a for a in p.actions if a.action == "restart"]
    assert len(restarts) == 1
    assert restarts[0].target == "k3s.service"
    # Nothing runs yet: neither the first install nor the first start interrupts a workload, so
    # neither waits for a maintenance window.
    assert not restarts[0].disruptive
    k3s = action(p, "k3s", "install")
    assert not k3s.disruptive
    assert (k3s.from_version, k3s.to_version) == (None, "v1.30.4+k3s1")
    assert k3s.artifact is not None
    assert k3s.artifact.url == "https://releases.example.test/k3s-v1.30.4+k3s1-amd64.tar.gz"
    assert action(p, NN).to_version == "0.14.1"
    assert action(p, "k3s/containerd").target == TEMPLATE_V1
    assert action(p, "k3s/config").reason == f"writing the k3s config to {K3S_CONFIG}"


def test_converged_node_plans_nothing_and_gives_every_component_a_reason() -> None:
    p = converged_plan()
    assert p.empty
    assert p.actions == ()
    reasons = unchanged(p)
    assert set(reasons) == {
        "k3s",
        "crun",
        "wasmedge",
        NN,
        "k3s/config",
        "k3s/unit",
        "k3s/containerd",
        "k3s/runtimeclasses",
        "k3s/service",
    }
    assert all(reason.strip() for reason in reasons.values())
    assert reasons["k3s"] == f"v1.30.4+k3s1 already installed at {K3S_BIN}"
    assert reasons["crun"] == f"1.15 already installed at {CRUN_BIN}"
    assert reasons["k3s/config"] == f"{K3S_CONFIG} is up to date"
    assert "no restart" in reasons["k3s/service"]


def test_components_missing_from_the_desired_state_are_left_with_a_reason() -> None:
    document = doc()
    del document["components"]["crun"]
    state = desired(document)
    p = plan(state, facts(), inventory(), configs_for(state))
    assert p.empty
    assert unchanged(p)["crun"] == (
        f"not in the desired state (found 1.15 at {CRUN_BIN}, left as it is)"
    )


# --- versions ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("component", "found", "verb"),
    [
        ("crun", managed("1.14", CRUN_BIN), "upgrade"),
        ("crun", managed("1.16", CRUN_BIN), "downgrade"),
        ("crun", managed("1.8.5", CRUN_BIN), "upgrade"),  # numeric, not text, order
        ("k3s", managed("v1.30.2+k3s1", K3S_BIN), "upgrade"),
        ("k3s", managed("v1.30.4+k3s2", K3S_BIN), "downgrade"),
        ("k3s", managed("v1.30.4-rc1+k3s1", K3S_BIN), "upgrade"),
    ],
)
def test_upgrade_or_downgrade_names_both_versions(
    component: str, found: ComponentFacts, verb: str
) -> None:
    p = converged_plan(**{component: found})
    step = p.actions[0]
    assert step.component == component
    assert step.action == verb
    wanted = "1.15" if component == "crun" else "v1.30.4+k3s1"
    assert (step.from_version, step.to_version) == (found.version, wanted)
    assert step.reason == f"installed {found.version}, desired {wanted}"
    assert step.to_json()["from"] == found.version
    assert step.to_json()["to"] == wanted


def test_a_wasmedge_version_change_reinstalls_its_plugins() -> None:
    old = managed(
        "0.13.5", WASMEDGE_BIN, plugins=(PluginFact("wasi_nn-ggml", NN_PLUGIN, managed=True),)
    )
    state = desired()
    p = plan(state, facts(wasmedge=old), inventory(plugin_version="0.13.5"), configs_for(state))
    assert steps(p) == [("wasmedge", "upgrade"), (NN, "upgrade")]
    runtime = action(p, "wasmedge")
    assert (runtime.from_version, runtime.to_version) == ("0.13.5", "0.14.1")
    plugin = action(p, NN)
    assert (plugin.from_version, plugin.to_version) == ("0.13.5", "0.14.1")
    assert "must match the runtime" in plugin.reason
    assert plugin.artifact is not None
    assert "wasi_nn-ggml" in plugin.artifact.url


def test_a_plugin_recorded_for_another_wasmedge_version_is_reinstalled() -> None:
    state = desired()
    p = plan(state, facts(), inventory(plugin_version="0.13.5"), configs_for(state))
    assert steps(p) == [(NN, "upgrade")]
    plugin = action(p, NN)
    assert (plugin.from_version, plugin.to_version) == ("0.13.5", "0.14.1")
    assert plugin.reason == "installed for WasmEdge 0.13.5, runtime is 0.14.1"
    assert unchanged(p)["wasmedge"] == f"0.14.1 already installed at {WASMEDGE_BIN}"


def test_a_plugin_recorded_for_the_running_wasmedge_is_left_alone() -> None:
    p = converged_plan()
    assert NN not in [a.component for a in p.actions]
    assert unchanged(p)[NN] == f"installed by agentd at {NN_PLUGIN}"


# --- state: absent -----------------------------------------------------------------------------


def crun_absent() -> DesiredState:
    document = doc()
    document["components"]["crun"] = {"state": "absent"}
    return desired(document)


def test_absent_removes_a_crun_that_agentd_installed() -> None:
    state = crun_absent()
    configs = configs_for(state)
    p = plan(state, facts(), inventory(), configs)
    remove = action(p, "crun", "remove")
    assert remove.from_version == "1.15"
    assert CRUN_BIN in remove.reason
    # A template naming the removed crun goes too, and k3s restarts once without it.
    template = action(p, "k3s/containerd")
    assert (template.action, template.target, template.content) == ("configure", TEMPLATE_V1, None)
    assert steps(p)[-1] == ("k3s", "restart")


def test_absent_leaves_a_crun_that_agentd_did_not_install() -> None:
    distro = ComponentFacts(installed=True, version="1.8.1", path="/usr/bin/crun", managed=False)
    state = crun_absent()
    p = plan(state, facts(crun=distro), inventory(), configs_for(state, "/usr/bin/crun"))
    assert "crun" not in [a.component for a in p.actions]
    reason = unchanged(p)["crun"]
    assert "/usr/bin/crun" in reason
    assert "not installed by agentd" in reason


def test_absent_and_not_installed_is_a_no_op_with_a_reason() -> None:
    state = crun_absent()
    p = plan(state, facts(crun=None), inventory(), configs_for(state))
    assert "crun" not in [a.component for a in p.actions]
    assert unchanged(p)["crun"] == "state: absent and not installed"


def wasmedge_absent() -> DesiredState:
    document = doc()
    document["components"]["wasmedge"] = {"state": "absent"}
    return desired(document)


def test_wasmedge_absent_removes_its_plugins_before_it() -> None:
    runtime = managed(
        "0.14.1",
        WASMEDGE_BIN,
        plugins=(
            PluginFact("wasi_crypto", CRYPTO_PLUGIN, managed=True),
            PluginFact("wasi_nn-ggml", NN_PLUGIN, managed=True),
        ),
    )
    state = wasmedge_absent()
    p = plan(state, facts(wasmedge=runtime), inventory(), configs_for(state))
    assert steps(p) == [
        ("wasmedge/plugins/wasi_crypto", "remove"),
        (NN, "remove"),
        ("wasmedge", "remove"),
    ]
    assert action(p, NN).target == NN_PLUGIN
    assert action(p, "wasmedge").from_version == "0.14.1"


def test_wasmedge_absent_leaves_a_wasmedge_that_agentd_did_not_install() -> None:
    distro = ComponentFacts(
        installed=True, version="0.13.5", path="/usr/bin/wasmedge", managed=False
    )
    state = wasmedge_absent()
    p = plan(state, facts(wasmedge=distro), inventory(), configs_for(state))
    assert "wasmedge" not in [a.component for a in p.actions]
    assert "not installed by agentd" in unchanged(p)["wasmedge"]


def k3s_absent() -> DesiredState:
    document = doc()
    document["components"]["k3s"] = {"state": "absent"}
    return desired(document)


def test_k3s_absent_is_removed_first_and_never_restarted() -> None:
    state = k3s_absent()
    old_crun = managed("1.14", CRUN_BIN)
    p = plan(state, facts(crun=old_crun), inventory(), configs_for(desired()))
    assert steps(p)[0] == ("k3s", "remove")
    assert steps(p)[1] == ("crun", "upgrade")
    remove = p.actions[0]
    assert remove.from_version == "v1.30.4+k3s1"
    assert remove.disruptive
    assert "restart" not in [a.action for a in p.actions]
    assert "k3s/service" not in unchanged(p)


def test_k3s_absent_on_an_agent_node_stops_the_agent_unit() -> None:
    document = doc()
    document["components"]["k3s"] = {"state": "absent", "role": "agent"}
    configs = no_configs()
    configs[AGENT_UNIT] = render.k3s_unit("agent")
    p = plan(desired(document), facts(), inventory(), configs)
    assert action(p, "k3s", "remove").target == "k3s-agent.service"


def test_k3s_absent_writes_no_k3s_files() -> None:
    p = plan(k3s_absent(), facts(), inventory(), no_configs())
    assert [a.component for a in p.actions if a.component.startswith("k3s/")] == []


# --- roles and restarts ------------------------------------------------------------------------


def test_agent_writes_the_agent_unit_and_no_runtimeclasses() -> None:
    document = doc()
    document["components"]["k3s"]["role"] = "agent"
    document["components"]["k3s"]["server"] = "https://10.0.0.1:6443"
    p = plan(desired(document), empty_facts(), {}, no_configs())
    assert action(p, "k3s/unit").target == AGENT_UNIT
    assert action(p, "k3s/unit").content == render.k3s_unit("agent")
    assert SERVER_UNIT not in [a.target for a in p.actions]
    assert "k3s/runtimeclasses" not in [a.component for a in p.actions]
    assert MANIFEST not in [a.target for a in p.actions]
    assert "server" in unchanged(p)["k3s/runtimeclasses"]
    restart = action(p, "k3s", "restart")
    assert restart.target == "k3s-agent.service"
    assert restart.reason.startswith("k3s-agent.service: ")


def test_a_crun_upgrade_alone_does_not_restart_k3s() -> None:
    p = converged_plan(crun=managed("1.14", CRUN_BIN))
    assert steps(p) == [("crun", "upgrade")]
    assert not action(p, "crun").disruptive
    assert "no restart" in unchanged(p)["k3s/service"]


def test_a_crun_install_restarts_k3s() -> None:
    p = converged_plan(crun=None)
    assert steps(p) == [("crun", "install"), ("k3s", "restart")]
    assert "crun install" in action(p, "k3s", "restart").reason


def test_replacing_a_distribution_crun_installs_to_usr_local_and_repoints_containerd() -> None:
    distro = ComponentFacts(installed=True, version="1.8.1", path="/usr/bin/crun", managed=False)
    state = desired()
    p = plan(state, facts(crun=distro), inventory(), configs_for(state, "/usr/bin/crun"))
    assert steps(p) == [
        ("crun", "install"),
        ("k3s/containerd", "configure"),
        ("k3s", "restart"),
    ]
    install = action(p, "crun")
    assert (install.from_version, install.to_version) == ("1.8.1", "1.15")
    assert "was not installed by agentd" in install.reason
    assert action(p, "k3s/containerd").content == render.containerd_template(
        "v1.30.4+k3s1", CRUN_BIN
    )


def test_a_k3s_upgrade_is_disruptive_and_restarts() -> None:
    p = converged_plan(k3s=managed("v1.30.2+k3s1", K3S_BIN))
    assert steps(p) == [("k3s", "upgrade"), ("k3s", "restart")]
    assert action(p, "k3s", "upgrade").disruptive


# --- config files ------------------------------------------------------------------------------


def test_a_config_edited_by_hand_is_rewritten_because_it_differs() -> None:
    state = desired()
    configs = configs_for(state)
    edited = configs[K3S_CONFIG]
    assert edited is not None
    configs[K3S_CONFIG] = edited.replace(b"0644", b"0600")
    p = plan(state, facts(), inventory(), configs)
    assert steps(p) == [("k3s/config", "configure"), ("k3s", "restart")]
    step = action(p, "k3s/config")
    assert step.target == K3S_CONFIG
    assert step.content == render.k3s_config(state.components.k3s)  # type: ignore[arg-type]
    assert "differs" in step.reason


def test_a_config_not_written_by_agentd_is_replaced_and_says_so() -> None:
    state = desired()
    configs = configs_for(state)
    configs[SERVER_UNIT] = b"[Service]\nExecStart=/usr/local/bin/k3s server\n"
    p = plan(state, facts(), inventory(), configs)
    step = action(p, "k3s/unit")
    assert step.target == SERVER_UNIT
    assert "not written by agentd" in step.reason
    assert step.content == render.k3s_unit("server")


def test_runtimeclasses_removed_from_the_desired_state_remove_the_manifest() -> None:
    state = desired()
    configs = configs_for(state)
    document = doc()
    document["runtimeClasses"] = []
    p = plan(desired(document), facts(), inventory(), configs)
    step = action(p, "k3s/runtimeclasses")
    assert (step.action, step.target, step.content) == ("configure", MANIFEST, None)


@pytest.mark.parametrize(
    ("version", "template"),
    [
        ("v1.30.4+k3s1", TEMPLATE_V1),
        ("v1.31.5+k3s1", TEMPLATE_V1),
        ("v1.31.6+k3s1", TEMPLATE_V3),
        ("v1.32.2+k3s1", TEMPLATE_V3),
        ("v1.33.0+k3s1", TEMPLATE_V3),
    ],
)
def test_the_containerd_template_follows_the_bundled_containerd(
    version: str, template: str
) -> None:
    document = doc()
    document["components"]["k3s"]["version"] = version
    p = plan(desired(document), empty_facts(), {}, no_configs())
    step = action(p, "k3s/containerd")
    assert step.target == template
    assert step.content == render.containerd_template(version, CRUN_BIN)


# --- artifacts ---------------------------------------------------------------------------------


def test_a_missing_artifact_for_the_node_arch_is_a_desired_state_error() -> None:
    document = doc()
    document["components"]["crun"]["artifacts"] = artifacts("crun-1.15", arches=("amd64",))
    with pytest.raises(DesiredStateError, match=r"crun: .*arm64"):
        plan(desired(document), empty_facts("arm64"), {}, no_configs())


def test_an_artifact_is_only_needed_for_what_changes() -> None:
    document = doc()
    document["components"]["crun"]["artifacts"] = artifacts("crun-1.15", arches=("amd64",))
    state = desired(document)
    p = plan(state, facts("arm64"), inventory(), configs_for(state))
    assert p.empty
    assert p.arch == "arm64"


def _armv7_document() -> dict[str, Any]:
    document = doc()
    for name in ("k3s", "crun"):
        version = document["components"][name]["version"]
        document["components"][name]["artifacts"] = artifacts(
            f"{name}-{version}", arches=("amd64", "arm64", "armv7")
        )
    return document


def test_on_armv7_wasmedge_is_refused_with_its_reason_and_the_rest_converges() -> None:
    p = plan(desired(_armv7_document()), empty_facts("armv7"), {}, no_configs())
    assert p.arch == "armv7"
    assert [a.component for a in p.actions if a.component.startswith("wasmedge")] == []
    assert ("crun", "install") in steps(p)
    assert ("k3s", "install") in steps(p)
    assert ("k3s", "restart") in steps(p)
    crun = action(p, "crun").artifact
    assert crun is not None
    assert crun.url.endswith("crun-1.15-armv7.tar.gz")
    reasons = {u.component: u.reason for u in p.unchanged}
    assert reasons["wasmedge"] == (
        "refused: WasmEdge publishes no 32-bit ARM (armv7) build, and this node is armv7; "
        "0.14.1 is not installed"
    )
    assert reasons[NN] == "refused with WasmEdge (WasmEdge publishes no 32-bit ARM (armv7) build)"
    assert {"component": "wasmedge", "reason": reasons["wasmedge"]} in p.to_json()["unchanged"]


def test_on_armv7_a_wasmedge_found_is_left_as_it_is() -> None:
    state = desired(_armv7_document())
    found = facts("armv7", wasmedge=managed("0.13.5", WASMEDGE_BIN))
    p = plan(state, found, inventory(), configs_for(state))
    assert [a for a in p.actions if a.component.startswith("wasmedge")] == []
    reason = next(u.reason for u in p.unchanged if u.component == "wasmedge")
    assert reason.startswith("refused: WasmEdge publishes no 32-bit ARM (armv7) build")
    assert reason.endswith(f"(found 0.13.5 at {WASMEDGE_BIN}, left as it is)")


# --- output ------------------------------------------------------------------------------------


def test_plan_json_has_the_documented_shape() -> None:
    state = desired()
    p = plan(state, facts(crun=managed("1.8.1", CRUN_BIN)), inventory(), configs_for(state))
    out = p.to_json()
    assert out["generation"] == 7
    assert out["arch"] == "amd64"
    assert out["actions"] == [
        {
            "component": "crun",
            "action": "upgrade",
            "from": "1.8.1",
            "to": "1.15",
            "reason": "installed 1.8.1, desired 1.15",
            "disruptive": False,
        }
    ]
    assert {"component": "k3s", "reason": f"v1.30.4+k3s1 already installed at {K3S_BIN}"} in out[
        "unchanged"
    ]
    assert all(set(u) == {"component", "reason"} for u in out["unchanged"])
    json.dumps(out)  # plain JSON: no bytes, artifacts or dataclasses leak into it


def test_configure_actions_name_their_target_in_json_but_not_their_content() -> None:
    out = plan(desired(), empty_facts(), {}, no_configs()).to_json()
    configure = [a for a in out["actions"] if a["action"] == "configure"]
    assert [a["target"] for a in configure] == [K3S_CONFIG, SERVER_UNIT, TEMPLATE_V1, MANIFEST]
    assert all("content" not in a for a in configure)
    install = next(a for a in out["actions"] if a["component"] == "k3s")
    assert "from" not in install
    assert install["to"] == "v1.30.4+k3s1"


def test_the_plan_is_deterministic() -> None:
    state = desired()
    node = facts(wasmedge=managed("0.13.5", WASMEDGE_BIN), crun=managed("1.14", CRUN_BIN), k3s=None)
    first = plan(state, node, inventory(), no_configs())
    second = plan(desired(), node, inventory(), no_configs())
    assert first.to_json() == second.to_json()
    assert json.dumps(first.to_json()) == json.dumps(second.to_json())
    assert first == second
