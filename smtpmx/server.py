"""
The SMTP server protocol and factory: bytes in, replies out.

L{SMTPServerProtocol} moves bytes between a connection and its
L{smtpmx.session.Session}, which owns the SMTP dialogue and the mail
transaction: command lines go to L{Session.command}, the DATA phase goes to
L{Session.feedData} in raw chunks, and the replies come back.  The protocol
keeps what belongs to the connection: line framing, flow control (input is
not acted on while an answer is pending, so pipelined replies always go out
in order, RFC 2920; the socket is paused when the store or the client is
behind), idle timeouts, connection counts and the STARTTLS switch of the
transport (RFC 3207).

Under load the factory is in I{stress} (Postfix's word): while more than
80% of C{--max-connections} are in use, the idle limits drop to
L{STRESS_IDLE_LIMIT} seconds (RFC 5321 section 4.5.3.2 lets a server
shorten its timeouts when busy), and a connection that would pass the
limit is let in by closing the session idle the longest, with
C{421 4.7.0}.  Idle connections then cannot hold every slot for the
whole command timeout while real senders are refused.
"""

from __future__ import annotations

import itertools
import os
from collections import Counter
from typing import Callable, Optional

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IHandshakeListener, IReactorTime
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure
from zope.interface import implementer

from smtpmx import reply
from smtpmx.access import Access
from smtpmx.auth.checker import SenderAuthentication
from smtpmx.config import Config
from smtpmx.interfaces import IMessageStore, IServerObserver
from smtpmx.reply import Reply
from smtpmx.replywriter import ReplyWriter
from smtpmx.session import Action, Answer, NegotiatedTLS, Session
from smtpmx.transactionlog import TRANSACTION_LOG_FORMAT, RecipientVerdict, TransactionRecord
from smtpmx.validation import ValidatorChain

# A line longer than this without any line ending is not SMTP: cut it off.
MAX_BUFFERED_LINE = 16384
# Seconds a closing connection may take to flush its last replies.
CLOSE_GRACE = 30
# The idle limit, in seconds, of every session while the server is in
# stress (Postfix's smtpd_timeout under stress is 10 s too).
STRESS_IDLE_LIMIT = 10.0


class QueueIds:
    """
    Makes queue IDs unique within this host, across every process that
    makes them at once (the workers of C{--workers}): the time in
    milliseconds (10 digits), the whole process ID (4 digits or more) and a
    counter (4 digits), in hexadecimal.  The fields around the process ID
    have fixed widths, so two processes never make the same ID.
    """

    def __init__(self, clock: IReactorTime, pid: Optional[int] = None) -> None:
        """
        @param pid: the process ID; this process's by default.
        """
        self._clock = clock
        self._counter = itertools.count()
        self._pid = os.getpid() if pid is None else pid

    def __call__(self) -> str:
        """
        A new queue ID.
        """
        millis = int(self._clock.seconds() * 1000) & 0xFFFFFFFFFF
        return f"{millis:010X}{self._pid:04X}{next(self._counter) & 0xFFFF:04X}"


@implementer(IServerObserver)
class NoObserver:
    """
    An L{IServerObserver} that ignores everything: the server's observer
    when nothing counts (no C{--metrics}).
    """

    def connectionOpened(self, clientHost: str) -> None:
        """
        Ignored.
        """

    def connectionRefused(self, clientHost: str, reason: str) -> None:
        """
        Ignored.
        """

    def connectionClosed(self, clientHost: str) -> None:
        """
        Ignored.
        """

    def tlsStarted(self, tls: NegotiatedTLS) -> None:
        """
        Ignored.
        """

    def recipientDecided(self, verdict: RecipientVerdict) -> None:
        """
        Ignored.
        """

    def transactionEnded(self, record: TransactionRecord) -> None:
        """
        Ignored.
        """


@implementer(IHandshakeListener)
class SMTPServerProtocol(LineReceiver, TimeoutMixin):
    """
    One SMTP connection.

    @ivar lastActive: when the client last sent anything (the clock's
        seconds), to find the session idle the longest.
    """

    delimiter = b"\n"
    MAX_LENGTH = MAX_BUFFERED_LINE
    log = Logger()

    def __init__(self, factory: "SMTPServerFactory") -> None:
        self.factory = factory
        self.callLater = factory.clock.callLater
        self.session: Optional[Session] = None
        self._waiting: set[str] = set()
        self._closing = False
        self._counted = False
        self._transportPaused = False
        self._heldWhilePaused = 0
        self._abortCall = None
        self._replies: Optional[ReplyWriter] = None
        self.lastActive = factory.clock.seconds()

    # Connection life.

    def connectionMade(self) -> None:
        """
        Admit the connection (or refuse it past a limit) and greet.
        """
        self._replies = ReplyWriter(self.transport)
        peer = self.transport.getPeer()
        self.clientHost = getattr(peer, "host", "unknown")
        self.clientPort = getattr(peer, "port", 0)
        refusal = self.factory.admit(self.clientHost, self)
        if refusal is not None:
            self.log.info(
                "refused connection from [{client}]: {why}",
                client=self.clientHost,
                why=refusal,
            )
            self.factory.observer.connectionRefused(self.clientHost, refusal)
            self._sendReply(reply.connectionRefused(self.factory.config.hostname, refusal))
            self._close()
            return
        self._counted = True
        self.factory.observer.connectionOpened(self.clientHost)
        self.transport.registerProducer(self, True)
        # Replies are whole writes: never hold one back for an ACK.
        setNoDelay = getattr(self.transport, "setTcpNoDelay", None)
        if setNoDelay is not None:
            setNoDelay(True)
        self.log.info("connect from [{client}]:{port}", client=self.clientHost, port=self.clientPort)
        self.session = self.factory.newSession(self.clientHost)
        self.setTimeout(self._idleLimit())
        self._sendReply(self.session.greeting())

    def connectionLost(self, reason: Failure = None) -> None:
        """
        Throw away a message still being received and free the connection slot.
        """
        self.setTimeout(None)
        if self._abortCall is not None and self._abortCall.active():
            self._abortCall.cancel()
        if self.session is not None:
            self.session.abortMessage()
        if self._counted:
            self._counted = False
            self.factory.release(self.clientHost, self)
            self.factory.observer.connectionClosed(self.clientHost)
        if self.session is not None:
            self.log.info("disconnect from [{client}]:{port}", client=self.clientHost, port=self.clientPort)

    def timeoutConnection(self) -> None:
        """
        RFC 5321 4.5.3.2: the client was idle too long.
        """
        self.log.info(
            "timeout after {phase} from [{client}]",
            phase="DATA" if self.session.inData else "command",
            client=self.clientHost,
        )
        self._sendReply(self.session.timedOut())
        self._close()

    def _idleLimit(self) -> float:
        """
        How long the client may now stay idle: the command or the data
        timeout, shortened while the server is in stress.
        """
        config = self.factory.config
        return self.factory.idleLimit(
            config.dataTimeout if self.session.inData else config.commandTimeout
        )

    @property
    def idle(self) -> bool:
        """
        Whether the session waits for its client (its idle timeout runs):
        not closing, and no answer of ours pending.
        """
        return self._counted and not self._closing and self.timeOut is not None

    def idleLimitChanged(self) -> None:
        """
        Stress began or ended: a session waiting for its client gets the
        new idle limit, counted from now.
        """
        if self.idle:
            self.setTimeout(self._idleLimit())

    def makeRoom(self) -> None:
        """
        Close this idle session to let a new connection in: its slot is
        already given away (L{SMTPServerFactory.admit}).
        """
        self._counted = False
        self.log.info(
            "closing the session of [{client}]:{port}, idle {idle:.0f} s, to make room",
            client=self.clientHost,
            port=self.clientPort,
            idle=self.factory.clock.seconds() - self.lastActive,
        )
        self._sendReply(reply.makingRoom(self.factory.config.hostname))
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
        self._replies.flush()
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
        Write one reply, or gather it with the others of the batch of
        input being answered (L{_batch}).
        """
        self._replies.send(r.format())

    def _batch(self, f: Callable[..., None], *args: object) -> None:
        """
        Call C{f(*args)}, answering a batch of input: the replies it sends
        go out together, in one write.
        """
        began = self._replies.hold()
        try:
            f(*args)
        finally:
            if began:
                self._replies.flush()

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
            self.setTimeout(self._idleLimit())
        if self._waiting:
            return
        self.paused = False
        self._heldWhilePaused = 0
        if self._transportPaused:
            self._transportPaused = False
            self.transport.resumeProducing()
        # Act on whatever arrived while we waited.
        self._batch(LineReceiver.dataReceived, self, b"")

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
        self.lastActive = self.factory.clock.seconds()
        self.resetTimeout()
        self._batch(LineReceiver.dataReceived, self, data)
        if self.paused:
            # Pipelining is bounded: count what may wait for us (all of
            # this chunk, at most), and stop reading once it passes one long
            # line.  What is left when we resume was counted before, so the
            # line buffer stays within a few times this.
            self._heldWhilePaused += len(data)
            if self._heldWhilePaused > MAX_BUFFERED_LINE:
                self._pauseTransport()

    def lineReceived(self, line: bytes) -> None:
        """
        One command line: hand it to the session and answer.
        """
        if self._closing:
            return
        if line.endswith(b"\r"):
            line = line[:-1]
        result = self.session.command(line)
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

        def arrived(answer: Answer) -> None:
            if waiting:
                self._batch(answered, answer)
            else:
                now.append(answer)

        def answered(answer: Answer) -> None:
            if not self._closing:
                self._answer(answer)
            self._done("command")

        d.addCallback(arrived)
        if now:
            self._answer(now[0])
        else:
            waiting = True
            self._wait("command")

    def _answer(self, answer: Answer) -> None:
        """
        Send the reply to a command and do what it says.
        """
        self._sendReply(answer.reply)
        action = answer.action
        if action is Action.CONTINUE:
            return
        if action is Action.CLOSE:
            if answer.farewell is not None:
                self.log.info("too many errors from [{client}]", client=self.clientHost)
                self._sendReply(answer.farewell)
            self._close()
        elif action is Action.READ_DATA:
            self.setTimeout(self._idleLimit())
            self.setRawMode()
        elif action is Action.START_TLS:
            self._startTLS()

    # STARTTLS.

    def _startTLS(self) -> None:
        """
        RFC 3207: anything the client sent after STARTTLS in the clear is
        thrown away, never run once TLS is up.
        """
        # The reply to STARTTLS goes out in the clear, before the switch.
        self._replies.flush()
        discarded = self.clearLineBuffer()
        if discarded:
            self.log.info(
                "discarded {n} bytes pipelined after STARTTLS from [{client}]",
                n=len(discarded),
                client=self.clientHost,
            )
        self.transport.startTLS(self.factory.tlsOptions)

    def handshakeCompleted(self) -> None:
        """
        The TLS handshake is done (L{IHandshakeListener}): tell the session
        the version and cipher it negotiated.
        """
        try:
            handle = self.transport.getHandle()
            version = handle.get_protocol_version_name()
            cipher = handle.get_cipher_name()
            bits = handle.get_cipher_bits()
        except Exception:
            self.log.failure("cannot read the TLS session of [{client}]", client=self.clientHost)
            return
        if version and cipher:
            tls = NegotiatedTLS(version, cipher, bits)
            self.session.handshakeCompleted(tls)
            self.factory.observer.tlsStarted(tls)

    # The DATA phase.

    def rawDataReceived(self, data: bytes) -> None:
        """
        A chunk of the message: the session takes it; wait while the store
        is behind, and answer at the end of the data.
        """
        pending, leftover = self.session.feedData(data)
        if pending is not None:
            self._wait("disk")
            pending.addBoth(lambda _: self._done("disk"))
        if leftover is not None:
            self._endData(leftover)

    def _endData(self, leftover: bytes) -> None:
        """
        The message is all here: the session makes it durable, then we
        answer and log the transaction.
        """
        d = self.session.endData()
        self._wait("store")
        # Commands pipelined after the data wait in the line buffer.
        self.setLineMode(leftover)
        d.addCallback(lambda record: self._batch(self._dataAnswered, record))

    def _dataAnswered(self, record: TransactionRecord) -> None:
        """
        The transaction is over: one log line for it (the record rides
        along in the event as C{transaction}, for structured logs, and so
        do the line's fields), then its reply.  The line is made here with
        C{str.format}, a third of what the logger's own formatting of its
        nine fields costs.
        """
        fields = record.logFields()
        self.log.info("{line}", line=TRANSACTION_LOG_FORMAT.format(**fields), transaction=record, **fields)
        self.factory.observer.transactionEnded(record)
        if self.transport is not None and not self._closing:
            self._sendReply(record.reply)
        self._done("store")


class SMTPServerFactory(Factory):
    """
    Makes L{SMTPServerProtocol}s and holds what they share: configuration,
    validators, the store, sender authentication, the connection counts,
    the stress state, and the observer told what happens on the
    connections.

    @ivar tlsOptions: the TLS context factory of STARTTLS, or L{None}
        without TLS; a reload replaces it, for the sessions that start
        TLS afterwards.
    @ivar sessions: the connections admitted and not yet released.
    @ivar stressed: whether more than 80% of C{--max-connections} are in
        use.
    """

    protocol = SMTPServerProtocol
    noisy = False
    log = Logger()

    def __init__(
        self,
        config: Config,
        validators: ValidatorChain,
        store: IMessageStore,
        clock: IReactorTime,
        runBlocking: Callable[..., Deferred],
        tlsOptions=None,
        authentication: Optional[SenderAuthentication] = None,
        observer: Optional[IServerObserver] = None,
        lowOnSpace: Optional[Callable[[], bool]] = None,
    ) -> None:
        """
        @param authentication: sender authentication, whose SPF check the
            sessions start at C{MAIL FROM}; L{None} when no method is on.
        @param observer: told what happens on the connections
            (L{smtpmx.metrics.Metrics}); nothing by default.
        @param lowOnSpace: tells, without blocking, whether the disks of
            the store are short of free space (MAIL is then refused).
        """
        self.config = config
        self.validators = validators
        self.store = store
        self.clock = clock
        self.runBlocking = runBlocking
        self.tlsOptions = tlsOptions
        self.authentication = authentication
        self.observer = observer if observer is not None else NoObserver()
        self.access = Access.fromConfig(config)
        self.newQueueId = QueueIds(clock)
        self.connections = 0
        self.perHost: Counter[str] = Counter()
        self.sessions: set[SMTPServerProtocol] = set()
        self.stressed = False
        self.lowOnSpace = lowOnSpace

    def buildProtocol(self, addr) -> SMTPServerProtocol:
        """
        A protocol for a new connection.
        """
        p = self.protocol(self)
        return p

    def admit(self, host: str, protocol: Optional[SMTPServerProtocol] = None) -> Optional[str]:
        """
        Count a new connection from C{host}, or say why it is refused.
        When every slot is taken, the session idle the longest is closed
        to make room; the connection is refused only when no session is
        idle.

        @param protocol: the new connection, kept in L{sessions}.
        """
        if self.perHost[host] >= self.config.maxConnectionsPerIp:
            return "too many connections from your address"
        if self.connections >= self.config.maxConnections:
            idle = [p for p in self.sessions if p.idle]
            if not idle:
                return "too many connections"
            victim = min(idle, key=lambda p: p.lastActive)
            self._forget(victim.clientHost, victim)
            victim.makeRoom()
        self.connections += 1
        self.perHost[host] += 1
        if protocol is not None:
            self.sessions.add(protocol)
        self._checkStress()
        return None

    def release(self, host: str, protocol: Optional[SMTPServerProtocol] = None) -> None:
        """
        A connection admitted by L{admit} has ended.
        """
        self._forget(host, protocol)
        self._checkStress()

    def _forget(self, host: str, protocol: Optional[SMTPServerProtocol]) -> None:
        """
        Give up the slot of a connection admitted by L{admit}.
        """
        self.sessions.discard(protocol)
        self.connections -= 1
        self.perHost[host] -= 1
        if self.perHost[host] <= 0:
            del self.perHost[host]

    def idleLimit(self, limit: float) -> float:
        """
        The idle limit a session has now, given its usual one.
        """
        return min(limit, STRESS_IDLE_LIMIT) if self.stressed else limit

    def _checkStress(self) -> None:
        """
        Enter or leave stress as the count of connections passes 80% of
        C{--max-connections}, say so in the log, and give every idle
        session its new idle limit.
        """
        # More than 80%, in whole numbers.
        stressed = self.connections * 5 > self.config.maxConnections * 4
        if stressed == self.stressed:
            return
        self.stressed = stressed
        if stressed:
            self.log.warn(
                "stress: {n} of {max} connections in use: idle limits drop to {limit:g} s,"
                " and the longest idle session makes room for a new connection",
                n=self.connections, max=self.config.maxConnections, limit=STRESS_IDLE_LIMIT,
            )
        else:
            self.log.info(
                "stress over: {n} of {max} connections in use: idle limits back to"
                " {command:g} s (commands) and {data:g} s (data)",
                n=self.connections, max=self.config.maxConnections,
                command=self.config.commandTimeout, data=self.config.dataTimeout,
            )
        for protocol in list(self.sessions):
            protocol.idleLimitChanged()

    def newSession(self, clientHost: str) -> Session:
        """
        The SMTP dialogue state for a new connection.
        """
        return Session(
            self.config,
            self.validators,
            self.access,
            self.store,
            clientHost,
            self.runBlocking,
            self.clock,
            self.newQueueId,
            tlsAvailable=self.tlsOptions is not None,
            authentication=self.authentication,
            onVerdict=self.observer.recipientDecided,
            lowOnSpace=self.lowOnSpace,
        )
