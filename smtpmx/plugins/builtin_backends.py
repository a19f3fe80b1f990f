"""
The built-in delivery backends, shipped as plugins shaped exactly like
third-party ones (docs/plugins.rst): C{maildir} (the synchronous Maildir
store, no courier) and C{lmtp:ENDPOINT} (a courier from the queue to an
LMTP server such as Dovecot, RFC 2033).
"""

from __future__ import annotations

from typing import Optional

from twisted.internet.defer import Deferred
from twisted.plugin import IPlugin
from zope.interface import implementer

from smtpmx.interfaces import IDeliveryBackend, IDeliveryBackendFactory

# The Twisted client endpoint types an LMTP server may be reached by.
LMTP_ENDPOINT_TYPES = ("tcp:", "unix:", "tcp6:", "tls:")


@implementer(IPlugin, IDeliveryBackendFactory)
class MaildirBackendFactory:
    """
    Names the built-in Maildir store: its recipients become
    L{smtpmx.envelope.LocalMailbox}es, filed before the C{250}.
    """

    name = "maildir"
    description = "Files mail in Maildirs under --maildir-root before the 250 (the default)."

    def makeBackend(self, argument: Optional[str]) -> None:
        """
        No courier: the Maildir store files the mail itself.

        @raise ValueError: an argument was given.
        """
        if argument:
            raise ValueError("maildir takes no argument")
        return None


@implementer(IDeliveryBackend)
class LmtpBackend:
    """
    Hands queued recipients to an LMTP server in one transaction, with the
    relay's LMTP client and connection cache (docs/relay.rst).

    @ivar endpoint: the server's Twisted client endpoint string.
    """

    def __init__(self, endpoint: str) -> None:
        """
        @param endpoint: C{unix:/run/dovecot/lmtp}, C{tcp:127.0.0.1:24}.
        """
        self.endpoint = endpoint

    def deliver(self, request) -> Deferred:
        """
        One LMTP transaction (RFC 2033) through C{request.transact}: one
        reply per recipient after the data.

        @return: a L{Deferred} of the L{smtpmx.relay.request.DeliveryResult}.
        """
        from smtpmx.relay.nexthop import NextHop
        from smtpmx.relay.request import DeliveryRequest

        return request.transact(DeliveryRequest(
            hop=NextHop.lmtp(self.endpoint),
            heloName=request.heloName,
            sender=request.sender,
            recipients=request.recipients,
            messageFile=request.messageFile,
            size=request.size,
            protocol="lmtp",
        ))


@implementer(IPlugin, IDeliveryBackendFactory)
class LmtpBackendFactory:
    """
    Makes the C{lmtp:ENDPOINT} courier.
    """

    name = "lmtp"
    description = (
        "lmtp:ENDPOINT - queues the mail, then hands it to an LMTP server (Dovecot) at a"
        " Twisted client endpoint such as unix:/run/dovecot/lmtp or tcp:127.0.0.1:24."
    )

    def makeBackend(self, argument: Optional[str]) -> LmtpBackend:
        """
        An L{LmtpBackend} for the endpoint C{argument}.

        @raise ValueError: no endpoint, or not a client endpoint string.
        """
        if not argument or not argument.startswith(LMTP_ENDPOINT_TYPES):
            raise ValueError(
                "an LMTP endpoint is a Twisted client endpoint such as"
                f" unix:/run/dovecot/lmtp or tcp:127.0.0.1:24, not {argument!r}"
            )
        return LmtpBackend(argument)


maildir = MaildirBackendFactory()
lmtp = LmtpBackendFactory()
