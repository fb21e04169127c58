"""The Rego of Gatekeeper's ConstraintTemplates parsed with regopy 0.4.6 (real rego-cpp, in a child
process) and its errors located at FILE:LINE:COL inside the `rego: |` block."""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentd.desired.rego import NO_PACKAGE, NO_VIOLATION, NOT_INSTALLED, module_problems, parse
from agentd.desired.validate import load_and_validate
from tests.support.node import Node
from tests.unit.desired.test_addons import DOC, POLICIES, _policies

pytestmark = pytest.mark.skipif(
    platform.machine() != "x86_64", reason="regopy 0.4.6 has wheels for x86_64 only"
)
GUIDE_REGO = 'violation[{"msg": msg}] {\n'


def _doc(tmp_path: Path, policies: str) -> tuple[Path, str]:
    text = DOC.replace("ROLE", "server").replace("VALUES\n", _policies(policies))
    text = text.replace("IMAGE_URL", "https://mirror.example/gk.tar.zst")
    path = tmp_path / "desired.yaml"
    path.write_text(text)
    return path, text


def _line_of(text: str, needle: str) -> int:
    return text[: text.index(needle)].count("\n") + 1


def test_the_guides_policies_parse_clean(tmp_path: Path) -> None:
    path, _ = _doc(tmp_path, POLICIES)
    report = load_and_validate([path], "amd64", merge_all=True)
    assert report.errors == []
    assert report.warnings == []


def test_a_syntax_error_is_refused_at_its_line_and_column_in_the_file(tmp_path: Path) -> None:
    bad = POLICIES.replace("msg := sprintf(", "msg = := sprintf(")
    path, text = _doc(tmp_path, bad)
    errors = load_and_validate([path], "amd64", merge_all=True).errors
    line = _line_of(text, "msg = := sprintf(")
    col = text.split("\n")[line - 1].index("= :=") + 1
    # Rego line 5 of the first template: `  msg = := ...`, its `=` at column 7.
    assert errors[0] == f"{path}:{line}:{col}: line 5, column 7: Invalid assignment operator"
    assert all(e.startswith(f"{path}:{line}:") for e in errors)


def test_rego_v1_syntax_without_its_import_is_refused(tmp_path: Path) -> None:
    # Gatekeeper 3.15's OPA reads Rego v0: `contains` and `if` need `import future.keywords`.
    v1 = POLICIES.replace(GUIDE_REGO, 'violation contains {"msg": msg} if {\n', 1)
    path, text = _doc(tmp_path, v1)
    errors = load_and_validate([path], "amd64", merge_all=True).errors
    assert errors
    assert errors[0].startswith(f"{path}:{_line_of(text, 'violation contains')}:")
    imported = v1.replace(
        "package k8suntrustedregistry\n",
        "package k8suntrustedregistry\n          import future.keywords.contains\n"
        "          import future.keywords.if\n",
    )
    path, _ = _doc(tmp_path, imported)
    assert load_and_validate([path], "amd64", merge_all=True).errors == []


def test_a_template_without_a_violation_rule_is_refused(tmp_path: Path) -> None:
    path, text = _doc(tmp_path, POLICIES.replace(GUIDE_REGO, 'deny[{"msg": msg}] {\n', 1))
    errors = load_and_validate([path], "amd64", merge_all=True).errors
    # At the rego field (its `|`): the problem is the whole module's.
    i = text.index("rego: |") + len("rego: ")
    assert errors == [
        f"{path}:{_line_of(text, 'rego: |')}:{i - text.rfind(chr(10), 0, i)}: {NO_VIOLATION}"
    ]


def test_module_checks_refuse_what_gatekeeper_refuses() -> None:
    parsed = module_problems(
        [("   \n", True), ("x := 1\n", False), ("package lib.x\nf(a) = a\n", False)]
    )
    assert parsed.not_parsed is None
    empty, no_package, lib = parsed.problems
    assert [p.message for p in empty] == ["the Rego is empty: Gatekeeper refuses an empty module"]
    assert no_package[0].message == NO_PACKAGE
    assert lib == []  # a lib needs no violation rule


def test_a_module_over_the_cap_is_refused_unparsed() -> None:
    big = "package x\n" + "# padding\n" * 30_000
    (problems,) = module_problems([(big, True)]).problems
    assert "more than agentd parses (256 KiB)" in problems[0].message


def test_without_regopy_one_warning_says_how_to_get_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "regopy", None)
    path, text = _doc(tmp_path, POLICIES.replace("msg := sprintf(", "msg = := sprintf("))
    report = load_and_validate([path], "amd64", merge_all=True)
    assert report.errors == []
    at = _line_of(text, "- apiVersion: templates")  # the policies' list, where it starts
    assert report.warnings == [
        f"{path}:{at}:7: warning: the policies' Rego was not parsed: {NOT_INSTALLED}"
    ]


def test_no_policies_imports_no_regopy(tmp_path: Path) -> None:
    path = tmp_path / "desired.yaml"
    path.write_text(DOC.replace("ROLE", "server").replace("VALUES\n", "").replace("IMAGE_URL", "x"))
    code = (
        "import sys; from pathlib import Path; from agentd.desired.validate import "
        "load_and_validate; load_and_validate([Path(sys.argv[1])], 'amd64', merge_all=True); "
        "print(sorted(m for m in sys.modules if 'rego' in m))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


def test_validate_exits_on_a_rego_error_and_its_output_is_only_agentds(
    tmp_path: Path, sandbox_root: Path
) -> None:
    node = Node(sandbox_root)
    path, _ = _doc(tmp_path, POLICIES)
    ok = node.agentd("validate", str(path))
    assert ok.code == 0, ok.stderr
    path, _ = _doc(tmp_path, POLICIES.replace("msg := sprintf(", "msg = := sprintf("))
    bad = node.agentd("validate", str(path))
    assert bad.code == 1, bad.stderr  # validate: the desired state is invalid
    assert "Invalid assignment operator" in bad.stderr
    # rego-cpp's own printout (its "Errors:" and "Pass ... failed") stays in the child.
    assert "Pass collections failed" not in bad.stdout + bad.stderr


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.text(
        alphabet=st.sampled_from(list('package x violation[{}]():=!"`\\#\n\t .,_1éa')), max_size=200
    )
)
def test_any_text_is_parsed_or_refused_never_raises(source: str) -> None:
    parsed = parse([source])
    assert parsed.not_parsed is None
    (problems,) = parsed.problems
    assert all(p.line >= 0 and p.col >= 0 and p.message for p in problems)
