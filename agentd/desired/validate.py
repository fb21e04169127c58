"""The desired state validated: schema and real-world checks, each file cut to this node first."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from agentd.core.errors import DesiredStateError
from agentd.core.generation import shown
from agentd.desired.identity import NodeIdentity
from agentd.desired.model import DesiredState, sanity_problems
from agentd.desired.onnode import OnNode, node_problems
from agentd.desired.targeting import Targeting, apply_targeting
from agentd.schema.validation import check_schema, format_problems
from agentd.schema.yamlload import Loaded, Pos, load_file, locate, merge


@dataclass
class ValidationReport:
    """Errors and warnings as `FILE:LINE:COL: message`; `state` only when there are no errors."""

    state: Optional[DesiredState]
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    targeting: list[Targeting] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


def validate(
    loaded: Loaded, arch: Optional[str], on_node: Optional[OnNode] = None
) -> ValidationReport:
    """Schema, then (if the schema holds) the checks that know k3s, crun, WasmEdge and `arch`,
    and with `on_node` those that read the node (its files, what agentd installed)."""
    warnings: list[tuple[Pos, str]] = []
    state, errors = check_schema(DesiredState, loaded)
    if state is not None:
        problems = sanity_problems(state, arch)
        if on_node is not None:
            problems += node_problems(state, on_node, arch)
        for problem in problems:
            found = warnings if problem.severity == "warning" else errors
            found.append((locate(loaded, problem.loc), problem.message))
    return ValidationReport(
        state=None if errors else state,
        errors=format_problems(errors),
        warnings=format_problems(warnings, "warning: "),
    )


def _remote_local_files(loaded: Loaded, remote: Collection[str]) -> list[tuple[Pos, str]]:
    """Every file:// artifact URL whose value comes from a `remote` file (the fleet's)."""
    found: list[tuple[Pos, str]] = []

    def walk(loc: tuple[Any, ...], value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk((*loc, k), v)
        elif isinstance(value, list):
            for i, v in enumerate(value):
                walk((*loc, i), v)
        elif (
            loc[-3:-2] == ("artifacts",)
            and loc[-1] == "url"
            and isinstance(value, str)
            and value.lower().startswith("file:")
        ):
            pos = locate(loaded, loc)
            if pos.file in remote:
                message = (
                    "a file:// artifact is accepted from this node's own files only "
                    "(desired.yaml, desired.d/), not from the fleet document; set "
                    "downloads.allowLocalFiles: true in agentd.yaml to allow it"
                )
                found.append((pos, message))

    walk((), loaded.data)
    return found


def load_and_validate(
    paths: Sequence[Path],
    arch: Optional[str],
    merge_all: bool,
    names: Optional[Mapping[Path, str]] = None,
    node: Optional[NodeIdentity] = None,
    on_node: Optional[OnNode] = None,
    remote: Collection[str] = (),
) -> ValidationReport:
    """Each file loaded, then validated merged (in order) or one by one.

    With `node`, each file is first cut to what applies to that node (its selector, its
    overrides and rollout waves). Load errors are reported like validation errors. `state` is
    the merged document's, or without merging the last file's, and only when nothing is wrong.
    A file:// artifact whose URL comes from a file named in `remote` is an error.
    """
    docs: list[Loaded] = []
    load_errors: list[str] = []
    targeting: list[Targeting] = []
    for path in paths:
        name = (names or {}).get(path)
        try:
            doc = load_file(path, name)
        except DesiredStateError as exc:
            load_errors.extend(exc.problems or [str(exc)])
            continue
        if merge_all and len(paths) > 1 and not isinstance(doc.data, dict):
            # Merged, a later file's mapping would replace it whole, and its error with it.
            kinds = {list: "a list", str: "a string", bool: "a boolean"}
            kind = kinds.get(type(doc.data), "a number")
            load_errors.append(f"{name or path}:1:1: expected a mapping, got {kind}")
            continue
        if node is not None:
            doc, notes = apply_targeting(doc, node, name or str(path))
            targeting += notes
        docs.append(doc)
    if not paths:
        load_errors.append("no desired-state file given")
    if merge_all:
        if load_errors:
            return ValidationReport(None, load_errors)
        merged = docs[0]
        ignored: list[tuple[Pos, str]] = []
        for doc in docs[1:]:
            merged = merge(merged, _without_generation(doc, docs[0], ignored))
        report = validate(merged, arch, on_node)
        report.warnings = format_problems(ignored, "warning: ") + report.warnings
        refused = format_problems(_remote_local_files(merged, remote)) if remote else []
        if refused:
            report.errors += refused
            report.state = None
        report.targeting = targeting
        return report
    report = ValidationReport(None, load_errors)
    for doc in docs:
        one = validate(doc, arch, on_node)
        report.errors.extend(one.errors)
        report.warnings.extend(one.warnings)
        report.state = one.state
    if report.errors:
        report.state = None
    return report


def _without_generation(doc: Loaded, base: Loaded, ignored: list[tuple[Pos, str]]) -> Loaded:
    """`doc` without its `generation`: only the first source (the fleet document, else
    desired.yaml) sets the merged one, so removing a drop-in never strands the ratchet."""
    data = doc.data
    if not isinstance(data, dict) or "generation" not in data:
        return doc
    first = base.data.get("generation") if isinstance(base.data, dict) else None
    if data["generation"] != first:
        ignored.append(
            (
                locate(doc, ("generation",)),
                f"generation {_shown(data['generation'])} is ignored: only the first source "
                f"(the fleet document, else desired.yaml) sets the generation ({_shown(first)})",
            )
        )
    rest = {k: v for k, v in data.items() if k != "generation"}
    return Loaded(rest, doc.positions, doc.keys)


def _shown(value: object) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return shown(value)
    return "none" if value is None else f"of type {type(value).__name__}"
