"""
The message filter chain: every C{--filter} in order, each given the
spooled message, their verdicts combined (C{docs/plugins.rst}), and the
lookup of filter plugins by name for C{--filter NAME[:ARG]}.

The filters are asked one after the other, each in turn, and every one
of them is asked: C{None} is no opinion, C{Accept} and C{Junk} add their
header fields and C{Junk} sends the local copies to the Junk folder.  The
first C{Reject} decides the reply; the filters after it are still asked,
so that the transaction's log line holds every filter's verdict (what
each of them would have done is worth knowing when tuning them), but
nothing they say changes the outcome.  A filter that raises, fails,
returns something that is not a verdict or is not done within the timeout
has I{failed}: with C{--filter-failure accept} the message goes on as if
it had no opinion (logged), with C{tempfail} the failure counts as a
C{Reject} with C{451 4.7.1} (RFC 3463 section 3.8: a temporary security
or policy status) — the first one decides, as for any other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Optional, Sequence

from twisted.internet.defer import Deferred, TimeoutError, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from smtpmx.filtering import Accept, Junk, Reject
from smtpmx.interfaces import IMessageFilterFactory
from smtpmx.options import FilterFailure
from smtpmx.pluginlookup import (
    PluginLoadError,
    PluginNotFound,
    findFactories,
    makeFromSpecifications,
)


class FilterNotFound(PluginNotFound):
    """
    No filter plugin has the name asked for.
    """


class FilterLoadError(PluginLoadError):
    """
    A filter plugin refused its argument or failed to make a filter.
    """


def findFilterFactories() -> list:
    """
    Every message filter factory plugin found, in name order.
    """
    return findFactories(IMessageFilterFactory)


def filterFailed() -> Reject:
    """
    The refusal of a message whose filter failed under
    C{--filter-failure tempfail}: C{451 4.7.1}, try again later.
    """
    return Reject(451, "4.7.1", "Message filter unavailable, try again later")


@dataclass
class ChainResult:
    """
    What the filters made of one message.

    @ivar reject: the L{Reject} that decides (the first one), or L{None}
        when the message is delivered.
    @ivar headers: the header fields of every L{Accept} and L{Junk}, in
        the filters' order.
    @ivar junk: whether a filter said L{Junk}: local copies go to the Junk
        folder.
    @ivar verdicts: for the log, one C{"name verdict"} per filter asked
        (C{"rspamd junk"}, C{"spam 550 5.7.1"}, C{"slow failed"}).
    """

    reject: Optional[Reject] = None
    headers: list[tuple[str, str]] = field(default_factory=list)
    junk: bool = False
    verdicts: list[str] = field(default_factory=list)

    def decide(self, reject: Reject) -> None:
        """
        A filter refused the message: the first refusal is the one that
        decides, those after it are only logged.
        """
        if self.reject is None:
            self.reject = reject


class FilterChain:
    """
    Asks message filters in order and combines their verdicts.

    @ivar filters: pairs of (name, filter), the name being what the log
        says.
    @ivar timeout: seconds each filter may take (C{--filter-timeout}).
    @ivar failure: what a failed filter does (C{--filter-failure}).
    """

    log = Logger()

    def __init__(
        self,
        filters: Sequence[tuple[str, object]],
        clock: IReactorTime,
        timeout: float = 30.0,
        failure: str = FilterFailure.ACCEPT.value,
    ) -> None:
        self.filters = list(filters)
        self.timeout = timeout
        self.failure = FilterFailure(failure)
        self._clock = clock

    def __bool__(self) -> bool:
        """
        Whether there is any filter at all: without one, nothing is spooled.
        """
        return bool(self.filters)

    def run(self, session, message) -> Deferred:
        """
        Ask every filter about C{message}, in order; the first refusal
        decides.

        @param session: the transaction's
            L{smtpmx.validation.ValidationContext}.
        @param message: an L{smtpmx.interfaces.IFilterableMessage}.

        @return: a L{Deferred} firing with a L{ChainResult}; it never
            fails, but may be cancelled (the filter being asked is).
        """
        return Deferred.fromCoroutine(self._run(session, message))

    async def _run(self, session, message) -> ChainResult:
        """
        The chain, one filter after the other.
        """
        result = ChainResult()
        for name, messageFilter in self.filters:
            d = maybeDeferred(messageFilter.filterMessage, session, message)
            d.addTimeout(self.timeout, self._clock)
            try:
                verdict = await d
            except Exception:
                self._failed(name, message, Failure(), result)
                continue
            if verdict is None:
                result.verdicts.append(f"{name} none")
            elif isinstance(verdict, Reject):
                result.verdicts.append(f"{name} {verdict.code} {verdict.enhanced}")
                result.decide(verdict)
            elif isinstance(verdict, (Accept, Junk)):
                kind = "junk" if isinstance(verdict, Junk) else "accept"
                result.verdicts.append(f"{name} {kind}")
                result.headers.extend(verdict.headers)
                result.junk = result.junk or kind == "junk"
            else:
                self.log.error(
                    "{id}: filter {name!r} returned {verdict!r}, not a verdict",
                    id=message.envelope.queueId,
                    name=name,
                    verdict=verdict,
                )
                self._failed(name, message, None, result)
        return result

    def _failed(
        self, name: str, message, failure: Optional[Failure], result: ChainResult
    ) -> None:
        """
        Filter C{name} failed: log it, and apply C{--filter-failure}.
        """
        queueId = message.envelope.queueId
        if failure is not None and failure.check(TimeoutError):
            self.log.warn(
                "{id}: filter {name!r} gave no verdict within {timeout} s",
                id=queueId,
                name=name,
                timeout=self.timeout,
            )
        elif failure is not None:
            self.log.failure(
                "{id}: filter {name!r} failed", failure, id=queueId, name=name
            )
        result.verdicts.append(f"{name} failed")
        if self.failure is FilterFailure.TEMPFAIL:
            result.decide(filterFailed())


def makeFilters(
    specifications: Iterable[str], factories: Optional[list] = None
) -> list[tuple[str, object]]:
    """
    Make the filters of C{NAME[:ARG]} specifications, in order, for a
    L{FilterChain}.

    @param factories: the plugins to choose from; by default every plugin
        found by L{findFilterFactories} (looked for only when a filter is
        asked for).

    @return: pairs of (name, filter).

    @raise FilterNotFound: a name has no plugin.
    @raise FilterLoadError: a plugin failed to make its filter; the message
        names the filter and says why.
    """
    specifications = list(specifications)
    if not specifications:
        return []
    if factories is None:
        factories = findFilterFactories()
    return makeFromSpecifications(
        specifications,
        factories,
        lambda factory, argument: factory.makeFilter(argument),
        "filter",
        FilterNotFound,
        FilterLoadError,
    )
