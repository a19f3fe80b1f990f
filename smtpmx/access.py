"""
Who may send mail where: local domains, relay domains, relay networks, and
the final guard that keeps smtpmx from ever being an open relay.

L{Access.decide} turns a validator's verdict into the reply to RCPT and the
destinations of the recipient.  Whatever a validator says, a recipient in a
domain that is neither local nor a relay domain, from a client outside the
relay networks, is refused C{554 5.7.1}.

A local recipient goes to its domain's delivery backend (C{--delivery},
docs/storage.rst): a L{LocalMailbox} for a Maildir domain, an
L{CourierRecipient} (queued, then handed to its delivery backend, such as
an LMTP server, RFC 2033) for an
LMTP domain.
"""

from __future__ import annotations

import ipaddress
from typing import Iterable, Optional, Union

from smtpmx import reply
from smtpmx.address import Address, UnsafeMailbox, mailboxName
from smtpmx.config import Config
from smtpmx.backends import MAILDIR, backendFor, lmtpEndpoint
from smtpmx.envelope import CourierRecipient, Destination, LocalMailbox, RemoteAddress
from smtpmx.reply import Reply
from smtpmx.validation import Accept, Reject

# How many client addresses L{Access.clientMayRelay} remembers at most.
TRUSTED_CACHE = 4096


class Access:
    """
    The relay and locality policy of one server.

    @ivar domains: the local domains, lower-cased; the first is where a
        bare C{postmaster} goes.
    """

    def __init__(
        self,
        domains: Iterable[str],
        relayDomains: Iterable[str] = (),
        relayNetworks: Iterable[str] = (),
        delimiter: str = "+",
        delivery: tuple[tuple[Optional[str], str], ...] = (),
    ) -> None:
        """
        @param delivery: C{--delivery}'s checked entries, C{(domain or
            None, backend)}; none means every local domain is a Maildir one.
        """
        self.domains = tuple(d.lower() for d in domains)
        self._domainSet = frozenset(self.domains)
        self._relayDomains = frozenset(d.lower() for d in relayDomains)
        self._networks = tuple(
            ipaddress.ip_network(n, strict=False) for n in relayNetworks
        )
        self.delimiter = delimiter
        self._delivery = tuple(delivery)
        # clientMayRelay's answers by client address: the same few clients
        # ask again and again, several times a message.
        self._trusted: dict[str, bool] = {}

    @classmethod
    def fromConfig(cls, config: Config) -> "Access":
        """
        The policy a server with C{config} applies: its local domains,
        relay domains, relay networks and recipient delimiter.
        """
        return cls(
            config.domains,
            config.relayDomains,
            config.relayNetworks,
            config.recipientDelimiter,
            config.delivery,
        )

    def isLocal(self, domain: str) -> bool:
        """
        Whether mail for C{domain} is delivered here.
        """
        return domain.lower() in self._domainSet

    def lmtpEndpoint(self, domain: str) -> Optional[str]:
        """
        The LMTP server's endpoint when the local C{domain} is delivered
        over LMTP, L{None} when it is a Maildir domain (C{--delivery}).
        """
        return lmtpEndpoint(backendFor(self._delivery, domain.lower()))

    def localDestination(self, target: Address) -> Union[LocalMailbox, CourierRecipient]:
        """
        Where a recipient in one of our domains is delivered: its Maildir,
        or, for an LMTP domain, the LMTP server with the address exactly
        as given (the server, not smtpmx, interprets its local part).

        @raise UnsafeMailbox: the address cannot be delivered here: its
            local part cannot name a Maildir, or (for LMTP) it holds a
            control character and is never sent on.
        """
        backend = backendFor(self._delivery, target.domain.lower())
        if backend != MAILDIR:
            if target.hasControlCharacters():
                raise UnsafeMailbox(f"control character in {target!r}")
            return CourierRecipient(target, backend)
        return LocalMailbox(target.domain.lower(), mailboxName(target, self.delimiter))

    def clientMayRelay(self, clientHost: str) -> bool:
        """
        Whether the client at C{clientHost} is in a relay network.  The
        answer is remembered for the last L{TRUSTED_CACHE} addresses asked
        about (parsing the address costs more than the rest of a RCPT's
        policy).
        """
        trusted = self._trusted.get(clientHost)
        if trusted is None:
            if len(self._trusted) >= TRUSTED_CACHE:
                self._trusted.clear()
            trusted = self._trusted[clientHost] = self._inRelayNetwork(clientHost)
        return trusted

    def _inRelayNetwork(self, clientHost: str) -> bool:
        """
        Whether the address C{clientHost} is in a relay network.
        """
        try:
            ip = ipaddress.ip_address(clientHost.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
            ip = ip.ipv4_mapped
        return any(ip in net for net in self._networks)

    def mayRelay(self, clientHost: str, domain: str) -> bool:
        """
        Whether mail for the non-local C{domain} may be accepted from
        C{clientHost}: the client is trusted or the domain is a relay
        domain (we are its backup MX).
        """
        return domain.lower() in self._relayDomains or self.clientMayRelay(clientHost)

    def postmaster(self, recipient: Address) -> Optional[Union[LocalMailbox, CourierRecipient]]:
        """
        The destination of C{recipient} when it is a postmaster we must
        always accept (RFC 5321 4.5.1): C{postmaster@} a local domain, or a
        bare C{postmaster} (which belongs to the first local domain).  Like
        any recipient of its domain it goes to the domain's backend: its
        Maildir, or the LMTP server (which must know it, docs/storage.rst).
        """
        if not recipient.domain:
            recipient = Address("postmaster", self.domains[0])
        elif not self.isLocal(recipient.domain):
            return None
        try:
            name = mailboxName(recipient, self.delimiter)
        except UnsafeMailbox:
            return None
        if name != "postmaster":
            return None
        return self.localDestination(recipient)

    def decide(
        self, clientHost: str, recipient: Address, verdict: Accept | Reject | None
    ) -> tuple[Reply, list[Destination]]:
        """
        The reply to RCPT and where the message goes, given the verdict of
        the validator chain (L{None} when no validator had an opinion).
        """
        local = self.isLocal(recipient.domain)
        if not local and not self.mayRelay(clientHost, recipient.domain):
            return reply.RELAY_DENIED, []
        if isinstance(verdict, Reject):
            return Reply(verdict.code, verdict.enhanced, verdict.text), []
        if verdict is None:
            if local:
                return reply.UNKNOWN_USER, []
            return reply.RECIPIENT_OK, [RemoteAddress(recipient)]
        targets = verdict.deliverTo if verdict.deliverTo is not None else [recipient]
        destinations: list[Destination] = []
        for target in targets:
            if self.isLocal(target.domain):
                try:
                    destinations.append(self.localDestination(target))
                except UnsafeMailbox:
                    return reply.UNSAFE_MAILBOX, []
            else:
                destinations.append(RemoteAddress(target))
        return reply.RECIPIENT_OK, destinations
