"""Human-readable plan and run results, readable at a glance (terraform-style markers)."""

from __future__ import annotations

from typing import Any

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
    for a in actions:
        head = f"  {MARKERS.get(a['action'], '?')} {a['action']:<9} {a['component']}{_versions(a)}"
        if with_status and "status" in a:
            head += f"  [{STATUS.get(a['status'], a['status'])}]"
        lines.append(head)
        lines.append(f"      {a['reason']}")
    return lines


def format_plan(plan: dict[str, Any]) -> str:
    actions = plan["actions"]
    lines = [f"Plan for generation {plan['generation']} on this {plan['arch']} node:"]
    lines += format_actions(actions) if actions else ["  nothing to do"]
    if plan["unchanged"]:
        lines.append("Unchanged:")
        lines += [f"  = {u['component']:<26} {u['reason']}" for u in plan["unchanged"]]
    counts: dict[str, int] = {}
    for a in actions:
        counts[a["action"]] = counts.get(a["action"], 0) + 1
    summary = ", ".join(f"{n} {verb}" for verb, n in counts.items()) or "no changes"
    disruptive = sum(1 for a in actions if a.get("disruptive"))
    if disruptive:
        summary += f" ({disruptive} disruptive)"
    lines.append(f"Plan: {summary}.")
    for t in plan.get("targeting") or []:
        what = f"override {t['override']}" if t.get("override") else "the document"
        verdict = "applies" if t.get("applies") else "does NOT apply"
        lines.append(f"Targeting: {what} of {t['source']} {verdict}: {t['why']}")
    return "\n".join(lines) + "\n"


def format_run(result: RunResult) -> str:
    generation = "?" if result.generation is None else result.generation
    head = f"{result.kind}: generation {generation}: {result.outcome}"
    if result.duration_ms is not None:
        head += f" in {result.duration_ms:.0f} ms"
    lines = [head]
    if result.actions:
        lines += format_actions(result.actions, with_status=True)
    elif result.outcome == "converged":
        lines.append("  nothing to do: the node already matches the desired state")
    for d in result.downloads or []:
        how = "from cache" if d["cached"] else f"downloaded {d['bytes']} bytes"
        lines.append(f"  fetched {d['component']}: {how}, sha256 {d['sha256'][:12]}... verified")
    for call in result.service_calls or []:
        lines.append(f"  service: {call}")
    if result.kind == "ratchet":
        lines += [f"  {w}" for w in result.warnings or []]
    if result.error:
        lines.append(f"  error: {result.error}")
    return "\n".join(lines) + "\n"
