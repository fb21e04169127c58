"""Which files make the desired state, loading them, and judging a pulled fleet document."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from agentd.core.errors import DesiredStateError, NoDesiredState
from agentd.desired.identity import NodeIdentity
from agentd.sources.store import FleetStore, fleet_document
from agentd.system.host import Host

if TYPE_CHECKING:
    from agentd.desired.model import DesiredState
    from agentd.desired.onnode import OnNode
    from agentd.desired.targeting import Targeting
    from agentd.desired.validate import ValidationReport

# pydantic and yaml are imported only when a document is really loaded: an unchanged node
# answers from the no-op digest, which needs only the files' names.


@dataclass
class Sources:
    """The files that make the desired state, in merge order (later wins), and their names."""

    files: list[Path]
    names: dict[Path, str] = field(default_factory=dict)
    fleet: Optional[dict[str, Any]] = None  # the pulled document's record, when one is used

    def shown(self) -> list[str]:
        return [self.names.get(p, str(p)) for p in self.files]

    def remote(self, node: Optional[NodeIdentity] = None) -> frozenset[str]:
        """The names of the files that are not the node's own (the fleet document, always
        first), whose file:// artifacts are refused unless `node` allows them."""
        if self.fleet is None or not self.files or (node is not None and node.allow_local_files):
            return frozenset()
        return frozenset({self.names.get(self.files[0], str(self.files[0]))})


def local_sources(host: Host) -> list[Path]:
    """The node's own files: desired.yaml, then desired.d/*.yaml in alphabetical order."""
    paths = host.paths
    # Whatever is there, a regular file or not: what is not is refused by name when it is read,
    # never passed over (a FIFO or a broken link in place of desired.yaml is not "no file").
    files = [paths.desired_file] if os.path.lexists(paths.desired_file) else []
    if paths.desired_dir.is_dir():
        files += sorted(paths.desired_dir.glob("*.yaml"))
    return files


def desired_sources(
    host: Host, desired_file: Optional[Path], fleet_file: Optional[Path] = None
) -> Sources:
    """`--desired FILE` alone, else the last good fleet document (or `fleet_file`) and then the
    node's own files."""
    if desired_file is not None:
        return Sources([desired_file])
    paths = host.paths
    view = fleet_document(paths)
    files: list[Path] = []
    names: dict[Path, str] = {}
    fleet = None
    if fleet_file is not None:
        store = FleetStore(paths)
        record = store.candidate_record()
        files.append(fleet_file)
        names[fleet_file] = f"{record.get('display', 'fleet document')} (new)"
        fleet = {**record, "candidate": True}
    elif view.path is not None:
        files.append(view.path)
        names[view.path] = view.display
        fleet = view.record
    files += local_sources(host)
    if not files:
        raise NoDesiredState(
            f"no desired state: neither {paths.host_view(paths.desired_file)} nor "
            f"{paths.host_view(paths.desired_dir)}/*.yaml exists, no fleet document has been "
            "pulled (pass --desired FILE, or set a source in "
            f"{paths.host_view(paths.settings_file)})"
        )
    return Sources(files, names, fleet)


def desired_sources_or_none(host: Host) -> Optional[Sources]:
    try:
        return desired_sources(host, None)
    except DesiredStateError:
        return None


@dataclass
class Loaded:
    desired: DesiredState
    sources: list[str]
    warnings: list[str] = field(default_factory=list)
    targeting: list[Targeting] = field(default_factory=list)


def load_desired(
    sources: Sources,
    arch: str,
    node: Optional[NodeIdentity] = None,
    on_node: Optional[OnNode] = None,
) -> Loaded:
    from agentd.desired.validate import load_and_validate  # noqa: PLC0415

    report = load_and_validate(
        sources.files,
        arch,
        merge_all=True,
        names=sources.names,
        node=node,
        on_node=on_node,
        remote=sources.remote(node),
    )
    if report.errors or report.state is None:
        n = len(report.errors)
        raise DesiredStateError(
            f"the desired state is invalid ({n} error{'s' * (n != 1)})", report.errors
        )
    return Loaded(report.state, sources.shown(), report.warnings, report.targeting)


def without_urls(value: Any) -> Any:
    """`value` (desired-state JSON) with every artifact URL replaced by its redacted form."""
    from agentd.core.redact import redact_url  # noqa: PLC0415

    if isinstance(value, dict):
        return {
            k: redact_url(v) if k == "url" and isinstance(v, str) else without_urls(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [without_urls(v) for v in value]
    return value


def settle_candidate(host: Host, node: NodeIdentity, *, promote: bool) -> Optional[Path]:
    """Judge a pulled fleet document waiting in the state dir, merged with the node's files and
    cut to `node` (the overrides that target it apply), as a plan would load it.

    Valid: it is promoted to the last good document (or, without `promote`, its path is
    returned for a plan to show). Invalid where the last good one is not: rejected, with the
    reason kept for `status`. When the node's own files are what is broken, it waits.
    """
    store = FleetStore(host.paths)
    if not store.candidate.is_file():
        return None
    with_new = desired_sources(host, None, fleet_file=store.candidate)
    report = _judged(with_new, node)
    if report.ok:
        if not promote:
            return store.candidate
        record = store.promote()
        _log().info(
            "fleet document accepted",
            component="source",
            action="accept",
            generation=record.get("generation"),
            origin=record.get("origin"),
        )
        return None
    current = desired_sources_or_none(host)
    if current is not None and not _judged(current, node).ok:
        return None  # the node's own files are broken: the new document is not to blame
    if promote:
        reason = "invalid with this node's files: " + "; ".join(report.errors[:3])
        record = store.reject_candidate(reason)
        _log().error(
            "fleet document rejected",
            component="source",
            action="reject",
            generation=record.get("generation"),
            error=reason,
        )
    return None


def _judged(sources: Sources, node: NodeIdentity) -> ValidationReport:
    from agentd.desired.validate import load_and_validate  # noqa: PLC0415

    return load_and_validate(
        sources.files,
        node.arch,
        merge_all=True,
        names=sources.names,
        node=node,
        remote=sources.remote(node),
    )


def _log() -> Any:
    from agentd.system.log import get_logger  # noqa: PLC0415

    return get_logger()
