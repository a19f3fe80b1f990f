"""
Tests for L{smtpmx.textlog}: the text log is exactly twistd's, its time
stamps made once a second, written where twistd would write it.
"""

from __future__ import annotations

import io
import os
import shutil
import signal
import sys
import tempfile

from twisted.logger import LogLevel, textFileLogObserver
from twisted.python.failure import Failure
from twisted.python.logfile import LogFile
from twisted.trial.unittest import SynchronousTestCase

from smtpmx.textlog import TimeStamps, textLogObserver, twistdTextObserver


def events() -> list[dict]:
    """
    Events of every shape the server logs: plain, with fields, with a
    system, on several lines, with a failure, without a time, not ASCII,
    over several seconds.
    """
    try:
        1 / 0
    except ZeroDivisionError:
        failure = Failure()
    base = {"log_namespace": "smtpmx.server.SMTPServerProtocol", "log_level": LogLevel.info}
    return [
        {**base, "log_time": 1738324800.25, "log_format": "connect from [{client}]:{port}",
         "client": "192.0.2.1", "port": 40000},
        {**base, "log_time": 1738324800.75, "log_format": "{line}", "line": "ID: to=[<a@example.org>]"},
        {**base, "log_time": 1738324801.0, "log_format": "two\nlines é", "log_system": "-"},
        {**base, "log_time": 1738324861.5, "log_format": "it broke", "log_failure": failure,
         "log_level": LogLevel.critical},
        {**base, "log_format": "no time"},
        {"log_time": 1738324862.0, "log_format": "{x}", "x": "{not a field}"},
        {"log_time": 1738324862.0, "log_format": None},
        {**base, "log_time": 1738324863.0, "log_format": ""},
        {**base, "log_time": 1738324863.0, "log_format": "{missing} field"},
        {**base, "log_time": 1738324863.0, "log_format": "positional {}"},
        {**base, "log_time": 1738324863.0, "log_format": "{0}"},
        {**base, "log_time": 1738324863.0, "log_format": b"bytes {x}", "x": 1},
        {**base, "log_time": 1738324863.0, "log_format": "call {f()}", "f": lambda: "called"},
        {**base, "log_time": 1738324863.0, "log_format": "{r!r} {n:>5} {d[k]} {o.real} {n:{w}}",
         "r": "quoted", "n": 42, "d": {"k": "v"}, "o": 3, "w": 6},
        {**base, "log_time": 1738324863.0, "log_format": "{{braces}} {x}", "x": "é\n\ttab"},
        {**base, "log_time": 1738324863.0, "log_format": "system", "log_system": "custom"},
        {"log_time": 1738324863.0, "log_format": "no namespace, no level"},
        {**base, "log_time": 1738324863.0, "log_format": "none namespace", "log_namespace": None},
    ]


class SameLinesTests(SynchronousTestCase):
    """
    L{textLogObserver} writes what twistd's C{textFileLogObserver} writes.
    """

    def test_sameLines(self):
        """
        Every event gives the same text, character for character.
        """
        ours, theirs = io.StringIO(), io.StringIO()
        observer, twistds = textLogObserver(ours), textFileLogObserver(theirs)
        for event in events():
            observer(event)
            twistds(event)
        self.assertEqual(ours.getvalue(), theirs.getvalue())
        self.assertIn("2025-01-31T", ours.getvalue())

    def test_usualLinesOnTheFastPath(self):
        """
        The usual lines (plain fields, no failure) are made without
        Twisted's formatter; the others with it.
        """
        from smtpmx import textlog

        used = []
        original = textlog.formatEventAsClassicLogText
        self.patch(textlog, "formatEventAsClassicLogText", lambda *a: used.append(a) or original(*a))
        stamps = TimeStamps()
        connect, line = events()[:2]
        self.assertTrue(textlog.classicLine(connect, stamps).endswith("connect from [192.0.2.1]:40000\n"))
        textlog.classicLine(line, stamps)
        self.assertEqual(used, [])
        textlog.classicLine(events()[3], stamps)
        self.assertEqual(len(used), 1)

    def test_stampOncePerSecond(self):
        """
        The stamp of a second is made once and given to every event of
        that second; the next second gets its own.
        """
        stamps = TimeStamps()
        first = stamps(1738324800.25)
        self.assertIs(stamps(1738324800.75), first)
        self.assertNotEqual(stamps(1738324801.0), first)
        self.assertEqual(stamps(None), "-")


class WhereTests(SynchronousTestCase):
    """
    L{twistdTextObserver} writes where twistd would, or leaves it to twistd.
    """

    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.dir)
        previous = signal.getsignal(signal.SIGUSR1)
        self.addCleanup(signal.signal, signal.SIGUSR1, previous)
        signal.signal(signal.SIGUSR1, signal.SIG_DFL)
        self.called: list = []

    def observer(self, **options):
        return twistdTextObserver(options, lambda f, *a: self.called.append(f))

    def test_leftToTwistd(self):
        """
        Without twistd, with C{--syslog}, or for a daemon told to log to
        stdout (which twistd refuses), there is no observer: twistd
        decides.
        """
        self.assertIsNone(twistdTextObserver(None, print))
        self.assertIsNone(self.observer(syslog=True, logfile=None, nodaemon=True))
        self.assertIsNone(self.observer(syslog=False, logfile="-", nodaemon=False))

    def test_stdout(self):
        """
        With C{--nodaemon} and no log file, the lines go to stdout, and
        C{SIGUSR1} is left alone.
        """
        observer = self.observer(syslog=False, logfile=None, nodaemon=True)
        self.assertIs(observer._outFile, sys.stdout)
        self.assertEqual(signal.getsignal(signal.SIGUSR1), signal.SIG_DFL)

    def test_logFileRotatedOnSignal(self):
        """
        With C{--logfile PATH} the lines go to that file, and C{SIGUSR1}
        rotates it from the reactor thread, as twistd's own does.
        """
        path = os.path.join(self.dir, "smtpmx.log")
        observer = self.observer(syslog=False, logfile=path, nodaemon=False)
        logFile = observer._outFile
        self.addCleanup(logFile.close)
        self.assertIsInstance(logFile, LogFile)
        observer({"log_time": 0.0, "log_format": "hello"})
        with open(path) as f:
            self.assertTrue(f.read().endswith("[-#-] hello\n"))
        handler = signal.getsignal(signal.SIGUSR1)
        handler(signal.SIGUSR1, None)
        self.assertEqual(self.called, [logFile.rotate])

    def test_signalHandlerKept(self):
        """
        A C{SIGUSR1} handler already in place is not replaced.
        """
        def mine(signum, frame):
            pass

        signal.signal(signal.SIGUSR1, mine)
        observer = self.observer(syslog=False, logfile=os.path.join(self.dir, "x.log"), nodaemon=True)
        self.addCleanup(observer._outFile.close)
        self.assertIs(signal.getsignal(signal.SIGUSR1), mine)
