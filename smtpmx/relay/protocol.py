"""
The line layer of the relay client: an SMTP client protocol on
L{LineReceiver} that parses replies (RFC 5321 section 4.2, enhanced codes
after RFC 2034), hands each to whoever waits for it, and times out every
wait (RFC 5321 section 4.5.3.2).

It knows nothing of transactions: L{smtpmx.relay.transaction} sequences the
commands on top of it and L{smtpmx.relay.pool} keeps idle sessions.  What
they use is its public surface: L{ClientProtocol.expect} and
L{ClientProtocol.send}, L{ClientProtocol.startTLS}, the message data
methods, L{ClientProtocol.inStep}, L{ClientProtocol.error},
L{ClientProtocol.whenClosed}, L{ClientProtocol.close} and
L{ClientProtocol.abort}.
"""

from __future__ import annotations

import re
from collections import deque
from typing import Any, Optional

from OpenSSL import SSL
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IHandshakeListener, IPushProducer
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure
from zope.interface import implementer

from smtpmx.reply import Reply

# Limits on what the next hop may send us: one reply line (RFC 5321
# section 4.5.3.1.5 says 512 octets; real servers send longer), lines in
# one reply, and replies nobody asked for.
MAX_LINE_LENGTH = 8192
MAX_REPLY_LINES = 200
MAX_UNEXPECTED_REPLIES = 100

_REPLY_LINE = re.compile(rb"([2-5][0-9][0-9])([ -]|$)(.*)", re.DOTALL)
_ENHANCED = re.compile(r"([245])\.([0-9]{1,3})\.([0-9]{1,3})(?: |$)")


class SessionError(Exception):
    """
    The session with the next hop cannot go on: the connection failed,
    closed or timed out, or the next hop said something we cannot read.
    C{str()} says what happened.
    """


class TLSFailed(SessionError):
    """
    The TLS handshake after STARTTLS failed or the certificate was
    rejected (RFC 3207 section 4.1).
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


@implementer(IHandshakeListener, IPushProducer)
class ClientProtocol(LineReceiver):
    """
    The client side of an SMTP connection: it parses replies, gives each to
    the oldest L{expect} waiting (or keeps it until one asks: replies to
    pipelined commands come in order, RFC 2920 section 3.1), and times out
    every wait.

    Anything unreadable, a closed connection or a timeout fails every wait,
    present and future, with L{SessionError} (the first one sticks, as
    L{error}), and closes the connection.

    It is also the producer of the message data: L{whenWritable} waits
    while the transport asks us to pause.

    @ivar tls: the TLS version and cipher once STARTTLS succeeded.
    """

    delimiter = b"\n"
    MAX_LENGTH = MAX_LINE_LENGTH

    def __init__(self, reactor) -> None:
        """
        @param reactor: the clock for the timeouts (L{IReactorTime}).
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

    # The state others may read.

    @property
    def error(self) -> Optional[SessionError]:
        """
        Why the session cannot go on, or L{None} while it can.
        """
        return self._error

    @property
    def inStep(self) -> bool:
        """
        Whether the session is up and quiet: no error, not closing, and
        nothing said by the next hop that nobody asked for (a C{421} while
        idle, say).  Only a session in step may be sent a new command
        whose reply is to be trusted.
        """
        return (
            self._error is None
            and self._connected
            and not getattr(self.transport, "disconnecting", False)
            and not self._replies
            and not self._lines
        )

    def whenClosed(self) -> Deferred[None]:
        """
        A L{Deferred} that fires once the connection is lost (at once if it
        was already).
        """
        d: Deferred[None] = Deferred()
        self._closed.addBoth(lambda _: d.callback(None))
        return d

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
            self._fail(TLSFailed(f"TLS handshake failed: {describeFailure(reason)}"))
        else:
            self._fail(SessionError(f"connection closed by the remote host ({describeFailure(reason)})"))
        self._closed.callback(None)

    def lineReceived(self, line: bytes) -> None:
        """
        Add one line to the reply being read; hand on a complete reply
        (RFC 5321 section 4.2.1: every line of a multi-line reply but the
        last has a hyphen after the code).
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

    # The interface for the transaction and the pool.

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
        Start the TLS handshake; the result fires when it is done, or
        fails with L{TLSFailed}.
        """
        if self._error is not None:
            return fail(self._error)
        self._handshake = self._newWait(timeout, "TLS handshake timed out", TLSFailed)
        self.transport.startTLS(contextFactory)
        return self._handshake[0]

    def startData(self) -> None:
        """
        The message data is about to be written: follow the transport's
        flow control (L{whenWritable}) until L{stopData}.
        """
        self.transport.registerProducer(self, True)

    def writeData(self, data: bytes) -> None:
        """
        Write a block of the (already dot-stuffed) message data.
        """
        self.transport.write(data)

    def stopData(self) -> None:
        """
        The message data is written (or abandoned): stop following the
        transport's flow control.
        """
        if self._connected:
            self.transport.unregisterProducer()

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
            timer = self._reactor.callLater(timeout, self.abort)
            self._closed.addBoth(lambda r: timer.cancel() if timer.active() else None)
        return self.whenClosed()

    def abort(self) -> None:
        """
        Drop the connection at once (no truncated message must ever look
        complete to the next hop).
        """
        if self._connected:
            self.transport.abortConnection()

    # Waits: a Deferred and the timer that fails the session if it is
    # not fired in time.

    def _newWait(self, timeout: float, reason: str, kind: type = None) -> tuple[Deferred, Any]:
        """
        A new wait that times out after C{timeout} seconds with C{reason}.
        """
        return Deferred(), self._reactor.callLater(timeout, self._timedOut, reason, kind or SessionError)

    # Failure.

    def _timedOut(self, reason: str, kind: type = SessionError) -> None:
        """
        A wait timed out: fail everything and drop the connection.
        """
        if kind is SessionError and self._handshake is not None:
            kind = TLSFailed
        self._fail(kind(reason))
        self.abort()

    def _protocolError(self, reason: str) -> None:
        """
        The next hop said something we cannot read.
        """
        self._fail(SessionError(f"protocol error: {reason}"))
        self.abort()

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


def describeFailure(reason: Optional[Failure]) -> str:
    """
    A short text for why a connection closed, OpenSSL's error queue made
    readable.
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
