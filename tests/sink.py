"""
The recording SMTP sink: a next hop for tests of the relay, a small server
of its own (not smtpmx's), listening on a loopback address, that records
every transaction and answers as a test tells it to — per-recipient
replies, a reply to the end of data, temporary failures for the first
transactions, replies withheld (to test timeouts), garbage, a connection dropped in
the middle of the data, STARTTLS with
a given certificate, with or without PIPELINING, SIZE and EHLO itself.
With C{lmtp=True} it speaks LMTP instead (RFC 2033 section 4): LHLO in
place of EHLO and HELO, no STARTTLS, and after the data one reply per
accepted recipient, in RCPT order (C{dataReplies}); L{Sink.listenUNIX}
serves it on a unix socket as well.

In memory, a test of the relay client runs a L{Sink} on its own reactor
and reads L{Sink.transactions} and L{Sink.sessions}.

As a subprocess, for end-to-end tests and benchmarks::

    python -m tests.sink --host 127.0.0.3 [--port 0] --record FILE \\
        [--reply-rcpt ADDR=CODE_TEXT ...] [--reply-data CODE_TEXT] \\
        [--fail-first N] [--connections FILE] [--lmtp] [--no-fsync]

it prints C{listening on HOST:PORT} once it listens, appends one JSON line
per transaction it accepted (its final reply was 2xx) to C{FILE}, fsynced
before that reply goes out (so a test that saw a C{250} from it can read
the record), and, with C{--connections}, rewrites the number of
connections accepted so far into that file after each one.  SIGTERM ends
it.  L{RunningSink} runs it (with L{tests.process.RunningProcess}) and
reads the records back as L{Transaction}s.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
from dataclasses import asdict, dataclass, field
from typing import Mapping, Optional, Sequence

from twisted.internet import ssl
from twisted.internet.defer import Deferred, succeed
from twisted.internet.protocol import Factory
from twisted.protocols.basic import LineReceiver

from smtpmx.body import DataReader
from tests.e2e import ROOT, environment
from tests.helpers import waitUntil
from tests.process import ProcessDidNotStart, RunningProcess, logMatches


@dataclass
class Transaction:
    """
    One transaction the sink saw, up to the end of its data.

    @ivar mailFrom: the reverse-path, without the brackets.
    @ivar mailParameters: the ESMTP parameters of MAIL, as sent.
    @ivar heloName: the argument of the session's EHLO or HELO.
    @ivar recipients: every forward-path in a RCPT, as sent, in order.
    @ivar accepted: the ones answered 2xx.
    @ivar data: the message as stored (dot-unstuffed, LF line endings).
    @ivar raw: the bytes after C{354}, as they came: dot-stuffed, CRLF,
        up to and including the final C{.CRLF}.
    @ivar tls: whether the session was in TLS.
    @ivar deferred: whether every RCPT got C{451} because the sink was
        told to fail its first transactions.
    @ivar connection: the number of the connection it came on, from 1.
    @ivar peer: the client's C{HOST:PORT}.
    """

    heloName: str = ""
    mailFrom: str = ""
    mailParameters: list[str] = field(default_factory=list)
    recipients: list[str] = field(default_factory=list)
    accepted: list[str] = field(default_factory=list)
    data: Optional[bytes] = None
    raw: bytes = b""
    tls: bool = False
    deferred: bool = False
    connection: int = 0
    peer: str = ""

    @property
    def refused(self) -> list[str]:
        """
        The forward-paths answered with anything but 2xx.
        """
        return [r for r in self.recipients if r not in self.accepted]

    def toJSON(self) -> str:
        """
        One line of JSON holding every field, the bytes in base64: how the
        sink run as a subprocess records it.
        """
        record = asdict(self)
        for name in ("data", "raw"):
            if record[name] is not None:
                record[name] = base64.b64encode(record[name]).decode("ascii")
        return json.dumps(record, sort_keys=True)

    @classmethod
    def fromJSON(cls, line: str) -> "Transaction":
        """
        The transaction recorded as C{line} by L{toJSON}.
        """
        record = json.loads(line)
        for name in ("data", "raw"):
            if record[name] is not None:
                record[name] = base64.b64decode(record[name])
        return cls(**record)


@dataclass
class Session:
    """
    One connection the sink saw.

    @ivar commands: every command line, with whether it came under TLS.
    @ivar batches: the command lines of each read from the socket:
        pipelined commands come in one batch.
    @ivar number: its number, from 1, in the order connections came.
    @ivar peer: the client's C{HOST:PORT}.
    """

    number: int = 0
    peer: str = ""
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
        self.dataSeen = 0
        self.stuck = False

    def connectionMade(self) -> None:
        """
        Greet, unless told to stay silent.
        """
        self.sink.sessions.append(self.session)
        self.sink._connections.append(self)
        self.session.number = len(self.sink.sessions)
        peer = self.transport.getPeer()
        self.session.peer = f"{getattr(peer, 'host', '')}:{getattr(peer, 'port', '')}"
        self.sink.connectionOpened(self.session)
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
        self.dataSeen += len(data)
        if self.sink.dropInData is not None and self.dataSeen >= self.sink.dropInData:
            # The connection breaks in the middle of the message.
            self.reader = self.transaction = None
            self.transport.abortConnection()
            return
        message, leftover = self.reader.feed(data)
        self.transaction.data += message
        if leftover is None:
            self.transaction.raw += data
            return
        self.transaction.raw += data[: len(data) - len(leftover)]
        self.reader = None
        self.sink.transactions.append(self.transaction)
        self.sink.transactionEnded(self.transaction)
        self.transaction = None
        if "." not in self.sink.hang:
            if self.sink.lmtp:
                # RFC 2033 section 4.2: one reply per accepted recipient.
                for path in self.sink.transactions[-1].accepted:
                    self.reply(self.sink.dataReplies.get(path.lower(), self.sink.finalReply))
            else:
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
        if self.stuck or verb in self.sink.hang:
            # Stuck at it, as a real server would be: the commands
            # pipelined after it are never answered either.
            self.stuck = True
            return
        if verb in self.sink.drop:
            self.transport.abortConnection()
            return
        if verb in ("LHLO", "EHLO", "HELO") and (verb == "LHLO") != self.sink.lmtp:
            verb = "WRONG-GREETING"  # LHLO to SMTP, EHLO or HELO to LMTP: unknown.
        handler = getattr(self, "do_" + ("EHLO" if verb == "LHLO" else verb), None)
        if verb in self.sink.replies:
            self.reply(self.sink.replies[verb])
        elif handler is None:
            self.reply("500 5.5.2 unknown command")
        else:
            handler(argument)

    def do_EHLO(self, argument: str) -> None:
        """
        Greet back with the extensions the sink offers (to LHLO in LMTP
        mode, which refuses EHLO and HELO: RFC 2033 section 4.1).
        """
        self.heloName = argument
        lines = ["250 sink.test"]
        if self.sink.pipelining:
            lines.append("PIPELINING")
        if self.sink.size:
            lines.append("SIZE 100000000")
        lines += ["8BITMIME", "ENHANCEDSTATUSCODES"]
        if self.sink.tlsOptions is not None and not self.tls and not self.sink.lmtp:
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
            connection=self.session.number,
            peer=self.session.peer,
        )
        self.reply("250 2.1.0 Ok")

    def do_RCPT(self, argument: str) -> None:
        """
        A recipient: answered as configured for it, 250 by default, and
        451 to every recipient of the first C{failFirst} transactions.
        """
        if self.transaction is None:
            self.reply("503 5.5.1 need MAIL")
            return
        path = argument[3:].strip().lstrip("<").split(">")[0]
        if not self.transaction.recipients:
            # A transaction counts from its first RCPT.
            self.sink.transactionsStarted += 1
            self.transaction.deferred = self.sink.transactionsStarted <= self.sink.failFirst
        self.transaction.recipients.append(path)
        if self.transaction.deferred:
            answer = "451 4.3.0 try later"
        else:
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
        self.dataSeen = 0
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
    @ivar hang: verbs never answered, nor any command after them on that
        connection (C{"GREETING"} for the banner, C{"."} for the end of
        data).
    @ivar drop: verbs answered by dropping the connection.
    @ivar dropInData: drop the connection once this many bytes of a
        message's data have come (L{None}: never).
    @ivar transactionsStarted: transactions that got as far as a RCPT.
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
        failFirst: int = 0,
        lmtp: bool = False,
        dataReplies: Optional[Mapping[str, str]] = None,
        dropInData: Optional[int] = None,
    ) -> None:
        """
        @param replies: fixed replies by verb (C{{"EHLO": "502 5.5.1 no"}}),
            raw text allowed (garbage).
        @param rcptReplies: replies by forward-path (lower-cased).
        @param finalReply: the reply to the end of data.
        @param failFirst: answer C{451 4.3.0} to every RCPT of this many
            transactions, the first ones.
        @param lmtp: speak LMTP (RFC 2033) instead of SMTP.
        @param dataReplies: in LMTP mode, the reply after the data for
            each forward-path (lower-cased); C{finalReply} for the others.
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
        self.failFirst = failFirst
        self.lmtp = lmtp
        self.dataReplies = {k.lower(): v for k, v in (dataReplies or {}).items()}
        self.dropInData = dropInData
        self.transactionsStarted = 0
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

    def connectionOpened(self, session: Session) -> None:
        """
        Called when a connection is made, before the greeting; nothing
        here (L{RecordingSink} counts them).
        """

    def transactionEnded(self, transaction: Transaction) -> None:
        """
        Called when a transaction's data has ended, before the reply to it
        goes out; nothing here (L{RecordingSink} writes it down).
        """

    def listen(self, port: int = 0) -> int:
        """
        Start listening on the interface.

        @param port: the port; 0 for one the system picks.
        @return: the port number.
        """
        self._port = self.reactor.listenTCP(port, self, interface=self.interface)
        return self._port.getHost().port

    def listenUNIX(self, path: str) -> str:
        """
        Start listening on a unix socket instead of the interface (as
        Dovecot's LMTP does at C{/run/dovecot/lmtp}).

        @return: the socket's path.
        """
        self._port = self.reactor.listenUNIX(path, self)
        return path

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



class RecordingSink(Sink):
    """
    A L{Sink} that writes down, durably, what it accepted and how many
    connections it took, for a test in another process to read.

    @ivar recordPath: the file each accepted transaction is appended to
        as one line of L{Transaction.toJSON}.
    @ivar connectionsPath: the file rewritten with the number of
        connections after each one, or L{None}.
    """

    def __init__(self, reactor, recordPath: str, connectionsPath: Optional[str] = None, sync: bool = True,
                 **kwargs) -> None:
        """
        @param sync: fsync each record before the reply; L{False} for a
            load test that reads the records only once the sink is idle.
        @param kwargs: see L{Sink.__init__}.
        """
        super().__init__(reactor, **kwargs)
        self.recordPath = recordPath
        self.connectionsPath = connectionsPath
        self.sync = sync

    def connectionOpened(self, session: Session) -> None:
        """
        Write the number of connections so far, replacing the file whole.
        """
        if self.connectionsPath is None:
            return
        temporary = self.connectionsPath + ".tmp"
        with open(temporary, "w") as f:
            f.write(f"{len(self.sessions)}\n")
        os.replace(temporary, self.connectionsPath)

    def transactionEnded(self, transaction: Transaction) -> None:
        """
        Append an accepted transaction to the record file and fsync it,
        before the reply that tells the client it was accepted.
        """
        if not self.finalReply.startswith("2"):
            return
        fd = os.open(self.recordPath, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (transaction.toJSON() + "\n").encode("ascii"))
            if self.sync:
                os.fsync(fd)
        finally:
            os.close(fd)


def main(argv: Optional[Sequence[str]] = None, reactor=None) -> int:
    """
    Run a L{RecordingSink} until SIGTERM: the command line of
    C{python -m tests.sink} (see the module's docstring).

    @param argv: the arguments; C{sys.argv[1:]} by default.
    @param reactor: the reactor; the global one by default.
    """
    parser = argparse.ArgumentParser(prog="python -m tests.sink", description="A recording SMTP sink.")
    parser.add_argument("--host", default="127.0.0.1", help="a loopback address to listen on")
    parser.add_argument("--port", type=int, default=0, help="0 for a free one")
    parser.add_argument("--record", required=True, metavar="FILE", help="accepted transactions go here")
    parser.add_argument("--connections", default=None, metavar="FILE", help="the connection count goes here")
    parser.add_argument("--reply-rcpt", action="append", default=[], metavar="ADDR=CODE_TEXT",
                        help="the reply to RCPT TO:<ADDR>, repeatable")
    parser.add_argument("--reply-data", default="250 2.0.0 Ok: recorded", metavar="CODE_TEXT",
                        help="the reply to the end of the data")
    parser.add_argument("--fail-first", type=int, default=0, metavar="N",
                        help="answer 451 to every RCPT of the first N transactions")
    parser.add_argument("--lmtp", action="store_true", help="speak LMTP (RFC 2033) instead of SMTP")
    parser.add_argument("--no-fsync", action="store_true",
                        help="do not fsync the record file (for load tests that read it once idle)")
    options = parser.parse_args(argv)
    if not options.host.startswith("127."):
        parser.error("only loopback (127.0.0.0/8) addresses")
    if reactor is None:
        from twisted.internet import reactor
    rcptReplies = {}
    for item in options.reply_rcpt:
        address, _, reply = item.partition("=")
        rcptReplies[address] = reply.strip()
    sink = RecordingSink(
        reactor, options.record, options.connections, interface=options.host,
        rcptReplies=rcptReplies, finalReply=options.reply_data, failFirst=options.fail_first,
        lmtp=options.lmtp, sync=not options.no_fsync,
    )
    port = sink.listen(options.port)
    sys.stdout.write(f"listening on {options.host}:{port}\n")
    sys.stdout.flush()
    reactor.run()
    return 0


class RunningSink:
    """
    The recording sink as a subprocess, for end-to-end tests and
    benchmarks: started, its port read from its output, stopped by PID.

    @ivar host: the loopback address it listens on.
    @ivar port: its port.
    @ivar recordPath: its record file.
    """

    def __init__(self, directory: str, host: str = "127.0.0.3", port: int = 0, arguments: Sequence[str] = ()) -> None:
        """
        @param directory: where the record file and the log go.
        @param host: a loopback address to listen on.
        @param port: the port; 0 for a free one.
        @param arguments: more command line arguments (C{--fail-first 1}...).
        """
        self.directory = directory
        self.host = host
        self.port = port
        self.arguments = list(arguments)
        self.recordPath = os.path.join(directory, f"sink-{host}.jsonl")
        self.connectionsPath = os.path.join(directory, f"sink-{host}.connections")
        self.runner = RunningProcess(
            [sys.executable, "-m", "tests.sink"], os.path.join(directory, f"sink-{host}.log"),
            cwd=ROOT, env=environment(), name=f"the sink on {host}",
        )

    @classmethod
    def start(cls, addCleanup, directory: str, host: str = "127.0.0.3", port: int = 0,
              arguments: Sequence[str] = ()) -> "RunningSink":
        """
        Start a sink; a cleanup stops it.

        @param addCleanup: a test's C{addCleanup}, a class's
            C{addClassCleanup}, or an L{contextlib.ExitStack}'s C{callback}.
        """
        sink = cls(directory, host, port, arguments)
        addCleanup(sink.stop)
        sink.launch()
        return sink

    def launch(self, timeout: float = 15.0) -> None:
        """
        Run it and wait until it listens (on L{port} again after a
        L{stop}: a port given again may linger a moment, so a start that
        fails is tried again until C{timeout}).
        """
        self.runner.argv = [
            sys.executable, "-m", "tests.sink", "--host", self.host, "--port", str(self.port),
            "--record", self.recordPath, "--connections", self.connectionsPath, *self.arguments,
        ]
        failures: list[str] = []

        def attempt():
            """
            One start; its match, or L{None} after a failure.
            """
            try:
                return self.runner.launch(logMatches(r"listening on ([0-9.]+):(\d+)"), timeout)
            except ProcessDidNotStart as e:
                if not e.exited:
                    raise
                failures.append(str(e))
                return None

        match = waitUntil(attempt, timeout, interval=0.1)
        if match is None:
            raise ProcessDidNotStart(failures[-1], exited=True)
        self.port = int(match.group(2))

    def stop(self) -> None:
        """
        SIGTERM by PID, then SIGKILL; idempotent.
        """
        self.runner.stop()

    def transactions(self) -> list[Transaction]:
        """
        Every transaction accepted so far (by every run of this sink).
        """
        try:
            with open(self.recordPath) as f:
                return [Transaction.fromJSON(line) for line in f if line.strip()]
        except FileNotFoundError:
            return []

    def connections(self) -> int:
        """
        How many connections the current run accepted.
        """
        try:
            with open(self.connectionsPath) as f:
                return int(f.read().strip() or 0)
        except FileNotFoundError:
            return 0

    def waitFor(self, count: int, timeout: float = 10.0) -> list[Transaction]:
        """
        Wait (bounded) until at least C{count} transactions are recorded.
        """
        waitUntil(lambda: len(self.transactions()) >= count, timeout)
        return self.transactions()


if __name__ == "__main__":
    sys.exit(main())
