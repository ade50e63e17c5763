"""The reasons table (stockade.reasons) against the code: every reason the code writes is in it.

The reasons are constants beside the API (stockade.api.reasons): each has a row in the table, and each
row (but the Phase<phase> Events) a constant. The scan reads the source (ast) for the places a reason is
written: Events (emit, _warn_once, the posters), conditions (_cond and the (ok, reason, message) /
(reason, message) tuples the reconciler passes around), "Reason: message" problems (Observed(invalid=...),
api.reasons.problem), budget Decisions, "reason" keys and variables, and the module constants those name
(as NAME or module.NAME). A reason added anywhere there without a row fails here, literal or constant.
"""

import ast
import re
import typing
from pathlib import Path

import pytest

from stockade import reasons
from stockade.api import reasons as api_reasons
from stockade.api.models import Phase

SOURCE = Path(__file__).resolve().parents[2] / "operator" / "stockade"
REASON = re.compile(r"^[A-Z][A-Za-z0-9]+$")
PROBLEM = re.compile(r"^([A-Z][A-Za-z0-9]+): ")
# Callee -> the positional arguments that hold a reason (or a tuple with one).
CALLS = {"emit": (2,), "_warn_once": (2,), "post": (2,), "_post_event": (1,), "_cond": (2,), "Decision": (1,),
         "Admission": (1, 2), "Refusal": (0,), "problem": (0,), "_tell": (1,), "Health": (1,)}
CONDITIONS = {"Condition", "PolicyCondition"}  # the API's models: Condition(reason=...)
TUPLE_KEYWORDS = {"blocked", "held", "stopped", "quarantined", "admission", "compliance", "invalid"}
# Found by the scan, not reasons of Stockade's conditions or Events.
NOT_REASONS = {
    "Forbidden": "the reason of a ValidatingAdmissionPolicy's validation (an HTTP status reason)",
    "Stockade": 'the "Stockade: " prefix of every admission refusal message',
}


def _callee(node: ast.Call) -> str:
    return node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")


def _constants(trees: dict[str, ast.Module]) -> dict[str, str]:
    """Module-level NAME = "CamelCase" (or NAME: Final = ...) of every module (a reason is named once, in
    stockade/api/reasons.py, and imported)."""
    out = {}
    for tree in trees.values():
        for node in tree.body:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target] \
                if isinstance(node, ast.AnnAssign) else []
            value = node.value if isinstance(node, ast.Assign | ast.AnnAssign) else None
            if isinstance(value, ast.Constant) and isinstance(value.value, str) and REASON.match(value.value):
                for target in targets:
                    if isinstance(target, ast.Name):
                        out[target.id] = value.value
    return out


class Scan:
    def __init__(self, trees: dict[str, ast.Module]) -> None:
        self.trees = trees
        self.names = _constants(trees)
        self.found: dict[str, set[str]] = {}  # reason (or a pattern for an f-string) -> where in the source
        self.condition_types: set[str] = set()

    def note(self, value: str, where: str) -> None:
        self.found.setdefault(value, set()).add(where)

    def reasons_in(self, node: ast.AST, where: str, bare: bool = True) -> None:
        """Every reason an expression can be: its CamelCase strings and the constants it names (``bare``), and
        "Reason: message" problems and f"Phase{phase}" patterns."""
        if isinstance(node, ast.JoinedStr):
            head = node.values[0].value if node.values and isinstance(node.values[0], ast.Constant) else ""
            if PROBLEM.match(str(head)):
                self.note(PROBLEM.match(str(head)).group(1), where)  # type: ignore[union-attr]
            elif bare and REASON.match(str(head)) and len(node.values) > 1:
                self.note(re.escape(str(head)) + ".+", where)
            return  # the parts of an f-string are not reasons of their own
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            if PROBLEM.match(node.value):
                self.note(PROBLEM.match(node.value).group(1), where)  # type: ignore[union-attr]
            elif bare and REASON.match(node.value):
                self.note(node.value, where)
        elif bare and isinstance(node, ast.Name) and node.id in self.names:
            self.note(self.names[node.id], where)
        elif bare and isinstance(node, ast.Attribute) and node.attr in self.names:
            self.note(self.names[node.attr], where)  # reasons.NAME
            return
        for child in ast.iter_child_nodes(node):
            self.reasons_in(child, where, bare)

    def run(self) -> "Scan":
        for name, tree in self.trees.items():
            for node in ast.walk(tree):
                where = f"{name}:{getattr(node, 'lineno', 0)}"
                if isinstance(node, ast.Call):
                    self._call(node, where)
                elif isinstance(node, ast.Return) and isinstance(node.value, ast.Constant | ast.JoinedStr):
                    self.reasons_in(node.value, where, bare=False)  # return f"Reason: {message}" (a problem)
                elif isinstance(node, ast.Tuple) and len(node.elts) == 3 and isinstance(node.elts[0], ast.Constant) \
                        and isinstance(node.elts[0].value, bool):
                    self.reasons_in(node.elts[1], where)  # a condition as (ok, reason, message)
                elif isinstance(node, ast.Dict):
                    for key, value in zip(node.keys, node.values, strict=True):
                        if isinstance(key, ast.Constant) and key.value == "reason":
                            self.reasons_in(value, where)
                elif isinstance(node, ast.Assign | ast.AnnAssign):
                    targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                    if node.value is not None and any(isinstance(t, ast.Name) and "reason" in t.id.lower()
                                                      for t in targets):
                        self.reasons_in(node.value, where)
                elif isinstance(node, ast.FunctionDef) and "reason" in node.name.lower():
                    for sub in ast.walk(node):
                        if isinstance(sub, ast.Return) and sub.value is not None:
                            self.reasons_in(sub.value, where)
        return self

    def _call(self, node: ast.Call, where: str) -> None:
        callee = _callee(node)
        for index in CALLS.get(callee, ()):
            if index < len(node.args):
                self.reasons_in(node.args[index], where)
        if callee == "_cond" and node.args and isinstance(node.args[0], ast.Constant):
            self.condition_types.add(str(node.args[0].value))
        for keyword in node.keywords:
            if keyword.arg in TUPLE_KEYWORDS or (callee in CONDITIONS and keyword.arg == "reason"):
                self.reasons_in(keyword.value, where)


def scan(sources: dict[str, str]) -> Scan:
    return Scan({name: ast.parse(text) for name, text in sources.items()}).run()


@pytest.fixture(scope="module")
def code() -> Scan:
    # The table itself is left out (its rows name every constant); stockade/api/reasons.py is read for them.
    sources = {str(path.relative_to(SOURCE)): path.read_text() for path in sorted(SOURCE.rglob("*.py"))
               if path != SOURCE / "reasons.py"}
    return scan(sources)


def test_every_reason_the_code_writes_is_in_the_table(code: Scan) -> None:
    listed = set(reasons.BY_NAME) | set(NOT_REASONS)
    missing = {}
    for found, where in code.found.items():
        ok = any(re.fullmatch(found, name) for name in listed) if found.endswith(".+") else found in listed
        if not ok:
            missing[found] = sorted(where)
    assert not missing, f"reasons the code writes that stockade/reasons.py does not list: {missing}"


def test_the_scan_sees_what_it_must(code: Scan) -> None:
    # A scan that finds nothing passes the test above: these are written in as many different ways.
    expected = {"TemplateExceedsGrant", "InvalidSpec", "AdmissionRefused", "PodSecurityRefused", "NamespaceConflict",
                "BudgetExhausted", "TeamQuotaExceeded", "NarrowedBelowGrant", "WithinPolicy", "GuardrailRestored",
                "Quarantined", "Violation", "Released", "Cleanup", "Evaluable", "Invalid", "AdmissionAudit",
                "NotQuarantined", "AsExpected", "Admitted", "Phase.+"}
    assert expected <= set(code.found), sorted(expected - set(code.found))
    assert {"Ready", "GuardrailsReady", "Reconciling", "Stalled", "Quarantined"} <= code.condition_types


def test_a_new_reason_anywhere_is_caught() -> None:
    found = scan({"x.py": '''
NEW = "ConstantReason"
def f(self, body, obs):
    self.emit(body, "Warning", "EventReason", "m")
    self._warn_once(key, body, NEW, "m")
    _cond("Ready", False, "CondReason", "m", 1)
    Observed(1, None, invalid=f"ProblemReason: {obs}")
    Observed(1, None, blocked=("BlockedReason", "m"))
    Observed(1, None, invalid=problem(PROBLEM_REASON, "m"))
    self.emit(body, "Normal", reasons.ATTR_REASON, "m")
    reason = "VarReason" if obs else "OtherVarReason"
    if obs:
        return True, ALL_GOOD, "m"
    return {"reason": "DictReason"}
ALL_GOOD = "TupleReason"
PROBLEM_REASON = "ProblemConstant"
ATTR_REASON = "AttributeReason"
'''})
    assert {"ConstantReason", "EventReason", "CondReason", "ProblemReason", "BlockedReason", "VarReason",
            "OtherVarReason", "DictReason", "TupleReason", "ProblemConstant", "AttributeReason"} <= set(found.found)


def test_every_constant_has_a_row_and_every_row_a_constant() -> None:
    constants = {value for name, value in vars(api_reasons).items() if name.isupper() and isinstance(value, str)}
    rows = set(reasons.BY_NAME) - {api_reasons.phase_reason(phase) for phase in typing.get_args(Phase)}
    assert constants - rows == set(), "constants of stockade/api/reasons.py without a row in stockade/reasons.py"
    assert rows - constants == set(), "rows of stockade/reasons.py without a constant in stockade/api/reasons.py"


def test_a_constant_written_without_a_row_fails_the_scan() -> None:
    """The check itself: a constant of api/reasons.py the code writes, and which the table lacks, is reported."""
    found = scan({"api/reasons.py": 'NEW_ONE: Final = "NewOne"\nOTHER: Final = "OtherOne"\n', "x.py": '''
from stockade.api import reasons
from stockade.api.reasons import NEW_ONE
def f(self, body):
    self.emit(body, "Warning", NEW_ONE, "m")
    return Condition(type="Ready", status="False", reason=reasons.OTHER)
'''})
    assert {"NewOne", "OtherOne"} <= set(found.found)
    listed = set(reasons.BY_NAME)
    assert {"NewOne", "OtherOne"} - listed == {"NewOne", "OtherOne"}, "not rows of the table: the test above fails"


def test_every_condition_type_and_phase_is_documented(code: Scan) -> None:
    where = " ".join(part for reason in reasons.REASONS for part in reason.where)
    for kind in code.condition_types:
        assert f"{kind}=" in where, kind
    for phase in typing.get_args(Phase):
        assert f"Phase{phase}" in reasons.BY_NAME


def test_every_row_says_what_to_do() -> None:
    assert len(reasons.BY_NAME) == len(reasons.REASONS), "a reason is listed twice"
    for reason in reasons.REASONS:
        assert reason.where and reason.meaning.endswith(".") and reason.action.endswith("."), reason.name


def test_docs_reasons_md_is_generated_from_the_table() -> None:
    docs = SOURCE.parents[1] / "docs" / "reasons.md"
    assert docs.read_text() == reasons.render_markdown(), "docs/reasons.md is stale: run `make docs` and commit"


def test_text_and_json_list_every_reason() -> None:
    text = reasons.render_text()
    assert all(f"{reason.name}  (" in text for reason in reasons.REASONS)
    data = reasons.as_json()
    assert [r["name"] for r in data["reasons"]] == [r.name for r in reasons.REASONS]
    assert "UngrantedEgress" in data["violationKinds"] and "UngrantedEgress" in text


def test_stockade_explain_reasons_prints_the_table() -> None:
    import json

    from typer.testing import CliRunner

    from stockade import cli

    text = CliRunner().invoke(cli.app, ["explain", "reasons"])
    assert text.exit_code == 0 and text.stdout == reasons.render_text()
    data = CliRunner().invoke(cli.app, ["explain", "reasons", "-o", "json"])
    assert data.exit_code == 0 and json.loads(data.stdout) == reasons.as_json()
