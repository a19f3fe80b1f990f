"""
The store that runs sender authentication (C{docs/authentication.rst})
and the message filters (C{docs/plugins.rst}): an L{IMessageStore} around
the real one (the routing store).

For a client outside C{--relay-network}, the message is spooled to a
temporary file as it arrives (not in a Maildir or the queue; it needs no
fsync since nothing is acknowledged yet); a small one (up to L{CHUNK}
bytes) is kept in memory as it arrives and spooled in one write at its
end, for the checks and filters to read, then copied to the store from
memory.  At the end of the data, sender authentication comes first: a
DMARC failure whose domain asks for C{p=reject} (under C{--dmarc-policy
enforce}) is refused and no filter is asked.  Then the filters judge it,
reading the spool through C{open()}; on a refusal C{finish()} fails with
L{smtpmx.reply.Refused} and nothing is stored, otherwise the spool is
streamed into the inner store's message with our
C{Authentication-Results:} field and the filters' header fields in
C{Envelope.extraHeaders} and, when DMARC asks for quarantine or a filter
said C{Junk}, the local copies filed in the Junk folder.  Trusted clients
go straight to the inner store, as does everyone when there is neither
authentication nor a filter (the tap then does not even build this store).
"""

from __future__ import annotations

import os
import tempfile
import threading
from dataclasses import replace
from typing import IO, Callable, Optional

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from smtpmx.access import Access
from smtpmx.auth.checker import SenderAuthentication
from smtpmx.auth.results import (
    AuthResults,
    Disposition,
    DmarcPolicy,
    authenticationResults,
    decide,
)
from smtpmx.config import Config
from smtpmx.envelope import Envelope, LocalMailbox
from smtpmx.filterchain import ChainResult, FilterChain
from smtpmx.filtering import formatHeaders
from smtpmx.interfaces import (
    IFilterableMessage,
    IFilteredMessage,
    IIncomingMessage,
    IMessageStore,
)
from smtpmx import reply
from smtpmx.reply import Refused, Reply
from smtpmx.validation import ValidationContext

# Bytes waiting for the spool before the sender is asked to pause.
HIGH_WATER = 1 << 20
# Bytes read from the spool at a time, when copying it to the store.  A
# message no bigger is kept in memory as it arrives: it is spooled in one
# write at its end, and copied to the store from memory, not read back.
CHUNK = 1 << 16
# The folder of a junked local copy: Maildir++ ".Junk".
JUNK_FOLDER = "Junk"


class Spool:
    """
    The temporary file one message is spooled to, written then read back
    through one file object.  Its methods block: they are called through
    C{runBlocking}, and take turns (a lock), since a cancelled transaction
    removes the spool while a write it no longer waits for may still run;
    once removed, the spool is never made again.

    @ivar path: the file's path, once it exists.
    """

    def __init__(self, directory: Optional[str]) -> None:
        self.directory = directory
        self.path: Optional[str] = None
        self._file: Optional[IO[bytes]] = None
        self._lock = threading.Lock()
        self._removed = False

    def _create(self) -> None:
        """
        Make the file, readable by us alone.

        @raise OSError: the spool was removed already.
        """
        if self._removed:
            raise OSError("the spool was removed")
        fd, self.path = tempfile.mkstemp(prefix="smtpmx-filter-", dir=self.directory)
        self._file = os.fdopen(fd, "w+b")

    def write(self, chunks: list[bytes]) -> None:
        """
        Append C{chunks}, making the file on first use.
        """
        with self._lock:
            self._write(chunks)

    def _write(self, chunks: list[bytes]) -> None:
        """
        L{write}, the lock held.
        """
        if self._file is None:
            self._create()
        assert self._file is not None
        self._file.writelines(chunks)

    def completeWith(self, data: bytes) -> None:
        """
        Write the whole of a small message and flush it where C{open()}
        sees it, in one call.
        """
        with self._lock:
            self._write([data])
            assert self._file is not None
            self._file.flush()

    def complete(self, size: int) -> bytes:
        """
        Everything is written: flush it where C{open()} sees it (making an
        empty file for an empty message), and read back its first C{size}
        bytes (fewer at the end), the rest being read with L{read}.
        """
        with self._lock:
            if self._file is None:
                self._create()
            assert self._file is not None
            self._file.flush()
            self._file.seek(0)
            return self._file.read(size)

    def read(self, size: int) -> bytes:
        """
        The next C{size} bytes (fewer at the end).
        """
        with self._lock:
            assert self._file is not None
            return self._file.read(size)

    def remove(self) -> None:
        """
        Close and remove the file, if there is one; never fails.
        """
        with self._lock:
            self._removed = True
            self._remove()

    def _remove(self) -> None:
        """
        L{remove}, the lock held.
        """
        try:
            if self._file is not None:
                self._file.close()
                self._file = None
            if self.path is not None:
                os.unlink(self.path)
                self.path = None
        except OSError:
            pass


@implementer(IFilterableMessage)
class SpooledMessage:
    """
    A spooled message as the filters see it.
    """

    def __init__(self, envelope: Envelope, size: int, path: str) -> None:
        self.envelope = envelope
        self.size = size
        self._path = path

    def open(self) -> IO[bytes]:
        """
        The spool file, opened for reading.
        """
        return open(self._path, "rb")


def filedEnvelope(
    envelope: Envelope, result: ChainResult, authentication: Optional[str] = None, junk: bool = False
) -> Envelope:
    """
    The envelope the inner store gets once the checks and filters have
    spoken: our C{Authentication-Results:} field right below C{received}
    (RFC 8601 section 5: with the trace fields), the filters' header
    fields below whatever C{extraHeaders} held, and the local copies in the
    Junk folder when one of them said C{Junk}, or C{junk}.

    @param authentication: the value of our C{Authentication-Results:}
        field, if the message was checked.
    @param junk: whether sender authentication sends it to the Junk
        folder (DMARC's C{p=quarantine}).
    """
    recipients = envelope.recipients
    fields = formatHeaders([("Authentication-Results", authentication)]) if authentication else b""
    if result.junk or junk:
        recipients = [
            replace(r, destination=replace(r.destination, folder=JUNK_FOLDER))
            if isinstance(r.destination, LocalMailbox)
            else r
            for r in recipients
        ]
    return replace(
        envelope,
        recipients=list(recipients),
        extraHeaders=fields + envelope.extraHeaders + formatHeaders(result.headers),
    )


@implementer(IMessageStore)
class FilteringStore:
    """
    Runs sender authentication and the filter chain on messages from
    untrusted clients before they reach the inner store.

    @ivar inner: the store messages go to once accepted.
    @ivar chain: the L{FilterChain}, perhaps without any filter.
    @ivar authentication: the L{SenderAuthentication}, or L{None} when no
        method is on.
    """

    def __init__(
        self,
        inner: IMessageStore,
        chain: FilterChain,
        access: Access,
        config: Config,
        runBlocking: Callable[..., Deferred],
        spoolDirectory: Optional[str] = None,
        *,
        reactor,
        authentication: Optional[SenderAuthentication] = None,
    ) -> None:
        """
        @param access: tells who is trusted (C{--relay-network}).
        @param runBlocking: runs the spool's file work off the reactor.
        @param spoolDirectory: where spool files go; the system's temporary
            directory by default.
        @param reactor: the server's reactor, given to the filters in their
            context (they connect and time out with it).
        @param authentication: see L{authentication}.
        """
        self.inner = inner
        self.chain = chain
        self.access = access
        self.config = config
        self.runBlocking = runBlocking
        self.spoolDirectory = spoolDirectory
        self.reactor = reactor
        self.authentication = authentication

    def receive(self, envelope: Envelope) -> IIncomingMessage:
        """
        A message spooled for the checks and filters, or for a trusted
        client (or when there is nothing to run) the inner store's message
        itself.
        """
        if not (self.chain or self.authentication) or self.access.clientMayRelay(envelope.clientHost):
            return self.inner.receive(envelope)
        return FilteredMessage(self, envelope)

    def context(self, envelope: Envelope) -> ValidationContext:
        """
        What the filters are given as C{session}: the same frozen context
        validators get.
        """
        return ValidationContext(
            envelope.clientHost,
            envelope.heloName,
            envelope.reversePath,
            self.config,
            self.runBlocking,
            reactor=self.reactor,
        )


@implementer(IFilteredMessage)
class FilteredMessage:
    """
    One message from an untrusted client: spooled while it arrives,
    judged by the filters at C{finish()}, then stored or refused.

    @ivar size: bytes written so far.
    @ivar filterVerdicts: what each filter said, for the log line.
    @ivar authResults: what sender authentication found, for the log
        line; L{None} until then, or when it is off.
    """

    log = Logger()

    def __init__(self, store: FilteringStore, envelope: Envelope) -> None:
        self._store = store
        self._runBlocking = store.runBlocking
        self.envelope = envelope
        self.size = 0
        self.filterVerdicts: list[str] = []
        self.authResults: Optional[AuthResults] = None
        self._spool = Spool(store.spoolDirectory)
        self._buffer: list[bytes] = []
        self._buffered = 0
        self._busy = False
        self._failure: Optional[Failure] = None
        self._aborted = False
        self._paused: list[Deferred] = []
        self._drained: list[Deferred] = []
        self._pending: Optional[Deferred] = None
        self._inner: Optional[IIncomingMessage] = None

    def write(self, data: bytes) -> Optional[Deferred]:
        """
        Spool C{data}; when too much is waiting for the disk, return a
        L{Deferred} that fires once the spool has caught up.
        """
        if self._aborted or self._failure is not None:
            return None
        self.size += len(data)
        self._buffer.append(data)
        self._buffered += len(data)
        if self.size > CHUNK:
            self._flush()
        if self._buffered >= HIGH_WATER:
            d: Deferred = Deferred()
            self._paused.append(d)
            return d
        return None

    def _flush(self) -> None:
        """
        Hand what is buffered to the spool, one batch at a time.
        """
        if self._busy or not self._buffer or self._failure is not None:
            return
        chunks, self._buffer = self._buffer, []
        size = sum(len(c) for c in chunks)
        self._busy = True

        def written(_):
            self._busy = False
            self._buffered -= size
            self._flush()
            self._wake()

        def failed(failure):
            self._busy = False
            self._failure = failure
            self._buffer, self._buffered = [], 0
            self._wake()

        self._runBlocking(self._spool.write, chunks).addCallbacks(written, failed)

    def _wake(self) -> None:
        """
        Let the sender go on when the spool has caught up, and whoever
        waits for it to be drained.
        """
        if self._buffered < HIGH_WATER:
            paused, self._paused = self._paused, []
            for d in paused:
                d.callback(None)
        if not self._busy and not self._buffer:
            drained, self._drained = self._drained, []
            for d in drained:
                d.callback(None)

    def _whenDrained(self) -> Deferred:
        """
        A L{Deferred} that fires once everything written is in the spool
        (or its writing failed).
        """
        if not self._busy and not self._buffer:
            return succeed(None)
        d: Deferred = Deferred()
        self._drained.append(d)
        return d

    def finish(self) -> Deferred:
        """
        Check the sender and run the filters, then store the message or
        refuse it.

        @return: a L{Deferred} that fires with L{None} once the message is
            stored, fails with L{Refused} when DMARC or a filter refused it
            (nothing stored), or with the inner store's failure.
        """
        self._pending = Deferred.fromCoroutine(self._finish())
        return self._pending

    async def _finish(self) -> None:
        """
        The spool complete, the checks' and the filters' verdicts, the copy
        to the store.
        """
        removed: Optional[Deferred] = None
        try:
            if self.size <= CHUNK:
                # All of it is still in memory, nothing was written: it is
                # spooled in one go, and never read back.
                head, self._buffer, self._buffered = b"".join(self._buffer), [], 0
                await self._runBlocking(self._spool.completeWith, head)
            else:
                await self._whenDrained()
                if self._failure is not None:
                    self._failure.raiseException()
                head = await self._runBlocking(self._spool.complete, CHUNK)
            assert self._spool.path is not None
            message = SpooledMessage(self.envelope, self.size, self._spool.path)
            field, junk = await self._authenticate(message)
            result = ChainResult()
            if self._store.chain:
                context = self._store.context(self.envelope)
                result = await self._store.chain.run(context, message)
            self.filterVerdicts = list(result.verdicts)
            if result.reject is not None:
                reject = result.reject
                raise Refused(Reply(reject.code, reject.enhanced, reject.text))
            inner = self._store.inner.receive(filedEnvelope(self.envelope, result, field, junk))
            self._inner = inner
            try:
                await self._copy(inner, head, whole=self.size <= CHUNK)
            except BaseException:
                inner.abort()
                raise
            # The spool is no longer needed while the store makes the copy
            # durable.
            removed = self._runBlocking(self._spool.remove)
            await inner.finish()
        finally:
            if removed is None:
                removed = self._runBlocking(self._spool.remove)
            await removed

    async def _authenticate(self, message: SpooledMessage) -> tuple[Optional[str], bool]:
        """
        Sender authentication, before any filter: a message that DMARC
        says to reject (RFC 7489 section 6.6.3, under C{--dmarc-policy
        enforce}) is refused with C{550 5.7.1}.

        @return: the value of our C{Authentication-Results:} field (L{None}
            when the checks are off) and whether DMARC sends the message to
            the Junk folder.

        @raise Refused: DMARC rejects it.
        """
        authentication = self._store.authentication
        if authentication is None:
            return None, False
        results = await authentication.checkMessage(self.envelope, message)
        self.authResults = results
        config = self._store.config
        disposition = decide(results, DmarcPolicy(config.dmarcPolicy))
        if disposition is Disposition.REJECT:
            assert results.dmarc is not None
            raise Refused(reply.dmarcRejected(results.dmarc.fromDomain or "the sender's domain"))
        return authenticationResults(results, config.hostname), disposition is Disposition.JUNK

    async def _copy(self, inner: IIncomingMessage, chunk: bytes, whole: bool) -> None:
        """
        Stream the spool into the inner store's message, from its first
        C{chunk} on, in chunks read off the reactor thread, following the
        store's backpressure.

        @param whole: C{chunk} is the whole message.
        """
        while chunk:
            pending = inner.write(chunk)
            if pending is not None:
                await pending
            if whole or len(chunk) < CHUNK:
                # A short read of a regular file is its end.
                break
            chunk = await self._runBlocking(self._spool.read, CHUNK)

    def abort(self) -> None:
        """
        Give up: the spool is removed once its writing is done, and the
        filters or the inner store's message are abandoned.
        """
        if self._aborted:
            return
        self._aborted = True
        self._buffer, self._buffered = [], 0
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.cancel()
            return
        paused, self._paused = self._paused, []
        for d in paused:
            d.callback(None)

        def remove(_):
            return self._runBlocking(self._spool.remove)

        self._whenDrained().addCallback(remove).addErrback(
            lambda f: self.log.failure("cannot remove spool", f)
        )
