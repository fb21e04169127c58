"""One pull of the fleet's desired state: fetch it by its transport, judge it, keep a candidate."""

from __future__ import annotations

from agentd.core.paths import Paths
from agentd.core.redact import redact_text
from agentd.sources import git, https
from agentd.sources.credentials import URL_CREDENTIALS_REFUSED, has_credentials
from agentd.sources.document import (
    Document,
    PullError,
    PullResult,
    Rejected,
    SourceConfig,
    Unchanged,
    check_generation,
    screen,
)
from agentd.sources.store import FleetStore


def pull(config: SourceConfig, paths: Paths) -> PullResult:
    """Fetch the fleet document; a new, authentic, newer one becomes the candidate.

    Never raises for what the source does: an unreachable source, garbage, a bad signature or
    an older generation is a `failed` or `rejected` result, and the last good document stays.
    """
    store = FleetStore(paths)
    store.ensure()
    fetch = git.fetch if config.type == "git" else https.fetch
    try:
        if has_credentials(config.url):
            # Settings validated by an older agentd (its last good copy) may still hold them.
            raise PullError(URL_CREDENTIALS_REFUSED)
        doc, requests = fetch(config, paths, store)
        result = _judge(config, store, doc)
        result.requests = requests
    except Unchanged:
        seen = store.seen()
        if seen.get("verdict") == "rejected":
            result = PullResult("rejected", str(seen.get("reason")), seen.get("generation"))
        else:
            result = PullResult("unchanged", "not modified", seen.get("generation"))
        result.origin = seen.get("origin")
        result.requests = 1
    except Rejected as exc:
        if exc.origin is not None:
            store.remember(exc.origin, "rejected", str(exc), **exc.facts)
        result = PullResult("rejected", redact_text(str(exc)), origin=exc.origin)
    except (PullError, OSError) as exc:
        result = PullResult("failed", redact_text(str(exc)) or type(exc).__name__)
    store.record_status(config, result)
    return result


def _judge(config: SourceConfig, store: FleetStore, doc: Document) -> PullResult:
    """Screen a fetched, authentic document and keep it as the candidate if it is newer."""
    display = f"{config.describe()}@{doc.origin[:12]}"
    facts = {"sha256": doc.sha256, **doc.validators}
    try:
        screen(doc, display)
        newer = check_generation(doc, store.good_record())
    except Rejected as exc:
        gen = doc.generation if doc.generation >= 0 else None
        store.remember(doc.origin, "rejected", str(exc), generation=gen, **facts)
        return PullResult("rejected", redact_text(str(exc)), gen, doc.origin)
    if not newer:
        store.remember(doc.origin, "accepted", "", generation=doc.generation, **facts)
        return PullResult(
            "unchanged", "the same document as the last good one", doc.generation, doc.origin
        )
    store.write_candidate(doc, display)
    store.remember(doc.origin, "candidate", "", generation=doc.generation, **facts)
    signed = f", signed by {doc.signed_by}" if doc.signed_by else ""
    return PullResult("updated", f"generation {doc.generation}{signed}", doc.generation, doc.origin)
