"""
The streaming engine shared by the Maildir store and the relay queue: a
message's body goes to disk as it arrives, in jobs run one after another
in the thread runner, so that memory per message stays bounded and the
reactor thread never touches the disk.

L{StreamingMessage} is the reactor side: it gathers body bytes into jobs
of about 256 KiB (L{CHUNK_SIZE}), asks the writer to wait while more than
1 MiB (L{BACKLOG_LIMIT}) is pending, and completes the message in one more
job, so that a small message costs a single thread hop.  L{MessageFiles}
is the blocking side, one subclass per store, whose methods are the jobs;
any job that fails has removed every file of the message before it
raises.  The durable steps themselves are L{smtpmx.durable}'s; the
guarantees are described in C{docs/storage.rst}.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from typing import Any, Callable, Optional

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from smtpmx.interfaces import ITwoPhaseMessage

RunBlocking = Callable[..., Deferred]

# Body bytes gathered in memory before a write job is sent to a thread.
CHUNK_SIZE = 256 * 1024
# Bytes gathered or in flight past which write() asks the caller to wait.
BACKLOG_LIMIT = 1024 * 1024


class State(enum.Enum):
    """
    Where a L{StreamingMessage} is in its life.  C{write} is allowed only
    while it is L{OPEN}; L{FINISHING} leads to L{DONE}; the two-phase path
    goes L{PREPARING}, L{PREPARED}, L{COMMITTING}, L{DONE}, or L{FAILED}
    when a step fails; L{ABORTED} and L{ROLLED_BACK} are the ends of a
    message given up.
    """

    OPEN = "open"
    FINISHING = "finishing"
    PREPARING = "preparing"
    PREPARED = "prepared"
    COMMITTING = "committing"
    DONE = "done"
    FAILED = "failed"
    ABORTED = "aborted"
    ROLLED_BACK = "rolledBack"


class MessageFiles(ABC):
    """
    The files of one message, the blocking side of a L{StreamingMessage}.
    Every method runs in the thread runner, strictly one after another.

    A store subclasses it and gives the three steps, L{appendBody},
    L{seal} and L{publish}, and the clean-up, L{discard} (abstract: a
    subclass missing one cannot be made); the jobs
    L{write}, L{prepare}, L{commit} and L{finish} wrap them so that a step
    that fails has removed every file of the message before it raises.
    """

    @abstractmethod
    def appendBody(self, data: bytes) -> None:
        """
        Append body bytes to the message's file, creating it on first use.
        """

    @abstractmethod
    def seal(self) -> None:
        """
        Make every file of the message durable (written and fsynced),
        without making the message visible yet.
        """

    @abstractmethod
    def publish(self) -> None:
        """
        Make the sealed message visible, durably: its files renamed to
        their final names and those directories fsynced.
        """

    @abstractmethod
    def discard(self) -> list[BaseException]:
        """
        Close and remove every file of the message, wherever it is, and
        fsync the directories of files that were visible.  Never raises.

        @return: the errors met on the way.
        """

    def discardAfter(self, error: BaseException) -> None:
        """
        Remove every file after C{error}; anything that could not be
        cleaned up is noted on C{error} rather than hiding it.
        """
        for problem in self.discard():
            error.add_note(f"while cleaning up: {problem!r}")

    def write(self, data: bytes) -> None:
        """
        The job for a chunk of the body: append it.
        """
        try:
            self.appendBody(data)
        except BaseException as e:
            self.discardAfter(e)
            raise

    def prepare(self, data: bytes) -> None:
        """
        The job that completes the first phase: append the last body bytes
        and seal the message.
        """
        try:
            self.appendBody(data)
            self.seal()
        except BaseException as e:
            self.discardAfter(e)
            raise

    def commit(self) -> None:
        """
        The job of the second phase: publish the sealed message.
        """
        try:
            self.publish()
        except BaseException as e:
            self.discardAfter(e)
            raise

    def finish(self, data: bytes) -> None:
        """
        L{prepare} then L{commit}: one job for the whole completion.
        """
        self.prepare(data)
        self.commit()


@implementer(ITwoPhaseMessage)
class StreamingMessage:
    """
    One message on its way to disk; lives on the reactor thread and sends
    every piece of I/O to the thread runner as a job, one job after
    another, the jobs being the methods of its L{MessageFiles}.

    Besides L{finish} it has the two-phase completion of
    L{ITwoPhaseMessage} (L{prepare}, L{commit}, L{rollback}) for a store
    that must file a message in two places, all or nothing.
    """

    _log = Logger()

    def __init__(
        self,
        files: MessageFiles,
        runBlocking: RunBlocking,
        chunkSize: int = CHUNK_SIZE,
        backlogLimit: int = BACKLOG_LIMIT,
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
        self._state: State = State.OPEN

    @property
    def state(self) -> State:
        """
        Where the message is in its life.
        """
        return self._state

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
        if self._state == State.ABORTED:
            return None
        if self._state != State.OPEN:
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
        Make the message durable everywhere it goes, in one job after the
        body (L{MessageFiles.finish}).

        @return: a L{Deferred} that fires with L{None} once every file is
            at its final name and fsynced along with its directory, or
            fails with the first error, nothing being left behind.
        """
        if self._state != State.OPEN:
            raise RuntimeError("finish() called twice or after abort()")
        self._state = State.FINISHING
        self._flush(self._files.finish)
        return self._report(State.DONE)

    def _report(self, doneState: State) -> Deferred[None]:
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
                self._state = doneState if failure is None else State.FAILED
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
        if self._state != State.OPEN:
            raise RuntimeError("prepare() called twice or after finish() or abort()")
        self._state = State.PREPARING
        self._flush(self._files.prepare)
        return self._report(State.PREPARED)

    def commit(self) -> Deferred[None]:
        """
        The second half of a two-phase L{finish}: make the prepared message
        visible, durably.

        @return: a L{Deferred} that fires with L{None} once the message is
            stored, or fails with nothing left behind.
        """
        if self._state != State.PREPARED:
            raise RuntimeError("commit() without a successful prepare()")
        self._state = State.COMMITTING
        self._enqueue(self._files.commit)
        return self._report(State.DONE)

    def rollback(self) -> Deferred[None]:
        """
        Remove every file of the message, whatever its state: unlike
        L{abort}, this also undoes a successful L{finish} or L{commit}, for
        a caller whose larger transaction failed.  Waits for the jobs under
        way.

        @return: a L{Deferred} that fires with L{None} once the files are
            gone; it never fails (what could not be removed is logged).
        """
        if self._state == State.ROLLED_BACK:
            return succeed(None)
        self._state = State.ROLLED_BACK
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
        if self._state == State.PREPARED:
            self.rollback()
            return
        if self._state != State.OPEN:
            return
        self._state = State.ABORTED
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
