"""
The short version of C{bench/cpu_per_message.py}: both servers (file work
in threads, and inline) take a handful of messages, every one lands, and
the report has a row for each, so that the script keeps working.  The
figures themselves are for C{bench/RESULTS.md}, never asserted.
"""

from __future__ import annotations

import contextlib
import io
import os

import pytest
from twisted.trial.unittest import SynchronousTestCase

from tests.helpers import loadBenchScript

SMTP_SOURCE = "/usr/sbin/smtp-source"


@pytest.mark.skipif(not os.access(SMTP_SOURCE, os.X_OK), reason="needs Postfix's smtp-source (Debian's package postfix)")
@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="needs /proc to measure the server")
class CpuPerMessageSmokeTests(SynchronousTestCase):
    def test_bothServers(self) -> None:
        """
        One small run of each server: status 0 (every message landed) and
        a median row for each in the report.
        """
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            status = loadBenchScript("cpu_per_message.py").main(["--messages", "20", "--runs", "1", "--sessions", "2"])
        self.assertEqual(status, 0, out.getvalue())
        report = out.getvalue()
        self.assertIn("| **threads** | median |", report)
        self.assertIn("| **inline** | median |", report)
