"""
The relay client: one SMTP transaction with one next hop (RFC 5321, with
ESMTP PIPELINING, SIZE, 8BITMIME, SMTPUTF8 and STARTTLS).

L{deliver} connects, greets, upgrades to TLS as C{--relay-tls} says, sends
one copy of the message for every recipient that shares the next hop and
reports what became of each recipient: delivered, a temporary failure (4xx,
or anything that went wrong on the way) or a permanent one (5xx).  It never
raises for anything the network or the next hop does: a refused
connection, a timeout, a garbled reply or a failed TLS handshake become
temporary failures in the L{TransactionResult}.

The protocol is our own small L{LineReceiver} that turns lines into
replies and hands each to whoever waits for it; the sequencing is plain
coroutine code on top of it.  Every wait has a timeout (RFC 5321 section
4.5.3.2), the message is read from disk through the thread runner and
dot-stuffed across chunk boundaries (L{DotStuffer}), and writing it follows
the transport's flow control, so memory stays bounded whatever its size.

Given a L{SessionPool}, L{deliver} keeps a session open after a transaction
that ran to the reply to its data, instead of QUIT, and the next
transaction for the same next hop takes it over after an RSET (Postfix's
connection cache): a queue of messages for one destination then costs a
few connections instead of one each.  A cached session that turns out to be
dead or refuses RSET is dropped and a fresh connection opened in its place,
so the caller never sees the difference.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional

from OpenSSL import SSL
from twisted.internet.defer import Deferred, DeferredList, fail, succeed
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.protocol import Factory
from twisted.internet.interfaces import IHandshakeListener, IPushProducer
from twisted.internet.ssl import (
    Certificate,
    CertificateOptions,
    TLSVersion,
    optionsForClientTLS,
    platformTrust,
    trustRootFromCertificates,
)
from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure
from zope.interface import implementer

from smtpmx.relay.nexthop import NextHop
from smtpmx.relay.stuffing import DotStuffer
from smtpmx.reply import Reply

_log = Logger()

# Postfix's defaults, after RFC 5321 section 4.5.3.2, in seconds.
DEFAULT_TIMEOUTS: Mapping[str, float] = {
    "connect": 30.0,  # TCP connection
    "greeting": 300.0,  # the 220 banner
    "command": 300.0,  # the reply to EHLO, MAIL, RCPT, DATA, STARTTLS
    "tlsHandshake": 300.0,  # the TLS handshake after STARTTLS
    "dataBlock": 180.0,  # the transport taking the next block of the message
    "finalDot": 600.0,  # the reply to the final "."
    "quit": 30.0,  # the reply to QUIT; the outcome is known by then
}

# Bytes of the message read from disk at a time.
CHUNK_SIZE = 64 * 1024

# Limits on what the next hop may send us: one reply line (RFC 5321
# section 4.5.3.1.5 says 512 octets; real servers send longer), lines in
# one reply, and replies nobody asked for.
MAX_LINE_LENGTH = 8192
MAX_REPLY_LINES = 200
MAX_UNEXPECTED_REPLIES = 100

_REPLY_LINE = re.compile(rb"([2-5][0-9][0-9])([ -]|$)(.*)", re.DOTALL)
_ENHANCED = re.compile(r"([245])\.([0-9]{1,3})\.([0-9]{1,3})(?: |$)")

TLS_MODES = ("none", "may", "verify")

# The connection cache (L{SessionPool}): how long an idle session is kept,
# in seconds (Postfix's smtp_connection_cache_time_limit is 2 s, its
# reuse time limit 300 s), how many transactions one connection carries at
# most (smtp_connection_reuse_count_limit), how many idle sessions are kept
# per next hop, and how long stopping waits for the reply to QUIT.
IDLE_TIMEOUT = 5.0
MAX_TRANSACTIONS_PER_CONNECTION = 100
MAX_IDLE_PER_DESTINATION = 10
CLOSE_QUIT_TIMEOUT = 5.0


@dataclass(frozen=True)
class RecipientResult:
    """
    What became of one recipient.

    @ivar code: the reply code, the next hop's or one of ours (C{451}) for
        a failure on our side of the connection.
    @ivar enhanced: the enhanced status code (RFC 3463), C{"x.y.z"}, or
        L{None} if the reply had none.
    @ivar text: the reply text as sent after the code, enhanced code
        included, the lines of a multi-line reply joined by spaces: what a
        log line or a bounce quotes after the code.
    @ivar permanent: L{None} if delivered, C{True} for a permanent failure
        (5xx), C{False} for a temporary one.
    """

    code: int
    enhanced: Optional[str]
    text: str
    permanent: Optional[bool]


@dataclass
class TransactionResult:
    """
    The outcome of one transaction with one next hop.

    @ivar recipients: every recipient given to L{deliver}, as given, to its
        L{RecipientResult}.
    @ivar tls: the TLS protocol version and cipher (C{"TLSv1.3
        TLS_AES_256_GCM_SHA384"}), or L{None} for a session in clear.
    @ivar verified: whether the next hop's certificate was verified to
        name it.
    @ivar remoteMta: the next hop's name, for logs and bounces.
    @ivar connected: whether an SMTP session fit for a transaction was
        established.  C{False} (no connection, no greeting, EHLO/HELO
        refused, TLS required but failed) means the next hop never saw the
        message: try the next one.  Every recipient is then a temporary
        failure.
    @ivar error: for C{connected=False}, why.
    @ivar connectionUse: which transaction of its connection this was: 1
        on a fresh connection, more on one taken from a L{SessionPool}.
    """

    recipients: dict[str, RecipientResult] = field(default_factory=dict)
    tls: Optional[str] = None
    verified: bool = False
    remoteMta: str = ""
    connected: bool = True
    error: Optional[str] = None
    connectionUse: int = 1


class SessionError(Exception):
    """
    The session with the next hop cannot go on: the connection failed,
    closed or timed out, or the next hop said something we cannot read.
    C{str()} says what happened.
    """


class _TLSFailed(SessionError):
    """
    The TLS handshake after STARTTLS failed or the certificate was
    rejected.
    """


def parseEnhanced(code: int, text: str) -> tuple[Optional[str], str]:
    """
    Split an enhanced status code (RFC 2034 section 4) off the start of a
    reply line; it is only taken as one when its class matches the reply
    code's first digit.

    @return: the enhanced code or L{None}, and the rest of the text.
    """
    match = _ENHANCED.match(text)
    if match is None or match.group(1) != str(code)[0]:
        return None, text
    return ".".join(match.group(1, 2, 3)), text[match.end() :]


def _outcome(reply: Reply) -> Optional[bool]:
    """
    The C{permanent} value for a reply: L{None} for 2xx, C{True} for 5xx,
    C{False} for anything else.
    """
    if 200 <= reply.code < 300:
        return None
    return reply.code >= 500


def _result(reply: Reply, permanent: Optional[bool] = ...) -> RecipientResult:
    """
    A recipient's result from a reply of the next hop.
    """
    if permanent is ...:
        permanent = _outcome(reply)
    text = " ".join(reply.text.split("\n"))
    if reply.enhanced:
        text = f"{reply.enhanced} {text}".rstrip()
    return RecipientResult(reply.code, reply.enhanced, text, permanent)


def _localFailure(reason: str, enhanced: str = "4.4.2", code: int = 451) -> RecipientResult:
    """
    A temporary failure for something that went wrong on our side of the
    reply.
    """
    return RecipientResult(code, enhanced, f"{enhanced} {reason}", False)


@implementer(IHandshakeListener, IPushProducer)
class ClientProtocol(LineReceiver):
    """
    The line layer of the relay client: it parses replies, gives each to
    the oldest L{expect} waiting (or keeps it until one asks: replies to
    pipelined commands come in order), and times out every wait.

    Anything unreadable, a closed connection or a timeout fails every wait,
    present and future, with L{SessionError}, and closes the connection.

    It is also the producer of the message data: L{whenWritable} waits
    while the transport asks us to pause.

    @ivar tls: the TLS version and cipher once STARTTLS succeeded.
    """

    delimiter = b"\n"
    MAX_LENGTH = MAX_LINE_LENGTH

    def __init__(self, reactor) -> None:
        """
        @param reactor: the clock for the timeouts.
        """
        self._reactor = reactor
        self._lines: list[tuple[int, str]] = []
        self._replies: deque[Reply] = deque()
        self._waiters: deque[tuple[Deferred, Any]] = deque()
        self._writable: Optional[tuple[Deferred, Any]] = None
        self._handshake: Optional[tuple[Deferred, Any]] = None
        self._error: Optional[SessionError] = None
        self._paused = False
        self._closed: Deferred = Deferred()
        self._connected = False
        self.tls: Optional[str] = None

    # Connection events.

    def connectionMade(self) -> None:
        """
        Note that the connection is up.  Nagle's algorithm is off: every
        write is a whole command or the end of a data block, and waiting
        for an ACK would stall each transaction by a delayed-ACK period.
        """
        self._connected = True
        setNoDelay = getattr(self.transport, "setTcpNoDelay", None)
        if setNoDelay is not None:
            setNoDelay(True)

    def connectionLost(self, reason: Failure = None) -> None:
        """
        Fail every wait with why the connection went.
        """
        self._connected = False
        if self._handshake is not None:
            self._fail(_TLSFailed(f"TLS handshake failed: {_describe(reason)}"))
        else:
            self._fail(SessionError(f"connection closed by the remote host ({_describe(reason)})"))
        self._closed.callback(None)

    def lineReceived(self, line: bytes) -> None:
        """
        Add one line to the reply being read; hand on a complete reply.
        """
        if self._error is not None:
            return
        if line.endswith(b"\r"):
            line = line[:-1]
        match = _REPLY_LINE.fullmatch(line)
        if match is None:
            self._protocolError(f"garbled reply line {line[:80]!r}")
            return
        code = int(match.group(1))
        text = match.group(3).decode("utf-8", "replace")
        if self._lines and self._lines[0][0] != code:
            self._protocolError(f"reply lines with different codes {self._lines[0][0]} and {code}")
            return
        self._lines.append((code, text))
        if match.group(2) == b"-":
            if len(self._lines) > MAX_REPLY_LINES:
                self._protocolError("reply too long")
            return
        lines, self._lines = self._lines, []
        enhanced, first = parseEnhanced(code, lines[0][1])
        texts = [first]
        for _, line in lines[1:]:
            more, rest = parseEnhanced(code, line)
            texts.append(rest if enhanced and more == enhanced else line)
        reply = Reply(code, enhanced, "\n".join(texts))
        if self._waiters:
            _release(self._waiters.popleft(), reply)
        elif len(self._replies) >= MAX_UNEXPECTED_REPLIES:
            self._protocolError("too many replies nobody asked for")
        else:
            self._replies.append(reply)

    def lineLengthExceeded(self, line: bytes) -> None:
        """
        A reply line longer than any server sends: give up.
        """
        self._protocolError("reply line too long")

    def handshakeCompleted(self) -> None:
        """
        The TLS handshake is done: note the version and cipher and let the
        session go on.
        """
        tlsProtocol = getattr(self.transport, "protocol", None)
        if getattr(tlsProtocol, "disconnecting", False):
            # The certificate was rejected after the handshake proper; the
            # connection is being aborted and connectionLost says why.
            return
        try:
            connection = self.transport.getHandle()
            self.tls = f"{connection.get_protocol_version_name()} {connection.get_cipher_name()}"
        except Exception:
            self.tls = "TLS"
        if self._handshake is not None:
            wait, self._handshake = self._handshake, None
            _release(wait)

    # Producer of the message data.

    def pauseProducing(self) -> None:
        """
        The transport's buffer is full: stop writing.
        """
        self._paused = True

    def resumeProducing(self) -> None:
        """
        The transport can take more.
        """
        self._paused = False
        if self._writable is not None:
            wait, self._writable = self._writable, None
            _release(wait)

    def stopProducing(self) -> None:
        """
        The transport is going away; connectionLost will say so.
        """

    # The interface for the session.

    def expect(self, timeout: float, what: str) -> Deferred[Reply]:
        """
        The next reply.

        @param timeout: seconds to wait for it.
        @param what: what it answers, for the reason of a timeout.
        """
        if self._error is not None:
            return fail(self._error)
        if self._replies:
            return succeed(self._replies.popleft())
        wait = self._newWait(timeout, f"timeout waiting for reply to {what}")
        self._waiters.append(wait)
        return wait[0]

    def send(self, *commands: str) -> None:
        """
        Send one or more commands in one write (pipelining, RFC 2920).
        """
        self.transport.write(b"".join(c.encode("utf-8") + b"\r\n" for c in commands))

    def startTLS(self, contextFactory, timeout: float) -> Deferred[None]:
        """
        Start the TLS handshake; the result fires when it is done.
        """
        if self._error is not None:
            return fail(self._error)
        self._handshake = self._newWait(timeout, "TLS handshake timed out", _TLSFailed)
        self.transport.startTLS(contextFactory)
        return self._handshake[0]

    def whenWritable(self, timeout: float) -> Deferred[None]:
        """
        Fires once the transport takes more data (at once unless paused).
        """
        if self._error is not None:
            return fail(self._error)
        if not self._paused:
            return succeed(None)
        self._writable = self._newWait(timeout, "timeout sending message content")
        return self._writable[0]

    def close(self, timeout: float = 5.0) -> Deferred[None]:
        """
        Close the connection; fires once it is closed (aborted if it does
        not close in time).
        """
        if self._connected:
            self.transport.loseConnection()
            timer = self._reactor.callLater(timeout, self._abort)
            self._closed.addBoth(lambda r: timer.cancel() if timer.active() else None)
        d: Deferred[None] = Deferred()
        self._closed.addBoth(lambda _: d.callback(None))
        return d

    # Waits: a Deferred and the timer that fails the session if it is
    # not fired in time.

    def _newWait(self, timeout: float, reason: str, kind: type = None) -> tuple[Deferred, Any]:
        """
        A new wait that times out after C{timeout} seconds with C{reason}.
        """
        return Deferred(), self._reactor.callLater(timeout, self._timedOut, reason, kind or SessionError)

    # Failure.

    def _abort(self) -> None:
        """
        Drop the connection at once.
        """
        if self._connected:
            self.transport.abortConnection()

    def _timedOut(self, reason: str, kind: type = SessionError) -> None:
        """
        A wait timed out: fail everything and drop the connection.
        """
        if kind is SessionError and self._handshake is not None:
            kind = _TLSFailed
        self._fail(kind(reason))
        self._abort()

    def _protocolError(self, reason: str) -> None:
        """
        The next hop said something we cannot read.
        """
        self._fail(SessionError(f"protocol error: {reason}"))
        self._abort()

    def _fail(self, error: SessionError) -> None:
        """
        Fail every wait, now and later, with C{error} (the first error
        sticks).
        """
        if self._error is None:
            self._error = error
        pending = list(self._waiters)
        self._waiters.clear()
        for slot in ("_handshake", "_writable"):
            if getattr(self, slot) is not None:
                pending.append(getattr(self, slot))
                setattr(self, slot, None)
        for waiter, timer in pending:
            if timer.active():
                timer.cancel()
            waiter.errback(self._error)


def _release(wait: tuple[Deferred, Any], result: Any = None) -> None:
    """
    End a wait of L{ClientProtocol}: stop its timer and fire it.
    """
    waiter, timer = wait
    timer.cancel()
    waiter.callback(result)


def _describe(reason: Optional[Failure]) -> str:
    """
    A short text for why a connection closed.
    """
    if reason is None:
        return "no reason"
    value = reason.value
    if isinstance(value, SSL.Error) and value.args and isinstance(value.args[0], list):
        # OpenSSL's error queue: [(library, function, reason), ...].
        text = "; ".join(str(entry[-1]) for entry in value.args[0] if entry) or "TLS error"
    else:
        text = str(value) or type(value).__name__
    return text if len(text) <= 300 else text[:300] + "..."


def _readCertificates(path: str) -> list[Certificate]:
    """
    Every certificate in a PEM file (blocking: run it in a thread).
    """
    with open(path, "rb") as f:
        data = f.read()
    marker = b"-----BEGIN CERTIFICATE-----"
    blocks = [marker + part for part in data.split(marker)[1:]]
    certificates = [Certificate.loadPEM(block) for block in blocks]
    if not certificates:
        raise ValueError("no certificate in it")
    return certificates


def _readChunk(f, size: int) -> bytes:
    """
    The next C{size} bytes of an open file (blocking).
    """
    return f.read(size)


def _close(f) -> None:
    """
    Close an open file (blocking).
    """
    f.close()


def _isAscii(text: str) -> bool:
    """
    Whether C{text} is plain ASCII.
    """
    return text.isascii()


class _Transaction:
    """
    One call of L{deliver}: its parameters and the results so far.
    """

    def __init__(
        self,
        reactor,
        hop: NextHop,
        heloName: str,
        sender: str,
        recipients: list[str],
        messageFile: str,
        size: int,
        runBlocking: Callable[..., Deferred],
        tlsMode: str,
        trustRoot: Optional[str],
        timeouts: Mapping[str, float],
        pool: Optional[SessionPool] = None,
    ) -> None:
        """
        The parameters of L{deliver}; duplicate recipients are sent once.
        """
        self.reactor = reactor
        self.hop = hop
        self.heloName = heloName
        self.sender = sender
        self.recipients = list(dict.fromkeys(recipients))
        self.messageFile = messageFile
        self.size = size
        self.runBlocking = runBlocking
        self.tlsMode = tlsMode
        self.trustRoot = trustRoot
        self.timeouts = timeouts
        self.pool = pool
        # Whether DATA went out in the last transact() (past it, a lost
        # connection may have delivered the message), and whether the
        # connection failed in it.
        self._dataSent = False
        self._lost = False
        # Sessions are shared only between transactions that would have
        # set them up the same way.
        self.key = (hop.host, hop.port, hop.name, tlsMode, heloName, trustRoot)
        self.label = f"{hop.name}[{hop.host}]:{hop.port}"

    def _unconnected(self, error: str, result: Optional[TransactionResult] = None) -> TransactionResult:
        """
        The result of a session that never got to MAIL: every recipient a
        temporary failure, and C{connected=False} so the next hop is tried.
        """
        result = result or TransactionResult(remoteMta=self.hop.name)
        result.connected = False
        result.error = error
        failure = _localFailure(error, "4.4.1")
        result.recipients = {r: failure for r in self.recipients}
        return result

    async def run(self) -> TransactionResult:
        """
        The transaction, with one retry in clear when opportunistic TLS
        fails its handshake (as Postfix does: a broken TLS stack at the next
        hop must not stop mail that may go in clear).
        """
        if self.tlsMode not in TLS_MODES:
            return self._unconnected(f"unknown TLS mode {self.tlsMode!r}")
        if self.pool is not None:
            result = await self.reuse()
            if result is not None:
                return result
        context = None
        if self.tlsMode == "verify":
            try:
                if self.trustRoot is None:
                    root = platformTrust()
                else:
                    root = trustRootFromCertificates(
                        await self.runBlocking(_readCertificates, self.trustRoot)
                    )
                context = optionsForClientTLS(
                    self.hop.name,
                    trustRoot=root,
                    extraCertificateOptions={"raiseMinimumTo": TLSVersion.TLSv1_2},
                )
            except Exception as e:
                _log.failure("cannot set up TLS for {hop}", hop=self.label)
                return self._unconnected(f"cannot load the CA certificates {self.trustRoot}: {e}")
        elif self.tlsMode == "may":
            context = CertificateOptions(verify=False, raiseMinimumTo=TLSVersion.TLSv1_2)
        try:
            return await self.session(context)
        except _TLSFailed as e:
            if self.tlsMode != "may":
                return self._unconnected(str(e))
            _log.info("{hop}: {why}; trying again without TLS", hop=self.label, why=str(e))
        return await self.session(None)

    async def reuse(self) -> Optional[TransactionResult]:
        """
        The transaction on a session from the pool, after an RSET.

        A cached session that is dead, does not answer RSET with 250, or
        is lost before the message was sent (so nothing can have been
        delivered) is dropped and the next one tried.

        @return: the result, or L{None} when no cached session would do:
            the caller opens a fresh connection.
        """
        while True:
            cached = self.pool.take(self.key)
            if cached is None:
                return None
            protocol = cached.protocol
            try:
                protocol.send("RSET")
                reply = await protocol.expect(self.timeouts["command"], "RSET")
            except SessionError as e:
                _log.debug("{hop}: cached session lost ({why}); not reused", hop=self.label, why=str(e))
                self.pool.discard(cached)
                continue
            if reply.code != 250:
                _log.debug("{hop}: RSET refused ({reply}); cached session not reused", hop=self.label, reply=str(reply))
                self.pool.discard(cached)
                continue
            result = TransactionResult(
                remoteMta=self.hop.name, tls=cached.tls, verified=cached.verified,
                connectionUse=cached.transactions + 1,
            )
            try:
                finished = await self.transact(protocol, cached.extensions, result)
            except Exception:
                self.pool.discard(cached)
                raise
            if self._lost and not self._dataSent:
                _log.debug("{hop}: cached session lost before DATA; trying afresh", hop=self.label)
                self.pool.discard(cached)
                continue
            self.pool.release(cached, finished and _reusable(result))
            return result

    async def session(self, context) -> TransactionResult:
        """
        One connection: greeting, EHLO, STARTTLS, the transaction, and QUIT
        (or, with a pool, the session given to it).

        @param context: the TLS client options, or L{None} not to use TLS.
        @raise _TLSFailed: opportunistic TLS failed (the caller retries in
            clear).
        """
        t = self.timeouts
        result = TransactionResult(remoteMta=self.hop.name)
        protocol = ClientProtocol(self.reactor)
        pooled = False
        endpoint = HostnameEndpoint(self.reactor, self.hop.host, self.hop.port, timeout=t["connect"])
        connecting = endpoint.connect(_OneConnection(protocol))
        timer = self.reactor.callLater(t["connect"] + 1, connecting.cancel)
        try:
            await connecting
        except Exception as e:
            return self._unconnected(f"connect to {self.label} failed: {str(e) or type(e).__name__}")
        finally:
            if timer.active():
                timer.cancel()
        try:
            try:
                extensions = await self.greet(protocol, context, result)
            except _TLSFailed:
                raise
            except SessionError as e:
                # Nothing was sent yet: the next hop may do better.
                return self._unconnected(f"{self.label}: {e}", result)
            except _Refused as e:
                return self._unconnected(str(e), result)
            finished = await self.transact(protocol, extensions, result)
            if self.pool is None:
                await self.quit(protocol)
                return result
            cached = _PooledSession(
                self.key, protocol, extensions, result.tls, result.verified, self.timeouts["quit"]
            )
            protocol._closed.addBoth(lambda ignored: self.pool._lost(cached))
            pooled = True
            self.pool.release(cached, finished and _reusable(result))
            return result
        except _TLSFailed:
            raise
        except Exception:
            # A bug of ours: no message was sent, so it is safe to retry.
            _log.failure("relay session with {hop} failed", hop=self.label)
            for r in self.recipients:
                if r not in result.recipients:
                    result.recipients[r] = _localFailure("internal error in the relay client", "4.3.0")
            return result
        finally:
            if not pooled:
                await protocol.close()

    async def greet(self, protocol: ClientProtocol, context, result: TransactionResult) -> dict[str, str]:
        """
        Greeting, EHLO (HELO if EHLO is refused), STARTTLS and EHLO again.

        @return: the extensions offered, C{KEYWORD: parameters}.
        @raise _Refused: the next hop turned us away.
        """
        t = self.timeouts
        greeting = await protocol.expect(t["greeting"], "initial greeting")
        if greeting.code != 220:
            raise _Refused(f"{self.label} refused to talk to us: {_result(greeting).code} {_result(greeting).text}")
        extensions = await self.hello(protocol)
        if context is not None and "STARTTLS" in extensions:
            protocol.send("STARTTLS")
            reply = await protocol.expect(t["command"], "STARTTLS")
            if reply.code == 220:
                await protocol.startTLS(context, t["tlsHandshake"])
                result.tls = protocol.tls
                result.verified = self.tlsMode == "verify"
                extensions = await self.hello(protocol)
            elif self.tlsMode == "verify":
                raise _Refused(f"{self.label} refused STARTTLS: {reply.code} {_result(reply).text}")
            else:
                _log.info("{hop} refused STARTTLS ({reply}); going on in clear", hop=self.label, reply=str(reply))
        if self.tlsMode == "verify" and result.tls is None:
            raise _Refused(f"TLS is required but {self.label} does not offer STARTTLS")
        return extensions

    async def hello(self, protocol: ClientProtocol) -> dict[str, str]:
        """
        EHLO, or HELO when EHLO gets a 5xx (RFC 5321 section 3.2).

        @return: the extensions offered (none after HELO).
        @raise _Refused: both were refused, or EHLO got a 4xx.
        """
        protocol.send(f"EHLO {self.heloName}")
        reply = await protocol.expect(self.timeouts["command"], "EHLO")
        if reply.code == 250:
            extensions = {}
            for line in reply.text.split("\n")[1:]:
                keyword, _, params = line.strip().partition(" ")
                if keyword:
                    extensions[keyword.upper()] = params.strip()
            return extensions
        if 500 <= reply.code < 600:
            protocol.send(f"HELO {self.heloName}")
            reply = await protocol.expect(self.timeouts["command"], "HELO")
            if reply.code == 250:
                return {}
        raise _Refused(f"{self.label} refused our greeting: {reply.code} {_result(reply).text}")

    async def transact(self, protocol: ClientProtocol, extensions: dict[str, str], result: TransactionResult) -> bool:
        """
        MAIL, RCPT, DATA and the message; fills C{result.recipients}, for
        every recipient, whatever happens to the connection.

        @return: whether the transaction ran to the reply to the end of
            data, leaving the session fit for another one (the connection
            cache keeps only those).
        """
        t = self.timeouts
        results = result.recipients
        stage = "MAIL FROM"
        self._dataSent = False
        self._lost = False
        try:
            parameters = []
            if "SIZE" in extensions and self.size >= 0:
                parameters.append(f"SIZE={self.size}")
            if "8BITMIME" in extensions:
                parameters.append("BODY=8BITMIME")
            addresses = [self.sender, *self.recipients]
            if not all(map(_isAscii, addresses)):
                if "SMTPUTF8" not in extensions:
                    # RFC 6531 section 3.2: nothing else can carry them.
                    failure = RecipientResult(
                        553, "5.6.7", f"5.6.7 {self.label} does not support SMTPUTF8 (RFC 6531)", True
                    )
                    for r in self.recipients:
                        results[r] = failure
                    return False
                parameters.append("SMTPUTF8")
            mail = " ".join([f"MAIL FROM:<{self.sender}>", *parameters])
            rcpts = [f"RCPT TO:<{r}>" for r in self.recipients]
            pipelining = "PIPELINING" in extensions
            if pipelining:
                protocol.send(mail, *rcpts)
            else:
                protocol.send(mail)
            reply = await protocol.expect(t["command"], "MAIL FROM")
            if not 200 <= reply.code < 300:
                for r in self.recipients:
                    results[r] = _result(reply)
                if pipelining:
                    for r in self.recipients:
                        await protocol.expect(t["command"], "RCPT TO")
                return False
            accepted = []
            for r, command in zip(self.recipients, rcpts):
                stage = f"RCPT TO:<{r}>"
                if not pipelining:
                    protocol.send(command)
                reply = await protocol.expect(t["command"], stage)
                results[r] = _result(reply)
                if 200 <= reply.code < 300:
                    accepted.append(r)
            if not accepted:
                return False
            for r in accepted:
                del results[r]

            stage = "DATA"
            self._dataSent = True
            protocol.send("DATA")
            reply = await protocol.expect(t["command"], "DATA")
            if reply.code != 354:
                permanent = True if reply.code >= 500 else False
                for r in accepted:
                    results[r] = _result(reply, permanent)
                return False

            stage = "sending message content"
            await self.sendMessage(protocol)
            stage = "end of data"
            reply = await protocol.expect(t["finalDot"], "end of data")
            for r in accepted:
                results[r] = _result(reply)
            return True
        except SessionError as e:
            failure = _localFailure(f"lost connection with {self.label} while {stage}: {e}")
            for r in self.recipients:
                if r not in results:
                    results[r] = failure
            self._lost = True
            return False

    async def sendMessage(self, protocol: ClientProtocol) -> None:
        """
        Write the message file, dot-stuffed, then the end of data,
        following the transport's flow control.

        @raise SessionError: the connection failed, or the file cannot be
            read (the connection is then dropped, so that no truncated copy
            is ever delivered).
        """
        t = self.timeouts
        stuffer = DotStuffer()
        try:
            f = await self.runBlocking(open, self.messageFile, "rb")
        except OSError as e:
            protocol._abort()
            raise SessionError(f"cannot read the queued message: {e}") from None
        transport = protocol.transport
        transport.registerProducer(protocol, True)
        try:
            while True:
                try:
                    chunk = await self.runBlocking(_readChunk, f, CHUNK_SIZE)
                except OSError as e:
                    protocol._abort()
                    raise SessionError(f"cannot read the queued message: {e}") from None
                if protocol._error is not None:
                    raise protocol._error
                if not chunk:
                    break
                transport.write(stuffer.feed(chunk))
                await protocol.whenWritable(t["dataBlock"])
            transport.write(stuffer.end())
        finally:
            if protocol._connected:
                transport.unregisterProducer()
            try:
                await self.runBlocking(_close, f)
            except OSError:
                pass

    async def quit(self, protocol: ClientProtocol) -> None:
        """
        Say goodbye; what the next hop answers no longer matters.
        """
        try:
            protocol.send("QUIT")
            await protocol.expect(self.timeouts["quit"], "QUIT")
        except SessionError:
            pass


def _reusable(result: TransactionResult) -> bool:
    """
    Whether a session may carry another transaction after this one: not
    after a C{421}, with which the next hop says it is closing the
    connection (RFC 5321 section 3.8).
    """
    return all(r.code != 421 for r in result.recipients.values())


class _Refused(Exception):
    """
    The next hop turned the session away before MAIL.
    """


class _OneConnection(Factory):
    """
    Hands out one protocol instance, quietly: one log line per relay
    attempt is enough, without "Starting factory" around it.
    """

    noisy = False

    def __init__(self, protocol) -> None:
        self._protocol = protocol

    def buildProtocol(self, addr):
        return self._protocol


class _PooledSession:
    """
    An SMTP session fit for transactions: the connection after the
    greeting, EHLO and STARTTLS, with what they established.

    @ivar key: the L{SessionPool} key it belongs under.
    @ivar extensions: the extensions the next hop offered (after STARTTLS).
    @ivar tls: the TLS version and cipher, or L{None} in clear.
    @ivar verified: whether the certificate was verified.
    @ivar quitTimeout: seconds to wait for the reply to QUIT.
    @ivar transactions: transactions finished on it so far.
    @ivar timer: the idle timer while it waits in the pool.
    """

    def __init__(self, key: tuple, protocol: ClientProtocol, extensions: dict[str, str],
                 tls: Optional[str], verified: bool, quitTimeout: float) -> None:
        self.key = key
        self.protocol = protocol
        self.extensions = extensions
        self.tls = tls
        self.verified = verified
        self.quitTimeout = quitTimeout
        self.transactions = 0
        self.timer = None

    def usable(self) -> bool:
        """
        Whether the connection is up and quiet: no error, not closing, and
        nothing said by the next hop that nobody asked for (a C{421} while
        idle, say).
        """
        protocol = self.protocol
        return (
            protocol._error is None
            and protocol._connected
            and not getattr(protocol.transport, "disconnecting", False)
            and not protocol._replies
            and not protocol._lines
        )


class SessionPool:
    """
    The connection cache of the relay client: idle SMTP sessions, by next
    hop, that L{deliver} takes over for the next transaction instead of
    opening a connection.

    A session is kept only after a transaction that ran to the reply to
    its data (and no C{421}), for C{idleTimeout} seconds and C{maxTransactions}
    transactions at most; then, on any error, and when the pool is closed,
    it is sent QUIT and closed.

    @ivar closed: whether L{close} was called; sessions given back after
        that are closed at once.
    """

    def __init__(
        self,
        reactor,
        idleTimeout: float = IDLE_TIMEOUT,
        maxTransactions: int = MAX_TRANSACTIONS_PER_CONNECTION,
        maxIdle: int = MAX_IDLE_PER_DESTINATION,
    ) -> None:
        """
        @param reactor: the clock for the idle timers (L{IReactorTime}).
        @param idleTimeout: seconds an idle session is kept.
        @param maxTransactions: transactions one connection carries at most.
        @param maxIdle: idle sessions kept for one next hop at most.
        """
        self._reactor = reactor
        self.idleTimeout = idleTimeout
        self.maxTransactions = maxTransactions
        self.maxIdle = maxIdle
        self.closed = False
        self._idle: dict[tuple, list[_PooledSession]] = {}
        self._closing: set[Deferred] = set()

    def idleCount(self, key: Optional[tuple] = None) -> int:
        """
        How many sessions wait in the pool, for C{key} or in all.
        """
        if key is not None:
            return len(self._idle.get(key, ()))
        return sum(map(len, self._idle.values()))

    def take(self, key: tuple) -> Optional[_PooledSession]:
        """
        The most recently used idle session for C{key} that is still up,
        out of the pool, or L{None}.  Dead ones met on the way are closed.
        """
        idle = self._idle.get(key)
        while idle:
            session = idle.pop()
            self._stopTimer(session)
            if session.usable():
                if not idle:
                    del self._idle[key]
                return session
            self.discard(session)
        self._idle.pop(key, None)
        return None

    def release(self, session: _PooledSession, reusable: bool) -> None:
        """
        Give back a session after a transaction: kept idle if C{reusable}
        and within the limits, else sent QUIT and closed.
        """
        session.transactions += 1
        idle = self._idle.get(session.key, [])
        if (
            self.closed
            or not reusable
            or not session.usable()
            or session.transactions >= self.maxTransactions
            or len(idle) >= self.maxIdle
        ):
            self.discard(session)
            return
        session.timer = self._reactor.callLater(self.idleTimeout, self._expired, session)
        self._idle[session.key] = idle
        idle.append(session)

    def discard(self, session: _PooledSession, quitTimeout: Optional[float] = None) -> Deferred[None]:
        """
        QUIT (if the connection is still fit for it) and close a session
        that is not in the pool; L{close} waits for it.

        @return: a L{Deferred} that fires once the connection is closed.
        """
        self._stopTimer(session)
        timeout = session.quitTimeout if quitTimeout is None else min(quitTimeout, session.quitTimeout)
        d = Deferred.fromCoroutine(_quitAndClose(session.protocol, timeout))
        self._closing.add(d)

        def closed(result):
            self._closing.discard(d)
            return result

        d.addBoth(closed)
        return d

    def close(self) -> Deferred[None]:
        """
        Close every idle session (QUIT, then close) and keep none from now
        on.

        @return: a L{Deferred} that fires once every connection the pool
            was closing is closed.
        """
        self.closed = True
        idle, self._idle = self._idle, {}
        for sessions in idle.values():
            for session in sessions:
                self.discard(session, CLOSE_QUIT_TIMEOUT)
        if not self._closing:
            return succeed(None)
        return DeferredList(list(self._closing)).addCallback(lambda _: None)

    def _lost(self, session: _PooledSession) -> None:
        """
        A connection closed: if it was idle, forget it.
        """
        idle = self._idle.get(session.key)
        if idle and session in idle:
            idle.remove(session)
            self._stopTimer(session)
            if not idle:
                del self._idle[session.key]

    def _expired(self, session: _PooledSession) -> None:
        """
        A session was idle too long: out of the pool, QUIT and close.
        """
        session.timer = None
        idle = self._idle.get(session.key)
        if idle and session in idle:
            idle.remove(session)
            if not idle:
                del self._idle[session.key]
        self.discard(session)

    @staticmethod
    def _stopTimer(session: _PooledSession) -> None:
        """
        Cancel a session's idle timer, if running.
        """
        if session.timer is not None and session.timer.active():
            session.timer.cancel()
        session.timer = None


async def _quitAndClose(protocol: ClientProtocol, timeout: float) -> None:
    """
    Say QUIT on a connection still up and in step (no reply pending that
    nobody asked for), wait for the reply, and close it.
    """
    if protocol._error is None and protocol._connected and not protocol._replies and not protocol._lines:
        protocol.send("QUIT")
        try:
            await protocol.expect(timeout, "QUIT")
        except SessionError:
            pass
    await protocol.close()


def deliver(
    reactor,
    hop: NextHop,
    heloName: str,
    sender: str,
    recipients: list[str],
    messageFile: str,
    size: int,
    runBlocking: Callable[..., Deferred],
    tlsMode: str = "may",
    trustRoot: Optional[str] = None,
    timeouts: Optional[Mapping[str, float]] = None,
    *,
    pool: Optional[SessionPool] = None,
) -> Deferred[TransactionResult]:
    """
    Deliver one message to one next hop for some recipients, in one
    transaction.

    @param reactor: the reactor to connect with and time out on
        (L{IReactorTCP}, L{IReactorTime}).
    @param hop: where to connect, and the name a certificate must carry.
    @param heloName: our name for EHLO/HELO.
    @param sender: the reverse-path without brackets; C{""} is the null
        path C{<>}.
    @param recipients: the forward-paths without brackets, sent exactly as
        given (case kept).
    @param messageFile: the stored message (LF line endings).
    @param size: its size, announced with C{SIZE=} when offered.
    @param runBlocking: runs a blocking callable off the reactor thread and
        returns a L{Deferred} of its result (C{deferToThread}-like).
    @param tlsMode: C{"none"}: never STARTTLS; C{"may"}: STARTTLS when
        offered, certificate not checked, in clear if the handshake fails;
        C{"verify"}: STARTTLS required and the certificate must name
        C{hop.name}, or every recipient is a temporary failure and nothing
        is sent in clear.
    @param trustRoot: a PEM file of CA certificates for C{"verify"}, or
        L{None} for the system's.
    @param timeouts: overrides of L{DEFAULT_TIMEOUTS}.
    @param pool: the connection cache: a session is taken from it (after
        RSET) when one for this next hop waits there, and given to it
        after the transaction instead of QUIT.  Without it every call has
        a connection of its own.

    @return: a L{Deferred} that fires with a L{TransactionResult} holding
        every recipient; it never fails.
    """
    merged = dict(DEFAULT_TIMEOUTS)
    merged.update(timeouts or {})
    transaction = _Transaction(
        reactor, hop, heloName, sender, recipients, messageFile, size, runBlocking, tlsMode, trustRoot, merged,
        pool,
    )

    return Deferred.fromCoroutine(_safely(transaction))


async def _safely(transaction: _Transaction) -> TransactionResult:
    """
    Run a transaction; a bug of ours becomes a temporary failure for every
    recipient, never an exception for the caller.
    """
    try:
        return await transaction.run()
    except Exception:
        _log.failure("relay transaction with {hop} failed", hop=transaction.label)
        result = TransactionResult(remoteMta=transaction.hop.name)
        failure = _localFailure("internal error in the relay client", "4.3.0")
        result.recipients = {r: failure for r in transaction.recipients}
        return result
