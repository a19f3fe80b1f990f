"""
Message intake into the relay queue: L{QueueStore} is the
L{smtpmx.interfaces.IMessageStore} that streams a message received over
SMTP into the queue (L{smtpmx.relay.queue.Queue}) on the reactor thread,
with the streaming engine of L{smtpmx.streaming}.  C{docs/storage.rst}
describes the files and their guarantees.
"""

from __future__ import annotations

import os
from typing import Callable, Optional

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from smtpmx import durable
from smtpmx.backends import describeVia
from smtpmx.envelope import CourierRecipient, Envelope, RemoteAddress
from smtpmx.interfaces import IMessageStore
from smtpmx.relay.queue import Queue, markCreated, markDue
from smtpmx.relay.queueformat import QueuedMessage, QueuedRecipient, checkId, encodeMessage
from smtpmx.streaming import (
    BACKLOG_LIMIT,
    CHUNK_SIZE,
    MessageFiles,
    RunBlocking,
    StreamingMessage,
)


class QueueFiles(MessageFiles):
    """
    The files of one message being received into the queue, the blocking
    side of its L{StreamingMessage}.

    The body streams into C{tmp/<ID>.msg}; sealing moves it to
    C{msg/<ID>} (never over another message) and writes the state to
    C{tmp/<ID>.env}; publishing moves that into C{env/}, which queues the
    message.
    """

    def __init__(self, queue: Queue, message: QueuedMessage, header: bytes) -> None:
        """
        @param queue: the queue.
        @param message: the state to write; its C{size}, C{created} and
            the recipients' C{nextAttempt} are set when it is sealed.
        @param header: what goes before the body: our C{Received} header
            and the envelope's C{extraHeaders}.
        """
        self._queue = queue
        self.message = message
        self._header = header
        self._size = 0
        self._fd: Optional[int] = None
        # When the message was completed, set on the reactor thread.
        self.now = 0.0
        # Paths of the files made, in the order they must be removed.
        self._temporaryMessage = queue.temporaryPath(message.id + ".msg")
        self._temporaryEnvelope = queue.temporaryPath(message.id + ".env")
        self._made: dict[str, None] = {}

    def _open(self) -> int:
        """
        The message file, created on first use with the header in it.
        """
        if self._fd is None:
            try:
                self._fd = durable.createFile(self._temporaryMessage)
            except FileNotFoundError:
                self._queue.ensureDirectories()
                self._fd = durable.createFile(self._temporaryMessage)
            self._made[self._temporaryMessage] = None
            durable.writeAll(self._fd, self._header)
            self._size = len(self._header)
        return self._fd

    def _close(self) -> None:
        """
        Close the message file if it is open.
        """
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def appendBody(self, data: bytes) -> None:
        """
        Append body bytes to the message file.
        """
        durable.writeAll(self._open(), data)
        self._size += len(data)

    def seal(self) -> None:
        """
        Fsync the message file, move it to C{msg/<ID>} (never over another
        message) and fsync C{msg/}; then write the state to
        C{tmp/<ID>.env} and fsync it.
        """
        durable.fsyncFile(self._open())
        self._close()
        messagePath = self._queue.messagePath(self.message.id)
        durable.moveFile(self._temporaryMessage, messagePath, replace=False)
        self._made[messagePath] = None
        del self._made[self._temporaryMessage]
        durable.fsyncDirectory(self._queue.messageDirectory)
        markCreated(messagePath, self.now)
        self.message.size = self._size
        self.message.created = self.now
        for recipient in self.message.recipients:
            recipient.nextAttempt = self.now
        durable.writeNewFile(self._temporaryEnvelope, encodeMessage(self.message))
        self._made[self._temporaryEnvelope] = None

    def publish(self) -> None:
        """
        Move the state into C{env/} and fsync it: the message is queued.
        """
        envelopePath = self._queue.envelopePath(self.message.id)
        durable.moveFile(self._temporaryEnvelope, envelopePath)
        markDue(envelopePath, self.message)
        del self._made[self._temporaryEnvelope]
        self._made = {envelopePath: None, **self._made}
        durable.fsyncDirectory(self._queue.envelopeDirectory)

    def discard(self) -> list[BaseException]:
        """
        Close and remove every file this message made, the env file first,
        and fsync the directories they were removed from.  Never raises.

        @return: the errors met on the way.
        """
        problems: list[BaseException] = []
        try:
            self._close()
        except OSError as e:
            problems.append(e)
        for path in list(self._made):
            problem = durable.removeFile(path)
            if problem is None:
                del self._made[path]
                directory = os.path.dirname(path)
                if directory != self._queue.temporaryDirectory:
                    # The env file must be gone for good before the
                    # message file goes.
                    try:
                        durable.fsyncDirectory(directory)
                    except OSError as e:
                        problems.append(e)
            else:
                problems.append(problem)
        return problems


@implementer(IMessageStore)
class QueueStore:
    """
    Files messages for remote recipients, and for the local recipients of
    domains delivered over LMTP, into the relay queue, streaming
    the body to disk as it arrives, as
    L{smtpmx.delivery.maildir.MaildirStore} does.

    The message is stored as the next hop will get it: our C{Received}
    header, the envelope's C{extraHeaders} (the message filters' fields,
    so that relayed mail carries them too), then the message as received
    (no C{Return-Path}, no C{Delivered-To}: an LMTP server adds them).
    Each distinct recipient address (the domain compared without regard to
    case) gets one entry, its address kept as given and due at once; an
    L{CourierRecipient}'s entry has its delivery backend's specification as
    C{via}, such as C{lmtp:unix:/run/dovecot/lmtp} (docs/storage.rst).

    Its messages provide L{smtpmx.interfaces.ITwoPhaseMessage}: besides
    C{finish} a two-phase completion (C{prepare}, C{commit}, C{rollback})
    for a store that must file a message in the queue and elsewhere, all
    or nothing.

    @ivar onQueued: L{None}, or a callable that gets each message's
        L{QueuedMessage} on the reactor thread once it is committed: the
        relay service sets it to try the new message at once.
    """

    _log = Logger()

    def __init__(
        self,
        queue: Queue,
        runBlocking: RunBlocking,
        clock: IReactorTime,
        onQueued: Optional[Callable[[QueuedMessage], None]] = None,
        chunkSize: int = CHUNK_SIZE,
        backlogLimit: int = BACKLOG_LIMIT,
    ) -> None:
        """
        @param queue: the queue, already recovered.
        @param runBlocking: C{runBlocking(f, *args, **kwargs)} runs C{f} in
            a thread pool and returns a L{Deferred} of its result.
        @param clock: gives the time a message is queued.
        @param onQueued: see L{onQueued}.
        @param chunkSize: body bytes gathered before a write job is sent.
        @param backlogLimit: pending body bytes past which C{write} asks
            the caller to wait.
        """
        self.queue = queue
        self.onQueued = onQueued
        self._runBlocking = runBlocking
        self._clock = clock
        self._chunkSize = chunkSize
        self._backlogLimit = backlogLimit

    def receive(self, envelope: Envelope) -> QueueMessage:
        """
        Begin queueing a message for every recipient of C{envelope}.

        @raise ValueError: a recipient is neither remote nor for an LMTP
            server, the queue ID is not valid, or there is no recipient.
        """
        checkId(envelope.queueId)
        recipients: list[QueuedRecipient] = []
        seen: set[tuple[str, str]] = set()
        for recipient in envelope.recipients:
            destination = recipient.destination
            if not isinstance(destination, (RemoteAddress, CourierRecipient)):
                raise ValueError(f"QueueStore cannot deliver to {destination!r}")
            address = destination.address
            key = (address.localpart, address.domain.lower())
            if key in seen:
                continue
            seen.add(key)
            via = destination.backend if isinstance(destination, CourierRecipient) else None
            recipients.append(QueuedRecipient(address=str(address), via=via))
        if not recipients:
            raise ValueError("a message needs at least one recipient")
        message = QueuedMessage(
            id=envelope.queueId,
            created=0.0,
            sender="" if envelope.reversePath is None else str(envelope.reversePath),
            size=0,
            clientHost=envelope.clientHost,
            heloName=envelope.heloName,
            recipients=recipients,
        )
        return QueueMessage(
            QueueFiles(self.queue, message, envelope.received + envelope.extraHeaders),
            self._runBlocking,
            self._clock,
            self._queued,
            self._chunkSize,
            self._backlogLimit,
        )

    def _queued(self, message: QueuedMessage) -> None:
        """
        Log a message just committed and tell L{onQueued} about it.
        """
        self._log.info(
            "{id}: queued for relay: from=<{sender}> to=[{to}] size={size}",
            id=message.id,
            sender=message.sender,
            to=", ".join(
                f"<{r.address}>" + (f" via {describeVia(r.via)}" if r.via is not None else "")
                for r in message.recipients
            ),
            size=message.size,
        )
        if self.onQueued is not None:
            try:
                self.onQueued(message)
            except Exception:
                self._log.failure("{id}: the relay service failed to take the message", id=message.id)


class QueueMessage(StreamingMessage):
    """
    A message on its way into the queue: a L{StreamingMessage} that stamps
    the time it is completed and announces the message once committed.
    """

    def __init__(
        self,
        files: QueueFiles,
        runBlocking: RunBlocking,
        clock: IReactorTime,
        announce: Callable[[QueuedMessage], None],
        chunkSize: int = CHUNK_SIZE,
        backlogLimit: int = BACKLOG_LIMIT,
    ) -> None:
        """
        @param files: the blocking side.
        @param runBlocking: the thread runner.
        @param clock: gives the time the message is queued.
        @param announce: called with the message's state, on the reactor
            thread, once it is queued.
        @param chunkSize: body bytes gathered before a job is sent.
        @param backlogLimit: pending bytes past which C{write} asks to wait.
        """
        super().__init__(files, runBlocking, chunkSize, backlogLimit)
        self._queueFiles = files
        self._clock = clock
        self._announceTo = announce

    @property
    def queued(self) -> QueuedMessage:
        """
        The message's state (complete once it is prepared).
        """
        return self._queueFiles.message

    def _stamp(self) -> None:
        """
        Note now as the time the message is queued and first due.
        """
        self._queueFiles.now = self._clock.seconds()

    def _announce(self, result: None) -> None:
        """
        Tell the store the message is queued.
        """
        self._announceTo(self._queueFiles.message)

    def finish(self) -> Deferred[None]:
        """
        Queue the message durably, in one job for a small message.
        """
        self._stamp()
        return super().finish().addCallback(self._announce)

    def prepare(self) -> Deferred[None]:
        """
        Write the message and its state, without queueing it yet.
        """
        self._stamp()
        return super().prepare()

    def commit(self) -> Deferred[None]:
        """
        Queue the prepared message.
        """
        return super().commit().addCallback(self._announce)
