"""Add-ons in the desired state: the guide's Gatekeeper settings refused at FILE:LINE:COL, and
the HelmChart agentd writes checked against helm-controller's own CRD schema."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from agentd.core.versions import imports_while_running
from agentd.desired.addons import (
    NO_GATEKEEPER_KIND,
    NO_WASM_VALIDATION,
    image_suffix,
    schema_problems,
)
from agentd.desired.gatekeeper_chart import (
    CONFIG_SPEC_SCHEMA,
    KINDS,
    TEMPLATE_SPEC_SCHEMA,
    TOP_LEVEL_VALUES,
)
from agentd.desired.model import Gatekeeper
from agentd.desired.validate import load_and_validate
from agentd.plan.addons import helmchart_manifest

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
SHA = "a" * 64

DOC = f"""\
apiVersion: agentd/v1
kind: NodeState
generation: 1
components:
  k3s:
    version: "v1.30.4+k3s1"
    role: ROLE
    server: https://10.0.0.1:6443
    artifacts:
      amd64: {{url: "https://mirror.example/k3s", sha256: "{SHA}"}}
addons:
  gatekeeper:
    version: "3.15.1"
    chart: {{url: "https://mirror.example/gatekeeper-3.15.1.tgz", sha256: "{SHA}"}}
    values:
      enableExternalData: true
VALUES
images:
  - name: gatekeeper
    artifacts:
      amd64: {{url: "IMAGE_URL", sha256: "{SHA}"}}
"""


def _errors(
    tmp_path: Path,
    role: str = "server",
    values: str = "",
    image: str = "https://mirror.example/gk.tar.zst",
) -> tuple[str, str, list[str]]:
    text = DOC.replace("ROLE", role).replace("VALUES\n", values).replace("IMAGE_URL", image)
    path = tmp_path / "desired.yaml"
    path.write_text(text)
    return str(path), text, load_and_validate([path], "amd64", merge_all=True).errors


def _at(text: str, needle: str, after: str = "") -> str:
    """`line:col` where `needle` starts, searching from the first `after`."""
    i = text.index(needle, text.index(after) if after else 0)
    return f"{text.count(chr(10), 0, i) + 1}:{i - (text.rfind(chr(10), 0, i) + 1) + 1}"


def test_the_guides_settings_validate_on_a_server(tmp_path: Path) -> None:
    assert _errors(tmp_path)[2] == []


def test_policy_engine_is_refused_with_what_gatekeeper_evaluates(tmp_path: Path) -> None:
    path, text, errors = _errors(tmp_path, values="      policyEngine: wasm\n")
    assert len(errors) == 1
    # At the value, as the k3s config's checks are.
    assert errors[0].startswith(f"{path}:{_at(text, 'wasm', after='policyEngine')}: ")
    assert "Rego" in errors[0]
    assert "K8sNativeValidation" in errors[0]


def test_an_unknown_value_names_the_close_real_ones(tmp_path: Path) -> None:
    path, text, errors = _errors(tmp_path, values="      enableExternaldata: true\n")
    assert errors == [
        f"{path}:{_at(text, 'true', after='enableExternaldata')}: Gatekeeper's chart has no value "
        "'enableExternaldata' (charts/gatekeeper/values.yaml of open-policy-agent/gatekeeper "
        "v3.15.1); did you mean enableExternalData?"
    ]


def test_addons_are_refused_on_an_agent_with_the_reason(tmp_path: Path) -> None:
    path, text, errors = _errors(tmp_path, role="agent")
    assert len(errors) == 1
    assert errors[0].startswith(f"{path}:{_at(text, 'gatekeeper:')}: ")
    assert "only on a server node" in errors[0]
    assert "components.k3s.role: agent" in errors[0]


def test_an_image_archive_needs_a_suffix_k3s_reads(tmp_path: Path) -> None:
    path, text, errors = _errors(tmp_path, image="https://mirror.example/gk.zip")
    assert len(errors) == 1
    where = _at(text, '"https://mirror.example/gk.zip"')
    assert errors[0].startswith(f"{path}:{where}: ")
    assert ".tar.zst" in errors[0]


def test_the_recorded_chart_keys_are_the_real_values_files() -> None:
    values = yaml.safe_load((FIXTURES / "gatekeeper" / "values-v3.15.1.yaml").read_text())
    assert tuple(values) == TOP_LEVEL_VALUES
    assert "policyEngine" not in values


def test_the_helmchart_matches_helm_controllers_crd() -> None:
    crd = yaml.safe_load((FIXTURES / "helm-controller" / "helmchart-crd.yaml").read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    schema = version["schema"]["openAPIV3Schema"]
    gatekeeper = Gatekeeper.model_validate(
        {
            "version": "3.15.1",
            "chart": {"url": "https://mirror.example/gk.tgz", "sha256": SHA},
            "values": {"enableExternalData": True, "auditInterval": 30},
        }
    )
    doc = yaml.safe_load(helmchart_manifest(gatekeeper))
    assert f"{crd['spec']['group']}/{version['name']}" == doc["apiVersion"]
    assert crd["spec"]["names"]["kind"] == doc["kind"]
    body = {k: v for k, v in doc.items() if k not in ("apiVersion", "kind", "metadata")}
    assert schema_problems(body, schema, ("HelmChart",)) == []
    assert yaml.safe_load(doc["spec"]["valuesContent"]) == gatekeeper.values
    # The check can fail: a field helm-controller does not have is found.
    (found,) = schema_problems({"spec": {"engine": "wasm"}}, schema, ("HelmChart",))
    assert found[0] == ("HelmChart", "spec", "engine")


def _reduced(schema: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"type": schema["type"]} if "type" in schema else {}
    if "properties" in schema:
        out["properties"] = {k: _reduced(v) for k, v in schema["properties"].items()}
    if "items" in schema:
        out["items"] = _reduced(schema["items"])
    return out


def test_the_recorded_config_schema_is_the_real_crds() -> None:
    crd = yaml.safe_load((FIXTURES / "gatekeeper" / "config-crd-v3.15.1.yaml").read_text())
    (version,) = crd["spec"]["versions"]
    spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert _reduced(spec) == CONFIG_SPEC_SCHEMA


def test_the_recorded_template_schema_and_kinds_are_the_real_crds() -> None:
    crd = yaml.safe_load(
        (FIXTURES / "gatekeeper" / "constrainttemplate-crd-v3.15.1.yaml").read_text()
    )
    (v1,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    assert _reduced(v1["schema"]["openAPIV3Schema"]["properties"]["spec"]) == TEMPLATE_SPEC_SCHEMA
    assert crd["spec"]["names"]["kind"] in KINDS
    assert "Gatekeeper" not in KINDS


POLICIES = (FIXTURES / "gatekeeper" / "policies" / "guide.yaml").read_text()


def _policies(text: str) -> str:
    """`text` (a YAML list at column 0) as addons.gatekeeper.policies."""
    body = "".join(f"      {line}\n" if line else "\n" for line in text.splitlines())
    return "    policies:\n" + body


def test_the_guides_policies_validate(tmp_path: Path) -> None:
    assert _errors(tmp_path, values=_policies(POLICIES))[2] == []


def test_policy_mistakes_are_refused_at_their_node(tmp_path: Path) -> None:
    text = POLICIES.replace("metadata: {name: k8swasmruntimeclass}", "metadata: {name: wasm}")
    text = text.replace("    enforcementAction: deny", "    action: deny")
    text += "- {apiVersion: gatekeeper.sh/v1, kind: Gatekeeper, metadata: {name: gk}, spec: {}}\n"
    path, doc, errors = _errors(tmp_path, values=_policies(text))
    assert errors == [
        f"{path}:{_at(doc, 'wasm}')}: a ConstraintTemplate's name is its kind in lowercase: "
        "'k8swasmruntimeclass', not 'wasm'",
        f"{path}:{_at(doc, 'deny')}: unknown field 'action' (known: match, enforcementAction, "
        "parameters)",
        f"{path}:{_at(doc, 'Gatekeeper,')}: {NO_GATEKEEPER_KIND}",
    ]


def test_a_constraint_needs_its_template(tmp_path: Path) -> None:
    # The first template only, and a Constraint of a kind no template defines.
    text = POLICIES.split("- apiVersion: constraints.gatekeeper.sh/v1beta1")[0]
    text += (
        "- {apiVersion: constraints.gatekeeper.sh/v1beta1, kind: K8sOther, metadata: {name: x}, "
        "spec: {}}\n"
    )
    path, doc, errors = _errors(tmp_path, values=_policies(text))
    assert errors == [
        f"{path}:{_at(doc, 'K8sOther')}: no ConstraintTemplate among the policies defines kind "
        "'K8sOther' (defined: K8sUntrustedRegistry)"
    ]


def test_the_guides_wasm_config_is_refused_with_what_config_has(tmp_path: Path) -> None:
    config = "    config:\n      validation:\n        - {name: policy, image: reg/policy-wasm:v1}\n"
    path, text, errors = _errors(tmp_path, values=config)
    assert errors == [f"{path}:{_at(text, '- {name')}: {NO_WASM_VALIDATION}"]
    path, text, errors = _errors(tmp_path, values="    config:\n      matches: []\n")
    assert errors == [
        f"{path}:{_at(text, '[]')}: unknown field 'matches' (did you mean 'match'? known: "
        "match, readiness, sync, validation)"
    ]


def test_the_guides_config_validates(tmp_path: Path) -> None:
    config = (
        "    config:\n      match:\n        - excludedNamespaces: [kube-system, kube-public]\n"
        '          processes: ["*"]\n'
    )
    assert _errors(tmp_path, values=config)[2] == []


def test_running_imports_start_with_the_january_2025_releases() -> None:
    assert not imports_while_running("v1.30.4+k3s1")
    assert imports_while_running("v1.30.9+k3s1")
    assert not imports_while_running("v1.31.4+k3s1")
    assert imports_while_running("v1.32.0+k3s1")
    assert imports_while_running("v1.33.1+k3s1")
    assert not imports_while_running(None)


@pytest.mark.parametrize(
    ("url", "suffix"),
    [
        ("https://m.example/gk.tar", ".tar"),
        ("https://m.example/gk.tar.zst?sig=1", ".tar.zst"),
        ("https://m.example/gk.TZST", ".TZST"),
        ("https://m.example/gk.tar.lz4#x", ".tar.lz4"),
        ("https://m.example/gk.tbz", ".tbz"),
        ("https://m.example/gk.tgz", ".tgz"),
        ("https://m.example/gk.tar.xz", None),  # wharfie has no xz reader
        ("https://m.example/gk.txt", None),  # a pre-pull list, not an archive
    ],
)
def test_image_suffixes_are_the_ones_k3s_reads(url: str, suffix: str | None) -> None:
    assert image_suffix(url) == suffix
