"""Cluster add-ons in the desired state: Gatekeeper's chart, airgap images, k3s's registries."""

from __future__ import annotations

import difflib
from typing import Any, Literal, Optional

from pydantic import Field

from agentd.core.paths import IMAGE_SUFFIXES
from agentd.desired.gatekeeper_chart import (
    ADMISSION_TARGET,
    CHART_SOURCE,
    CONFIG_SPEC_SCHEMA,
    KINDS,
    TEMPLATE_SPEC_SCHEMA,
    TOP_LEVEL_VALUES,
)
from agentd.schema.types import StrictModel
from agentd.schema.yamlload import TEXT_MARKER, Loc

NO_POLICY_ENGINE = (
    "Gatekeeper's chart has no policyEngine value (nor any Wasm engine): Gatekeeper evaluates "
    "Rego with its OPA driver, and CEL through the K8sNativeValidation engine of a "
    "ConstraintTemplate's code, which 3.15 enables with the controller's "
    "--experimental-enable-k8s-native-validation flag (main.go), not a chart value; "
    "remove policyEngine"
)


Severity = Literal["error", "warning"]
# Where, what, and how bad.
AddonProblem = tuple[Loc, str, Severity]


class RegistryMirror(StrictModel):
    """A mirrors.REGISTRY entry of k3s's registries.yaml (docs.k3s.io: private-registry)."""

    endpoint: list[str] = Field(default_factory=list)
    rewrite: dict[str, str] = Field(default_factory=dict)


class RegistryAuth(StrictModel):
    username: Optional[str] = None
    password: Optional[str] = None
    auth: Optional[str] = None
    token: Optional[str] = None


class RegistryTLS(StrictModel):
    cert_file: Optional[str] = None
    key_file: Optional[str] = None
    ca_file: Optional[str] = None
    insecure_skip_verify: Optional[bool] = None


class RegistryConfig(StrictModel):
    auth: Optional[RegistryAuth] = None
    tls: Optional[RegistryTLS] = None


class Registries(StrictModel):
    """/etc/rancher/k3s/registries.yaml, which k3s reads at start."""

    mirrors: dict[str, RegistryMirror] = Field(default_factory=dict)
    configs: dict[str, RegistryConfig] = Field(default_factory=dict)


NO_WASM_VALIDATION = (
    "a Gatekeeper Config's validation is an object, {traces: [{user, kind, dump}]}, which "
    "traces requests; it lists no Wasm modules (Gatekeeper 3.15 has no Wasm engine: policies "
    "are ConstraintTemplates in Rego, or CEL with the K8sNativeValidation engine)"
)
_TYPES = {"string": str, "boolean": bool, "object": dict, "array": list, "integer": int}


def schema_problems(value: Any, schema: dict[str, Any], loc: Loc) -> list[tuple[Loc, str]]:
    """`value` against a structural CRD schema (types and field names; the API server prunes
    unknown fields silently, so they are refused here with the fields there are)."""
    wanted = schema.get("type")
    if wanted and not isinstance(value, _TYPES[wanted]):
        if loc[-1:] == ("validation",) and isinstance(value, list):
            return [(loc, NO_WASM_VALIDATION)]
        return [(loc, f"must be {'an' if wanted[0] in 'ao' else 'a'} {wanted}")]
    out: list[tuple[Loc, str]] = []
    fields = schema.get("properties")
    if isinstance(value, dict) and fields is not None:
        for key, item in value.items():
            if key in fields:
                out += schema_problems(item, fields[key], (*loc, key))
                continue
            close = difflib.get_close_matches(str(key), list(fields), n=1, cutoff=0.6)
            hint = f"did you mean {close[0]!r}? " if close else ""
            out.append(((*loc, key), f"unknown field {key!r} ({hint}known: {', '.join(fields)})"))
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            out += schema_problems(item, schema["items"], (*loc, i))
    return out


NO_GATEKEEPER_KIND = (
    "Gatekeeper has no resource named Gatekeeper (`kubectl get gatekeeper -A` finds nothing): "
    f"its chart's kinds are {', '.join(KINDS)}; see it running with `k3s kubectl get pods -n "
    "gatekeeper-system` and its policies with `k3s kubectl get constrainttemplates`"
)
TEMPLATE_VERSIONS = ("templates.gatekeeper.sh/v1", "templates.gatekeeper.sh/v1beta1")
CONSTRAINT_GROUP = "constraints.gatekeeper.sh/"
# A Constraint's spec as Gatekeeper generates its CRD from the template (frameworks'
# pkg/client/crds/schema.go, vendored in v3.15.1): the parameters are the template's schema.
CONSTRAINT_FIELDS = ("match", "enforcementAction", "parameters")


def _template_problems(
    m: dict[str, Any], loc: Loc, modules: list[tuple[Loc, str, bool]]
) -> tuple[Optional[str], list[tuple[Loc, str]]]:
    """A ConstraintTemplate's problems, and the Constraint kind it defines; its Rego (where it
    is, the text, whether it is the rego or a lib) is added to `modules`."""
    out = schema_problems(m.get("spec"), TEMPLATE_SPEC_SCHEMA, (*loc, "spec"))
    if out:
        return None, out
    spec = m["spec"]
    kind = spec.get("crd", {}).get("spec", {}).get("names", {}).get("kind")
    if not isinstance(kind, str) or not kind:
        return None, [((*loc, "spec"), "a ConstraintTemplate needs spec.crd.spec.names.kind")]
    name = m.get("metadata", {}).get("name")
    if name != kind.lower():
        # Gatekeeper refuses it (frameworks' client.go): the name is the kind in lowercase.
        out.append(
            (
                (*loc, "metadata", "name"),
                f"a ConstraintTemplate's name is its kind in "
                f"lowercase: {kind.lower()!r}, not {name!r}",
            )
        )
    for j, target in enumerate(spec.get("targets", [])):
        at: Loc = (*loc, "spec", "targets", j)
        if target.get("target") != ADMISSION_TARGET:
            out.append((at, f"target must be {ADMISSION_TARGET!r}, the one Gatekeeper serves"))
        if not target.get("rego") and not target.get("code"):
            out.append((at, "a target needs its policy: rego, or code (engine and source)"))
        if isinstance(target.get("rego"), str):
            modules.append(((*at, "rego"), target["rego"], True))
        for k, lib in enumerate(target.get("libs") or []):
            modules.append(((*at, "libs", k), lib, False))
    if not spec.get("targets"):
        out.append(((*loc, "spec"), "a ConstraintTemplate needs spec.targets"))
    return kind, out


def _rego_problems(modules: list[tuple[Loc, str, bool]], base: Loc) -> list[AddonProblem]:
    """The templates' Rego parsed (regopy, imported in a child process only when there is Rego
    to parse); a warning, once, when it cannot be."""
    if not modules:
        return []
    from agentd.desired.rego import module_problems  # noqa: PLC0415

    parsed = module_problems([(source, entry) for _, source, entry in modules])
    out: list[AddonProblem] = []
    for (at, _, _), problems in zip(modules, parsed.problems):
        for p in problems:
            if p.line:
                where = f"line {p.line}, column {p.col}: "
                out.append(((*at, TEXT_MARKER, p.line, p.col), where + p.message, "error"))
            else:
                out.append((at, p.message, "error"))
    if parsed.not_parsed is not None:
        out.append((base, f"the policies' Rego was not parsed: {parsed.not_parsed}", "warning"))
    return out


def policy_problems(policies: list[Any], base: Loc) -> list[AddonProblem]:
    """ConstraintTemplates and Constraints checked against Gatekeeper's CRDs, and the templates'
    Rego parsed as Gatekeeper's OPA would."""
    out: list[tuple[Loc, str]] = []
    modules: list[tuple[Loc, str, bool]] = []
    kinds: set[str] = set()
    constraints: list[tuple[Loc, dict[str, Any]]] = []
    for i, m in enumerate(policies):
        loc: Loc = (*base, i)
        if not isinstance(m, dict) or not isinstance(m.get("spec"), dict):
            out.append((loc, "a policy is a manifest: apiVersion, kind, metadata.name, spec"))
            continue
        name = m.get("metadata", {}).get("name") if isinstance(m.get("metadata"), dict) else None
        if not isinstance(name, str) or not name:
            out.append((loc, "a policy needs metadata.name"))
            continue
        api, kind = m.get("apiVersion"), m.get("kind")
        if kind == "Gatekeeper":
            out.append(((*loc, "kind"), NO_GATEKEEPER_KIND))
        elif kind == "ConstraintTemplate" and api in TEMPLATE_VERSIONS:
            defined, found = _template_problems(m, loc, modules)
            out += found
            if defined:
                kinds.add(defined)
        elif isinstance(api, str) and api.startswith(CONSTRAINT_GROUP):
            constraints.append((loc, m))
        else:
            out.append(
                (
                    (*loc, "kind"),
                    f"policies are ConstraintTemplates ({TEMPLATE_VERSIONS[0]}) and their "
                    f"Constraints ({CONSTRAINT_GROUP}v1beta1), not {api} {kind}",
                )
            )
    for loc, m in constraints:
        if m.get("kind") not in kinds:
            out.append(
                (
                    (*loc, "kind"),
                    f"no ConstraintTemplate among the policies defines kind {m.get('kind')!r} "
                    f"(defined: {', '.join(sorted(kinds)) or 'none'})",
                )
            )
        for key in m["spec"]:
            if key not in CONSTRAINT_FIELDS:
                out.append(
                    (
                        (*loc, "spec", key),
                        f"unknown field {key!r} (known: {', '.join(CONSTRAINT_FIELDS)})",
                    )
                )
    errors: list[AddonProblem] = [(at, message, "error") for at, message in out]
    return errors + _rego_problems(modules, base)


def registries_document(registries: Registries) -> dict[str, Any]:
    return registries.model_dump(exclude_none=True, exclude_defaults=True)


def image_suffix(url: str) -> Optional[str]:
    """The archive suffix k3s needs to see (.tar.zst before .tar), as the URL spells it; None if
    it is none of them."""
    path = url.split("?", 1)[0].split("#", 1)[0]
    found = [path[-len(s) :] for s in IMAGE_SUFFIXES if path.lower().endswith(s)]
    return max(found, key=len) if found else None


def addon_problems(doc: Any, arch: Optional[str]) -> list[tuple[Loc, str, Severity]]:
    """What is valid schema but not a working add-on: (where, message, severity). `arch`: this
    node's, when validating for one."""
    out: list[tuple[Loc, str, Severity]] = []
    k3s = doc.components.k3s
    role = k3s.role if k3s is not None and k3s.state == "present" else None
    gatekeeper = doc.addons.gatekeeper if doc.addons is not None else None
    if gatekeeper is not None:
        if role == "agent":
            out.append(
                (
                    ("addons",),
                    "add-ons are cluster objects: k3s applies the manifests directory and serves "
                    "static/charts only on a server node, and this document makes the node a k3s "
                    "agent (components.k3s.role: agent); give add-ons to the servers only",
                    "error",
                )
            )
        for key in gatekeeper.values:
            at: Loc = ("addons", "gatekeeper", "values", key)
            if key == "policyEngine":
                out.append((at, NO_POLICY_ENGINE, "error"))
            elif key not in TOP_LEVEL_VALUES:
                close = difflib.get_close_matches(key, TOP_LEVEL_VALUES, n=3, cutoff=0.6)
                hint = f"; did you mean {', '.join(close)}?" if close else ""
                out.append(
                    (
                        at,
                        f"Gatekeeper's chart has no value {key!r} ({CHART_SOURCE}){hint}",
                        "error",
                    )
                )
    if gatekeeper is not None and gatekeeper.config is not None:
        base: Loc = ("addons", "gatekeeper", "config")
        found = schema_problems(gatekeeper.config, CONFIG_SPEC_SCHEMA, base)
        out += [(at, message, "error") for at, message in found]
    if gatekeeper is not None:
        base = ("addons", "gatekeeper", "policies")
        out += policy_problems(gatekeeper.policies, base)
    for i, image in enumerate(doc.images):
        if arch is not None and arch not in image.artifacts:
            out.append(
                (
                    ("images", i, "artifacts"),
                    f"no {arch} artifact for image {image.name}, and this node is {arch}",
                    "error",
                )
            )
        for name, artifact in image.artifacts.items():
            if image_suffix(artifact.url) is None:
                out.append(
                    (
                        ("images", i, "artifacts", name, "url"),
                        f"an image archive for k3s ends in {', '.join(IMAGE_SUFFIXES)}: agentd "
                        "names the file after the URL's suffix, which is how k3s knows how to "
                        "read it",
                        "error",
                    )
                )
    names = [image.name for image in doc.images]
    for i, name in enumerate(names):
        if name in names[:i]:
            out.append((("images", i, "name"), f"duplicate image {name!r}", "error"))
    return out
