"""Cluster add-ons in the plan: Gatekeeper's HelmChart and chart, airgap images, registries.yaml."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Optional

import yaml

from agentd.core.components import IMAGE_PREFIX
from agentd.core.paths import (
    GATEKEEPER_CHART,
    GATEKEEPER_MANIFEST,
    GATEKEEPER_NAMESPACE,
    GATEKEEPER_POLICIES,
    K3S_IMAGES_DIR,
    K3S_REGISTRIES,
    K3S_STATIC_CHARTS,
)
from agentd.core.versions import imports_while_running
from agentd.desired.addons import Registries, image_suffix, registries_document
from agentd.desired.model import Artifact, DesiredState, Gatekeeper
from agentd.plan.draft import ConfigContents, Draft
from agentd.plan.k3s_files import configure
from agentd.plan.model import Action
from agentd.plan.render import MANAGED_HEADER
from agentd.state.inventory import InventoryEntry

# Where k3s serves static/charts from, as helm-controller's chart URLs name it.
CHART_URL_PREFIX = "https://%{KUBERNETES_API}%/static/charts/"
REMOVED_ADDON = (
    "k3s does not uninstall an add-on whose manifest file goes: its deploy controller leaves "
    "the HelmChart object in the cluster; `k3s kubectl delete helmchart -n kube-system "
    "gatekeeper` uninstalls it (helm-controller's remove handler runs the helm-delete-gatekeeper "
    "job)"
)


REMOVED_POLICIES = (
    "k3s leaves the objects of a removed manifest file in the cluster: `k3s kubectl delete "
    "constrainttemplates -l app.kubernetes.io/managed-by=agentd` removes them"
)


def _written(
    inventory: Mapping[str, InventoryEntry], configs: ConfigContents, component: str
) -> bool:
    """Whether agentd wrote `component`'s file and it is still there."""
    recorded = inventory.get(component)
    return recorded is not None and any(configs.get(f) is not None for f in recorded.files)


def helmchart_manifest(gatekeeper: Gatekeeper) -> bytes:
    """The HelmChart (helm.cattle.io/v1) that k3s's helm-controller installs Gatekeeper from,
    with the chart k3s serves from static/charts: no outside network needed."""
    spec: dict[str, Any] = {
        "chart": CHART_URL_PREFIX + GATEKEEPER_CHART.rsplit("/", 1)[1],
        "version": gatekeeper.version,
        "targetNamespace": GATEKEEPER_NAMESPACE,
        "createNamespace": True,
    }
    if gatekeeper.values:
        spec["valuesContent"] = yaml.safe_dump(gatekeeper.values, sort_keys=True)
    doc = {
        "apiVersion": "helm.cattle.io/v1",
        "kind": "HelmChart",
        "metadata": {
            "name": "gatekeeper",
            "namespace": "kube-system",
            "labels": {"app.kubernetes.io/managed-by": "agentd"},
        },
        "spec": spec,
    }
    return (MANAGED_HEADER + yaml.safe_dump(doc, sort_keys=False)).encode()


def policies_manifest(gatekeeper: Gatekeeper) -> Optional[bytes]:
    """Gatekeeper's Config and the ConstraintTemplates and Constraints, labelled as agentd's, as
    one manifest file (None: none of them); k3s applies it as it changes (and again, after
    failing, once Gatekeeper's CRDs exist)."""
    policies = list(gatekeeper.policies)
    if gatekeeper.config is not None:
        # Gatekeeper reads the one Config named "config" in its namespace (pkg/keys/config.go).
        config = {
            "apiVersion": "config.gatekeeper.sh/v1alpha1",
            "kind": "Config",
            "metadata": {"name": "config", "namespace": GATEKEEPER_NAMESPACE},
            "spec": gatekeeper.config,
        }
        policies.insert(0, config)
    if not policies:
        return None
    docs = []
    for policy in policies:
        doc = dict(policy)
        metadata = dict(doc.get("metadata") or {})
        metadata["labels"] = {
            **(metadata.get("labels") or {}),
            "app.kubernetes.io/managed-by": "agentd",
        }
        doc["metadata"] = metadata
        docs.append(yaml.safe_dump(doc, sort_keys=False))
    return (MANAGED_HEADER + "---\n".join(docs)).encode()


def registries_yaml(registries: Registries) -> bytes:
    text = yaml.safe_dump(registries_document(registries), sort_keys=True)
    return (MANAGED_HEADER + text).encode()


def _place(
    b: Draft,
    component: str,
    artifact: Artifact,
    target: str,
    version: Optional[str],
    recorded: Optional[InventoryEntry],
    what: str,
    note: str = "",
) -> None:
    """A verified file put at `target` (the fetch checks its sha256), unless it is there."""
    same = recorded is not None and recorded.sha256 == artifact.sha256
    if same and recorded is not None and recorded.files == [target] and component not in b.force:
        b.keep(component, f"{target} is {what} (sha256 {artifact.sha256[:12]})")
        return
    if component in b.force:
        reason = f"{b.force[component]}; placing {what} at {target} again"
    elif recorded is None:
        reason = f"placing {what} at {target}"
    else:
        reason = f"{target} is not {what} (sha256 {artifact.sha256[:12]}); replacing it"
    b.act(
        Action(
            component,
            "install",
            reason + note,
            from_version=recorded.version if recorded else None,
            to_version=version,
            artifact=artifact,
            target=target,
            phase="k3s",
        )
    )


def _remove(b: Draft, component: str, recorded: InventoryEntry, why: str) -> None:
    files = ", ".join(recorded.files) or "nothing"
    b.act(Action(component, "remove", f"{why}; removing {files}", phase="k3s"))


def plan_addons(
    b: Draft,
    desired: DesiredState,
    k3s_version: Optional[str],
    configs: ConfigContents,
    inventory: Mapping[str, InventoryEntry],
) -> None:
    k3s = desired.components.k3s
    managed = k3s is not None and k3s.state == "present"
    server = managed and k3s is not None and k3s.role == "server"
    gatekeeper = desired.addons.gatekeeper if desired.addons is not None else None
    chart_recorded = inventory.get("addons/gatekeeper/chart")
    if server and gatekeeper is not None:
        _place(
            b,
            "addons/gatekeeper/chart",
            gatekeeper.chart,
            GATEKEEPER_CHART,
            gatekeeper.version,
            chart_recorded,
            f"Gatekeeper's chart {gatekeeper.version}",
        )
        content = helmchart_manifest(gatekeeper)
        configure(
            b,
            "addons/gatekeeper",
            GATEKEEPER_MANIFEST,
            content,
            configs,
            inventory,
            f"the HelmChart of Gatekeeper {gatekeeper.version}",
        )
        policies = policies_manifest(gatekeeper)
        if policies is not None or _written(inventory, configs, "addons/gatekeeper/policies"):
            configure(
                b,
                "addons/gatekeeper/policies",
                GATEKEEPER_POLICIES,
                policies,
                configs,
                inventory,
                "Gatekeeper's Config, ConstraintTemplates and Constraints"
                if policies is not None
                else f"Gatekeeper's policies ({REMOVED_POLICIES})",
            )
    elif gatekeeper is not None:
        where = "this node is a k3s agent" if managed else "k3s is not managed here"
        b.keep(
            "addons/gatekeeper",
            f"add-ons are cluster objects that only a k3s server writes ({K3S_STATIC_CHARTS} "
            f"and the manifests directory); {where}",
        )
    elif managed:
        # Only what agentd wrote (its inventory names it) is taken away again.
        if _written(inventory, configs, "addons/gatekeeper/policies"):
            configure(
                b,
                "addons/gatekeeper/policies",
                GATEKEEPER_POLICIES,
                None,
                configs,
                inventory,
                f"Gatekeeper's policies ({REMOVED_POLICIES})",
            )
        if _written(inventory, configs, "addons/gatekeeper"):
            configure(
                b,
                "addons/gatekeeper",
                GATEKEEPER_MANIFEST,
                None,
                configs,
                inventory,
                f"Gatekeeper (addons.gatekeeper is gone; {REMOVED_ADDON})",
            )
        if chart_recorded is not None:
            _remove(b, "addons/gatekeeper/chart", chart_recorded, "Gatekeeper is no longer wanted")
    if managed:
        _plan_images(b, desired, k3s_version, inventory)
        _plan_registries(b, desired, configs, inventory)
    else:
        for image in desired.images:
            b.keep(IMAGE_PREFIX + image.name, "k3s is not managed here: no image archive placed")


def _plan_images(
    b: Draft,
    desired: DesiredState,
    k3s_version: Optional[str],
    inventory: Mapping[str, InventoryEntry],
) -> None:
    note = ""
    if not imports_while_running(k3s_version):
        note = (
            f" (k3s {k3s_version or 'of unknown version'} imports {K3S_IMAGES_DIR} at start "
            "only: running imports came in v1.29.13, v1.30.9, v1.31.5 and v1.32.0; the image is "
            "imported at k3s's next start)"
        )
    named = set()
    for image in desired.images:
        component = IMAGE_PREFIX + image.name
        named.add(component)
        artifact = image.artifacts.get(b.arch)  # type: ignore[call-overload]
        if artifact is None:
            b.keep(component, f"no {b.arch} archive in the desired state (validate says so)")
            continue
        target = f"{K3S_IMAGES_DIR}/{image.name}{image_suffix(artifact.url) or '.tar'}"
        _place(
            b,
            component,
            artifact,
            target,
            None,
            inventory.get(component),
            f"the image archive {image.name}",
            note,
        )
    for component, recorded in sorted(inventory.items()):
        if component.startswith(IMAGE_PREFIX) and component not in named:
            # containerd keeps what it imported: taking the archive away stops a reimport only.
            _remove(
                b,
                component,
                recorded,
                f"{component} is no longer in the desired state (containerd keeps the images "
                "it imported)",
            )


def _plan_registries(
    b: Draft,
    desired: DesiredState,
    configs: ConfigContents,
    inventory: Mapping[str, InventoryEntry],
) -> None:
    k3s = desired.components.k3s
    registries = k3s.registries if k3s is not None else None
    if registries is not None:
        content: Optional[bytes] = registries_yaml(registries)
    elif _written(inventory, configs, "k3s/registries"):
        content = None  # agentd wrote it and it is no longer wanted
    else:
        return  # neither wanted nor written by agentd: nothing to say
    configure(
        b, "k3s/registries", K3S_REGISTRIES, content, configs, inventory, "k3s's registries.yaml"
    )
