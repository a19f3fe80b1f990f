"""
Tests for L{smtpmx.auth.spf}: SPF verdicts (RFC 7208) by pyspf, its DNS
asked through our L{smtpmx.auth.dns.Lookups} of Twisted's DNS server on
the loopback interface (L{tests.dnszone}).
"""

from __future__ import annotations

import threading
import time

import pytest
from twisted.trial.unittest import SynchronousTestCase

from smtpmx.auth.dns import Resolver
from smtpmx.auth.results import SpfResult
from smtpmx.auth.spf import checkSpf
from tests.dnszone import RunningDNS, silentServer, zoneSource

# How much later than its bound a check that times out may end.
SLACK = 0.6

SENDERS = "192.0.2.0/24"

ZONE = zoneSource(
    "example.test",
    [
        ("TXT", "pass.example.test", f"v=spf1 ip4:{SENDERS} ip6:2001:db8::/32 -all", {"ttl": 300}),
        ("TXT", "soft.example.test", f"v=spf1 ip4:{SENDERS} ~all"),
        ("TXT", "neutral.example.test", "v=spf1 ?all"),
        ("TXT", "nospf.example.test", "google-site-verification=abc"),
        ("TXT", "broken.example.test", "v=spf1 ip4:192.0.2.0/24 frobnicate -all"),
        ("TXT", "double.example.test", "v=spf1 -all"),
        ("TXT", "double.example.test", "v=spf1 +all"),
        # The record in two strings, joined without a space.
        ("TXT", "split.example.test", f"v=spf1 ip4:{SENDERS} ", "-all"),
        # a, mx and include mechanisms, and a macro.
        ("TXT", "mechanisms.example.test", "v=spf1 a mx include:pass.example.test -all"),
        ("A", "mechanisms.example.test", "198.51.100.1"),
        ("MX", "mechanisms.example.test", 10, "mx.mechanisms.example.test"),
        ("A", "mx.mechanisms.example.test", "198.51.100.2"),
        ("TXT", "macro.example.test", "v=spf1 exists:%{l}.users.example.test -all"),
        ("A", "alice.users.example.test", "127.0.0.2"),
        # Eleven mechanisms that need DNS: over RFC 7208 section 4.6.4's
        # ten; and three that find nothing: over its two void lookups.
        ("TXT", "greedy.example.test",
         "v=spf1 " + " ".join(f"a:h{i}.example.test" for i in range(11)) + " -all"),
        *[("A", f"h{i}.example.test", "198.51.100.200") for i in range(11)],
        ("TXT", "void.example.test",
         "v=spf1 " + " ".join(f"a:v{i}.example.test" for i in range(3)) + " -all"),
        # The HELO name of the null sender's checks.
        ("TXT", "helo.example.test", f"v=spf1 ip4:{SENDERS} -all"),
    ],
)


def deadlineIn(seconds: float) -> float:
    """
    A deadline C{seconds} from now, on the resolver's default clock.
    """
    return time.monotonic() + seconds


class CheckSpfTests(SynchronousTestCase):
    """
    Tests for L{checkSpf} against one DNS server serving C{example.test},
    started once for the class.
    """

    @classmethod
    def setUpClass(cls) -> None:
        """
        Start the DNS server.
        """
        cls.dns = RunningDNS.start(cls.addClassCleanup, ZONE, "pass.example.test")
        cls.server = (cls.dns.host, cls.dns.port)

    def check(self, clientHost: str, sender, helo: str = "client.example.org", resolver=None) -> SpfResult:
        """
        Check SPF with fresh lookups (and a fresh resolver unless given).
        """
        resolver = resolver or Resolver(self.server)
        return checkSpf(resolver.lookups(deadlineIn(5)), clientHost, sender, helo)

    def test_pass(self) -> None:
        """
        A client inside the domain's ip4 or ip6 ranges passes (RFC 7208
        section 2.6.3); the result names the MAIL FROM domain checked.
        """
        self.assertEqual(self.check("192.0.2.25", "alice@pass.example.test"),
                         SpfResult("pass", mailfrom="pass.example.test"))
        self.assertEqual(self.check("2001:db8::25", "alice@pass.example.test").result, "pass")

    def test_fail(self) -> None:
        """
        A client outside them fails where the record ends in C{-all}
        (section 2.6.4).
        """
        self.assertEqual(self.check("198.51.100.7", "alice@pass.example.test"),
                         SpfResult("fail", mailfrom="pass.example.test"))
        self.assertEqual(self.check("2001:db9::1", "alice@pass.example.test").result, "fail")

    def test_softfail(self) -> None:
        """
        C{~all} gives C{softfail} (section 2.6.5).
        """
        self.assertEqual(self.check("198.51.100.7", "bob@soft.example.test").result, "softfail")

    def test_neutral(self) -> None:
        """
        C{?all} gives C{neutral} (section 2.6.2).
        """
        self.assertEqual(self.check("198.51.100.7", "bob@neutral.example.test").result, "neutral")

    @pytest.mark.rfc("7208", "4.5")
    def test_none(self) -> None:
        """
        A domain without an SPF record, existing or not, gives C{none}
        (section 4.5).
        """
        for domain in ["nospf.example.test", "nowhere.example.test"]:
            self.assertEqual(self.check("192.0.2.25", f"carol@{domain}"), SpfResult("none", mailfrom=domain))

    @pytest.mark.rfc("7208", "4.5")
    @pytest.mark.rfc("7208", "4.6")
    @pytest.mark.rfc("7208", "4.6.4", "7208-4.6.4-1", "7208-4.6.4-2")
    def test_permerror(self) -> None:
        """
        An unknown mechanism, two SPF records, more than ten mechanisms
        that need DNS, or more than two of them finding nothing give
        C{permerror} (sections 4.5, 4.6.4, 5).
        """
        for name in ["broken", "double", "greedy", "void"]:
            domain = f"{name}.example.test"
            self.assertEqual(self.check("192.0.2.25", f"dave@{domain}").result, "permerror", domain)

    def test_recordInSeveralStrings(self) -> None:
        """
        A record published as several strings is their concatenation
        (section 3.3).
        """
        self.assertEqual(self.check("192.0.2.25", "erin@split.example.test").result, "pass")
        self.assertEqual(self.check("198.51.100.7", "erin@split.example.test").result, "fail")

    def test_mechanismsThatLookUp(self) -> None:
        """
        The a, mx and include mechanisms look their names up through our
        lookups; a macro expands the sender's local part (section 7).
        """
        for client in ["198.51.100.1", "198.51.100.2", "192.0.2.25"]:
            self.assertEqual(self.check(client, "frank@mechanisms.example.test").result, "pass", client)
        self.assertEqual(self.check("198.51.100.3", "frank@mechanisms.example.test").result, "fail")
        self.assertEqual(self.check("198.51.100.3", "alice@macro.example.test").result, "pass")
        self.assertEqual(self.check("198.51.100.3", "mallory@macro.example.test").result, "fail")

    @pytest.mark.rfc("7208", "2.4", "7208-2.4-2")
    def test_nullSenderChecksHelo(self) -> None:
        """
        For the null reverse-path the identity checked is
        C{postmaster@} the HELO name (section 2.4), reported as C{helo}.
        """
        self.assertEqual(self.check("192.0.2.25", None, "Helo.Example.Test"),
                         SpfResult("pass", helo="helo.example.test"))
        self.assertEqual(self.check("198.51.100.7", None, "helo.example.test"),
                         SpfResult("fail", helo="helo.example.test"))

    def test_uncheckableIdentities(self) -> None:
        """
        An address literal or a single-label name cannot have an SPF
        record: C{none}, without a lookup (section 4.3); so does a client
        host that is not an IP address.
        """
        resolver = Resolver(self.server)
        lookups = resolver.lookups(deadlineIn(5))
        self.assertEqual(checkSpf(lookups, "192.0.2.25", None, "[192.0.2.25]"),
                         SpfResult("none", helo="[192.0.2.25]"))
        self.assertEqual(checkSpf(lookups, "192.0.2.25", "root@localhost", "client.example.org"),
                         SpfResult("none", mailfrom="localhost"))
        self.assertEqual(checkSpf(lookups, "192.0.2.25", "x@a..example.test", "client.example.org"),
                         SpfResult("none", mailfrom="a..example.test"))
        self.assertEqual(checkSpf(lookups, "not-an-address", "alice@pass.example.test", "client.example.org"),
                         SpfResult("none", mailfrom="pass.example.test"))
        self.assertEqual(lookups.queries, 0)

    def test_senderForms(self) -> None:
        """
        The domain is what follows the last C{@}, whatever a quoted local
        part holds, and is reported in lower case.
        """
        self.assertEqual(self.check("192.0.2.25", '"a@b"@Pass.Example.TEST'),
                         SpfResult("pass", mailfrom="pass.example.test"))

    def test_burstCostsOneQuery(self) -> None:
        """
        Checks of one domain's mail within the record's TTL cost one DNS
        query in all: the first check's.
        """
        resolver = Resolver(self.server)
        first = resolver.lookups(deadlineIn(5))
        self.assertEqual(checkSpf(first, "192.0.2.25", "a@pass.example.test", "c.example.org").result, "pass")
        self.assertEqual(first.queries, 1)
        for client, result in [("192.0.2.26", "pass"), ("198.51.100.9", "fail")] * 5:
            later = resolver.lookups(deadlineIn(5))
            self.assertEqual(checkSpf(later, client, "b@pass.example.test", "c.example.org").result, result)
            self.assertEqual(later.queries, 0)

    def test_manyThreads(self) -> None:
        """
        Checks run at once in many threads each get their own lookups'
        answers: one thread's server never answers while the others' do.
        """
        good = Resolver(self.server)
        silent = Resolver(silentServer(self.addCleanup), lookupTimeout=0.5)
        cases = [
            (good, "192.0.2.25", "a@pass.example.test", "pass"),
            (good, "198.51.100.7", "a@pass.example.test", "fail"),
            (good, "198.51.100.7", "a@soft.example.test", "softfail"),
            (good, "198.51.100.2", "a@mechanisms.example.test", "pass"),
            (good, "198.51.100.7", "a@neutral.example.test", "neutral"),
            (silent, "192.0.2.25", "a@pass.example.test", "temperror"),
        ] * 4
        results: list = [None] * len(cases)
        start = threading.Barrier(len(cases))

        def run(i: int) -> None:
            """
            Run one case.
            """
            resolver, client, sender, _ = cases[i]
            lookups = resolver.lookups(deadlineIn(10))
            start.wait()
            results[i] = checkSpf(lookups, client, sender, "c.example.org").result

        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(cases))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(15)
        self.assertEqual(results, [expected for *_, expected in cases])


class TemporaryErrorTests(SynchronousTestCase):
    """
    Tests for L{checkSpf} when DNS does not answer: C{temperror} (RFC 7208
    section 2.6.6), within the time allowed.
    """

    @pytest.mark.rfc("7208", "4.4")
    def test_silentServer(self) -> None:
        """
        A DNS server that never answers gives C{temperror} once the
        per-lookup timeout is over.
        """
        resolver = Resolver(silentServer(self.addCleanup), lookupTimeout=0.5)
        started = time.monotonic()
        lookups = resolver.lookups(deadlineIn(30))
        result = checkSpf(lookups, "192.0.2.25", "a@pass.example.test", "c.example.org")
        self.assertEqual(result, SpfResult("temperror", mailfrom="pass.example.test"))
        self.assertLess(time.monotonic() - started, 0.5 + SLACK)

    def test_deadline(self) -> None:
        """
        The check's deadline bounds it even when the per-lookup timeout is
        longer.
        """
        resolver = Resolver(silentServer(self.addCleanup), lookupTimeout=30)
        started = time.monotonic()
        result = checkSpf(resolver.lookups(deadlineIn(0.5)), "192.0.2.25", None, "helo.example.test")
        self.assertEqual(result, SpfResult("temperror", helo="helo.example.test"))
        self.assertLess(time.monotonic() - started, 0.5 + SLACK)

    def test_deadlinePassed(self) -> None:
        """
        A check whose deadline has passed is C{temperror} at once.
        """
        resolver = Resolver(silentServer(self.addCleanup), clock=lambda: 50.0)
        started = time.monotonic()
        result = checkSpf(resolver.lookups(50.0), "192.0.2.25", "a@pass.example.test", "c.example.org")
        self.assertEqual(result.result, "temperror")
        self.assertLess(time.monotonic() - started, 0.1)

    def test_unexpectedError(self) -> None:
        """
        Whatever goes wrong inside the check, L{checkSpf} does not raise:
        the failure is logged and the result is C{temperror}.
        """

        class Broken:
            """
            Lookups that fail in a way nobody expects.
            """

            queries = 0

            def records(self, name: str, rdtype: str) -> list:
                """
                Fail.
                """
                raise RuntimeError("a bug")

        result = checkSpf(Broken(), "192.0.2.25", "a@pass.example.test", "c.example.org")
        self.assertEqual(result, SpfResult("temperror", mailfrom="pass.example.test"))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
