"""
One SMTP transaction with one next hop (RFC 5321, with ESMTP PIPELINING,
SIZE, 8BITMIME, SMTPUTF8 and STARTTLS), or one LMTP transaction with an
LMTP server (RFC 2033): the sequencing of the relay client.

L{deliver} takes one L{DeliveryRequest}, connects (or takes over an idle
session from a L{SessionPool}), greets, upgrades to TLS as the request's
L{TLSPolicy} says, sends one copy of the message for every recipient that
shares the next hop and returns a L{DeliveryResult}: for each recipient a
L{RecipientResult} whose L{Disposition} says delivered, a temporary
failure (4xx, or anything that went wrong on the way) or a permanent one
(5xx).  It never raises for anything the network or the next hop does: a
refused connection, a timeout, a garbled reply or a failed TLS handshake
become temporary failures.

The replies come from L{smtpmx.relay.protocol.ClientProtocol}; every wait
has a timeout (RFC 5321 section 4.5.3.2), the message is read from disk
through the thread runner and dot-stuffed across chunk boundaries (RFC 5321
section 4.5.2, L{DotStuffer}), and writing it follows the transport's flow
control, so memory stays bounded whatever its size.  docs/relay.rst tells
the whole story.

LMTP (C{DeliveryRequest.protocol == "lmtp"}, RFC 2033 section 4) differs
where the protocols do: LHLO, no STARTTLS, a Twisted endpoint string as the
hop (L{NextHop.endpoint}), one reply per accepted recipient after the data.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Callable, Optional

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    clientFromString,
)
from twisted.internet.protocol import Factory
from twisted.logger import Logger

from smtpmx.relay.pool import PooledSession, SessionPool
from smtpmx.relay.protocol import ClientProtocol, SessionError, TLSFailed
from smtpmx.relay.request import (
    DeliveryRequest,
    DeliveryResult,
    Disposition,
    RecipientResult,
    localFailure,
    resultOf,
)
from smtpmx.relay.stuffing import DotStuffer
from smtpmx.relay.tlspolicy import TLSPolicy, clientTLSOptions

_log = Logger()

# Bytes of the message read from disk at a time.
CHUNK_SIZE = 64 * 1024


@dataclass(frozen=True)
class TransactionEnd:
    """
    How the MAIL ... DATA part of one transaction ended.

    @ivar recipients: every recipient to its L{RecipientResult}.
    @ivar finished: whether it ran to the reply to the end of data, leaving
        the session fit for another transaction.
    @ivar dataSent: whether the message content started to go out (past
        it, a lost connection may have delivered the message; before it,
        DATA alone never can).
    @ivar lost: whether the connection failed during it.
    """

    recipients: dict[str, RecipientResult]
    finished: bool
    dataSent: bool = False
    lost: bool = False

    @property
    def reusable(self) -> bool:
        """
        Whether the session may carry another transaction after this one:
        only after one that finished, and not after a C{421}, with which the
        next hop says it is closing the connection (RFC 5321 section 3.8).
        """
        return self.finished and all(r.code != 421 for r in self.recipients.values())


class _Refused(Exception):
    """
    The next hop turned the session away before MAIL.
    """


def deliver(
    request: DeliveryRequest,
    *,
    reactor,
    runBlocking: Callable[..., Deferred],
    pool: Optional[SessionPool] = None,
) -> Deferred[DeliveryResult]:
    """
    Deliver one message to one next hop for some recipients, in one
    transaction.

    @param request: what to deliver, to whom and how.
    @param reactor: the reactor to connect with and time out on
        (L{IReactorTCP}, L{IReactorUNIX} for LMTP, L{IReactorTime}).
    @param runBlocking: runs a blocking callable off the reactor thread and
        returns a L{Deferred} of its result (C{deferToThread}-like).
    @param pool: the connection cache: a session is taken from it (after
        RSET) when one for this next hop waits there, and given to it
        after the transaction instead of QUIT.  Without it every call has
        a connection of its own.

    @return: a L{Deferred} that fires with a L{DeliveryResult} holding every
        recipient; it never fails.
    """
    return Deferred.fromCoroutine(_safely(_Attempt(request, reactor, runBlocking, pool)))


async def _safely(attempt: _Attempt) -> DeliveryResult:
    """
    Run an attempt; a bug of ours becomes a temporary failure for every
    recipient, never an exception for the caller.
    """
    try:
        return await attempt.run()
    except Exception:
        _log.failure("relay transaction with {hop} failed", hop=attempt.label)
        failure = localFailure("internal error in the relay client", "4.3.0")
        return DeliveryResult(
            recipients={r: failure for r in attempt.recipients}, remoteMta=attempt.request.hop.name
        )


class _MessageFile:
    """
    A queued message file read in chunks, from the thread runner: opened
    by the first read and closed by the one that reaches its end, so that
    a small message costs one job.

    @ivar closed: whether it was closed (or never needs to be).
    """

    def __init__(self, path: str) -> None:
        """
        @param path: the file.
        """
        self.path = path
        self.file = None
        self.closed = False

    def read(self, size: int) -> tuple[bytes, bool]:
        """
        The next C{size} bytes at most, and whether the end was reached
        (the file is then closed).  Blocks.
        """
        if self.file is None:
            self.file = open(self.path, "rb")
        chunk = self.file.read(size)
        if len(chunk) < size:
            self.close()
        return chunk, self.closed

    def close(self) -> None:
        """
        Close the file, if it was opened.  Blocks.
        """
        self.closed = True
        if self.file is not None:
            self.file.close()


def _hostEndpoint(reactor, host: str, port: int, timeout: float):
    """
    The endpoint to reach a next hop: a plain TCP endpoint for an address
    (what MX and address lookups give), else a L{HostnameEndpoint} (the
    host name of a C{--route}).  A L{HostnameEndpoint} would send even an
    address to the thread pool's resolver, and report a refused connection
    only once its delay between two addresses (0.3 s) has passed: a next
    hop that is down would hold each connection slot that long.
    """
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return HostnameEndpoint(reactor, host, port, timeout=timeout)
    kind = TCP4ClientEndpoint if address.version == 4 else TCP6ClientEndpoint
    return kind(reactor, host, port, timeout=timeout)


class _OneConnection(Factory):
    """
    Hands out one protocol instance, quietly: one log line per relay
    attempt is enough, without "Starting factory" around it.
    """

    noisy = False

    def __init__(self, protocol: ClientProtocol) -> None:
        """
        @param protocol: the protocol of the one connection.
        """
        self._protocol = protocol

    def buildProtocol(self, addr) -> ClientProtocol:
        """
        The one protocol, whatever the address.
        """
        return self._protocol


class _Attempt:
    """
    One call of L{deliver}: its request and what it runs with.

    @ivar recipients: the request's recipients, duplicates dropped.
    @ivar key: the L{SessionPool} key of its sessions.
    @ivar label: the next hop for logs and reasons, C{name[address]:port}.
    """

    def __init__(self, request: DeliveryRequest, reactor, runBlocking: Callable[..., Deferred],
                 pool: Optional[SessionPool]) -> None:
        """
        The arguments of L{deliver}.
        """
        self.request = request
        self.reactor = reactor
        self.runBlocking = runBlocking
        self.pool = pool
        self.timeouts = request.timeouts
        self.recipients = list(dict.fromkeys(request.recipients))
        self.lmtp = request.protocol == "lmtp"
        self.label = request.hop.label
        self.policy: Optional[TLSPolicy] = None
        self.key: tuple = ()

    def _unconnected(self, error: str, result: Optional[DeliveryResult] = None) -> DeliveryResult:
        """
        The result of a session that never got to MAIL: every recipient a
        temporary failure, and C{connected=False} so the next hop is tried.
        """
        result = result or DeliveryResult(remoteMta=self.request.hop.name)
        result.connected = False
        result.error = error
        failure = localFailure(error, "4.4.1")
        result.recipients = {r: failure for r in self.recipients}
        return result

    async def run(self) -> DeliveryResult:
        """
        The transaction, on a cached session if one will do, else on a new
        connection; with one retry in clear when the policy allows it and
        the TLS handshake fails.
        """
        request = self.request
        try:
            self.policy = TLSPolicy(request.tlsPolicy)
        except ValueError:
            return self._unconnected(f"unknown TLS mode {request.tlsPolicy!r}")
        hop = request.hop
        # Sessions are shared only between transactions that would have
        # set them up the same way.
        self.key = (
            hop.host, hop.port, hop.name, hop.endpoint, request.protocol, self.policy.value,
            request.heloName, request.trustRoot,
        )
        if self.pool is not None:
            result = await self.reuse()
            if result is not None:
                return result
        if self.lmtp:
            # RFC 2033 section 4.1 knows no STARTTLS: a local socket.
            return await self.session(None)
        try:
            context = await clientTLSOptions(self.policy, hop.name, request.trustRoot, self.runBlocking)
        except Exception as e:
            _log.failure("cannot set up TLS for {hop}", hop=self.label)
            return self._unconnected(f"cannot load the CA certificates {request.trustRoot}: {e}")
        try:
            return await self.session(context)
        except TLSFailed as e:
            if not self.policy.retriesInClear:
                return self._unconnected(str(e))
            _log.info("{hop}: {why}; trying again without TLS", hop=self.label, why=str(e))
        return await self.session(None)

    async def reuse(self) -> Optional[DeliveryResult]:
        """
        The transaction on a session from the pool, after an RSET (RFC
        5321 section 4.1.1.5).  With a next hop that offers PIPELINING the
        RSET goes in the same write as MAIL and RCPT (RFC 2920 section
        3.1), so that reuse costs no round trip of its own; else it is
        sent and answered first (L{SessionPool.takeOver}).

        A cached session lost, or whose RSET is refused, before the message
        was sent (so nothing can have been delivered) is dropped and the
        next one tried.

        @return: the result, or L{None} when no cached session would do:
            the caller opens a fresh connection.
        """
        while True:
            cached = self.pool.take(self.key)
            if cached is None:
                return None
            pipelined = "PIPELINING" in cached.extensions
            if not pipelined and not await self.pool.reset(cached, self.timeouts["command"], self.label):
                continue
            try:
                end = await self.transact(cached.protocol, cached.extensions, reset=pipelined)
            except Exception:
                self.pool.discard(cached)
                raise
            if end.lost and not end.dataSent:
                _log.debug("{hop}: cached session lost before DATA; trying afresh", hop=self.label)
                self.pool.discard(cached)
                continue
            self.pool.release(cached, end.reusable)
            return DeliveryResult(
                recipients=end.recipients, remoteMta=self.request.hop.name, tls=cached.tls,
                verified=cached.verified, connectionUse=cached.transactions,
            )

    async def connect(self) -> ClientProtocol:
        """
        A new connection to the next hop, within the connect timeout.
        """
        hop = self.request.hop
        timeout = self.timeouts["connect"]
        protocol = ClientProtocol(self.reactor)
        if hop.endpoint is not None:
            endpoint = clientFromString(self.reactor, hop.endpoint)
        else:
            endpoint = _hostEndpoint(self.reactor, hop.host, hop.port, timeout)
        connecting = endpoint.connect(_OneConnection(protocol))
        timer = self.reactor.callLater(timeout + 1, connecting.cancel)
        try:
            await connecting
        finally:
            if timer.active():
                timer.cancel()
        return protocol

    async def session(self, context) -> DeliveryResult:
        """
        One connection: greeting, EHLO, STARTTLS, the transaction, and QUIT
        (or, with a pool, the session given to it).

        @param context: the TLS client options, or L{None} not to use TLS.
        @raise TLSFailed: the TLS handshake failed (the caller may retry
            in clear).
        """
        result = DeliveryResult(remoteMta=self.request.hop.name)
        try:
            protocol = await self.connect()
        except Exception as e:
            return self._unconnected(f"connect to {self.label} failed: {str(e) or type(e).__name__}")
        pooled = False
        try:
            try:
                extensions = await self.greet(protocol, context, result)
            except TLSFailed:
                raise
            except SessionError as e:
                # Nothing was sent yet: the next hop may do better.
                return self._unconnected(f"{self.label}: {e}", result)
            except _Refused as e:
                return self._unconnected(str(e), result)
            end = await self.transact(protocol, extensions)
            result.recipients = end.recipients
            if self.pool is None:
                await self.quit(protocol)
                return result
            session = PooledSession(
                self.key, protocol, extensions, result.tls, result.verified, self.timeouts["quit"]
            )
            pooled = True
            self.pool.release(session, end.reusable)
            return result
        except TLSFailed:
            raise
        except Exception:
            # A bug of ours: no message was sent, so it is safe to retry.
            _log.failure("relay session with {hop} failed", hop=self.label)
            for r in self.recipients:
                if r not in result.recipients:
                    result.recipients[r] = localFailure("internal error in the relay client", "4.3.0")
            return result
        finally:
            if not pooled:
                await protocol.close()

    async def greet(self, protocol: ClientProtocol, context, result: DeliveryResult) -> dict[str, str]:
        """
        Greeting, EHLO (HELO if EHLO is refused; LHLO for LMTP), STARTTLS
        as the policy says (never over LMTP) and EHLO again (RFC 3207 section 4.2: what was learnt before
        TLS is forgotten).  Sets C{result.tls} and C{result.verified}.

        @return: the extensions offered, C{KEYWORD: parameters}.
        @raise _Refused: the next hop turned us away, or it cannot give the
            TLS the policy requires.
        """
        t = self.timeouts
        policy = self.policy
        greeting = await protocol.expect(t["greeting"], "initial greeting")
        if greeting.code != 220:
            refusal = resultOf(greeting)
            raise _Refused(f"{self.label} refused to talk to us: {refusal.code} {refusal.text}")
        extensions = await self.hello(protocol)
        if self.lmtp:
            return extensions
        if context is not None and policy.wantsTLS and "STARTTLS" in extensions:
            protocol.send("STARTTLS")
            reply = await protocol.expect(t["command"], "STARTTLS")
            if reply.code == 220:
                await protocol.startTLS(context, t["tlsHandshake"])
                result.tls = protocol.tls
                result.verified = policy.verifiesCertificate
                extensions = await self.hello(protocol)
            elif policy.requiresTLS:
                raise _Refused(f"{self.label} refused STARTTLS: {reply.code} {resultOf(reply).text}")
            else:
                _log.info("{hop} refused STARTTLS ({reply}); going on in clear", hop=self.label, reply=str(reply))
        if policy.requiresTLS and result.tls is None:
            raise _Refused(f"TLS is required but {self.label} does not offer STARTTLS")
        return extensions

    async def hello(self, protocol: ClientProtocol) -> dict[str, str]:
        """
        EHLO, or HELO when EHLO gets a 5xx (RFC 5321 section 3.2); LHLO
        alone for LMTP (RFC 2033 section 4.1).

        @return: the extensions offered (none after HELO).
        @raise _Refused: both were refused, or EHLO (or LHLO) got a 4xx.
        """
        heloName = self.request.heloName
        verb = "LHLO" if self.lmtp else "EHLO"
        protocol.send(f"{verb} {heloName}")
        reply = await protocol.expect(self.timeouts["command"], verb)
        if reply.code == 250:
            extensions = {}
            for line in reply.text.split("\n")[1:]:
                keyword, _, params = line.strip().partition(" ")
                if keyword:
                    extensions[keyword.upper()] = params.strip()
            return extensions
        if 500 <= reply.code < 600 and not self.lmtp:
            protocol.send(f"HELO {heloName}")
            reply = await protocol.expect(self.timeouts["command"], "HELO")
            if reply.code == 250:
                return {}
        raise _Refused(f"{self.label} refused our greeting: {reply.code} {resultOf(reply).text}")

    def mailCommand(self, extensions: dict[str, str]) -> Optional[str]:
        """
        The MAIL command with the parameters the next hop takes: C{SIZE=}
        (RFC 1870), C{BODY=8BITMIME} (RFC 6152), C{SMTPUTF8} (RFC 6531).

        @return: the command, or L{None} when the addresses need SMTPUTF8
            and the next hop does not offer it.
        """
        request = self.request
        parameters = []
        if "SIZE" in extensions and request.size >= 0:
            parameters.append(f"SIZE={request.size}")
        if "8BITMIME" in extensions:
            parameters.append("BODY=8BITMIME")
        if not all(address.isascii() for address in [request.sender, *self.recipients]):
            if "SMTPUTF8" not in extensions:
                return None
            parameters.append("SMTPUTF8")
        return " ".join([f"MAIL FROM:<{request.sender}>", *parameters])

    async def transact(self, protocol: ClientProtocol, extensions: dict[str, str],
                       reset: bool = False) -> TransactionEnd:
        """
        MAIL, RCPT, DATA and the message, pipelined when the next hop
        offers PIPELINING (RFC 2920): MAIL, every RCPT and DATA in one
        write, DATA last as section 3.1 allows; the replies come in order.
        When no recipient is accepted the next hop refuses that DATA (RFC
        2920 section 3.1); one that starts the data all the same gets a
        lone end of data, an empty message for nobody.

        @param reset: send RSET first, in the same write (a cached session
            of a next hop that offers PIPELINING); a refused RSET ends the
            transaction as a lost connection before the data would, so
            that the caller tries another session.
        @return: how it ended, with a result for every recipient, whatever
            happens to the connection.
        """
        t = self.timeouts
        results: dict[str, RecipientResult] = {}
        stage = "MAIL FROM"
        dataSent = False
        try:
            mail = self.mailCommand(extensions)
            if mail is None:
                # RFC 6531 section 3.2: nothing else can carry them.
                failure = RecipientResult(
                    553, "5.6.7", f"5.6.7 {self.label} does not support SMTPUTF8 (RFC 6531)",
                    Disposition.PERMANENT,
                )
                return TransactionEnd({r: failure for r in self.recipients}, finished=False)
            rcpts = [f"RCPT TO:<{r}>" for r in self.recipients]
            pipelining = "PIPELINING" in extensions
            if pipelining:
                protocol.send(*(["RSET"] if reset else []), mail, *rcpts, "DATA")
            else:
                protocol.send(mail)
            if reset:
                stage = "RSET"
                reply = await protocol.expect(t["command"], stage)
                if reply.code != 250:
                    raise SessionError(f"RSET refused: {reply.code} {resultOf(reply).text}")
                stage = "MAIL FROM"
            reply = await protocol.expect(t["command"], "MAIL FROM")
            accepted = []
            if not 200 <= reply.code < 300:
                for r in self.recipients:
                    results[r] = resultOf(reply)
                if pipelining:
                    for r in self.recipients:
                        await protocol.expect(t["command"], "RCPT TO")
            else:
                for r, command in zip(self.recipients, rcpts):
                    stage = f"RCPT TO:<{r}>"
                    if not pipelining:
                        protocol.send(command)
                    reply = await protocol.expect(t["command"], stage)
                    results[r] = resultOf(reply)
                    if 200 <= reply.code < 300:
                        accepted.append(r)
            if not accepted:
                if pipelining:
                    stage = "DATA"
                    if (await protocol.expect(t["command"], stage)).code == 354:
                        stage = "end of an empty data"
                        protocol.writeData(b".\r\n")
                        await protocol.expect(t["finalDot"], stage)
                return TransactionEnd(results, finished=False)
            for r in accepted:
                del results[r]

            stage = "DATA"
            if not pipelining:
                protocol.send("DATA")
            reply = await protocol.expect(t["command"], "DATA")
            if reply.code != 354:
                disposition = Disposition.PERMANENT if reply.code >= 500 else Disposition.TEMPORARY
                for r in accepted:
                    results[r] = resultOf(reply, disposition)
                return TransactionEnd(results, finished=False)

            stage = "sending message content"
            dataSent = True
            await self.sendMessage(protocol)
            stage = "end of data"
            if self.lmtp:
                # RFC 2033 section 4.2: one reply per accepted recipient,
                # in order; a lost connection leaves the rest temporary.
                for r in accepted:
                    stage = f"end of data for <{r}>"
                    results[r] = resultOf(await protocol.expect(t["finalDot"], stage))
                return TransactionEnd(results, finished=True, dataSent=True)
            reply = await protocol.expect(t["finalDot"], "end of data")
            for r in accepted:
                results[r] = resultOf(reply)
            return TransactionEnd(results, finished=True, dataSent=True)
        except SessionError as e:
            failure = localFailure(f"lost connection with {self.label} while {stage}: {e}")
            for r in self.recipients:
                if r not in results:
                    results[r] = failure
            return TransactionEnd(results, finished=False, dataSent=dataSent, lost=True)

    async def sendMessage(self, protocol: ClientProtocol) -> None:
        """
        Write the message file, dot-stuffed (RFC 5321 section 4.5.2), then
        the end of data, following the transport's flow control.  A message
        that fits in one chunk (most do) costs one job of the thread runner
        (open, read, close) and one write with the end of data.

        @raise SessionError: the connection failed, or the file cannot be
            read (the connection is then dropped, so that no truncated copy
            is ever delivered).
        """
        stuffer = DotStuffer()
        message = _MessageFile(self.request.messageFile)
        chunk, done = await self.readMessage(protocol, message)
        if done:
            protocol.writeData(stuffer.feed(chunk) + stuffer.end())
            return
        protocol.startData()
        try:
            while True:
                protocol.writeData(stuffer.feed(chunk))
                if done:
                    break
                await protocol.whenWritable(self.timeouts["dataBlock"])
                chunk, done = await self.readMessage(protocol, message)
            protocol.writeData(stuffer.end())
        finally:
            protocol.stopData()
            if not message.closed:
                try:
                    await self.runBlocking(message.close)
                except OSError:
                    pass

    async def readMessage(self, protocol: ClientProtocol, message: _MessageFile) -> tuple[bytes, bool]:
        """
        The next chunk of the message, and whether it was the last.

        @raise SessionError: the file cannot be read (the connection is
            dropped), or the connection failed meanwhile.
        """
        try:
            read = await self.runBlocking(message.read, CHUNK_SIZE)
        except OSError as e:
            protocol.abort()
            raise SessionError(f"cannot read the queued message: {e}") from None
        if protocol.error is not None:
            raise protocol.error
        return read

    async def quit(self, protocol: ClientProtocol) -> None:
        """
        Say goodbye (RFC 5321 section 4.1.1.10); what the next hop answers
        no longer matters.
        """
        try:
            protocol.send("QUIT")
            await protocol.expect(self.timeouts["quit"], "QUIT")
        except SessionError:
            pass
