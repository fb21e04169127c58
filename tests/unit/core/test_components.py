"""The component registry: each kind declared once, every stage reading the same answer."""

from __future__ import annotations

from agentd.core import components
from agentd.core.components import (
    BINARY_KINDS,
    KINDS,
    MANAGED_CONFIG_PATHS,
    kind_of,
    plugin_component,
    plugin_name,
    restarts_k3s,
    watched,
)
from agentd.core.paths import (
    CONTAINERD_TEMPLATES,
    GATEKEEPER_MANIFEST,
    GATEKEEPER_POLICIES,
    K3S_CONFIG,
    K3S_REGISTRIES,
    RUNTIMECLASS_MANIFEST,
)
from agentd.facts.detect import VERSION_READERS
from agentd.facts.model import COMPONENTS


def test_every_kind_has_a_name_of_its_own() -> None:
    names = [kind.name for kind in KINDS]
    assert len(names) == len(set(names))
    assert all(kind_of(name) is kind for name, kind in zip(names, KINDS))


def test_detection_reads_every_binary_kind_and_nothing_else() -> None:
    assert COMPONENTS == ("k3s", "crun", "wasmedge")
    assert set(VERSION_READERS) == {kind.name for kind in BINARY_KINDS}


def test_plugins_are_one_kind_under_a_prefix() -> None:
    component = plugin_component("wasi_nn")
    assert component == "wasmedge/plugins/wasi_nn"
    assert kind_of(component) is components.PLUGIN
    assert plugin_name(component) == "wasi_nn"
    assert plugin_name("wasmedge") is None
    assert kind_of("wasmedge/plugin") is None  # no prefix match without the slash


def test_what_restarts_k3s() -> None:
    # k3s reads its binary, crun on its PATH, its config, its unit and the containerd template
    # at start, and registries.yaml; WasmEdge and plugins are loaded by crun per container;
    # manifests are applied live and agent/images imported (or at the next start).
    restarting = {kind.name for kind in KINDS if kind.restarts_k3s}
    assert restarting == {
        "k3s",
        "crun",
        "k3s/config",
        "k3s/unit",
        "k3s/containerd",
        "k3s/registries",
    }
    assert not restarts_k3s("images/gatekeeper")
    assert not restarts_k3s("addons/gatekeeper")
    assert not restarts_k3s("wasmedge/plugins/wasi_crypto")
    assert not restarts_k3s("no-such-component")


def test_what_is_watched_for_rollback() -> None:
    assert [name for name in ("k3s", "crun", "wasmedge") if watched(name)] == [
        "k3s",
        "crun",
        "wasmedge",
    ]
    assert watched("wasmedge/plugins/wasi_nn")
    assert not watched("k3s/config")
    assert not watched("no-such-component")


def test_the_managed_config_files_come_from_the_kinds() -> None:
    assert set(MANAGED_CONFIG_PATHS) == {
        K3S_CONFIG,
        RUNTIMECLASS_MANIFEST,
        "/etc/systemd/system/k3s.service",
        "/etc/systemd/system/k3s-agent.service",
        *CONTAINERD_TEMPLATES,
        K3S_REGISTRIES,
        GATEKEEPER_MANIFEST,
        GATEKEEPER_POLICIES,
    }
    assert len(MANAGED_CONFIG_PATHS) == len(set(MANAGED_CONFIG_PATHS))
