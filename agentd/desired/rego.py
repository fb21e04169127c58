"""The Rego of Gatekeeper's ConstraintTemplates parsed by rego-cpp (regopy 0.4.6), in a child."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import sys
from dataclasses import dataclass, field
from typing import Optional

from agentd.system.commands import run_command

# rego-cpp's parse time grows faster than its input (regopy 0.4.6, measured: 137 KiB of rules
# 0.5 s, 553 KiB 3.6 s, 2.2 MiB 43 s). Gatekeeper's library templates are a few KiB; at most
# four modules of this size fit in a 1 MiB desired state, which keeps validate to seconds.
MAX_MODULE_BYTES = 256 * 1024
# rego-cpp has no timeout of its own (rego_c.h at v0.4.6 has none): the child is killed.
PARSE_TIMEOUT_S = 20.0

NOT_INSTALLED = (
    "regopy is not installed: pip install 'wasm-edge-agentd[rego]' (regopy 0.4.6, rego-cpp's "
    "Rego v0 as Gatekeeper 3.15's OPA reads it, has wheels for x86_64 only), or run agentd "
    "validate on an x86_64 machine"
)

# The child process. rego-cpp prints its errors (with `-- FILE:LINE:COL`, only for a module
# read from a file) to the process's stdout from C++, and regopy 0.4.6 wraps no
# regoAddModuleFile: its ctypes handle calls it. Markers written between modules, after
# flushing C's stdio, tell whose errors are whose.
_CHILD = """
import ctypes, json, os, sys, tempfile
request = json.loads(sys.stdin.read())
sys.path[:] = request["path"]
import regopy
from regopy import rego_shared
add = rego_shared.rego.regoAddModuleFile
add.restype = ctypes.c_uint32
add.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
flush = ctypes.CDLL(None).fflush
with tempfile.TemporaryDirectory() as folder:
    os.chdir(folder)
    for k, source in enumerate(request["modules"]):
        name = "m%d.rego" % k
        with open(name, "w", encoding="utf-8") as f:
            f.write(source)
        interpreter = regopy.Interpreter()
        os.write(1, b"\\n@@agentd %d\\n" % k)
        code = add(interpreter._impl, name.encode())
        flush(None)
        os.write(1, b"\\n@@agentd %d %s\\n" % (k, b"ok" if code == 0 else b"error"))
        del interpreter
"""
_MARK = re.compile(r"@@agentd (\d+)(?: (ok|error))?")
_AT = re.compile(r"-- (?:.*/)?m(\d+)\.rego:(\d+):(\d+)")
# At most this many errors per module: the first ones say what is wrong.
_MAX_ERRORS = 5


@dataclass(frozen=True)
class RegoProblem:
    """A problem in one module: line and column in its text (1-based), 0 when rego-cpp names no
    place."""

    line: int
    col: int
    message: str


@dataclass
class Parsed:
    """Each module's problems, and why those that needed rego-cpp were not parsed, if not."""

    problems: list[list[RegoProblem]] = field(default_factory=list)
    not_parsed: Optional[str] = None


def regopy_installed() -> bool:
    """Whether regopy can be imported, without importing it (nor its 30 MB library)."""
    try:
        return importlib.util.find_spec("regopy") is not None
    except (ImportError, ValueError):
        return False


def _char_col(source: str, line: int, col: int) -> int:
    """rego-cpp's column counts bytes; an editor's counts characters."""
    lines = source.split("\n")
    if not 0 < line <= len(lines):
        return col
    return len(lines[line - 1].encode("utf-8")[: col - 1].decode("utf-8", "ignore")) + 1


def _read_errors(source: str, text: list[str]) -> list[RegoProblem]:
    """Problems from what rego-cpp printed for one module: each error's message is the line
    before its first `-- FILE:LINE:COL`."""
    found: list[RegoProblem] = []
    for i, line in enumerate(text):
        at = _AT.fullmatch(line)
        if at is None or i == 0 or not text[i - 1].strip() or text[i - 1].startswith("-- "):
            continue
        row, col = int(at.group(2)), int(at.group(3))
        problem = RegoProblem(row, _char_col(source, row, col), text[i - 1].strip())
        if problem not in found:
            found.append(problem)
    if not found:
        # An error with no place (rego-cpp's "Invalid file"): its message follows "Errors:".
        after = (
            [t for t in text[text.index("Errors:") + 1 :] if t.strip()] if "Errors:" in text else []
        )
        found.append(RegoProblem(0, 0, after[0].strip() if after else "rego-cpp refused it"))
    return found[:_MAX_ERRORS]


def parse(sources: list[str]) -> Parsed:
    """Each source parsed as a Rego v0 module, all in one child process."""
    if not sources:
        return Parsed()
    if not regopy_installed() or not sys.executable:
        return Parsed(not_parsed=NOT_INSTALLED)
    request = {"path": [os.path.abspath(p) for p in sys.path], "modules": sources}
    result = run_command(
        [sys.executable, "-I", "-S", "-c", _CHILD],
        PARSE_TIMEOUT_S,
        input_bytes=json.dumps(request).encode("utf-8"),
    )
    if result.returncode == 124:
        return Parsed(not_parsed=f"rego-cpp did not finish within {PARSE_TIMEOUT_S:.0f} s")
    blocks: dict[int, list[str]] = {}
    outcome: dict[int, str] = {}
    current: Optional[list[str]] = None
    for line in result.stdout.splitlines():
        mark = _MARK.fullmatch(line)
        if mark is None:
            if current is not None:
                current.append(line)
            continue
        k = int(mark.group(1))
        if mark.group(2):
            outcome[k] = mark.group(2)
            current = None
        else:
            current = blocks.setdefault(k, [])
    if len(outcome) != len(sources):
        why = result.stderr.strip().splitlines()[-1:] or [f"exit status {result.returncode}"]
        return Parsed(not_parsed=f"rego-cpp stopped: {why[0][:200]}")
    return Parsed(
        [
            [] if outcome[k] == "ok" else _read_errors(source, blocks.get(k, []))
            for k, source in enumerate(sources)
        ]
    )


# Gatekeeper 3.15.1 (frameworks' constraint/pkg/client/drivers/rego, vendored at
# vendor/github.com/open-policy-agent/frameworks/constraint/pkg/client/drivers/rego/):
# compilers.go parses a template's rego and each of its libs with OPA's ast.ParseModule and
# refuses an empty module; its requireModuleRules (driver.go) refuses a rego without a rule
# named violation; rewriteModulePackage (driver.go) then replaces the package with
# data.template, so its name never collides with another template's. OPA (v0.60.0, vendored
# there: ast/parser_ext.go) refuses a module without a package: "package expected".
_PACKAGE = re.compile(r"^[ \t]*package\b", re.MULTILINE)
# A rule's head starts its statement: the name at the start of a line (or after `default`).
_VIOLATION = re.compile(r"^[ \t]*(?:default[ \t]+)?violation\b", re.MULTILINE)
NO_VIOLATION = (
    "the Rego has no violation rule, which Gatekeeper requires of a template's rego (frameworks' "
    'requireModuleRules): write `violation[{"msg": msg}] { ... }`'
)
NO_PACKAGE = (
    "a Rego module starts with `package NAME` (Gatekeeper replaces the name with its own, so "
    "any will do)"
)


def module_problems(modules: list[tuple[str, bool]]) -> Parsed:
    """Each (source, is the template's rego rather than one of its libs) checked as Gatekeeper
    reads it: not empty, within MAX_MODULE_BYTES, parsed, and a rego with its violation rule."""
    found: list[Optional[list[RegoProblem]]] = []
    to_parse: list[str] = []
    for source, _ in modules:
        try:
            size = len(source.encode("utf-8"))
        except UnicodeEncodeError:
            found.append([RegoProblem(0, 0, "the Rego is not valid Unicode text")])
            continue
        if not source.strip():
            found.append(
                [RegoProblem(0, 0, "the Rego is empty: Gatekeeper refuses an empty module")]
            )
        elif size > MAX_MODULE_BYTES:
            found.append(
                [
                    RegoProblem(
                        0,
                        0,
                        f"the Rego is {size // 1024} KiB, more than agentd parses "
                        f"({MAX_MODULE_BYTES // 1024} KiB)",
                    )
                ]
            )
        else:
            found.append(None)
            to_parse.append(source)
    parsed = parse(to_parse)
    results = iter(parsed.problems)
    out: list[list[RegoProblem]] = []
    for (source, entry), early in zip(modules, found):
        if early is not None or parsed.not_parsed is not None:
            out.append(early or [])
            continue
        problems = next(results)
        if not _PACKAGE.search(source):
            # rego-cpp takes `x := 1` alone; OPA's parser does not.
            problems = [RegoProblem(0, 0, NO_PACKAGE), *problems]
        elif not problems and entry and not _VIOLATION.search(source):
            problems = [RegoProblem(0, 0, NO_VIOLATION)]
        out.append(problems)
    return Parsed(out, parsed.not_parsed)
