"""
Tests of the test harness itself: the one polling helper
(L{tests.helpers.waitUntil}), the one process runner
(L{tests.process.RunningProcess}) and the recording sink's record format
(L{tests.sink.Transaction}).  A harness that waited forever, or left a
process behind, would make every end-to-end test unreliable.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
import time

from twisted.trial.unittest import SynchronousTestCase

from tests.helpers import message, unique, waitUntil
from tests.process import ProcessDidNotStart, RunningProcess, logMatches
from tests.sink import Transaction


class FakeTime:
    """
    A clock that only moves when slept on, for L{waitUntil}.
    """

    def __init__(self) -> None:
        """
        Start at 0, with no sleep yet.
        """
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        """
        The current time.
        """
        return self.now

    def sleep(self, seconds: float) -> None:
        """
        Move the clock on.
        """
        self.sleeps.append(seconds)
        self.now += seconds


class WaitUntilTests(SynchronousTestCase):
    """
    L{waitUntil} returns as soon as its predicate holds, and gives up,
    returning the predicate's last answer, once its time is up.
    """

    def test_returnsFirstTrueValue(self) -> None:
        """
        The first true value the predicate returns is returned at once,
        without a further sleep.
        """
        answers = iter([[], [], ["found"]])
        time_ = FakeTime()
        result = waitUntil(lambda: next(answers), 10, 0.5, clock=time_.clock, sleep=time_.sleep)
        self.assertEqual(result, ["found"])
        self.assertEqual(time_.sleeps, [0.5, 0.5])

    def test_givesUpAfterTimeout(self) -> None:
        """
        A predicate that never holds is asked until the timeout, and its
        last (false) answer is returned.
        """
        time_ = FakeTime()
        calls = []
        result = waitUntil(lambda: calls.append(1) or 0, 1.0, 0.25, clock=time_.clock, sleep=time_.sleep)
        self.assertEqual(result, 0)
        self.assertEqual(time_.now, 1.0)
        self.assertEqual(len(calls), 5)


class HelperTests(SynchronousTestCase):
    """
    L{unique} and L{message}, shared by the end-to-end tests.
    """

    def test_unique(self) -> None:
        """
        Tokens start with the prefix and are not repeated.
        """
        tokens = {unique("p-") for _ in range(100)}
        self.assertEqual(len(tokens), 100)
        self.assertTrue(all(t.startswith("p-") for t in tokens))

    def test_message(self) -> None:
        """
        The message has CRLF line endings, the given subject, Message-ID
        (from the subject by default) and body.
        """
        self.assertEqual(
            message("hi", b"Body.\r\n", extra=b"X-A: b\r\n"),
            b"From: sender@remote.example\r\nTo: someone@example.org\r\nSubject: hi\r\n"
            b"Message-ID: <hi@remote.example>\r\nX-A: b\r\n\r\nBody.\r\n",
        )
        self.assertIn(b"Message-ID: <x@y>\r\n", message(messageId="x@y"))


class RunningProcessTests(SynchronousTestCase):
    """
    L{RunningProcess} waits a bounded time for a process to be ready and
    stops it by its PID in a bounded time, even if it ignores SIGTERM.
    """

    def setUp(self) -> None:
        """
        A directory for the logs.
        """
        self.dir = tempfile.mkdtemp(prefix="smtpmx-harness-")
        self.addCleanup(shutil.rmtree, self.dir, True)

    def python(self, code: str) -> RunningProcess:
        """
        A process running C{code}, stopped by a cleanup.
        """
        process = RunningProcess([sys.executable, "-u", "-c", code], os.path.join(self.dir, "log"), name="child")
        self.addCleanup(process.stop, 0.5)
        return process

    def test_readyLine(self) -> None:
        """
        C{launch} returns the match of the readiness line; C{stop} ends the
        process with SIGTERM.
        """
        process = self.python("import time; print('ready on 42'); time.sleep(60)")
        match = process.launch(logMatches(r"ready on (\d+)"), timeout=20)
        self.assertEqual(match.group(1), "42")
        self.assertTrue(process.running())
        self.assertEqual(process.stop(), -signal.SIGTERM)
        self.assertFalse(process.running())

    def test_killedWhenDeafToSIGTERM(self) -> None:
        """
        A process that ignores SIGTERM is killed with SIGKILL once the
        grace time is over.
        """
        process = self.python(
            "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready'); time.sleep(60)"
        )
        process.launch(logMatches("ready"), timeout=20)
        started = time.monotonic()
        self.assertEqual(process.stop(grace=0.5), -signal.SIGKILL)
        self.assertLess(time.monotonic() - started, 5)

    def test_exitsBeforeReady(self) -> None:
        """
        A process that exits before it is ready is reported at once, with
        its output.
        """
        process = self.python("print('no such option'); raise SystemExit(2)")
        with self.assertRaises(ProcessDidNotStart) as caught:
            process.launch(logMatches("ready"), timeout=20)
        self.assertTrue(caught.exception.exited)
        self.assertIn("status 2", str(caught.exception))
        self.assertIn("no such option", str(caught.exception))

    def test_notReadyInTime(self) -> None:
        """
        A process that is not ready in time is stopped, and reported.
        """
        process = self.python("import time; time.sleep(60)")
        with self.assertRaises(ProcessDidNotStart) as caught:
            process.launch(logMatches("ready"), timeout=0.5)
        self.assertFalse(caught.exception.exited)
        self.assertFalse(process.running())

    def test_readyLineOfThisRun(self) -> None:
        """
        After a restart, the readiness line of the previous run, still in
        the log, does not count.
        """
        process = self.python("import time; print('ready'); time.sleep(60)")
        process.launch(logMatches("ready"), timeout=20)
        process.stop()
        process.argv = [sys.executable, "-c", "import time; time.sleep(60)"]
        with self.assertRaises(ProcessDidNotStart):
            process.launch(logMatches("ready"), timeout=0.5)


class TransactionRecordTests(SynchronousTestCase):
    """
    What the sink run as a subprocess records is what a test reads back.
    """

    def test_roundTrip(self) -> None:
        """
        A transaction survives L{Transaction.toJSON} and
        L{Transaction.fromJSON} whole, bytes included; its refused
        recipients are those not accepted.
        """
        transaction = Transaction(
            heloName="mx.example", mailFrom="", mailParameters=["BODY=8BITMIME"],
            recipients=["a@x", "b@x"], accepted=["a@x"], data=b"S: \xff\n\n.x\n",
            raw=b"S: \xff\r\n\r\n..x\r\n.\r\n", tls=True, connection=3, peer="127.0.0.1:5",
        )
        self.assertEqual(Transaction.fromJSON(transaction.toJSON()), transaction)
        self.assertEqual(transaction.refused, ["b@x"])
