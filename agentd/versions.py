"""Version strings of k3s, crun and WasmEdge, compared the way their releases are ordered."""

from __future__ import annotations

import re
from functools import total_ordering

_K3S_RE = re.compile(r"^v(\d+)\.(\d+)\.(\d+)(?:-([0-9A-Za-z.]+))?\+k3s(\d+)$")
_GENERIC_RE = re.compile(r"^v?(\d+(?:\.\d+)*)(?:[-~]([0-9A-Za-z.]+))?$")


def is_k3s_version(text: str) -> bool:
    """k3s releases are always `vX.Y.Z+k3sN` (optionally with a -rcN pre-release)."""
    return _K3S_RE.match(text) is not None


@total_ordering
class Version:
    """A comparable version: numeric release parts, then pre-release (sorts first), then k3sN."""

    def __init__(self, text: str) -> None:
        self.text = text
        k3s = _K3S_RE.match(text)
        if k3s:
            self.release: tuple[int, ...] = tuple(int(x) for x in k3s.group(1, 2, 3))
            self.pre = k3s.group(4)
            self.build = int(k3s.group(5))
            return
        generic = _GENERIC_RE.match(text)
        if not generic:
            raise ValueError(f"not a version: {text!r}")
        self.release = tuple(int(x) for x in generic.group(1).split("."))
        self.pre = generic.group(2)
        self.build = 0

    def _key(self) -> tuple[tuple[int, ...], int, str, int]:
        release = self.release + (0,) * (4 - len(self.release))
        # A release without a pre-release tag sorts after its release candidates.
        return (release, 1 if self.pre is None else 0, self.pre or "", self.build)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Version) and self._key() == other._key()

    def __lt__(self, other: Version) -> bool:
        return self._key() < other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return f"Version({self.text!r})"


def parse_version(text: str) -> Version | None:
    try:
        return Version(text)
    except ValueError:
        return None


def compare(installed: str, desired: str) -> int:
    """-1, 0, 1 as installed is older, equal, newer.

    Unparseable versions are equal only when identical; otherwise they count as older, so a
    plan never calls replacing them a downgrade.
    """
    a, b = parse_version(installed), parse_version(desired)
    if a is None or b is None:
        return 0 if installed == desired else -1
    return (a > b) - (a < b)
