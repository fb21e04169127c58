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

# The import contract (STYLE.md: "cli > daemon > converge > plan > facts > host"), low to high.
# A module may import from its own layer and the layers below it, never from a layer above.
# Every module of agentd must be listed here: a new module has to be given its place.
LAYERS: tuple[frozenset[str], ...] = (
    # host level: plain data, the one Host boundary, and leaf helpers with no agentd logic
    frozenset(
        {
            "agentd",  # the package itself: __version__
            "agentd.paths",
            "agentd.errors",
            "agentd.versions",
            "agentd.arch",
            "agentd.redact",
            "agentd.host",
            "agentd.facts",
            "agentd.state",
            "agentd.fingerprint",
            "agentd.archive",
            "agentd.fetch",
            "agentd.log",
            "agentd.notify",
            "agentd.journal",
            "agentd.timespec",
            "agentd.wasmprobe",
            "agentd.metrics",
        }
    ),
    # reading the world into data: detection, the desired state and the agent settings, their
    # loading, the pulled fleet document, the renderers
    frozenset(
        {
            "agentd.detect",
            "agentd.desired",
            "agentd.yamlload",
            "agentd.validation",
            "agentd.render",
            "agentd.settings",
            "agentd.sources",
            "agentd.config",
            "agentd.checks",
            "agentd.targeting",
        }
    ),
    frozenset({"agentd.plan"}),  # pure: desired + facts -> plan
    frozenset({"agentd.converge"}),  # plan + host -> result
    # one run, one health run, and what the fleet sees of them
    frozenset({"agentd.run", "agentd.health", "agentd.remedy", "agentd.fleet"}),
    frozenset({"agentd.daemon"}),  # the loop that schedules runs
)
CLI_PACKAGE = "agentd.cli"  # every module under it, and agentd.__main__, is the top layer
TOP = len(LAYERS)

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


def layer_of(module: str) -> int | None:
    if module == CLI_PACKAGE or module.startswith(CLI_PACKAGE + ".") or module == "agentd.__main__":
        return TOP
    for i, layer in enumerate(LAYERS):
        if module in layer:
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
    assert "agentd.plan" in MODULES
    assert "agentd.cli.main" in MODULES
    assert [m for m in MODULES if layer_of(m) is None] == []


def test_the_layer_table_names_only_real_modules() -> None:
    listed = set().union(*LAYERS)
    assert listed - set(MODULES) == set()


def test_the_checker_sees_upward_imports_anywhere() -> None:
    source = (
        "from typing import TYPE_CHECKING\n"
        "from agentd.versions import compare\n"
        "from agentd import render\n"
        "if TYPE_CHECKING:\n"
        "    from agentd.converge import converge\n"
        "def later() -> None:\n"
        "    import agentd.cli.main\n"
    )
    assert violations("agentd.plan", ast.parse(source)) == [
        "agentd.plan:5 imports agentd.converge (layer 3 > 2)",
        f"agentd.plan:7 imports agentd.cli.main (layer {TOP} > 2)",
    ]
    assert violations("agentd.cli.apply", ast.parse(source)) == []


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
    assert top_level_users("subprocess") == {"agentd.host"}


def test_only_fetch_uses_requests() -> None:
    assert top_level_users("requests") == {"agentd.fetch"}


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
