"""
Tests for the free-space guard (C{--min-free-space}): L{FreeSpaceMonitor}
measuring on a fake clock with a fake measure, and MAIL answered
C{452 4.3.1} while it says the disk is short.
"""

from __future__ import annotations

import os
import shutil
import tempfile

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from smtpmx.freespace import CHECK_INTERVAL, FreeSpaceMonitor, Shortage, freeBytes
from smtpmx.services import ListeningService, buildService
from smtpmx.tap import Options
from tests.serverhelpers import Server

MIB = 1024 * 1024


class FakeDisks:
    """
    Free bytes by path, as a test sets them; a path may be made to fail.
    """

    def __init__(self, **free: int) -> None:
        self.free = {f"/{name}": value for name, value in free.items()}
        self.measured: list[str] = []
        self.broken: set[str] = set()

    def __call__(self, path: str) -> int:
        """
        The free bytes of C{path}.
        """
        self.measured.append(path)
        if path in self.broken:
            raise OSError(2, "No such file or directory", path)
        return self.free[path]


class DeferredRunner:
    """
    A C{runBlocking} whose calls wait until the test runs them, so that a
    test sees what happens while a measure is under way.
    """

    def __init__(self) -> None:
        self.pending: list[tuple[Deferred, object, tuple]] = []

    def __call__(self, f, *args) -> Deferred:
        d: Deferred = Deferred()
        self.pending.append((d, f, args))
        return d

    def runAll(self) -> None:
        """
        Run every call waiting, in order.
        """
        pending, self.pending = self.pending, []
        for d, f, args in pending:
            maybeDeferred(f, *args).chainDeferred(d)


class FreeSpaceMonitorTests(SynchronousTestCase):
    """
    L{FreeSpaceMonitor} measures at start-up, then every few seconds in
    the thread pool, and says when a file system runs short and when it
    is back.
    """

    def setUp(self) -> None:
        """
        Two file systems with plenty of room, a fake clock and a thread
        pool that runs when told.
        """
        self.disks = FakeDisks(maildir=500 * MIB, queue=500 * MIB)
        self.clock = Clock()
        self.runner = DeferredRunner()
        self.monitor = FreeSpaceMonitor(
            [("--maildir-root", "/maildir"), ("--queue-dir", "/queue")],
            100 * MIB, self.runner, self.clock, measure=self.disks,
        )

    def start(self) -> None:
        """
        Start the monitor; it is stopped by a cleanup.
        """
        self.monitor.startService()
        self.addCleanup(self.monitor.stopService)

    def tick(self) -> None:
        """
        Let one interval pass and the measure it starts finish.
        """
        self.clock.advance(CHECK_INTERVAL)
        self.runner.runAll()

    def test_measuredAtStart(self) -> None:
        """
        Both file systems are measured when the service starts, before any
        connection, without the thread pool; with room on both, it is not
        low.
        """
        self.start()
        self.assertEqual(self.disks.measured, ["/maildir", "/queue"])
        self.assertEqual(self.runner.pending, [])
        self.assertFalse(self.monitor.isLow())

    def test_lowAtStart(self) -> None:
        """
        A file system already short at start-up makes it low at once, and
        the log names it with its free bytes and the minimum.
        """
        self.disks.free["/queue"] = 50 * MIB
        with capturedLogs() as events:
            self.start()
        self.assertTrue(self.monitor.isLow())
        self.assertEqual(self.monitor.shortage, Shortage("--queue-dir", "/queue", 50 * MIB))
        [text] = [formatEvent(e) for e in events]
        self.assertIn("free space low: /queue (--queue-dir) has 52428800 bytes free", text)
        self.assertIn("--min-free-space 104857600", text)
        self.assertIn("452 4.3.1", text)

    def test_periodicInThreadPool(self) -> None:
        """
        Every interval the space is measured again, in the thread pool;
        the answer changes when the measure comes back, not before.
        """
        self.start()
        self.disks.measured.clear()
        self.disks.free["/maildir"] = 10 * MIB
        self.clock.advance(CHECK_INTERVAL - 0.1)
        self.assertEqual(self.runner.pending, [])
        self.clock.advance(0.1)
        self.assertEqual(len(self.runner.pending), 1)
        self.assertEqual(self.disks.measured, [])
        self.assertFalse(self.monitor.isLow())
        self.runner.runAll()
        self.assertTrue(self.monitor.isLow())
        self.assertEqual(self.monitor.shortage.option, "--maildir-root")

    def test_oneMeasureAtATime(self) -> None:
        """
        A measure still under way when the next is due (a hung file
        system) is not doubled: one thread at most is busy with it.
        """
        self.start()
        self.clock.advance(CHECK_INTERVAL)
        self.clock.advance(CHECK_INTERVAL)
        self.clock.advance(CHECK_INTERVAL)
        self.assertEqual(len(self.runner.pending), 1)
        self.runner.runAll()
        self.clock.advance(CHECK_INTERVAL)
        self.assertEqual(len(self.runner.pending), 1)

    def test_backAboveMinimum(self) -> None:
        """
        Once there is room again it is no longer low, and the log says so
        once; a file system at exactly the minimum has room.
        """
        self.disks.free["/maildir"] = 1
        self.start()
        self.assertTrue(self.monitor.isLow())
        self.disks.free["/maildir"] = 100 * MIB
        with capturedLogs() as events:
            self.tick()
            self.tick()
        self.assertFalse(self.monitor.isLow())
        texts = [formatEvent(e) for e in events]
        self.assertEqual(len(texts), 1, texts)
        self.assertIn("free space back above --min-free-space 104857600", texts[0])

    def test_lowLoggedOnce(self) -> None:
        """
        A shortage that lasts is logged when it starts, not at every
        measure.
        """
        self.start()
        self.disks.free["/queue"] = 1
        with capturedLogs() as events:
            for _ in range(5):
                self.tick()
        self.assertTrue(self.monitor.isLow())
        self.assertEqual(len(events), 1)

    def test_measureFails(self) -> None:
        """
        A file system that cannot be measured keeps the last answer; the
        failure is logged once, not every few seconds, and the recovery
        once.
        """
        self.start()
        self.disks.broken.add("/queue")
        with capturedLogs() as events:
            for _ in range(3):
                self.tick()
        self.assertFalse(self.monitor.isLow())
        texts = [formatEvent(e) for e in events]
        self.assertEqual(len(texts), 1, texts)
        self.assertIn("cannot measure the free space", texts[0])
        self.assertIn("/queue", texts[0])
        self.disks.broken.clear()
        with capturedLogs() as events:
            self.tick()
            self.tick()
        self.assertEqual(len(events), 1)

    def test_stop(self) -> None:
        """
        A stopped monitor measures no more.
        """
        self.start()
        self.monitor.stopService()
        self.clock.advance(CHECK_INTERVAL * 3)
        self.assertEqual(self.runner.pending, [])
        self.assertEqual(self.clock.getDelayedCalls(), [])


class FreeBytesTests(SynchronousTestCase):
    """
    L{freeBytes} asks the real file system.
    """

    def test_realDirectory(self) -> None:
        """
        A real directory has a number of free bytes, the space available
        to unprivileged users.
        """
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory, True)
        before = os.statvfs(directory)
        measured = freeBytes(directory)
        after = os.statvfs(directory)
        # Other processes write to the same disk meanwhile: the figure lies
        # between the two readings around it, give or take their writes.
        low, high = sorted(st.f_bavail * st.f_frsize for st in (before, after))
        slack = 64 << 20
        self.assertTrue(low - slack <= measured <= high + slack, (low, measured, high))

    def test_missingDirectory(self) -> None:
        """
        A directory that does not exist cannot be measured.
        """
        self.assertRaises(OSError, freeBytes, "/nonexistent/smtpmx/freespace")


class MailRefusedTests(SynchronousTestCase):
    """
    While the disk is short, MAIL gets C{452 4.3.1}; nothing else changes.
    """

    def setUp(self) -> None:
        """
        A server whose disks are short until the test says otherwise.
        """
        self.low = True
        self.server = Server()
        self.server.factory.lowOnSpace = lambda: self.low
        self.protocol, self.transport = self.server.connect()

    def send(self, data: str) -> list[str]:
        """
        Send C{data} on the new connection; the last line of each reply.
        """
        self.transport.clear()
        self.protocol.dataReceived(data.encode())
        lines = self.transport.value().decode().split("\r\n")[:-1]
        return [line for line in lines if line[3:4] == " "]

    def test_mailRefused(self) -> None:
        """
        MAIL gets 452 4.3.1 (the client tries later), the connection stays
        open, and a transaction can start once there is room again.
        """
        replies = self.send("EHLO client.example\r\nMAIL FROM:<a@remote.example>\r\n")
        self.assertEqual(replies[1][:9], "452 4.3.1")
        self.assertIn("insufficient system storage", replies[1])
        self.assertFalse(self.transport.disconnecting)
        self.low = False
        replies = self.send("MAIL FROM:<a@remote.example>\r\nRCPT TO:<alice@example.org>\r\n")
        self.assertEqual(replies, ["250 2.1.0 Ok", "250 2.1.5 Ok"])

    def test_notABadCommand(self) -> None:
        """
        A 452 is no client error: it does not count towards the limit of
        refused commands, however often the client tries.
        """
        self.send("EHLO client.example\r\n")
        replies = self.send("MAIL FROM:<a@remote.example>\r\n" * 30)
        self.assertEqual(len(replies), 30)
        self.assertTrue(all(r.startswith("452 4.3.1") for r in replies))
        self.assertFalse(self.transport.disconnecting)

    def test_transactionUnderWayFinishes(self) -> None:
        """
        A transaction that began before the disk ran short goes on to its
        end: the guard is at MAIL only.
        """
        self.low = False
        self.send("EHLO client.example\r\nMAIL FROM:<a@remote.example>\r\n")
        self.low = True
        replies = self.send("RCPT TO:<alice@example.org>\r\nDATA\r\nhello\r\n.\r\n")
        self.assertEqual([r[:3] for r in replies], ["250", "354", "250"])

    def test_otherCommandsAnswered(self) -> None:
        """
        The other commands are answered as ever while the disk is short.
        """
        replies = self.send("EHLO client.example\r\nNOOP\r\nRSET\r\nQUIT\r\n")
        self.assertEqual([r[:3] for r in replies], ["250", "250", "250", "221"])


class WiringTests(SynchronousTestCase):
    """
    C{twistd smtpmx} guards with C{--min-free-space} (100 MiB by default)
    and not with 0.
    """

    def build(self, *argv):
        """
        The service of C{argv} and its SMTP factory, on a memory reactor.
        """
        from twisted.internet.testing import MemoryReactorClock

        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory, True)
        options = Options()
        options.parseOptions(["--maildir-root", os.path.join(directory, "Maildir"),
                              "--queue-dir", os.path.join(directory, "queue"), *argv])
        service = buildService(options.config, options.validators, None, MemoryReactorClock())
        [listening] = [s for s in service if isinstance(s, ListeningService)]
        return service, listening.factory, options.config

    def test_default(self) -> None:
        """
        By default the factory asks a monitor of both directories for 100
        MiB.
        """
        service, factory, config = self.build()
        monitor = service.getServiceNamed("free space")
        self.assertEqual(config.minFreeSpace, 104857600)
        self.assertEqual(monitor.minimum, 104857600)
        self.assertEqual(
            monitor.directories,
            [("--maildir-root", config.maildirRoot), ("--queue-dir", config.queueDir)],
        )
        self.assertEqual(factory.lowOnSpace, monitor.isLow)

    def test_off(self) -> None:
        """
        C{--min-free-space 0} turns the guard off: no monitor, nothing
        asked at MAIL.
        """
        service, factory, _ = self.build("--min-free-space", "0")
        self.assertNotIn("free space", [s.name for s in service])
        self.assertIsNone(factory.lowOnSpace)
