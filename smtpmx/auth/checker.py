"""
Sender authentication of the mail of untrusted clients
(docs/authentication.rst): SPF (RFC 7208) from C{MAIL FROM} on, then DKIM
(RFC 6376), ARC (RFC 8617) and DMARC (RFC 7489) on the spooled message
after its data, all within one time budget (C{--auth-timeout}).

The checks themselves are blocking library code (L{smtpmx.auth.spf},
L{smtpmx.auth.dkim}, L{smtpmx.auth.dmarc}) run in a thread pool of their
own, their lookups going through the server's one
L{smtpmx.auth.dns.Resolver}, every lookup ending by the check's deadline.
L{SenderAuthentication} starts them, shares them and bounds them on the
reactor's clock: whatever is not done when the budget is spent (and a
short L{GRACE} for the checks to report) is a C{temperror} (RFC 8601
section 2.7), and nothing here ever fails.
"""

from __future__ import annotations

import random as randomModule
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Optional

from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from smtpmx.address import Address
from smtpmx.auth.dkim import verifyMessage
from smtpmx.auth.dmarc import checkDmarc
from smtpmx.auth.results import (
    ArcResult,
    AuthResults,
    DkimResult,
    DmarcResult,
    Method,
    SpfResult,
)
from smtpmx.auth.spf import checkSpf
from smtpmx.envelope import Envelope

# How many SPF verdicts are remembered (the least recently used go first).
MEMO_SIZE = 4096
# Seconds an SPF verdict is remembered: the DNS answers it was made from
# are cached for their own TTL by the resolver, so this only spares the
# work of a burst of transactions from one client and sender.
MEMO_LIFETIME = 300.0
# Seconds a check is given past its deadline to report: its lookups fail at
# once by then, and what it found (a C{temperror} naming its domain, or a
# verdict that needed no lookup) is worth more than a bare C{temperror}.
GRACE = 1.0


@dataclass(frozen=True)
class Checks:
    """
    The blocking checks run in the thread pool, each given the lookups of
    one message (L{smtpmx.auth.dns.Lookups}); tests give fakes.

    @ivar checkSpf: C{checkSpf(lookups, clientHost, sender, heloName)}, an
        L{SpfResult} (L{smtpmx.auth.spf.checkSpf}).
    @ivar verifyMessage: C{verifyMessage(txt, file, dkim=, arc=)}, the
        message's header fields and its DKIM and ARC verdicts
        (L{smtpmx.auth.dkim.verifyMessage}).
    @ivar checkDmarc: C{checkDmarc(txt, headers, spf, dkim, random=)}, a
        L{DmarcResult} (L{smtpmx.auth.dmarc.checkDmarc}).
    """

    checkSpf: Callable[..., SpfResult]
    verifyMessage: Callable[..., Any]
    checkDmarc: Callable[..., DmarcResult]


def realChecks() -> Checks:
    """
    The checks of L{smtpmx.auth.spf}, L{smtpmx.auth.dkim} and
    L{smtpmx.auth.dmarc}.
    """
    return Checks(checkSpf, verifyMessage, checkDmarc)


def spfTemperror(heloName: str, reversePath: Optional[Address]) -> SpfResult:
    """
    The SPF verdict of a check that could not be made in time: the
    identity it was about, C{temperror}.
    """
    if reversePath is None:
        return SpfResult("temperror", helo=heloName.lower())
    return SpfResult("temperror", mailfrom=reversePath.domain.lower())


class _SenderCheck:
    """
    One SPF check, under way or done, shared by whoever asks about the
    same client, HELO name and sender.

    @ivar result: the verdict once known.
    @ivar expires: when a verdict stops being remembered, on the reactor's
        clock.
    """

    def __init__(self) -> None:
        self.result: Optional[SpfResult] = None
        self.expires = 0.0
        self._waiting: list[Deferred] = []

    def wait(self) -> Deferred:
        """
        A L{Deferred} of the verdict.
        """
        if self.result is not None:
            return succeed(self.result)
        d: Deferred = Deferred()
        self._waiting.append(d)
        return d

    def settle(self, result: SpfResult) -> bool:
        """
        The verdict is known: tell whoever waits.

        @return: whether it is the first one (a check that timed out may
            still finish later).
        """
        if self.result is not None:
            return False
        self.result = result
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(result)
        return True


class SenderAuthentication:
    """
    Checks the senders of mail from untrusted clients, on the methods of
    C{--auth-checks}.

    @ivar methods: the methods that are on.
    @ivar resolver: the L{smtpmx.auth.dns.Resolver} (its C{clock} is the
        one of the deadlines handed to its C{lookups}).
    @ivar checks: the L{Checks} run.
    @ivar timeout: the time budget of one message, in seconds
        (C{--auth-timeout}).
    """

    log = Logger()

    def __init__(
        self,
        methods: frozenset[Method],
        resolver,
        runInThread: Callable[..., Deferred],
        clock: IReactorTime,
        timeout: float,
        checks: Optional[Checks] = None,
        random: Callable[[], float] = randomModule.random,
        memoSize: int = MEMO_SIZE,
        memoLifetime: float = MEMO_LIFETIME,
        grace: float = GRACE,
    ) -> None:
        """
        @param runInThread: C{runInThread(f, *args)} runs C{f} in the
            checks' own thread pool and returns a L{Deferred} of its result.
        @param clock: bounds every check by C{timeout}.
        @param checks: the checks to run; L{realChecks} by default.
        @param random: the source of DMARC's C{pct=} sampling (RFC 7489
            section 6.6.4).
        @param memoSize: how many SPF verdicts are remembered.
        @param memoLifetime: for how many seconds.
        @param grace: see L{GRACE}.
        """
        self.methods = frozenset(methods)
        self.resolver = resolver
        self.timeout = timeout
        self.grace = grace
        self.random = random
        self._runInThread = runInThread
        self._clock = clock
        self.checks = checks if checks is not None else realChecks()
        self._memo: OrderedDict[tuple, _SenderCheck] = OrderedDict()
        self._memoSize = memoSize
        self._memoLifetime = memoLifetime

    @property
    def needsSpf(self) -> bool:
        """
        Whether SPF is evaluated: for itself, or for DMARC's alignment
        (RFC 7489 section 4.2).
        """
        return Method.SPF in self.methods or Method.DMARC in self.methods

    def inThread(self, deadline: Optional[float], f: Callable, *args) -> Deferred:
        """
        Run C{f(lookups, *args)} in the thread pool, C{lookups} being the
        resolver's lookups until C{deadline}, plus one check of the
        resolver's clock when C{deadline} is L{None} (the budget from now).

        @return: a L{Deferred} of its result; it fails as C{f} does.
        """

        def start() -> Deferred:
            """
            The lookups, then the job.
            """
            end = deadline if deadline is not None else self.resolver.clock() + self.timeout
            return self._runInThread(f, self.resolver.lookups(end), *args)

        return maybeDeferred(start)

    def checkSender(
        self, clientHost: str, heloName: str, reversePath: Optional[Address]
    ) -> Deferred:
        """
        The SPF verdict on C{clientHost} sending as C{reversePath} (the
        HELO name for the null sender, RFC 7208 section 2.4), within the
        time budget.  The same question asked again while it is being
        answered, or soon after, shares the answer.

        @return: a L{Deferred} firing with an L{SpfResult} (C{temperror}
            when the check could not be made in time); it never fails.
        """
        sender = str(reversePath) if reversePath is not None else None
        key = (clientHost, heloName.lower(), sender)
        entry = self._memo.get(key)
        if entry is not None and (entry.result is None or entry.expires > self._clock.seconds()):
            self._memo.move_to_end(key)
            return entry.wait()
        entry = _SenderCheck()
        self._memo[key] = entry
        while len(self._memo) > self._memoSize:
            self._memo.popitem(last=False)
        fallback = spfTemperror(heloName, reversePath)

        def settle(result: SpfResult) -> None:
            """
            Tell the waiters; remember a verdict but a temporary one (the
            next transaction tries again).
            """
            if not entry.settle(result):
                return
            if timer.active():
                timer.cancel()
            if result.result == "temperror":
                if self._memo.get(key) is entry:
                    del self._memo[key]
            else:
                entry.expires = self._clock.seconds() + self._memoLifetime

        def failed(failure: Failure) -> None:
            """
            The check broke: a bug, logged; the verdict is C{temperror}.
            """
            if entry.result is None:
                self.log.failure("SPF check of [{client}] failed", failure, client=clientHost)
            settle(fallback)

        waiting = entry.wait()
        timer = self._clock.callLater(self.timeout + self.grace, settle, fallback)
        d = self.inThread(None, lambda lookups: self.checks.checkSpf(lookups, clientHost, sender, heloName))
        d.addCallbacks(settle, failed)
        return waiting

    def checkMessage(self, envelope: Envelope, message) -> Deferred:
        """
        Every method's verdict on a message, within the time budget: SPF
        (started at C{MAIL FROM}, L{checkSender}), then DKIM, ARC and
        DMARC in one job of the thread pool.

        @param message: an L{smtpmx.interfaces.IFilterableMessage}, read
            through C{open()} in the thread.

        @return: a L{Deferred} firing with the L{AuthResults} (a method not
            done in time is C{temperror}); it never fails, and may be
            cancelled.
        """
        return _MessageCheck(self, envelope, message, self._clock).start()


class _MessageCheck:
    """
    The checks of one message, bounded by the time budget: what the
    thread has found by then is kept, the rest is C{temperror}.
    """

    log = Logger()

    def __init__(self, auth: SenderAuthentication, envelope: Envelope, message, clock: IReactorTime) -> None:
        self._auth = auth
        self._envelope = envelope
        self._message = message
        self._spf: Optional[SpfResult] = None
        # Set from the thread, read once the result is due.
        self._found: Any = None
        self._dmarc: Optional[DmarcResult] = None
        self.result: Deferred = Deferred(lambda _: self._stopTimer())
        self._timer = clock.callLater(auth.timeout + auth.grace, self._finish)
        self._deadline: Optional[float] = None

    def start(self) -> Deferred:
        """
        Begin with SPF, if needed.
        """
        auth = self._auth
        try:
            self._deadline = auth.resolver.clock() + auth.timeout
        except Exception:
            self._failed(Failure())
            return self.result
        if auth.needsSpf:
            envelope = self._envelope
            auth.checkSender(envelope.clientHost, envelope.heloName, envelope.reversePath).addCallback(
                self._spfChecked
            )
        else:
            self._spfChecked(None)
        return self.result

    def _spfChecked(self, spf: Optional[SpfResult]) -> None:
        """
        SPF is known (or not needed): on to the message.
        """
        self._spf = spf
        if self.result.called:
            return
        methods = self._auth.methods
        if not methods & {Method.DKIM, Method.ARC, Method.DMARC}:
            self._finish()
            return
        d = self._auth.inThread(self._deadline, self._verify, spf)
        d.addCallbacks(lambda _: self._finish(), self._failed)

    def _verify(self, lookups, spf: Optional[SpfResult]) -> None:
        """
        In the thread: DKIM and ARC on the spooled message, then DMARC.
        """
        auth = self._auth
        checks = auth.checks
        methods = auth.methods
        dmarc = Method.DMARC in methods
        with self._message.open() as f:
            found = checks.verifyMessage(
                lookups.txt, f, dkim=dmarc or Method.DKIM in methods, arc=Method.ARC in methods
            )
        self._found = found
        if dmarc:
            self._dmarc = checks.checkDmarc(
                lookups.txt, found.headers, spf, found.dkim or (), random=auth.random
            )

    def _failed(self, failure: Failure) -> None:
        """
        A check broke: a bug, logged unless the answer was given already;
        what is missing is C{temperror}.
        """
        if not self.result.called:
            self.log.failure(
                "{id}: sender authentication failed", failure, id=self._envelope.queueId
            )
        self._finish()

    def _stopTimer(self) -> None:
        """
        No answer is needed any more.
        """
        if self._timer.active():
            self._timer.cancel()

    def _finish(self) -> None:
        """
        Answer with what is known now.
        """
        if self.result.called:
            return
        self._stopTimer()
        self.result.callback(self.results())

    def results(self) -> AuthResults:
        """
        The verdicts of the methods that are on: those found, and
        C{temperror} for the others.
        """
        methods = self._auth.methods
        found = self._found
        envelope = self._envelope
        spf = self._spf or spfTemperror(envelope.heloName, envelope.reversePath)
        dkim = found.dkim if found is not None and found.dkim is not None else None
        arc = found.arc if found is not None and found.arc is not None else None
        return AuthResults(
            spf=spf if Method.SPF in methods else None,
            dkim=(dkim or (DkimResult("temperror"),)) if Method.DKIM in methods else None,
            dmarc=(self._dmarc or DmarcResult("temperror")) if Method.DMARC in methods else None,
            arc=(arc or ArcResult("temperror")) if Method.ARC in methods else None,
        )
