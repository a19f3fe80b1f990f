"""
The built-in message filter C{rspamd[:URL]}: asks rspamd's normal worker
(C{http://127.0.0.1:11333} by default) for its verdict on a message.

rspamd's protocol is HTTP (RFC 9110, RFC 9112): the message is C{POST}ed
to C{/checkv2}, the envelope goes in request header fields (C{IP},
C{Helo}, C{From}, one C{Rcpt} per recipient, C{Queue-Id}, C{Hostname},
C{MTA-Name}), and the reply is a JSON object (RFC 8259) whose C{action}
says what to do.  The body is streamed from the spooled file, read in
chunks off the reactor thread, never whole in memory; a message of at most
L{CHUNK_SIZE} bytes is read in one go, in the thread hop that opens it, and
leaves with the request's head in one write.  Requests go through
Twisted's own HTTP client with a persistent connection pool, so a server
that keeps connections open gets one connection reused for many checks.

rspamd's actions become verdicts (C{docs/plugins.rst}): C{reject} is
C{550 5.7.1}, C{soft reject} and C{greylist} are C{451 4.7.1}, C{add
header}, C{rewrite subject}, C{quarantine} and C{discard} file the message
as junk with C{X-Spam: Yes} (a message is never silently dropped),
anything else (C{no action}, a site's own actions) delivers it; every
delivered copy carries C{X-Spam-Action} and C{X-Spam-Score}.  A failure to get a usable answer fails the L{Deferred},
and the filter chain applies C{--filter-failure}.
"""

from __future__ import annotations

import json
import math
from typing import Callable, Optional
from urllib.parse import urlsplit, urlunsplit

from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.python.failure import Failure
from twisted.logger import Logger
from twisted.plugin import IPlugin
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.endpoints import (
    HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint, wrapClientTLS,
)
from twisted.internet.error import ConnectingCancelledError
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Protocol
from twisted.web.client import (
    Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool, ResponseDone, ResponseFailed,
    ResponseNeverReceived,
)
from twisted.web.iweb import IAgentEndpointFactory
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer, IResponse
from zope.interface import implementer

from smtpmx.filtering import Accept, Junk, Reject
from smtpmx.interfaces import IFilterableMessage, IMessageFilter, IMessageFilterFactory

DEFAULT_URL = "http://127.0.0.1:11333"

# How much of the spooled message is read and sent at a time.  A message
# no bigger is read whole, in the one thread hop that opens the file.
CHUNK_SIZE = 64 * 1024

# The largest JSON reply read; rspamd's replies are a few kilobytes.
MAX_REPLY = 1024 * 1024

# Idle connections kept per rspamd server: one per check in flight.
MAX_PERSISTENT = 16

# How long an idle connection is kept.  A POST is never retried by the HTTP
# client, so a connection the server closed while idle would fail a check:
# keep idle connections for less time than servers usually do (nginx: 75 s).
IDLE_TIMEOUT = 20

# rspamd's actions (rspamd's documentation, "Rspamd actions and scores").
REFUSE_ACTIONS = {"reject": (550, "5.7.1", "Spam message rejected")}
DEFER_ACTIONS = {
    "soft reject": (451, "4.7.1", "Try again later"),
    "greylist": (451, "4.7.1", "Greylisted, try again later"),
}
JUNK_ACTIONS = frozenset({"add header", "rewrite subject", "quarantine", "discard"})


class RspamdError(Exception):
    """
    rspamd gave no usable answer: an HTTP status other than 200, a reply
    that is not JSON or has no action and score.
    """


def checkURL(url: str) -> bytes:
    """
    The C{/checkv2} address of the rspamd server at C{url}.

    @param url: C{http://HOST[:PORT][/PREFIX]} (or C{https://}, for an
        rspamd behind a TLS-terminating proxy); C{/checkv2} is appended to
        the path.
    @raise ValueError: C{url} is not such an address.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"rspamd needs an http:// URL, not {url!r}")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError(f"rspamd's URL takes no query, fragment or user: {url!r}")
    try:
        parts.port
    except ValueError:
        raise ValueError(f"rspamd's URL has a bad port: {url!r}") from None
    path = parts.path.rstrip("/") + "/checkv2"
    return urlunsplit((parts.scheme, parts.netloc, path, "", "")).encode("ascii")


def requestHeaders(message: IFilterableMessage, mtaName: str) -> Headers:
    """
    The header fields that give rspamd the envelope of C{message}, so that
    it need not guess it from the message's own header.

    rspamd's C{Hostname} is the client's verified host name; smtpmx does
    not verify one, so it says C{unknown}, as Postfix does.  C{MTA-Name}
    is our own name, which rspamd puts in the fields it writes.

    @param mtaName: our host name (C{--hostname}).
    """
    envelope = message.envelope
    headers = Headers()
    headers.addRawHeader(b"IP", _field(envelope.clientHost))
    if envelope.heloName:
        headers.addRawHeader(b"Helo", _field(envelope.heloName))
    headers.addRawHeader(b"Hostname", b"unknown")
    sender = "" if envelope.reversePath is None else str(envelope.reversePath)
    headers.addRawHeader(b"From", _field(f"<{sender}>"))
    for recipient in envelope.recipients:
        headers.addRawHeader(b"Rcpt", _field(f"<{recipient.address}>"))
    headers.addRawHeader(b"Queue-Id", _field(envelope.queueId))
    headers.addRawHeader(b"MTA-Name", _field(mtaName))
    headers.addRawHeader(b"Content-Type", b"message/rfc822")
    return headers


def _field(value: str) -> bytes:
    """
    A header field value as sent: UTF-8 (an SMTPUTF8 address may hold
    more than ASCII), with no line break that could end the field.
    """
    return " ".join(str(value).split()).encode("utf-8")


def verdictOf(reply: object):
    """
    The verdict for rspamd's JSON reply.

    @param reply: the decoded C{/checkv2} reply.
    @return: an L{Accept}, L{Junk} or L{Reject}.
    @raise RspamdError: the reply has no action or no numeric score.
    """
    if not isinstance(reply, dict):
        raise RspamdError(f"rspamd's reply is not an object: {reply!r:.200}")
    action = reply.get("action")
    score = reply.get("score")
    if not isinstance(action, str) or isinstance(score, bool) or not isinstance(score, (int, float)):
        raise RspamdError(f"rspamd's reply has no action and score: {reply!r:.200}")
    if not math.isfinite(score):
        raise RspamdError(f"rspamd's score is not a number: {score!r}")
    messages = reply.get("messages")
    said = messages.get("smtp_message") if isinstance(messages, dict) else None
    if action in REFUSE_ACTIONS or action in DEFER_ACTIONS:
        code, enhanced, text = REFUSE_ACTIONS.get(action) or DEFER_ACTIONS[action]
        return Reject(code, enhanced, _replyText(said) or text)
    headers = [("X-Spam-Action", _replyText(action)), ("X-Spam-Score", f"{score:.2f}")]
    if action in JUNK_ACTIONS:
        return Junk([("X-Spam", "Yes")] + headers)
    return Accept(headers)


def _replyText(text: object) -> str:
    """
    Text from rspamd fit for an SMTP reply or a header field: printable
    US-ASCII only (RFC 5321 section 4.2), at most 200 characters.
    """
    if not isinstance(text, str):
        return ""
    return "".join(c for c in text if " " <= c <= "~")[:200].strip()


def readWhole(message: IFilterableMessage, size: int) -> bytes:
    """
    Open C{message}, read its first C{size} bytes and close it: the whole
    of a small message in one call (it blocks: called through
    C{runBlocking}, in one thread hop instead of one each for opening,
    reading and closing).
    """
    with message.open() as file:
        data = file.read(size)
    if len(data) != size:
        raise RspamdError(f"the spooled message has {len(data)} bytes, not {size}")
    return data


@implementer(IBodyProducer)
class LoadedBody:
    """
    The body of a C{/checkv2} request for a small message already read
    (L{readWhole}): written at once, so that the request's head and body
    leave in one write to the connection.

    @ivar length: its size, sent as C{Content-Length}.
    """

    def __init__(self, data: bytes) -> None:
        """
        @param data: the whole body.
        """
        self.data = data
        self.length = len(data)

    def startProducing(self, consumer) -> Deferred:
        """
        Write the body to C{consumer}: it is all sent.
        """
        consumer.write(self.data)
        return succeed(None)

    def pauseProducing(self) -> None:
        """
        Nothing is left to pause.
        """

    def resumeProducing(self) -> None:
        """
        Nothing is left to resume.
        """

    def stopProducing(self) -> None:
        """
        Nothing is left to stop.
        """


@implementer(IBodyProducer)
class SpooledBody:
    """
    The body of a C{/checkv2} request: the spooled message, opened and read
    chunk by chunk through C{runBlocking}, written to the connection as
    fast as it takes it (it pauses us when its buffer is full).

    @ivar length: the message's size, sent as C{Content-Length}.
    """

    def __init__(
        self, message: IFilterableMessage, runBlocking: Callable[..., Deferred],
        chunkSize: int = CHUNK_SIZE,
    ) -> None:
        """
        @param message: the message to send.
        @param runBlocking: runs a blocking call off the reactor thread.
        @param chunkSize: how much to read at a time.
        """
        self.message = message
        self.length = message.size
        self.runBlocking = runBlocking
        self.chunkSize = chunkSize
        self.consumer = None
        self.file = None
        self.done: Optional[Deferred] = None
        self.paused = False
        self.stopped = False
        self.reading = False
        self.sent = 0

    def startProducing(self, consumer) -> Deferred:
        """
        Open the message and start sending it to C{consumer}.

        @return: a L{Deferred} that fires when all is sent; cancelling it
            stops reading.
        """
        self.consumer = consumer
        self.done = Deferred(lambda d: self.stopProducing())
        self.reading = True
        opening = self.runBlocking(self.message.open)
        opening.addCallbacks(self.opened, self.failed)
        return self.done

    def opened(self, file) -> None:
        """
        The message is open: read it, unless we were stopped meanwhile.
        """
        self.reading = False
        self.file = file
        if self.stopped:
            self.closeFile()
        else:
            self.readNext()

    def readNext(self) -> None:
        """
        Read the next chunk, unless paused, stopped or already reading.
        """
        if self.paused or self.stopped or self.reading or self.file is None:
            return
        self.reading = True
        reading = self.runBlocking(self.file.read, self.chunkSize)
        reading.addCallbacks(self.read, self.failed)

    def read(self, chunk: bytes) -> None:
        """
        A chunk was read: send it and read on, or finish at the end.
        """
        self.reading = False
        if self.stopped:
            self.closeFile()
            return
        if not chunk:
            self.stopped = True
            self.closeFile()
            self.done.callback(None)
            return
        self.consumer.write(chunk)
        self.sent += len(chunk)
        if self.sent >= self.length:
            # All of Content-Length is sent: done now, not after one more
            # read finds the end of the file.  rspamd may answer at once,
            # and a response that comes before the request is done costs
            # the connection its reuse.
            self.stopped = True
            self.closeFile()
            self.done.callback(None)
            return
        self.readNext()

    def failed(self, failure) -> None:
        """
        Opening or reading the spooled message failed: the request fails.
        """
        self.reading = False
        already = self.stopped
        self.stopped = True
        self.closeFile()
        if not already:
            self.done.errback(failure)

    def closeFile(self) -> None:
        """
        Close the spooled file once no read is under way on it.
        """
        if self.file is not None and not self.reading:
            file, self.file = self.file, None
            self.runBlocking(file.close)

    def pauseProducing(self) -> None:
        """
        The connection's buffer is full: read no more for now.
        """
        self.paused = True

    def resumeProducing(self) -> None:
        """
        The connection takes data again.
        """
        self.paused = False
        self.readNext()

    def stopProducing(self) -> None:
        """
        The request was given up (cancelled, or its connection lost): read
        no more and close the file.
        """
        self.stopped = True
        self.closeFile()


class ReplyReader(Protocol):
    """
    Reads a reply body of at most L{MAX_REPLY} bytes.  Its transport's
    C{stopProducing} closes the connection: what cancelling does.
    """

    def __init__(self, done: Deferred) -> None:
        """
        @param done: fired with the body, or failed.
        """
        self.done = done
        self.chunks: list[bytes] = []
        self.length = 0

    def dataReceived(self, data: bytes) -> None:
        """
        Keep a part of the body; give up on a body too long.
        """
        self.length += len(data)
        if self.length > MAX_REPLY:
            self.transport.stopProducing()
            if not self.done.called:
                self.done.errback(RspamdError(f"rspamd's reply is over {MAX_REPLY} bytes"))
            return
        self.chunks.append(data)

    def connectionLost(self, reason: Failure = None) -> None:
        """
        The body is complete (L{ResponseDone}) or cut short.
        """
        if self.done.called:
            return
        if reason is not None and reason.check(ResponseDone):
            self.done.callback(b"".join(self.chunks))
        else:
            self.done.errback(reason)


@implementer(IStreamClientEndpoint)
class QuietEndpoint:
    """
    An endpoint whose connections' factories keep quiet: the HTTP client
    makes a factory per connection, and rspamd closes its connections
    after each answer (C{Connection: close}), so a noisy factory would log
    "Starting factory" and "Stopping factory" for every message checked.
    """

    def __init__(self, endpoint: IStreamClientEndpoint) -> None:
        """
        @param endpoint: the endpoint that connects.
        """
        self.endpoint = endpoint

    def connect(self, protocolFactory) -> Deferred:
        """
        Connect with C{protocolFactory}, made quiet.
        """
        protocolFactory.noisy = False
        return self.endpoint.connect(protocolFactory)


@implementer(IAgentEndpointFactory)
class RspamdEndpoints:
    """
    Where the HTTP client connects for rspamd's address: an IP address
    (the usual C{127.0.0.1}) straight over TCP, without a name lookup; a
    host name through L{HostnameEndpoint}; C{https} over TLS with the
    client's usual checks of the certificate.  Connections are quiet
    (L{QuietEndpoint}).
    """

    def __init__(self, reactor) -> None:
        """
        @param reactor: the reactor to connect with.
        """
        self.reactor = reactor
        self.policy = BrowserLikePolicyForHTTPS()

    def endpointForURI(self, uri) -> IStreamClientEndpoint:
        """
        The endpoint for C{uri} (a L{twisted.web.client.URI}).
        """
        host = uri.host.decode("ascii")
        endpoint: IStreamClientEndpoint
        if isIPAddress(host):
            endpoint = TCP4ClientEndpoint(self.reactor, host, uri.port)
        elif isIPv6Address(host):
            endpoint = TCP6ClientEndpoint(self.reactor, host, uri.port)
        else:
            endpoint = HostnameEndpoint(self.reactor, host, uri.port)
        if uri.scheme == b"https":
            endpoint = wrapClientTLS(self.policy.creatorForNetloc(uri.host, uri.port), endpoint)
        return QuietEndpoint(endpoint)


@implementer(IMessageFilter)
class RspamdFilter:
    """
    Asks one rspamd server about each message (C{docs/plugins.rst}).

    @ivar url: the C{/checkv2} address asked.
    @ivar pool: the persistent connections to rspamd, made on first use.
    """

    log = Logger()

    def __init__(self, url: str, reactor=None, chunkSize: int = CHUNK_SIZE) -> None:
        """
        @param url: rspamd's address, see L{checkURL}.
        @param reactor: the reactor to connect with; L{None} (the server's
            way) for the C{reactor} of the first context asked with.
        @param chunkSize: how much of the message is read at a time.
        @raise ValueError: C{url} is unusable.
        """
        self.url = checkURL(url)
        self.reactor = reactor
        self.pool: Optional[HTTPConnectionPool] = None
        self.agent: Optional[Agent] = None
        self.chunkSize = chunkSize

    def connectWith(self, reactor) -> Agent:
        """
        The HTTP client, made on first use with C{reactor} (unless the
        filter was given its own): one pool of persistent connections for
        the filter's life.

        @raise RspamdError: there is no reactor to connect with.
        """
        if self.agent is None:
            reactor = self.reactor if self.reactor is not None else reactor
            if reactor is None:
                raise RspamdError("rspamd needs a reactor: the context has none")
            self.pool = HTTPConnectionPool(reactor, persistent=True)
            self.pool.maxPersistentPerHost = MAX_PERSISTENT
            self.pool.cachedConnectionTimeout = IDLE_TIMEOUT
            self.agent = Agent.usingEndpointFactory(
                reactor, RspamdEndpoints(reactor), pool=self.pool
            )
        return self.agent

    def filterMessage(self, session, message: IFilterableMessage) -> Deferred:
        """
        Send C{message} and its envelope to rspamd, and map its action to
        a verdict.

        @param session: the transaction's context: its C{runBlocking} reads
            the spool, its C{config.hostname} is our C{MTA-Name}, its
            C{reactor} makes the connections (on first use).
        @return: a L{Deferred} firing with the verdict, or failing with
            L{RspamdError} or the connection's error.  Cancelling it aborts
            the request and its connection.
        """
        try:
            agent = self.connectWith(getattr(session, "reactor", None))
        except RspamdError:
            return fail()
        headers = requestHeaders(message, session.config.hostname)
        if message.size <= self.chunkSize:
            # A small message is read whole in one thread hop, then sent
            # with the request's head in one write.
            d = session.runBlocking(readWhole, message, message.size)
            d.addCallback(
                lambda data: agent.request(b"POST", self.url, headers, LoadedBody(data))
            )
        else:
            body = SpooledBody(message, session.runBlocking, self.chunkSize)
            d = agent.request(b"POST", self.url, headers, body)
        d.addCallback(self.replied)
        d.addCallback(self.decoded)
        d.addErrback(_cancelled)
        return d

    def replied(self, response: IResponse) -> Deferred:
        """
        Read rspamd's reply in full, so that its connection can be reused.
        """
        d: Deferred = Deferred(lambda _: reader.transport.stopProducing())
        reader = ReplyReader(d)
        response.deliverBody(reader)
        if response.code != 200:
            def refused(text: bytes):
                """
                rspamd refused the request: say so with its status.
                """
                raise RspamdError(
                    f"rspamd at {self.url.decode()} answered HTTP {response.code}:"
                    f" {text[:200]!r}"
                )
            d.addCallback(refused)
        return d

    def decoded(self, body: bytes):
        """
        The verdict for the raw reply.

        @raise RspamdError: it is not a JSON reply rspamd gives.
        """
        try:
            reply = json.loads(body)
        except ValueError as e:
            raise RspamdError(f"rspamd's reply is not JSON: {e}") from None
        return verdictOf(reply)

    def close(self) -> Deferred:
        """
        Close the idle connections (at shutdown, or the end of a test).
        """
        if self.pool is None:
            return succeed(None)
        return self.pool.closeCachedConnections()


def _cancelled(failure: Failure) -> Failure:
    """
    A request given up by cancelling it fails with L{CancelledError}, not
    the HTTP client's wrapping of it nor the endpoint's
    L{ConnectingCancelledError} (cancelled while still connecting), so
    that the chain sees its own timeout.
    """
    if failure.check(ConnectingCancelledError):
        raise CancelledError()
    if failure.check(ResponseNeverReceived, ResponseFailed) and any(
        reason.check(CancelledError) for reason in failure.value.reasons
    ):
        raise CancelledError()
    return failure


@implementer(IPlugin, IMessageFilterFactory)
class RspamdFilterFactory:
    """
    Makes the C{rspamd[:URL]} filter.

    @ivar reactor: the reactor its filters connect with; L{None} (the
        server's way) for the C{reactor} of the context each filter is
        first asked with (L{smtpmx.validation.ValidationContext}).
    """

    name = "rspamd"
    description = (
        f"rspamd[:URL] - asks rspamd (default {DEFAULT_URL}): reject -> 550,"
        " soft reject/greylist -> 451, add header/rewrite subject -> Junk folder;"
        " adds X-Spam-Action and X-Spam-Score."
    )

    def __init__(self, reactor=None) -> None:
        """
        @param reactor: see L{reactor}.
        """
        self.reactor = reactor

    def makeFilter(self, argument: Optional[str]) -> RspamdFilter:
        """
        An L{RspamdFilter} for the server at C{argument} (L{DEFAULT_URL}
        when there is none).

        @raise ValueError: the URL is unusable.
        """
        return RspamdFilter(argument or DEFAULT_URL, self.reactor)
