"""
A recording SMTP sink for tests of the relay client: a small server of its
own (not smtpmx's), listening on a loopback address, that records every
transaction and answers as a test tells it to — per-recipient replies, a
reply to the end of data, replies withheld (to test timeouts), garbage,
STARTTLS with a given certificate, with or without PIPELINING, SIZE and
EHLO itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Optional, Sequence

from twisted.internet import ssl
from twisted.internet.defer import Deferred, succeed
from twisted.internet.protocol import Factory
from twisted.protocols.basic import LineReceiver

from smtpmx.body import DataReader


@dataclass
class Transaction:
    """
    One transaction the sink saw, up to the end of its data.

    @ivar mailFrom: the reverse-path, without the brackets.
    @ivar mailParameters: the ESMTP parameters of MAIL, as sent.
    @ivar recipients: every forward-path in a RCPT, as sent, in order.
    @ivar accepted: the ones answered 2xx.
    @ivar data: the message as stored (dot-unstuffed, LF line endings).
    @ivar raw: the bytes after C{354}, as they came.
    @ivar tls: whether the session was in TLS.
    """

    heloName: str = ""
    mailFrom: str = ""
    mailParameters: list[str] = field(default_factory=list)
    recipients: list[str] = field(default_factory=list)
    accepted: list[str] = field(default_factory=list)
    data: Optional[bytes] = None
    raw: bytes = b""
    tls: bool = False


@dataclass
class Session:
    """
    One connection the sink saw.

    @ivar commands: every command line, with whether it came under TLS.
    @ivar batches: the command lines of each read from the socket:
        pipelined commands come in one batch.
    """

    commands: list[tuple[str, bool]] = field(default_factory=list)
    batches: list[list[str]] = field(default_factory=list)


class SinkProtocol(LineReceiver):
    """
    The server side of one connection to the L{Sink}.
    """

    delimiter = b"\r\n"
    MAX_LENGTH = 65536

    def __init__(self, sink: "Sink") -> None:
        """
        @param sink: the factory, holding the configuration and records.
        """
        self.sink = sink
        self.session = Session()
        self.tls = False
        self.transaction: Optional[Transaction] = None
        self.reader: Optional[DataReader] = None
        self.batch: Optional[list[str]] = None

    def connectionMade(self) -> None:
        """
        Greet, unless told to stay silent.
        """
        self.sink.sessions.append(self.session)
        self.sink._connections.append(self)
        if "GREETING" not in self.sink.hang:
            self.reply(self.sink.greeting)

    def connectionLost(self, reason=None) -> None:
        """
        Let L{Sink.stop} know this one is gone.
        """
        self.sink._connections.remove(self)
        for waiter in self.sink._closing:
            if not self.sink._connections and not waiter.called:
                waiter.callback(None)

    def reply(self, text: str) -> None:
        """
        Send a reply; C{\\n} separates the lines of a multi-line one, which
        get C{code-} prefixes, unless the text is not a reply at all.
        """
        lines = text.split("\n")
        code = lines[0][:3]
        if len(lines) > 1 and code.isdigit():
            lines = [f"{code}-{line[4:] if line[:3] == code else line}" for line in lines[:-1]] + [
                lines[-1] if lines[-1][:3] == code else f"{code} {lines[-1]}"
            ]
        self.transport.write("".join(line + "\r\n" for line in lines).encode("utf-8"))

    def dataReceived(self, data: bytes) -> None:
        """
        Group the command lines of one read into a batch.
        """
        self.batch = []
        try:
            super().dataReceived(data)
        finally:
            if self.batch:
                self.session.batches.append(self.batch)
            self.batch = None

    def rawDataReceived(self, data: bytes) -> None:
        """
        Message data after C{354}.
        """
        assert self.reader is not None and self.transaction is not None
        message, leftover = self.reader.feed(data)
        self.transaction.data += message
        if leftover is None:
            self.transaction.raw += data
            return
        self.transaction.raw += data[: len(data) - len(leftover)]
        self.reader = None
        self.sink.transactions.append(self.transaction)
        self.transaction = None
        if "." not in self.sink.hang:
            self.reply(self.sink.finalReply)
        self.setLineMode(leftover)

    def lineReceived(self, line: bytes) -> None:
        """
        One command.
        """
        text = line.decode("utf-8", "replace")
        self.session.commands.append((text, self.tls))
        if self.batch is not None:
            self.batch.append(text)
        verb, _, argument = text.partition(" ")
        verb = verb.upper()
        if verb in self.sink.hang:
            return
        if verb in self.sink.drop:
            self.transport.abortConnection()
            return
        handler = getattr(self, "do_" + verb, None)
        if verb in self.sink.replies:
            self.reply(self.sink.replies[verb])
        elif handler is None:
            self.reply("500 5.5.2 unknown command")
        else:
            handler(argument)

    def do_EHLO(self, argument: str) -> None:
        """
        Greet back with the extensions the sink offers.
        """
        self.heloName = argument
        lines = ["250 sink.test"]
        if self.sink.pipelining:
            lines.append("PIPELINING")
        if self.sink.size:
            lines.append("SIZE 100000000")
        lines += ["8BITMIME", "ENHANCEDSTATUSCODES"]
        if self.sink.tlsOptions is not None and not self.tls:
            lines.append("STARTTLS")
        self.reply("\n".join(lines))

    def do_HELO(self, argument: str) -> None:
        """
        Greet back, plain SMTP.
        """
        self.heloName = argument
        self.reply("250 sink.test")

    def do_STARTTLS(self, argument: str) -> None:
        """
        Start TLS with the sink's certificate.
        """
        self.reply("220 2.0.0 Ready to start TLS")
        self.transport.startTLS(self.sink.tlsOptions)
        self.tls = True

    def do_MAIL(self, argument: str) -> None:
        """
        Start a transaction.
        """
        path, _, parameters = argument[5:].partition(">")
        self.transaction = Transaction(
            heloName=getattr(self, "heloName", ""),
            mailFrom=path.lstrip("<"),
            mailParameters=parameters.split(),
            tls=self.tls,
        )
        self.reply("250 2.1.0 Ok")

    def do_RCPT(self, argument: str) -> None:
        """
        A recipient: answered as configured for it, 250 by default.
        """
        if self.transaction is None:
            self.reply("503 5.5.1 need MAIL")
            return
        path = argument[3:].strip().lstrip("<").split(">")[0]
        self.transaction.recipients.append(path)
        answer = self.sink.rcptReplies.get(path.lower(), "250 2.1.5 Ok")
        if answer.startswith("2"):
            self.transaction.accepted.append(path)
        self.reply(answer)

    def do_DATA(self, argument: str) -> None:
        """
        Take the message, if any recipient was accepted.
        """
        if self.transaction is None or not self.transaction.accepted:
            self.reply("554 5.5.1 no valid recipients")
            return
        self.transaction.data = b""
        self.reader = DataReader()
        self.reply("354 End data with <CR><LF>.<CR><LF>")
        self.setRawMode()

    def do_RSET(self, argument: str) -> None:
        """
        Forget the transaction.
        """
        self.transaction = None
        self.reply("250 2.0.0 Ok")

    def do_NOOP(self, argument: str) -> None:
        """
        Nothing.
        """
        self.reply("250 2.0.0 Ok")

    def do_QUIT(self, argument: str) -> None:
        """
        Say goodbye and close.
        """
        self.reply("221 2.0.0 Bye")
        self.transport.loseConnection()


class Sink(Factory):
    """
    A recording SMTP server for tests.

    @ivar transactions: every transaction whose data ended, in order.
    @ivar sessions: every connection, in order.
    @ivar hang: verbs never answered (C{"GREETING"} for the banner, C{"."}
        for the end of data).
    @ivar drop: verbs answered by dropping the connection.
    """

    def __init__(
        self,
        reactor,
        interface: str = "127.0.0.1",
        *,
        greeting: str = "220 sink.test ESMTP",
        replies: Optional[Mapping[str, str]] = None,
        rcptReplies: Optional[Mapping[str, str]] = None,
        finalReply: str = "250 2.0.0 Ok: queued as SINK",
        pipelining: bool = True,
        size: bool = True,
        certificate: Optional[tuple[str, str]] = None,
        hang: Sequence[str] = (),
        drop: Sequence[str] = (),
    ) -> None:
        """
        @param replies: fixed replies by verb (C{{"EHLO": "502 5.5.1 no"}}),
            raw text allowed (garbage).
        @param rcptReplies: replies by forward-path (lower-cased).
        @param finalReply: the reply to the end of data.
        @param certificate: the paths of a certificate and its key PEM:
            offer STARTTLS with them.
        """
        self.reactor = reactor
        self.interface = interface
        self.greeting = greeting
        self.replies = {k.upper(): v for k, v in (replies or {}).items()}
        self.rcptReplies = {k.lower(): v for k, v in (rcptReplies or {}).items()}
        self.finalReply = finalReply
        self.pipelining = pipelining
        self.size = size
        self.hang = {h.upper() for h in hang}
        self.drop = {d.upper() for d in drop}
        self.tlsOptions = None
        if certificate is not None:
            with open(certificate[0], "rb") as f:
                certificatePEM = f.read()
            with open(certificate[1], "rb") as f:
                keyPEM = f.read()
            self.tlsOptions = ssl.PrivateCertificate.loadPEM(certificatePEM + keyPEM).options()
        self.transactions: list[Transaction] = []
        self.sessions: list[Session] = []
        self._connections: list[SinkProtocol] = []
        self._closing: list[Deferred] = []
        self._port = None

    def buildProtocol(self, addr) -> SinkProtocol:
        """
        A protocol for one connection.
        """
        return SinkProtocol(self)

    def listen(self) -> int:
        """
        Start listening on port 0 of the interface.

        @return: the port number.
        """
        self._port = self.reactor.listenTCP(0, self, interface=self.interface)
        return self._port.getHost().port

    def openConnections(self) -> int:
        """
        How many connections are open now.
        """
        return len(self._connections)

    def dropConnections(self) -> None:
        """
        Drop every open connection, as a server timing out idle clients
        does.
        """
        for connection in list(self._connections):
            connection.transport.loseConnection()

    def stopListening(self) -> Deferred:
        """
        Stop listening: new connections are refused.
        """
        port, self._port = self._port, None
        if port is None:
            return succeed(None)
        return port.stopListening()

    def stop(self) -> Deferred:
        """
        Stop listening and drop every connection; fires when all are gone
        (for a test's cleanup).
        """
        d = self.stopListening()
        closed: Deferred = Deferred()
        if self._connections:
            self._closing.append(closed)
            for connection in list(self._connections):
                connection.transport.abortConnection()
        else:
            closed.callback(None)
        d.addCallback(lambda _: closed)
        return d

