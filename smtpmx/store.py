"""
The Maildir message store: makes an accepted message durable for every
local recipient, all or nothing (SPEC sections 4 and 5).

The body is streamed into the first copy's file in C{tmp/} as it arrives,
in jobs of about 256 KiB run one after another in the thread runner, so
memory per message stays bounded and the reactor thread never touches the
disk.  At the end one more job writes the rest, makes the other copies
from the first file's body (in the kernel where possible), fsyncs every
file, renames them into C{new/} and fsyncs each C{new/} once.  A small
message therefore costs a single thread hop.  If any step fails, every
file of the message is removed, including those already renamed into
C{new/}.
"""

from __future__ import annotations

import os
import socket
from typing import Any, Callable, Optional

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from smtpmx.delivery.maildir import (
    createTemporary,
    mailboxPath,
    newPath,
    renameIntoNew,
    temporaryPath,
)
from smtpmx.envelope import Envelope, LocalMailbox
from smtpmx.headers import deliveredTo, returnPath
from smtpmx.interfaces import IIncomingMessage, IMessageStore
from smtpmx.spool import copyRange, fsyncDirectory, removeFile, uniqueName, writeAll

RunBlocking = Callable[..., Deferred]

# Body bytes gathered in memory before a write job is sent to a thread.
CHUNK_SIZE = 256 * 1024
# Bytes gathered or in flight past which write() asks the caller to wait.
BACKLOG_LIMIT = 1024 * 1024


class _Copy:
    """
    One file of a message: the copy for one mailbox and one Delivered-To
    value.  Used only inside the jobs, one at a time.

    @ivar state: C{"none"} before the file exists, C{"tmp"} while it is in
        C{tmp/}, C{"new"} once renamed into C{new/}.
    """

    def __init__(self, mailbox: str, headers: bytes) -> None:
        """
        @param mailbox: the Maildir.
        @param headers: the headers that start this copy.
        """
        self.mailbox = mailbox
        self.headers = headers
        self.name = ""
        self.fd: Optional[int] = None
        self.state = "none"

    def create(self, hostname: str, readable: bool = False) -> int:
        """
        Create this copy's file in C{tmp/} and write its headers.
        """
        self.name = uniqueName(hostname)
        self.fd = createTemporary(self.mailbox, self.name, readable)
        self.state = "tmp"
        writeAll(self.fd, self.headers)
        return self.fd

    def close(self) -> None:
        """
        Close the file if it is open.
        """
        if self.fd is not None:
            fd, self.fd = self.fd, None
            os.close(fd)


class _MessageFiles:
    """
    The files of one message, the blocking side of L{StreamingMessage}.
    Every method runs in the thread runner, strictly one after another,
    and any method that fails has already removed every file.
    """

    def __init__(self, copies: list[_Copy], hostname: str) -> None:
        """
        @param copies: the copies, the first of which receives the body as
            it streams in.
        @param hostname: for the unique file names.
        """
        self._copies = copies
        self._hostname = hostname
        self._bodySize = 0

    def _first(self) -> int:
        """
        The first copy's descriptor, creating the file on first use.
        """
        first = self._copies[0]
        if first.fd is None:
            first.create(self._hostname, readable=True)
        assert first.fd is not None
        return first.fd

    def write(self, data: bytes) -> None:
        """
        Append body bytes to the first copy.
        """
        try:
            writeAll(self._first(), data)
            self._bodySize += len(data)
        except BaseException as e:
            self._discardAfter(e)
            raise

    def finish(self, data: bytes) -> None:
        """
        Append the last body bytes, make every other copy, fsync them all,
        move them into C{new/} and fsync each C{new/} directory.
        """
        self.prepare(data)
        self.commit()

    def prepare(self, data: bytes) -> None:
        """
        The first half of L{finish}: append the last body bytes, make every
        other copy and fsync them all, leaving them in C{tmp/}.
        """
        try:
            source = self._first()
            writeAll(source, data)
            self._bodySize += len(data)
            bodyOffset = len(self._copies[0].headers)
            for copy in self._copies[1:]:
                fd = copy.create(self._hostname)
                copyRange(source, fd, bodyOffset, self._bodySize)
            for copy in self._copies:
                assert copy.fd is not None
                os.fsync(copy.fd)
                copy.close()
        except BaseException as e:
            self._discardAfter(e)
            raise

    def commit(self) -> None:
        """
        The second half of L{finish}: move every prepared copy into
        C{new/} and fsync each C{new/} directory.
        """
        try:
            directories: dict[str, None] = {}
            for copy in self._copies:
                renameIntoNew(copy.mailbox, copy.name)
                copy.state = "new"
                directories[os.path.join(copy.mailbox, "new")] = None
            for directory in directories:
                fsyncDirectory(directory)
        except BaseException as e:
            self._discardAfter(e)
            raise

    def _discardAfter(self, error: BaseException) -> None:
        """
        Remove every file after C{error}; anything that could not be
        cleaned up is noted on C{error} rather than hiding it.
        """
        for problem in self.discard():
            error.add_note(f"while cleaning up: {problem!r}")

    def discard(self) -> list[BaseException]:
        """
        Close and remove every file of the message, wherever it is, and
        fsync the C{new/} directories it was removed from.  Never raises.

        @return: the errors met on the way.
        """
        problems: list[BaseException] = []
        directories: dict[str, None] = {}
        for copy in self._copies:
            try:
                copy.close()
            except OSError as e:
                problems.append(e)
            if copy.state == "tmp":
                problem = removeFile(temporaryPath(copy.mailbox, copy.name))
            elif copy.state == "new":
                problem = removeFile(newPath(copy.mailbox, copy.name))
                directories[os.path.join(copy.mailbox, "new")] = None
            else:
                continue
            if problem is None:
                copy.state = "none"
            else:
                problems.append(problem)
        for directory in directories:
            try:
                fsyncDirectory(directory)
            except OSError as e:
                problems.append(e)
        return problems


@implementer(IIncomingMessage)
class StreamingMessage:
    """
    One message on its way to disk; lives on the reactor thread and sends
    every piece of I/O to the thread runner as a job, one job after
    another.

    The blocking side is a I{files} object, whose methods are the jobs:
    C{write(data)}, C{finish(data)}, C{discard() -> list[BaseException]}
    and, for the two-phase completion (L{prepare}, L{commit}),
    C{prepare(data)} and C{commit()}.  Every method but C{discard} has
    removed every file before it raises.  The Maildir store and the relay
    queue (L{smtpmx.relay.queue}) both use it.
    """

    _log = Logger()

    def __init__(
        self,
        files: _MessageFiles,
        runBlocking: RunBlocking,
        chunkSize: int,
        backlogLimit: int,
    ) -> None:
        """
        @param files: the blocking side, whose methods are the jobs.
        @param runBlocking: the thread runner.
        @param chunkSize: body bytes gathered before a job is sent.
        @param backlogLimit: pending bytes past which C{write} asks to wait.
        """
        self._files = files
        self._runBlocking = runBlocking
        self._chunkSize = chunkSize
        self._backlogLimit = backlogLimit
        self._buffer: list[bytes] = []
        self._buffered = 0
        # Bytes buffered or in jobs not yet done.
        self._pending = 0
        self._waiting: list[Deferred[None]] = []
        # Jobs are chained on this Deferred: each starts when the last ends.
        self._tail: Deferred[None] = succeed(None)
        self._started = False
        self._failure: Optional[Failure] = None
        self._state = "open"

    def _enqueue(self, job: Callable[..., Any], *args: Any, size: int = 0) -> None:
        """
        Run C{job(*args)} in the thread runner after every job before it;
        skipped if one of them failed.

        @param size: the body bytes the job carries, counted as pending
            until it is done.
        """
        self._started = True

        def run(ignored: object) -> object:
            """
            Start the job, unless an earlier one failed.
            """
            if self._failure is not None:
                return None
            return self._runBlocking(job, *args)

        def settle(result: object) -> None:
            """
            Count the job done and remember its failure, if any.
            """
            self._pending -= size
            if isinstance(result, Failure) and self._failure is None:
                self._failure = result
            self._checkBacklog()

        self._tail.addCallback(run).addBoth(settle)

    def _checkBacklog(self) -> None:
        """
        Let a paused writer go on once the backlog is under the limit, or
        once the message has failed (the error comes from L{finish}).
        """
        if self._waiting and (self._pending <= self._backlogLimit or self._failure is not None):
            waiting, self._waiting = self._waiting, []
            for d in waiting:
                d.callback(None)

    def _flush(self, job: Callable[[bytes], None]) -> None:
        """
        Send what is buffered to the thread runner as C{job(data)}.
        """
        data = b"".join(self._buffer)
        self._buffer = []
        self._buffered = 0
        self._enqueue(job, data, size=len(data))

    def write(self, data: bytes) -> Optional[Deferred[None]]:
        """
        Add body bytes; they go to disk about 256 KiB at a time.

        @return: L{None}, or a L{Deferred} that fires once the backlog is
            back under the limit when more than that is pending.

        @raise RuntimeError: the message is already finished.
        """
        if self._state == "aborted":
            return None
        if self._state != "open":
            raise RuntimeError("write() after finish()")
        if self._failure is not None or not data:
            return None
        self._buffer.append(data)
        self._buffered += len(data)
        self._pending += len(data)
        if self._buffered >= self._chunkSize:
            self._flush(self._files.write)
        if self._pending > self._backlogLimit and self._failure is None:
            d: Deferred[None] = Deferred()
            self._waiting.append(d)
            return d
        return None

    def finish(self) -> Deferred[None]:
        """
        Make the message durable in every mailbox.

        @return: a L{Deferred} that fires with L{None} once every copy is
            in C{new/} and fsynced, or fails with the first error, nothing
            being left behind.
        """
        if self._state != "open":
            raise RuntimeError("finish() called twice or after abort()")
        self._state = "finishing"
        self._flush(self._files.finish)
        result: Deferred[None] = Deferred()

        def report(ignored: object) -> None:
            """
            Fire the result of L{finish} once every job is done.
            """
            self._state = "done"
            if self._failure is None:
                result.callback(None)
            else:
                result.errback(self._failure)

        self._tail.addCallback(report)
        return result

    def _report(self, doneState: str) -> Deferred[None]:
        """
        Report on the completion step just queued, once every job is done,
        and move to C{doneState} if it succeeded.

        @return: a L{Deferred} that fires with L{None}, or fails with the
            first error met by any job.
        """
        result: Deferred[None] = Deferred()
        before = self._state

        def report(ignored: object) -> None:
            """
            Fire the result once the step is done.
            """
            failure = self._failure
            if self._state == before:
                self._state = doneState if failure is None else "failed"
            if failure is None:
                result.callback(None)
            else:
                result.errback(failure)

        self._tail.addCallback(report)
        return result

    def prepare(self) -> Deferred[None]:
        """
        The first half of a two-phase L{finish}: write everything and fsync
        it, without making the message visible yet.

        @return: a L{Deferred} that fires with L{None} once the message can
            be committed, or fails with nothing left behind.
        """
        if self._state != "open":
            raise RuntimeError("prepare() called twice or after finish() or abort()")
        self._state = "preparing"
        self._flush(self._files.prepare)
        return self._report("prepared")

    def commit(self) -> Deferred[None]:
        """
        The second half of a two-phase L{finish}: make the prepared message
        visible, durably.

        @return: a L{Deferred} that fires with L{None} once the message is
            stored, or fails with nothing left behind.
        """
        if self._state != "prepared":
            raise RuntimeError("commit() without a successful prepare()")
        self._state = "committing"
        self._enqueue(self._files.commit)
        return self._report("done")

    def rollback(self) -> Deferred[None]:
        """
        Remove every file of the message, whatever its state: unlike
        L{abort}, this also undoes a successful L{finish} or L{commit}, for
        a caller whose larger transaction failed.  Waits for the jobs under
        way.

        @return: a L{Deferred} that fires with L{None} once the files are
            gone; it never fails (what could not be removed is logged).
        """
        if self._state == "rolledBack":
            return succeed(None)
        self._state = "rolledBack"
        self._buffer = []
        self._pending -= self._buffered
        self._buffered = 0
        if self._failure is None:
            self._failure = Failure(RuntimeError("message rolled back"))
        self._checkBacklog()
        if not self._started:
            return succeed(None)
        done: Deferred[None] = Deferred()
        self._tail.addCallback(self._discardFiles).addBoth(lambda ignored: done.callback(None))
        return done

    def _discardFiles(self, ignored: object) -> Deferred[None]:
        """
        Remove every file in the thread runner and log what could not be.
        """

        def discarded(problems: list[BaseException]) -> None:
            """
            Log what the clean-up could not remove.
            """
            for problem in problems:
                self._log.warn(
                    "Could not remove a file of an abandoned message: {problem!r}",
                    problem=problem,
                )

        def failed(failure: Failure) -> None:
            """
            Log a clean-up that could not run at all.
            """
            self._log.failure("Could not clean up an abandoned message", failure)

        return self._runBlocking(self._files.discard).addCallbacks(discarded, failed)

    def abort(self) -> None:
        """
        Give up: once the jobs under way are done, remove every file of the
        message.  Never raises.  After L{finish} it does nothing, as the
        message may already be delivered; after a successful L{prepare} it
        is L{rollback}.
        """
        if self._state == "prepared":
            self.rollback()
            return
        if self._state != "open":
            return
        self._state = "aborted"
        self._buffer = []
        self._pending -= self._buffered
        self._buffered = 0
        if self._failure is None:
            # Free the writer, if it waits: nothing more will be written.
            self._failure = Failure(RuntimeError("message aborted"))
        self._checkBacklog()
        if not self._started:
            return
        self._tail.addCallback(self._discardFiles)


@implementer(IMessageStore)
class MaildirStore:
    """
    Files messages for local recipients into Maildirs under a root,
    C{<root>/<domain>/<name>/}, creating a Maildir on its first delivery.

    Each copy starts with C{Return-Path}, C{Delivered-To} (the recipient as
    the client gave it) and the envelope's C{Received} header.  Recipients
    that share a mailbox and a C{Delivered-To} value (compared without
    regard to case) get one copy.
    """

    def __init__(
        self,
        root: str,
        runBlocking: RunBlocking,
        hostname: Optional[str] = None,
        chunkSize: int = CHUNK_SIZE,
        backlogLimit: int = BACKLOG_LIMIT,
    ) -> None:
        """
        @param root: the Maildir root; made absolute now, so that a later
            change of the working directory does not move it.
        @param runBlocking: C{runBlocking(f, *args, **kwargs)} runs C{f} in
            a thread pool and returns a L{Deferred} of its result.
        @param hostname: the host name in the unique file names; L{None}
            for this host's own, as the Maildir specification asks.
        @param chunkSize: body bytes gathered before a write job is sent.
        @param backlogLimit: pending body bytes past which C{write} asks
            the caller to wait.
        """
        self._root = os.path.abspath(root)
        self._runBlocking = runBlocking
        self._hostname = socket.gethostname() if hostname is None else hostname
        self._chunkSize = chunkSize
        self._backlogLimit = backlogLimit

    def receive(self, envelope: Envelope) -> StreamingMessage:
        """
        Begin storing a message for every recipient of C{envelope}.

        @raise ValueError: a recipient is not a local mailbox (relaying is
            not this store's job), a mailbox is not a safe name under the
            root, or there is no recipient.
        """
        top = returnPath(envelope.reversePath)
        copies: list[_Copy] = []
        seen: set[tuple[LocalMailbox, str]] = set()
        for recipient in envelope.recipients:
            destination = recipient.destination
            if not isinstance(destination, LocalMailbox):
                raise ValueError(f"MaildirStore cannot deliver to {destination!r}")
            key = (destination, str(recipient.address).lower())
            if key in seen:
                continue
            seen.add(key)
            copies.append(
                _Copy(
                    mailboxPath(self._root, destination),
                    top + deliveredTo(recipient.address) + envelope.received,
                )
            )
        if not copies:
            raise ValueError("a message needs at least one recipient")
        return StreamingMessage(
            _MessageFiles(copies, self._hostname),
            self._runBlocking,
            self._chunkSize,
            self._backlogLimit,
        )


# The name this class had before the relay queue shared it.
_MaildirMessage = StreamingMessage
