"""
Tests for L{smtpmx.auth.dns}: the blocking lookups of sender
authentication, against Twisted's DNS server on the loopback interface
(L{tests.dnszone}), a server that never answers and one that only fails.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time

from twisted.trial.unittest import SynchronousTestCase

from smtpmx.auth.dns import Resolver, TemporaryDNSError
from tests.dnszone import RunningDNS, failingServer, silentServer, zoneSource
from tests.e2e import freePort

# How much later than its bound a lookup that times out may end: dnspython
# sleeps a short back-off between attempts, and the machine may be busy.
SLACK = 0.6

ZONE = zoneSource(
    "example.test",
    [
        ("TXT", "one.example.test", "v=spf1 -all", {"ttl": 300}),
        ("TXT", "split.example.test", "v=DKIM1; k=rsa; ", "p=AAAA", {"ttl": 300}),
        ("TXT", "long.example.test", "x" * 600, {"ttl": 300}),
        ("TXT", "two.example.test", "first", {"ttl": 300}),
        ("TXT", "two.example.test", "second", {"ttl": 300}),
        ("TXT", "brief.example.test", "short-lived"),
        ("A", "host.example.test", "192.0.2.1", {"ttl": 300}),
        ("AAAA", "host.example.test", "2001:db8::1", {"ttl": 300}),
        ("MX", "mail.example.test", 10, "host.example.test", {"ttl": 300}),
    ],
    negativeTtl=300,
)


def deadlineIn(seconds: float) -> float:
    """
    A deadline C{seconds} from now, on the resolver's default clock.
    """
    return time.monotonic() + seconds


class LookupsTests(SynchronousTestCase):
    """
    Tests for L{Resolver.lookups} against one DNS server serving
    C{example.test}, started once for the class.
    """

    @classmethod
    def setUpClass(cls) -> None:
        """
        Start the DNS server.
        """
        cls.dns = RunningDNS.start(cls.addClassCleanup, ZONE, "one.example.test")
        cls.server = (cls.dns.host, cls.dns.port)

    def lookups(self, resolver=None, seconds: float = 5.0):
        """
        The lookups of one check with C{seconds} to run, from C{resolver}
        or a fresh one (an empty cache) asking the class's server.
        """
        if resolver is None:
            resolver = Resolver(self.server)
        return resolver.lookups(deadlineIn(seconds))

    def test_txt(self) -> None:
        """
        A TXT record is read as one byte string.
        """
        self.assertEqual(self.lookups().txt("one.example.test"), [b"v=spf1 -all"])

    def test_txtStringsJoined(self) -> None:
        """
        A TXT record of several strings is read as their concatenation,
        without separators (RFC 7208 section 3.3, RFC 6376 section
        3.6.2.2), and a value longer than one string's 255 bytes comes back
        whole.
        """
        lookups = self.lookups()
        self.assertEqual(lookups.txt("split.example.test"), [b"v=DKIM1; k=rsa; p=AAAA"])
        self.assertEqual(lookups.txt("long.example.test"), [b"x" * 600])

    def test_txtSeveralRecords(self) -> None:
        """
        Each TXT record at a name is one item.
        """
        self.assertEqual(sorted(self.lookups().txt("two.example.test")), [b"first", b"second"])

    def test_nameForms(self) -> None:
        """
        A name is absolute with or without its final dot, and its case
        does not matter.
        """
        self.assertEqual(self.lookups().txt("One.Example.TEST."), [b"v=spf1 -all"])

    def test_noSuchName(self) -> None:
        """
        A name that does not exist (NXDOMAIN) has no records.
        """
        self.assertEqual(self.lookups().txt("nowhere.example.test"), [])

    def test_noData(self) -> None:
        """
        A name with records, but none of the type asked, has none of them.
        """
        self.assertEqual(self.lookups().txt("host.example.test"), [])

    def test_impossibleNames(self) -> None:
        """
        A name that cannot exist (an empty label, a label over 63 octets,
        the root) has no records, and nobody is asked.
        """
        lookups = self.lookups()
        for name in ["a..example.test", "x" * 64 + ".example.test", "", "."]:
            self.assertEqual(lookups.txt(name), [], name)
        self.assertEqual(lookups.queries, 0)

    def test_records(self) -> None:
        """
        L{Lookups.records} gives the records of any type as dnspython's
        rdata: addresses, MX preference and exchange.
        """
        lookups = self.lookups()
        self.assertEqual([r.address for r in lookups.records("host.example.test", "A")], ["192.0.2.1"])
        self.assertEqual([r.address for r in lookups.records("host.example.test", "AAAA")], ["2001:db8::1"])
        [mx] = lookups.records("mail.example.test", "MX")
        self.assertEqual((mx.preference, mx.exchange.to_text()), (10, "host.example.test."))

    def test_burstCostsOneQuery(self) -> None:
        """
        Lookups of one name by many checks within its TTL cost one query:
        the first check's; the others are answered from the cache.
        """
        resolver = Resolver(self.server)
        first = self.lookups(resolver)
        self.assertEqual(first.txt("one.example.test"), [b"v=spf1 -all"])
        self.assertEqual(first.queries, 1)
        for _ in range(20):
            later = self.lookups(resolver)
            self.assertEqual(later.txt("one.example.test"), [b"v=spf1 -all"])
            self.assertEqual(later.txt("ONE.example.test."), [b"v=spf1 -all"])
            self.assertEqual(later.queries, 0)

    def test_negativeAnswersCached(self) -> None:
        """
        That a name does not exist, or has no record of a type, is cached
        too, for the SOA's negative TTL (RFC 2308 section 5).
        """
        resolver = Resolver(self.server)
        first = self.lookups(resolver)
        first.txt("nowhere.example.test")
        first.txt("host.example.test")
        self.assertEqual(first.queries, 2)
        later = self.lookups(resolver)
        self.assertEqual(later.txt("nowhere.example.test"), [])
        self.assertEqual(later.txt("host.example.test"), [])
        self.assertEqual(later.queries, 0)

    def test_cacheKeepsAnswersForTheirTtl(self) -> None:
        """
        An answer is asked for again once its TTL (here one second) is
        over.
        """
        resolver = Resolver(self.server)
        first = self.lookups(resolver)
        self.assertEqual(first.txt("brief.example.test"), [b"short-lived"])
        time.sleep(1.1)
        later = self.lookups(resolver)
        self.assertEqual(later.txt("brief.example.test"), [b"short-lived"])
        self.assertEqual(later.queries, 1)

    def test_deadlinePassed(self) -> None:
        """
        Past the check's deadline a lookup raises L{TemporaryDNSError} at
        once, without asking, even for an answer in the cache.
        """
        now = [100.0]
        resolver = Resolver(self.server, clock=lambda: now[0])
        lookups = resolver.lookups(110.0)
        self.assertEqual(lookups.txt("one.example.test"), [b"v=spf1 -all"])
        now[0] = 110.0
        started = time.monotonic()
        self.assertRaises(TemporaryDNSError, lookups.txt, "one.example.test")
        self.assertRaises(TemporaryDNSError, lookups.txt, "other.example.test")
        self.assertLess(time.monotonic() - started, 0.1)
        self.assertEqual(lookups.queries, 1)

    def test_manyThreads(self) -> None:
        """
        One resolver serves many threads at once, each check with its own
        lookups, every answer the right one.
        """
        resolver = Resolver(self.server)
        expected = {
            "one.example.test": [b"v=spf1 -all"],
            "split.example.test": [b"v=DKIM1; k=rsa; p=AAAA"],
            "nowhere.example.test": [],
            "host.example.test": [],
        }
        names = sorted(expected) * 8
        results: list = [None] * len(names)
        start = threading.Barrier(len(names))

        def run(i: int) -> None:
            """
            Look one name up, three times.
            """
            lookups = resolver.lookups(deadlineIn(10))
            start.wait()
            results[i] = [lookups.txt(names[i]) for _ in range(3)]

        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(names))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(15)
        for name, got in zip(names, results):
            self.assertEqual(got, [expected[name]] * 3, name)


class FailureTests(SynchronousTestCase):
    """
    Tests for how L{Lookups} fail: every way of not getting an answer is a
    L{TemporaryDNSError}, within the bound.
    """

    def assertFailsWithin(self, lookups, bound: float) -> float:
        """
        Assert that a TXT lookup raises L{TemporaryDNSError} no later than
        C{bound} seconds (plus L{SLACK}).

        @return: how long it took.
        """
        started = time.monotonic()
        self.assertRaises(TemporaryDNSError, lookups.txt, "example.test")
        took = time.monotonic() - started
        self.assertLess(took, bound + SLACK)
        return took

    def test_silentServerLookupTimeout(self) -> None:
        """
        A server that never answers makes a lookup fail once the
        per-lookup timeout is over.
        """
        resolver = Resolver(silentServer(self.addCleanup), lookupTimeout=0.5)
        took = self.assertFailsWithin(resolver.lookups(deadlineIn(30)), 0.5)
        self.assertGreaterEqual(took, 0.5)

    def test_silentServerDeadline(self) -> None:
        """
        A lookup ends at the check's deadline when that comes before the
        per-lookup timeout.
        """
        resolver = Resolver(silentServer(self.addCleanup), lookupTimeout=30)
        took = self.assertFailsWithin(resolver.lookups(deadlineIn(0.5)), 0.5)
        self.assertGreaterEqual(took, 0.4)

    def test_serverFailure(self) -> None:
        """
        SERVFAIL, or a server that refuses, is a temporary failure (RFC
        7208 section 4.4, RFC 6376 section 6.1.2).
        """
        for rcode in ("SERVFAIL", "REFUSED"):
            resolver = Resolver(failingServer(self.addCleanup, rcode), lookupTimeout=5)
            self.assertFailsWithin(resolver.lookups(deadlineIn(5)), 0.5)

    def test_noServerListening(self) -> None:
        """
        A server address where nothing listens is a temporary failure
        within the per-lookup timeout.
        """
        resolver = Resolver(("127.0.0.1", freePort()), lookupTimeout=0.5)
        self.assertFailsWithin(resolver.lookups(deadlineIn(5)), 0.5)

    def test_resolvConfMissing(self) -> None:
        """
        Without C{--dns-server} the servers come from the resolver
        configuration, read at the first lookup: a missing file does not
        stop the resolver being made, but every lookup then fails.
        """
        resolver = Resolver(None, resolvConf="/nonexistent/resolv.conf")
        lookups = resolver.lookups(deadlineIn(5))
        self.assertFailsWithin(lookups, 0.1)
        self.assertFailsWithin(lookups, 0.1)

    def test_resolvConfWithoutServers(self) -> None:
        """
        A resolver configuration that names no server makes every lookup
        fail.
        """
        fd, path = tempfile.mkstemp(prefix="smtpmx-resolv-")
        self.addCleanup(os.remove, path)
        with os.fdopen(fd, "w") as f:
            f.write("# no nameserver line\nsearch example.test\n")
        resolver = Resolver(None, resolvConf=path)
        self.assertFailsWithin(resolver.lookups(deadlineIn(5)), 0.1)
