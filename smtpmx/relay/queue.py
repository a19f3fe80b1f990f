"""
The relay queue directory: messages for remote recipients wait here, on
disk, until every recipient is delivered or bounced.  L{Queue} lists,
loads, saves and removes them, holds the lock, and recovers the directory
at start-up; the file format is L{smtpmx.relay.queueformat}'s, message
intake over SMTP L{smtpmx.relay.intake}'s, and every durable step
L{smtpmx.durable}'s.  C{docs/storage.rst} describes the layout and its
guarantees.

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
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import math
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Collection, Iterator, Optional, Sequence

from twisted.logger import Logger

from smtpmx import durable
from smtpmx.relay.queueformat import (
    CorruptMessage,
    QueuedMessage,
    checkId,
    decodeMessage,
    encodeMessage,
    isValidId,
)

_log = Logger()

# Seconds before a state file that could not be read is read again.
UNREADABLE_DELAY = 86400.0


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

    def __init__(self, path: str) -> None:
        """
        @param path: the queue directory; made absolute now, so that a
            later change of the working directory does not move it.
        """
        self.path = os.path.abspath(path)
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
        durable.makeDirectories(
            [
                self.path,
                self.temporaryDirectory,
                self.messageDirectory,
                self.envelopeDirectory,
                self.corruptDirectory,
            ]
        )

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
            problem = durable.removeFile(self.temporaryPath(name))
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
                durable.removeFile(os.path.join(self.envelopeDirectory, name))
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
                durable.removeFile(os.path.join(self.messageDirectory, name))
        durable.fsyncDirectory(self.envelopeDirectory)
        durable.fsyncDirectory(self.messageDirectory)
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
                target = os.path.join(self.corruptDirectory, f"{name}.{durable.temporaryName()}{suffix}")
            try:
                durable.moveFile(source, target)
            except OSError as e:
                _log.warn("Cannot move {source} to {target}: {problem!r}",
                          source=source, target=target, problem=e)
        durable.fsyncDirectory(self.corruptDirectory)

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

    def due(self, now: float, limit: int, candidates: Sequence[str] = (), exclude: Collection[str] = (),
            keep: int = 0, scan: bool = True) -> DueMessages:
        """
        Up to C{limit} messages due at C{now} (a recipient pending whose
        next attempt has come, or none pending: a message to settle),
        oldest due first, for the relay service to take in; the others
        stay on disk.

        The env file's modification time is the hint (L{markDue}): the
        earliest next attempt of the message, never later.  The
        C{candidates}, IDs an earlier call found due, are loaded first;
        when they run out the directory is scanned (one C{stat} per
        message) for files whose hint has come, and up to C{keep} of those
        left over are returned as the next candidates.  A message whose
        hint had come but that is not due (a state written by an older
        version, or a hint lost in a crash) gets its hint put right; one
        whose state cannot be read is logged and looked at again a day
        later (the recovery of the next start moves it to C{corrupt/}).

        @param exclude: IDs to leave out (the messages the service holds).
        @param scan: whether to scan when the candidates run out.
        @return: what was found, L{DueMessages}.
        """
        found = DueMessages()
        pending = [c for c in candidates if c not in exclude]
        scanned = False
        read: set[str] = set()
        while len(found.messages) < limit:
            if not pending:
                if scanned or not scan:
                    break
                scanned = True
                pending = [c for c in self._scanDue(now, exclude, found) if c not in read]
                continue
            messageId = pending.pop(0)
            if messageId in read:
                continue
            read.add(messageId)
            try:
                message = self.load(messageId)
            except (CorruptMessage, OSError) as e:
                _log.error("{id}: unreadable queue entry, not relayed: {reason}", id=messageId, reason=str(e))
                _setTime(self.envelopePath(messageId), now + UNREADABLE_DELAY)
                continue
            if message is None:
                continue
            dueAt = dueTime(message)
            if dueAt <= now:
                found.messages.append(message)
            else:
                found.nextDue = min(found.nextDue, self._correctHint(messageId))
        found.scanned = scanned
        found.candidates = pending[:keep]
        if len(pending) > keep:
            # Due, but not kept: the next scan finds them again.
            found.nextDue = now
        return found

    def _scanDue(self, now: float, exclude: Collection[str], found: DueMessages) -> list[str]:
        """
        The IDs whose hint has come, oldest first; the earliest hint of
        the others goes into C{found.nextDue}, and the number of messages
        into C{found.count}.
        """
        due = []
        count = 0
        for messageId in self.ids():
            count += 1
            if messageId in exclude:
                continue
            try:
                hint = os.stat(os.path.join(self.envelopeDirectory, messageId)).st_mtime
            except FileNotFoundError:
                continue
            if hint <= now:
                due.append((hint, messageId))
            else:
                found.nextDue = min(found.nextDue, hint)
        found.count = count
        due.sort()
        return [messageId for _, messageId in due]

    def _correctHint(self, messageId: str) -> float:
        """
        Put right the hint of a message found not due, from its state read
        again under the lock (a writer may have replaced it meanwhile).

        @return: when it is due (C{inf} if it is gone).
        """
        with self._locked():
            try:
                message = self.load(messageId)
            except CorruptMessage:
                return math.inf
            if message is None:
                return math.inf
            markDue(self.envelopePath(messageId), message)
            return dueTime(message)

    def statistics(self) -> tuple[int, Optional[float]]:
        """
        How many messages the queue holds, and when the oldest was queued
        (L{None} when it is empty): the message files' modification times
        (L{markCreated}), one C{stat} per message.
        """
        count = 0
        oldest: Optional[float] = None
        for messageId in self.ids():
            try:
                created = os.stat(os.path.join(self.messageDirectory, messageId)).st_mtime
            except FileNotFoundError:
                continue
            count += 1
            oldest = created if oldest is None else min(oldest, created)
        return count, oldest

    # Writing.

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """
        Hold the queue's lock, shared with other processes (C{flock}) and
        other threads (each holder opens the file anew).
        """
        fd = os.open(self._lockPath, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, durable.FILE_MODE)
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
        path = self.envelopePath(message.id)
        durable.writeDurably(path, encodeMessage(message), temporaryDirectory=self.temporaryDirectory, replace=replace)
        markDue(path, message)

    def save(self, message: QueuedMessage) -> bool:
        """
        Replace the stored state of a message with C{message}, atomically:
        after a crash the file holds the old state or the new, whole.

        A message that is no longer in the queue (an operator deleted it)
        is not brought back.

        @return: whether it was saved; C{False} if it is no longer queued.
        """
        return self.commit(saves=[message])[0][0]

    def commit(
        self, saves: Sequence[QueuedMessage] = (), removals: Sequence[str] = ()
    ) -> tuple[list[bool], list[bool]]:
        """
        Several states saved (L{save}) and messages removed (L{remove}) at
        once, at the cost of one fsync of C{env/} and one of C{msg/} for
        them all rather than one or two each: a group commit.  Every change
        is durable when it returns, and each is what L{save} or L{remove}
        alone would have made: a state file replaced whole or not at all,
        an env file gone before its message file.

        The new states are written and fsynced under temporary names
        first; then, holding the lock, each replaces its env file (unless
        the message is no longer queued), the removed env files go, C{env/}
        is fsynced, and the removed messages' files go, C{msg/} fsynced.

        @param saves: states to save, of distinct messages.
        @param removals: IDs of messages to remove, none of them saved here.

        @return: for each save whether it was saved (C{False}: no longer
            queued), and for each removal whether the message was queued.

        @raise ValueError: an ID is not a queue ID; nothing was changed.
        @raise OSError: a change could not be made durable; which of them
            were made is unknown, as after a crash.
        """
        envelopes = [self.envelopePath(message.id) for message in saves]
        removed = [self.envelopePath(messageId) for messageId in removals]
        messageFiles = [self.messagePath(messageId) for messageId in removals]
        temporaries = [self.temporaryPath(durable.temporaryName()) for _ in saves]
        durable.writeNewFiles(zip(temporaries, map(encodeMessage, saves)))
        saved: list[bool] = []
        try:
            with self._locked():
                for temporary, envelope in zip(temporaries, envelopes):
                    queued = os.path.exists(envelope)
                    if queued:
                        durable.moveFile(temporary, envelope)
                        markDue(envelope, saves[len(saved)])
                    saved.append(queued)
                existed = durable.unlinkFiles(removed)
                if any(saved) or any(existed):
                    durable.fsyncDirectory(self.envelopeDirectory)
                durable.removeFiles(messageFiles)
        finally:
            for temporary, moved in itertools.zip_longest(temporaries, saved, fillvalue=False):
                if not moved:
                    durable.removeFile(temporary)
        return saved, existed

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
        durable.writeDurably(msgPath, data, self.temporaryDirectory, replace=False)
        markCreated(msgPath, message.created)
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
        problem = durable.removeFile(path)
        if problem is None:
            try:
                durable.fsyncDirectory(os.path.dirname(path))
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
        return self.commit(removals=[messageId])[1][0]

    # Flush requests from the operator.

    def requestFlush(self) -> None:
        """
        Ask the running server to try every pending recipient now: create
        the C{flush} marker, which it looks for every second or so.
        """
        fd = os.open(self._flushPath, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, durable.FILE_MODE)
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


@dataclass
class DueMessages:
    """
    What L{Queue.due} found.

    @ivar messages: the messages due, loaded.
    @ivar candidates: IDs of more messages found due, not loaded.
    @ivar nextDue: the earliest time another message on disk (not held,
        not a candidate) may be due: C{inf} when none is known.
    @ivar scanned: whether the directory was scanned (else C{nextDue}
        says nothing of the messages not looked at).
    @ivar count: with C{scanned}, how many messages the queue holds.
    """

    messages: list[QueuedMessage] = field(default_factory=list)
    candidates: list[str] = field(default_factory=list)
    nextDue: float = math.inf
    scanned: bool = False
    count: int = 0


def dueTime(message: QueuedMessage) -> float:
    """
    When C{message} is next due: the earliest next attempt of its pending
    recipients; a message with none pending is due at once (it is to be
    settled), from the time it was queued.
    """
    return min((r.nextAttempt for r in message.pending()), default=message.created)


def markDue(path: str, message: QueuedMessage) -> None:
    """
    Give an env file the time C{message} is next due (L{dueTime}) as its
    modification time: the hint L{Queue.due} scans by, as Postfix's
    deferred queue does.  A hint only: it is not fsynced, and one lost in
    a crash leaves the time the file was written, which is never later
    than the state it holds is due.
    """
    at = dueTime(message)
    _setTime(path, at)


def markCreated(path: str, created: float) -> None:
    """
    Give a message file the time the message was queued as its
    modification time, which L{Queue.statistics} reads (a hint, as in
    L{markDue}).
    """
    _setTime(path, created)


def _setTime(path: str, at: float) -> None:
    """
    Set a file's modification time (a hint); a failure leaves the time the
    file was written, which at worst means an early look, so it is only
    logged.
    """
    try:
        os.utime(path, (at, at))
    except OSError as e:
        _log.warn("Cannot set the time of {path}: {problem!r}", path=path, problem=e)
