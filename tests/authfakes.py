"""
Fakes for testing how sender authentication is wired in, apart from the
checks themselves: L{FakeChecks} stands for SPF, DKIM and DMARC
(L{smtpmx.auth.checker.Checks}), L{FakeResolver} for the DNS resolver and
L{HeldRunner} for the checks' thread pool.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

from twisted.internet.defer import Deferred, maybeDeferred

from smtpmx.auth.checker import Checks, SenderAuthentication
from smtpmx.auth.results import ArcResult, DkimResult, DmarcResult, Method, SpfResult
from smtpmx.testing import runAtOnce

ALL_METHODS = frozenset(Method)

SPF_PASS = SpfResult("pass", mailfrom="remote.example")
DKIM_PASS = (DkimResult("pass", "remote.example", "sel"),)
DMARC_PASS = DmarcResult("pass", "remote.example")
ARC_NONE = ArcResult("none")


@dataclass(frozen=True)
class FoundAuth:
    """
    What the fake C{verifyMessage} finds: the shape of
    L{smtpmx.auth.dkim.MessageAuth}.
    """

    headers: tuple[tuple[bytes, bytes], ...]
    dkim: Optional[tuple[DkimResult, ...]]
    arc: Optional[ArcResult]


class FakeLookups:
    """
    One check's lookups: no record anywhere.
    """

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline

    def txt(self, name: str) -> list[bytes]:
        """
        No TXT record.
        """
        return []


class FakeResolver:
    """
    Hands out L{FakeLookups} and remembers their deadlines.

    @ivar clock: the clock deadlines are read on.
    """

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.deadlines: list[float] = []

    def lookups(self, deadline: float) -> FakeLookups:
        """
        The lookups of one check.
        """
        self.deadlines.append(deadline)
        return FakeLookups(deadline)


class FakeChecks:
    """
    SPF, DKIM and DMARC giving fixed verdicts, and remembering how they
    were asked.

    @ivar spfCalls: the C{(clientHost, sender, heloName)} of each SPF check.
    @ivar verified: C{(message bytes, dkim, arc)} of each C{verifyMessage}.
    @ivar dmarcCalls: C{(headers, spf, dkim, random)} of each DMARC check.
    """

    def __init__(
        self,
        spf: SpfResult = SPF_PASS,
        dkim: tuple[DkimResult, ...] = DKIM_PASS,
        arc: ArcResult = ARC_NONE,
        dmarc: DmarcResult = DMARC_PASS,
    ) -> None:
        self.spf = spf
        self.dkim = dkim
        self.arc = arc
        self.dmarc = dmarc
        self.spfCalls: list[tuple] = []
        self.verified: list[tuple] = []
        self.dmarcCalls: list[tuple] = []
        # Called inside the DMARC check, to make time pass there.
        self.duringDmarc: Callable[[], Any] = lambda: None

    def checkSpf(self, lookups, clientHost, sender, heloName) -> SpfResult:
        """
        The SPF verdict (an exception given as the verdict is raised).
        """
        self.spfCalls.append((clientHost, sender, heloName))
        if isinstance(self.spf, BaseException):
            raise self.spf
        return self.spf

    def verifyMessage(self, txt, message, dkim=True, arc=True) -> FoundAuth:
        """
        Read the message; the DKIM and ARC verdicts asked for.
        """
        data = message.read()
        self.verified.append((data, dkim, arc))
        if isinstance(self.dkim, BaseException):
            raise self.dkim
        head = data.split(b"\n\n", 1)[0]
        headers = tuple(
            tuple(line.split(b":", 1)) for line in head.split(b"\n") if b":" in line
        )
        return FoundAuth(headers, self.dkim if dkim else None, self.arc if arc else None)

    def checkDmarc(self, txt, headers, spf, dkim, random) -> DmarcResult:
        """
        The DMARC verdict.
        """
        self.dmarcCalls.append((headers, spf, tuple(dkim), random))
        self.duringDmarc()
        return self.dmarc

    def asChecks(self) -> Checks:
        """
        These, as L{SenderAuthentication} takes them.
        """
        return Checks(self.checkSpf, self.verifyMessage, self.checkDmarc)


class HeldRunner:
    """
    A C{runInThread} whose jobs run only when the test says so.
    """

    def __init__(self) -> None:
        self.jobs: list[tuple[Deferred, Callable, tuple]] = []

    def __call__(self, f, *args) -> Deferred:
        d: Deferred = Deferred()
        self.jobs.append((d, f, args))
        return d

    def runNext(self) -> None:
        """
        Run the first job waiting; its L{Deferred} fires with its result
        or its exception.
        """
        d, f, args = self.jobs.pop(0)
        maybeDeferred(f, *args).chainDeferred(d)

    def runAll(self) -> None:
        """
        Run every job waiting, in order (those they start too).
        """
        while self.jobs:
            self.runNext()


def makeAuthentication(
    clock, checks: Optional[FakeChecks] = None, methods=ALL_METHODS, timeout: float = 10.0,
    runInThread=runAtOnce, **kwargs
) -> SenderAuthentication:
    """
    A L{SenderAuthentication} on C{clock} with fake checks and resolver.
    """
    return SenderAuthentication(
        methods,
        FakeResolver(clock.seconds),
        runInThread,
        clock,
        timeout,
        checks=(checks or FakeChecks()).asChecks(),
        **kwargs,
    )
