"""
The values of one delivery attempt (docs/relay.rst): the L{DeliveryRequest}
that L{smtpmx.relay.transaction.deliver} takes, the L{DeliveryResult} it
gives back, each recipient's L{RecipientResult} with its L{Disposition},
and the L{RecipientAttempt} the service records of it.  Plain values,
shared by the transaction, the service and their tests.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping, Optional, Sequence, Union

from smtpmx.relay.nexthop import NextHop
from smtpmx.relay.tlspolicy import TLSPolicy
from smtpmx.reply import Reply

# Postfix's defaults, after RFC 5321 section 4.5.3.2, in seconds.
DEFAULT_TIMEOUTS: Mapping[str, float] = MappingProxyType({
    "connect": 30.0,  # TCP connection
    "greeting": 300.0,  # the 220 banner
    "command": 300.0,  # the reply to EHLO, MAIL, RCPT, DATA, STARTTLS, RSET
    "tlsHandshake": 300.0,  # the TLS handshake after STARTTLS
    "dataBlock": 180.0,  # the transport taking the next block of the message
    "finalDot": 600.0,  # the reply to the final "."
    "quit": 30.0,  # the reply to QUIT; the result is known by then
})

class Disposition(enum.Enum):
    """
    What became of a recipient in one attempt (the three answers RFC 5321
    section 4.2.1 allows a reply to mean).

    @cvar DELIVERED: the next hop took responsibility for it (2xx).
    @cvar TEMPORARY: not delivered, to be tried again (4xx, or trouble on
        our side or on the way).
    @cvar PERMANENT: not delivered and never will be (5xx): bounce it.
    """

    DELIVERED = "delivered"
    TEMPORARY = "temporary"
    PERMANENT = "permanent"

    @classmethod
    def ofCode(cls, code: int) -> Disposition:
        """
        The disposition a reply code means: 2xx delivered, 5xx permanent,
        anything else temporary.
        """
        if 200 <= code < 300:
            return cls.DELIVERED
        return cls.PERMANENT if code >= 500 else cls.TEMPORARY


@dataclass(frozen=True)
class RecipientResult:
    """
    What became of one recipient in one transaction.

    @ivar code: the reply code, the next hop's or one of ours (C{451}) for
        a failure on our side of the connection.
    @ivar enhanced: the enhanced status code (RFC 3463), C{"x.y.z"}, or
        L{None} if the reply had none.
    @ivar text: the reply text as sent after the code, enhanced code
        included, the lines of a multi-line reply joined by spaces: what a
        log line or a bounce quotes after the code.
    @ivar disposition: delivered, or a temporary or permanent failure.
    """

    code: int
    enhanced: Optional[str]
    text: str
    disposition: Disposition

    @property
    def status(self) -> str:
        """
        The enhanced status code for a bounce: the reply's, or one made
        from its code (C{5.0.0}).
        """
        return self.enhanced or f"{str(self.code)[0]}.0.0"


@dataclass(frozen=True)
class DeliveryRequest:
    """
    One message to hand to one next hop for some recipients, in one
    transaction: everything L{deliver} needs to know about it.

    @ivar hop: where to connect, and the name a certificate must carry.
    @ivar heloName: our name for EHLO/HELO.
    @ivar sender: the reverse-path without brackets; C{""} is the null path
        C{<>}.
    @ivar recipients: the forward-paths without brackets, sent exactly as
        given (case kept); duplicates are sent once.
    @ivar messageFile: the stored message (LF line endings).
    @ivar size: its size, announced with C{SIZE=} when offered (RFC 1870).
    @ivar tlsPolicy: the L{TLSPolicy} (or its configured value, C{"may"}).
    @ivar trustRoot: a PEM file of CA certificates for
        L{TLSPolicy.VERIFY}, or L{None} for the system's.
    @ivar timeouts: L{DEFAULT_TIMEOUTS} with the overrides given merged in.
    @ivar protocol: C{"smtp"}, or C{"lmtp"} for an LMTP server (RFC 2033)
        at C{hop.endpoint}; the TLS policy is then not used.
    """

    hop: NextHop
    heloName: str
    sender: str
    recipients: Sequence[str]
    messageFile: str
    size: int
    tlsPolicy: Union[TLSPolicy, str] = TLSPolicy.MAY
    trustRoot: Optional[str] = None
    timeouts: Mapping[str, float] = field(default_factory=dict)
    protocol: str = "smtp"

    def __post_init__(self) -> None:
        """
        Freeze the recipients into a tuple and merge the timeouts over the
        defaults; check the protocol.
        """
        if self.protocol not in ("smtp", "lmtp"):
            raise ValueError(f"unknown protocol {self.protocol!r}")
        object.__setattr__(self, "recipients", tuple(self.recipients))
        object.__setattr__(self, "timeouts", MappingProxyType({**DEFAULT_TIMEOUTS, **self.timeouts}))


@dataclass
class DeliveryResult:
    """
    What one L{deliver} call found: the result of one transaction with one
    next hop.

    @ivar recipients: every recipient of the request, as given, to its
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


def resultOf(reply: Reply, disposition: Optional[Disposition] = None) -> RecipientResult:
    """
    A recipient's result from a reply of the next hop.

    @param disposition: what it means, if not what its code says.
    """
    if disposition is None:
        disposition = Disposition.ofCode(reply.code)
    text = " ".join(reply.text.split("\n"))
    if reply.enhanced:
        text = f"{reply.enhanced} {text}".rstrip()
    return RecipientResult(reply.code, reply.enhanced, text, disposition)


def localFailure(reason: str, enhanced: str = "4.4.2", code: int = 451) -> RecipientResult:
    """
    A temporary failure for something that went wrong on our side of the
    reply.
    """
    return RecipientResult(code, enhanced, f"{enhanced} {reason}", Disposition.TEMPORARY)


@dataclass(frozen=True)
class RecipientAttempt:
    """
    What one attempt found for one queued recipient: what its queue state
    records.

    @ivar disposition: delivered, or a temporary or permanent failure.
    @ivar reply: the reply, code first, as the queue and a bounce quote it.
    @ivar status: the enhanced status code (RFC 3463) for a bounce.
    @ivar remoteMta: the next hop that answered, if one did.
    @ivar expired: the recipient was given up because the message is too
        old in the queue (a permanent failure that was no attempt).
    """

    disposition: Disposition
    reply: str
    status: str = "4.0.0"
    remoteMta: Optional[str] = None
    expired: bool = False
