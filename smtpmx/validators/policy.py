"""
The C{policy:ENDPOINT} validator: asks a server speaking Postfix's SMTPD
access policy delegation protocol about each recipient, the way Postfix's
C{check_policy_service} does, so that postgrey (greylisting), policyd-spf
and Dovecot's quota-status plug into smtpmx unchanged.

The protocol (Postfix's C{SMTPD_POLICY_README}): the client sends
C{name=value} lines ended by an empty line; the server answers
C{action=...} and an empty line, and keeps the connection open for the
next request.  The action is one of Postfix's C{access(5)} actions:

  - C{OK} accepts the recipient;
  - C{REJECT [text]} refuses it, C{550 5.7.1};
  - C{DEFER [text]}, C{DEFER_IF_PERMIT [text]} defer it, C{450 4.7.1}
    (what postgrey answers to a greylisted triplet);
  - C{NNN text} (a 4xx or 5xx code) gives that reply; the enhanced code
    is the one the text begins with when it has one of the same class
    (RFC 3463 section 2), else C{X.7.1};
  - C{DUNNO} and every other action (C{PREPEND}, C{WARN}, ...) is no
    opinion: the next validator decides.

Each validator keeps one connection to its server, made on first use,
remade when the server closes it, and sends one request at a time on it.
A server that is down, closes the connection without answering or
answers nothing within L{POLICY_TIMEOUT} seconds (waiting for the
connection included) yields C{451 4.3.0} for that recipient: the
validator gives that L{Reject} itself, so the transaction's log line
names C{policy} and the log gets one warning line rather than a
traceback (see C{docs/plugins.rst}).
"""

from __future__ import annotations

import os
import re
import time
import weakref
from itertools import count
from typing import Any, Mapping, Optional

from twisted.internet.defer import Deferred, DeferredLock, succeed
from twisted.internet.endpoints import clientFromString, connectProtocol
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.protocols.basic import LineOnlyReceiver
from twisted.python.failure import Failure
from zope.interface import implementer

from smtpmx.access import Access
from smtpmx.address import Address
from smtpmx.config import Config
from smtpmx.interfaces import IRecipientValidator
from smtpmx.validation import Accept, Reject, ValidationContext

# How long a recipient waits for the policy server's answer, in seconds,
# waiting for the connection and for earlier requests included.
POLICY_TIMEOUT = 10.0

# The longest reply line taken from a policy server; Postfix's own limit
# on an attribute is of this order.
MAX_LINE = 4096

_NNN = re.compile(r"([45])(\d\d)(?:\s+(.*))?\Z", re.DOTALL)
_ENHANCED = re.compile(r"([245])\.(\d{1,3})\.(\d{1,3})(?:\s+|\Z)")


class PolicyError(Exception):
    """
    The policy server could not be asked, or did not answer.
    """


class PolicyConnectionLost(PolicyError):
    """
    The connection ended before the server answered.
    """


def verdictOf(action: str) -> Optional[Accept | Reject]:
    """
    The verdict of a policy server's C{action} (Postfix's C{access(5)}
    actions, case-insensitive).

    A text that begins with an RFC 3463 enhanced code of the reply's class
    gives the enhanced code.  C{421}, which would end the session, is
    answered C{450}: one recipient's policy does not close the connection.

    @return: L{Accept} for C{OK}; a L{Reject} for C{REJECT}, C{DEFER},
        C{DEFER_IF_PERMIT} and C{NNN text}; L{None} for C{DUNNO} and
        every action we do not act on.
    """
    action = action.strip()
    word, _, text = action.partition(" ")
    keyword = word.upper()
    if keyword == "OK":
        return Accept()
    if keyword == "REJECT":
        return _reject(550, text, "Access denied")
    if keyword in ("DEFER", "DEFER_IF_PERMIT"):
        return _reject(450, text, "Try again later")
    match = _NNN.match(action)
    if match:
        code = int(match.group(1) + match.group(2))
        return _reject(450 if code == 421 else code, match.group(3) or "", "Access denied")
    return None


def _reject(code: int, text: str, default: str) -> Reject:
    """
    A refusal with C{code} and C{text}, the enhanced code taken from the
    start of the text when it has one of the same class, else C{X.7.1}
    ("delivery not authorized", RFC 3463 section 3.8).
    """
    cls = str(code)[0]
    text = text.strip()
    enhanced = f"{cls}.7.1"
    given = _ENHANCED.match(text)
    if given and given.group(1) == cls:
        enhanced = f"{given.group(1)}.{given.group(2)}.{given.group(3)}"
        text = text[given.end() :]
    return Reject(code, enhanced, text or default)


def _clean(value: str) -> str:
    """
    An attribute value as the protocol allows it: no newline, no NUL.
    """
    return value.replace("\r", " ").replace("\n", " ").replace("\0", " ")


def requestAttributes(
    context: ValidationContext, recipient: Address, instance: str
) -> dict[str, str]:
    """
    The attributes of the policy request about C{recipient} at RCPT, the
    ones Postfix sends (C{SMTPD_POLICY_README}).

    smtpmx looks up no client names: C{client_name} and
    C{reverse_client_name} are C{unknown}, as Postfix sends them for a
    client without one (postgrey answers C{DUNNO} when they are missing).
    C{recipient_count} is C{0} and C{queue_id} empty, as at RCPT in
    Postfix; C{size} is MAIL's C{SIZE}, C{0} if none.

    @param instance: the same for every recipient of one transaction.
    """
    sender = context.reversePath
    attributes = {
        "request": "smtpd_access_policy",
        "protocol_state": "RCPT",
        "protocol_name": "ESMTP" if context.esmtp else "SMTP",
        "client_address": context.clientHost,
        "client_name": "unknown",
        "reverse_client_name": "unknown",
        "helo_name": context.heloName or "",
        "sender": str(sender) if sender is not None else "",
        "recipient": str(recipient),
        "recipient_count": "0",
        "queue_id": "",
        "instance": instance,
        "size": str(context.declaredSize or 0),
    }
    return {name: _clean(value) for name, value in attributes.items()}


def encodeRequest(attributes: Mapping[str, str]) -> bytes:
    """
    A request on the wire: C{name=value} lines, then an empty line.
    """
    lines = "".join(f"{name}={value}\n" for name, value in attributes.items())
    return (lines + "\n").encode("utf-8")


class PolicyProtocol(LineOnlyReceiver):
    """
    One connection to a policy server: one request at a time, each
    answered by C{name=value} lines and an empty line.

    A request cancelled before its answer drops the connection, since a
    late answer could not be told from the next one's.
    """

    delimiter = b"\n"
    MAX_LENGTH = MAX_LINE

    def __init__(self) -> None:
        self._pending: Optional[Deferred] = None
        self._reply: dict[str, str] = {}
        self.closed: Deferred = Deferred()

    def request(self, attributes: Mapping[str, str]) -> Deferred:
        """
        Send one request.

        @return: a L{Deferred} firing with the reply's attributes, or
            failing with L{PolicyConnectionLost}.
        """
        assert self._pending is None, "one request at a time"
        self._pending = d = Deferred(self._cancelled)
        self._reply = {}
        self.transport.write(encodeRequest(attributes))
        return d

    def _cancelled(self, d: Deferred) -> None:
        """
        The caller gave up waiting: forget the request and drop the
        connection.
        """
        self._pending = None
        self.transport.abortConnection()

    def lineReceived(self, line: bytes) -> None:
        """
        Collect one reply attribute; the empty line ends the reply.
        """
        line = line.rstrip(b"\r")
        d = self._pending
        if d is None:
            # An answer to nothing: the two ends disagree; start afresh.
            self.transport.abortConnection()
            return
        if line:
            name, _, value = line.decode("utf-8", "replace").partition("=")
            self._reply.setdefault(name.strip().lower(), value)
            return
        self._pending = None
        d.callback(self._reply)

    def lineLengthExceeded(self, line: bytes) -> None:
        """
        A reply line too long to be a policy answer: drop the connection.
        """
        self.transport.abortConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """
        Fail the request under way, and say the connection is gone.
        """
        # Said first: whoever the failed request wakes up may ask again at
        # once, and must get a new connection.
        self.closed.callback(None)
        d, self._pending = self._pending, None
        if d is not None:
            d.errback(PolicyConnectionLost(f"the connection was lost: {reason.getErrorMessage()}"))


class PolicyClient:
    """
    The one connection to one policy server, made on first use and again
    after it is lost; requests wait their turn on it.

    @ivar connections: how many connections were made.
    """

    def __init__(self, endpoint, clock, timeout: float = POLICY_TIMEOUT) -> None:
        """
        @param endpoint: an C{IStreamClientEndpoint}.
        @param clock: an C{IReactorTime} for the bound on each request.
        @param timeout: that bound, in seconds.
        """
        self._endpoint = endpoint
        self._clock = clock
        self.timeout = timeout
        self._lock = DeferredLock()
        self._protocol: Optional[PolicyProtocol] = None
        self.connections = 0

    def ask(self, attributes: Mapping[str, str]) -> Deferred:
        """
        Send a request and wait for its answer, at most L{timeout}
        seconds, its turn on the connection included.

        @return: a L{Deferred} firing with the reply's attributes, or
            failing (L{PolicyError}, a connection error, or
            C{TimeoutError}).
        """
        d = Deferred.fromCoroutine(self._ask(dict(attributes)))
        d.addTimeout(self.timeout, self._clock)
        return d

    async def _ask(self, attributes: dict[str, str]) -> dict[str, str]:
        """
        Wait for the connection to be free, then ask.  A connection that
        was already open and turns out to be closed (the server ended an
        idle connection) is remade once, as Postfix does.
        """
        await self._lock.acquire()
        try:
            for attempt in (1, 2):
                reused = self._protocol is not None
                protocol = await self._connected()
                try:
                    return await protocol.request(attributes)
                except PolicyConnectionLost:
                    if not reused or attempt == 2:
                        raise
            raise AssertionError("not reached")
        finally:
            self._lock.release()

    async def _connected(self) -> PolicyProtocol:
        """
        The open connection, made now if there is none.
        """
        if self._protocol is None:
            protocol = await connectProtocol(self._endpoint, PolicyProtocol())
            self.connections += 1
            self._protocol = protocol
            protocol.closed.addCallback(lambda _: self._forget(protocol))
        return self._protocol

    def _forget(self, protocol: PolicyProtocol) -> None:
        """
        A connection ended: the next request makes a new one.
        """
        if self._protocol is protocol:
            self._protocol = None

    def close(self) -> Deferred:
        """
        Close the connection, if open.

        @return: a L{Deferred} firing once it is closed.
        """
        protocol = self._protocol
        if protocol is None:
            d: Deferred = Deferred()
            d.callback(None)
            return d
        protocol.transport.loseConnection()
        return protocol.closed


class _Instances:
    """
    The C{instance} attribute of each transaction: the same for every
    recipient of one L{ValidationContext} (one is made per MAIL), another
    for the next, as long as the context lives.
    """

    def __init__(self) -> None:
        self._prefix = f"{os.getpid():x}.{int(time.time()):x}"
        self._numbers = count(1)
        self._byContext: dict[int, str] = {}

    def of(self, context: ValidationContext) -> str:
        """
        The instance of C{context}'s transaction.
        """
        key = id(context)
        instance = self._byContext.get(key)
        if instance is None:
            instance = f"{self._prefix}.{next(self._numbers)}"
            self._byContext[key] = instance
            weakref.finalize(context, self._byContext.pop, key, None)
        return instance


@implementer(IRecipientValidator)
class PolicyValidator:
    """
    Asks a policy server about each recipient (see the module's
    docstring).

    @ivar description: the server's Twisted client endpoint string.
    """

    log = Logger()

    def __init__(
        self, description: str, reactor: Any = None, timeout: float = POLICY_TIMEOUT
    ) -> None:
        """
        @param description: a client endpoint string, such as
            C{tcp:127.0.0.1:10023} or C{unix:/run/postgrey.sock}.
        @param reactor: the reactor to connect and time with; by default
            the one the first L{ValidationContext} carries.
        @param timeout: how long a recipient waits for an answer.
        """
        self.description = description
        self.timeout = timeout
        self._reactor = reactor
        self._client: Optional[PolicyClient] = None
        self._instances = _Instances()
        self._access: Optional[tuple[Config, Access]] = None

    def client(self, reactor: Any = None) -> PolicyClient:
        """
        The client of the policy server, made on first use.

        @raise PolicyError: no reactor was given, here or at creation.
        """
        if self._client is None:
            reactor = self._reactor if self._reactor is not None else reactor
            if reactor is None:
                raise PolicyError("no reactor to reach the policy server with")
            endpoint = clientFromString(reactor, self.description)
            self._client = PolicyClient(endpoint, reactor, self.timeout)
        return self._client

    def validateRecipient(self, session: ValidationContext, recipient: Address) -> Deferred:
        """
        Ask the server; its action decides (see L{verdictOf}), and a
        server that cannot be asked gives C{451 4.3.0}.  A trusted client
        (in C{--relay-network}) is not asked about, as Postfix's
        C{permit_mynetworks} before C{check_policy_service} would have it:
        our own users are not greylisted.
        """
        if self._trusted(session):
            return succeed(None)
        attributes = requestAttributes(session, recipient, self._instances.of(session))
        d = self.client(session.reactor).ask(attributes)

        def answered(reply: dict[str, str]):
            action = reply.get("action")
            if action is None:
                raise PolicyError(f"an answer without an action: {reply!r}")
            return verdictOf(action)

        def unavailable(failure: Failure) -> Reject:
            self.log.warn(
                "policy server {endpoint} gave no answer on {rcpt}: {why}",
                endpoint=self.description,
                rcpt=recipient.path,
                why=failure.getErrorMessage() or failure.type.__name__,
            )
            return Reject(451, "4.3.0", "Policy service unavailable, try again later")

        d.addCallback(answered)
        d.addErrback(unavailable)
        return d

    def _trusted(self, session: ValidationContext) -> bool:
        """
        Whether the client is in C{--relay-network} (one L{Access} per
        configuration, made on first use).
        """
        if self._access is None or self._access[0] is not session.config:
            self._access = (session.config, Access.fromConfig(session.config))
        return self._access[1].clientMayRelay(session.clientHost)

    def close(self) -> Deferred:
        """
        Close the connection to the server, if open (for tests and
        shutdown).
        """
        if self._client is None:
            d: Deferred = Deferred()
            d.callback(None)
            return d
        return self._client.close()


def checkEndpoint(description: str) -> None:
    """
    Check a client endpoint string at start-up, before any reactor runs.

    @raise ValueError: it is not one.
    """
    if not description:
        raise ValueError("policy needs a server: --validator policy:ENDPOINT")
    try:
        clientFromString(_NoReactor(), description)
    except Exception as e:
        raise ValueError(f"not a client endpoint {description!r}: {e}") from None


class _NoReactor:
    """
    A stand-in reactor for parsing an endpoint string: the endpoints
    made by L{clientFromString} only keep their reactor until they
    connect, which this one never lets them do.
    """

    def __getattr__(self, name: str):
        raise PolicyError("endpoint checked, not used")
