"""The architecture contract, read from agentd's imports: the boundaries and the layering hold."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "agentd"

# The import contract, per package, low to high: a module may import from its own package and
# from the packages of lower layers, never from a higher one. Every package of agentd must be
# listed here (a new package has to be given its place); `agentd` itself holds only __version__.
LAYERS: tuple[frozenset[str], ...] = (
    frozenset({"agentd.core"}),  # paths, errors, versions, durations, redaction, arch: stdlib only
    frozenset({"agentd.system"}),  # commands, files, services, packages, notify, journald, logs
    frozenset({"agentd.schema"}),  # YAML with positions, validation, shared model types
    # what the node has, what agentd recorded, what the fleet publishes
    frozenset({"agentd.facts", "agentd.state", "agentd.sources"}),
    frozenset({"agentd.settings"}),  # this node's agentd.yaml (its source is a sources input)
    frozenset({"agentd.desired"}),  # the desired state: model, targeting, loading, identity
    frozenset({"agentd.plan"}),  # the pure diff, its renderers and the policies after it
    frozenset({"agentd.converge"}),  # plan + host -> installed, undoable, recorded
    frozenset({"agentd.report"}),  # metrics, this node's status in the cluster
    frozenset({"agentd.health"}),  # the checks, the health run, remedies (through converge)
    frozenset({"agentd.run"}),  # one apply, orchestrating only
    frozenset({"agentd.daemon"}),  # the loop that schedules runs and workers
    frozenset({"agentd.cli", "agentd.__main__"}),  # the commands
)
TOP = len(LAYERS) - 1
STDLIB_ONLY = "agentd.core"

# Known violations of the layering: module -> why. Each becomes a strict xfail, so fixing the
# code makes its test pass and forces this entry to go.
KNOWN_VIOLATIONS: dict[str, str] = {}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


MODULES = modules()


def package_of(module: str) -> str:
    """`agentd.plan.diff` -> `agentd.plan`; a top-level module (`agentd.run`) is its own."""
    parts = module.split(".")
    return ".".join(parts[:2])


def layer_of(module: str) -> int | None:
    if module == "agentd":
        return 0  # the package itself: __version__ only
    package = package_of(module)
    for i, layer in enumerate(LAYERS):
        if package in layer:
            return i
    return None


def parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def imported_modules(tree: ast.AST) -> Iterator[tuple[int, str]]:
    """(line, module) of every import anywhere in `tree`: top level, in functions, TYPE_CHECKING."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module
            for alias in node.names:
                yield node.lineno, f"{node.module}.{alias.name}"


def agentd_imports(tree: ast.AST) -> Iterator[tuple[int, str]]:
    """(line, agentd module) for each absolute agentd import; `from agentd import x` names x."""
    for line, name in imported_modules(tree):
        if name in MODULES:  # agentd's own modules only; names inside a module are dropped
            yield line, name


def top_level_users(root: str) -> set[str]:
    """The agentd modules that import `root` or anything under it."""
    return {
        module
        for module, path in MODULES.items()
        for _, name in imported_modules(parse(path))
        if name == root or name.startswith(root + ".")
    }


def violations(module: str, tree: ast.AST) -> list[str]:
    own = layer_of(module)
    assert own is not None, f"{module} has no layer in LAYERS"
    found = []
    for line, target in agentd_imports(tree):
        theirs = layer_of(target)
        assert theirs is not None, f"{target} has no layer in LAYERS"
        if theirs > own:
            found.append(f"{module}:{line} imports {target} (layer {theirs} > {own})")
    return found


# --- the checker itself ------------------------------------------------------------------------


def test_every_module_has_a_layer() -> None:
    assert "agentd.plan.diff" in MODULES
    assert "agentd.cli.main" in MODULES
    assert [m for m in MODULES if layer_of(m) is None] == []


def test_the_layer_table_names_only_real_packages() -> None:
    listed = set().union(*LAYERS)
    assert listed - set(MODULES) == set()


def test_the_checker_sees_upward_imports_anywhere() -> None:
    source = (
        "from typing import TYPE_CHECKING\n"
        "from agentd.core.versions import compare\n"
        "from agentd.plan import render\n"
        "if TYPE_CHECKING:\n"
        "    from agentd.converge.install import converge\n"
        "def later() -> None:\n"
        "    import agentd.cli.main\n"
    )
    plan, converge = layer_of("agentd.plan.diff"), layer_of("agentd.converge.install")
    assert violations("agentd.plan.diff", ast.parse(source)) == [
        f"agentd.plan.diff:5 imports agentd.converge.install (layer {converge} > {plan})",
        f"agentd.plan.diff:7 imports agentd.cli.main (layer {TOP} > {plan})",
    ]
    assert violations("agentd.cli.apply", ast.parse(source)) == []


def test_package_init_files_are_empty() -> None:
    # An __init__ that imports would hide a module's real package from the layer check, and
    # load code on every import of any module under it (the fast path counts).
    inits = [p for p in PACKAGE.rglob("__init__.py") if p.parent != PACKAGE]
    assert inits
    assert [str(p) for p in inits if p.read_text(encoding="utf-8").strip()] == []


def test_core_uses_the_standard_library_only() -> None:
    stdlib = getattr(sys, "stdlib_module_names", None)
    if stdlib is None:
        pytest.skip("sys.stdlib_module_names needs Python 3.10 (the main run checks it)")
    allowed = set(stdlib) | {"agentd"}
    found = [
        f"{module}:{line} imports {name}"
        for module, path in MODULES.items()
        if package_of(module) == STDLIB_ONLY
        for line, name in imported_modules(parse(path))
        if name.split(".")[0] not in allowed
        or (name.startswith("agentd.") and package_of(name) != STDLIB_ONLY)
    ]
    assert found == []


def test_the_daemon_starts_the_cli_worker_by_name_only() -> None:
    # The one deliberate upward edge: the daemon runs `agentd apply` in a worker process, which
    # imports agentd.cli.main there, never in the daemon's own process (its memory stays small).
    from agentd.daemon import worker

    assert "from agentd.cli.main import main" in worker.WORKER_BOOT
    assert not any(
        package_of(name) == "agentd.cli"
        for path in (PACKAGE / "daemon").glob("*.py")
        for _, name in imported_modules(parse(path))
    )


def test_agentd_uses_absolute_imports_only() -> None:
    # Relative imports would slip past the layer check, which reads absolute `agentd.` names.
    relative = [
        f"{module}:{node.lineno}"
        for module, path in MODULES.items()
        for node in ast.walk(parse(path))
        if isinstance(node, ast.ImportFrom) and node.level > 0
    ]
    assert relative == []


# --- the contract ------------------------------------------------------------------------------


def test_only_host_runs_commands() -> None:
    assert top_level_users("subprocess") == {"agentd.system.commands"}


def test_only_fetch_uses_requests() -> None:
    # oci: the registry API's manifest and token requests; every blob still goes through fetch.
    assert top_level_users("requests") == {"agentd.converge.fetch", "agentd.converge.oci"}


@pytest.mark.parametrize(
    "module",
    [
        pytest.param(m, marks=pytest.mark.xfail(strict=True, reason=KNOWN_VIOLATIONS[m]))
        if m in KNOWN_VIOLATIONS
        else m
        for m in sorted(MODULES)
    ],
)
def test_no_module_imports_from_a_higher_layer(module: str) -> None:
    assert violations(module, parse(MODULES[module])) == []


# --- the no-op fast path -----------------------------------------------------------------------

HEAVY = ("pydantic", "yaml", "structlog", "requests", "psutil")
FAST_PATH = "import agentd.run, agentd.cli.main, agentd.cli.apply"


def test_the_no_op_fast_path_imports_nothing_heavy() -> None:
    script = f"{FAST_PATH}; import sys; print('\\n'.join(sorted(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", script],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    # importtime lines: "import time: self [us] | cumulative | imported package" (indented name)
    timed = [
        line.rsplit("|", 1)[1].strip()
        for line in result.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    ]
    assert "agentd.run" in timed
    assert "agentd.cli.apply" in timed
    heavy_timed = sorted(m for m in timed if m.split(".")[0] in HEAVY)
    assert heavy_timed == []
    # sys.modules also catches anything imported before the timed imports (a site hook, say).
    loaded = result.stdout.split()
    assert "agentd.run" in loaded
    assert sorted(m for m in loaded if m.split(".")[0] in HEAVY) == []
