"""Version strings of k3s, crun and WasmEdge, compared the way their releases are ordered."""

from __future__ import annotations

import re
from functools import total_ordering

_K3S_RE = re.compile(r"^v(\d+)\.(\d+)\.(\d+)(?:-([0-9A-Za-z.]+))?\+k3s(\d+)\Z")
_GENERIC_RE = re.compile(r"^v?(\d+(?:\.\d+)*)(?:[-~]([0-9A-Za-z.]+))?\Z")


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


_CONSTRAINT_RE = re.compile(r"^\s*(>=|<=|==|!=|=|>|<)?\s*([0-9A-Za-z.+~-]+)\s*$")
_OPS = {
    ">=": lambda c: c >= 0,
    "<=": lambda c: c <= 0,
    ">": lambda c: c > 0,
    "<": lambda c: c < 0,
    "==": lambda c: c == 0,
    "=": lambda c: c == 0,
    "!=": lambda c: c != 0,
}


def parse_constraint(text: str) -> list[tuple[str, str]]:
    """(operator, version) pairs from ">=1.8.5", ">=1.8.5,<2" or a bare "1.15" (meaning ==).

    Raises ValueError for anything else."""
    pairs: list[tuple[str, str]] = []
    for part in text.split(","):
        match = _CONSTRAINT_RE.match(part)
        if not match or parse_version(match.group(2)) is None:
            raise ValueError(
                f"not a version constraint: {text!r} (write e.g. >=1.8.5, ==1.15 or >=1.8,<2)"
            )
        pairs.append((match.group(1) or "==", match.group(2)))
    return pairs


def satisfies(version: str, constraint: str) -> bool:
    """Whether `version` meets every part of `constraint`."""
    return all(_OPS[op](compare(version, bound)) for op, bound in parse_constraint(constraint))


def upstream_version(package_version: str) -> str:
    """The upstream part of a distribution's package version: "1:1.8.1-1+deb12u1" -> "1.8.1"."""
    version = package_version.split(":", 1)[-1]
    return version.rsplit("-", 1)[0] if "-" in version else version


# k3s imports what lands in agent/images while running from these releases on (January 2025:
# docs.k3s.io/import-images); an older k3s imports it at its next start only.
_RUNNING_IMPORT_FROM = {
    (1, 29): Version("v1.29.13+k3s1"),
    (1, 30): Version("v1.30.9+k3s1"),
    (1, 31): Version("v1.31.5+k3s1"),
    (1, 32): Version("v1.32.0+k3s1"),
}


def imports_while_running(k3s_version: str | None) -> bool:
    """Whether this k3s imports an archive put in agent/images while it runs (else at start)."""
    v = parse_version(k3s_version or "")
    if v is None or len(v.release) < 2:
        return False
    minor = v.release[:2]
    if minor in _RUNNING_IMPORT_FROM:
        return v >= _RUNNING_IMPORT_FROM[minor]
    return minor > (1, 32)
