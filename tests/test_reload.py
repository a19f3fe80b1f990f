"""
Tests for L{smtpmx.reload}: C{SIGHUP} reads the TLS certificate and key
and the plugins' files again (a bad new file keeps the old one, in one
log line), and the certificate's end is warned of at start-up and daily.
On a fake clock; the certificates are real, made by L{tests.certs}.
"""

from __future__ import annotations

import datetime
import os
import shutil
import signal
import tempfile
import threading

from cryptography import x509
from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from smtpmx.address import Address
from smtpmx.config import Config
from smtpmx.interfaces import IReloadable
from smtpmx.reload import DAY, ReloadService
from smtpmx.filtering import Accept, Reject
from smtpmx.testing import runAtOnce, runFilter, validationContext
from smtpmx.tls import certificateOf, serverTLSOptions
from smtpmx.validators.aliases import AliasesValidator
from tests import certs
from tests.helpers import assertShownIn
from tests.examplereload import SOURCE, loadWordsFilter


class ThreadedClock(Clock):
    """
    A fake reactor: a L{Clock} that also takes calls from a signal
    handler (C{callFromThread}), kept until the test runs them.
    """

    def __init__(self) -> None:
        super().__init__()
        self.fromThread: list = []

    def callFromThread(self, f, *args, **kwargs) -> None:
        """
        Keep the call for L{runThreadCalls}.
        """
        self.fromThread.append((f, args, kwargs))

    def runThreadCalls(self) -> None:
        """
        Run the calls kept, in order.
        """
        calls, self.fromThread = self.fromThread, []
        for f, args, kwargs in calls:
            f(*args, **kwargs)


class FakeFactory:
    """
    What the reload service needs of the SMTP factory: the TLS options
    in force.
    """

    def __init__(self, tlsOptions) -> None:
        self.tlsOptions = tlsOptions


@implementer(IReloadable)
class ReloadablePlugin:
    """
    A plugin that counts its reloads, or fails them as told.
    """

    def __init__(self, error: Exception | None = None, late: bool = False) -> None:
        self.reloads = 0
        self.error = error
        self.late = late
        self.pending: list[Deferred] = []
        self.runBlocking = None

    def reload(self, runBlocking):
        """
        Count the reload; raise, or answer late, as told.
        """
        self.reloads += 1
        self.runBlocking = runBlocking
        if self.error is not None:
            raise self.error
        if self.late:
            d: Deferred = Deferred()
            self.pending.append(d)
            return d
        return None


def messages(events) -> list[str]:
    """
    The text of each log event.
    """
    return [formatEvent(e) for e in events]


def errors(events) -> list[str]:
    """
    The text of each event logged at error level or above.
    """
    return [formatEvent(e) for e in events if e["log_level"] >= LogLevel.error]


class CertificateFixture:
    """
    A CA, the server's certificate and key in fixed files, and a service
    whose factory has them in force.
    """

    def setUp(self) -> None:
        """
        The files and the service (not started).
        """
        self.dir = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.authority = certs.makeAuthority(self.dir)
        self.certPath, self.keyPath = certs.makeServerCertificate(
            self.authority, self.dir, prefix="server", validDays=(-1, 60)
        )
        self.clock = ThreadedClock()
        self.now = datetime.datetime.now(datetime.timezone.utc)
        self.factory = FakeFactory(serverTLSOptions(self.certPath, self.keyPath))
        self.plugins: list = []
        self.service = self.makeService()

    def makeService(self, **kw) -> ReloadService:
        """
        A reload service over the factory and L{plugins}.
        """
        return ReloadService(
            self.factory, self.plugins, runAtOnce, self.clock,
            (self.certPath, self.keyPath), now=lambda: self.now, **kw,
        )

    def serial(self) -> int:
        """
        The serial number of the certificate in force.
        """
        return certificateOf(self.factory.tlsOptions).serial_number

    def replaceCertificate(self, validDays=(-1, 60)) -> int:
        """
        Put a new certificate and key in the same files, as an operator
        renewing it does.

        @return: the new certificate's serial number.
        """
        other = tempfile.mkdtemp(dir=self.dir)
        cert, key = certs.makeServerCertificate(self.authority, other, validDays=validDays)
        shutil.copy(cert, self.certPath)
        shutil.copy(key, self.keyPath)
        with open(self.certPath, "rb") as f:
            return x509.load_pem_x509_certificate(f.read()).serial_number


class CertificateReloadTests(CertificateFixture, SynchronousTestCase):
    """
    A reload puts a good new certificate in force and keeps the old one
    for a bad file.
    """

    def test_newCertificate(self) -> None:
        """
        A renewed certificate and key in the same files are in force after
        a reload (for the STARTTLS of new sessions), and the log says
        which.
        """
        old = self.serial()
        new = self.replaceCertificate()
        with capturedLogs() as events:
            self.successResultOf(self.service.reload())
        self.assertNotEqual(old, new)
        self.assertEqual(self.serial(), new)
        texts = messages(events)
        self.assertTrue(any(
            f"reloaded the TLS certificate {self.certPath}: CN=localhost" in t for t in texts
        ), texts)
        self.assertEqual(errors(events), [])
        self.assertIn("reload done: 1 reloaded, 0 kept as they were", texts[-1])

    def assertKept(self, reason: str) -> None:
        """
        A reload keeps the certificate in force and logs one error line
        containing C{reason}.
        """
        before = self.factory.tlsOptions
        with capturedLogs() as events:
            self.successResultOf(self.service.reload())
        self.assertIs(self.factory.tlsOptions, before)
        [line] = errors(events)
        self.assertIn("TLS certificate not reloaded, the one in force is kept", line)
        self.assertIn(reason, line)
        self.assertNotIn("\n", line)
        self.assertIn("reload done: 0 reloaded, 1 kept as they were", messages(events)[-1])

    def test_garbage(self) -> None:
        """
        A certificate file that holds no certificate is not used.
        """
        with open(self.certPath, "wb") as f:
            f.write(b"-----BEGIN CERTIFICATE-----\nhalf written\n")
        self.assertKept("holds no PEM certificate")

    def test_keyOfAnotherCertificate(self) -> None:
        """
        A new certificate whose key file was not replaced (or the other
        way round) is not used.
        """
        certs.makeStrayKey(self.dir)
        shutil.copy(os.path.join(self.dir, "stray.key"), self.keyPath)
        self.assertKept("does not match")

    def test_missing(self) -> None:
        """
        A certificate file that is gone is not used.
        """
        os.remove(self.certPath)
        self.assertKept("cannot read")

    def test_expiredNewCertificate(self) -> None:
        """
        A new certificate that is already expired is not used: the one in
        force is better.
        """
        self.replaceCertificate(validDays=(-30, -1))
        self.assertKept("expired")

    def test_goodAfterBad(self) -> None:
        """
        A bad file, then a good one: the good one is in force after the
        second reload.
        """
        with open(self.certPath, "wb") as f:
            f.write(b"nothing")
        self.successResultOf(self.service.reload())
        new = self.replaceCertificate()
        self.successResultOf(self.service.reload())
        self.assertEqual(self.serial(), new)

    def test_withoutTLS(self) -> None:
        """
        Without TLS there is no certificate to read again: a reload does
        not turn TLS on.
        """
        self.factory.tlsOptions = None
        service = ReloadService(self.factory, [], runAtOnce, self.clock, None)
        with capturedLogs() as events:
            self.successResultOf(service.reload())
        self.assertIsNone(self.factory.tlsOptions)
        self.assertIn("reloading nothing", messages(events)[0])


class PluginReloadTests(CertificateFixture, SynchronousTestCase):
    """
    A reload asks every plugin that provides L{IReloadable} to read its
    files again.
    """

    def test_reloadablePluginsReloaded(self) -> None:
        """
        Every reloadable plugin is reloaded, given the thread runner;
        plugins that are not reloadable are left alone.
        """
        first, second = ReloadablePlugin(), ReloadablePlugin()
        self.plugins[:] = [("validator a", first), ("validator plain", object()),
                           ("filter b", second)]
        service = self.makeService()
        with capturedLogs() as events:
            self.successResultOf(service.reload())
        self.assertEqual((first.reloads, second.reloads), (1, 1))
        self.assertIs(first.runBlocking, runAtOnce)
        texts = messages(events)
        self.assertIn("SIGHUP: reloading the TLS certificate, validator a, filter b", texts[0])
        self.assertIn("reloaded validator a", texts)
        self.assertIn("reloaded filter b", texts)
        self.assertIn("reload done: 3 reloaded, 0 kept as they were", texts[-1])

    def test_failingPlugin(self) -> None:
        """
        A plugin that raises is logged in one error line with its reason;
        the others are reloaded all the same.
        """
        bad = ReloadablePlugin(ValueError("aliases, line 3:\n bad target"))
        good = ReloadablePlugin()
        self.plugins[:] = [("validator bad", bad), ("validator good", good)]
        service = self.makeService()
        with capturedLogs() as events:
            self.successResultOf(service.reload())
        self.assertEqual(good.reloads, 1)
        [line] = errors(events)
        self.assertEqual(
            line, "validator bad not reloaded, it keeps its old files: aliases, line 3: bad target"
        )

    def test_failedDeferred(self) -> None:
        """
        A plugin whose Deferred fails is logged the same way.
        """
        plugin = ReloadablePlugin()
        plugin.reload = lambda runBlocking: fail(OSError(13, "Permission denied"))
        self.plugins[:] = [("filter f", plugin)]
        service = self.makeService()
        with capturedLogs() as events:
            self.successResultOf(service.reload())
        [line] = errors(events)
        self.assertIn("filter f not reloaded", line)
        self.assertIn("Permission denied", line)

    def test_oneReloadAtATime(self) -> None:
        """
        A reload asked for while one is under way (a second SIGHUP) runs
        once the first is done, not at the same time.
        """
        plugin = ReloadablePlugin(late=True)
        self.plugins[:] = [("validator slow", plugin)]
        service = self.makeService()
        first = service.reload()
        second = service.reload()
        third = service.reload()
        self.assertEqual(plugin.reloads, 1)
        self.assertNoResult(first)
        plugin.pending.pop().callback(None)
        self.assertEqual(plugin.reloads, 2)
        plugin.pending.pop().callback(None)
        self.assertEqual(plugin.reloads, 2)
        for d in (first, second, third):
            self.successResultOf(d)


class ExpiryWatchTests(CertificateFixture, SynchronousTestCase):
    """
    The certificate in force is looked at when the service starts and
    every day: near its end or past it, a warning.
    """

    def start(self, service: ReloadService) -> None:
        """
        Start C{service}; it is stopped by a cleanup.
        """
        service.startService()
        self.addCleanup(service.stopService)

    def warnings(self, events) -> list[str]:
        """
        The warnings logged.
        """
        return [formatEvent(e) for e in events if e["log_level"] == LogLevel.warn]

    def test_quietWhenFarFromItsEnd(self) -> None:
        """
        A certificate with 60 days left gives no warning at start-up.
        """
        with capturedLogs() as events:
            self.start(self.service)
        self.assertEqual(self.warnings(events), [])

    def test_warnedAtStart(self) -> None:
        """
        A certificate that expires within 14 days is warned of at
        start-up.
        """
        self.now += datetime.timedelta(days=50)
        with capturedLogs() as events:
            self.start(self.service)
        [warning] = self.warnings(events)
        self.assertIn(f"the TLS certificate {self.certPath} expires in 9 days", warning)

    def test_expiredAtStart(self) -> None:
        """
        An expired certificate is a warning at start-up, not a refusal.
        """
        self.now += datetime.timedelta(days=61)
        with capturedLogs() as events:
            self.start(self.service)
        [warning] = self.warnings(events)
        self.assertIn("expired on", warning)
        self.assertTrue(self.service.running)

    def test_daily(self) -> None:
        """
        The certificate is looked at again every day: quiet while far
        from its end, then a warning a day once within 14 days.
        """
        self.start(self.service)
        seen = []
        for day in range(1, 61):
            self.now += datetime.timedelta(days=1)
            with capturedLogs() as events:
                self.clock.advance(DAY)
            seen.append((day, self.warnings(events)))
        quiet = [day for day, w in seen if not w]
        warned = [day for day, w in seen if w]
        self.assertEqual(quiet, list(range(1, 46)))
        self.assertEqual(warned, list(range(46, 61)))
        self.assertIn("expires in 13 days", seen[45][1][0])

    def test_renewedIsQuiet(self) -> None:
        """
        Once a renewed certificate is reloaded, the daily look is at it:
        no more warnings.
        """
        self.now += datetime.timedelta(days=50)
        self.start(self.service)
        self.replaceCertificate(validDays=(-1, 120))
        with capturedLogs() as events:
            self.successResultOf(self.service.reload())
            self.clock.advance(DAY)
        self.assertEqual(self.warnings(events), [])

    def test_stopped(self) -> None:
        """
        A stopped service leaves nothing behind on the clock.
        """
        self.service.startService()
        self.service.stopService()
        self.assertEqual(self.clock.getDelayedCalls(), [])


class SignalTests(CertificateFixture, SynchronousTestCase):
    """
    C{SIGHUP} asks for a reload, run in the reactor; the previous handler
    is put back when the service stops.
    """

    def setUp(self) -> None:
        """
        Skip unless in the main thread, the only one that may set signal
        handlers.
        """
        if threading.current_thread() is not threading.main_thread():
            self.skipTest("signal handlers can only be set in the main thread")
        super().setUp()

    def test_sighup(self) -> None:
        """
        While the service runs, SIGHUP queues a reload for the reactor
        (nothing is done inside the signal handler); once it stops, the
        handler in place before is back.
        """
        before = signal.getsignal(signal.SIGHUP)
        marks: list = []
        previous = signal.signal(signal.SIGHUP, lambda n, f: marks.append(n))
        self.addCleanup(signal.signal, signal.SIGHUP, previous)
        plugin = ReloadablePlugin()
        self.plugins[:] = [("validator v", plugin)]
        service = self.makeService(handleSignal=True)
        service.startService()
        self.addCleanup(lambda: service.running and service.stopService())
        os.kill(os.getpid(), signal.SIGHUP)
        self.assertEqual(plugin.reloads, 0)
        self.assertEqual(len(self.clock.fromThread), 1)
        self.clock.runThreadCalls()
        self.assertEqual(plugin.reloads, 1)
        self.assertEqual(marks, [])
        service.stopService()
        os.kill(os.getpid(), signal.SIGHUP)
        self.assertEqual(marks, [signal.SIGHUP])
        self.assertEqual(self.clock.fromThread, [])
        self.assertIsNotNone(before)

    def test_noHandlerByDefault(self) -> None:
        """
        Without C{handleSignal} (tests, tools), the service leaves SIGHUP
        alone.
        """
        before = signal.getsignal(signal.SIGHUP)
        self.service.startService()
        self.addCleanup(self.service.stopService)
        self.assertEqual(signal.getsignal(signal.SIGHUP), before)


class AliasesReloadTests(SynchronousTestCase):
    """
    The C{aliases} validator reads its file again on a reload, changed
    or not, and keeps its table when the new file is bad.
    """

    def setUp(self) -> None:
        """
        An aliases file and its validator.
        """
        self.dir = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.path = os.path.join(self.dir, "aliases")
        self.write("info@example.org: alice@example.org\n")
        self.now = 1000.0
        self.validator = AliasesValidator(self.path, now=lambda: self.now)
        self.context = validationContext(Config(domains=("example.org",)))

    def write(self, text: str) -> None:
        """
        Write the aliases file in place, keeping its inode, size and
        modification time when it had the same size (so that the change
        check alone would not notice).
        """
        stat = os.stat(self.path) if os.path.exists(self.path) else None
        with open(self.path, "r+" if stat else "w") as f:
            f.write(text)
            f.truncate()
        if stat is not None:
            os.utime(self.path, ns=(stat.st_atime_ns, stat.st_mtime_ns))

    def targets(self, local: str):
        """
        What C{local@example.org} is rewritten to, as text, or L{None}.
        """
        result = self.validator.validateRecipient(self.context, Address(local, "example.org"))
        if isinstance(result, Deferred):
            result = self.successResultOf(result)
        return None if result is None else [str(a) for a in result.deliverTo]

    def test_providesIReloadable(self) -> None:
        """
        The validator declares L{IReloadable}.
        """
        self.assertTrue(IReloadable.providedBy(self.validator))

    def test_reloadReadsUnchangedSignature(self) -> None:
        """
        A file rewritten with the same size and modification time is not
        noticed by the change check, but a reload reads it.
        """
        self.write("news@example.org: alice@example.org\n")
        self.now += 10
        self.assertEqual(self.targets("info"), ["alice@example.org"])
        self.successResultOf(self.validator.reload(runAtOnce))
        self.assertIsNone(self.targets("info"))
        self.assertEqual(self.targets("news"), ["alice@example.org"])

    def test_badFileKeepsTable(self) -> None:
        """
        A file that cannot be parsed fails the reload with the reason
        (file and line); the old table stays in force, and the change
        check does not report the same file again.
        """
        with open(self.path, "w") as f:
            f.write("info@example.org alice@example.org\n")
        with capturedLogs() as events:
            failure = self.failureResultOf(self.validator.reload(runAtOnce), ValueError)
            self.now += 10
            self.assertEqual(self.targets("info"), ["alice@example.org"])
        self.assertIn(f"{self.path}, line 1", str(failure.value))
        self.assertEqual(messages(events), [])

    def test_missingFileKeepsTable(self) -> None:
        """
        A file that is gone fails the reload; the old table stays.
        """
        os.remove(self.path)
        failure = self.failureResultOf(self.validator.reload(runAtOnce), ValueError)
        self.assertIn("cannot read", str(failure.value))
        self.assertEqual(self.targets("info"), ["alice@example.org"])


class DocumentedFilterTests(SynchronousTestCase):
    """
    docs/plugins.rst's reloadable filter (C{words:PATH}) is shown as
    tested, and reloads as documented.
    """

    def setUp(self) -> None:
        """
        A file of words, and the example's filter over it.
        """
        self.dir = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.path = os.path.join(self.dir, "words")
        self.write(b"viagra\n")
        names = loadWordsFilter()
        self.filter = names["words"].makeFilter(self.path)

    def write(self, data: bytes) -> None:
        """
        Write the file of words.
        """
        with open(self.path, "wb") as f:
            f.write(data)

    def verdict(self, data: bytes):
        """
        The filter's verdict on a message.
        """
        return self.successResultOf(runFilter(self.filter, data))

    def test_shown(self) -> None:
        """
        The example's code is in docs/plugins.rst, indented as a literal
        block, so that what is documented is what is tested.
        """
        assertShownIn(self, SOURCE, os.path.join("docs", "plugins.rst"))

    def test_reload(self) -> None:
        """
        After a reload the new words decide; a file with no word fails the
        reload with its reason and the old words stay.
        """
        self.assertIsInstance(self.verdict(b"Subject: x\r\n\r\ncheap viagra\r\n"), Reject)
        self.write(b"casino\n")
        self.successResultOf(self.filter.reload(runAtOnce))
        self.assertIsInstance(self.verdict(b"cheap viagra\r\n"), Accept)
        self.assertIsInstance(self.verdict(b"online casino\r\n"), Reject)
        self.write(b"\n")
        failure = self.failureResultOf(self.filter.reload(runAtOnce), ValueError)
        self.assertIn("no word in it", str(failure.value))
        self.assertIsInstance(self.verdict(b"online casino\r\n"), Reject)
