"""
The envelope of one accepted message: who sent it, to whom and where each
copy goes.  Plain values, shared by the server and the stores.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Union

from smtpmx.address import Address


@dataclass(frozen=True)
class LocalMailbox:
    """
    A Maildir of one of our domains: C{<root>/<domain>/<name>/}.

    @ivar domain: the local domain, lower-cased.
    @ivar name: the mailbox name: the local part lower-cased, unquoted and
        with its delimiter tag stripped; already checked to be a safe
        directory name.
    @ivar folder: L{None} for the mailbox itself (INBOX), or the name of a
        Maildir++ folder inside it (C{"Junk"}: C{<mailbox>/.Junk/}).
    """

    domain: str
    name: str
    folder: Optional[str] = None


@dataclass(frozen=True)
class RemoteAddress:
    """
    A recipient to relay to the next hop, exactly as it is to be sent.
    """

    address: Address


@dataclass(frozen=True)
class CourierRecipient:
    """
    A recipient of one of our domains whose mail is carried from the queue
    by a delivery backend (docs/plugins.rst), such as an LMTP server
    (RFC 2033): queued, then handed to the backend with the address
    exactly as it is to be sent.

    @ivar backend: the backend's specification, C{NAME:ARG}
        (C{lmtp:unix:/run/dovecot/lmtp}); the queue records it as C{via}.
    """

    address: Address
    backend: str

    @property
    def endpoint(self) -> Optional[str]:
        """
        The LMTP server's endpoint of an C{lmtp:} backend, else L{None}.
        """
        name, _, argument = self.backend.partition(":")
        return argument if name == "lmtp" else None


def LmtpRecipient(address: Address, endpoint: str) -> CourierRecipient:
    """
    The L{CourierRecipient} of the LMTP server at C{endpoint}.
    """
    return CourierRecipient(address, "lmtp:" + endpoint)


Destination = Union[LocalMailbox, RemoteAddress, CourierRecipient]


@dataclass(frozen=True)
class Recipient:
    """
    An accepted recipient: the forward-path as the client gave it and where
    the copy for it goes (an alias may give one recipient several).
    """

    address: Address
    destination: Destination


@dataclass
class Envelope:
    """
    Everything but the body of one message being received.

    @ivar queueId: our ID for the message, in logs and the 250 reply.
    @ivar reversePath: the sender, or L{None} for the null path C{<>}.
    @ivar recipients: accepted recipients, in the order given.
    @ivar received: our C{Received:} trace header, complete with its
        terminating LF, to be put on top of every copy.
    @ivar extraHeaders: more header fields for every copy, complete with
        their LFs, put right below C{received} (the message filters'
        fields, for instance C{X-Spam-Score}).
    """

    queueId: str
    clientHost: str
    heloName: str
    reversePath: Optional[Address]
    recipients: list[Recipient] = field(default_factory=list)
    received: bytes = b""
    extraHeaders: bytes = b""
