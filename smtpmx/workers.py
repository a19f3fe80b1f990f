"""
C{--workers N}: the parent side (docs/workers.rst).

With more than one worker, twistd's own process receives no mail.
L{WorkersService} binds every C{--listen} socket (as root, before twistd
gives root up), recovers the queue, and its L{Supervisor} starts C{N}
worker processes (L{smtpmx.worker}) that accept on those sockets.  The
parent then:

  - restarts a worker that ends, after a delay that doubles while it keeps
    ending within L{STEADY} seconds of its start (L{MIN_RESTART_DELAY} up to
    L{MAX_RESTART_DELAY});
  - passes C{SIGHUP} on to every worker, by PID;
  - on C{SIGTERM} (twistd stops its services) sends C{SIGTERM} to every
    worker, by PID, and C{SIGKILL} to any still running
    L{STOP_GRACE} seconds later;
  - writes the workers' log lines to its log, each as the one-process
    server would: it writes twistd's log itself (L{ParentLog}: the text
    lines or C{--log-format json}'s, to stdout or the log file) and copies
    the lines the workers made in the same format; with C{--syslog} or
    C{--logger} it logs a record of each of their events instead;
  - serves C{--metrics}: every worker writes its figures into one
    prometheus_client multi-process directory (C{PROMETHEUS_MULTIPROC_DIR},
    a private one made here unless the environment names one), and the
    parent serves their sums (L{smtpmx.metrics.WorkersFigures}), with a
    C{/healthz} that fails while no worker runs.

Why sockets handed down rather than C{SO_REUSEPORT}: port 25 is bound
once, as root, so a worker restarted long after twistd gave root up
still accepts on it; C{tcp:0} means one port for all; a worker that
dies leaves no connection behind in a listen queue of its own; and the
worker that is idle is the one that wakes first, so a busy worker takes
fewer new connections.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import sys
import tempfile
from typing import Any, Callable, Mapping, Optional

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ProcessDone, ProcessExitedAlready
from twisted.internet.protocol import Factory, Protocol, ProcessProtocol
from twisted.logger import ILogObserver, InvalidLogLevelError, LogLevel, Logger
from twisted.python.failure import Failure
from twisted.python.logfile import LogFile
from zope.interface import implementer

import smtpmx
from smtpmx.config import Config
from smtpmx.jsonlog import RELAYED, twistdLogFile
from smtpmx.metrics import MULTIPROCESS_VARIABLE, WorkersFigures
from smtpmx.relay.queue import Queue
from smtpmx.services import ListeningService, SMTPMXService, threadRunner
from smtpmx.worker import FIRST_SOCKET_FD, LOG_FD, NOTIFY_FD, WorkerSpec, lineFormatter

# Seconds before a worker that ended is started again, at first and at most.
MIN_RESTART_DELAY = 1.0
MAX_RESTART_DELAY = 60.0
# A worker that ran this many seconds ended by accident, not in a loop: it
# is started again at once, and the delay starts over.
STEADY = 10.0
# Seconds a worker has to stop after SIGTERM before it is killed.
STOP_GRACE = 10.0
# What starts a worker; its last argument names it in ps.
WORKER_PROGRAM = "import sys; from smtpmx.worker import main; sys.exit(main())"
# A line of a worker's output longer than this is cut.
MAX_LINE = 1 << 20


class SharedListeningService(ListeningService):
    """
    Binds a socket for the workers, before twistd gives up root, and
    accepts nothing on it itself.
    """

    def _listening(self, port) -> None:
        """
        Stop accepting (in the same turn, so that no connection is taken
        here), then log where we listen.
        """
        port.stopReading()
        super()._listening(port)


def workerEnvironment(environ: dict[str, str], metricsDirectory: Optional[str]) -> dict[str, str]:
    """
    A worker's environment: ours, with the directory holding C{smtpmx}
    first on C{PYTHONPATH} and, with C{--metrics}, the multi-process
    directory.
    """
    env = dict(environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(smtpmx.__file__)))
    env["PYTHONPATH"] = os.pathsep.join([root] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    if metricsDirectory is not None:
        env[MULTIPROCESS_VARIABLE] = metricsDirectory
    return env


def eventFromRecord(line: bytes) -> dict[str, Any]:
    """
    The log event of a line a worker wrote (L{smtpmx.worker.logRecord}):
    formatted as twistd formats any event, with the worker's JSON object
    for C{--log-format json} (L{RELAYED}).

    @raise ValueError: the line is not such a record.
    """
    record = json.loads(line)
    fields = record["fields"]
    if not isinstance(fields, dict):
        raise ValueError("no fields")
    text = str(fields.get("text", ""))
    if fields.get("traceback"):
        text += "\n" + str(fields["traceback"])
    try:
        level = LogLevel.levelWithName(str(fields.get("level", "info")))
    except InvalidLogLevelError:
        level = LogLevel.info
    event: dict[str, Any] = {
        "log_time": record.get("time"),
        "log_level": level,
        "log_namespace": fields.get("logger") or "smtpmx.worker",
        "log_format": "{log_text}",
        "log_text": text,
        RELAYED: fields,
    }
    if record.get("system") is not None:
        event["log_system"] = record["system"]
    return event


@implementer(ILogObserver)
class ParentLog:
    """
    twistd's log, written by the parent of C{--workers} itself: its own
    events, formatted as twistd would (L{lineFormatter}), and the lines
    its workers made the same way, copied whole (L{writeLines}).  The
    parent is the only writer, so lines never mix.

    @ivar outFile: stdout or twistd's log file (L{twistdLogFile}).
    @ivar logFormat: C{"text"} or C{"json"}.
    """

    def __init__(self, outFile, logFormat: str) -> None:
        self.outFile = outFile
        self.logFormat = logFormat
        self.format = lineFormatter(logFormat)

    def __call__(self, event: Mapping[str, Any]) -> None:
        """
        Write one of the parent's events.
        """
        line = self.format(event)
        if line:
            self.writeLines(line)

    def writeLines(self, text: str) -> None:
        """
        Write whole lines.
        """
        self.outFile.write(text)
        self.outFile.flush()

    def rotateOnSignal(self, reactor) -> None:
        """
        Rotate a log file on C{SIGUSR1}, as twistd does for its own.
        """
        if isinstance(self.outFile, LogFile) and not signal.getsignal(signal.SIGUSR1):
            signal.signal(signal.SIGUSR1, lambda number, frame: reactor.callFromThread(self.outFile.rotate))


def parentLog(twistdOptions: Optional[Mapping[str, Any]], logFormat: str) -> Optional[ParentLog]:
    """
    The log the parent of C{--workers} writes itself, where twistd would
    write its own; L{None} with C{--syslog} or C{--logger}, which twistd
    keeps, and for a daemon told to log to stdout, which twistd refuses.
    """
    if twistdOptions is not None and (twistdOptions.get("syslog") or twistdOptions.get("logger")):
        return None
    if twistdOptions is not None and twistdOptions.get("logfile") == "-" and not twistdOptions.get("nodaemon"):
        # twistd refuses this, with a message.
        return None
    return ParentLog(twistdLogFile(twistdOptions), logFormat)


class WorkerProcess(ProcessProtocol):
    """
    One worker as its parent sees it: its spec written to it, its log and
    output written to the parent's log, its end reported.

    @ivar index: its number, from 1.
    @ivar pid: its process ID once started.
    @ivar started: when it was started.
    """

    log = Logger()

    def __init__(self, supervisor: "Supervisor", index: int, spec: bytes, started: float) -> None:
        self.supervisor = supervisor
        self.index = index
        self.spec = spec
        self.started = started
        self.pid: Optional[int] = None
        self.ended = False
        self._partial: dict[int, bytes] = {}

    def connectionMade(self) -> None:
        """
        Give the worker its spec; the pipe stays open, so that its end
        tells the worker that the parent is gone.
        """
        self.pid = self.transport.pid
        self.transport.writeToChild(0, self.spec)

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        """
        Log each whole line: the worker's log lines, copied into the
        parent's log; records of its events; or its stdout and stderr as
        they are.
        """
        log = self.supervisor.log if self.supervisor is not None else None
        if childFD == LOG_FD and isinstance(log, ParentLog):
            data = self._partial.pop(childFD, b"") + data
            end = data.rfind(b"\n") + 1
            if end:
                log.writeLines(data[:end].decode("utf-8", "replace"))
            if len(data) - end > MAX_LINE:
                log.writeLines(data[end:].decode("utf-8", "replace") + "\n")
            elif end < len(data):
                self._partial[childFD] = data[end:]
            return
        lines = (self._partial.get(childFD, b"") + data).split(b"\n")
        rest = lines.pop()
        if len(rest) > MAX_LINE:
            lines.append(rest)
            rest = b""
        self._partial[childFD] = rest
        for line in lines:
            self.lineReceived(childFD, line)

    def childConnectionLost(self, childFD: int) -> None:
        """
        Log what is left of a line when an output ends.
        """
        rest = self._partial.pop(childFD, b"")
        if rest:
            self.childDataReceived(childFD, rest + b"\n")

    def lineReceived(self, childFD: int, line: bytes) -> None:
        """
        Log one line from the worker.
        """
        if childFD == LOG_FD:
            try:
                event = eventFromRecord(line)
            except (ValueError, KeyError, TypeError):
                pass
            else:
                self.log.observer(event)
                return
        text = line.decode("utf-8", "replace").rstrip("\r")
        if text.strip():
            self.log.warn("worker {number}: {line}", number=self.index, line=text)

    def processEnded(self, reason: Failure) -> None:
        """
        Tell the supervisor.
        """
        self.ended = True
        for childFD in list(self._partial):
            self.childConnectionLost(childFD)
        self.supervisor.workerEnded(self, reason)


def describeEnd(reason: Failure) -> str:
    """
    How a worker ended, in words.
    """
    if reason.check(ProcessDone):
        return "exited"
    value = reason.value
    number = getattr(value, "signal", None)
    if number:
        try:
            return f"was killed by {signal.Signals(number).name}"
        except ValueError:
            return f"was killed by signal {number}"
    return f"exited with status {getattr(value, 'exitCode', '?')}"


class Supervisor(Service):
    """
    Starts the workers, starts again any that ends, passes C{SIGHUP} on,
    and stops them all.

    @ivar workers: the worker of each number now running (or starting).
    @ivar figures: the workers' figures when C{--metrics} is on, else
        L{None}; its directory is made when the service starts.
    @ivar log: the L{ParentLog}, or L{None}.
    """

    logger = Logger()

    def __init__(
        self,
        config: Config,
        listeners: list[ListeningService],
        reactor,
        tls: Optional[tuple[bytes, bytes]] = None,
        environ: Optional[dict[str, str]] = None,
        recoverQueue: Callable[[str], object] = lambda path: Queue(path).recover(),
        handleSignal: bool = True,
        log: Optional[ParentLog] = None,
    ) -> None:
        """
        @param config: the configuration, handed to every worker.
        @param listeners: the sockets, bound by the time this starts.
        @param reactor: spawns the workers and times their restarts.
        @param tls: the STARTTLS certificate chain and key, PEM.
        @param environ: the environment the workers' is made from; ours
            by default.
        @param recoverQueue: recovers the queue directory, before any
            worker starts.
        @param handleSignal: whether C{SIGHUP} is passed on (the real
            server's; not a test's).
        @param log: the log the parent writes itself, into which the
            workers' lines are copied; L{None}: the workers send records
            of their events, logged here.
        """
        self.config = config
        self.listeners = listeners
        self.reactor = reactor
        self.tls = tls
        self.environ = dict(os.environ if environ is None else environ)
        self.recoverQueue = recoverQueue
        self.handleSignal = handleSignal
        self.log = log
        self.count = config.workers
        self.workers: dict[int, WorkerProcess] = {}
        self.delays: dict[int, float] = {}
        self.restarts: dict[int, Any] = {}
        self.kills: dict[int, Any] = {}
        self.figures: Optional[WorkersFigures] = (
            WorkersFigures("") if config.metrics is not None else None
        )
        self._madeDirectory = False
        self._notify: Optional[tuple[int, int]] = None
        self._previousHandler = None
        self._stopped: list[Deferred] = []

    # Life.

    def startService(self) -> None:
        """
        Recover the queue (blocking: no worker runs yet), make the pipe of
        word of new messages and the metrics directory, pass C{SIGHUP} on,
        and start the workers once the reactor runs.
        """
        super().startService()
        self.recoverQueue(self.config.queueDir)
        if self._notify is None:
            read, write = os.pipe()
            os.set_blocking(write, False)
            self._notify = (read, write)
        if self.figures is not None and not self.figures.multiprocessDirectory:
            given = self.environ.get(MULTIPROCESS_VARIABLE)
            if given:
                self.figures.multiprocessDirectory = given
            else:
                self.figures.multiprocessDirectory = tempfile.mkdtemp(prefix="smtpmx-metrics-")
                self._madeDirectory = True
        if self.handleSignal:
            self._previousHandler = signal.signal(signal.SIGHUP, self._hangUp)
        self.reactor.callWhenRunning(self._startAll)

    def _startAll(self) -> None:
        """
        Start every worker not running.
        """
        for index in range(1, self.count + 1):
            if index not in self.workers and self.running:
                self.startWorker(index)

    def stopService(self) -> Deferred:
        """
        Stop every worker: C{SIGTERM} now, C{SIGKILL} after
        L{STOP_GRACE} seconds to any still running.

        @return: a L{Deferred} that fires once every worker has ended.
        """
        super().stopService()
        if self.handleSignal and self._previousHandler is not None:
            signal.signal(signal.SIGHUP, self._previousHandler)
            self._previousHandler = None
        for call in self.restarts.values():
            if call.active():
                call.cancel()
        self.restarts.clear()
        for worker in list(self.workers.values()):
            self._signal(worker, "TERM")
            self.kills[worker.index] = self.reactor.callLater(STOP_GRACE, self._signal, worker, "KILL")
        d = self._allEnded()
        return d.addBoth(self._cleanUp)

    def _allEnded(self) -> Deferred:
        """
        A L{Deferred} that fires once no worker runs.
        """
        if not self.workers:
            return succeed(None)
        d: Deferred = Deferred()
        self._stopped.append(d)
        return d

    def _cleanUp(self, result: object) -> object:
        """
        Once every worker has ended: close the pipe, remove the metrics
        directory made here.
        """
        if self._notify is not None:
            for fd in self._notify:
                os.close(fd)
            self._notify = None
        if self._madeDirectory and self.figures is not None:
            shutil.rmtree(self.figures.multiprocessDirectory, ignore_errors=True)
            self.figures.multiprocessDirectory = ""
            self._madeDirectory = False
        return result

    # One worker.

    def spec(self, index: int) -> WorkerSpec:
        """
        What worker C{index} is told.
        """
        return WorkerSpec(
            index=index,
            config=self.config,
            tls=self.tls,
            listeners=[
                (s.description, FIRST_SOCKET_FD + n, s.port.socket.family)
                for n, s in enumerate(self.listeners)
            ],
            path=list(sys.path),
            logFormat=self.log.logFormat if self.log is not None else None,
        )

    def childFDs(self, index: int) -> dict[int, Any]:
        """
        The descriptors of worker C{index} (L{smtpmx.worker}).
        """
        assert self._notify is not None
        read, write = self._notify
        fds: dict[int, Any] = {0: "w", 1: "r", 2: "r", LOG_FD: "r", NOTIFY_FD: read if index == 1 else write}
        for n, s in enumerate(self.listeners):
            fds[FIRST_SOCKET_FD + n] = s.port.fileno()
        return fds

    def startWorker(self, index: int) -> None:
        """
        Start worker C{index}.
        """
        self.restarts.pop(index, None)
        env = workerEnvironment(self.environ, self.figures.multiprocessDirectory if self.figures else None)
        worker = WorkerProcess(self, index, pickle.dumps(self.spec(index)), self.reactor.seconds())
        self.workers[index] = worker
        try:
            self.reactor.spawnProcess(
                worker, sys.executable, [sys.executable, "-c", WORKER_PROGRAM, f"smtpmx-worker-{index}"],
                env=env, childFDs=self.childFDs(index),
            )
        except OSError as e:
            self.logger.error("cannot start worker {number}: {why}", number=index, why=e)
            del self.workers[index]
            self._restartLater(index, self._backOff(index))
            return
        if index == 1:
            self.logger.info("worker {number} started: pid {pid} (it runs the relay queue)",
                             number=index, pid=worker.pid)
        else:
            self.logger.info("worker {number} started: pid {pid}", number=index, pid=worker.pid)

    def workerEnded(self, worker: WorkerProcess, reason: Failure) -> None:
        """
        A worker ended: drop its gauges from the sums, and start it again
        unless we are stopping.
        """
        if self.workers.get(worker.index) is worker:
            del self.workers[worker.index]
        kill = self.kills.pop(worker.index, None)
        if kill is not None and kill.active():
            kill.cancel()
        if self.figures is not None and self.figures.multiprocessDirectory and worker.pid is not None:
            self.figures.processStopped(worker.pid)
        how = describeEnd(reason)
        if not self.running:
            self.logger.info("worker {number} (pid {pid}) {how}", number=worker.index, pid=worker.pid, how=how)
            if not self.workers:
                waiting, self._stopped = self._stopped, []
                for d in waiting:
                    d.callback(None)
            return
        lived = self.reactor.seconds() - worker.started
        if lived >= STEADY:
            delay = 0.0
            self.delays[worker.index] = MIN_RESTART_DELAY
        else:
            delay = self._backOff(worker.index)
        self.logger.warn(
            "worker {number} (pid {pid}) {how} after {lived:.1f} s; starting it again in {delay:g} s",
            number=worker.index, pid=worker.pid, how=how, lived=lived, delay=delay,
        )
        self._restartLater(worker.index, delay)

    def _backOff(self, index: int) -> float:
        """
        The delay before worker C{index} is started again after an end
        too soon; the next one will be twice as long (up to
        L{MAX_RESTART_DELAY}).
        """
        delay = self.delays.get(index, MIN_RESTART_DELAY)
        self.delays[index] = min(delay * 2, MAX_RESTART_DELAY)
        return delay

    def _restartLater(self, index: int, delay: float) -> None:
        """
        Start worker C{index} again in C{delay} seconds.
        """
        if self.running:
            self.restarts[index] = self.reactor.callLater(delay, self.startWorker, index)

    def _signal(self, worker: WorkerProcess, name: str) -> None:
        """
        Send a signal to a worker, by its PID, unless it has ended.
        """
        if worker.ended or worker.transport is None:
            return
        try:
            worker.transport.signalProcess(name)
        except ProcessExitedAlready:
            pass

    # SIGHUP.

    def _hangUp(self, number: int, frame) -> None:
        """
        The signal handler: pass it on from the reactor, soon.
        """
        self.reactor.callFromThread(self.hangUp)

    def hangUp(self) -> None:
        """
        Pass C{SIGHUP} on to every worker: each reloads.
        """
        workers = list(self.workers.values())
        self.logger.info("SIGHUP: passed on to {n} worker(s)", n=len(workers))
        for worker in workers:
            self._signal(worker, "HUP")

    # Health.

    def notAccepting(self) -> list[str]:
        """
        The C{--listen} endpoints nobody accepts on now: those not bound,
        or every one while no worker runs.
        """
        running = [w for w in self.workers.values() if not w.ended and w.pid is not None]
        return [s.description for s in self.listeners if s.port is None or not running]


class WorkersService(SMTPMXService):
    """
    The server with C{--workers} above 1: the listening sockets, the
    supervisor of the workers and, with C{--metrics}, the status site
    serving their figures.

    @ivar supervisor: the L{Supervisor}.
    """

    def __init__(self, config: Config, tlsOptions, reactor, handleSignals: bool = True,
                 log: Optional[ParentLog] = None, **supervisorArgs) -> None:
        """
        @param tlsOptions: the STARTTLS context factory read at start-up,
            or L{None}; its certificate and key are handed to the workers.
        @param reactor: listens, spawns and times.
        @param handleSignals: whether C{SIGHUP} is passed on (and
            C{SIGUSR1} rotates the log file).
        @param log: the log the parent writes itself (L{parentLog}), which
            becomes twistd's log observer; L{None} leaves twistd's.
        @param supervisorArgs: more arguments for the L{Supervisor} (tests).
        """
        from smtpmx.tls import exportPEM

        super().__init__(config)
        self.logObserver = log
        self.reactor = reactor
        self.handleSignals = handleSignals
        factory = Factory.forProtocol(Protocol)
        factory.noisy = False
        listeners: list[ListeningService] = []
        for description in config.listen:
            listening = SharedListeningService(reactor, description, factory)
            listening.setName(f"listen {description}")
            listening.setServiceParent(self)
            listeners.append(listening)
        tls = exportPEM(tlsOptions) if tlsOptions is not None else None
        self.supervisor = Supervisor(
            config, listeners, reactor, tls, handleSignal=handleSignals, log=log, **supervisorArgs
        )
        self.supervisor.setName("workers")
        self.supervisor.setServiceParent(self)
        if config.metrics is not None:
            self._addStatus(reactor)

    def startService(self) -> None:
        """
        Start; a log file of our own rotates on C{SIGUSR1}, as twistd's.
        """
        if self.handleSignals and isinstance(self.logObserver, ParentLog):
            self.logObserver.rotateOnSignal(self.reactor)
        super().startService()

    def _addStatus(self, reactor) -> None:
        """
        C{--metrics}: the workers' figures summed, and the health.
        """
        from smtpmx.webstatus import HealthCheck, statusSite

        config = self.config
        runBlocking = threadRunner(reactor)
        health = HealthCheck(
            self.supervisor.notAccepting,
            [("--maildir-root", config.maildirRoot), ("--queue-dir", config.queueDir)],
            runBlocking,
            reactor,
        )
        site = statusSite(self.supervisor.figures, health, runBlocking)
        status = ListeningService(reactor, config.metrics, site, label="smtpmx metrics")
        status.setName(f"metrics {config.metrics}")
        status.setServiceParent(self)
