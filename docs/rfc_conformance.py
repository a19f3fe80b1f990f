"""
Build C{docs/rfc-conformance.rst}: every requirement of
C{docs/rfc-requirements.toml} with the tests that check it.

A test names what it checks with a marker: the RFC, the section, and the
ids of the catalogue's requirements of that section that the test
checks::

    @pytest.mark.rfc("5321", "4.5.2", "5321-4.5.2-2")
    def test_leadingDot(self): ...

    @pytest.mark.rfc("5321", "4.4", "5321-4.4-1", "5321-4.4-3")
    def test_receivedLine(self): ...

The ids are required when the catalogue lists more than one requirement
for the section, so that a test is counted only for what it checks; a
marker naming such a section without ids is an error.  A section with a
single requirement may be named alone (C{rfc("7505", "3")}).  A marker on
a class applies to each of its tests, and a module's C{pytestmark} to
each test of the module.

The scripted dialogues of C{tests/dialogues.py} carry their markers as
data, C{Dialogue(name, ..., rfc=(("5321", "4.1.4", "5321-4.1.4-8"), ...))},
each entry the arguments of one marker under the same rule.  A test that
runs them, C{@pytest.mark.parametrize("dialogue", dialogues.parameters())},
covers each dialogue's requirements under its parametrized id,
C{tests/test_session.py::test_dialogue[mailBeforeHelo]}.

The markers are read from the source with L{ast}, so nothing is imported
or run.

Run from anywhere::

    python docs/rfc_conformance.py           # rewrite docs/rfc-conformance.rst
    python docs/rfc_conformance.py --check   # exit 1 if it is out of date

C{tests/test_rfc_conformance.py} runs the check with the suite.
"""

from __future__ import annotations

import argparse
import ast
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence, Union

ROOT = Path(__file__).resolve().parent.parent
CATALOGUE = ROOT / "docs" / "rfc-requirements.toml"
TABLE = ROOT / "docs" / "rfc-conformance.rst"
TESTS = ROOT / "tests"
DIALOGUES = "dialogues.py"
REGENERATE = "python docs/rfc_conformance.py"

LEVELS = ("MUST", "MUST NOT", "REQUIRED", "SHOULD", "SHOULD NOT")
APPLIES = ("server", "relay", "both", "not applicable")


@dataclass(frozen=True)
class Requirement:
    """
    One requirement of an RFC, as the catalogue lists it.

    @ivar id: C{"<rfc>-<section>-<n>"}, unique in the catalogue.
    @ivar applies: C{server}, C{relay}, C{both} or C{not applicable}.
    @ivar note: how smtpmx meets it or departs from it, or why it does not
        apply; empty when there is nothing to say.
    """

    id: str
    rfc: str
    section: str
    level: str
    applies: str
    text: str
    note: str = ""

    @property
    def applicable(self) -> bool:
        """
        Whether smtpmx must meet it (and a test should check it).
        """
        return self.applies != "not applicable"


@dataclass(frozen=True)
class Marker:
    """
    One C{pytest.mark.rfc(...)} found on a test.

    @ivar test: the test's pytest node id, C{tests/file.py::Class::test}.
    @ivar where: C{file:line} of the marker, for error messages.
    @ivar requirements: the requirement ids given after the section, if
        any.
    """

    test: str
    where: str
    rfc: str
    section: str
    requirements: tuple[str, ...] = ()


@dataclass
class Coverage:
    """
    The tests of each requirement, and the markers that name nothing in
    the catalogue.

    @ivar tests: requirement id to the sorted node ids of its tests.
    @ivar errors: one line per marker that matches no requirement, names
        a requirement of another section, or names a section of several
        requirements without saying which.
    """

    tests: dict[str, list[str]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


def loadCatalogue(path: Path = CATALOGUE) -> list[Requirement]:
    """
    Read and check the requirement catalogue.

    @param path: the TOML file, an array of C{[[requirement]]} tables.
    @raise ValueError: a requirement lacks a field, repeats an id, or has
        an unknown level or applicability.
    @return: the requirements in the catalogue's order.
    """
    with path.open("rb") as f:
        data = tomllib.load(f)
    requirements = []
    seen: set[str] = set()
    for entry in data.get("requirement", []):
        try:
            r = Requirement(**entry)
        except TypeError as e:
            raise ValueError(f"{path.name}: bad requirement {entry!r}: {e}") from None
        if r.id in seen:
            raise ValueError(f"{path.name}: requirement id {r.id} given twice")
        if r.level not in LEVELS:
            raise ValueError(f"{path.name}: {r.id}: unknown level {r.level!r}")
        if r.applies not in APPLIES:
            raise ValueError(f"{path.name}: {r.id}: unknown applies {r.applies!r}")
        if r.applies == "not applicable" and not r.note:
            raise ValueError(f"{path.name}: {r.id}: say in a note why it does not apply")
        seen.add(r.id)
        requirements.append(r)
    return requirements


def _isRfcMarker(node: ast.expr) -> bool:
    """
    Whether C{node} is a call of C{pytest.mark.rfc} (or C{mark.rfc}).
    """
    if not isinstance(node, ast.Call):
        return False
    f = node.func
    return (
        isinstance(f, ast.Attribute)
        and f.attr == "rfc"
        and (
            (isinstance(f.value, ast.Attribute) and f.value.attr == "mark")
            or (isinstance(f.value, ast.Name) and f.value.id == "mark")
        )
    )


def _markerArguments(call: ast.Call, where: str) -> tuple[str, ...]:
    """
    The string arguments of one C{rfc} marker.

    @raise ValueError: they are not two or more string literals.
    """
    args = call.args
    if call.keywords or len(args) < 2:
        raise ValueError(f"{where}: pytest.mark.rfc takes (rfc, section[, requirement id, ...])")
    values = []
    for a in args:
        if not (isinstance(a, ast.Constant) and isinstance(a.value, str)):
            raise ValueError(f"{where}: pytest.mark.rfc arguments must be string literals")
        values.append(a.value)
    return tuple(values)


def _markersIn(nodes: Iterable[ast.expr]) -> Iterator[ast.Call]:
    """
    The C{rfc} marker calls among decorators or a C{pytestmark} value.
    """
    for node in nodes:
        if isinstance(node, (ast.List, ast.Tuple)):
            yield from _markersIn(node.elts)
        elif _isRfcMarker(node):
            yield node  # type: ignore[misc]


def _moduleMarkers(tree: ast.Module) -> list[ast.Call]:
    """
    The C{rfc} markers of a module-level C{pytestmark = ...}.
    """
    found = []
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "pytestmark" for t in node.targets
        ):
            found.extend(_markersIn([node.value]))
    return found


FunctionNode = Union[ast.FunctionDef, ast.AsyncFunctionDef]


def _tests(tree: ast.Module) -> Iterator[tuple[list[str], FunctionNode, list[ast.Call]]]:
    """
    Every test function of a module, with its node-id parts and the
    markers inherited from its classes.
    """

    def walk(body: list[ast.stmt], prefix: list[str], inherited: list[ast.Call]):
        for node in body:
            if isinstance(node, ast.ClassDef):
                yield from walk(node.body, prefix + [node.name], inherited + list(_markersIn(node.decorator_list)))
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test"):
                yield prefix + [node.name], node, inherited

    yield from walk(tree.body, [], [])


def _runsDialogues(function: FunctionNode) -> bool:
    """
    Whether a test is parametrized with the scripted dialogues,
    C{@pytest.mark.parametrize("dialogue", dialogues.parameters())}.
    """
    for node in function.decorator_list:
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        if node.func.attr != "parametrize" or len(node.args) < 2:
            continue
        values = node.args[1]
        if (
            isinstance(values, ast.Call)
            and isinstance(values.func, ast.Attribute)
            and values.func.attr == "parameters"
            and isinstance(values.func.value, ast.Name)
            and values.func.value.id == "dialogues"
        ):
            return True
    return False


def _isDialogue(node: ast.AST) -> bool:
    """
    Whether C{node} is a call C{Dialogue(...)}.
    """
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "Dialogue"
    )


def _literalString(node: Optional[ast.expr], where: str, what: str) -> str:
    """
    The value of a string literal.

    @raise ValueError: C{node} is missing or not a string literal.
    """
    if not (isinstance(node, ast.Constant) and isinstance(node.value, str)):
        raise ValueError(f"{where}: {what} must be a string literal")
    return node.value


def dialogueMarkers(path: Path, root: Path = ROOT) -> list[tuple[str, str, tuple[str, ...]]]:
    """
    The C{rfc} entries of every C{Dialogue(...)} in C{path}, read with
    L{ast}.

    @param path: C{tests/dialogues.py}.
    @param root: the C{file:line} of each entry is relative to it.
    @raise ValueError: a dialogue's name is not a string literal, its
        C{rfc} is not a tuple of tuples, or an entry is not 2 or more
        string literals.
    @return: (dialogue name, C{file:line} of the entry, the entry's
        arguments) for each entry, in the file's order.
    """
    relative = path.relative_to(root).as_posix()
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for call in sorted((n for n in ast.walk(tree) if _isDialogue(n)), key=lambda n: n.lineno):
        assert isinstance(call, ast.Call)
        where = f"{relative}:{call.lineno}"
        keywords = {k.arg: k.value for k in call.keywords}
        name = _literalString(call.args[0] if call.args else keywords.get("name"), where, "a dialogue's name")
        rfc = call.args[3] if len(call.args) > 3 else keywords.get("rfc")
        if rfc is None:
            continue
        if not isinstance(rfc, (ast.Tuple, ast.List)):
            raise ValueError(f"{where}: {name}: rfc must be a tuple of (rfc, section[, requirement id, ...])")
        for entry in rfc.elts:
            entryWhere = f"{relative}:{entry.lineno}"
            if not isinstance(entry, (ast.Tuple, ast.List)) or len(entry.elts) < 2:
                raise ValueError(f"{entryWhere}: {name}: an rfc entry is (rfc, section[, requirement id, ...])")
            values = tuple(_literalString(e, entryWhere, "rfc entries") for e in entry.elts)
            found.append((name, entryWhere, values))
    return found


def findMarkers(testsDir: Path = TESTS, root: Path = ROOT) -> list[Marker]:
    """
    Every C{rfc} marker on a test under C{testsDir}, read with L{ast}:
    the decorators and C{pytestmark}s of the C{test_*.py} files, and the
    C{rfc} entries of the dialogues of C{dialogues.py} for each test that
    runs them.

    @param testsDir: the directory of C{test_*.py} files.
    @param root: node ids are relative to it.
    @raise ValueError: a marker's arguments are not 2 or more string
        literals.
    """
    markers = []
    runners = []
    for path in sorted(testsDir.rglob("test_*.py")):
        relative = path.relative_to(root).as_posix()
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        moduleLevel = _moduleMarkers(tree)
        for parts, function, inherited in _tests(tree):
            nodeId = "::".join([relative] + parts)
            if _runsDialogues(function):
                runners.append(nodeId)
            for call in moduleLevel + inherited + list(_markersIn(function.decorator_list)):
                where = f"{relative}:{call.lineno}"
                rfc, section, *ids = _markerArguments(call, where)
                markers.append(Marker(nodeId, where, rfc, section, tuple(ids)))
    script = testsDir / DIALOGUES
    if script.exists():
        for name, where, (rfc, section, *ids) in dialogueMarkers(script, root):
            for runner in runners:
                markers.append(Marker(f"{runner}[{name}]", where, rfc, section, tuple(ids)))
    return markers


def match(requirements: Sequence[Requirement], markers: Iterable[Marker]) -> Coverage:
    """
    Pair markers with the requirements they name.

    A marker covers the requirements whose ids it gives; one without ids
    covers its section's requirement when the section has only one.

    @return: the tests of every requirement (an empty list for one no test
        checks) and an error for each marker naming an (RFC, section) or a
        requirement id the catalogue does not have, or naming a section
        of several requirements without their ids.
    """
    coverage = Coverage({r.id: [] for r in requirements})
    bySection: dict[tuple[str, str], list[Requirement]] = {}
    byId = {r.id: r for r in requirements}
    for r in requirements:
        bySection.setdefault((r.rfc, r.section), []).append(r)
    for m in markers:
        inSection = bySection.get((m.rfc, m.section))
        if not inSection:
            coverage.errors.append(
                f"{m.where}: {m.test}: RFC {m.rfc} section {m.section} is not in docs/rfc-requirements.toml"
            )
            continue
        named = []
        for requirementId in m.requirements:
            r = byId.get(requirementId)
            if r is None or (r.rfc, r.section) != (m.rfc, m.section):
                coverage.errors.append(
                    f"{m.where}: {m.test}: no requirement {requirementId} in RFC {m.rfc} section {m.section}"
                )
            else:
                named.append(r)
        if not m.requirements:
            if len(inSection) > 1:
                ids = ", ".join(r.id for r in inSection)
                coverage.errors.append(
                    f"{m.where}: {m.test}: RFC {m.rfc} section {m.section} has {len(inSection)} "
                    f"requirements; name the ids the test checks ({ids})"
                )
                continue
            named = inSection
        for r in named:
            if m.test not in coverage.tests[r.id]:
                coverage.tests[r.id].append(m.test)
    for tests in coverage.tests.values():
        tests.sort()
    return coverage


def _rfcOrder(requirements: Sequence[Requirement]) -> list[str]:
    """
    The RFCs in the order the catalogue first names them.
    """
    return list(dict.fromkeys(r.rfc for r in requirements))


def _counts(requirements: Iterable[Requirement], coverage: Coverage) -> tuple[int, int, int]:
    """
    How many requirements are covered, not covered and not applicable.
    """
    covered = notCovered = notApplicable = 0
    for r in requirements:
        if not r.applicable:
            notApplicable += 1
        elif coverage.tests[r.id]:
            covered += 1
        else:
            notCovered += 1
    return covered, notCovered, notApplicable


def summary(requirements: Sequence[Requirement], coverage: Coverage) -> tuple[int, int, int]:
    """
    The counts of the whole catalogue: covered, not covered, not applicable.
    """
    return _counts(requirements, coverage)


def render(requirements: Sequence[Requirement], coverage: Coverage) -> str:
    """
    The text of C{docs/rfc-conformance.rst}.
    """
    out = [
        ".. This file is generated by docs/rfc_conformance.py from",
        "   docs/rfc-requirements.toml and the rfc markers of tests/; do not edit it.",
        f"   Rebuild it with: {REGENERATE}",
        "",
        "RFC conformance",
        "===============",
        "",
        "Each requirement (MUST, MUST NOT, REQUIRED, SHOULD, SHOULD NOT) of the",
        "RFCs smtpmx implements that bears on a receiving MX or a relay, in our",
        "words, with the tests that check it.  A test names what it checks with",
        '``@pytest.mark.rfc("5321", "4.5.2", "5321-4.5.2-2")``: the RFC, the',
        "section, and the ids of the requirements it checks (the ids may be left",
        "out only for a section with a single requirement).",
        '"Applies to" says which side of smtpmx the requirement binds: the',
        "server that receives mail, the relay that sends it on (and sends",
        "bounces), or both.  A note says how smtpmx meets a requirement, where",
        "it knowingly departs from a SHOULD, or why a requirement does not apply.",
        "",
        "Summary",
        "-------",
        "",
        ".. list-table::",
        "   :header-rows: 1",
        "",
        "   * - RFC",
        "     - covered",
        "     - not covered",
        "     - not applicable",
    ]
    for rfc in _rfcOrder(requirements):
        c, n, a = _counts((r for r in requirements if r.rfc == rfc), coverage)
        out += [f"   * - {rfc}", f"     - {c}", f"     - {n}", f"     - {a}"]
    c, n, a = summary(requirements, coverage)
    out += ["   * - all", f"     - {c}", f"     - {n}", f"     - {a}", ""]
    out += [f"{c} of {c + n} applicable requirements are checked by at least one test.", ""]
    for rfc in _rfcOrder(requirements):
        title = f"RFC {rfc}"
        out += [title, "-" * len(title), ""]
        for r in (r for r in requirements if r.rfc == rfc):
            out += [f"``{r.id}``: section {r.section}, {r.level}"]
            out += [f"   {r.text}", ""]
            out += [f"   Applies to: {r.applies}.", ""]
            if r.note:
                out += [f"   Note: {r.note}", ""]
            tests = coverage.tests[r.id]
            if not r.applicable:
                continue
            if tests:
                out += ["   Tests:", ""]
                out += [f"   - ``{t}``" for t in tests]
                out += [""]
            else:
                out += ["   Tests: not covered.", ""]
    return "\n".join(out).rstrip("\n") + "\n"


def build(catalogue: Path = CATALOGUE, testsDir: Path = TESTS) -> tuple[str, Coverage, list[Requirement]]:
    """
    Read the catalogue and the markers and render the table.

    @return: the table's text, the coverage (with its errors), and the
        requirements.
    """
    requirements = loadCatalogue(catalogue)
    coverage = match(requirements, findMarkers(testsDir))
    return render(requirements, coverage), coverage, requirements


def main(argv: Optional[Sequence[str]] = None) -> int:
    """
    Rewrite C{docs/rfc-conformance.rst}, or with C{--check} only compare.

    @return: the exit status: 1 when a marker names nothing in the
        catalogue or a section of several requirements without their ids,
        or, with C{--check}, when the file is out of date.
    """
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check that the table is current")
    options = parser.parse_args(argv)
    text, coverage, requirements = build()
    if coverage.errors:
        for e in coverage.errors:
            print(e, file=sys.stderr)
        return 1
    current = TABLE.read_text(encoding="utf-8") if TABLE.exists() else None
    c, n, a = summary(requirements, coverage)
    if options.check:
        if current != text:
            print(f"{TABLE.relative_to(ROOT)} is out of date; rebuild it with: {REGENERATE}", file=sys.stderr)
            return 1
    elif current != text:
        TABLE.write_text(text, encoding="utf-8")
    print(f"{c} covered, {n} not covered, {a} not applicable")
    return 0


if __name__ == "__main__":
    sys.exit(main())
