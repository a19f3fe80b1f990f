"""
README.rst's Security section names, for each promise, the tests that
hold smtpmx to it: every test it names must exist, so that the section
cannot drift from the suite.
"""

from __future__ import annotations

import ast
import os
import re

from twisted.trial.unittest import SynchronousTestCase

from tests.e2e import ROOT

# The promises the section makes, by their headings.
PROMISES = (
    "No open relay",
    "No smuggling",
    "No path escape",
    "No acknowledged message lost",
    "Bounded memory per session",
    "No traceback on the wire",
)

# A test named in full (tests/FILE.py::Class or ::Class::test), or, after
# one, a further test of the same class (``test_name``).
REFERENCE = re.compile(r"``(?:(tests/\w+\.py)::(\w+)(?:::(\w+))?|(test_\w+))``")


def securitySection() -> str:
    """
    The text of README.rst's Security section.
    """
    with open(os.path.join(ROOT, "README.rst"), encoding="utf-8") as f:
        text = f.read()
    start = text.index("Security\n========\n")
    end = text.index("\n=====", start + 20)
    return text[start:text.rindex("\n", 0, end)]


def references(section: str) -> dict[str, list[tuple[str, str, str | None]]]:
    """
    The tests each promise names: C{(file, class, test or None)}.
    """
    found: dict[str, list[tuple[str, str, str | None]]] = {}
    promise = None
    where: tuple[str, str] | None = None
    for line in section.splitlines():
        if line in PROMISES:
            promise = line
            found[promise] = []
            continue
        for m in REFERENCE.finditer(line):
            path, cls, test, more = m.groups()
            if path is not None:
                where = (path, cls)
                found[promise].append((path, cls, test))
            elif where is not None:
                found[promise].append((where[0], where[1], more))
    return found


class SecuritySectionTests(SynchronousTestCase):
    """
    README.rst's Security section.
    """

    def test_everyNamedTestExists(self) -> None:
        """
        Each of the six promises names at least two tests, and every test
        class and test method named exists in the file named.
        """
        found = references(securitySection())
        self.assertEqual(sorted(found), sorted(PROMISES))
        missing = []
        for promise, named in found.items():
            self.assertGreaterEqual(len(named), 2, promise)
            for path, cls, test in named:
                with open(os.path.join(ROOT, path), encoding="utf-8") as f:
                    tree = ast.parse(f.read())
                classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}
                if cls not in classes:
                    missing.append(f"{path}::{cls}")
                    continue
                methods = {
                    n.name for n in ast.walk(classes[cls]) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
                }
                if test is not None and test not in methods:
                    missing.append(f"{path}::{cls}::{test}")
        self.assertEqual(missing, [])
