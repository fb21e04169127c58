"""The state dir's source/ folder: the last good fleet document, a candidate, what was seen."""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from agentd.core.paths import Paths
from agentd.core.redact import redact_text
from agentd.sources.document import Document, PullResult, SourceConfig
from agentd.system.files import JsonFileError, atomic_write, read_json, write_json


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _record(path: Path) -> dict[str, Any]:
    """The JSON record in `path`; an absent or unreadable one counts as none: these are the
    pull's own records, and the next pull writes them again."""
    try:
        return read_json(path) or {}
    except (OSError, JsonFileError):
        return {}


class FleetStore:
    """source/ in the state dir: the last good document, a candidate, what was last seen."""

    def __init__(self, paths: Paths) -> None:
        self.paths = paths
        self.dir = paths.source_dir
        self.good = self.dir / "fleet.yaml"
        self.good_meta = self.dir / "fleet.json"
        self.candidate = self.dir / "candidate.yaml"
        self.candidate_meta = self.dir / "candidate.json"
        self.seen_file = self.dir / "seen.json"
        self.status_file = self.dir / "status.json"

    def ensure(self) -> None:
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)

    # The last good document and its record.
    def good_record(self) -> dict[str, Any]:
        return _record(self.good_meta) if self.good.is_file() else {}

    def good_generation(self) -> Optional[int]:
        gen = self.good_record().get("generation")
        return gen if isinstance(gen, int) else None

    def candidate_record(self) -> dict[str, Any]:
        return _record(self.candidate_meta) if self.candidate.is_file() else {}

    def seen(self) -> dict[str, Any]:
        return _record(self.seen_file)

    def judged(self) -> dict[str, Any]:
        """What was last seen, if its verdict still stands (a candidate only while it exists, a
        rejection for a signature never: the signature may be published after the document)."""
        seen = self.seen()
        if seen.get("recheck"):
            return {}
        verdict = seen.get("verdict")
        if verdict in ("accepted", "rejected") or (
            verdict == "candidate" and self.candidate.is_file()
        ):
            return seen
        return {}

    def remember(self, origin: str, verdict: str, reason: str, **extra: Any) -> None:
        """What the source last served and what became of it, so an unchanged answer repeats it."""
        self.ensure()
        write_json(
            self.seen_file,
            {"origin": origin, "verdict": verdict, "reason": reason, "at": _now(), **extra},
        )

    def write_candidate(self, doc: Document, display: str) -> None:
        self.ensure()
        atomic_write(self.candidate, doc.data, 0o600)
        write_json(
            self.candidate_meta,
            {
                "generation": doc.generation,
                "origin": doc.origin,
                "sha256": doc.sha256,
                "signedBy": doc.signed_by,
                "display": display,
                "fetchedAt": _now(),
            },
        )

    def promote(self) -> dict[str, Any]:
        """The candidate becomes the last good document (data first, then its record)."""
        record = self.candidate_record()
        record["acceptedAt"] = _now()
        os.replace(self.candidate, self.good)
        write_json(self.good_meta, record)
        with contextlib.suppress(FileNotFoundError):
            self.candidate_meta.unlink()
        origin = str(record.get("origin"))
        facts = self._facts_of(origin)
        self.remember(origin, "accepted", "", generation=record["generation"], **facts)
        self._refresh_status()
        return record

    def lower_generation(self, generation: int) -> None:
        """`agentd ratchet lower`: the last good document stays, recorded as `generation`, and
        what the source served is judged afresh (it was refused as older, most likely)."""
        record = self.good_record()
        if record:
            record["loweredFrom"] = record.get("generation")
            record["generation"] = generation
            write_json(self.good_meta, record)
        with contextlib.suppress(FileNotFoundError):
            self.seen_file.unlink()
        self._refresh_status()

    def reject_candidate(self, reason: str) -> dict[str, Any]:
        record = self.candidate_record()
        for path in (self.candidate, self.candidate_meta):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        origin = str(record.get("origin"))
        facts = self._facts_of(origin)
        self.remember(origin, "rejected", reason, generation=record.get("generation"), **facts)
        self._refresh_status(rejected=reason)
        return record

    def _facts_of(self, origin: str) -> dict[str, Any]:
        """What the pull remembered about `origin` (its sha256 and HTTP validators), so that the
        verdict on the candidate still answers the next conditional request with a 304."""
        seen = self.seen()
        if seen.get("origin") != origin:
            return {}
        return {k: seen[k] for k in ("sha256", "etag", "lastModified") if k in seen}

    def _good_summary(self) -> Optional[dict[str, Any]]:
        good = self.good_record()
        keys = ("generation", "origin", "acceptedAt", "signedBy")
        return {k: good.get(k) for k in keys} if good else None

    def _refresh_status(self, rejected: Optional[str] = None) -> None:
        """The pull wrote status.json before its candidate was judged: bring the last good
        document, and the verdict on a rejected candidate, up to date for `status`."""
        status = _record(self.status_file)
        if not status:
            return
        status["lastGood"] = self._good_summary()
        if rejected is not None:
            last = status.get("lastPull")
            last = last if isinstance(last, dict) else {}
            status["lastPull"] = {**last, "outcome": "rejected", "detail": redact_text(rejected)}
        write_json(self.status_file, status)

    def record_status(self, config: SourceConfig, result: PullResult) -> dict[str, Any]:
        """source/status.json: the last pull, and the last good document the node converges to."""
        previous = _record(self.status_file)
        status: dict[str, Any] = {
            "source": config.describe(),
            "type": config.type,
            "verification": config.verify or "off",
            "lastPullAt": _now(),
            "lastPull": result.to_json(),
            "lastSuccessAt": previous.get("lastSuccessAt"),
            "lastGood": self._good_summary(),
        }
        if result.outcome in ("updated", "unchanged"):
            status["lastSuccessAt"] = status["lastPullAt"]
        if config.insecure_skip_verify:
            status["tlsVerification"] = "OFF (tls.insecureSkipVerify)"
        self.ensure()
        write_json(self.status_file, status)
        return status

    def status(self) -> dict[str, Any]:
        return _record(self.status_file)


@dataclass
class FleetView:
    """What the node converges to from the fleet: the last good document, if any."""

    path: Optional[Path]
    display: str
    record: dict[str, Any] = field(default_factory=dict)


def fleet_document(paths: Paths) -> FleetView:
    """The last good fleet document (its path in the state dir and a name for messages)."""
    store = FleetStore(paths)
    record = store.good_record()
    if not record:
        return FleetView(None, "")
    return FleetView(store.good, str(record.get("display") or "fleet document"), record)
