"""The files agentd writes for k3s, parsed back with the parsers k3s, containerd and systemd use."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import pytest
import yaml

from agentd.core.paths import CRUN_WASM_RUNTIME
from agentd.desired.model import K3s, RuntimeClass
from agentd.plan import render


def _tomllib() -> Any:
    """The standard library's TOML parser, or None before Python 3.11."""
    try:
        return importlib.import_module("tomllib")
    except ImportError:
        return None


tomllib = _tomllib()
needs_tomllib = pytest.mark.skipif(tomllib is None, reason="tomllib needs Python 3.11")

CRUN = "/usr/local/bin/crun"
TEMPLATE_LINE = '{{ template "base" . }}'
CONTAINERD1 = ("v1.30.4+k3s1", "v1.31.5+k3s1", "v1.32.1+k3s1")
CONTAINERD2 = ("v1.31.6+k3s1", "v1.32.2+k3s1", "v1.33.0+k3s1")
CRI_PLUGIN = {1: "io.containerd.grpc.v1.cri", 2: "io.containerd.cri.v1.runtime"}

# What k3s's own base template emits when it finds crun on its PATH (components.md), in each
# containerd config format; agentd's template is appended right after it.
K3S_BASE_CRUN = {
    1: '[plugins."io.containerd.grpc.v1.cri".containerd.runtimes."crun"]\n'
    '  runtime_type = "io.containerd.runc.v2"\n'
    '[plugins."io.containerd.grpc.v1.cri".containerd.runtimes."crun".options]\n'
    '  BinaryName = "/usr/bin/crun"\n'
    "  SystemdCgroup = true\n",
    2: "[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.'crun']\n"
    '  runtime_type = "io.containerd.runc.v2"\n'
    "[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.'crun'.options]\n"
    '  BinaryName = "/usr/bin/crun"\n'
    "  SystemdCgroup = true\n",
}

ALL_VERSIONS = [(v, 1) for v in CONTAINERD1] + [(v, 2) for v in CONTAINERD2]


def template_text(k3s_version: str, crun_path: str = CRUN) -> str:
    return render.containerd_template(k3s_version, crun_path).decode()


def after_template_line(text: str) -> str:
    head, sep, tail = text.partition(TEMPLATE_LINE + "\n")
    assert sep, text
    assert head == render.MANAGED_HEADER
    return tail


def parse_toml(text: str) -> dict[str, Any]:
    result: dict[str, Any] = tomllib.loads(text)
    return result


def runtimes(parsed: dict[str, Any], containerd: int) -> dict[str, Any]:
    table: dict[str, Any] = parsed["plugins"][CRI_PLUGIN[containerd]]["containerd"]["runtimes"]
    return table


# --- containerd --------------------------------------------------------------------------------


@pytest.mark.parametrize(("version", "containerd"), ALL_VERSIONS)
def test_template_name_follows_the_bundled_containerd(version: str, containerd: int) -> None:
    assert render.uses_containerd2(version) is (containerd == 2)
    expected = "config-v3.toml.tmpl" if containerd == 2 else "config.toml.tmpl"
    assert render.containerd_template_path(version) == (
        f"/var/lib/rancher/k3s/agent/etc/containerd/{expected}"
    )


@pytest.mark.parametrize("version", ["", "latest", "v1.31", "1.33.0"])
def test_unreadable_or_short_k3s_versions_fall_back_to_containerd_1(version: str) -> None:
    # "1.33.0" has no +k3sN but still parses; anything newer than 1.32 is containerd 2.
    assert render.uses_containerd2(version) is (version == "1.33.0")


@pytest.mark.parametrize(("version", "containerd"), ALL_VERSIONS)
def test_template_extends_the_base_after_the_managed_header(version: str, containerd: int) -> None:
    text = template_text(version)
    assert text.startswith(render.MANAGED_HEADER)
    assert text.splitlines()[1] == TEMPLATE_LINE
    assert text.count(TEMPLATE_LINE) == 1
    assert CRI_PLUGIN[containerd] in after_template_line(text)
    assert CRI_PLUGIN[3 - containerd] not in text


@pytest.mark.parametrize(("version", "containerd"), ALL_VERSIONS)
def test_template_runtime_is_not_the_crun_runtime_k3s_adds(version: str, containerd: int) -> None:
    text = template_text(version)
    assert CRUN_WASM_RUNTIME == "crun-wasm"
    assert "crun-wasm" in text
    assert '."crun"]' not in text
    assert ".'crun']" not in text
    assert '."crun".' not in text
    assert ".'crun'." not in text


@needs_tomllib
@pytest.mark.parametrize(("version", "containerd"), ALL_VERSIONS)
def test_template_toml_passes_wasm_annotations_to_crun(version: str, containerd: int) -> None:
    parsed = parse_toml(after_template_line(template_text(version, "/opt/crun/bin/crun")))
    found = runtimes(parsed, containerd)
    assert set(found) == {"crun-wasm"}
    runtime = found["crun-wasm"]
    assert runtime["runtime_type"] == "io.containerd.runc.v2"
    assert "module.wasm.image/*" in runtime["pod_annotations"]
    assert "run.oci.handler" in runtime["pod_annotations"]
    assert runtime["options"] == {"BinaryName": "/opt/crun/bin/crun", "SystemdCgroup": True}


@needs_tomllib
@pytest.mark.parametrize(("version", "containerd"), ALL_VERSIONS)
def test_template_toml_stays_valid_after_the_crun_runtime_of_k3s(
    version: str, containerd: int
) -> None:
    # TOML forbids defining a table twice: a runtime named "crun" would break k3s's config.
    tail = after_template_line(template_text(version))
    parsed = parse_toml(K3S_BASE_CRUN[containerd] + "\n" + tail)
    assert set(runtimes(parsed, containerd)) == {"crun", "crun-wasm"}
    with pytest.raises(tomllib.TOMLDecodeError):
        parse_toml(K3S_BASE_CRUN[containerd] + tail.replace("crun-wasm", "crun"))


# --- k3s config --------------------------------------------------------------------------------


def k3s(**kw: Any) -> K3s:
    fields: dict[str, Any] = {
        "version": "v1.30.4+k3s1",
        "config": {"write-kubeconfig-mode": "0644", "node-label": ["wasm=true", "zone=a"]},
    }
    fields.update(kw)
    return K3s.model_validate(fields)


def test_k3s_config_round_trips_with_token_file_and_server() -> None:
    want = k3s(role="agent", server="https://10.0.0.1:6443", tokenFile="/etc/wasm-edge/k3s-token")
    text = render.k3s_config(want).decode()
    assert text.startswith(render.MANAGED_HEADER)
    assert yaml.safe_load(text) == {
        "write-kubeconfig-mode": "0644",
        "node-label": ["wasm=true", "zone=a"],
        "token-file": "/etc/wasm-edge/k3s-token",
        "server": "https://10.0.0.1:6443",
    }


def test_k3s_config_never_holds_a_token_only_its_file(tmp_path: Path) -> None:
    secret = tmp_path / "token"
    secret.write_text("K10deadbeefcafe::server:s3cr3t\n")
    text = render.k3s_config(k3s(tokenFile=str(secret))).decode()
    loaded = yaml.safe_load(text)
    assert loaded["token-file"] == str(secret)
    assert "token" not in loaded
    assert "agent-token" not in loaded
    assert "s3cr3t" not in text


def test_k3s_config_without_settings_is_just_the_header() -> None:
    text = render.k3s_config(K3s.model_validate({"version": "v1.30.4+k3s1"})).decode()
    assert text == render.MANAGED_HEADER
    assert yaml.safe_load(text) is None


def test_k3s_config_keeps_a_quoted_mode_a_string() -> None:
    loaded = yaml.safe_load(render.k3s_config(k3s()))
    assert loaded["write-kubeconfig-mode"] == "0644"  # not the octal-looking int 644


# --- the systemd unit --------------------------------------------------------------------------


def service_section(unit: str) -> dict[str, list[str]]:
    section = ""
    found: dict[str, list[str]] = {}
    for line in unit.splitlines():
        if line.startswith("["):
            section = line
        elif section == "[Service]" and "=" in line:
            key, value = line.split("=", 1)
            found.setdefault(key, []).append(value)
    return found


@pytest.mark.parametrize(
    ("role", "name", "unit_type", "command"),
    [
        ("server", "k3s.service", "notify", "/usr/local/bin/k3s server"),
        ("agent", "k3s-agent.service", "exec", "/usr/local/bin/k3s agent"),
    ],
)
def test_k3s_unit_per_role(role: str, name: str, unit_type: str, command: str) -> None:
    assert render.k3s_unit_name(role) == name
    service = service_section(render.k3s_unit(role).decode())
    assert service["ExecStart"] == [command]
    assert service["Type"] == [unit_type]
    assert f"-/etc/systemd/system/{name}.env" in service["EnvironmentFile"]
    assert service["Delegate"] == ["yes"]
    assert service["KillMode"] == ["process"]


def test_k3s_unit_is_enabled_for_multi_user() -> None:
    unit = render.k3s_unit("server").decode()
    assert "[Install]\nWantedBy=multi-user.target\n" in unit


# --- RuntimeClasses ----------------------------------------------------------------------------


def test_runtimeclass_manifest_is_one_runtimeclass_per_class() -> None:
    classes = [
        RuntimeClass(name="crun-wasm", handler="crun-wasm", nodeSelector={"wasm": "true"}),
        RuntimeClass(name="wasmedge", handler="wasmedge"),
    ]
    text = render.runtimeclass_manifest(classes).decode()
    assert text.startswith(render.MANAGED_HEADER)
    docs = [d for d in yaml.safe_load_all(text) if d is not None]
    # agentd's own probe class comes last: crun-wasm without a node selector.
    assert [d["metadata"]["name"] for d in docs] == ["crun-wasm", "wasmedge", "agentd-wasm-probe"]
    assert docs[2]["handler"] == "crun-wasm"
    assert "scheduling" not in docs[2]
    for d in docs:
        assert d["apiVersion"] == "node.k8s.io/v1"
        assert d["kind"] == "RuntimeClass"
        assert d["metadata"]["labels"] == {"app.kubernetes.io/managed-by": "agentd"}
    assert docs[0]["handler"] == "crun-wasm"
    assert docs[0]["scheduling"] == {"nodeSelector": {"wasm": "true"}}
    assert docs[1]["handler"] == "wasmedge"
    assert "scheduling" not in docs[1]


def test_renderers_are_deterministic() -> None:
    classes = [
        RuntimeClass(name="crun-wasm", handler="crun-wasm", nodeSelector={"b": "1", "a": "2"})
    ]
    assert render.runtimeclass_manifest(classes) == render.runtimeclass_manifest(list(classes))
    assert render.k3s_config(k3s()) == render.k3s_config(k3s())
    assert render.containerd_template("v1.32.2+k3s1", CRUN) == render.containerd_template(
        "v1.32.2+k3s1", CRUN
    )
