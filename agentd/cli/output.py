"""Human-readable plan and run results, readable at a glance (terraform-style markers)."""

from __future__ import annotations

from typing import Any

from agentd.core.printable import printable, printable_tree
from agentd.state.records import RunResult

MARKERS = {
    "install": "+",
    "reinstall": "+",
    "upgrade": "~",
    "downgrade": "~",
    "remove": "-",
    "configure": "*",
    "restart": "!",
}
STATUS = {"done": "ok", "failed": "FAILED", "undone": "undone", "pending": "not run"}


def _versions(a: dict[str, Any]) -> str:
    if "from" in a and "to" in a:
        return f" {a['from']} -> {a['to']}"
    if "to" in a:
        return f" {a['to']}"
    if a.get("from"):
        return f" {a['from']}"
    return ""


def format_actions(actions: list[dict[str, Any]], with_status: bool = False) -> list[str]:
    lines = []
    for a in printable_tree(actions):  # names and reasons come from the host and the fleet
        head = f"  {MARKERS.get(a['action'], '?')} {a['action']:<9} {a['component']}{_versions(a)}"
        if with_status and "status" in a:
            head += f"  [{STATUS.get(a['status'], a['status'])}]"
        lines.append(head)
        lines.append(f"      {a['reason']}")
    return lines


def format_plan(plan: dict[str, Any]) -> str:
    # A diff is split into lines before escaping: each line is escaped, the newlines between stay.
    diffs = [
        {**printable_tree({k: v for k, v in d.items() if k != "diff"}), "lines_of": d["diff"]}
        for d in plan.get("diffs") or []
    ]
    plan = printable_tree({k: v for k, v in plan.items() if k != "diffs"})
    actions = plan["actions"]
    lines = [f"Plan for generation {plan['generation']} on this {plan['arch']} node:"]
    lines += format_actions(actions) if actions else ["  nothing to do"]
    for d in diffs:
        lines.append(f"Diff of {d['target']} ({d['component']}):")
        lines += _cut([printable(line) for line in d["lines_of"].splitlines()])
    refusals = plan.get("refusals") or []
    if refusals:
        lines.append("Refused:")
        lines += [f"  x {r['subject']:<26} {r['kind']}: {r['reason']}" for r in refusals]
    # A change refused for a rollback is said once, under Refused.
    said = {r["subject"] for r in refusals if r["kind"].startswith("rollback-")}
    unchanged = [u for u in plan["unchanged"] if u["component"] not in said]
    if unchanged:
        lines.append("Unchanged:")
        lines += [f"  = {u['component']:<26} {u['reason']}" for u in unchanged]
    counts: dict[str, int] = {}
    for a in actions:
        counts[a["action"]] = counts.get(a["action"], 0) + 1
    summary = ", ".join(f"{n} {verb}" for verb, n in counts.items()) or "no changes"
    disruptive = sum(1 for a in actions if a.get("disruptive"))
    if disruptive:
        summary += f" ({disruptive} disruptive)"
    if refusals:
        summary += f"; {len(refusals)} refused"
    lines.append(f"Plan: {summary}.")
    for t in plan.get("targeting") or []:
        what = f"override {t['override']}" if t.get("override") else "the document"
        verdict = "applies" if t.get("applies") else "does NOT apply"
        lines.append(f"Targeting: {what} of {t['source']} {verdict}: {t['why']}")
    return "\n".join(lines) + "\n"


DIFF_LINES = 40  # a diff longer than this is cut in the human plan (`--json` has it all)


def _cut(diff: list[str]) -> list[str]:
    shown = [f"    {line}" for line in diff[:DIFF_LINES]]
    if len(diff) > DIFF_LINES:
        shown.append(f"    ... {len(diff) - DIFF_LINES} more lines (plan --json shows them all)")
    return shown


def plan_legend(plan: dict[str, Any]) -> str:
    """One line saying what the markers of the plan above mean (only those it shows)."""
    shown = {a["action"] for a in plan["actions"]}
    parts = [f"{MARKERS[verb]} {verb}" for verb in MARKERS if verb in shown]
    if plan.get("refusals"):
        parts.append("x refused")
    if plan["unchanged"]:
        parts.append("= unchanged")
    return f"Legend: {', '.join(parts)}\n" if parts else ""


def format_run(result: RunResult) -> str:
    generation = "?" if result.generation is None else result.generation
    head = f"{result.kind}: generation {generation}: {result.outcome}"
    if result.duration_ms is not None:
        head += f" in {result.duration_ms:.0f} ms"
    lines = [printable(head)]
    if result.actions:
        lines += format_actions(result.actions, with_status=True)
    elif result.outcome == "converged":
        lines.append("  nothing to do: the node already matches the desired state")
    for r in printable_tree(result.refusals or []):
        lines.append(f"  refused {r['subject']} ({r['kind']}): {r['reason']}")
    for d in printable_tree(result.downloads or []):
        how = "from cache" if d["cached"] else f"downloaded {d['bytes']} bytes"
        lines.append(f"  fetched {d['component']}: {how}, sha256 {d['sha256'][:12]}... verified")
    for call in result.service_calls or []:
        lines.append(f"  service: {printable(str(call))}")
    if result.kind == "ratchet":
        lines += [f"  {printable(w)}" for w in result.warnings or []]
    if result.error:
        lines.append(f"  error: {printable(str(result.error))}")
    return "\n".join(lines) + "\n"
