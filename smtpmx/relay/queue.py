"""
The durable relay queue (SPEC sections 4 and 6): messages for remote
recipients wait here, on disk, until every recipient is delivered or
bounced.

Layout under the queue directory::

    tmp/        staging: files being written, removed at start-up
    msg/<ID>    the message: our Received header, then the headers and
                body as received, LF line endings
    env/<ID>    the envelope and each recipient's state, as JSON
    corrupt/    env files that could not be read, with their messages
    flush       present when an operator asked for an immediate retry
    lock        held (flock) while a state file is read and rewritten

The env file is the commit point: a message is in the queue if and only if
its env file exists.  The message file is written and fsynced before the
env file appears, and the env file is removed before the message file.
Every state file is written whole under a temporary name, fsynced and
renamed over the old one, and the directory fsynced, so that a crash
leaves either the old state or the new one, never half of either.

L{Queue} blocks: the reactor side calls it through its C{runBlocking}.
L{QueueStore} is the L{IMessageStore} that streams a message received over
SMTP into the queue, on the reactor thread.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import socket
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from smtpmx.envelope import Envelope, RemoteAddress
from smtpmx.interfaces import IMessageStore
from smtpmx.spool import (
    DIRECTORY_MODE,
    FILE_MODE,
    createFile,
    fsyncDirectory,
    removeFile,
    uniqueName,
    writeAll,
    writeDurably,
)
from smtpmx.store import BACKLOG_LIMIT, CHUNK_SIZE, RunBlocking, StreamingMessage

# Recipient states.
PENDING = "pending"
DELIVERED = "delivered"
BOUNCED = "bounced"
STATES = (PENDING, DELIVERED, BOUNCED)

# The version of the env file format, stored in every file.
FORMAT_VERSION = 1

# A queue ID names files: letters and digits only, never a path.  The
# server's IDs are 18 upper-case hexadecimal digits.
_ID_RE = re.compile(r"[0-9A-Za-z]{1,64}")

_log = Logger()


class CorruptMessage(ValueError):
    """
    An env file that cannot be read as a queued message.
    """


def isValidId(messageId: object) -> bool:
    """
    Whether C{messageId} can be a queue ID: 1 to 64 ASCII letters and
    digits, so that it can never name anything outside the queue.
    """
    return isinstance(messageId, str) and _ID_RE.fullmatch(messageId) is not None


def checkId(messageId: str) -> str:
    """
    Check a queue ID, which may come from an operator.

    @return: C{messageId}.

    @raise ValueError: it is not a valid queue ID.
    """
    if not isValidId(messageId):
        raise ValueError(f"not a queue ID: {messageId!r}")
    return messageId


@dataclass
class QueuedRecipient:
    """
    One recipient of a queued message, and how its delivery is going.

    @ivar address: the forward-path exactly as received, case kept, without
        angle brackets.
    @ivar state: C{"pending"}, C{"delivered"} or C{"bounced"}.
    @ivar attempts: delivery attempts made so far.
    @ivar nextAttempt: when to try next, in seconds since the epoch.
    @ivar lastReply: the last reply or error, for the operator and the
        bounce, or L{None} before the first attempt.
    @ivar remoteMta: the host that gave C{lastReply}, if any.
    """

    address: str
    state: str = PENDING
    attempts: int = 0
    nextAttempt: float = 0.0
    lastReply: Optional[str] = None
    remoteMta: Optional[str] = None


@dataclass
class QueuedMessage:
    """
    The envelope and state of a queued message.

    @ivar id: the queue ID, also the file names.
    @ivar created: when it was queued, in seconds since the epoch.
    @ivar sender: the reverse-path without angle brackets, C{""} for the
        null path C{<>}.
    @ivar size: the size of the message file in bytes.
    @ivar clientHost: the address of the client it came from.
    @ivar heloName: the name that client gave in HELO or EHLO.
    @ivar recipients: one entry per distinct recipient.
    """

    id: str
    created: float
    sender: str
    size: int
    clientHost: str
    heloName: str
    recipients: list[QueuedRecipient] = field(default_factory=list)

    def pending(self) -> list[QueuedRecipient]:
        """
        The recipients still to be delivered, in order.
        """
        return [r for r in self.recipients if r.state == PENDING]


def encodeMessage(message: QueuedMessage) -> bytes:
    """
    The env file for C{message}: JSON, ASCII only (any character is
    escaped), ending with a newline.
    """
    data = {
        "version": FORMAT_VERSION,
        "id": message.id,
        "created": message.created,
        "sender": message.sender,
        "size": message.size,
        "clientHost": message.clientHost,
        "heloName": message.heloName,
        "recipients": [
            {
                "address": r.address,
                "state": r.state,
                "attempts": r.attempts,
                "nextAttempt": r.nextAttempt,
                "lastReply": r.lastReply,
                "remoteMta": r.remoteMta,
            }
            for r in message.recipients
        ],
    }
    return json.dumps(data, indent=1).encode("ascii") + b"\n"


def _field(data: dict[str, Any], name: str, kinds: tuple[type, ...], optional: bool = False) -> Any:
    """
    One field of a decoded env file, of one of C{kinds}.

    @raise CorruptMessage: it is missing or of another type.
    """
    if name not in data:
        if optional:
            return None
        raise CorruptMessage(f"missing field {name!r}")
    value = data[name]
    if value is None and optional:
        return None
    # bool is an int to Python, never to us.
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise CorruptMessage(f"field {name!r} has the wrong type")
    return value


def decodeMessage(data: bytes, messageId: str) -> QueuedMessage:
    """
    Read an env file.  Unknown fields are ignored, so that a later version
    may add some.

    @param messageId: the ID its file name gives; the file must agree.

    @raise CorruptMessage: it is not a queued message, or not this one.
    """
    try:
        decoded = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise CorruptMessage(f"not JSON: {e}") from None
    if not isinstance(decoded, dict):
        raise CorruptMessage("not a JSON object")
    version = _field(decoded, "version", (int,))
    if version != FORMAT_VERSION:
        raise CorruptMessage(f"unknown format version {version!r}")
    if _field(decoded, "id", (str,)) != messageId:
        raise CorruptMessage(f"the file names another message, {decoded['id']!r}")
    recipients = []
    entries = _field(decoded, "recipients", (list,))
    for entry in entries:
        if not isinstance(entry, dict):
            raise CorruptMessage("a recipient is not a JSON object")
        recipient = QueuedRecipient(
            address=_field(entry, "address", (str,)),
            state=_field(entry, "state", (str,)),
            attempts=_field(entry, "attempts", (int,)),
            nextAttempt=float(_field(entry, "nextAttempt", (int, float))),
            lastReply=_field(entry, "lastReply", (str,), optional=True),
            remoteMta=_field(entry, "remoteMta", (str,), optional=True),
        )
        if recipient.state not in STATES:
            raise CorruptMessage(f"unknown recipient state {recipient.state!r}")
        recipients.append(recipient)
    return QueuedMessage(
        id=messageId,
        created=float(_field(decoded, "created", (int, float))),
        sender=_field(decoded, "sender", (str,)),
        size=_field(decoded, "size", (int,)),
        clientHost=_field(decoded, "clientHost", (str,)),
        heloName=_field(decoded, "heloName", (str,)),
        recipients=recipients,
    )


class Queue:
    """
    The queue directory.  Every method blocks, and is safe to call from
    several threads and from the C{smtpmx-queue} command while the server
    runs, except L{recover}, which the server calls once at start-up before
    it accepts mail.

    Reading needs no lock (every file is replaced atomically); rewriting a
    state file, and removing a message, hold an exclusive C{flock} on
    C{lock} so that the server and the command never undo each other's
    changes.
    """

    def __init__(self, path: str, hostname: Optional[str] = None) -> None:
        """
        @param path: the queue directory; made absolute now, so that a
            later change of the working directory does not move it.
        @param hostname: for the unique names of temporary files; L{None}
            for this host's own.
        """
        self.path = os.path.abspath(path)
        self._hostname = socket.gethostname() if hostname is None else hostname
        self.temporaryDirectory = os.path.join(self.path, "tmp")
        self.messageDirectory = os.path.join(self.path, "msg")
        self.envelopeDirectory = os.path.join(self.path, "env")
        self.corruptDirectory = os.path.join(self.path, "corrupt")
        self._flushPath = os.path.join(self.path, "flush")
        self._lockPath = os.path.join(self.path, "lock")

    # Paths.

    def messagePath(self, messageId: str) -> str:
        """
        The message file of C{messageId}.

        @raise ValueError: C{messageId} is not a queue ID.
        """
        return os.path.join(self.messageDirectory, checkId(messageId))

    def envelopePath(self, messageId: str) -> str:
        """
        The env file of C{messageId}.

        @raise ValueError: C{messageId} is not a queue ID.
        """
        return os.path.join(self.envelopeDirectory, checkId(messageId))

    def temporaryPath(self, name: str) -> str:
        """
        A file in the staging directory.
        """
        return os.path.join(self.temporaryDirectory, name)

    def exists(self) -> bool:
        """
        Whether the queue has been created (by L{recover}).
        """
        return os.path.isdir(self.envelopeDirectory) and os.path.isdir(self.messageDirectory)

    # Start-up.

    def ensureDirectories(self) -> None:
        """
        Create the queue directory and its subdirectories where missing
        (mode C{0o700}) and fsync the parent of each one created.
        """
        created: list[str] = []
        for directory in (
            self.path,
            self.temporaryDirectory,
            self.messageDirectory,
            self.envelopeDirectory,
            self.corruptDirectory,
        ):
            if not os.path.isdir(directory):
                os.makedirs(directory, DIRECTORY_MODE, exist_ok=True)
                created.append(directory)
        for parent in dict.fromkeys(os.path.dirname(d) for d in created):
            fsyncDirectory(parent)

    def recover(self) -> list[QueuedMessage]:
        """
        Bring the queue back to a consistent state after a stop or a crash,
        and list it.  Only the server calls this, once, before it accepts
        mail: it removes what is being written.

          - Files in C{tmp/} were never committed: removed.
          - A message file without an env file was never acknowledged (the
            crash came before the commit, or in the middle of a removal):
            removed.
          - An env file without its message file cannot be delivered:
            removed, and logged.
          - An env file that cannot be read is moved, with its message
            file, into C{corrupt/} for the operator, and logged.

        @return: every message in the queue, oldest first.
        """
        self.ensureDirectories()
        for name in os.listdir(self.temporaryDirectory):
            problem = removeFile(self.temporaryPath(name))
            if problem is not None:
                _log.warn("Cannot remove {path} from the queue: {problem!r}",
                          path=self.temporaryPath(name), problem=problem)
        messages: list[QueuedMessage] = []
        envelopes = set()
        for name in sorted(os.listdir(self.envelopeDirectory)):
            if not isValidId(name):
                self._moveCorrupt(name, "not a queue ID")
                continue
            if not os.path.exists(os.path.join(self.messageDirectory, name)):
                _log.warn("{id}: message file missing, dropped from the queue", id=name)
                removeFile(os.path.join(self.envelopeDirectory, name))
                continue
            try:
                message = self.load(name)
            except (CorruptMessage, OSError) as e:
                self._moveCorrupt(name, str(e))
                continue
            if message is not None:
                envelopes.add(name)
                messages.append(message)
        for name in os.listdir(self.messageDirectory):
            if name not in envelopes:
                _log.info("{name}: never committed, removed from the queue", name=name)
                removeFile(os.path.join(self.messageDirectory, name))
        fsyncDirectory(self.envelopeDirectory)
        fsyncDirectory(self.messageDirectory)
        messages.sort(key=lambda m: (m.created, m.id))
        _log.info("Queue {path}: {count} messages waiting", path=self.path, count=len(messages))
        return messages

    def _moveCorrupt(self, name: str, reason: str) -> None:
        """
        Move an unreadable env file, and its message file, into
        C{corrupt/}.
        """
        _log.error("{name}: unreadable queue entry moved to {where}: {reason}",
                   name=name, where=self.corruptDirectory, reason=reason)
        for directory, suffix in ((self.envelopeDirectory, ".env"), (self.messageDirectory, ".msg")):
            source = os.path.join(directory, name)
            if not os.path.lexists(source):
                continue
            target = os.path.join(self.corruptDirectory, name + suffix)
            if os.path.lexists(target):
                target = os.path.join(self.corruptDirectory, f"{name}.{uniqueName(self._hostname)}{suffix}")
            try:
                os.rename(source, target)
            except OSError as e:
                _log.warn("Cannot move {source} to {target}: {problem!r}",
                          source=source, target=target, problem=e)
        fsyncDirectory(self.corruptDirectory)

    # Reading.

    def ids(self) -> list[str]:
        """
        The IDs of the messages in the queue, in no particular order.
        """
        try:
            names = os.listdir(self.envelopeDirectory)
        except FileNotFoundError:
            return []
        return [name for name in names if isValidId(name)]

    def load(self, messageId: str) -> Optional[QueuedMessage]:
        """
        The state of one message.

        @return: the message, or L{None} if it is not in the queue.

        @raise ValueError: C{messageId} is not a queue ID.
        @raise CorruptMessage: its env file cannot be read.
        """
        try:
            with open(self.envelopePath(messageId), "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return None
        return decodeMessage(data, messageId)

    def list(self) -> list[QueuedMessage]:
        """
        Every message in the queue, oldest first; an env file that cannot
        be read is logged and left out.
        """
        messages = []
        for messageId in self.ids():
            try:
                message = self.load(messageId)
            except CorruptMessage as e:
                _log.error("{id}: unreadable queue entry: {reason}", id=messageId, reason=str(e))
                continue
            if message is not None:
                messages.append(message)
        messages.sort(key=lambda m: (m.created, m.id))
        return messages

    # Writing.

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """
        Hold the queue's lock, shared with other processes (C{flock}) and
        other threads (each holder opens the file anew).
        """
        fd = os.open(self._lockPath, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _writeState(self, message: QueuedMessage, replace: bool = True) -> None:
        """
        Write C{message}'s env file whole: temporary file in C{tmp/},
        fsync, rename, directory fsync.
        """
        writeDurably(
            self.envelopePath(message.id),
            encodeMessage(message),
            temporaryDirectory=self.temporaryDirectory,
            hostname=self._hostname,
            replace=replace,
        )

    def save(self, message: QueuedMessage) -> bool:
        """
        Replace the stored state of a message with C{message}, atomically:
        after a crash the file holds the old state or the new, whole.

        A message that is no longer in the queue (an operator deleted it)
        is not brought back.

        @return: whether it was saved; C{False} if it is no longer queued.
        """
        with self._locked():
            if not os.path.exists(self.envelopePath(message.id)):
                return False
            self._writeState(message)
            return True

    def update(self, messageId: str, change: Callable[[QueuedMessage], Any]) -> Optional[QueuedMessage]:
        """
        Read a message's state, let C{change} modify it and save it, with no
        other writer in between.

        @return: the message as saved, or L{None} if it is not queued.

        @raise CorruptMessage: its env file cannot be read.
        """
        with self._locked():
            message = self.load(messageId)
            if message is None:
                return None
            change(message)
            self._writeState(message)
            return message

    def add(self, message: QueuedMessage, data: bytes) -> None:
        """
        Queue a message made in memory (a bounce): the message file is
        written durably, then the env file, which commits it.

        @param message: its state; C{message.size} is set to C{len(data)}.
        @param data: the message: headers and body, LF line endings.

        @raise FileExistsError: the ID is taken; nothing was changed.
        """
        message.size = len(data)
        msgPath = self.messagePath(message.id)
        envPath = self.envelopePath(message.id)
        writeDurably(msgPath, data, self.temporaryDirectory, self._hostname, replace=False)
        try:
            self._writeState(message, replace=False)
        except BaseException as e:
            # Unless the env file was someone else's, it may be in place,
            # not yet durable: it goes first, then the message file.
            if not isinstance(e, FileExistsError):
                self._removeQuietly(envPath, e)
            self._removeQuietly(msgPath, e)
            raise

    def _removeQuietly(self, path: str, error: BaseException) -> None:
        """
        Remove a file and fsync its directory after C{error}, noting on
        C{error} what went wrong rather than raising.
        """
        problem = removeFile(path)
        if problem is None:
            try:
                fsyncDirectory(os.path.dirname(path))
            except OSError as e:
                problem = e
        if problem is not None:
            error.add_note(f"while cleaning up: {problem!r}")

    def remove(self, messageId: str) -> bool:
        """
        Take a message out of the queue: its env file first (it is gone
        from then on), then its message file, each directory fsynced.

        @return: whether it was in the queue.

        @raise ValueError: C{messageId} is not a queue ID.
        """
        envPath = self.envelopePath(messageId)
        with self._locked():
            try:
                os.unlink(envPath)
            except FileNotFoundError:
                existed = False
            else:
                existed = True
                fsyncDirectory(self.envelopeDirectory)
            try:
                os.unlink(self.messagePath(messageId))
            except FileNotFoundError:
                pass
            else:
                fsyncDirectory(self.messageDirectory)
        return existed

    # Flush requests from the operator.

    def requestFlush(self) -> None:
        """
        Ask the running server to try every pending recipient now: create
        the C{flush} marker, which it looks for every second or so.
        """
        fd = os.open(self._flushPath, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
        os.close(fd)

    def takeFlushRequest(self) -> bool:
        """
        Whether a flush was requested since the last call; the request is
        consumed.
        """
        try:
            os.unlink(self._flushPath)
        except FileNotFoundError:
            return False
        return True


# Receiving a message over SMTP into the queue.


class _QueueFiles:
    """
    The files of one message being received into the queue, the blocking
    side of a L{StreamingMessage}: every method runs in the thread runner,
    one after another, and any method that fails has already removed every
    file it made.

    The body streams into C{tmp/<ID>.msg}; L{prepare} moves it to
    C{msg/<ID>} and writes the state to C{tmp/<ID>.env}; L{commit} moves
    that into C{env/}.
    """

    def __init__(self, queue: Queue, message: QueuedMessage, header: bytes) -> None:
        """
        @param queue: the queue.
        @param message: the state to write; its C{size}, C{created} and
            the recipients' C{nextAttempt} are set when it is prepared.
        @param header: what goes before the body: our C{Received} header.
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
                self._fd = createFile(self._temporaryMessage)
            except FileNotFoundError:
                self._queue.ensureDirectories()
                self._fd = createFile(self._temporaryMessage)
            self._made[self._temporaryMessage] = None
            writeAll(self._fd, self._header)
            self._size = len(self._header)
        return self._fd

    def _close(self) -> None:
        """
        Close the message file if it is open.
        """
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def write(self, data: bytes) -> None:
        """
        Append body bytes.
        """
        try:
            writeAll(self._open(), data)
            self._size += len(data)
        except BaseException as e:
            self._discardAfter(e)
            raise

    def prepare(self, data: bytes) -> None:
        """
        Append the last body bytes, fsync the message file, move it to
        C{msg/<ID>} (never over another message) and fsync C{msg/}; then
        write the state to C{tmp/<ID>.env} and fsync it.
        """
        try:
            fd = self._open()
            writeAll(fd, data)
            self._size += len(data)
            os.fsync(fd)
            self._close()
            messagePath = self._queue.messagePath(self.message.id)
            os.link(self._temporaryMessage, messagePath)
            self._made[messagePath] = None
            os.unlink(self._temporaryMessage)
            del self._made[self._temporaryMessage]
            fsyncDirectory(self._queue.messageDirectory)
            self.message.size = self._size
            self.message.created = self.now
            for recipient in self.message.recipients:
                recipient.nextAttempt = self.now
            envelope = createFile(self._temporaryEnvelope)
            self._made[self._temporaryEnvelope] = None
            try:
                writeAll(envelope, encodeMessage(self.message))
                os.fsync(envelope)
            finally:
                os.close(envelope)
        except BaseException as e:
            self._discardAfter(e)
            raise

    def commit(self) -> None:
        """
        Move the state into C{env/} and fsync it: the message is queued.
        """
        try:
            envelopePath = self._queue.envelopePath(self.message.id)
            os.rename(self._temporaryEnvelope, envelopePath)
            del self._made[self._temporaryEnvelope]
            self._made = {envelopePath: None, **self._made}
            fsyncDirectory(self._queue.envelopeDirectory)
        except BaseException as e:
            self._discardAfter(e)
            raise

    def finish(self, data: bytes) -> None:
        """
        L{prepare}, then L{commit}: one job for a small message.
        """
        self.prepare(data)
        self.commit()

    def _discardAfter(self, error: BaseException) -> None:
        """
        Remove every file after C{error}, noting on it what could not be.
        """
        for problem in self.discard():
            error.add_note(f"while cleaning up: {problem!r}")

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
        directories: dict[str, None] = {}
        for path in list(self._made):
            problem = removeFile(path)
            if problem is None:
                del self._made[path]
                directory = os.path.dirname(path)
                if directory != self._queue.temporaryDirectory:
                    directories[directory] = None
                    # The env file must be gone for good before the
                    # message file goes.
                    try:
                        fsyncDirectory(directory)
                    except OSError as e:
                        problems.append(e)
            else:
                problems.append(problem)
        return problems


@implementer(IMessageStore)
class QueueStore:
    """
    Files messages for remote recipients into the relay queue, streaming
    the body to disk as it arrives, as L{smtpmx.store.MaildirStore} does.

    The message is stored as the next hop will get it: our C{Received}
    header, then the message as received (no C{Return-Path}, no
    C{Delivered-To}).  Each distinct recipient address (the domain compared
    without regard to case) gets one entry, its address kept as given and
    due at once.

    Its messages have, besides L{finish}, a two-phase completion
    (C{prepare}, C{commit}, C{rollback}) for a store that must file a
    message in the queue and elsewhere, all or nothing.

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

    def receive(self, envelope: Envelope) -> _QueueMessage:
        """
        Begin queueing a message for every recipient of C{envelope}.

        @raise ValueError: a recipient is not remote, the queue ID is not
            valid, or there is no recipient.
        """
        checkId(envelope.queueId)
        recipients: list[QueuedRecipient] = []
        seen: set[tuple[str, str]] = set()
        for recipient in envelope.recipients:
            destination = recipient.destination
            if not isinstance(destination, RemoteAddress):
                raise ValueError(f"QueueStore cannot deliver to {destination!r}")
            address = destination.address
            key = (address.localpart, address.domain.lower())
            if key in seen:
                continue
            seen.add(key)
            recipients.append(QueuedRecipient(address=str(address)))
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
        return _QueueMessage(
            _QueueFiles(self.queue, message, envelope.received),
            self,
        )

    def _queued(self, message: QueuedMessage) -> None:
        """
        Tell L{onQueued} about a message just committed.
        """
        self._log.info(
            "{id}: queued for relay: from=<{sender}> to=[{to}] size={size}",
            id=message.id,
            sender=message.sender,
            to=", ".join(f"<{r.address}>" for r in message.recipients),
            size=message.size,
        )
        if self.onQueued is not None:
            try:
                self.onQueued(message)
            except Exception:
                self._log.failure("{id}: the relay service failed to take the message", id=message.id)


class _QueueMessage(StreamingMessage):
    """
    A message on its way into the queue: a L{StreamingMessage} that stamps
    the time it is completed and announces the message once committed.
    """

    def __init__(self, files: _QueueFiles, store: QueueStore) -> None:
        """
        @param files: the blocking side.
        @param store: the store, for its clock, thread runner and listener.
        """
        super().__init__(files, store._runBlocking, store._chunkSize, store._backlogLimit)
        self._queueFiles = files
        self._store = store

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
        self._queueFiles.now = self._store._clock.seconds()

    def _announce(self, result: None) -> None:
        """
        Tell the store the message is queued.
        """
        self._store._queued(self._queueFiles.message)

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
