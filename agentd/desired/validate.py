"""The desired state validated: schema and real-world checks, each file cut to this node first."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from agentd.core.errors import DesiredStateError
from agentd.desired.identity import NodeIdentity
from agentd.desired.model import DesiredState, sanity_problems
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


def validate(loaded: Loaded, arch: Optional[str]) -> ValidationReport:
    """Schema, then (if the schema holds) the checks that know k3s, crun, WasmEdge and `arch`."""
    warnings: list[tuple[Pos, str]] = []
    state, errors = check_schema(DesiredState, loaded)
    if state is not None:
        for problem in sanity_problems(state, arch):
            found = warnings if problem.severity == "warning" else errors
            found.append((locate(loaded, problem.loc), problem.message))
    return ValidationReport(
        state=None if errors else state,
        errors=format_problems(errors),
        warnings=format_problems(warnings, "warning: "),
    )


def load_and_validate(
    paths: Sequence[Path],
    arch: Optional[str],
    merge_all: bool,
    names: Optional[Mapping[Path, str]] = None,
    node: Optional[NodeIdentity] = None,
) -> ValidationReport:
    """Each file loaded, then validated merged (in order) or one by one.

    With `node`, each file is first cut to what applies to that node (its selector, its
    overrides and rollout waves). Load errors are reported like validation errors. `state` is
    the merged document's, or without merging the last file's, and only when nothing is wrong.
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
        for doc in docs[1:]:
            merged = merge(merged, doc)
        report = validate(merged, arch)
        report.targeting = targeting
        return report
    report = ValidationReport(None, load_errors)
    for doc in docs:
        one = validate(doc, arch)
        report.errors.extend(one.errors)
        report.warnings.extend(one.warnings)
        report.state = one.state
    if report.errors:
        report.state = None
    return report
