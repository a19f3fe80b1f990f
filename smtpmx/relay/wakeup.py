"""
Word of new messages between the workers of C{--workers} (docs/workers.rst).

Every worker receives mail into the one queue directory, but only one of
them, the relay worker, runs the L{RelayService}.  A worker that commits a
message to the queue tells the relay worker at once: L{QueueNotifier}
writes the message's queue ID, one line, to a pipe that their parent made
and handed to every worker; the relay worker's L{QueueListener} reads the
IDs, loads each message from the queue and hands it to the relay service
(L{QueueListener.heardOf}), so that a message queued by any worker is
tried as soon as one queued by the relay worker itself.

The pipe is a hint, never the record: the message is durable in the queue
before its ID is written.  A line is shorter than C{PIPE_BUF}, so lines
from several writers never mix.  When the pipe is full (the relay worker
is stopped, or far behind) the word is dropped: the relay worker lists the
queue when it starts, and looks for messages it does not know every
L{RESCAN_INTERVAL} seconds (L{QueueListener.lookForNew}).
"""

from __future__ import annotations

import os
from typing import Optional

from twisted.application.service import Service
from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer
from twisted.internet.interfaces import IReadDescriptor

from smtpmx.relay.queueformat import CorruptMessage, QueuedMessage, isValidId
from smtpmx.relay.service import RelayService

# Seconds between two looks at the queue for messages whose word was lost.
RESCAN_INTERVAL = 60.0
# Bytes read from the pipe at a time.
READ_SIZE = 65536


class QueueNotifier:
    """
    The C{onQueued} of a worker that does not run the relay: tells the
    relay worker of each message committed to the queue.

    @ivar dropped: how many words were dropped because the pipe was full.
    """

    log = Logger()

    def __init__(self, fd: int) -> None:
        """
        @param fd: the pipe's writing end, non-blocking.
        """
        self.fd = fd
        self.dropped = 0

    def __call__(self, message: QueuedMessage) -> None:
        """
        Write C{message}'s queue ID to the pipe; a full pipe drops it (the
        relay worker finds the message in its next look at the queue).
        """
        try:
            os.write(self.fd, message.id.encode("ascii") + b"\n")
        except BlockingIOError:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                self.log.warn(
                    "{id}: the relay worker is not listening; it will find the message"
                    " within {interval:g} s ({dropped} so far)",
                    id=message.id, interval=RESCAN_INTERVAL, dropped=self.dropped,
                )
        except OSError as e:
            self.log.error("{id}: cannot tell the relay worker: {error}", id=message.id, error=e)


@implementer(IReadDescriptor)
class PipeReader:
    """
    Reads queue IDs, one a line, from the pipe, for the reactor.
    """

    log = Logger()

    def __init__(self, fd: int, heard) -> None:
        """
        @param fd: the pipe's reading end.
        @param heard: called with each queue ID read.
        """
        self.fd = fd
        self.heard = heard
        self._partial = b""

    def fileno(self) -> int:
        """
        The pipe's reading end.
        """
        return self.fd

    def logPrefix(self) -> str:
        """
        What the reactor's log calls this.
        """
        return "QueueListener"

    def doRead(self) -> Optional[Exception]:
        """
        Read what is there and hand on each whole line.
        """
        try:
            data = os.read(self.fd, READ_SIZE)
        except BlockingIOError:
            return None
        except OSError as e:
            return e
        if not data:
            return EOFError("every writer of the pipe is gone")
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            messageId = line.decode("ascii", "replace")
            if isValidId(messageId):
                self.heard(messageId)
        return None

    def connectionLost(self, reason: Failure) -> None:
        """
        The pipe broke or was closed (the parent is gone): nothing more is
        heard; the periodic look at the queue goes on.
        """
        self.log.info("stopped listening for messages queued by the other workers: {why}",
                      why=reason.getErrorMessage())


class QueueListener(Service):
    """
    The relay worker's ear: it takes in the messages other workers queue.

    @ivar relay: the relay service they are handed to.
    """

    log = Logger()

    def __init__(self, relay: RelayService, fd: int, reactor,
                 rescanInterval: float = RESCAN_INTERVAL) -> None:
        """
        @param relay: the relay service, started before this one (its list
            of the queue comes first).
        @param fd: the pipe's reading end.
        @param reactor: reads the pipe (L{IReactorFDSet}) and times the
            looks at the queue.
        @param rescanInterval: seconds between two looks at the queue.
        """
        self.relay = relay
        self.reactor = reactor
        self.rescanInterval = rescanInterval
        self.reader = PipeReader(fd, self.heardOf)
        self.unreadable: set[str] = set()
        self._loading: set[str] = set()
        self._loop: Optional[LoopingCall] = None

    def startService(self) -> None:
        """
        Read the pipe, and look at the queue every C{rescanInterval}
        seconds.
        """
        super().startService()
        os.set_blocking(self.reader.fd, False)
        self.reactor.addReader(self.reader)
        self._loop = LoopingCall(self.lookForNew)
        self._loop.clock = self.reactor
        self._loop.start(self.rescanInterval, now=False)

    def stopService(self) -> None:
        """
        Stop reading and looking.
        """
        super().stopService()
        self.reactor.removeReader(self.reader)
        if self._loop is not None and self._loop.running:
            self._loop.stop()

    def heardOf(self, messageId: str) -> Deferred:
        """
        Another worker queued C{messageId}: load it and try it at once,
        unless the relay knows it already.  A message no longer in the
        queue (delivered and removed meanwhile) is ignored, and so is a
        second word of a message being loaded, and one whose state could
        not be read (it is logged once, and left to the operator).

        Known means held or in flight: a message stays in flight until its
        removal is done, so a message that is not known is either new or
        gone from the disk for good, and what is loaded is never an old
        state of a message already delivered.

        @return: a L{Deferred} that fires once it is loaded (or ignored); it
            never fails.
        """
        relay = self.relay
        if (messageId in relay.messages or messageId in relay.inFlight or messageId in self._loading
                or messageId in self.unreadable):
            return succeed(None)
        self._loading.add(messageId)

        def loaded(message: Optional[QueuedMessage]) -> None:
            if message is None or message.id in relay.messages or message.id in relay.inFlight:
                return
            relay.queued(message)

        def failed(failure: Failure) -> None:
            self.unreadable.add(messageId)
            if failure.check(CorruptMessage, OSError):
                self.log.error("{id}: unreadable queue entry, not relayed: {why}",
                               id=messageId, why=failure.getErrorMessage())
            else:
                self.log.failure("{id}: cannot load a message another worker queued",
                                 failure, id=messageId)

        def done(result: object) -> object:
            self._loading.discard(messageId)
            return result

        d = relay.runBlocking(relay.queue.load, messageId)
        d.addBoth(done)
        return d.addCallbacks(loaded, failed)

    def lookForNew(self) -> Deferred:
        """
        List the queue and take in every message the relay does not know
        (L{heardOf}): the safety net for words that were dropped.

        @return: a L{Deferred} that fires once every new message is loaded;
            it never fails.
        """

        def listed(ids: list[str]) -> Deferred:
            return gatherResults([self.heardOf(messageId) for messageId in sorted(ids)])

        def failed(failure: Failure) -> None:
            self.log.failure("cannot list the relay queue", failure)

        return self.relay.runBlocking(self.relay.queue.ids).addCallback(listed).addErrback(failed)
