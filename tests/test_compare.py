"""
The short version of C{bench/compare.py}: every peer that is installed
here (smtpmx always; Postfix, aiosmtpd, chasquid and C{smtp-sink} when
they are) gets each load of the benchmark with a handful of messages, so
that the script keeps working; the figures themselves are for
C{bench/RESULTS.md}, never asserted.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest
from twisted.trial.unittest import SynchronousTestCase

from tests.helpers import loadBenchScript

SMTP_SOURCE = "/usr/sbin/smtp-source"


def loadCompare():
    """
    C{bench/compare.py} as a module.
    """
    return loadBenchScript("compare.py")


@pytest.mark.skipif(not os.access(SMTP_SOURCE, os.X_OK), reason="needs Postfix's smtp-source (Debian's package postfix)")
@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc to measure the servers")
class CompareSmokeTests(SynchronousTestCase):
    """
    C{bench/compare.py} with tiny counts.
    """

    def test_everyPeerEveryLoad(self) -> None:
        """
        20 messages per load, one round, no relay run, a memory load of
        3 clients with 1 MiB each: the script exits 0 (nothing lost,
        nothing refused, every server started), and its report has a row
        for each load of each server that is installed, and one in the
        memory table, a line for each server that is not, and the disk's
        fsync rate.  (About 25 s.)
        """
        compare = loadCompare()
        directory = tempfile.mkdtemp(prefix="smtpmx-compare-test-")
        self.addCleanup(shutil.rmtree, directory, True)
        output = os.path.join(directory, "report.md")
        status = compare.main([
            "--messages", "20", "--runs", "1", "--no-install", "--no-relay", "--fsync-operations", "20",
            "--stall", "20", "--memory-clients", "3", "--memory-size", "1048576", "--output", output,
        ])
        with open(output) as f:
            report = f.read()
        self.assertEqual(status, 0, report)
        self.assertNotIn("LOST", report)
        rows = [line for line in report.splitlines() if line.startswith("| ") and " msg/s " not in line]
        memoryRows = [row for row in rows if " | 3/3 | " in row]
        for key in compare.PEERS:
            why = compare.missing(key)
            self.assertEqual(len([row for row in memoryRows if self.names(key, row)]), 0 if why else 1,
                             f"{key}, memory:\n{report}")
            for load in compare.LOADS:
                matching = [row for row in rows if f" | {load.name} | " in row and self.names(key, row)]
                if why:
                    self.assertEqual(matching, [], report)
                else:
                    self.assertEqual(len(matching), 1, f"{key}, {load.name}:\n{report}")
            if why:
                self.assertIn(f"| {key} | not measured | {why} |", report)
        self.assertIn("fsync file + fsync directory", report)
        self.assertIn("× smtpmx", report)
        self.assertIn("`smtp-source -l 1048576 -m 3 -s 3`", report)

    @staticmethod
    def names(key: str, row: str) -> bool:
        """
        Whether the report's table row C{row} is one of the server C{key}.
        """
        if key == "postfix":
            return row.startswith("| Postfix ") and not row.startswith("| Postfix smtp-sink")
        if key in ("smtpmx", "smtpmx-w2"):
            workers = {"smtpmx": 1, "smtpmx-w2": 2}[key]
            return row.startswith("| smtpmx ") and f" --workers {workers} " in row.split("|")[1] + " "
        return row.startswith("| " + {"smtp-sink": "Postfix smtp-sink"}.get(key, key + " "))


class CompareUnitTests(SynchronousTestCase):
    """
    Parts of C{bench/compare.py} that need no server.
    """

    def test_workersNotInSmtpmxArgs(self) -> None:
        """
        C{--smtpmx-args} cannot set C{--workers}: the peers C{smtpmx} and
        C{smtpmx-w2} are the two settings.
        """
        compare = loadCompare()
        for args in ("--workers 2", "--relay-active-limit 5 --workers=3"):
            with self.assertRaises(SystemExit):
                compare.main(["--no-install", "--smtpmx-args", args])

    def test_memoryRatios(self) -> None:
        """
        The memory load's peak over idle: RSS alone for one process, RSS
        and PSS for several.
        """
        compare = loadCompare()
        Memory = compare.Memory

        def memoryRun(idle, peak):
            run = compare.Run("smtpmx", compare.LOADS[0], 10, 10, 0, 10, 10, 1.0, 1.0, 0.1, peak, 0.0)
            return compare.MemoryRun(idle, idle, run)

        self.assertEqual(memoryRun(Memory(100, 100, 1), Memory(150, 150, 1)).ratios(), "1.50")
        self.assertEqual(memoryRun(Memory(100, 50, 3), Memory(150, 100, 3)).ratios(), "1.50 RSS, 2.00 PSS")
