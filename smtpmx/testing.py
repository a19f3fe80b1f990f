"""
Public fakes for tests of smtpmx and of validator plugins.

L{MemoryStore} keeps messages in memory and can be told to fail or to hold
its answer; L{validationContext} builds the
L{smtpmx.validation.ValidationContext} a validator is given (its
C{session} argument), with a C{runBlocking} that runs the function at once.
How to test a validator plugin with them is in C{docs/plugins.rst}.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from zope.interface import implementer

from smtpmx.address import Address
from smtpmx.config import Config
from smtpmx.envelope import Envelope
from smtpmx.interfaces import IIncomingMessage, IMessageStore
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
) -> ValidationContext:
    """
    The context a validator is given as C{session}, for a plugin's tests:
    the same frozen value the server passes.

    @param config: the server's configuration; a default L{Config} if
        L{None}.
    @param runBlocking: runs blocking work; by default at once, in the
        test's thread (L{runAtOnce}).
    """
    return ValidationContext(
        clientHost=clientHost,
        heloName=heloName,
        reversePath=reversePath,
        config=config if config is not None else Config(),
        runBlocking=runBlocking,
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
