"""
The C{lmtp[:ENDPOINT]} validator: asks the LMTP server that will take a
local recipient's mail (Dovecot's LMTP, say) whether it would take it,
at RCPT time, so that unknown users and full mailboxes are refused in the
SMTP dialogue rather than bounced after it (docs/plugins.rst).

The question is a transaction that is never finished (RFC 2033 section
4.1): C{MAIL FROM:<>} and C{RCPT TO:<recipient>}, then C{RSET}, the way
Postfix's address verification probes a server.  The server's reply to
RCPT decides:

  - C{2xx} accepts the recipient;
  - C{550} (unknown user) refuses it C{550 5.1.1}, with the server's text
    when it gave an enhanced code;
  - C{552} and C{452} (over quota, as Dovecot answers when its quota
    plugin checks at RCPT) and every other 4xx or 5xx give that reply;
  - a server that is down, says nothing within L{LMTP_TIMEOUT} seconds,
    closes the connection or says something unreadable gives
    C{451 4.3.0}, and one warning line in the log.

Which server: the C{ENDPOINT} given (a Twisted client endpoint string,
C{unix:/run/dovecot/lmtp} or C{tcp:127.0.0.1:24}), else the LMTP backend
of the recipient's domain (C{--delivery DOMAIN=lmtp:ENDPOINT}).  A
recipient that is not local, or of a domain delivered to Maildirs with no
endpoint given, gets no opinion: the next validator decides.

One connection per server, made on first use (C{LHLO} once), kept open
and reused: checks take turns on it, and one that was closed while idle
is made again.  Replies are read by the relay client's line layer
(L{smtpmx.relay.protocol.ClientProtocol}), shared with the LMTP courier.
"""

from __future__ import annotations

import socket
from typing import Any, Optional

from twisted.internet.defer import CancelledError, Deferred, DeferredLock, gatherResults, succeed
from twisted.internet.endpoints import clientFromString, connectProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from smtpmx.access import Access
from smtpmx.address import Address
from smtpmx.config import Config
from smtpmx.delivery import backendFor, lmtpEndpoint
from smtpmx.interfaces import IRecipientValidator
from smtpmx.relay.protocol import ClientProtocol, SessionError
from smtpmx.reply import Reply
from smtpmx.validation import Accept, Reject, ValidationContext

# How long one check may take, in seconds, its turn on the connection and
# the connection itself included.
LMTP_TIMEOUT = 10.0

UNAVAILABLE = Reject(451, "4.3.0", "Mailbox service unavailable, try again later")


class LmtpCheckError(Exception):
    """
    The LMTP server could not be asked: it refused the session or the
    probe's transaction.
    """


def verdictOf(reply: Reply) -> Accept | Reject:
    """
    The verdict of the LMTP server's reply to C{RCPT TO}.

    @return: L{Accept} for a 2xx; C{550 5.1.1} for a 550 (the server's
        enhanced code and text kept when it gave an enhanced code); the
        server's own reply for every other 4xx or 5xx (a quota's 552 or
        452 among them), its enhanced code defaulting to C{X.2.2} ("mailbox
        full", RFC 3463 section 3.3) for 552/452 and C{X.0.0} otherwise;
        C{451 4.3.0} for C{421} (the server is closing) and anything else.
    """
    code = reply.code
    if 200 <= code < 300:
        return Accept()
    if code == 550:
        if reply.enhanced:
            return Reject(550, reply.enhanced, reply.text or "User unknown")
        return Reject(550, "5.1.1", "User unknown")
    if code == 421 or not (400 <= code < 600):
        return UNAVAILABLE
    default = f"{code // 100}.2.2" if code in (452, 552) else f"{code // 100}.0.0"
    return Reject(code, reply.enhanced or default, reply.text or "Recipient refused")


class LmtpProbe:
    """
    The one connection to one LMTP server, made (with C{LHLO}) on first
    use and again after it is lost; checks take turns on it.

    @ivar connections: how many connections were made.
    """

    def __init__(self, endpoint: Any, clock: Any, hostname: str, timeout: float = LMTP_TIMEOUT) -> None:
        """
        @param endpoint: an C{IStreamClientEndpoint}.
        @param clock: an C{IReactorTime} for every wait.
        @param hostname: the name we give in C{LHLO}.
        @param timeout: the bound on one check, in seconds.
        """
        self._endpoint = endpoint
        self._clock = clock
        self._hostname = hostname
        self.timeout = timeout
        self._lock = DeferredLock()
        self._protocol: Optional[ClientProtocol] = None
        self._pipelining = False
        self.connections = 0

    def check(self, recipient: Address) -> Deferred:
        """
        Ask whether the server takes mail for C{recipient}.

        @return: a L{Deferred} firing with the server's L{Reply} to
            C{RCPT TO}, or failing (L{SessionError}, L{LmtpCheckError}, a
            connection error or C{TimeoutError}) after at most L{timeout}
            seconds.
        """
        d = Deferred.fromCoroutine(self._check(recipient))
        d.addTimeout(self.timeout, self._clock)
        return d

    async def _check(self, recipient: Address) -> Reply:
        """
        Wait for the connection to be free, then probe.  A connection that
        was open and turns out closed (the server ended an idle session)
        is made again once.
        """
        await self._lock.acquire()
        try:
            for attempt in (1, 2):
                reused = self._protocol is not None and self._protocol.inStep
                protocol = await self._connected()
                try:
                    return await self._probe(protocol, recipient)
                except SessionError:
                    self._drop(protocol)
                    if not reused or attempt == 2:
                        raise
            raise AssertionError("not reached")
        except BaseException:
            # Cancelled or failed mid-check: replies still to come could
            # not be told from the next check's, so the next one starts on
            # a new connection.
            if self._protocol is not None:
                self._drop(self._protocol)
            raise
        finally:
            self._lock.release()

    async def _probe(self, protocol: ClientProtocol, recipient: Address) -> Reply:
        """
        C{MAIL FROM:<>}, C{RCPT TO}, C{RSET} (pipelined when the server
        offers PIPELINING, RFC 2920): the reply to RCPT.
        """
        wait = self.timeout
        commands = ("MAIL FROM:<>", f"RCPT TO:{recipient.path}", "RSET")
        if self._pipelining:
            protocol.send(*commands)
            mail = await protocol.expect(wait, "MAIL FROM")
            rcpt = await protocol.expect(wait, "RCPT TO")
            rset = await protocol.expect(wait, "RSET")
        else:
            protocol.send(commands[0])
            mail = await protocol.expect(wait, "MAIL FROM")
            if mail.code // 100 != 2:
                raise LmtpCheckError(f"MAIL FROM:<> refused: {mail.code} {mail.text}")
            protocol.send(commands[1])
            rcpt = await protocol.expect(wait, "RCPT TO")
            protocol.send(commands[2])
            rset = await protocol.expect(wait, "RSET")
        if mail.code // 100 != 2:
            raise LmtpCheckError(f"MAIL FROM:<> refused: {mail.code} {mail.text}")
        if rset.code // 100 != 2 or rcpt.code == 421:
            # Out of step, or closing: start afresh next time.
            self._drop(protocol)
        return rcpt

    async def _connected(self) -> ClientProtocol:
        """
        The open connection, made now (greeting, C{LHLO}) if there is none.
        """
        protocol = self._protocol
        if protocol is not None and protocol.inStep:
            return protocol
        if protocol is not None:
            self._drop(protocol)
        protocol = await connectProtocol(self._endpoint, ClientProtocol(self._clock))
        self.connections += 1
        try:
            greeting = await protocol.expect(self.timeout, "the greeting")
            if greeting.code != 220:
                raise LmtpCheckError(f"greeting {greeting.code} {greeting.text}")
            protocol.send(f"LHLO {self._hostname}")
            lhlo = await protocol.expect(self.timeout, "LHLO")
            if lhlo.code != 250:
                raise LmtpCheckError(f"LHLO refused: {lhlo.code} {lhlo.text}")
        except BaseException:
            protocol.abort()
            raise
        self._pipelining = any(
            line.split()[:1] == ["PIPELINING"] for line in lhlo.text.upper().splitlines()
        )
        self._protocol = protocol
        return protocol

    def _drop(self, protocol: ClientProtocol) -> None:
        """
        Forget a connection and drop it.
        """
        if self._protocol is protocol:
            self._protocol = None
        protocol.abort()

    def close(self) -> Deferred:
        """
        Close the connection, if open (C{QUIT} is not waited for).

        @return: a L{Deferred} firing once it is closed.
        """
        protocol, self._protocol = self._protocol, None
        if protocol is None:
            return succeed(None)
        return protocol.close()


@implementer(IRecipientValidator)
class LmtpValidator:
    """
    Asks the LMTP server about each local recipient (see the module's
    docstring).

    @ivar endpoint: the server's client endpoint string, or L{None} for
        each domain's LMTP backend.
    """

    log = Logger()

    def __init__(
        self,
        endpoint: Optional[str] = None,
        reactor: Any = None,
        timeout: float = LMTP_TIMEOUT,
        hostname: Optional[str] = None,
    ) -> None:
        """
        @param endpoint: a client endpoint string, or L{None}.
        @param reactor: the reactor to connect and time with; by default
            the one each L{ValidationContext} carries.
        @param timeout: how long a recipient waits for an answer.
        @param hostname: the name given in C{LHLO}; by default the
            server's C{--hostname}.
        """
        self.endpoint = endpoint
        self.timeout = timeout
        self._reactor = reactor
        self._hostname = hostname
        self._probes: dict[str, LmtpProbe] = {}
        self._access: Optional[tuple[Config, Access]] = None

    def probe(self, endpoint: str, context: ValidationContext) -> LmtpProbe:
        """
        The probe of the server at C{endpoint}, made on first use.

        @raise LmtpCheckError: there is no reactor to connect with.
        """
        probe = self._probes.get(endpoint)
        if probe is None:
            reactor = self._reactor if self._reactor is not None else context.reactor
            if reactor is None:
                raise LmtpCheckError("no reactor to reach the LMTP server with")
            hostname = self._hostname or getattr(context.config, "hostname", None) or socket.getfqdn()
            probe = LmtpProbe(clientFromString(reactor, endpoint), reactor, hostname, self.timeout)
            self._probes[endpoint] = probe
        return probe

    def endpointFor(self, context: ValidationContext, recipient: Address) -> Optional[str]:
        """
        The LMTP server to ask about C{recipient}, or L{None} when this
        validator has no opinion (not local, or delivered to a Maildir).
        """
        domain = recipient.domain.lower()
        if not domain or not self._local(context.config, domain):
            return None
        if self.endpoint is not None:
            return self.endpoint
        return lmtpEndpoint(backendFor(context.config.delivery, domain))

    def validateRecipient(self, session: ValidationContext, recipient: Address) -> Deferred:
        """
        Ask the server; its reply to RCPT decides (L{verdictOf}), and a
        server that cannot be asked gives C{451 4.3.0}.  Cancelled (the
        session's own bound), it fails with C{CancelledError}.
        """
        endpoint = self.endpointFor(session, recipient)
        if endpoint is None:
            return succeed(None)

        def unavailable(failure: Failure) -> Reject | Failure:
            if failure.check(CancelledError):
                # The session gave up waiting, and says so itself.
                return failure
            self.log.warn(
                "LMTP server {endpoint} gave no answer on {rcpt}: {why}",
                endpoint=endpoint,
                rcpt=recipient.path,
                why=failure.getErrorMessage() or failure.type.__name__,
            )
            return UNAVAILABLE

        try:
            d = self.probe(endpoint, session).check(recipient)
        except LmtpCheckError:
            return succeed(unavailable(Failure()))
        d.addCallback(verdictOf)
        d.addErrback(unavailable)
        return d

    def _local(self, config: Config, domain: str) -> bool:
        """
        Whether C{domain} is one of ours (one L{Access} per configuration).
        """
        if self._access is None or self._access[0] is not config:
            self._access = (config, Access.fromConfig(config))
        return self._access[1].isLocal(domain)

    def close(self) -> Deferred:
        """
        Close every connection (for tests and shutdown).
        """
        return gatherResults([probe.close() for probe in self._probes.values()])


def checkEndpoint(description: str) -> None:
    """
    Check a client endpoint string at start-up, before any reactor runs.

    @raise ValueError: it is not one.
    """
    from smtpmx.validators.policy import checkEndpoint as checkPolicyEndpoint

    try:
        checkPolicyEndpoint(description)
    except ValueError as e:
        raise ValueError(str(e).replace("policy:", "lmtp:")) from None
