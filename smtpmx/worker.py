"""
One worker of C{--workers N}: the child side (docs/workers.rst).

The parent (L{smtpmx.workers}) starts each worker as
C{python -c "from smtpmx.worker import main; ..."} with these descriptors:

  - 0: the parent's pipe: the worker's L{WorkerSpec}, pickled, then
    nothing; its end (the parent is gone) stops the worker
    (L{ParentWatch});
  - 1 and 2: stdout and stderr, which the parent logs line by line;
  - 3 (C{LOG_FD}): the worker's log: when the parent writes twistd's
    log itself (text or C{--log-format json}, to a file or stdout), the
    lines as the parent would write them (L{LineRelay}), which it copies
    as they are; else (C{--syslog}, C{--logger}) one JSON record an event
    (L{LogRelay}), which it logs as its own;
  - 4 (C{NOTIFY_FD}): the pipe of word of new messages
    (L{smtpmx.relay.wakeup}): its reading end for the relay worker, its
    writing end for the others;
  - 5 and on: the listening sockets, in the order of C{--listen}.

The worker builds what a one-process server builds
(L{smtpmx.services.buildService}) from the configuration its parent read
and checked, accepts on the sockets its parent bound
(C{adoptStreamPort}), and runs its own reactor; C{SIGTERM} stops it as it
stops the one-process server, C{SIGHUP} reloads.  It already runs as the
user twistd switched to (C{--uid}): the parent hands it the TLS
certificate and key it read as root.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional

from twisted.internet.interfaces import IReadDescriptor
from twisted.logger import ILogObserver, Logger, globalLogBeginner
from twisted.python.failure import Failure
from zope.interface import implementer

from smtpmx.config import Config, ConfigError
from smtpmx.jsonlog import eventFields, jsonLine
from smtpmx.options import LogFormat
from smtpmx.textlog import TimeStamps, classicLine

# The descriptors of a worker (see the module's docstring).
CONTROL_FD = 0
LOG_FD = 3
NOTIFY_FD = 4
FIRST_SOCKET_FD = 5


@dataclass
class WorkerSpec:
    """
    What a worker is told by its parent, pickled on its descriptor 0.

    @ivar index: its number, from 1; worker 1 runs the relay.
    @ivar config: the configuration the parent read and checked.
    @ivar tls: the STARTTLS certificate chain and key, PEM
        (L{smtpmx.tls.exportPEM}), or L{None} without TLS.
    @ivar listeners: C{(endpoint, descriptor, address family)} of each
        listening socket, in the order of C{--listen}.
    @ivar notifyFD: the pipe of word of new messages.
    @ivar logFD: where its log goes.
    @ivar path: the parent's C{sys.path}, so that the worker finds the
        same plugins.
    @ivar logFormat: C{"text"} or C{"json"}: the worker writes its log
        lines in that format (L{LineRelay}); L{None}: it writes records
        of its events (L{LogRelay}).
    """

    index: int
    config: Config
    tls: Optional[tuple[bytes, bytes]] = None
    listeners: list[tuple[str, int, int]] = field(default_factory=list)
    notifyFD: int = NOTIFY_FD
    logFD: int = LOG_FD
    path: list[str] = field(default_factory=list)
    logFormat: Optional[str] = None

    @property
    def relay(self) -> bool:
        """
        Whether this worker runs the relay queue: worker 1 does.
        """
        return self.index == 1


def writeAll(fd: int, data: bytes) -> None:
    """
    Write all of C{data} to a blocking descriptor.
    """
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def logRecord(event: Mapping[str, Any], worker: int) -> bytes:
    """
    The line a worker writes to its parent for one log event: the JSON
    object C{--log-format json} would write for it (L{eventFields}), with
    C{worker}, and the event's C{log_system} when it has one.
    """
    fields = eventFields(event)
    fields["worker"] = worker
    record = {"time": event.get("log_time"), "fields": fields}
    system = event.get("log_system")
    if system is not None:
        record["system"] = system
    return json.dumps(record, ensure_ascii=False, default=str).encode("utf-8") + b"\n"


@implementer(ILogObserver)
class LogRelay:
    """
    A worker's log observer: each event, one line on the parent's pipe
    (L{logRecord}).  Writes block: a parent behind slows its workers
    rather than losing lines.  A parent that is gone loses them.
    """

    def __init__(self, fd: int, worker: int) -> None:
        """
        @param fd: the pipe to the parent.
        @param worker: the worker's number.
        """
        self.fd = fd
        self.worker = worker

    def __call__(self, event: Mapping[str, Any]) -> None:
        """
        Write one event.
        """
        try:
            writeAll(self.fd, logRecord(event, self.worker))
        except OSError:
            pass


def lineFormatter(logFormat: str, worker: Optional[int] = None) -> Callable[[Mapping[str, Any]], Optional[str]]:
    """
    What makes the line of a log event in twistd's log: its text format
    (as C{textFileLogObserver} writes it, made as
    L{smtpmx.textlog.textLogObserver} makes it) or C{--log-format json}'s
    (L{jsonLine}, with C{worker}, the worker's number, when given).
    """
    if logFormat == LogFormat.JSON.value:
        if worker is None:
            return jsonLine

        def workersLine(event: Mapping[str, Any]) -> str:
            fields = eventFields(event)
            fields["worker"] = worker
            return json.dumps(fields, ensure_ascii=False, default=str) + "\n"

        return workersLine

    stamps = TimeStamps()
    return lambda event: classicLine(event, stamps)


@implementer(ILogObserver)
class LineRelay:
    """
    A worker's log observer when its parent writes twistd's log itself:
    each event, the line the parent would write for it, on the parent's
    pipe; the parent copies the lines into its log as they are.

    While the reactor runs, the lines of one turn of it are written
    together at its end (one write, one wake-up of the parent, rather than
    one per line).  Writes block: a parent behind slows its workers rather
    than losing lines.
    """

    def __init__(self, fd: int, logFormat: str, worker: int, reactor=None) -> None:
        """
        @param fd: the pipe to the parent.
        @param logFormat: C{"text"} or C{"json"}.
        @param worker: the worker's number, in every JSON line.
        @param reactor: gathers the lines of each of its turns; L{None}:
            each line is written at once.
        """
        self.fd = fd
        self.format = lineFormatter(logFormat, worker)
        self.reactor = reactor
        self._pending: list[str] = []

    def __call__(self, event: Mapping[str, Any]) -> None:
        """
        Write one event's line, or keep it for the end of the turn.
        """
        line = self.format(event)
        if not line:
            return
        self._pending.append(line)
        if self.reactor is not None and self.reactor.running:
            if len(self._pending) == 1:
                self.reactor.callLater(0, self.flush)
        else:
            self.flush()

    def flush(self) -> None:
        """
        Write the lines kept.
        """
        lines, self._pending = self._pending, []
        if lines:
            try:
                writeAll(self.fd, "".join(lines).encode("utf-8", "replace"))
            except OSError:
                pass


@implementer(IReadDescriptor)
class ParentWatch:
    """
    Stops the worker when its parent is gone: the end of the parent's pipe
    on descriptor 0 (a parent killed with C{SIGKILL} sends no C{SIGTERM}).
    """

    log = Logger()

    def __init__(self, reactor, fd: int = CONTROL_FD) -> None:
        self.reactor = reactor
        self.fd = fd

    def fileno(self) -> int:
        """
        The parent's pipe.
        """
        return self.fd

    def logPrefix(self) -> str:
        """
        What the reactor's log calls this.
        """
        return "ParentWatch"

    def doRead(self) -> Optional[Exception]:
        """
        The parent writes nothing more: anything read is its end.
        """
        try:
            data = os.read(self.fd, 4096)
        except BlockingIOError:
            return None
        except OSError as e:
            return e
        return None if data else EOFError("the parent closed its pipe")

    def connectionLost(self, reason: Failure) -> None:
        """
        The parent is gone: stop as on C{SIGTERM}.
        """
        self.log.warn("the parent process is gone: stopping")
        if self.reactor.running:
            self.reactor.stop()


def readSpec(stream) -> WorkerSpec:
    """
    The L{WorkerSpec} the parent wrote, from a binary stream.

    @raise EOFError: the parent wrote none.
    """
    spec = pickle.load(stream)
    if not isinstance(spec, WorkerSpec):
        raise TypeError(f"not a worker's spec: {type(spec).__name__}")
    return spec


def buildWorker(spec: WorkerSpec, reactor):
    """
    The worker's service: the plugins made anew from the configuration,
    STARTTLS from the parent's certificate, the sockets adopted.

    @raise ConfigError: a plugin cannot be made.
    """
    from smtpmx.services import buildService, configuredPlugins
    from smtpmx.tls import fromPEM

    config = spec.config
    validators, filters, backends = configuredPlugins(config)
    tlsOptions = None
    if spec.tls is not None:
        tlsOptions = fromPEM(spec.tls[0], spec.tls[1], config.tlsCertificate, config.tlsKey)
    return buildService(
        config, validators, tlsOptions, reactor, filters, backends, handleSignals=True, worker=spec,
    )


def run(spec: WorkerSpec, reactor) -> int:
    """
    Run one worker until it is stopped.

    @return: its exit status: 0, or 1 when it could not start.
    """
    log = Logger(namespace="smtpmx.worker")
    status = [0]
    try:
        service = buildWorker(spec, reactor)
    except ConfigError as e:
        log.critical("worker {number} cannot start: {why}", number=spec.index, why=str(e))
        return 1

    def start() -> None:
        try:
            service.startService()
        except SystemExit as e:
            log.critical("worker {number} cannot start: {why}", number=spec.index, why=str(e))
            status[0] = 1
            reactor.stop()
        except BaseException:
            log.failure("worker {number} cannot start", number=spec.index)
            status[0] = 1
            reactor.stop()

    def stop():
        if service.running:
            return service.stopService()
        return None

    watch = ParentWatch(reactor)
    reactor.addReader(watch)
    reactor.callWhenRunning(start)
    # Not watched while stopping: the reactor tells every descriptor it
    # still watches that it is lost.
    reactor.addSystemEventTrigger("before", "shutdown", reactor.removeReader, watch)
    reactor.addSystemEventTrigger("before", "shutdown", stop)
    reactor.run()
    return status[0]


def main() -> int:
    """
    The worker process: read the spec, log to the parent, run.
    """
    # Until the reload service handles it: a SIGHUP passed on while the
    # worker starts must not end it.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    spec = readSpec(sys.stdin.buffer)
    if spec.path:
        sys.path[:] = spec.path
    from twisted.internet import reactor

    if spec.logFormat is None:
        observer: Any = LogRelay(spec.logFD, spec.index)
    else:
        observer = LineRelay(spec.logFD, spec.logFormat, spec.index, reactor)
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)
    try:
        return run(spec, reactor)
    finally:
        if isinstance(observer, LineRelay):
            observer.flush()
