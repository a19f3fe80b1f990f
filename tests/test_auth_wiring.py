"""
Tests for how sender authentication is wired into the server: the options
(C{--auth-checks}, C{--dmarc-policy}, C{--spf-reject}, C{--auth-timeout}),
the SPF check at C{MAIL FROM}, the removal of forged
C{Authentication-Results:} fields, the store that checks a message before
its filters and files or refuses it, the transaction's log line, and the
tap.  The checks themselves are fakes (L{tests.authfakes}).
"""

from __future__ import annotations

import os

import authres
import pytest
from twisted.internet.defer import CancelledError
from twisted.internet.task import Clock
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from smtpmx import reply
from smtpmx.access import Access
from smtpmx.auth.checker import GRACE, SenderAuthentication
from smtpmx.auth.results import ArcResult, AuthResults, DmarcResult, Method, SpfResult
from smtpmx.envelope import LocalMailbox, RemoteAddress
from smtpmx.filtering import Accept
from smtpmx.filterstore import FilteringStore
from smtpmx.reply import Refused
from smtpmx.testing import MemoryStore, filterableMessage, runAtOnce
from smtpmx.transactionlog import TRANSACTION_LOG_FORMAT
from tests.authfakes import (
    DKIM_PASS,
    DMARC_PASS,
    SPF_PASS,
    FakeChecks,
    HeldRunner,
    makeAuthentication,
)
from tests.serverhelpers import Server, makeConfig
from tests.test_filters import Fixed, chainOf, spoolDirectory
from tests.test_session import SessionDriver

MAIL = b"EHLO client.example\r\nMAIL FROM:<sender@remote.example>\r\n"
MESSAGE = b"From: sender@remote.example\r\nSubject: hi\r\n\r\nhello\r\n"
STORED = MESSAGE.replace(b"\r\n", b"\n")
DMARC_REJECT = DmarcResult("fail", "remote.example", "reject")


def fieldOf(extraHeaders: bytes) -> authres.AuthenticationResultsHeader:
    """
    Our C{Authentication-Results:} field, the first of C{extraHeaders},
    parsed back with C{authres}.
    """
    first = extraHeaders.split(b"\n", 1)[0].decode("utf-8")
    return authres.AuthenticationResultsHeader.parse(first)


class OptionTests(SynchronousTestCase):
    """
    The options of sender authentication, on the command line and in the
    file.
    """

    def parse(self, *argv):
        """
        The configuration C{argv} gives.
        """
        from tests.test_tap import parse

        return parse(*argv).config

    def test_defaults(self) -> None:
        """
        By default every method is on, DMARC enforced, SPF not refused at
        C{MAIL}, and a message's checks have 10 seconds.
        """
        config = self.parse()
        self.assertEqual(config.authChecks, ("spf", "dkim", "dmarc", "arc"))
        self.assertEqual(config.dmarcPolicy, "enforce")
        self.assertIs(config.spfReject, False)
        self.assertEqual(config.authTimeout, 10.0)

    def test_authChecks(self) -> None:
        """
        C{--auth-checks} takes a subset in any case and order (kept in
        the usual order), or C{none}; in the file, a list too.
        """
        from tests.test_options import load

        self.assertEqual(self.parse("--auth-checks", "DMARC, spf").authChecks, ("spf", "dmarc"))
        self.assertEqual(self.parse("--auth-checks", "none").authChecks, ())
        self.assertEqual(load({"auth-checks": ["arc", "dkim"]}).authChecks, ("dkim", "arc"))
        self.assertEqual(load({"auth-checks": []}).authChecks, ())
        e = self.assertRaises(usage.UsageError, self.parse, "--auth-checks", "spf,dnsbl")
        self.assertEqual(str(e), "--auth-checks: 'dnsbl' is not one of spf, dkim, dmarc, arc (or none alone)")
        self.assertRaises(usage.UsageError, self.parse, "--auth-checks", "none,spf")

    def test_policyAndTimeout(self) -> None:
        """
        C{--dmarc-policy} is C{enforce} or C{tag}, in any case;
        C{--auth-timeout} a positive number of seconds.
        """
        config = self.parse("--dmarc-policy", "TAG", "--auth-timeout", "2.5", "--spf-reject")
        self.assertEqual((config.dmarcPolicy, config.authTimeout, config.spfReject), ("tag", 2.5, True))
        e = self.assertRaises(usage.UsageError, self.parse, "--dmarc-policy", "strict")
        self.assertIn("enforce, tag", str(e))
        self.assertRaises(usage.UsageError, self.parse, "--auth-timeout", "0")

    def test_spfRejectNeedsSpf(self) -> None:
        """
        C{--spf-reject} without SPF among the checks is a mistake, said in
        one line.
        """
        e = self.assertRaises(usage.UsageError, self.parse, "--spf-reject", "--auth-checks", "dkim,dmarc")
        self.assertEqual(str(e), "--spf-reject needs spf in --auth-checks")

    def test_summary(self) -> None:
        """
        The start-up line says which checks run and how DMARC is applied.
        """
        from smtpmx.config import summarize

        line = summarize(self.parse("--auth-checks", "spf"))
        self.assertIn(" auth-checks=spf dmarc-policy=enforce ", line)
        self.assertIn(" auth-checks=none ", summarize(self.parse("--auth-checks", "none")))


class SpfAtMailTests(SynchronousTestCase):
    """
    SPF starts at C{MAIL FROM} for an untrusted client; with
    C{--spf-reject} C{MAIL} waits for it and a C{fail} refuses it.
    """

    def driver(self, checks=None, runInThread=runAtOnce, methods=frozenset(Method), **config):
        """
        A session from the untrusted C{192.0.2.1} with fake checks.
        """
        d = SessionDriver(**config)
        self.checks = checks or FakeChecks()
        d.session.authentication = makeAuthentication(
            d.clock, self.checks, methods=methods, runInThread=runInThread
        )
        return d

    def test_started(self) -> None:
        """
        C{MAIL} is answered at once while SPF runs; the check is on the
        client, the sender and the HELO name.
        """
        runner = HeldRunner()
        d = self.driver(runInThread=runner)
        self.assertEqual(d.run(MAIL)[-1], "250 2.1.0 Ok")
        self.assertEqual(len(runner.jobs), 1)
        runner.runAll()
        self.assertEqual(self.checks.spfCalls, [("192.0.2.1", "sender@remote.example", "client.example")])

    def test_trustedUnchecked(self) -> None:
        """
        A client in C{--relay-network} is not checked.
        """
        d = self.driver()
        d.session.clientHost = "127.0.0.1"
        self.assertEqual(d.run(MAIL)[-1], "250 2.1.0 Ok")
        self.assertEqual(self.checks.spfCalls, [])

    def test_notNeeded(self) -> None:
        """
        Without SPF or DMARC among the checks, nothing starts at C{MAIL}.
        """
        d = self.driver(methods=frozenset({Method.DKIM, Method.ARC}))
        d.run(MAIL)
        self.assertEqual(self.checks.spfCalls, [])

    def test_failNotRefusedByDefault(self) -> None:
        """
        Without C{--spf-reject}, an SPF C{fail} does not refuse C{MAIL}.
        """
        d = self.driver(FakeChecks(spf=SpfResult("fail", mailfrom="remote.example")))
        self.assertEqual(d.run(MAIL)[-1], "250 2.1.0 Ok")

    @pytest.mark.rfc("7208", "8.4")
    def test_spfReject(self) -> None:
        """
        With C{--spf-reject}, an SPF C{fail} refuses C{MAIL} with
        C{550 5.7.23} naming the domain and the client, and there is no
        transaction; another C{MAIL} may follow.
        """
        d = self.driver(FakeChecks(spf=SpfResult("fail", mailfrom="remote.example")), spfReject=True)
        replies = d.run(MAIL + b"RCPT TO:<alice@example.org>\r\n")
        self.assertEqual(replies[1:], [
            "550 5.7.23 Error: SPF check failed: remote.example does not permit [192.0.2.1]"
            " to send its mail",
            "503 5.5.1 Error: need MAIL command",
        ])
        self.assertIsNone(d.session.transaction)
        self.checks.spf = SPF_PASS
        self.assertEqual(d.run(b"MAIL FROM:<sender@else.example>\r\n"), ["250 2.1.0 Ok"])

    @pytest.mark.rfc("7208", "8.5")
    def test_spfRejectOthersPass(self) -> None:
        """
        With C{--spf-reject}, every other verdict begins the transaction.
        """
        for word in ("pass", "softfail", "neutral", "none", "temperror", "permerror"):
            d = self.driver(FakeChecks(spf=SpfResult(word, mailfrom="remote.example")), spfReject=True)
            self.assertEqual(d.run(MAIL)[-1], "250 2.1.0 Ok", word)
            self.assertIsNotNone(d.session.transaction)

    def test_spfRejectNullSender(self) -> None:
        """
        For C{<>}, the refusal names the HELO name that SPF checked.
        """
        d = self.driver(FakeChecks(spf=SpfResult("fail", helo="client.example")), spfReject=True)
        [_, refusal] = d.run(b"EHLO client.example\r\nMAIL FROM:<>\r\n")
        self.assertTrue(refusal.startswith("550 5.7.23 Error: SPF check failed: client.example "), refusal)

    def test_spfRejectWaitsInOrder(self) -> None:
        """
        With C{--spf-reject}, a C{RCPT} pipelined after C{MAIL} is answered
        after it, once SPF has spoken (RFC 2920).
        """
        server = Server(clientHost="192.0.2.1", spfReject=True)
        runner = HeldRunner()
        checks = FakeChecks()
        server.factory.authentication = makeAuthentication(server.clock, checks, runInThread=runner)
        server.protocol, server.transport = server.connect()
        server.greeted()
        self.assertEqual(
            server.codes("MAIL FROM:<sender@remote.example>\r\nRCPT TO:<alice@example.org>\r\n"), []
        )
        runner.runAll()
        self.assertEqual(server.output(), ["250 2.1.0 Ok", "250 2.1.5 Ok"])

    def test_spfRejectBudget(self) -> None:
        """
        With C{--spf-reject}, a check not done within C{--auth-timeout}
        (and the grace to report) lets C{MAIL} through (a C{temperror} is
        no C{fail}).
        """
        server = Server(clientHost="192.0.2.1", spfReject=True)
        runner = HeldRunner()
        server.factory.authentication = makeAuthentication(
            server.clock, FakeChecks(), runInThread=runner, timeout=3
        )
        server.protocol, server.transport = server.connect()
        server.greeted()
        self.assertEqual(server.codes("MAIL FROM:<sender@remote.example>\r\n"), [])
        server.clock.advance(3 + GRACE)
        self.assertEqual(server.output(), ["250 2.1.0 Ok"])


class ForgedFieldSessionTests(SynchronousTestCase):
    """
    The session removes incoming C{Authentication-Results:} fields that
    name our host (RFC 8601 section 5) from every message, before the
    store sees the bytes.
    """

    FORGED = (
        b"Authentication-Results: MX.example.org; dmarc=pass\r\n"
        b"Authentication-Results: elsewhere.example; spf=fail\r\n"
        b"Authentication-Results: mx.example.org;\r\n\tdkim=pass header.d=bank.example\r\n"
        b"Subject: hi\r\n\r\n"
        b"Authentication-Results: mx.example.org; in the body stays\r\n"
    )
    KEPT = (
        b"Authentication-Results: elsewhere.example; spf=fail\n"
        b"Subject: hi\n\n"
        b"Authentication-Results: mx.example.org; in the body stays\n"
    )

    def send(self, d: SessionDriver, data: bytes, chunk: int = 0) -> bytes:
        """
        One transaction with C{data} as the message, fed C{chunk} bytes at
        a time (all at once for 0); the stored bytes.
        """
        d.run(MAIL + b"RCPT TO:<alice@example.org>\r\nDATA\r\n")
        wire = data + b".\r\n"
        step = chunk or len(wire)
        for i in range(0, len(wire), step):
            pending, leftover = d.session.feedData(wire[i : i + step])
            if leftover is not None:
                d.session.endData().addCallback(d.records.append)
        self.assertEqual(d.records[-1].reply.code, 250)
        return d.store.messages[-1].body

    @pytest.mark.rfc("8601", "5")
    def test_removed(self) -> None:
        """
        Fields naming our host go, in any case and folded; another host's
        field and the body are kept.
        """
        self.assertEqual(self.send(SessionDriver(), self.FORGED), self.KEPT)

    @pytest.mark.rfc("8601", "5")
    def test_anyChunks(self) -> None:
        """
        However the data arrives, the same fields go.
        """
        for chunk in (1, 2, 3, 7, 50):
            self.assertEqual(self.send(SessionDriver(), self.FORGED, chunk), self.KEPT, chunk)

    def test_trustedClient(self) -> None:
        """
        A trusted client's message loses them too: nobody may send our
        verdicts.
        """
        d = SessionDriver()
        d.session.clientHost = "127.0.0.1"
        self.assertEqual(self.send(d, self.FORGED), self.KEPT)

    def test_lastField(self) -> None:
        """
        A forged field that ends a message without a body is removed.
        """
        data = b"Subject: x\r\nAuthentication-Results: mx.example.org; spf=pass\r\n"
        self.assertEqual(self.send(SessionDriver(), data), b"Subject: x\n")

    def test_ourHostname(self) -> None:
        """
        The authserv-id is compared with C{--hostname}, in any case, after
        comments and quotes (RFC 8601 section 2.2).
        """
        d = SessionDriver(hostname="MX.Example.NET")
        data = (
            b"Authentication-Results: (forged) \"mx.example.net\"; spf=pass\r\n"
            b"Authentication-Results: mx.example.org; spf=pass\r\n"
            b"A: b\r\n"
        )
        self.assertEqual(self.send(d, data), b"Authentication-Results: mx.example.org; spf=pass\nA: b\n")


class AuthenticatingStoreTests(SynchronousTestCase):
    """
    L{FilteringStore} with sender authentication: the checks come before
    the filters; a DMARC rejection refuses the message, a quarantine
    files it in Junk, and every stored copy has our field first.
    """

    def setUp(self) -> None:
        self.inner = MemoryStore()
        self.clock = Clock()
        self.spool = spoolDirectory(self)

    def store(self, *filters, checks=None, methods=frozenset(Method), **config) -> FilteringStore:
        """
        The store, with fake checks and C{filters}.
        """
        self.config = makeConfig(**config)
        self.checks = checks or FakeChecks()
        self.auth = makeAuthentication(self.clock, self.checks, methods=methods)
        return FilteringStore(
            self.inner, chainOf(*filters), Access.fromConfig(self.config), self.config,
            runAtOnce, self.spool, reactor=self.clock, authentication=self.auth,
        )

    def send(self, store, client="192.0.2.1"):
        """
        Receive L{STORED} from C{client} for a local and a remote
        recipient, and finish it.
        """
        envelope = filterableMessage(
            b"", recipients=["alice@example.org", "x@remote.example"], clientHost=client
        ).envelope
        message = store.receive(envelope)
        message.write(STORED[:10])
        message.write(STORED[10:])
        return message, message.finish()

    @pytest.mark.rfc("8601", "2.1")
    @pytest.mark.rfc("6376", "6.2")
    def test_fieldFirst(self) -> None:
        """
        The stored copy gets our C{Authentication-Results:} field first
        among the added fields (right under our C{Received:}), then the
        filters'; the checks and the filters read the message as it came.
        """
        judge = Fixed(Accept([("X-Score", "1")]))
        message, d = self.send(self.store(judge))
        self.successResultOf(d)
        [stored] = self.inner.messages
        self.assertEqual(stored.body, STORED)
        lines = stored.envelope.extraHeaders.split(b"\n")
        self.assertTrue(lines[0].startswith(b"Authentication-Results: mx.example.org;"), lines)
        self.assertEqual(lines[1:], [b"X-Score: 1", b""])
        field = fieldOf(stored.envelope.extraHeaders)
        self.assertEqual(field.authserv_id, "mx.example.org")
        self.assertEqual([(r.method, r.result) for r in field.results],
                         [("spf", "pass"), ("dkim", "pass"), ("dmarc", "pass"), ("arc", "none")])
        self.assertEqual(self.checks.verified[0][0], STORED)
        self.assertEqual(judge.seen, [STORED])
        self.assertEqual(message.authResults, AuthResults(SPF_PASS, DKIM_PASS, DMARC_PASS, ArcResult("none")))
        self.assertEqual(os.listdir(self.spool), [])

    def test_onlyEnabledMethods(self) -> None:
        """
        The field names only the methods that are on.
        """
        message, d = self.send(self.store(methods=frozenset({Method.SPF, Method.DKIM})))
        self.successResultOf(d)
        field = fieldOf(self.inner.messages[0].envelope.extraHeaders)
        self.assertEqual([r.method for r in field.results], ["spf", "dkim"])

    def test_withoutFilters(self) -> None:
        """
        Sender authentication alone spools and checks the message.
        """
        message, d = self.send(self.store())
        self.successResultOf(d)
        self.assertEqual(message.filterVerdicts, [])
        self.assertEqual(len(self.checks.verified), 1)
        self.assertTrue(self.inner.messages[0].envelope.extraHeaders.startswith(b"Authentication-Results: "))

    @pytest.mark.rfc("7489", "6.6.4", "7489-6.6.4-3")
    def test_rejectStoresNothing(self) -> None:
        """
        A DMARC failure whose domain asks for C{p=reject} is refused with
        C{550 5.7.1}: no filter is asked, nothing is stored, the spool is
        gone, and what was found is kept for the log.
        """
        judge = Fixed(Accept())
        message, d = self.send(self.store(judge, checks=FakeChecks(dmarc=DMARC_REJECT)))
        refused = self.failureResultOf(d, Refused).value
        self.assertEqual(refused.reply, reply.dmarcRejected("remote.example"))
        self.assertEqual((refused.reply.code, refused.reply.enhanced), (550, "5.7.1"))
        self.assertIn("remote.example", refused.reply.text)
        self.assertEqual(judge.seen, [])
        self.assertEqual(self.inner.started, [])
        self.assertEqual(os.listdir(self.spool), [])
        self.assertEqual(message.authResults.dmarc, DMARC_REJECT)

    @pytest.mark.rfc("7489", "6.6.4", "7489-6.6.4-2")
    def test_quarantineJunk(self) -> None:
        """
        A DMARC failure whose domain asks for C{p=quarantine} files the
        local copies in the Junk folder; the relayed copy goes as usual.
        """
        dmarc = DmarcResult("fail", "remote.example", "quarantine")
        message, d = self.send(self.store(checks=FakeChecks(dmarc=dmarc)))
        self.successResultOf(d)
        [stored] = self.inner.messages
        destinations = [r.destination for r in stored.envelope.recipients]
        self.assertEqual(destinations[0], LocalMailbox("example.org", "alice", "Junk"))
        self.assertIsInstance(destinations[1], RemoteAddress)
        self.assertEqual(fieldOf(stored.envelope.extraHeaders).results[2].result, "fail")

    def test_policyNone(self) -> None:
        """
        A DMARC failure under C{p=none}, or a C{temperror}, is delivered
        as usual.
        """
        for dmarc in (DmarcResult("fail", "remote.example", "none"), DmarcResult("temperror")):
            self.inner = MemoryStore()
            message, d = self.send(self.store(checks=FakeChecks(dmarc=dmarc)))
            self.successResultOf(d)
            self.assertIsNone(self.inner.messages[0].envelope.recipients[0].destination.folder)

    def test_tag(self) -> None:
        """
        With C{--dmarc-policy tag}, a DMARC failure is only recorded: the
        message is delivered to INBOX with the field.
        """
        message, d = self.send(self.store(checks=FakeChecks(dmarc=DMARC_REJECT), dmarcPolicy="tag"))
        self.successResultOf(d)
        [stored] = self.inner.messages
        self.assertIsNone(stored.envelope.recipients[0].destination.folder)
        self.assertEqual(fieldOf(stored.envelope.extraHeaders).results[2].result, "fail")

    def test_trustedUnchecked(self) -> None:
        """
        A trusted client's message goes straight to the store: not
        checked, no field.
        """
        message, d = self.send(self.store(), client="127.0.0.1")
        self.successResultOf(d)
        self.assertIs(message, self.inner.messages[0])
        self.assertEqual(message.envelope.extraHeaders, b"")
        self.assertEqual((self.checks.spfCalls, self.checks.verified), ([], []))

    def test_noneAtAll(self) -> None:
        """
        Without authentication nor filters, nothing is spooled.
        """
        store = FilteringStore(
            self.inner, chainOf(), Access.fromConfig(makeConfig()), makeConfig(),
            runAtOnce, self.spool, reactor=self.clock,
        )
        message, d = self.send(store)
        self.assertIs(message, self.inner.messages[0])

    def test_abortedWhileChecking(self) -> None:
        """
        A transaction given up while its checks run stores nothing and
        leaves no spool.
        """
        runner = HeldRunner()
        config = makeConfig()
        store = FilteringStore(
            self.inner, chainOf(), Access.fromConfig(config), config, runAtOnce, self.spool,
            reactor=self.clock,
            authentication=makeAuthentication(self.clock, FakeChecks(), runInThread=runner),
        )
        message, d = self.send(store)
        self.assertNoResult(d)
        message.abort()
        self.failureResultOf(d, CancelledError)
        runner.runAll()
        self.assertEqual(self.inner.started, [])
        self.assertEqual(os.listdir(self.spool), [])
        self.assertEqual(self.clock.getDelayedCalls(), [])


class LogLineTests(SynchronousTestCase):
    """
    The transaction's log line says what sender authentication found,
    after the filters.
    """

    def driver(self, *filters, checks=None) -> SessionDriver:
        """
        A session from an untrusted client whose store checks and filters.
        """
        d = SessionDriver()
        auth = makeAuthentication(d.clock, checks or FakeChecks())
        d.session.authentication = auth
        d.session.store = FilteringStore(
            d.store, chainOf(*filters), Access.fromConfig(d.config), d.config,
            runAtOnce, spoolDirectory(self), reactor=d.clock, authentication=auth,
        )
        return d

    def line(self, d: SessionDriver) -> str:
        """
        The log line of the one transaction the driver had.
        """
        d.run(MAIL + b"RCPT TO:<alice@example.org>\r\nDATA\r\n" + MESSAGE + b".\r\n")
        [record] = d.records
        return TRANSACTION_LOG_FORMAT.format(**record.logFields())

    def test_accepted(self) -> None:
        """
        Every method's verdict, after the filters', before the result.
        """
        line = self.line(self.driver(Fixed(Accept())))
        self.assertIn(
            " filters=[f0 accept] auth=[spf=pass dkim=pass dmarc=pass arc=none] result=250 2.0.0",
            line,
        )

    def test_refused(self) -> None:
        """
        A message DMARC refused says so, with the policy.
        """
        line = self.line(self.driver(checks=FakeChecks(dmarc=DMARC_REJECT)))
        self.assertIn(" auth=[spf=pass dkim=pass dmarc=fail(reject) arc=none] result=550 5.7.1 ", line)

    def test_unchecked(self) -> None:
        """
        A trusted client's line has no C{auth=}.
        """
        d = self.driver()
        d.session.clientHost = "127.0.0.1"
        self.assertNotIn("auth=", self.line(d))


class TapTests(SynchronousTestCase):
    """
    C{twistd smtpmx} builds sender authentication from the options: one
    thread pool of its own started and stopped with the server, one
    resolver, the same object for the sessions and the store.
    """

    def build(self, *argv):
        """
        The service for C{argv} on a memory reactor, its store and its
        server factory.
        """
        from twisted.internet.testing import MemoryReactorClock

        from tests.test_tap import buildFromArguments

        self.reactor = MemoryReactorClock()
        _, service, factory = buildFromArguments(self, self.reactor, *argv)
        return service, factory.store, factory

    def test_default(self) -> None:
        """
        By default every method is on: the store checks messages, the
        sessions start SPF, with the same L{SenderAuthentication}, whose
        checks run in a pool of their own.
        """
        service, store, factory = self.build()
        self.assertIsInstance(store, FilteringStore)
        auth = store.authentication
        self.assertIsInstance(auth, SenderAuthentication)
        self.assertIs(factory.authentication, auth)
        self.assertEqual(auth.methods, frozenset(Method))
        self.assertEqual(auth.timeout, 10.0)
        self.assertEqual(store.chain.filters, [])
        self.assertEqual(service.threadPool.max, 10)

    def test_none(self) -> None:
        """
        With C{--auth-checks none} there is no authentication at all: no
        pool, and the store is the routing store.
        """
        from smtpmx.routing import RoutingStore

        service, store, factory = self.build("--auth-checks", "none")
        self.assertIsInstance(store, RoutingStore)
        self.assertIsNone(factory.authentication)
        self.assertIsNone(service.threadPool)

    def test_subset(self) -> None:
        """
        The methods and the time budget are the options'.
        """
        service, store, factory = self.build("--auth-checks", "dkim,spf", "--auth-timeout", "3")
        self.assertEqual(store.authentication.methods, frozenset({Method.SPF, Method.DKIM}))
        self.assertEqual(store.authentication.timeout, 3.0)

    def test_oneResolver(self) -> None:
        """
        The checks ask one resolver, aimed at C{--dns-server}.
        """
        import smtpmx.auth.dns

        made = []

        class Resolver:
            """
            Records how it is made.
            """

            def __init__(self, dnsServer) -> None:
                made.append(self)
                self.dnsServer = dnsServer

        self.patch(smtpmx.auth.dns, "Resolver", Resolver)
        service, store, factory = self.build("--dns-server", "192.0.2.53:5353")
        [resolver] = made
        self.assertEqual(resolver.dnsServer, ("192.0.2.53", 5353))
        self.assertIs(store.authentication.resolver, resolver)

    def test_poolStartedAndStopped(self) -> None:
        """
        The pool starts with the server and stops after its services.
        """
        service, store, factory = self.build()
        pool = service.threadPool
        self.assertFalse(pool.started)
        service.startService()
        self.assertTrue(pool.started)
        self.successResultOf(service.stopService())
        self.assertFalse(pool.started)
        self.assertTrue(pool.joined)
