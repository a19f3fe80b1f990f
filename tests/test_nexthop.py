"""
Tests for L{smtpmx.relay.nexthop}: routes, MX, implicit MX, null MX and
how DNS failures are classified, against a real authoritative DNS server
from L{twisted.names} on the loopback interface.
"""

from __future__ import annotations

import pytest
from twisted.internet import reactor
from twisted.internet.defer import fail
from twisted.internet.protocol import DatagramProtocol
from twisted.names import authority, common, dns, error, server
from twisted.trial.unittest import SynchronousTestCase, TestCase

from smtpmx.relay.nexthop import (
    NextHop,
    PermanentFailure,
    TemporaryFailure,
    findRoute,
    makeResolver,
    resolveNextHops,
)

ZONE = b"example.test"


class _Zone(authority.FileAuthority):
    """
    An authority for one zone whose records are given, not read from a
    file.
    """

    def __init__(self, soa: tuple[bytes, dns.Record_SOA], records: dict[bytes, list]) -> None:
        """
        @param soa: the zone's name and SOA record.
        @param records: lower-cased names to their records.
        """
        common.ResolverBase.__init__(self)
        self.soa = soa
        self.records = records


class _Broken(common.ResolverBase):
    """
    An authority for C{servfail.test} that fails every query, which the
    DNS server answers with SERVFAIL.
    """

    def _lookup(self, name, cls, type, timeout=None):
        """
        Fail for names under C{servfail.test}; pass on the others.
        """
        if name.lower().endswith(b"servfail.test"):
            return fail(RuntimeError("backend down"))
        return fail(error.DomainError(name))


def _zone() -> _Zone:
    """
    The test zone: a domain with three MX hosts (one without an address),
    a domain with only an address, a null MX, a domain with neither MX nor
    address, and one whose only MX host does not exist.
    """
    soa = dns.Record_SOA(
        mname=b"ns." + ZONE, rname=b"root." + ZONE, serial=1, refresh=1, retry=1,
        expire=1, minimum=1, ttl=1,
    )
    return _Zone(
        (ZONE, soa),
        {
            ZONE: [
                soa,
                dns.Record_MX(20, b"mx2." + ZONE, ttl=1),
                dns.Record_MX(10, b"mx1." + ZONE, ttl=1),
                dns.Record_MX(30, b"ghost." + ZONE, ttl=1),
                dns.Record_MX(15, b"mx3." + ZONE, ttl=1),
            ],
            b"mx1." + ZONE: [dns.Record_A("127.0.0.11", ttl=1), dns.Record_AAAA("::11", ttl=1)],
            b"mx2." + ZONE: [dns.Record_A("127.0.0.12", ttl=1)],
            b"mx3." + ZONE: [dns.Record_TXT(b"no address here", ttl=1)],
            b"implicit." + ZONE: [dns.Record_A("127.0.0.5", ttl=1), dns.Record_AAAA("::5", ttl=1)],
            b"nullmx." + ZONE: [dns.Record_MX(0, b"", ttl=1)],
            b"nothing." + ZONE: [dns.Record_TXT(b"v=spf1 -all", ttl=1)],
            b"brokenmx." + ZONE: [dns.Record_MX(10, b"ghost." + ZONE, ttl=1)],
        },
    )


class ResolveNextHopsTests(TestCase):
    """
    Tests for L{resolveNextHops} through L{makeResolver}, asking a real DNS
    server on 127.0.0.1.
    """

    def setUp(self) -> None:
        """
        Start the DNS server and make a resolver that asks only it.
        """
        factory = server.DNSServerFactory(authorities=[_zone(), _Broken()])
        port = reactor.listenUDP(0, dns.DNSDatagramProtocol(factory), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.resolver = makeResolver(("127.0.0.1", port.getHost().port), reactor, timeout=(2,))

    def resolve(self, domain: str, routes=(), relayPort: int = 25):
        """
        Resolve C{domain} with ties kept in the order of the answer.
        """
        return resolveNextHops(domain, routes, self.resolver, relayPort, tieBreaker=lambda: 0.0)

    @pytest.mark.rfc("5321", "5.1", "5321-5.1-1")
    @pytest.mark.rfc("5321", "5.1", "5321-5.1-7")
    @pytest.mark.rfc("5321", "5.1", "5321-5.1-8")
    async def test_mxOrder(self) -> None:
        """
        MX hosts come lowest preference first, each with its IPv4 then IPv6
        addresses and its own name; an MX host without any address is
        skipped.
        """
        hops = await self.resolve("Example.Test", relayPort=2525)
        self.assertEqual(
            hops,
            [
                NextHop("127.0.0.11", 2525, "mx1.example.test"),
                NextHop("::11", 2525, "mx1.example.test"),
                NextHop("127.0.0.12", 2525, "mx2.example.test"),
            ],
        )

    @pytest.mark.rfc("5321", "5.1", "5321-5.1-9")
    async def test_equalPreferenceShuffled(self) -> None:
        """
        MX hosts of equal preference are ordered by the tie breaker.
        """
        zone = _zone()
        zone.records[ZONE] = [zone.soa[1], dns.Record_MX(10, b"mx1." + ZONE), dns.Record_MX(10, b"mx2." + ZONE)]
        factory = server.DNSServerFactory(authorities=[zone])
        port = reactor.listenUDP(0, dns.DNSDatagramProtocol(factory), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        resolver = makeResolver(("127.0.0.1", port.getHost().port), reactor, timeout=(2,))
        keys = iter([0.9, 0.1])
        hops = await resolveNextHops("example.test", (), resolver, 25, tieBreaker=lambda: next(keys))
        self.assertEqual([h.name for h in hops], ["mx2.example.test", "mx1.example.test", "mx1.example.test"])

    @pytest.mark.rfc("5321", "5.1", "5321-5.1-4")
    async def test_implicitMx(self) -> None:
        """
        A domain with no MX records is its own mail exchanger (RFC 5321
        section 5.1).
        """
        hops = await self.resolve("implicit.example.test")
        self.assertEqual(
            hops,
            [
                NextHop("127.0.0.5", 25, "implicit.example.test"),
                NextHop("::5", 25, "implicit.example.test"),
            ],
        )

    @pytest.mark.rfc("7505", "3", "7505-3-1")
    async def test_nullMx(self) -> None:
        """
        A null MX (RFC 7505) is a permanent failure, 5.1.10.
        """
        with self.assertRaises(PermanentFailure) as caught:
            await self.resolve("nullmx.example.test")
        self.assertIn("5.1.10", str(caught.exception))

    @pytest.mark.rfc("5321", "5.1", "5321-5.1-2")
    async def test_nxdomain(self) -> None:
        """
        A domain that does not exist is a permanent failure.
        """
        with self.assertRaises(PermanentFailure) as caught:
            await self.resolve("missing.example.test")
        self.assertIn("not found", str(caught.exception))

    @pytest.mark.rfc("5321", "5.1", "5321-5.1-5")
    async def test_noMxNoAddress(self) -> None:
        """
        A domain that exists but has neither MX nor address records is a
        permanent failure.
        """
        with self.assertRaises(PermanentFailure):
            await self.resolve("nothing.example.test")

    @pytest.mark.rfc("5321", "5.1", "5321-5.1-5")
    @pytest.mark.rfc("5321", "5.1", "5321-5.1-6")
    async def test_noMxHostResolves(self) -> None:
        """
        When no MX host of a domain exists, the domain is a permanent
        failure.
        """
        with self.assertRaises(PermanentFailure):
            await self.resolve("brokenmx.example.test")

    @pytest.mark.rfc("5321", "5.1", "5321-5.1-3")
    async def test_servfail(self) -> None:
        """
        SERVFAIL is a temporary failure.
        """
        with self.assertRaises(TemporaryFailure) as caught:
            await self.resolve("servfail.test")
        self.assertIn("DNSServerError", str(caught.exception))
        self.flushLoggedErrors(RuntimeError)

    async def test_routeWinsWithoutDns(self) -> None:
        """
        A route for the domain is used without asking DNS at all, even for
        a domain that does not exist; its host is the certificate name.
        """
        routes = (("*", "smarthost.example", 587), ("MISSING.example.test", "relay.example", 2525))
        hops = await self.resolve("missing.Example.Test", routes)
        self.assertEqual(hops, [NextHop("relay.example", 2525, "relay.example")])

    async def test_addressLiteral(self) -> None:
        """
        An address literal is delivered to that address on the relay port.
        """
        self.assertEqual(await self.resolve("[127.0.0.9]"), [NextHop("127.0.0.9", 25, "127.0.0.9")])
        self.assertEqual(await self.resolve("[IPv6:::1]"), [NextHop("::1", 25, "::1")])


class TimeoutTests(TestCase):
    """
    A DNS server that never answers.
    """

    @pytest.mark.rfc("5321", "5.1", "5321-5.1-3")
    async def test_timeout(self) -> None:
        """
        A lookup that times out is a temporary failure, within the
        resolver's timeout.
        """
        port = reactor.listenUDP(0, DatagramProtocol(), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        resolver = makeResolver(("127.0.0.1", port.getHost().port), reactor, timeout=(0.3,))
        started = reactor.seconds()
        with self.assertRaises(TemporaryFailure) as caught:
            await resolveNextHops("example.test", (), resolver, 25)
        self.assertIn("Timeout", str(caught.exception))
        self.assertLess(reactor.seconds() - started, 5)


class FindRouteTests(SynchronousTestCase):
    """
    Tests for L{findRoute}.
    """

    def test_exactBeatsWildcard(self) -> None:
        """
        A route naming the domain beats C{*} whatever their order; case and
        a final dot do not matter.
        """
        routes = (("*", "a", 25), ("Example.COM", "b", 25))
        self.assertEqual(findRoute("example.com.", routes), ("Example.COM", "b", 25))
        self.assertEqual(findRoute("other.com", routes), ("*", "a", 25))

    def test_none(self) -> None:
        """
        No route for the domain and no C{*}: L{None}.
        """
        self.assertIsNone(findRoute("example.com", (("example.org", "b", 25),)))
