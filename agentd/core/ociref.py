"""An oci:// artifact reference: registry, repository and a tag or a manifest digest."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

# oci://HOST[:PORT]/REPO:TAG, REPO@sha256:HEX or REPO:TAG@sha256:HEX (the distribution spec's
# grammar); with both, the tag is asked for and must still name that manifest.
_REF_RE = re.compile(
    r"^oci://(?P<host>[A-Za-z0-9.-]+(?::[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](?::[0-9]{1,5})?)"
    r"/(?P<repo>[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*)"
    r"(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9._-]{0,127}))?(?:@(?P<digest>sha256:[0-9a-f]{64}))?\Z"
)


@dataclass(frozen=True)
class Reference:
    registry: str
    repository: str
    tag: Optional[str]
    digest: Optional[str]

    @property
    def ref(self) -> str:
        """What the registry is asked for: the tag when there is one (its digest is checked)."""
        return self.tag or self.digest or ""


def parse_reference(url: str) -> Reference:
    """The parts of an oci:// URL; ValueError names what is wrong."""
    found = _REF_RE.match(url)
    if found is None or not (found["tag"] or found["digest"]):
        raise ValueError(
            "an OCI artifact is oci://HOST[:PORT]/REPO:TAG, oci://HOST[:PORT]/REPO@sha256:DIGEST "
            "or both (REPO:TAG@sha256:DIGEST): lower-case repository, no credentials"
        )
    return Reference(found["host"], found["repo"], found["tag"], found["digest"])
