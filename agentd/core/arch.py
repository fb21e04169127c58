"""The node's architecture by agentd's names (amd64, arm64, armv7), without importing detect."""

from __future__ import annotations

import os
import struct

_ARCHES = {
    "x86_64": "amd64",
    "amd64": "amd64",
    "aarch64": "arm64",
    "arm64": "arm64",
    "armv8l": "armv7",  # a 32-bit userland on a 64-bit CPU: arm64 libraries would not load
    "armv7l": "armv7",
    "armv7": "armv7",
    "armhf": "armv7",
    "armv7hl": "armv7",
}


def normalise_arch(machine: str) -> str:
    """`uname -m` (or a distribution's arch name) as amd64/arm64/armv7; unknown names as-is."""
    return _ARCHES.get(machine.strip().lower(), machine)


def host_arch(machine: str | None = None, pointer_bytes: int | None = None) -> str:
    """The node's architecture as its userland runs it (AGENTD_ARCH overrides).

    Raspberry Pi OS 32-bit boots a 64-bit kernel on a Pi 4: `uname -m` says aarch64, yet only
    armv7 binaries and libraries load there. This interpreter is one of them, so its pointer
    size tells."""
    override = os.environ.get("AGENTD_ARCH")
    if override:
        return normalise_arch(override)
    arch = normalise_arch(machine if machine is not None else os.uname().machine)
    size = pointer_bytes if pointer_bytes is not None else struct.calcsize("P")
    return "armv7" if arch == "arm64" and size == 4 else arch
