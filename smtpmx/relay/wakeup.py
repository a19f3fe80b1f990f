"""
Word of new messages between the workers of C{--workers} (docs/workers.rst).

Every worker receives mail into the one queue directory, but only one of
them, the relay worker, runs the L{RelayService}.  A worker that commits a
message to the queue tells the relay worker at once: L{QueueNotifier}
writes the message's queue ID, one line, to a pipe that their parent made
and handed to every worker; the relay worker's L{QueueListener} reads the
IDs and hands each to the relay service (L{RelayService.heardOf}), which
takes the message in from the queue at once, within its limit on attempts
(docs/relay.rst), so that a message queued by any worker is tried as soon
as one queued by the relay worker itself.

The pipe is a hint, never the record: the message is durable in the queue
before its ID is written.  A line is shorter than C{PIPE_BUF}, so lines
from several writers never mix.  When the pipe is full (the relay worker
is stopped, or far behind) the word is dropped: the relay looks at the
queue when it starts and every minute, and the listener asks it to every
L{RESCAN_INTERVAL} seconds too (L{QueueListener.lookForNew}).
"""

from __future__ import annotations

import os
from typing import Optional

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer
from twisted.internet.interfaces import IReadDescriptor

from smtpmx.relay.queueformat import QueuedMessage, isValidId
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
        Another worker queued C{messageId}: the relay takes it in from disk
        at once (L{RelayService.heardOf}), unless it holds it already.  A
        message no longer in the queue (delivered and removed meanwhile) is
        ignored; one whose state cannot be read is logged and left to the
        operator (looked at again a day later).  The relay reads it
        through its backlog, which never attempts an older state of a
        message whose attempt ended while it was being read.

        @return: a L{Deferred} that has fired; it never fails.
        """
        try:
            self.relay.heardOf(messageId)
        except Exception:
            self.log.failure("{id}: cannot take in a message another worker queued", id=messageId)
        return succeed(None)

    def lookForNew(self) -> Deferred:
        """
        Have the relay look at the queue now (L{RelayService.wake}): the
        safety net for words that were dropped.

        @return: a L{Deferred} that has fired; it never fails.
        """
        try:
            self.relay.wake()
        except Exception:
            self.log.failure("cannot look at the relay queue")
        return succeed(None)
