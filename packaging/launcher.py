#!/usr/bin/python3 -I
"""/usr/bin/agentd in the packages: the bundled agent and libraries first on sys.path, then run."""

# -I (isolated): no PYTHON* variables, no user site-packages, not the script's directory: what
# this node's root environment holds cannot replace a bundled module. The distribution's
# dist-packages stay on the path, after the bundle, for python3-systemd.
# Python 3.9 reads this file: no syntax newer than 3.9 outside annotations.

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Callable, NoReturn

LIB = "/usr/lib/wasm-edge-agentd"
EXIT_NO_ABI = 1


def abi_tag(version: Sequence[int]) -> str:
    """The CPython ABI a compiled module is built for: cp311 for Python 3.11."""
    return f"cp{version[0]}{version[1]}"


def bundled_abis(lib: str) -> list[str]:
    """The cpXY directories the package holds, oldest first."""
    try:
        names = os.listdir(lib)
    except OSError:
        return []
    found = [n for n in names if n.startswith("cp3") and n[2:].isdigit()]
    return sorted(found, key=lambda n: int(n[3:]))


def bundle_path(
    lib: str, version: Sequence[int], isdir: Callable[[str], bool] = os.path.isdir
) -> list[str] | None:
    """What goes first on sys.path: agentd, this ABI's compiled modules, the pure-Python ones.

    None when the package holds no compiled modules for this Python.
    """
    compiled = os.path.join(lib, abi_tag(version))
    if not isdir(compiled):
        return None
    return [lib, compiled, os.path.join(lib, "common")]


def bundled_names(dirs: Sequence[str]) -> set[str]:
    """The top-level modules and packages in the bundle's directories."""
    names: set[str] = set()
    for directory in dirs:
        try:
            entries = os.listdir(directory)
        except OSError:
            continue
        for entry in entries:
            if not entry.endswith(".dist-info"):
                names.add(entry[:-3] if entry.endswith(".py") else entry)
    return names


def evict_foreign(modules: dict[str, object], names: set[str], roots: Sequence[str]) -> list[str]:
    """Forget bundled libraries imported from elsewhere before this ran (site runs the .pth
    files of the distribution's site-packages even under -I, and one may import, say, certifi),
    so that the next import finds the bundle's copy."""
    evicted = []
    for key in list(modules):
        if key.split(".", 1)[0] in names:
            where = getattr(modules[key], "__file__", None) or ""
            if not any(where.startswith(root + os.sep) for root in roots):
                del modules[key]
                evicted.append(key)
    return evicted


def no_abi_message(lib: str, version: Sequence[int], executable: str) -> str:
    have = ", ".join(f"{a[2]}.{a[3:]}" for a in bundled_abis(lib)) or "none"
    return (
        f"agentd: error: {executable} is Python {version[0]}.{version[1]}, and this package "
        f"bundles pydantic-core for Python {have} only ({lib}); install the package built "
        "for this distribution's Python, or a package of a newer agentd\n"
    )


def activate(lib: str = LIB) -> list[str] | None:
    """The bundle first on sys.path, and only its copies of its libraries imported; None when
    it holds nothing for this Python."""
    entries = bundle_path(lib, sys.version_info[:2])
    if entries is None:
        return None
    sys.path[0:0] = entries
    evict_foreign(sys.modules, bundled_names(entries), entries)  # type: ignore[arg-type]
    return entries


def main(lib: str = LIB) -> int:
    if sys.implementation.name != "cpython":
        sys.stderr.write(f"agentd: error: {sys.executable} is not CPython\n")
        return EXIT_NO_ABI
    if activate(lib) is None:
        sys.stderr.write(no_abi_message(lib, sys.version_info[:2], sys.executable))
        return EXIT_NO_ABI
    # The daemon's workers (`python3 -m agentd`) get this sys.path as their PYTHONPATH.
    from agentd.cli.main import main as agentd_main  # noqa: PLC0415

    return agentd_main()


def run() -> NoReturn:
    sys.exit(main())


if __name__ == "__main__":
    run()
