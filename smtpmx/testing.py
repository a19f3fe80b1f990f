"""
Public fakes for tests of smtpmx and of validator plugins.

L{MemoryStore} keeps messages in memory and can be told to fail or to hold
its answer; L{FakeSession} is the C{session} a validator sees, with a
C{runBlocking} that runs the function at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from zope.interface import implementer

from smtpmx.address import Address
from smtpmx.config import Config
from smtpmx.envelope import Envelope
from smtpmx.interfaces import IIncomingMessage, IMessageStore


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


@dataclass
class FakeSession:
    """
    What a validator sees as C{session}, for tests of validators.
    """

    config: Config = field(default_factory=Config)
    clientHost: str = "127.0.0.1"
    heloName: str = "client.example"
    reversePath: Optional[Address] = None

    def runBlocking(self, f, *args, **kwargs) -> Deferred:
        """
        Run C{f} at once, in this thread.
        """
        return maybeDeferred(f, *args, **kwargs)
