"""
Tests for the RFC conformance table: C{docs/rfc-conformance.rst} is what
C{docs/rfc_conformance.py} builds from the catalogue and the C{rfc}
markers of the tests, every marker names a requirement of the catalogue,
and the script reads markers the way its docstring says.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
import tempfile
import textwrap
from pathlib import Path
from types import ModuleType

from twisted.trial.unittest import SynchronousTestCase

ROOT = Path(__file__).resolve().parent.parent


def _loadScript() -> ModuleType:
    """
    Import C{docs/rfc_conformance.py}, which is a script, not a package
    module.
    """
    name = "rfc_conformance"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "docs" / "rfc_conformance.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


conformance = _loadScript()

CATALOGUE = """\
[[requirement]]
id = "5321-4.5.2-1"
rfc = "5321"
section = "4.5.2"
level = "MUST"
applies = "relay"
text = "Stuff dots."

[[requirement]]
id = "5321-4.5.2-2"
rfc = "5321"
section = "4.5.2"
level = "MUST"
applies = "server"
text = "Unstuff dots."

[[requirement]]
id = "7505-3-1"
rfc = "7505"
section = "3"
level = "MUST"
applies = "relay"
text = "Null MX fails."

[[requirement]]
id = "7505-3-2"
rfc = "7505"
section = "3"
level = "MUST NOT"
applies = "not applicable"
text = "No other MX."
note = "For domain owners."
"""


class RepositoryTableTests(SynchronousTestCase):
    """
    The table in the repository is current and every marker is known.
    """

    def test_markersNameCatalogueRequirements(self) -> None:
        """
        Every C{pytest.mark.rfc} in C{tests/} names an (RFC, section), and
        requirement id if given, that C{docs/rfc-requirements.toml} lists.
        """
        _, coverage, _ = conformance.build()
        self.assertEqual(
            coverage.errors,
            [],
            "markers naming no requirement; add the requirement to "
            "docs/rfc-requirements.toml or correct the marker:\n" + "\n".join(coverage.errors),
        )

    def test_tableIsCurrent(self) -> None:
        """
        C{docs/rfc-conformance.rst} is exactly what the script builds now;
        otherwise the failure says how to rebuild it.
        """
        text, _, _ = conformance.build()
        table = ROOT / "docs" / "rfc-conformance.rst"
        current = table.read_text(encoding="utf-8") if table.exists() else ""
        self.assertTrue(
            current == text,
            f"docs/rfc-conformance.rst is out of date; rebuild it with: {conformance.REGENERATE}",
        )

    def test_dialogueMarkersAreRead(self) -> None:
        """
        The script reads the C{rfc} entries of the dialogues of
        C{tests/dialogues.py} exactly as they are at run time, and lists
        them for each of the three tests that run the dialogues.
        """
        from tests import dialogues

        read: dict[str, list[tuple[str, ...]]] = {}
        for name, _, entry in conformance.dialogueMarkers(ROOT / "tests" / "dialogues.py"):
            read.setdefault(name, []).append(entry)
        self.assertEqual(read, {d.name: list(d.rfc) for d in dialogues.DIALOGUES if d.rfc})
        tests = {m.test for m in conformance.findMarkers()}
        for d in dialogues.DIALOGUES:
            if not d.rfc:
                continue
            for runner in ("test_session.py", "test_server.py", "test_dialogues_e2e.py"):
                self.assertIn(f"tests/{runner}::test_dialogue[{d.name}]", tests)

    def test_catalogueIsValid(self) -> None:
        """
        The catalogue loads: every requirement has its fields, a known
        level, a unique id, and a note when it does not apply.
        """
        requirements = conformance.loadCatalogue()
        self.assertGreater(len(requirements), 60)
        for r in requirements:
            self.assertTrue(r.id.startswith(f"{r.rfc}-{r.section}-"), r.id)


class ScriptTests(SynchronousTestCase):
    """
    The script on a small catalogue and test tree of its own.
    """

    def setUp(self) -> None:
        """
        A temporary root with C{docs/rfc-requirements.toml} and C{tests/}.
        """
        self.root = Path(tempfile.mkdtemp())
        self.addCleanup(self._removeRoot)
        (self.root / "docs").mkdir()
        (self.root / "tests").mkdir()
        self.catalogue = self.root / "docs" / "rfc-requirements.toml"
        self.catalogue.write_text(CATALOGUE)

    def _removeRoot(self) -> None:
        """
        Remove the temporary root.
        """
        shutil.rmtree(self.root)

    def coverage(self, source: str):
        """
        Write C{source} as C{tests/test_x.py} and match its markers.
        """
        (self.root / "tests" / "test_x.py").write_text(textwrap.dedent(source))
        requirements = conformance.loadCatalogue(self.catalogue)
        markers = conformance.findMarkers(self.root / "tests", self.root)
        return requirements, conformance.match(requirements, markers)

    def dialogueCoverage(self, dialogues: str):
        """
        Write C{dialogues} as C{tests/dialogues.py}, with a test module
        whose two tests run the dialogues, and match the markers.
        """
        (self.root / "tests" / "dialogues.py").write_text(textwrap.dedent(dialogues))
        return self.coverage(
            """
            import pytest
            from tests import dialogues

            @pytest.mark.parametrize("dialogue", dialogues.parameters())
            def test_dialogue(dialogue):
                pass

            class T:
                @pytest.mark.parametrize("dialogue", dialogues.parameters())
                def test_played(self, dialogue):
                    pass

                @pytest.mark.parametrize("n", [1, 2])
                def test_other(self, n):
                    pass
            """
        )

    def test_dialogueMarkers(self) -> None:
        """
        The C{rfc} entries of each C{Dialogue(...)} of C{tests/dialogues.py}
        are markers of every test parametrized with
        C{dialogues.parameters()}, under the dialogue's name as the
        parameter id; a dialogue without entries covers nothing.
        """
        _, coverage = self.dialogueCoverage(
            """
            DIALOGUES = (
                Dialogue(
                    "unstuff",
                    "Dots are removed.",
                    (),
                    rfc=(("5321", "4.5.2", "5321-4.5.2-2"), ("7505", "3", "7505-3-1")),
                ),
                Dialogue(name="plain", doc="No markers.", steps=()),
                Dialogue("stuff", "Positional.", (), (("5321", "4.5.2", "5321-4.5.2-1"),)),
            )
            """
        )
        self.assertEqual(coverage.errors, [])
        self.assertEqual(
            coverage.tests["5321-4.5.2-2"],
            ["tests/test_x.py::T::test_played[unstuff]", "tests/test_x.py::test_dialogue[unstuff]"],
        )
        self.assertEqual(coverage.tests["7505-3-1"], coverage.tests["5321-4.5.2-2"])
        self.assertEqual(
            coverage.tests["5321-4.5.2-1"],
            ["tests/test_x.py::T::test_played[stuff]", "tests/test_x.py::test_dialogue[stuff]"],
        )

    def test_dialogueSectionOfSeveralNeedsIds(self) -> None:
        """
        A dialogue's entry follows the rule of a decorator: naming only a
        section of several requirements, or a section the catalogue
        lacks, is an error giving C{tests/dialogues.py} and the entry's
        line, for each test that runs the dialogue.
        """
        _, coverage = self.dialogueCoverage(
            """
            DIALOGUES = (
                Dialogue(
                    "dots",
                    "Dots.",
                    (),
                    rfc=(
                        ("5321", "4.5.2"),
                        ("3463", "3.4"),
                    ),
                ),
            )
            """
        )
        self.assertEqual(len(coverage.errors), 4)
        several = [e for e in coverage.errors if "4.5.2" in e]
        self.assertEqual(len(several), 2)
        for e in several:
            self.assertTrue(e.startswith("tests/dialogues.py:8: "), e)
            self.assertIn("5321-4.5.2-1, 5321-4.5.2-2", e)
        self.assertIn("tests/test_x.py::test_dialogue[dots]", " ".join(several))
        self.assertIn("tests/test_x.py::T::test_played[dots]", " ".join(several))
        unknown = [e for e in coverage.errors if "3463" in e]
        self.assertTrue(all(e.startswith("tests/dialogues.py:9: ") for e in unknown), unknown)
        self.assertIn("RFC 3463 section 3.4 is not in", unknown[0])
        self.assertEqual(coverage.tests["5321-4.5.2-1"], [])

    def test_dialogueNonLiteral(self) -> None:
        """
        A dialogue's name and C{rfc} entries must be literals the script
        can read without running anything; otherwise it raises naming the
        file and line.
        """
        for dialogues, line in (
            ('RFC = (("7505", "3"),)\nDialogue("a", "", (), rfc=RFC)\n', 2),
            ('S = "3"\nDialogue("a", "", (), rfc=(\n    ("7505", S),\n))\n', 3),
            ('Dialogue("a", "", (), rfc=(("7505",),))\n', 1),
            ('N = "a"\nDialogue(N, "", (), rfc=(("7505", "3"),))\n', 2),
        ):
            (self.root / "tests" / "dialogues.py").write_text(dialogues)
            with self.assertRaises(ValueError) as raised:
                conformance.dialogueMarkers(self.root / "tests" / "dialogues.py", self.root)
            self.assertIn(f"tests/dialogues.py:{line}:", str(raised.exception))

    def test_sectionOfSeveralNeedsIds(self) -> None:
        """
        A marker naming only a section the catalogue lists several
        requirements for covers none of them: it is an error naming the
        file, the line and the ids to choose from.
        """
        _, coverage = self.coverage(
            """
            import pytest

            class DotTests:
                @pytest.mark.rfc("5321", "4.5.2")
                def test_dots(self):
                    pass
            """
        )
        self.assertEqual(len(coverage.errors), 1)
        self.assertIn("tests/test_x.py:5", coverage.errors[0])
        self.assertIn("DotTests::test_dots", coverage.errors[0])
        self.assertIn("5321-4.5.2-1, 5321-4.5.2-2", coverage.errors[0])
        self.assertEqual(coverage.tests["5321-4.5.2-1"], [])
        self.assertEqual(coverage.tests["5321-4.5.2-2"], [])

    def test_sectionOfOneStandsAlone(self) -> None:
        """
        A marker may name only a section the catalogue lists a single
        requirement for; it covers that requirement.
        """
        catalogue = CATALOGUE[: CATALOGUE.index('[[requirement]]\nid = "7505-3-2"')]
        self.catalogue.write_text(catalogue)
        _, coverage = self.coverage(
            """
            import pytest

            @pytest.mark.rfc("7505", "3")
            def test_nullMx():
                pass
            """
        )
        self.assertEqual(coverage.errors, [])
        self.assertEqual(coverage.tests["7505-3-1"], ["tests/test_x.py::test_nullMx"])

    def test_requirementIdNarrows(self) -> None:
        """
        A third argument names the one requirement of the section covered.
        """
        _, coverage = self.coverage(
            """
            import pytest

            @pytest.mark.rfc("5321", "4.5.2", "5321-4.5.2-2")
            def test_unstuff():
                pass
            """
        )
        self.assertEqual(coverage.errors, [])
        self.assertEqual(coverage.tests["5321-4.5.2-1"], [])
        self.assertEqual(coverage.tests["5321-4.5.2-2"], ["tests/test_x.py::test_unstuff"])

    def test_severalIds(self) -> None:
        """
        A marker may name several requirements of its section, each after
        the section.
        """
        _, coverage = self.coverage(
            """
            import pytest

            @pytest.mark.rfc("5321", "4.5.2", "5321-4.5.2-1", "5321-4.5.2-2")
            def test_roundTrip():
                pass
            """
        )
        self.assertEqual(coverage.errors, [])
        self.assertEqual(coverage.tests["5321-4.5.2-1"], ["tests/test_x.py::test_roundTrip"])
        self.assertEqual(coverage.tests["5321-4.5.2-2"], ["tests/test_x.py::test_roundTrip"])

    def test_classAndModuleMarkers(self) -> None:
        """
        A marker on a class applies to each of its tests, async ones too,
        and a module's C{pytestmark} to every test of the module.
        """
        _, coverage = self.coverage(
            """
            import pytest
            from pytest import mark

            pytestmark = [mark.rfc("7505", "3", "7505-3-1")]

            @pytest.mark.rfc("5321", "4.5.2", "5321-4.5.2-1")
            class T:
                def test_a(self):
                    pass

                async def test_b(self):
                    pass

                def helper(self):
                    pass
            """
        )
        self.assertEqual(coverage.errors, [])
        both = ["tests/test_x.py::T::test_a", "tests/test_x.py::T::test_b"]
        self.assertEqual(coverage.tests["5321-4.5.2-1"], both)
        self.assertEqual(coverage.tests["5321-4.5.2-2"], [])
        self.assertEqual(coverage.tests["7505-3-1"], both)

    def test_unknownSection(self) -> None:
        """
        A marker naming a section the catalogue lacks is an error naming
        the test, the file and the line.
        """
        _, coverage = self.coverage(
            """
            import pytest

            @pytest.mark.rfc("5321", "9.9")
            def test_nothing():
                pass
            """
        )
        self.assertEqual(len(coverage.errors), 1)
        self.assertIn("tests/test_x.py:4", coverage.errors[0])
        self.assertIn("RFC 5321 section 9.9", coverage.errors[0])

    def test_unknownRequirementId(self) -> None:
        """
        A requirement id that is not in the section named is an error.
        """
        _, coverage = self.coverage(
            """
            import pytest

            @pytest.mark.rfc("5321", "4.5.2", "7505-3-1")
            def test_wrong():
                pass
            """
        )
        self.assertEqual(len(coverage.errors), 1)
        self.assertIn("no requirement 7505-3-1", coverage.errors[0])

    def test_nonLiteralArguments(self) -> None:
        """
        Marker arguments must be string literals, so that the script can
        read them without running anything.
        """
        (self.root / "tests" / "test_x.py").write_text(
            "import pytest\nS = '4.5.2'\n@pytest.mark.rfc('5321', S)\ndef test_x():\n    pass\n"
        )
        self.assertRaises(ValueError, conformance.findMarkers, self.root / "tests", self.root)

    def test_render(self) -> None:
        """
        The table lists each requirement with its tests or "not covered",
        says why one does not apply, and counts them per RFC and in all.
        """
        requirements, coverage = self.coverage(
            """
            import pytest

            @pytest.mark.rfc("7505", "3", "7505-3-1")
            def test_nullMx():
                pass
            """
        )
        text = conformance.render(requirements, coverage)
        self.assertIn("- ``tests/test_x.py::test_nullMx``", text)
        self.assertIn("Tests: not covered.", text)
        self.assertIn("Note: For domain owners.", text)
        self.assertEqual(conformance.summary(requirements, coverage), (1, 2, 1))
        self.assertIn("1 of 3 applicable requirements", text)

    def test_badCatalogue(self) -> None:
        """
        A requirement with an unknown level, a repeated id, or a
        not-applicable one without a note is refused.
        """
        for bad in (
            CATALOGUE.replace('level = "MUST NOT"', 'level = "MAY"'),
            CATALOGUE.replace('id = "5321-4.5.2-2"', 'id = "5321-4.5.2-1"'),
            CATALOGUE.replace('note = "For domain owners."\n', ""),
        ):
            self.catalogue.write_text(bad)
            self.assertRaises(ValueError, conformance.loadCatalogue, self.catalogue)
