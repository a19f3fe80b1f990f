"""
An in-memory SMTP server for protocol tests: StringTransport, a Clock and
a L{MemoryStore}, no sockets and no threads.
"""

from __future__ import annotations

import dataclasses
import os

from twisted.internet.address import IPv4Address
from twisted.internet.defer import maybeDeferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from zope.interface import implementer

from smtpmx.config import Config
from smtpmx.interfaces import IRecipientValidator
from smtpmx.server import SMTPServerFactory
from smtpmx.testing import MemoryStore
from smtpmx.validation import Accept, ValidatorChain


@implementer(IRecipientValidator)
class DictValidator:
    """
    Gives the verdict stored for a recipient's lower-cased address; a
    Deferred verdict, an exception or None are all possible.
    """

    def __init__(self, verdicts: dict) -> None:
        self.verdicts = verdicts
        self.asked: list[str] = []

    def validateRecipient(self, session, recipient):
        self.asked.append(str(recipient))
        verdict = self.verdicts.get(str(recipient).lower())
        if isinstance(verdict, BaseException):
            raise verdict
        if callable(verdict):
            return verdict()
        return verdict


class TLSv13Handle:
    """
    What a TLS transport's C{getHandle()} gives (an C{OpenSSL.SSL.Connection})
    as far as the server reads it once the handshake is done: a TLS 1.3
    session, for tests that do not run a real handshake.
    """

    def get_protocol_version_name(self):
        return "TLSv1.3"

    def get_cipher_name(self):
        return "TLS_AES_128_GCM_SHA256"

    def get_cipher_bits(self):
        return 128


def makeConfig(**overrides) -> Config:
    """
    A configuration for tests: local domain example.org, host name
    mx.example.org.
    """
    base = dict(hostname="mx.example.org", domains=("example.org",))
    base.update(overrides)
    return dataclasses.replace(Config(), **base)


def directoryConfig(directory: str, **overrides) -> Config:
    """
    L{makeConfig} with the Maildir root and the queue in C{directory}.
    """
    overrides.setdefault("maildirRoot", os.path.join(directory, "Maildir"))
    overrides.setdefault("queueDir", os.path.join(directory, "queue"))
    return makeConfig(**overrides)


class Server:
    """
    One server connection driven by a test.
    """

    def __init__(self, verdicts=None, clientHost="127.0.0.1", tlsOptions=None, observer=None, **config) -> None:
        self.clock = Clock()
        self.store = MemoryStore()
        self.validator = DictValidator(
            verdicts
            if verdicts is not None
            else {
                "alice@example.org": Accept(),
                "bob@example.org": Accept(),
            }
        )
        self.config = makeConfig(**config)
        self.factory = SMTPServerFactory(
            self.config,
            ValidatorChain([("dict", self.validator)]),
            self.store,
            self.clock,
            lambda f, *a, **kw: maybeDeferred(f, *a, **kw),
            tlsOptions=tlsOptions,
            observer=observer,
        )
        self.clientHost = clientHost
        self.protocol, self.transport = self.connect()

    def connect(self):
        """
        Open another connection to the same factory.
        """
        protocol = self.factory.buildProtocol(IPv4Address("TCP", self.clientHost, 40000))
        transport = StringTransport(peerAddress=IPv4Address("TCP", self.clientHost, 40000))
        protocol.makeConnection(transport)
        return protocol, transport

    def send(self, data: bytes | str) -> list[str]:
        """
        Send bytes in one write and return the reply lines they caused.
        """
        if isinstance(data, str):
            data = data.encode("utf-8")
        self.transport.clear()
        self.protocol.dataReceived(data)
        return self.output()

    def output(self) -> list[str]:
        """
        The reply lines written since the last clear, without CRLF.
        """
        text = self.transport.value().decode("utf-8")
        self.transport.clear()
        assert text == "" or text.endswith("\r\n"), text
        return text.split("\r\n")[:-1]

    def codes(self, data: bytes | str) -> list[str]:
        """
        Send bytes; return the last line of each reply, e.g. "250 2.1.5 Ok".
        """
        return [line for line in self.send(data) if line[3:4] == " "]

    def greeted(self) -> "Server":
        """
        Skip the greeting and say EHLO.
        """
        self.transport.clear()
        self.send("EHLO client.example\r\n")
        return self

    @property
    def closed(self) -> bool:
        return self.transport.disconnecting
