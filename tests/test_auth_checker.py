"""
Tests for L{smtpmx.auth.checker.SenderAuthentication}: the SPF check
started at C{MAIL FROM} and shared, the message's checks after its data,
and the time budget that bounds them, on a fake clock with fake checks
(the checks themselves are tested in their own modules).
"""

from __future__ import annotations

import io

from twisted.internet.defer import CancelledError
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from smtpmx.address import parseAddress
from smtpmx.auth.checker import GRACE, spfTemperror
from smtpmx.auth.results import (
    ArcResult,
    AuthResults,
    DkimResult,
    DmarcResult,
    Method,
    SpfResult,
)
from smtpmx.testing import filterableMessage
from tests.authfakes import (
    ARC_NONE,
    DKIM_PASS,
    DMARC_PASS,
    SPF_PASS,
    FakeChecks,
    HeldRunner,
    makeAuthentication,
)

SENDER = parseAddress("sender@remote.example")
MESSAGE = b"From: sender@remote.example\nSubject: hi\n\nbody\n"


class SenderCheckTests(SynchronousTestCase):
    """
    L{SenderAuthentication.checkSender}: SPF, started once per client,
    HELO name and sender, and bounded in time.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.checks = FakeChecks()

    def test_verdict(self) -> None:
        """
        The verdict is SPF's, on the client, the sender and the HELO name;
        its lookups end by the time budget.
        """
        auth = makeAuthentication(self.clock, self.checks, timeout=7)
        self.clock.advance(100)
        result = self.successResultOf(auth.checkSender("192.0.2.1", "client.example", SENDER))
        self.assertEqual(result, SPF_PASS)
        self.assertEqual(self.checks.spfCalls, [("192.0.2.1", "sender@remote.example", "client.example")])
        self.assertEqual(auth.resolver.deadlines, [107])

    def test_nullSender(self) -> None:
        """
        For the null sender C{<>} the check is told no sender (SPF then
        checks the HELO name, RFC 7208 section 2.4).
        """
        auth = makeAuthentication(self.clock, self.checks)
        self.successResultOf(auth.checkSender("192.0.2.1", "client.example", None))
        self.assertEqual(self.checks.spfCalls, [("192.0.2.1", None, "client.example")])

    def test_remembered(self) -> None:
        """
        Asked again about the same client, HELO name and sender, the
        verdict is the one found, without a new check; another sender is
        checked.
        """
        auth = makeAuthentication(self.clock, self.checks)
        for _ in range(3):
            self.successResultOf(auth.checkSender("192.0.2.1", "client.example", SENDER))
        self.successResultOf(auth.checkSender("192.0.2.1", "CLIENT.example", SENDER))
        self.assertEqual(len(self.checks.spfCalls), 1)
        self.successResultOf(auth.checkSender("192.0.2.1", "client.example", parseAddress("b@remote.example")))
        self.successResultOf(auth.checkSender("192.0.2.2", "client.example", SENDER))
        self.assertEqual(len(self.checks.spfCalls), 3)

    def test_forgottenLater(self) -> None:
        """
        A verdict is remembered for a while, then checked again (the DNS
        may have changed).
        """
        auth = makeAuthentication(self.clock, self.checks, memoLifetime=60)
        self.successResultOf(auth.checkSender("192.0.2.1", "client.example", SENDER))
        self.clock.advance(59)
        self.successResultOf(auth.checkSender("192.0.2.1", "client.example", SENDER))
        self.assertEqual(len(self.checks.spfCalls), 1)
        self.clock.advance(2)
        self.successResultOf(auth.checkSender("192.0.2.1", "client.example", SENDER))
        self.assertEqual(len(self.checks.spfCalls), 2)

    def test_bounded(self) -> None:
        """
        Only so many verdicts are remembered: the least recently asked
        for goes first.
        """
        auth = makeAuthentication(self.clock, self.checks, memoSize=2)
        for client in ("192.0.2.1", "192.0.2.2", "192.0.2.1", "192.0.2.3", "192.0.2.1", "192.0.2.2"):
            self.successResultOf(auth.checkSender(client, "client.example", SENDER))
        self.assertEqual([c[0] for c in self.checks.spfCalls],
                         ["192.0.2.1", "192.0.2.2", "192.0.2.3", "192.0.2.2"])

    def test_sharedWhileRunning(self) -> None:
        """
        While a check runs, whoever asks the same waits for it: one
        check, every waiter answered.
        """
        runner = HeldRunner()
        auth = makeAuthentication(self.clock, self.checks, runInThread=runner)
        first = auth.checkSender("192.0.2.1", "client.example", SENDER)
        second = auth.checkSender("192.0.2.1", "client.example", SENDER)
        self.assertNoResult(first)
        self.assertNoResult(second)
        self.assertEqual(len(runner.jobs), 1)
        runner.runAll()
        self.assertEqual(self.successResultOf(first), SPF_PASS)
        self.assertEqual(self.successResultOf(second), SPF_PASS)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_temperrorNotRemembered(self) -> None:
        """
        A C{temperror} is not remembered: the next transaction tries
        again.
        """
        self.checks.spf = SpfResult("temperror", mailfrom="remote.example")
        auth = makeAuthentication(self.clock, self.checks)
        self.successResultOf(auth.checkSender("192.0.2.1", "client.example", SENDER))
        self.successResultOf(auth.checkSender("192.0.2.1", "client.example", SENDER))
        self.assertEqual(len(self.checks.spfCalls), 2)

    def test_timeout(self) -> None:
        """
        A check not done within the time budget (and the grace given to
        report) is C{temperror} for the sender's domain; its late verdict
        is dropped, and the next transaction checks again.
        """
        runner = HeldRunner()
        auth = makeAuthentication(self.clock, self.checks, runInThread=runner, timeout=10)
        d = auth.checkSender("192.0.2.1", "client.example", SENDER)
        self.clock.advance(10 + GRACE - 0.1)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        self.assertEqual(self.successResultOf(d), SpfResult("temperror", mailfrom="remote.example"))
        runner.runAll()
        again = auth.checkSender("192.0.2.1", "client.example", SENDER)
        self.assertNoResult(again)
        runner.runAll()
        self.assertEqual(self.successResultOf(again), SPF_PASS)

    def test_broken(self) -> None:
        """
        A check that raises (a bug) is logged, and its verdict is
        C{temperror}, about the HELO name for the null sender.
        """
        self.checks.spf = RuntimeError("bug")
        auth = makeAuthentication(self.clock, self.checks)
        result = self.successResultOf(auth.checkSender("192.0.2.1", "Client.Example", None))
        self.assertEqual(result, SpfResult("temperror", helo="client.example"))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_needsSpf(self) -> None:
        """
        SPF is needed for itself or for DMARC's alignment, not otherwise.
        """
        for methods, needed in (
            ({Method.SPF}, True), ({Method.DMARC}, True), ({Method.DKIM, Method.ARC}, False),
        ):
            auth = makeAuthentication(self.clock, methods=frozenset(methods))
            self.assertEqual(auth.needsSpf, needed, methods)

    def test_spfTemperror(self) -> None:
        """
        The C{temperror} of a check names the identity it was about.
        """
        self.assertEqual(spfTemperror("h.example", parseAddress("a@B.Example")),
                         SpfResult("temperror", mailfrom="b.example"))
        self.assertEqual(spfTemperror("H.example", None), SpfResult("temperror", helo="h.example"))


class MessageCheckTests(SynchronousTestCase):
    """
    L{SenderAuthentication.checkMessage}: every method's verdict on one
    message, within the time budget.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.checks = FakeChecks()
        self.message = filterableMessage(MESSAGE, clientHost="192.0.2.1")

    def check(self, auth, message=None):
        """
        Check the message (or C{message}).
        """
        message = message or self.message
        return auth.checkMessage(message.envelope, message)

    def test_allMethods(self) -> None:
        """
        With every method on, each has its verdict; DKIM and ARC read the
        message as stored, and DMARC is given the header fields, SPF's and
        DKIM's verdicts and the random source.
        """
        pick = lambda: 0.5
        auth = makeAuthentication(self.clock, self.checks, random=pick)
        found = self.successResultOf(self.check(auth))
        self.assertEqual(found, AuthResults(SPF_PASS, DKIM_PASS, DMARC_PASS, ARC_NONE))
        self.assertEqual(self.checks.verified, [(MESSAGE, True, True)])
        [(headers, spf, dkim, random)] = self.checks.dmarcCalls
        self.assertEqual(headers[0], (b"From", b" sender@remote.example"))
        self.assertEqual((spf, dkim, random), (SPF_PASS, DKIM_PASS, pick))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_spfFromMail(self) -> None:
        """
        The SPF verdict found at C{MAIL FROM} is the message's: SPF is not
        checked again.
        """
        auth = makeAuthentication(self.clock, self.checks)
        self.successResultOf(auth.checkSender("192.0.2.1", "client.example", SENDER))
        self.successResultOf(self.check(auth))
        self.assertEqual(len(self.checks.spfCalls), 1)

    def test_spfUnderWay(self) -> None:
        """
        An SPF check still under way from C{MAIL FROM} is waited for.
        """
        runner = HeldRunner()
        auth = makeAuthentication(self.clock, self.checks, runInThread=runner)
        auth.checkSender("192.0.2.1", "client.example", SENDER)
        d = self.check(auth)
        self.assertEqual(len(runner.jobs), 1)
        runner.runAll()
        self.assertEqual(self.successResultOf(d).dmarc, DMARC_PASS)
        self.assertEqual(len(self.checks.spfCalls), 1)

    def test_dkimOnly(self) -> None:
        """
        With DKIM alone, only DKIM is checked and reported: no SPF, no ARC.
        """
        auth = makeAuthentication(self.clock, self.checks, methods=frozenset({Method.DKIM}))
        found = self.successResultOf(self.check(auth))
        self.assertEqual(found, AuthResults(dkim=DKIM_PASS))
        self.assertEqual(self.checks.spfCalls, [])
        self.assertEqual(self.checks.verified, [(MESSAGE, True, False)])
        self.assertEqual(self.checks.dmarcCalls, [])

    def test_dmarcAlone(self) -> None:
        """
        DMARC alone evaluates SPF and DKIM for its alignment, but reports
        only its own verdict.
        """
        auth = makeAuthentication(self.clock, self.checks, methods=frozenset({Method.DMARC}))
        found = self.successResultOf(self.check(auth))
        self.assertEqual(found, AuthResults(dmarc=DMARC_PASS))
        self.assertEqual(len(self.checks.spfCalls), 1)
        self.assertEqual(self.checks.verified, [(MESSAGE, True, False)])
        self.assertEqual(self.checks.dmarcCalls[0][1:3], (SPF_PASS, DKIM_PASS))

    def test_spfOnly(self) -> None:
        """
        With SPF alone, the message itself is not read.
        """
        auth = makeAuthentication(self.clock, self.checks, methods=frozenset({Method.SPF}))
        self.assertEqual(self.successResultOf(self.check(auth)), AuthResults(spf=SPF_PASS))
        self.assertEqual(self.checks.verified, [])

    def test_budget(self) -> None:
        """
        Checks not done within the time budget are C{temperror}; what was
        found by then is kept, and the result is due at the budget, not
        later.  The lookups of the message end by the same deadline.
        """
        runner = HeldRunner()
        auth = makeAuthentication(self.clock, self.checks, runInThread=runner, timeout=10)
        d = self.check(auth)
        runner.runNext()
        self.clock.advance(3)
        self.assertNoResult(d)
        self.assertEqual(len(runner.jobs), 1)
        self.clock.advance(7)
        self.assertNoResult(d)
        self.clock.advance(GRACE)
        found = self.successResultOf(d)
        self.assertEqual(found, AuthResults(
            SPF_PASS, (DkimResult("temperror"),), DmarcResult("temperror"), ArcResult("temperror"),
        ))
        self.assertEqual(auth.resolver.deadlines, [10, 10])
        runner.runAll()

    def test_reportsAfterDeadline(self) -> None:
        """
        A check whose lookups ended at the deadline may still report
        within the grace: its own verdicts, C{temperror}s naming their
        domains, are kept.
        """
        runner = HeldRunner()
        self.checks.dkim = (DkimResult("temperror", "remote.example", "sel"),)
        self.checks.dmarc = DmarcResult("temperror", "remote.example")
        auth = makeAuthentication(self.clock, self.checks, runInThread=runner, timeout=10)
        d = self.check(auth)
        self.clock.advance(10)
        runner.runAll()
        self.assertEqual(self.successResultOf(d), AuthResults(
            SPF_PASS, self.checks.dkim, self.checks.dmarc, ARC_NONE,
        ))
        self.assertEqual(auth.resolver.deadlines, [10, 10])

    def test_partlyDone(self) -> None:
        """
        When the budget is spent during DMARC, DKIM's and ARC's verdicts
        are kept and DMARC's is C{temperror}.
        """
        auth = makeAuthentication(self.clock, self.checks, timeout=10)
        self.checks.duringDmarc = lambda: self.clock.advance(10 + GRACE)
        found = self.successResultOf(self.check(auth))
        self.assertEqual(found, AuthResults(SPF_PASS, DKIM_PASS, DmarcResult("temperror"), ARC_NONE))

    def test_allTimedOut(self) -> None:
        """
        A thread pool that runs nothing in time gives C{temperror} for
        every method, SPF's naming the sender's domain.
        """
        runner = HeldRunner()
        auth = makeAuthentication(self.clock, self.checks, runInThread=runner, timeout=2)
        d = self.check(auth)
        self.clock.advance(2 + GRACE)
        self.assertEqual(self.successResultOf(d), AuthResults(
            SpfResult("temperror", mailfrom="remote.example"), (DkimResult("temperror"),),
            DmarcResult("temperror"), ArcResult("temperror"),
        ))

    def test_broken(self) -> None:
        """
        A message check that raises (a bug) is logged; its methods are
        C{temperror}, SPF's verdict is kept.
        """
        self.checks.dkim = RuntimeError("bug")
        auth = makeAuthentication(self.clock, self.checks)
        found = self.successResultOf(self.check(auth))
        self.assertEqual(found.spf, SPF_PASS)
        self.assertEqual(found.dkim, (DkimResult("temperror"),))
        self.assertEqual(found.dmarc, DmarcResult("temperror"))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_cancelled(self) -> None:
        """
        A check whose transaction is given up can be cancelled: its timer
        is stopped, and a late verdict is dropped unlogged.
        """
        runner = HeldRunner()
        auth = makeAuthentication(self.clock, self.checks, runInThread=runner,
                                  methods=frozenset({Method.DKIM}))
        d = self.check(auth)
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.checks.dkim = RuntimeError("too late to matter")
        runner.runAll()
        self.assertEqual(self.flushLoggedErrors(RuntimeError), [])

    def test_messageRead(self) -> None:
        """
        The message is read through C{open()}, and the file closed.
        """
        opened = []

        class Tracked:
            """
            A message whose file is kept for the test.
            """

            envelope = self.message.envelope
            size = len(MESSAGE)

            def open(self):
                f = io.BytesIO(MESSAGE)
                opened.append(f)
                return f

        auth = makeAuthentication(self.clock, self.checks)
        self.successResultOf(auth.checkMessage(Tracked.envelope, Tracked()))
        [f] = opened
        self.assertTrue(f.closed)
