"""
Public fakes for tests of smtpmx and of validator and filter plugins.

L{MemoryStore} keeps messages in memory and can be told to fail or to hold
its answer; L{validationContext} builds the
L{smtpmx.validation.ValidationContext} a validator or a filter is given (its
C{session} argument), with a C{runBlocking} that runs the function at once;
L{filterableMessage} builds the message a filter is given, from bytes, and
L{runFilter} asks a filter about it and checks that the answer is a
verdict; L{deliverWithBackend} hands a message, from bytes, to a delivery
backend and checks that it answers with a result for each recipient, and
L{RecordingBackend} is a courier that keeps what it is handed.  How to
test a plugin with them is in C{docs/plugins.rst}.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional

from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from zope.interface import implementer

from smtpmx.address import Address, parseAddress
from smtpmx.config import Config
from smtpmx.envelope import Envelope, LocalMailbox, Recipient, RemoteAddress
from smtpmx.filtering import Accept, Junk, Reject
from smtpmx.interfaces import IDeliveryBackend, IFilterableMessage, IIncomingMessage, IMessageStore
from smtpmx.validation import ValidationContext


@implementer(IIncomingMessage)
class MemoryMessage:
    """
    A message kept in memory by a L{MemoryStore}.
    """

    def __init__(self, store: "MemoryStore", envelope: Envelope) -> None:
        self.store = store
        self.envelope = envelope
        self.chunks: list[bytes] = []
        self.aborted = False
        self.finished = False

    @property
    def body(self) -> bytes:
        """
        Everything written so far.
        """
        return b"".join(self.chunks)

    def write(self, data: bytes) -> Optional[Deferred]:
        """
        Keep the bytes.
        """
        self.chunks.append(data)
        return None

    def finish(self) -> Deferred:
        """
        Succeed, fail with L{MemoryStore.failWith}, or wait if L{MemoryStore.hold}.
        """
        if self.store.failWith is not None:
            self.aborted = True
            return fail(self.store.failWith)
        self.finished = True
        if self.store.hold:
            d: Deferred = Deferred()
            self.store.held.append((d, self))
            return d
        self.store.messages.append(self)
        return succeed(None)

    def abort(self) -> None:
        """
        Note the abort.
        """
        self.aborted = True


@implementer(IMessageStore)
class MemoryStore:
    """
    A store that keeps finished messages in L{messages}.

    @ivar failWith: an exception that every finish fails with, or L{None}.
    @ivar hold: whether finish waits until the test fires it from L{held}.
    """

    def __init__(self) -> None:
        self.messages: list[MemoryMessage] = []
        self.started: list[MemoryMessage] = []
        self.failWith: Optional[BaseException] = None
        self.hold = False
        self.held: list[tuple[Deferred, MemoryMessage]] = []

    def receive(self, envelope: Envelope) -> MemoryMessage:
        """
        A new L{MemoryMessage}.
        """
        message = MemoryMessage(self, envelope)
        self.started.append(message)
        return message

    def release(self) -> None:
        """
        Let every held message finish.
        """
        held, self.held = self.held, []
        for d, message in held:
            self.messages.append(message)
            d.callback(None)


def runAtOnce(f: Callable, *args, **kwargs) -> Deferred:
    """
    A C{runBlocking} for tests: run C{f} at once, in this thread, and
    return a L{Deferred} that has its result (or its exception).
    """
    return maybeDeferred(f, *args, **kwargs)


def validationContext(
    config: Optional[Config] = None,
    clientHost: str = "127.0.0.1",
    heloName: Optional[str] = "client.example",
    reversePath: Optional[Address] = None,
    runBlocking: Callable[..., Deferred] = runAtOnce,
    reactor=None,
) -> ValidationContext:
    """
    The context a validator is given as C{session}, for a plugin's tests:
    the same frozen value the server passes.

    @param config: the server's configuration; a default L{Config} if
        L{None}.
    @param runBlocking: runs blocking work; by default at once, in the
        test's thread (L{runAtOnce}).
    @param reactor: the reactor a filter or validator connects with (a
        L{twisted.internet.testing.MemoryReactor}, or the real one for a
        test over sockets); L{None} by default.
    """
    return ValidationContext(
        clientHost=clientHost,
        heloName=heloName,
        reversePath=reversePath,
        config=config if config is not None else Config(),
        runBlocking=runBlocking,
        reactor=reactor,
    )


@dataclass
class FakeSession:
    """
    A mutable stand-in for the C{session} a validator sees, kept for
    plugin tests written before L{validationContext}, which builds the
    frozen value the server really passes.
    """

    config: Config = field(default_factory=Config)
    clientHost: str = "127.0.0.1"
    heloName: str = "client.example"
    reversePath: Optional[Address] = None

    def runBlocking(self, f, *args, **kwargs) -> Deferred:
        """
        Run C{f} at once, in this thread.
        """
        return runAtOnce(f, *args, **kwargs)


@implementer(IFilterableMessage)
class BytesMessage:
    """
    A message for a filter's tests, kept in memory: what
    L{filterableMessage} builds.  The server gives filters a spooled file
    instead; both are read the same way, through C{open()}.

    @ivar data: the message as received (LF line endings).
    """

    def __init__(self, envelope: Envelope, data: bytes) -> None:
        self.envelope = envelope
        self.data = data
        self.size = len(data)

    def open(self) -> io.BytesIO:
        """
        The message, as a binary file.
        """
        return io.BytesIO(self.data)


def filterableMessage(
    data: bytes,
    sender: Optional[str] = "sender@remote.example",
    recipients: Iterable[str] = ("alice@example.org",),
    clientHost: str = "192.0.2.1",
    heloName: str = "client.example",
    queueId: str = "TESTID",
    localDomains: Iterable[str] = ("example.org",),
) -> BytesMessage:
    """
    The message a filter is given (an L{IFilterableMessage}), built from
    bytes, for a plugin's tests.

    @param data: the message as received; CRLF line endings are turned to
        LF, as the server stores them.
    @param sender: the reverse-path, L{None} for C{<>}.
    @param recipients: the forward-paths; those in C{localDomains} go to a
        local mailbox, the others are relayed.
    """
    domains = {d.lower() for d in localDomains}
    accepted = []
    for text in recipients:
        address = parseAddress(text)
        if address.domain and address.domain.lower() in domains:
            destination = LocalMailbox(address.domain.lower(), address.localpart.lower())
        else:
            destination = RemoteAddress(address)
        accepted.append(Recipient(address, destination))
    envelope = Envelope(
        queueId=queueId,
        clientHost=clientHost,
        heloName=heloName,
        reversePath=parseAddress(sender) if sender is not None else None,
        recipients=accepted,
    )
    return BytesMessage(envelope, data.replace(b"\r\n", b"\n"))


def runFilter(messageFilter, message, session=None) -> Deferred:
    """
    Ask C{messageFilter} about C{message}, as the server does.

    @param message: an L{IFilterableMessage}, or bytes made into one by
        L{filterableMessage}.
    @param session: the context; by default L{validationContext} for the
        message's client, HELO name and sender.

    @return: a L{Deferred} firing with the verdict (C{successResultOf} it
        in a synchronous test); it fails with L{TypeError} when the filter
        returned something that is not a verdict, as the server would count
        it as a failed filter.
    """
    if isinstance(message, bytes):
        message = filterableMessage(message)
    if session is None:
        envelope = message.envelope
        session = validationContext(
            clientHost=envelope.clientHost,
            heloName=envelope.heloName,
            reversePath=envelope.reversePath,
        )

    def checked(verdict):
        if verdict is not None and not isinstance(verdict, (Accept, Junk, Reject)):
            raise TypeError(f"{verdict!r} is not a verdict")
        return verdict

    return maybeDeferred(messageFilter.filterMessage, session, message).addCallback(checked)


def deliverWithBackend(
    backend,
    data: bytes,
    recipients: Iterable[str],
    sender: str = "sender@example.com",
    specification: str = "test",
    reactor=None,
    runBlocking: Callable[..., Deferred] = runAtOnce,
    transact: Optional[Callable[..., Deferred]] = None,
) -> Deferred:
    """
    Hand a message to a delivery backend as the relay service does
    (docs/plugins.rst): C{data} is written to a temporary file as the
    queue holds it, and the backend's C{deliver} is given a
    L{smtpmx.backendlookup.CourierRequest} for it.

    @param backend: a provider of L{smtpmx.interfaces.IDeliveryBackend}.
    @param data: the message, headers and body, LF line endings.
    @param recipients: the addresses, without brackets.
    @param sender: the reverse-path, C{""} for C{<>}.
    @param specification: the backend's C{NAME:ARG}, as its recipients'
        C{via} holds it.
    @param reactor: the request's reactor; a L{Clock} by default.
    @param runBlocking: the request's thread runner; by default it runs
        the function at once.
    @param transact: the request's C{transact}, for a backend that speaks
        SMTP or LMTP through the relay's client: by default
        L{smtpmx.relay.transaction.deliver} with C{reactor} and
        C{runBlocking}, on a connection of its own.

    @return: a L{Deferred} of a C{dict} of each recipient to its
        L{smtpmx.relay.request.RecipientResult}; it fails with
        L{TypeError} if the backend answers otherwise or leaves a
        recipient out.  The temporary file is gone when it fires.
    """
    import os
    import tempfile

    from twisted.internet.task import Clock

    from smtpmx.backendlookup import CourierRequest
    from smtpmx.relay.request import DeliveryResult, RecipientResult

    recipients = tuple(recipients)
    if reactor is None:
        reactor = Clock()
    if transact is None:
        from smtpmx.relay.transaction import deliver

        def transact(request):
            """
            One transaction with the relay's client, on its own connection.
            """
            return deliver(request, reactor=reactor, runBlocking=runBlocking)

    descriptor, path = tempfile.mkstemp(prefix="smtpmx-backend-")
    with os.fdopen(descriptor, "wb") as f:
        f.write(data)
    request = CourierRequest(
        backend=specification, messageFile=path, size=len(data), sender=sender,
        recipients=recipients, heloName="mx.example.com",
        reactor=reactor, runBlocking=runBlocking, transact=transact,
    )

    def check(found) -> dict:
        """
        The results, each checked to be a L{RecipientResult}.
        """
        if isinstance(found, DeliveryResult):
            found = found.recipients
        results = dict(found)
        for address in recipients:
            if not isinstance(results.get(address), RecipientResult):
                raise TypeError(f"no RecipientResult for {address!r}: {results.get(address)!r}")
        return results

    def cleanUp(passed):
        """
        Remove the temporary message file.
        """
        os.remove(path)
        return passed

    return maybeDeferred(backend.deliver, request).addCallback(check).addBoth(cleanUp)


@implementer(IDeliveryBackend)
class RecordingBackend:
    """
    A delivery backend for tests that keeps every request and the message
    it was handed, and answers each recipient from C{results} (C{250
    2.0.0} by default).

    @ivar requests: the L{smtpmx.backendlookup.CourierRequest}s handed.
    @ivar messages: the bytes of each request's message, in order.
    """

    def __init__(self, results: Optional[dict] = None) -> None:
        """
        @param results: a recipient address to its
            L{smtpmx.relay.request.RecipientResult}.
        """
        self.results = dict(results or {})
        self.requests: list = []
        self.messages: list[bytes] = []

    def deliver(self, request) -> Deferred:
        """
        Keep the request and its message; answer from C{results}.
        """
        from smtpmx.relay.request import Disposition, RecipientResult

        self.requests.append(request)
        with open(request.messageFile, "rb") as f:
            self.messages.append(f.read())
        delivered = RecipientResult(250, "2.0.0", "2.0.0 Ok", Disposition.DELIVERED)
        return succeed({r: self.results.get(r, delivered) for r in request.recipients})
