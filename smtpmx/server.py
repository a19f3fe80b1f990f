"""
The SMTP server protocol and factory: bytes in, replies out.

L{SMTPServerProtocol} adapts a connection to a L{smtpmx.session.Session}:
command lines become session inputs, the DATA phase is read in raw chunks
by a L{smtpmx.body.DataReader} and streamed into an
L{smtpmx.interfaces.IIncomingMessage}, and it enforces the limits that
belong to the connection: line length, idle timeouts, bad commands,
connection counts.  Input is not read while an answer is pending, so
pipelined replies always go out in order (RFC 2920).
"""

from __future__ import annotations

import itertools
import os
from collections import Counter
from typing import Callable, Optional

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure

from smtpmx import reply
from smtpmx.access import Access
from smtpmx.body import DataReader, HeaderScanner
from smtpmx.config import Config
from smtpmx.interfaces import IIncomingMessage, IMessageStore
from smtpmx.reply import Reply
from smtpmx.session import CLOSE, READ_DATA, START_TLS, Outcome, Session
from smtpmx.validation import ValidatorChain

# RFC 5321 4.5.3.1.4: a command line is at most 512 octets with its CRLF.
MAX_COMMAND_LINE = 510
# A line longer than this without any line ending is not SMTP: cut it off.
MAX_BUFFERED_LINE = 16384
# RFC 5321 4.5.3.1 does not bound errors; Postfix's smtpd_hard_error_limit.
MAX_BAD_COMMANDS = 20
# Seconds a closing connection may take to flush its last replies.
CLOSE_GRACE = 30
INTERNAL_ERROR = Reply(451, "4.3.0", "Error: internal server error, try again later")


class QueueIds:
    """
    Makes queue IDs unique within this host: the time in milliseconds, the
    process ID and a counter, in hexadecimal.
    """

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._counter = itertools.count()
        self._pid = os.getpid() & 0xFFFF

    def __call__(self) -> str:
        """
        A new queue ID.
        """
        millis = int(self._clock.seconds() * 1000) & 0xFFFFFFFFFF
        return f"{millis:010X}{self._pid:04X}{next(self._counter) & 0xFFFF:04X}"


class SMTPServerProtocol(LineReceiver, TimeoutMixin):
    """
    One SMTP connection.
    """

    delimiter = b"\n"
    MAX_LENGTH = MAX_BUFFERED_LINE
    log = Logger()

    def __init__(self, factory: "SMTPServerFactory") -> None:
        self.factory = factory
        self.callLater = factory.clock.callLater
        self.session: Optional[Session] = None
        self._message: Optional[IIncomingMessage] = None
        self._reader: Optional[DataReader] = None
        self._headers: Optional[HeaderScanner] = None
        self._tooBig = False
        self._waiting: set[str] = set()
        self._closing = False
        self._counted = False
        self._transportPaused = False
        self._abortCall = None
        self._tlsUndescribed = False

    # Connection life.

    def connectionMade(self) -> None:
        """
        Admit the connection (or refuse it past a limit) and greet.
        """
        peer = self.transport.getPeer()
        self.clientHost = getattr(peer, "host", "unknown")
        self.clientPort = getattr(peer, "port", 0)
        refusal = self.factory.admit(self.clientHost)
        if refusal is not None:
            self.log.info(
                "refused connection from [{client}]: {why}",
                client=self.clientHost,
                why=refusal,
            )
            self._sendReply(Reply(421, "4.7.0", f"{self.factory.config.hostname} Error: {refusal}"))
            self._close()
            return
        self._counted = True
        self.transport.registerProducer(self, True)
        # Replies are whole writes: never hold one back for an ACK.
        setNoDelay = getattr(self.transport, "setTcpNoDelay", None)
        if setNoDelay is not None:
            setNoDelay(True)
        self.log.info("connect from [{client}]:{port}", client=self.clientHost, port=self.clientPort)
        self.session = self.factory.newSession(self.clientHost)
        self.setTimeout(self.factory.config.commandTimeout)
        self._sendReply(Reply(220, None, f"{self.factory.config.hostname} ESMTP smtpmx"))

    def connectionLost(self, reason: Failure = None) -> None:
        """
        Throw away a message still being received and free the connection slot.
        """
        self.setTimeout(None)
        if self._abortCall is not None and self._abortCall.active():
            self._abortCall.cancel()
        self._abortMessage()
        if self._counted:
            self._counted = False
            self.factory.release(self.clientHost)
            self.log.info("disconnect from [{client}]:{port}", client=self.clientHost, port=self.clientPort)

    def timeoutConnection(self) -> None:
        """
        RFC 5321 4.5.3.2: the client was idle too long.
        """
        self.log.info("timeout after {phase} from [{client}]", phase="DATA" if self._reader else "command", client=self.clientHost)
        self._abortMessage()
        self._sendReply(Reply(421, "4.4.2", f"{self.factory.config.hostname} Error: timeout exceeded"))
        self._close()

    def _close(self) -> None:
        """
        Close once the replies written so far are sent.  Only the first
        call counts (the transport calls L{stopProducing} as it closes).
        """
        if self._closing:
            return
        self._closing = True
        self.setTimeout(None)
        self.transport.loseConnection()
        # A client that reads nothing would keep a closing connection open
        # forever, its replies unsent: cut it off after a grace period.
        self._abortCall = self.callLater(CLOSE_GRACE, self._cutOff)

    def _cutOff(self) -> None:
        """
        Drop a closing connection whose client reads nothing.
        """
        self.log.info("cut off [{client}]: it did not read its last replies", client=self.clientHost)
        self.transport.abortConnection()

    def _sendReply(self, r: Reply) -> None:
        """
        Write one reply.
        """
        self.transport.write(r.format())

    # Flow control: no input is acted on while an answer of ours is pending.
    # Lines wait in the line buffer; the socket itself is paused only when
    # the disk is behind or the client sends too much meanwhile, which
    # saves two epoll calls per command on the hot path.

    def _wait(self, why: str) -> None:
        """
        Stop acting on input until L{_done} is called with the same reason.
        """
        self._waiting.add(why)
        self.paused = True
        if self._waitingOnUs():
            # The client is not idle while we work for it.
            self.setTimeout(None)
        if why in ("disk", "write"):
            self._pauseTransport()

    def _done(self, why: str) -> None:
        """
        One reason to wait is over; when none is left, act on buffered input.
        """
        self._waiting.discard(why)
        if self._closing or self.transport is None:
            return
        if not self._waitingOnUs():
            self.setTimeout(
                self.factory.config.dataTimeout if self._reader else self.factory.config.commandTimeout
            )
        if self._waiting:
            return
        self.paused = False
        if self._transportPaused:
            self._transportPaused = False
            self.transport.resumeProducing()
        # Act on whatever arrived while we waited.
        LineReceiver.dataReceived(self, b"")

    def _waitingOnUs(self) -> bool:
        """
        Whether the server, not the client, holds the session up: the idle
        timeout does not run then.  A client that does not read our
        replies ("write") is still subject to it.
        """
        return bool(self._waiting - {"write"})

    # The transport calls these when the client does not read our replies:
    # then we stop reading its commands, so our buffer of replies to it
    # stays bounded.

    def pauseProducing(self) -> None:
        """
        The transport cannot take more replies: stop reading commands.
        """
        self._wait("write")

    def resumeProducing(self) -> None:
        """
        The transport took our replies: read commands again.
        """
        self._done("write")

    def stopProducing(self) -> None:
        """
        The transport is going away.
        """
        self._close()

    def _pauseTransport(self) -> None:
        """
        Stop reading from the socket.
        """
        if not self._transportPaused:
            self._transportPaused = True
            self.transport.pauseProducing()

    # Command mode.

    def dataReceived(self, data: bytes) -> None:
        """
        Bytes from the client: lines in command mode, chunks in DATA.
        """
        if self._closing:
            return
        self.resetTimeout()
        super().dataReceived(data)
        if self.paused and len(self._buffer) > MAX_BUFFERED_LINE:
            # Pipelining is bounded: stop reading until we catch up.
            self._pauseTransport()

    def lineReceived(self, line: bytes) -> None:
        """
        One command line: hand it to the session and answer.
        """
        if self._closing:
            return
        if line.endswith(b"\r"):
            line = line[:-1]
        if len(line) > MAX_COMMAND_LINE:
            self._answer(Outcome(reply.LINE_TOO_LONG), countsAsBad=True)
            return
        try:
            result = self.session.command(line)
        except Exception:
            self.log.failure("internal error on command from [{client}]", client=self.clientHost)
            result = Outcome(INTERNAL_ERROR)
        if isinstance(result, Deferred):
            self._answerLater(result)
        else:
            self._answer(result)

    def lineLengthExceeded(self, line: bytes) -> None:
        """
        A line with no end in sight: answer and hang up.
        """
        self._sendReply(reply.LINE_TOO_LONG)
        self._close()

    def _answerLater(self, d: Deferred) -> None:
        """
        Send a reply that is decided later, holding back later commands.
        """
        now: list = []
        waiting = False

        def arrived(outcome):
            if waiting:
                if not self._closing:
                    self._answer(outcome)
                self._done("command")
            else:
                now.append(outcome)

        def broke(failure):
            self.log.failure("internal error answering [{client}]", failure, client=self.clientHost)
            return Outcome(INTERNAL_ERROR)

        d.addErrback(broke).addCallback(arrived)
        if now:
            self._answer(now[0])
        else:
            waiting = True
            self._wait("command")

    def _answer(self, outcome: Outcome, countsAsBad: bool = False) -> None:
        """
        Send the reply to a command and do what it says.
        """
        if countsAsBad:
            self.session.badCommands += 1
        self._sendReply(outcome.reply)
        if outcome.action == CLOSE:
            self._close()
        elif self.session.badCommands >= MAX_BAD_COMMANDS:
            self.log.info("too many errors from [{client}]", client=self.clientHost)
            self._sendReply(Reply(421, "4.7.0", f"{self.factory.config.hostname} Error: too many errors"))
            self._close()
        elif outcome.action == READ_DATA:
            self._startData()
        elif outcome.action == START_TLS:
            self._startTLS()

    # STARTTLS.

    def _startTLS(self) -> None:
        """
        RFC 3207: anything the client sent after STARTTLS in the clear is
        thrown away, never run once TLS is up.
        """
        discarded = self.clearLineBuffer()
        if discarded:
            self.log.info(
                "discarded {n} bytes pipelined after STARTTLS from [{client}]",
                n=len(discarded),
                client=self.clientHost,
            )
        self.transport.startTLS(self.factory.tlsOptions)
        self.session.tlsStarted("TLS")
        # Version and cipher are known once the handshake is done.
        self._tlsUndescribed = True

    def _describeTLS(self) -> None:
        """
        Record the TLS version and cipher once the handshake is done.
        """
        if not self._tlsUndescribed:
            return
        handle = None
        try:
            handle = self.transport.getHandle()
            version = handle.get_protocol_version_name()
            cipher = handle.get_cipher_name()
            bits = handle.get_cipher_bits()
        except Exception:
            return
        if version and cipher:
            self._tlsUndescribed = False
            self.session.tls = f"{version} with cipher {cipher} ({bits}/{bits} bits)"

    # The DATA phase.

    def _startData(self) -> None:
        """
        Begin the DATA phase: a new envelope, a message in the store, raw mode.
        """
        self._describeTLS()
        self._envelope = self.session.envelope()
        self._reader = DataReader()
        self._headers = HeaderScanner()
        self._tooBig = False
        try:
            self._message = self.factory.store.receive(self._envelope)
        except Exception:
            self.log.failure("cannot store message {id}", id=self._envelope.queueId)
            self._message = None
        self.setTimeout(self.factory.config.dataTimeout)
        self.setRawMode()

    def rawDataReceived(self, data: bytes) -> None:
        """
        A chunk of the message: unstuffed, size-checked and streamed to the store.
        """
        reader = self._reader
        body, leftover = reader.feed(data)
        if body and not self._tooBig:
            if reader.size > self.factory.config.maxMessageSize:
                # Keep reading to the end, storing nothing more.
                self._tooBig = True
                self._abortMessage()
            else:
                if not self._headers.done:
                    self._headers.feed(body)
                if self._message is not None:
                    try:
                        pending = self._message.write(body)
                    except Exception:
                        self.log.failure("cannot store message {id}", id=self._envelope.queueId)
                        self._abortMessage()
                    else:
                        if pending is not None:
                            self._wait("disk")
                            pending.addBoth(lambda _: self._done("disk"))
        if leftover is not None:
            self._endData(leftover)

    def _endData(self, leftover: bytes) -> None:
        """
        The message is all here: make it durable, then answer.
        """
        envelope = self._envelope
        size = self._reader.size
        self._reader = None
        self._headers, headers = None, self._headers
        transaction = self.session.endTransaction()
        message, self._message = self._message, None
        self._wait("store")
        # Commands pipelined after the data wait in the line buffer.
        self.setLineMode(leftover)

        def answer(r: Reply) -> None:
            self._logTransaction(envelope, transaction, size, r)
            if self.transport is not None and not self._closing:
                self._sendReply(r)
            self._done("store")

        if self._tooBig:
            answer(reply.TOO_BIG)
        elif headers.received > self.factory.config.maxHops:
            if message is not None:
                message.abort()
            answer(reply.TOO_MANY_HOPS)
        elif message is None:
            answer(reply.STORAGE_FAILED)
        else:
            d = message.finish()

            def stored(_):
                return reply.queued(envelope.queueId)

            def failed(failure):
                self.log.failure("cannot store message {id}", failure, id=envelope.queueId)
                return reply.STORAGE_FAILED

            d.addCallbacks(stored, failed).addCallback(answer)

    def _abortMessage(self) -> None:
        """
        Give up on the message being received, if any.
        """
        message, self._message = self._message, None
        if message is not None:
            try:
                message.abort()
            except Exception:
                self.log.failure("cannot abort message")

    def _logTransaction(self, envelope, transaction, size: int, r: Reply) -> None:
        """
        One line per transaction: ID, client, sender, each recipient's
        verdict, size and result.
        """
        verdicts = ", ".join(
            f"<{v.address}> {v.reply.code} {v.reply.enhanced or ''}".rstrip()
            + (f" by {v.decidedBy}" if v.decidedBy else "")
            for v in transaction.verdicts
        )
        self.log.info(
            "{id}: client=[{client}] helo={helo} from={sender} to=[{verdicts}] "
            "size={size} result={result}",
            id=envelope.queueId,
            client=envelope.clientHost,
            helo=envelope.heloName,
            sender=envelope.reversePath.path if envelope.reversePath else "<>",
            verdicts=verdicts,
            size=size,
            result=str(r),
        )


class SMTPServerFactory(Factory):
    """
    Makes L{SMTPServerProtocol}s and holds what they share: configuration,
    validators, the store, the connection counts.
    """

    protocol = SMTPServerProtocol
    noisy = False

    def __init__(
        self,
        config: Config,
        validators: ValidatorChain,
        store: IMessageStore,
        clock: IReactorTime,
        runBlocking: Callable[..., Deferred],
        tlsOptions=None,
    ) -> None:
        self.config = config
        self.validators = validators
        self.store = store
        self.clock = clock
        self.runBlocking = runBlocking
        self.tlsOptions = tlsOptions
        self.access = Access(
            config.domains,
            config.relayDomains,
            config.relayNetworks,
            config.recipientDelimiter,
        )
        self.newQueueId = QueueIds(clock)
        self.connections = 0
        self.perHost: Counter[str] = Counter()

    def buildProtocol(self, addr) -> SMTPServerProtocol:
        """
        A protocol for a new connection.
        """
        p = self.protocol(self)
        return p

    def admit(self, host: str) -> Optional[str]:
        """
        Count a new connection from C{host}, or say why it is refused.
        """
        if self.connections >= self.config.maxConnections:
            return "too many connections"
        if self.perHost[host] >= self.config.maxConnectionsPerIp:
            return "too many connections from your address"
        self.connections += 1
        self.perHost[host] += 1
        return None

    def release(self, host: str) -> None:
        """
        A connection admitted by L{admit} has ended.
        """
        self.connections -= 1
        self.perHost[host] -= 1
        if self.perHost[host] <= 0:
            del self.perHost[host]

    def newSession(self, clientHost: str) -> Session:
        """
        The SMTP dialogue state for a new connection.
        """
        return Session(
            self.config,
            self.validators,
            self.access,
            clientHost,
            self.runBlocking,
            self.clock,
            self.newQueueId,
            tlsAvailable=self.tlsOptions is not None,
        )
