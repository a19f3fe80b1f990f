"""
Where a relayed message goes next (RFC 5321 section 5.1, RFC 7505;
docs/relay.rst).

The next hops of a domain are, in order: a C{--route} for it (no DNS at
all), else the hosts of its MX records, lowest preference first, else the
domain itself (the implicit MX).  A null MX (RFC 7505) says the domain
takes no mail: a permanent failure.  Every next hop is one address to
connect to, with the name its certificate must carry.

DNS answers are classified the way a sender must act on them: a name that
does not exist is permanent, a server failure or a timeout is temporary.
"""

from __future__ import annotations

import ipaddress
import random
from dataclasses import dataclass
from typing import Callable, Iterable, Optional, Sequence

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IResolver
from twisted.logger import Logger
from twisted.names import client, dns, error

_log = Logger()

# Resolver timeouts: each retransmission, in seconds (the total is how long
# a lookup may take before it is a temporary failure).
DNS_TIMEOUTS = (1, 3, 11, 45)


@dataclass(frozen=True)
class NextHop:
    """
    One host to try a transaction with.

    @ivar host: the address (or, for a route, the host name) to connect to.
    @ivar port: the TCP port.
    @ivar name: the host name a certificate must match with C{--relay-tls
        verify}: the MX host name, or the host given in the route.
    @ivar endpoint: for an LMTP server (docs/relay.rst), the Twisted client
        endpoint string to connect to instead of C{host} and C{port}
        (C{unix:/run/dovecot/lmtp}, C{tcp:127.0.0.1:24}); L{None} for a
        host found by L{resolveNextHops}.
    """

    host: str
    port: int
    name: str
    endpoint: Optional[str] = None

    @classmethod
    def lmtp(cls, endpoint: str) -> NextHop:
        """
        The next hop of recipients queued with C{via} an LMTP server: its
        endpoint string, no DNS (docs/relay.rst).
        """
        return cls(host="", port=0, name="localhost", endpoint=endpoint)

    @property
    def label(self) -> str:
        """
        The next hop for log lines and reasons: C{name[address]:port}, or
        C{lmtp:ENDPOINT}.
        """
        if self.endpoint is not None:
            return f"lmtp:{self.endpoint}"
        return f"{self.name}[{self.host}]:{self.port}"


class PermanentFailure(Exception):
    """
    The domain cannot be delivered to, now or later (no such domain, a null
    MX, no address at all).  C{str()} is the reason.
    """

    def __init__(self, reason: str) -> None:
        """
        @param reason: why, with an enhanced status code first.
        """
        super().__init__(reason)
        self.reason = reason


class TemporaryFailure(Exception):
    """
    The next hops cannot be known now (DNS server failure, timeout); try
    again later.  C{str()} is the reason.
    """

    def __init__(self, reason: str) -> None:
        """
        @param reason: why, with an enhanced status code first.
        """
        super().__init__(reason)
        self.reason = reason


# DNS errors that mean "no such name": nothing will change by retrying.
_NOT_FOUND = (error.DNSNameError, error.AuthoritativeDomainError)
# Any other error (SERVFAIL, REFUSED, a timeout, a socket error) means "ask
# again later".


def _ipLiteral(text: str) -> Optional[str]:
    """
    The address in an address literal (C{[1.2.3.4]}, C{[IPv6:::1]}, RFC
    5321 section 4.1.3), or in a bare address, or L{None}.
    """
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
        if text[:5].lower() == "ipv6:":
            text = text[5:]
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


def findRoute(
    domain: str, routes: Iterable[tuple[str, str, int]]
) -> Optional[tuple[str, str, int]]:
    """
    The route for C{domain}: one naming it (case-insensitively) beats one
    for C{*}.

    @param routes: C{(domain or "*", host, port)} triples, as configured.
    @return: the route triple, or L{None}.
    """
    domain = domain.rstrip(".").lower()
    wildcard = None
    for route in routes:
        pattern = route[0].rstrip(".").lower()
        if pattern == domain:
            return route
        if pattern == "*" and wildcard is None:
            wildcard = route
    return wildcard


def _describe(exception: Optional[BaseException]) -> str:
    """
    A short text for a DNS failure, for logs and reasons.
    """
    if exception is None:
        return "no data"
    name = type(exception).__name__
    detail = str(exception)
    return f"{name}: {detail}" if detail else name


def _isNotFound(exception: BaseException) -> bool:
    """
    Whether a lookup failed because the name does not exist (NXDOMAIN).
    """
    return isinstance(exception, _NOT_FOUND) or type(exception) is error.DomainError


def _records(answers: Sequence[dns.RRHeader], type: int) -> list:
    """
    The payloads of the records of C{type} in an answer section (a CNAME
    that comes along has been followed by the resolver already).
    """
    return [rr.payload for rr in answers if rr.type == type]


def _address(payload) -> str:
    """
    The text of the address in an A or AAAA record.
    """
    if isinstance(payload, dns.Record_A):
        return payload.dottedQuad()
    return str(ipaddress.IPv6Address(payload.address))


async def _addresses(resolver: IResolver, name: str) -> tuple[list[str], Optional[BaseException]]:
    """
    The IPv4 then IPv6 addresses of C{name}.

    @return: the addresses, and the error of a lookup that failed (the A
        one if both did), or L{None}.
    """
    results = await defer.DeferredList(
        [resolver.lookupAddress(name), resolver.lookupIPV6Address(name)],
        consumeErrors=True,
    )
    found: list[str] = []
    failed: Optional[BaseException] = None
    for ok, result in results:
        if not ok:
            failed = failed or result.value
            continue
        answers = result[0]
        for payload in _records(answers, dns.A) + _records(answers, dns.AAAA):
            text = _address(payload)
            if text not in found:
                found.append(text)
    return found, failed


async def _resolve(
    domain: str,
    routes: Iterable[tuple[str, str, int]],
    resolver: IResolver,
    relayPort: int,
    tieBreaker: Callable[[], float],
) -> list[NextHop]:
    """
    The body of L{resolveNextHops}.
    """
    literal = _ipLiteral(domain) if domain.startswith("[") else None
    if literal is not None:
        return [NextHop(literal, relayPort, literal)]
    if domain.startswith("["):
        raise PermanentFailure(f"5.1.2 bad address literal {domain}")

    route = findRoute(domain, routes)
    if route is not None:
        _, host, port = route
        host = _ipLiteral(host) or host
        return [NextHop(host, port, host)]

    name = domain.rstrip(".").lower()
    try:
        answers, _, _ = await resolver.lookupMailExchange(name)
    except Exception as e:
        if _isNotFound(e):
            raise PermanentFailure(f"5.1.2 domain {name} not found") from None
        raise TemporaryFailure(f"4.4.3 MX lookup for {name} failed: {_describe(e)}") from None

    mxs = _records(answers, dns.MX)
    exchanges = [(mx.preference, str(mx.name).rstrip(".")) for mx in mxs]
    if exchanges and all(host == "" for _, host in exchanges):
        # RFC 7505 section 3: "." as the only exchange means no mail.
        raise PermanentFailure("5.1.10 null MX")
    exchanges = [(preference, host) for preference, host in exchanges if host]

    if not exchanges:
        # RFC 5321 section 5.1: no MX records, the domain is its own MX.
        addresses, failed = await _addresses(resolver, name)
        if addresses:
            return [NextHop(a, relayPort, name) for a in addresses]
        if failed is not None and not _isNotFound(failed):
            raise TemporaryFailure(f"4.4.3 address lookup for {name} failed: {_describe(failed)}")
        raise PermanentFailure(f"5.4.4 {name} has no MX and no address records")

    # Lowest preference first; equal ones in random order (RFC 5321
    # section 5.1, to spread the load).
    ordered = sorted(((p, tieBreaker(), h) for p, h in exchanges), key=lambda t: (t[0], t[1]))
    hops: list[NextHop] = []
    temporary = None
    for _, _, host in ordered:
        literal = _ipLiteral(host)
        if literal is not None:
            # An address where a name belongs (RFC 5321 forbids it), but
            # it is clear where to go.
            addresses, failed = [literal], None
        else:
            addresses, failed = await _addresses(resolver, host)
        if not addresses:
            _log.warn(
                "MX host {host} of {domain} has no usable address ({why}); skipped",
                host=host, domain=name, why=_describe(failed),
            )
            if failed is not None and not _isNotFound(failed):
                temporary = failed
            continue
        for address in addresses:
            hop = NextHop(address, relayPort, host)
            if hop not in hops:
                hops.append(hop)
    if hops:
        return hops
    if temporary is not None:
        raise TemporaryFailure(f"4.4.3 no MX host of {name} could be resolved: {_describe(temporary)}")
    raise PermanentFailure(f"5.4.4 no MX host of {name} has an address")


def resolveNextHops(
    domain: str,
    routes: Iterable[tuple[str, str, int]],
    resolver: IResolver,
    relayPort: int,
    tieBreaker: Callable[[], float] = random.random,
) -> Deferred[list[NextHop]]:
    """
    The next hops for mail to C{domain}, in the order to try them.

    @param domain: the domain of the recipients (an address literal such as
        C{[192.0.2.1]} is that address).
    @param routes: the configured routes, C{(domain or "*", host, port)};
        a route for the domain itself beats C{*}, and a route means no DNS.
    @param resolver: a L{twisted.names} resolver for MX, A and AAAA.
    @param relayPort: the port of MX hosts (C{--relay-port},
        docs/options.rst).
    @param tieBreaker: orders MX hosts of equal preference; the default
        shuffles them.

    @return: a L{Deferred} that fires with a non-empty L{list} of
        L{NextHop}, or fails with L{PermanentFailure} (no such domain, null
        MX, no address anywhere) or L{TemporaryFailure} (DNS failure or
        timeout).
    """
    return Deferred.fromCoroutine(_resolve(domain, tuple(routes), resolver, relayPort, tieBreaker))


def makeResolver(
    dnsServer: Optional[tuple[str, int]], reactor, timeout: Sequence[float] = DNS_TIMEOUTS
) -> IResolver:
    """
    The resolver the relay uses.

    @param dnsServer: C{(host, port)} of the server to ask (C{--dns-server},
        docs/options.rst), or L{None} for the servers in
        C{/etc/resolv.conf}.
    @param reactor: the reactor its queries run on.
    @param timeout: the retransmission timeouts of each query.
    """
    if dnsServer is None:
        return client.Resolver(resolv="/etc/resolv.conf", timeout=tuple(timeout), reactor=reactor)
    return client.Resolver(servers=[dnsServer], timeout=tuple(timeout), reactor=reactor)
