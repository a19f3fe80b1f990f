"""
Tests for C{--workers N} in memory: the option, queue IDs unique across
processes, the word of new messages between workers
(L{smtpmx.relay.wakeup}), a worker's log on its way to the parent's
(L{smtpmx.worker}, L{smtpmx.workers}), the supervisor's restarts, stops and
signals on a fake reactor, and what a worker is built of.
L{tests.test_workers_e2e} runs the real thing.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import shutil
import signal
import socket
import tempfile

from twisted.internet.defer import maybeDeferred, succeed
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel, formatEventAsClassicLogText, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from smtpmx.config import Config, ConfigError, loadConfig
from smtpmx.jsonlog import RELAYED, eventFields, jsonLine
from smtpmx.metrics import WorkersFigures
from smtpmx.relay.queue import Queue
from smtpmx.relay.queueformat import QueuedMessage, QueuedRecipient, isValidId
from smtpmx.relay.service import RelayService
from smtpmx.relay.wakeup import PipeReader, QueueListener, QueueNotifier
from smtpmx.server import QueueIds
from smtpmx.services import AdoptedListeningService, SMTPMXService, addWorkerServices, buildService
from smtpmx.validation import ValidatorChain
from smtpmx.worker import (
    LOG_FD,
    NOTIFY_FD,
    LineRelay,
    ParentWatch,
    WorkerSpec,
    lineFormatter,
    logRecord,
    readSpec,
)
from smtpmx.workers import (
    MAX_RESTART_DELAY,
    MIN_RESTART_DELAY,
    ParentLog,
    STEADY,
    STOP_GRACE,
    SharedListeningService,
    Supervisor,
    WorkerProcess,
    WorkersService,
    eventFromRecord,
    parentLog,
)


def temporaryDirectory(case: SynchronousTestCase) -> str:
    """
    A fresh directory, removed after the test.
    """
    path = tempfile.mkdtemp()
    case.addCleanup(shutil.rmtree, path, True)
    return path


def queuedMessage(messageId: str, clock: Clock) -> QueuedMessage:
    """
    A message for one remote recipient, due now.
    """
    return QueuedMessage(
        id=messageId, created=clock.seconds(), sender="a@client.example", size=0,
        clientHost="127.0.0.1", heloName="client.example",
        recipients=[QueuedRecipient("bob@remote.example", nextAttempt=clock.seconds())],
    )


class OptionTests(SynchronousTestCase):
    """
    C{--workers}.
    """

    def test_defaultIsOne(self):
        """
        Without the option the server is one process.
        """
        self.assertEqual(loadConfig({}, {}).workers, 1)

    def test_tcpOnly(self):
        """
        Above 1, every endpoint must be one the workers can adopt: TCP.
        """
        config = loadConfig({}, {"workers": "2", "listen": ["tcp:25", "tcp6:25:interface=\\:\\:"]})
        self.assertEqual(config.workers, 2)
        with self.assertRaises(ConfigError) as e:
            loadConfig({}, {"workers": "2", "listen": ["unix:/tmp/smtp.sock"]})
        self.assertIn("unix:/tmp/smtp.sock", str(e.exception))
        self.assertIn("tcp:", str(e.exception))
        # One process may listen on anything.
        loadConfig({}, {"listen": ["unix:/tmp/smtp.sock"]})

    def test_bounded(self):
        """
        A number of workers no machine has is a mistake.
        """
        with self.assertRaises(ConfigError) as e:
            loadConfig({}, {"workers": "65"})
        self.assertIn("--workers", str(e.exception))
        with self.assertRaises(ConfigError):
            loadConfig({}, {"workers": "0"})


class QueueIdTests(SynchronousTestCase):
    """
    Queue IDs made by several processes at once.
    """

    def test_processesNeverCollide(self):
        """
        Two processes making IDs in the same millisecond make different
        ones, even when their process IDs are equal modulo 2**16.
        """
        clock = Clock()
        clock.advance(1_700_000_000.123)
        first = QueueIds(clock, pid=0x1234)
        second = QueueIds(clock, pid=0x11234)
        ids = {first() for _ in range(100)} | {second() for _ in range(100)}
        self.assertEqual(len(ids), 200)
        self.assertTrue(all(isValidId(i) for i in ids))

    def test_shapeUnchangedForSmallProcessIds(self):
        """
        A process ID below 2**16 gives the ID of old: 18 digits.
        """
        clock = Clock()
        clock.advance(1_700_000_000.123)
        millis = f"{1_700_000_000_123 & 0xFFFFFFFFFF:010X}"
        self.assertEqual(QueueIds(clock, pid=0x2A)(), f"{millis}002A0000")
        self.assertEqual(QueueIds(clock, pid=0x12345)(), f"{millis}123450000")


class WakeupTests(SynchronousTestCase):
    """
    The word of new messages from the other workers to the relay worker.
    """

    def setUp(self):
        """
        A relay service on a real queue that only lists it (as the relay
        worker's does), a pipe, and the relay worker's listener on it.
        """
        self.dir = temporaryDirectory(self)
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.config = dataclasses.replace(
            Config(), queueDir=os.path.join(self.dir, "queue"),
            maildirRoot=os.path.join(self.dir, "Maildir"),
            routes=(("*", "127.0.0.9", 25),),
        )
        self.queue = Queue(self.config.queueDir)
        self.queue.recover()
        self.attempts: list[str] = []

        def deliver(request, **kw):
            self.attempts.append(os.path.basename(request.messageFile))
            from smtpmx.relay.request import DeliveryResult, Disposition, RecipientResult

            return succeed(DeliveryResult(recipients={
                r: RecipientResult(250, "2.0.0", "Ok", Disposition.DELIVERED) for r in request.recipients
            }))

        self.relay = RelayService(
            self.config, self.queue, lambda f, *a, **kw: maybeDeferred(f, *a, **kw), self.clock, None,
            deliver, lambda: "B1", recover=False,
        )
        read, write = os.pipe()
        self.addCleanup(os.close, read)
        self.addCleanup(os.close, write)
        os.set_blocking(write, False)
        self.read, self.write = read, write

    def add(self, messageId: str) -> QueuedMessage:
        """
        Queue a message as another worker would.
        """
        message = queuedMessage(messageId, self.clock)
        self.queue.add(message, b"Subject: hi\n\nbody\n")
        return message

    def test_listingNotRecovery(self):
        """
        Without C{recover} the relay lists the queue and removes nothing:
        the other workers' files being written stay.
        """
        self.add("M1")
        inProgress = self.queue.temporaryPath("M2.msg")
        with open(inProgress, "wb") as f:
            f.write(b"half a message")
        self.relay.startService()
        self.addCleanup(self.relay.stopService)
        self.clock.advance(1)
        self.assertEqual(self.attempts, ["M1"])
        self.assertTrue(os.path.exists(inProgress))

    def test_notifiedAndTried(self):
        """
        A message another worker queued is read from the pipe, loaded and
        tried at once, then removed.
        """
        self.relay.startService()
        self.addCleanup(self.relay.stopService)
        heard: list[str] = []
        reader = PipeReader(self.read, heard.append)
        notify = QueueNotifier(self.write)
        notify(self.add("M1"))
        notify(self.add("M2"))
        self.assertIsNone(reader.doRead())
        self.assertEqual(heard, ["M1", "M2"])
        listener = QueueListener(self.relay, self.read, self.clock)
        for messageId in heard:
            listener.heardOf(messageId)
        self.assertEqual(self.attempts, ["M1", "M2"])
        self.assertEqual(self.queue.ids(), [])

    def test_partialLinesAndGarbage(self):
        """
        A line read in two parts is one ID; a line that is no queue ID is
        ignored.
        """
        heard: list[str] = []
        reader = PipeReader(self.read, heard.append)
        os.write(self.write, b"AB")
        reader.doRead()
        os.write(self.write, b"C\n../etc/passwd\n\nD1\n")
        reader.doRead()
        self.assertEqual(heard, ["ABC", "D1"])

    def test_endOfPipe(self):
        """
        Every writer gone is the end of the reader.
        """
        read, write = os.pipe()
        self.addCleanup(os.close, read)
        os.close(write)
        self.assertIsInstance(PipeReader(read, lambda i: None).doRead(), EOFError)

    def test_knownIgnored(self):
        """
        A message the relay holds (it is trying it) is not loaded again:
        the state on disk may be older than the one it holds.
        """
        message = self.add("M1")
        self.relay.startService()
        self.addCleanup(self.relay.stopService)
        listener = QueueListener(self.relay, self.read, self.clock)
        self.relay.messages["M1"] = message
        loads: list[str] = []
        original = self.queue.load
        self.queue.load = lambda i: loads.append(i) or original(i)
        listener.heardOf("M1")
        self.relay.inFlight.add("M1")
        listener.heardOf("M1")
        self.assertEqual(loads, [])
        self.relay.messages.clear()
        self.relay.inFlight.clear()

    def test_goneIgnored(self):
        """
        A message no longer in the queue (delivered meanwhile) is ignored.
        """
        self.relay.startService()
        self.addCleanup(self.relay.stopService)
        listener = QueueListener(self.relay, self.read, self.clock)
        self.successResultOf(listener.heardOf("M9"))
        self.assertEqual(self.attempts, [])
        self.assertEqual(self.relay.messages, {})

    def test_unreadableOnce(self):
        """
        A state file that cannot be read is logged once, not again at
        every look at the queue (it is looked at again a day later).
        """
        self.relay.startService()
        self.addCleanup(self.relay.stopService)
        with open(self.queue.envelopePath("M1"), "wb") as f:
            f.write(b"{not json")
        with open(self.queue.messagePath("M1"), "wb") as f:
            f.write(b"Subject: hi\n\nbody\n")
        # Written now, by the test's clock.
        os.utime(self.queue.envelopePath("M1"), (self.clock.seconds(), self.clock.seconds()))
        events: list[dict] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        listener = QueueListener(self.relay, self.read, self.clock)
        self.successResultOf(listener.lookForNew())
        self.successResultOf(listener.lookForNew())
        self.clock.advance(3600)
        self.successResultOf(listener.lookForNew())
        self.assertEqual(len([e for e in events if "unreadable queue entry" in e.get("log_format", "")]), 1)
        self.assertEqual(self.attempts, [])

    def test_fullPipeDropsAndRescanFinds(self):
        """
        When the pipe is full the word is dropped, not waited for; the
        relay worker's look at the queue finds the message all the same.
        """
        notify = QueueNotifier(self.write)
        filler = b"F" * 4096
        while True:
            try:
                os.write(self.write, filler)
            except BlockingIOError:
                break
        notify(self.add("M1"))
        self.assertEqual(notify.dropped, 1)
        self.relay.startService()
        self.addCleanup(self.relay.stopService)
        self.relay.messages.clear()
        reactor = MemoryReactorClock()
        listener = QueueListener(self.relay, self.read, reactor, rescanInterval=30)
        listener.startService()
        self.assertIn(listener.reader, reactor.getReaders())
        self.addCleanup(listener.stopService)
        reactor.advance(30)
        self.assertEqual(self.attempts, ["M1"])


class LogRelayTests(SynchronousTestCase):
    """
    A worker's log event, written to its parent and logged there.
    """

    def roundTrip(self, event: dict) -> dict:
        """
        The event the parent logs for C{event} logged by worker 2.
        """
        line = logRecord(event, 2)
        self.assertTrue(line.endswith(b"\n"))
        self.assertEqual(line.count(b"\n"), 1)
        return eventFromRecord(line)

    def test_textAsInOneProcess(self):
        """
        twistd writes the parent's event as it would have written the
        worker's: same time, logger, level and text.
        """
        event = dict(
            log_format="{id}: queued for relay: from=<{sender}>", id="ABC", sender="a@b.example",
            log_time=1_700_000_000.5, log_level=LogLevel.info, log_namespace="smtpmx.relay.intake.QueueStore",
        )
        relayed = self.roundTrip(dict(event))
        self.assertEqual(formatEventAsClassicLogText(relayed), formatEventAsClassicLogText(event))

    def test_jsonAsInOneProcess(self):
        """
        C{--log-format json} writes the worker's fields, with its number.
        """
        event = dict(
            log_format="{id}: removed", id="ABC", log_time=1_700_000_000.5,
            log_level=LogLevel.warn, log_namespace="smtpmx.relay.service.RelayService",
        )
        relayed = self.roundTrip(dict(event))
        self.assertEqual(eventFields(relayed), {**eventFields(event), "worker": 2})
        self.assertEqual(list(eventFields(relayed))[:3], ["time", "level", "text"])

    def test_failure(self):
        """
        A failure's traceback follows its text, as twistd writes it.
        """
        try:
            1 / 0
        except ZeroDivisionError:
            failure = Failure()
        event = dict(log_format="it broke", log_failure=failure, log_time=1.0,
                     log_level=LogLevel.critical, log_namespace="smtpmx.x")
        relayed = self.roundTrip(event)
        text = formatEventAsClassicLogText(relayed)
        self.assertIn("it broke", text)
        self.assertIn("ZeroDivisionError", text)
        self.assertIn("Traceback", text)
        self.assertEqual(relayed["log_level"], LogLevel.critical)
        self.assertIn("ZeroDivisionError", eventFields(relayed)["traceback"])

    def test_legacySystem(self):
        """
        An event's C{log_system} (the legacy log's context) is kept.
        """
        relayed = self.roundTrip(dict(log_format="x", log_system="SMTPServerProtocol,0,127.0.0.1", log_time=1.0))
        self.assertIn("[SMTPServerProtocol,0,127.0.0.1] x", formatEventAsClassicLogText(relayed))

    def test_workerProcessLogs(self):
        """
        The parent logs the records of the log descriptor, in lines cut
        anywhere, and the worker's stdout and stderr as warnings.
        """
        events: list[dict] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        worker = WorkerProcess(None, 2, b"", 0.0)
        line = logRecord(dict(log_format="hello {who}", who="you", log_time=1.0,
                              log_level=LogLevel.info, log_namespace="smtpmx.t"), 2)
        worker.childDataReceived(LOG_FD, line[:7])
        self.assertEqual(events, [])
        worker.childDataReceived(LOG_FD, line[7:] + b"not json\n")
        worker.childDataReceived(2, b"Traceback (most recent call last):\n  File")
        worker.childConnectionLost(2)
        texts = [e.get("log_text") or e.get("line") for e in events]
        self.assertEqual(texts, ["hello you", "not json", "Traceback (most recent call last):", "  File"])
        self.assertEqual(events[1]["log_level"], LogLevel.warn)
        self.assertIn(RELAYED, events[0])


class ParentLogTests(SynchronousTestCase):
    """
    The parent writing twistd's log itself, and copying its workers' lines.
    """

    def test_linesAsTwistdWrites(self):
        """
        A worker's line is what twistd's text observer writes for the
        event; in JSON, the object of C{--log-format json} with the
        worker's number.
        """
        import io

        from twisted.logger import textFileLogObserver

        event = dict(log_format="{id}: removed", id="ABC", log_time=1_700_000_000.5,
                     log_level=LogLevel.info, log_namespace="smtpmx.relay.service.RelayService")
        out = io.StringIO()
        textFileLogObserver(out)(dict(event))
        self.assertEqual(lineFormatter("text", 2)(dict(event)), out.getvalue())
        line = json.loads(lineFormatter("json", 2)(dict(event)))
        self.assertEqual(line, {**eventFields(event), "worker": 2})
        self.assertEqual(lineFormatter("json")(dict(event)), jsonLine(event))

    def test_relayWritesLines(self):
        """
        L{LineRelay} writes each event's line to the pipe.
        """
        read, write = os.pipe()
        self.addCleanup(os.close, read)
        self.addCleanup(os.close, write)
        LineRelay(write, "text", 1)(dict(log_format="hi", log_time=1.0))
        self.assertTrue(os.read(read, 1000).endswith(b"hi\n"))

    def test_linesOfATurnTogether(self):
        """
        While the reactor runs, the lines of one of its turns are written
        together at its end; once it has stopped, at once.
        """
        read, write = os.pipe()
        self.addCleanup(os.close, read)
        self.addCleanup(os.close, write)
        os.set_blocking(read, False)
        reactor = MemoryReactorClock()
        reactor.running = True
        relay = LineRelay(write, "text", 1, reactor)
        relay(dict(log_format="one"))
        relay(dict(log_format="two"))
        with self.assertRaises(BlockingIOError):
            os.read(read, 1000)
        reactor.advance(0)
        self.assertEqual(os.read(read, 1000), b"- [-#-] one\n- [-#-] two\n")
        reactor.running = False
        relay(dict(log_format="three"))
        self.assertEqual(os.read(read, 1000), b"- [-#-] three\n")

    def test_copiedWhole(self):
        """
        The parent writes its own events formatted, and the workers' lines
        whole: a line cut in two by the pipe is written once complete, and
        lines of two workers never mix.
        """
        import io

        out = io.StringIO()
        log = ParentLog(out, "text")

        class Supervisor:
            pass

        supervisor = Supervisor()
        supervisor.log = log
        first = WorkerProcess(supervisor, 1, b"", 0.0)
        second = WorkerProcess(supervisor, 2, b"", 0.0)
        first.childDataReceived(LOG_FD, b"one\ntw")
        second.childDataReceived(LOG_FD, b"three\n")
        first.childDataReceived(LOG_FD, b"o\n")
        first.childDataReceived(LOG_FD, b"four")
        first.childConnectionLost(LOG_FD)
        log(dict(log_format="parent", log_time=None))
        self.assertEqual(out.getvalue(), "one\nthree\ntwo\nfour\n- [-#-] parent\n")

    def test_whereTwistdWrites(self):
        """
        The parent writes where twistd would, in the format asked for; with
        C{--syslog} or C{--logger} it leaves the log to twistd.
        """
        import sys

        log = parentLog({"nodaemon": True, "logfile": None}, "json")
        self.assertIs(log.outFile, sys.stdout)
        self.assertEqual(log.logFormat, "json")
        self.assertIsNone(parentLog({"syslog": True}, "text"))
        self.assertIsNone(parentLog({"logger": "my.observer"}, "text"))


class FakeProcess:
    """
    The transport of a worker on L{FakeReactor}: records signals.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.signals: list[str] = []
        self.written: list[tuple[int, bytes]] = []

    def signalProcess(self, name: str) -> None:
        self.signals.append(name)

    def writeToChild(self, fd: int, data: bytes) -> None:
        self.written.append((fd, data))


class FakeReactor(Clock):
    """
    A clock that spawns fake processes and runs what waits for it to run.
    """

    def __init__(self) -> None:
        super().__init__()
        self.spawned: list[tuple[WorkerProcess, list, dict, dict]] = []
        self.nextPid = 100

    def spawnProcess(self, protocol, executable, args, env=None, childFDs=None, **kw):
        self.nextPid += 1
        transport = FakeProcess(self.nextPid)
        protocol.makeConnection(transport)
        self.spawned.append((protocol, args, env, childFDs))
        return transport

    def callWhenRunning(self, f, *args):
        f(*args)

    def callFromThread(self, f, *args):
        f(*args)


class FakePort:
    """
    A listening port with a descriptor.
    """

    def __init__(self, fd: int) -> None:
        self.socket = socket.socket()
        self._fd = fd

    def fileno(self) -> int:
        return self._fd


class FakeListener:
    """
    What the supervisor reads of a listening service.
    """

    def __init__(self, description: str, fd: int) -> None:
        self.description = description
        self.port = FakePort(fd)


class SupervisorTests(SynchronousTestCase):
    """
    The parent starts, restarts, signals and stops its workers.
    """

    def setUp(self):
        """
        Two workers with metrics, on a fake reactor.
        """
        self.dir = temporaryDirectory(self)
        self.reactor = FakeReactor()
        self.reactor.advance(1000)
        self.config = dataclasses.replace(
            Config(), workers=2, queueDir=os.path.join(self.dir, "queue"), metrics="tcp:0",
        )
        self.recovered: list[str] = []
        self.listeners = [FakeListener("tcp:25", 7), FakeListener("tcp6:25", 8)]
        for listener in self.listeners:
            self.addCleanup(listener.port.socket.close)
        self.supervisor = Supervisor(
            self.config, self.listeners, self.reactor, environ={"PATH": "/bin"},
            recoverQueue=self.recovered.append, handleSignal=False,
        )

    def start(self):
        """
        Start the supervisor; its stop is a cleanup.
        """
        self.supervisor.startService()
        self.addCleanup(self.stopAll)

    def stopAll(self):
        """
        Stop the supervisor if it runs, and end every worker.
        """
        if self.supervisor.running:
            d = self.supervisor.stopService()
            for worker in list(self.supervisor.workers.values()):
                worker.processEnded(Failure(ProcessDone(0)))
            self.successResultOf(d)

    def end(self, index: int, reason=None):
        """
        Worker C{index} ends (killed by default).
        """
        worker = self.supervisor.workers[index]
        worker.processEnded(Failure(reason or ProcessTerminated(signal=signal.SIGKILL)))
        return worker

    def test_startsEach(self):
        """
        The queue is recovered first; then each worker gets its spec on
        its stdin: its number, the sockets in order, the relay for worker
        1, and the multi-process directory in its environment.
        """
        self.start()
        self.assertEqual(self.recovered, [self.config.queueDir])
        self.assertEqual(len(self.reactor.spawned), 2)
        directory = self.supervisor.figures.multiprocessDirectory
        self.assertTrue(os.path.isdir(directory))
        for index, (worker, args, env, fds) in enumerate(self.reactor.spawned, 1):
            [(fd, data)] = worker.transport.written
            spec = pickle.loads(data)
            self.assertEqual((fd, spec.index, spec.relay), (0, index, index == 1))
            self.assertEqual([(d, fd) for d, fd, _ in spec.listeners], [("tcp:25", 5), ("tcp6:25", 6)])
            self.assertEqual((fds[5], fds[6]), (7, 8))
            self.assertEqual(fds[0], "w")
            self.assertEqual(fds[LOG_FD], "r")
            self.assertEqual(env["PROMETHEUS_MULTIPROC_DIR"], directory)
            self.assertEqual(args[-1], f"smtpmx-worker-{index}")
        read, write = self.reactor.spawned[0][3][NOTIFY_FD], self.reactor.spawned[1][3][NOTIFY_FD]
        self.assertNotEqual(read, write)
        self.assertFalse(os.get_blocking(write))

    def test_restartBacksOff(self):
        """
        A worker that keeps ending soon after its start is started again
        after 1 s, then 2 s, 4 s, ... up to a minute; one that ran a while
        is started again at once, and its delay starts over.
        """
        self.start()
        delays = []
        for _ in range(8):
            self.end(2)
            call = self.supervisor.restarts[2]
            delays.append(call.getTime() - self.reactor.seconds())
            self.reactor.advance(call.getTime() - self.reactor.seconds())
            self.assertIn(2, self.supervisor.workers)
        self.assertEqual(delays, [MIN_RESTART_DELAY, 2, 4, 8, 16, 32, MAX_RESTART_DELAY, MAX_RESTART_DELAY])
        self.reactor.advance(STEADY)
        self.end(2)
        self.assertEqual(self.supervisor.restarts[2].getTime(), self.reactor.seconds())
        self.reactor.advance(0)
        self.end(2)
        self.assertEqual(self.supervisor.restarts[2].getTime() - self.reactor.seconds(), MIN_RESTART_DELAY)
        self.assertEqual(len(self.reactor.spawned), 11)
        # Worker 1 was never touched.
        self.assertEqual(self.supervisor.workers[1].pid, 101)

    def test_spawnFails(self):
        """
        A worker that cannot even be started (no more processes) is tried
        again with the same back-off.
        """
        calls = []

        def spawnProcess(*args, **kw):
            calls.append(self.reactor.seconds())
            raise OSError(11, "Resource temporarily unavailable")

        self.reactor.spawnProcess = spawnProcess
        self.start()
        self.assertEqual(self.supervisor.workers, {})
        for _ in range(3):
            self.reactor.advance(self.supervisor.restarts[1].getTime() - self.reactor.seconds())
        started = calls[0]
        self.assertEqual([c - started for c in calls[::2]], [0, 1, 3, 7])

    def test_deadWorkersGaugesDropped(self):
        """
        The gauges of a worker killed without a word leave the sums.
        """
        self.start()
        directory = self.supervisor.figures.multiprocessDirectory
        pid = self.supervisor.workers[2].pid
        path = os.path.join(directory, f"gauge_livesum_{pid}.db")
        open(path, "wb").close()
        self.end(2)
        self.assertFalse(os.path.exists(path))

    def test_stop(self):
        """
        Stopping sends SIGTERM to each worker, by PID, and SIGKILL to any
        still running after the grace; it is done when all have ended, and
        no worker is started again.
        """
        self.start()
        directory = self.supervisor.figures.multiprocessDirectory
        workers = dict(self.supervisor.workers)
        d = self.supervisor.stopService()
        self.assertEqual([w.transport.signals for w in workers.values()], [["TERM"], ["TERM"]])
        self.end(1, ProcessDone(0))
        self.assertNoResult(d)
        self.reactor.advance(STOP_GRACE)
        self.assertEqual(workers[2].transport.signals, ["TERM", "KILL"])
        self.assertEqual(workers[1].transport.signals, ["TERM"])
        self.end(2)
        self.successResultOf(d)
        self.reactor.advance(100)
        self.assertEqual(len(self.reactor.spawned), 2)
        self.assertFalse(os.path.exists(directory))

    def test_hangUpPassedOn(self):
        """
        C{SIGHUP} goes to every worker running.
        """
        self.start()
        self.supervisor.hangUp()
        self.assertEqual([w.transport.signals for w in self.supervisor.workers.values()], [["HUP"], ["HUP"]])

    def test_hangUpHandled(self):
        """
        The real server's parent handles C{SIGHUP} (twistd would die of it)
        and gives the handler back when it stops.
        """
        supervisor = Supervisor(self.config, self.listeners, self.reactor, recoverQueue=lambda p: None)
        before = signal.getsignal(signal.SIGHUP)
        supervisor.startService()
        try:
            self.assertEqual(signal.getsignal(signal.SIGHUP), supervisor._hangUp)
            os.kill(os.getpid(), signal.SIGHUP)
            self.assertEqual([w.transport.signals for w in supervisor.workers.values()], [["HUP"], ["HUP"]])
        finally:
            supervisor.stopService()
            for worker in list(supervisor.workers.values()):
                worker.processEnded(Failure(ProcessDone(0)))
        self.assertEqual(signal.getsignal(signal.SIGHUP), before)

    def test_notAccepting(self):
        """
        While no worker runs, nobody accepts on the sockets: the health
        check says so.
        """
        self.assertEqual(self.supervisor.notAccepting(), ["tcp:25", "tcp6:25"])
        self.start()
        self.assertEqual(self.supervisor.notAccepting(), [])
        self.end(1)
        self.assertEqual(self.supervisor.notAccepting(), [])
        self.end(2)
        self.assertEqual(self.supervisor.notAccepting(), ["tcp:25", "tcp6:25"])

    def test_givenMultiprocessDirectoryKept(self):
        """
        A multi-process directory named by the environment is used, and
        left in place at the end.
        """
        given = temporaryDirectory(self)
        supervisor = Supervisor(self.config, self.listeners, self.reactor, environ={"PROMETHEUS_MULTIPROC_DIR": given},
                                recoverQueue=lambda p: None, handleSignal=False)
        supervisor.startService()
        self.assertEqual(supervisor.figures.multiprocessDirectory, given)
        d = supervisor.stopService()
        for worker in list(supervisor.workers.values()):
            worker.processEnded(Failure(ProcessDone(0)))
        self.successResultOf(d)
        self.assertTrue(os.path.isdir(given))


class ParentWatchTests(SynchronousTestCase):
    """
    A worker whose parent is gone stops.
    """

    def test_stopsOnEnd(self):
        """
        The end of the parent's pipe stops the reactor.
        """
        read, write = os.pipe()
        self.addCleanup(os.close, read)

        class Reactor:
            running = True
            stopped = 0

            def stop(self):
                self.stopped += 1

        reactor = Reactor()
        watch = ParentWatch(reactor, read)
        os.write(write, b"x")
        self.assertIsNone(watch.doRead())
        os.close(write)
        reason = watch.doRead()
        self.assertIsInstance(reason, EOFError)
        watch.connectionLost(Failure(reason))
        self.assertEqual(reactor.stopped, 1)

    def test_spec(self):
        """
        The spec is read back as written, and a stream without one is an
        error.
        """
        import io

        spec = WorkerSpec(index=2, config=Config(), listeners=[("tcp:25", 5, socket.AF_INET)])
        self.assertEqual(readSpec(io.BytesIO(pickle.dumps(spec))), spec)
        self.assertFalse(spec.relay)
        with self.assertRaises(TypeError):
            readSpec(io.BytesIO(pickle.dumps("nothing")))
        with self.assertRaises(EOFError):
            readSpec(io.BytesIO(b""))


class BuildTests(SynchronousTestCase):
    """
    What the parent and its workers are made of.
    """

    def setUp(self):
        self.dir = temporaryDirectory(self)
        self.config = dataclasses.replace(
            Config(), workers=2, queueDir=os.path.join(self.dir, "queue"),
            maildirRoot=os.path.join(self.dir, "Maildir"), listen=("tcp:0:interface=127.0.0.1",),
            metrics="tcp:0:interface=127.0.0.1",
        )

    def worker(self, index: int):
        """
        The service of worker C{index}, on a clock.
        """
        spec = WorkerSpec(index=index, config=self.config,
                          listeners=[("tcp:0:interface=127.0.0.1", 99, socket.AF_INET)], notifyFD=98)
        return buildService(self.config, ValidatorChain([]), None, MemoryReactorClock(), worker=spec)

    def test_relayWorker(self):
        """
        Worker 1 runs the relay, which lists the queue rather than recover
        it, and hears of the others' messages; it accepts on the socket it
        was given and serves no metrics.
        """
        service = self.worker(1)
        relay = service.getServiceNamed("relay")
        self.assertFalse(relay.recover)
        listener = service.getServiceNamed("queue listener")
        self.assertIs(listener.relay, relay)
        self.assertEqual(listener.reader.fd, 98)
        [listening] = [s for s in service if isinstance(s, (AdoptedListeningService, SharedListeningService))]
        self.assertIsInstance(listening, AdoptedListeningService)
        self.assertEqual((listening.fileDescriptor, listening.label), (99, "smtpmx worker 1"))
        self.assertNotIn("metrics tcp:0:interface=127.0.0.1", [s.name for s in service])
        self.assertIn("metrics", [s.name for s in service])

    def test_otherWorker(self):
        """
        Another worker runs no relay: what it queues, it tells the relay
        worker of.
        """
        from twisted.application.service import MultiService

        service = self.worker(2)
        self.assertNotIn("relay", [s.name for s in service])
        self.assertNotIn("queue listener", [s.name for s in service])

        class Store:
            onQueued = None

        store = Store()
        spec = WorkerSpec(index=2, config=self.config, notifyFD=98)
        addWorkerServices(MultiService(), spec, None, store, None)
        self.assertIsInstance(store.onQueued, QueueNotifier)
        self.assertEqual(store.onQueued.fd, 98)

    def test_oneProcessUnchanged(self):
        """
        Without a worker the server is built as ever: it recovers the
        queue itself.
        """
        service = buildService(dataclasses.replace(self.config, workers=1), ValidatorChain([]), None,
                               MemoryReactorClock())
        self.assertTrue(service.getServiceNamed("relay").recover)
        self.assertNotIn("queue listener", [s.name for s in service])

    def test_parent(self):
        """
        The parent binds the sockets, supervises, and serves the metrics;
        it receives no mail itself.
        """
        service = WorkersService(self.config, None, MemoryReactorClock(), handleSignals=False)
        self.assertIsInstance(service, SMTPMXService)
        names = [s.name for s in service]
        self.assertEqual(names, ["listen tcp:0:interface=127.0.0.1", "workers", "metrics tcp:0:interface=127.0.0.1"])
        self.assertIsInstance(service.getServiceNamed(names[0]), SharedListeningService)
        self.assertIsInstance(service.supervisor.figures, WorkersFigures)

    def test_entryPoint(self):
        """
        C{twistd smtpmx --workers 2} makes the parent, which writes
        twistd's log itself (in the format asked for); C{--workers 1}, the
        one-process server of old.
        """
        from smtpmx.tap import makeService
        from tests.test_tap import parse

        common = ["--maildir-root", self.config.maildirRoot, "--queue-dir", self.config.queueDir]
        parent = makeService(parse("--workers", "2", "--log-format", "json", *common))
        self.assertIsInstance(parent, WorkersService)
        self.assertIsInstance(parent.logObserver, ParentLog)
        self.assertEqual(parent.logObserver.logFormat, "json")
        self.assertIs(parent.supervisor.log, parent.logObserver)
        one = makeService(parse("--workers", "1", *common))
        self.assertNotIsInstance(one, WorkersService)
        self.assertTrue(one.getServiceNamed("relay").recover)
