"""
Tests for the message filter plugin point (C{docs/plugins.rst}): the
filter chain (L{smtpmx.filterchain}), the spooling store around the real
one (L{smtpmx.filterstore}), the session's answer to a refusal, and the
helpers of L{smtpmx.testing} for filter authors.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest
from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from smtpmx import reply
from smtpmx.access import Access
from smtpmx.envelope import LocalMailbox, RemoteAddress
from smtpmx.filterchain import (
    FilterChain,
    FilterLoadError,
    FilterNotFound,
    findFilterFactories,
    makeFilters,
)
from smtpmx.filtering import Accept, Junk, Reject
from smtpmx.filterstore import CHUNK, FilteringStore, Spool, filedEnvelope
from smtpmx.interfaces import IFilterableMessage, IFilteredMessage, IMessageStore
from smtpmx.reply import Refused
from smtpmx.testing import MemoryStore, filterableMessage, runAtOnce, runFilter
from tests.helpers import assertShownIn
from tests.serverhelpers import makeConfig
from tests.test_session import SessionDriver


class Fixed:
    """
    A filter that always says the same thing (or fails, or waits), and
    remembers what it saw.
    """

    def __init__(self, verdict=None, raises=None, wait=False) -> None:
        self.verdict = verdict
        self.raises = raises
        self.wait = wait
        self.seen: list[bytes] = []
        self.pending: list[Deferred] = []
        self.cancelled = 0

    def filterMessage(self, session, message):
        """
        Read the message through C{open()}, then answer.
        """
        with message.open() as f:
            self.seen.append(f.read())
        if self.raises is not None:
            raise self.raises
        if self.wait:
            d: Deferred = Deferred(lambda _: self.__setattr__("cancelled", self.cancelled + 1))
            self.pending.append(d)
            return d
        return self.verdict


def chainOf(*filters, failure="accept", timeout=30.0, clock=None) -> FilterChain:
    """
    A chain of the filters given, named C{f0}, C{f1}, ...
    """
    return FilterChain(
        [(f"f{i}", f) for i, f in enumerate(filters)], clock or Clock(), timeout, failure
    )


class FilterChainTests(SynchronousTestCase):
    """
    L{FilterChain} asks every filter in order and combines the verdicts.
    """

    def run_(self, chain, data=b"Subject: x\n\nhi\n"):
        """
        The chain's result on a message made of C{data}.
        """
        message = filterableMessage(data)
        return self.successResultOf(chain.run(None, message))

    def test_noOpinion(self):
        """
        Filters with no opinion deliver the message unchanged.
        """
        result = self.run_(chainOf(Fixed(), Fixed()))
        self.assertIsNone(result.reject)
        self.assertEqual(result.headers, [])
        self.assertFalse(result.junk)
        self.assertEqual(result.verdicts, ["f0 none", "f1 none"])

    def test_headersAccumulate(self):
        """
        The header fields of every Accept and Junk are kept, in order; one
        Junk is enough for the Junk folder.
        """
        result = self.run_(
            chainOf(Fixed(Accept([("X-A", "1")])), Fixed(Junk([("X-B", "2")])),
                    Fixed(Accept([("X-C", "3")])))
        )
        self.assertEqual(result.headers, [("X-A", "1"), ("X-B", "2"), ("X-C", "3")])
        self.assertTrue(result.junk)
        self.assertEqual(result.verdicts, ["f0 accept", "f1 junk", "f2 accept"])

    def test_firstRejectDecides(self):
        """
        The first Reject decides; the filters after it are still asked, in
        order, and their verdicts are logged, but a later Reject does not
        change the reply.
        """
        later = Fixed(Reject(451, "4.7.1", "later"))
        last = Fixed(Junk([("X-Spam", "Yes")]))
        result = self.run_(
            chainOf(Fixed(Accept()), Fixed(Reject(550, "5.7.1", "spam")), later, last)
        )
        self.assertEqual((result.reject.code, result.reject.text), (550, "spam"))
        self.assertEqual(len(later.seen), 1)
        self.assertEqual(len(last.seen), 1)
        self.assertEqual(result.verdicts,
                         ["f0 accept", "f1 550 5.7.1", "f2 451 4.7.1", "f3 junk"])

    def test_allRunAfterFailedTempfail(self):
        """
        Under C{--filter-failure tempfail} a failed filter's C{451 4.7.1}
        is a Reject like any other: the first one decides, the filters
        after it still run (a later permanent refusal does not replace
        it; an earlier one would have decided).
        """
        last = Fixed(Reject(550, "5.7.1", "spam"))
        result = self.run_(chainOf(Fixed(raises=ValueError("boom")), last, failure="tempfail"))
        self.assertEqual((result.reject.code, result.reject.enhanced), (451, "4.7.1"))
        self.assertEqual(len(last.seen), 1)
        self.assertEqual(result.verdicts, ["f0 failed", "f1 550 5.7.1"])
        self.flushLoggedErrors(ValueError)
        result = self.run_(chainOf(Fixed(Reject(554, "5.7.1", "no")),
                                   Fixed(raises=ValueError("boom")), failure="tempfail"))
        self.assertEqual(result.reject.code, 554)
        self.flushLoggedErrors(ValueError)

    def test_deferredVerdict(self):
        """
        A filter may answer later, with a Deferred.
        """
        waiting = Fixed(wait=True)
        d = chainOf(waiting, Fixed(Junk())).run(None, filterableMessage(b"x\n"))
        self.assertNoResult(d)
        waiting.pending[0].callback(Accept([("X-Late", "yes")]))
        result = self.successResultOf(d)
        self.assertEqual(result.headers, [("X-Late", "yes")])
        self.assertTrue(result.junk)

    def test_failureAccept(self):
        """
        With C{--filter-failure accept}, a filter that raises, fails its
        Deferred or returns a non-verdict is passed over and logged; the
        others still run.
        """
        class Failing:
            """
            Fails its Deferred.
            """

            def filterMessage(self, session, message):
                """
                A failed Deferred.
                """
                return fail(OSError("down"))

        result = self.run_(
            chainOf(Fixed(raises=ValueError("boom")), Failing(), Fixed("yes"), Fixed(Junk()))
        )
        self.assertIsNone(result.reject)
        self.assertTrue(result.junk)
        self.assertEqual(result.verdicts, ["f0 failed", "f1 failed", "f2 failed", "f3 junk"])
        self.assertEqual(len(self.flushLoggedErrors(ValueError, OSError)), 2)

    def test_failureTempfail(self):
        """
        With C{--filter-failure tempfail}, a broken filter refuses the
        message with C{451 4.7.1}.
        """
        result = self.run_(chainOf(Fixed(raises=ValueError("boom")), failure="tempfail"))
        self.assertEqual((result.reject.code, result.reject.enhanced), (451, "4.7.1"))
        self.flushLoggedErrors(ValueError)

    def test_timeout(self):
        """
        A filter not done within the timeout is cancelled and has failed.
        """
        clock = Clock()
        slow = Fixed(wait=True)
        d = chainOf(slow, Fixed(Accept()), timeout=5, clock=clock, failure="tempfail").run(
            None, filterableMessage(b"x\n")
        )
        clock.advance(4.9)
        self.assertNoResult(d)
        clock.advance(0.2)
        result = self.successResultOf(d)
        self.assertEqual(slow.cancelled, 1)
        self.assertEqual(result.reject.code, 451)
        self.assertEqual(result.verdicts, ["f0 failed", "f1 accept"])

    def test_timeoutAccept(self):
        """
        Under C{accept}, a timed-out filter is passed over.
        """
        clock = Clock()
        d = chainOf(Fixed(wait=True), Fixed(Accept([("X-B", "1")])), timeout=5, clock=clock).run(
            None, filterableMessage(b"x\n")
        )
        clock.advance(5)
        result = self.successResultOf(d)
        self.assertIsNone(result.reject)
        self.assertEqual(result.headers, [("X-B", "1")])


class MakeFiltersTests(SynchronousTestCase):
    """
    C{--filter NAME[:ARG]} picks a plugin by name and hands it the argument.
    """

    def test_argument(self):
        """
        The text after the first colon is the argument; without a colon
        the argument is L{None}.
        """
        made = []

        class Factory:
            """
            Records its arguments.
            """

            name = "rec"
            description = "records"

            def makeFilter(self, argument):
                """
                Record C{argument}.
                """
                made.append(argument)
                return Fixed()

        filters = makeFilters(["rec", "rec:a:b"], [Factory()])
        self.assertEqual([n for n, _ in filters], ["rec", "rec"])
        self.assertEqual(made, [None, "a:b"])

    def test_unknown(self):
        """
        An unknown name is L{FilterNotFound}.
        """
        self.assertRaises(FilterNotFound, makeFilters, ["nope"], [])

    def test_loadError(self):
        """
        A factory that raises is L{FilterLoadError}, naming the filter.
        """

        class Factory:
            """
            Refuses every argument.
            """

            name = "bad"
            description = "bad"

            def makeFilter(self, argument):
                """
                Refuse.
                """
                raise ValueError("no such URL")

        e = self.assertRaises(FilterLoadError, makeFilters, ["bad:x"], [Factory()])
        self.assertIn("'bad:x'", str(e))
        self.assertIn("no such URL", str(e))

    def test_noneConfigured(self):
        """
        No C{--filter}: no plugin is even looked for.
        """
        self.assertEqual(makeFilters([]), [])

    def test_builtinRspamd(self):
        """
        The built-in C{rspamd} filter is found as a plugin.
        """
        self.assertIn("rspamd", [f.name for f in findFilterFactories()])


def spoolDirectory(test) -> str:
    """
    A temporary spool directory, removed after the test.
    """
    directory = tempfile.mkdtemp()
    test.addCleanup(shutil.rmtree, directory, True)
    return directory


class FilteringStoreTests(SynchronousTestCase):
    """
    L{FilteringStore} spools untrusted clients' messages, runs the filters
    and then stores or refuses them.
    """

    def setUp(self):
        """
        A filtering store around a L{MemoryStore}, with C{192.0.2.0/24}
        untrusted and C{127.0.0.0/8} trusted.
        """
        self.inner = MemoryStore()
        self.config = makeConfig()
        self.spool = spoolDirectory(self)

    def storeWith(self, *filters, **kwargs) -> FilteringStore:
        """
        The store with a chain of C{filters}.
        """
        self.clock = Clock()
        return FilteringStore(
            self.inner, chainOf(*filters, **kwargs), Access.fromConfig(self.config),
            self.config, runAtOnce, self.spool, reactor=self.clock,
        )

    def send(self, store, data=b"Subject: hi\n\nbody\n", client="192.0.2.1", chunks=3):
        """
        Receive C{data} from C{client} in a few chunks and finish it.
        """
        envelope = filterableMessage(
            b"", recipients=["alice@example.org", "x@remote.example"], clientHost=client
        ).envelope
        message = store.receive(envelope)
        step = max(1, len(data) // chunks)
        for i in range(0, len(data), step):
            message.write(data[i : i + step])
        return message, message.finish()

    def test_interfaces(self):
        """
        The store is an L{IMessageStore}; its message an L{IFilteredMessage}.
        """
        store = self.storeWith(Fixed())
        verifyObject(IMessageStore, store)
        message, d = self.send(store)
        verifyObject(IFilteredMessage, message)

    def test_trustedNotFiltered(self):
        """
        A client in C{--relay-network} goes straight to the inner store:
        no filter sees its message.
        """
        judge = Fixed(Reject(550, "5.7.1", "no"))
        message, d = self.send(self.storeWith(judge), client="127.0.0.1")
        self.successResultOf(d)
        self.assertIs(message, self.inner.messages[0])
        self.assertEqual(judge.seen, [])

    def test_contextReactor(self):
        """
        The filters' context carries the reactor the store was given, so a
        filter connects and times out with the server's reactor, not a
        global one.
        """

        class Seeing:
            """
            Remembers the context it is asked with.
            """

            session = None

            def filterMessage(self, session, message):
                """
                Keep C{session}; no opinion.
                """
                self.session = session

        seeing = Seeing()
        store = self.storeWith(seeing)
        message, d = self.send(store)
        self.successResultOf(d)
        self.assertIs(seeing.session.reactor, self.clock)
        self.assertEqual(seeing.session.clientHost, "192.0.2.1")

    def test_noFiltersNotSpooled(self):
        """
        With no filter at all, messages go straight to the inner store.
        """
        message, d = self.send(self.storeWith())
        self.assertIs(message, self.inner.messages[0])

    def test_acceptWithHeaders(self):
        """
        The filter reads the whole message from the spool; the stored copy
        is the same bytes, with the headers in C{extraHeaders}, and the
        spool is gone.
        """
        judge = Fixed(Accept([("X-Score", "1.5")]))
        data = b"Subject: hi\n\n" + b"x" * 200000 + b"\n"
        message, d = self.send(self.storeWith(judge), data, chunks=7)
        self.successResultOf(d)
        self.assertEqual(judge.seen, [data])
        [stored] = self.inner.messages
        self.assertEqual(stored.body, data)
        self.assertEqual(stored.envelope.extraHeaders, b"X-Score: 1.5\n")
        self.assertEqual(
            [r.destination for r in stored.envelope.recipients][0], LocalMailbox("example.org", "alice")
        )
        self.assertEqual(message.filterVerdicts, ["f0 accept"])
        self.assertEqual(os.listdir(self.spool), [])

    def test_junk(self):
        """
        A Junk verdict files local copies in the Junk folder; remote copies
        are relayed as they are.
        """
        message, d = self.send(self.storeWith(Fixed(Junk([("X-Spam", "Yes")]))))
        self.successResultOf(d)
        [stored] = self.inner.messages
        destinations = [r.destination for r in stored.envelope.recipients]
        self.assertEqual(destinations[0], LocalMailbox("example.org", "alice", "Junk"))
        self.assertIsInstance(destinations[1], RemoteAddress)
        self.assertEqual(stored.envelope.extraHeaders, b"X-Spam: Yes\n")

    def test_reject(self):
        """
        A Reject fails C{finish()} with L{Refused} carrying its reply;
        nothing is stored and the spool is gone.
        """
        message, d = self.send(self.storeWith(Fixed(Reject(550, "5.7.1", "Go away"))))
        refused = self.failureResultOf(d, Refused).value
        self.assertEqual(refused.reply, reply.Reply(550, "5.7.1", "Go away"))
        self.assertEqual(self.inner.started, [])
        self.assertEqual(os.listdir(self.spool), [])

    def test_innerFails(self):
        """
        A failure of the inner store is the failure of C{finish()}.
        """
        self.inner.failWith = OSError("disk full")
        message, d = self.send(self.storeWith(Fixed(Accept())))
        self.failureResultOf(d, OSError)
        self.assertEqual(os.listdir(self.spool), [])

    def test_abort(self):
        """
        An aborted message leaves no spool behind, and no filter sees it.
        """
        judge = Fixed(Accept())
        store = self.storeWith(judge)
        envelope = filterableMessage(b"").envelope
        message = store.receive(envelope)
        message.write(b"Subject: x\n")
        message.abort()
        self.assertEqual(os.listdir(self.spool), [])
        self.assertEqual(judge.seen, [])

    def test_backpressure(self):
        """
        While the spool is behind, C{write} asks the sender to wait.
        """
        held: list = []

        def later(f, *args):
            """
            Run C{f} only when the test says so.
            """
            d: Deferred = Deferred()
            held.append((d, f, args))
            return d

        store = FilteringStore(
            self.inner, chainOf(Fixed(Accept())), Access.fromConfig(self.config),
            self.config, later, self.spool, reactor=Clock(),
        )
        message = store.receive(filterableMessage(b"").envelope)
        self.assertIsNone(message.write(b"x" * 10))
        pause = message.write(b"y" * (1 << 20))
        self.assertIsInstance(pause, Deferred)
        self.assertNoResult(pause)
        while held:
            d, f, args = held.pop(0)
            d.callback(f(*args))
        self.successResultOf(pause)
        message.abort()
        while held:
            d, f, args = held.pop(0)
            d.callback(f(*args))
        self.assertEqual(os.listdir(self.spool), [])

    def test_smallMessageOneWrite(self):
        """
        A message of at most L{CHUNK} bytes is spooled in one write at its
        end, for the filters to read, and copied to the store from memory:
        two thread hops in all (the write, the removal), the same bytes
        stored; a bigger one is spooled as it arrives and read back.
        """
        for size, hops in ((CHUNK, 2), (CHUNK + 1, None)):
            calls: list = []

            def counting(f, *args):
                """
                Count the thread hop, then run C{f} at once.
                """
                calls.append(f.__name__)
                return runAtOnce(f, *args)

            judge = Fixed(Accept())
            store = FilteringStore(
                self.inner, chainOf(judge), Access.fromConfig(self.config),
                self.config, counting, self.spool, reactor=Clock(),
            )
            data = b"Subject: x\n\n" + b"x" * (size - 13) + b"\n"
            message, d = self.send(store, data, chunks=5)
            self.successResultOf(d)
            self.assertEqual(judge.seen, [data])
            self.assertEqual(self.inner.messages[-1].body, data)
            if hops is None:
                self.assertIn("complete", calls)
            else:
                self.assertEqual(calls, ["completeWith", "remove"])
            self.assertEqual(os.listdir(self.spool), [])

    def test_spoolRemovedFirst(self):
        """
        A spool removed (a cancelled transaction) before a write it no
        longer waited for ran is never made: that write fails.
        """
        spool = Spool(self.spool)
        spool.remove()
        self.assertRaises(OSError, spool.completeWith, b"late")
        self.assertEqual(os.listdir(self.spool), [])

    def test_filedEnvelope(self):
        """
        The filters' header fields go below whatever C{extraHeaders} held.
        """
        from smtpmx.filterchain import ChainResult

        envelope = filterableMessage(b"").envelope
        envelope.extraHeaders = b"X-First: 1\n"
        filed = filedEnvelope(envelope, ChainResult(headers=[("X-Second", "2")]))
        self.assertEqual(filed.extraHeaders, b"X-First: 1\nX-Second: 2\n")
        self.assertEqual(envelope.extraHeaders, b"X-First: 1\n")


class SessionRefusalTests(SynchronousTestCase):
    """
    The session answers a filter's refusal at the end of data, and its log
    line says what each filter said.
    """

    def driver(self, *filters) -> SessionDriver:
        """
        A session from an untrusted client whose store runs C{filters}.
        """
        d = SessionDriver()
        d.session.store = FilteringStore(
            d.store, chainOf(*filters), Access.fromConfig(d.config), d.config,
            runAtOnce, spoolDirectory(self), reactor=Clock(),
        )
        return d

    @pytest.mark.rfc("5321", "4.1.1.4", "5321-4.1.1.4-3")
    def test_refusedReply(self):
        """
        A filter's Reject is the reply to the end of data, with its own
        text; nothing is stored.
        """
        d = self.driver(Fixed(Accept([("X-A", "1")])), Fixed(Reject(554, "5.7.1", "Spam, sorry")))
        d.run(
            b"EHLO client.example\r\nMAIL FROM:<sender@remote.example>\r\n"
            b"RCPT TO:<alice@example.org>\r\nDATA\r\nSubject: x\r\n\r\nhello\r\n.\r\n"
        )
        [record] = d.records
        self.assertEqual(record.reply, reply.Reply(554, "5.7.1", "Spam, sorry"))
        self.assertEqual(d.store.messages, [])
        line = record.logFields()
        self.assertEqual(line["filters"], " filters=[f0 accept, f1 554 5.7.1]")

    def test_acceptedLogLine(self):
        """
        An accepted message's log line lists the filters' verdicts.
        """
        from smtpmx.transactionlog import TRANSACTION_LOG_FORMAT

        d = self.driver(Fixed(Junk()))
        d.run(
            b"EHLO client.example\r\nMAIL FROM:<sender@remote.example>\r\n"
            b"RCPT TO:<alice@example.org>\r\nDATA\r\nhello\r\n.\r\n"
        )
        [record] = d.records
        self.assertEqual(record.reply.code, 250)
        line = TRANSACTION_LOG_FORMAT.format(**record.logFields())
        self.assertIn("size=6 filters=[f0 junk] result=250", line)
        self.assertEqual(d.store.messages[0].envelope.recipients[0].destination.folder, "Junk")


class TestingHelperTests(SynchronousTestCase):
    """
    L{smtpmx.testing} gives a filter author a message from bytes and a way
    to run a filter on it.
    """

    def test_filterableMessage(self):
        """
        L{filterableMessage} is an L{IFilterableMessage} whose C{open()}
        reads the bytes (LF line endings) and whose envelope has local and
        remote recipients.
        """
        message = filterableMessage(b"A: b\r\n\r\nx\r\n", recipients=["a@example.org", "b@else.example"])
        verifyObject(IFilterableMessage, message)
        self.assertEqual(message.open().read(), b"A: b\n\nx\n")
        self.assertEqual(message.size, 8)
        self.assertIsInstance(message.envelope.recipients[0].destination, LocalMailbox)
        self.assertIsInstance(message.envelope.recipients[1].destination, RemoteAddress)

    def test_runFilter(self):
        """
        L{runFilter} gives the filter's verdict, and fails on a non-verdict.
        """
        self.assertIsInstance(self.successResultOf(runFilter(Fixed(Junk()), b"x\n")), Junk)
        self.failureResultOf(runFilter(Fixed("spam"), b"x\n"), TypeError)


class ExampleFilterTests(SynchronousTestCase):
    """
    The C{keyword} example of README.rst and docs/plugins.rst works as
    shown, and both documents show the same code as L{tests.examplefilter}.
    """

    def setUp(self):
        """
        Load the example's source.
        """
        from tests.examplefilter import SOURCE

        self.source = SOURCE
        self.namespace: dict = {}
        exec(compile(SOURCE, "keywordfilter.py", "exec"), self.namespace)

    def test_documented(self):
        """
        README.rst and docs/plugins.rst show the example's code, indented.
        """
        assertShownIn(self, self.source, "README.rst", os.path.join("docs", "plugins.rst"))

    def test_verdicts(self):
        """
        The example refuses a message with its word, even across a chunk
        boundary, and accepts the others with its header field.
        """
        keywordFilter = self.namespace["keyword"].makeFilter("VIAGRA")
        refused = self.successResultOf(
            runFilter(keywordFilter, b"Subject: hi\r\n\r\n" + b"x" * 65530 + b"Cheap VIAGRA\r\n")
        )
        self.assertIsInstance(refused, Reject)
        passed = self.successResultOf(runFilter(keywordFilter, b"Hello\r\n"))
        self.assertEqual(passed.headers, (("X-Keyword-Checked", "yes"),))
        self.assertRaises(ValueError, self.namespace["keyword"].makeFilter, None)


class TapTests(SynchronousTestCase):
    """
    C{twistd smtpmx} takes the filter options and wires the filtering
    store in front of the real one only when a filter is given.
    """

    def build(self, *argv):
        """
        The service for C{argv}, on a memory reactor, and its store.
        """
        from twisted.internet.testing import MemoryReactorClock

        from tests.test_tap import buildFromArguments

        self.reactor = MemoryReactorClock()
        options, _, factory = buildFromArguments(self, self.reactor, *argv)
        return options, factory.store

    def filterFactory(self):
        """
        Make C{--filter fixed:ARG} known, without a plugin file.
        """
        import smtpmx.filterchain
        import smtpmx.tap

        class Factory:
            """
            Makes L{Fixed} filters that accept.
            """

            name = "fixed"
            description = "for the tests"

            def makeFilter(self, argument):
                """
                A filter that accepts.
                """
                return Fixed(Accept())

        self.patch(smtpmx.filterchain, "findFilterFactories", lambda: [Factory()])
        self.patch(smtpmx.tap, "findFilterFactories", lambda: [Factory()])

    def test_noFilter(self):
        """
        Without C{--filter}, and without sender authentication, the store
        is the routing store itself.
        """
        from smtpmx.routing import RoutingStore

        options, store = self.build("--auth-checks", "none")
        self.assertIsInstance(store, RoutingStore)
        self.assertEqual(options.filters, [])

    def test_filters(self):
        """
        With filters, the store is a L{FilteringStore} around the routing
        store, with the timeout and failure mode given.
        """
        from smtpmx.routing import RoutingStore

        self.filterFactory()
        options, store = self.build("--filter", "fixed", "--filter", "fixed:x",
                                    "--filter-timeout", "7", "--filter-failure", "TempFail")
        self.assertIsInstance(store, FilteringStore)
        self.assertIsInstance(store.inner, RoutingStore)
        self.assertEqual([name for name, _ in store.chain.filters], ["fixed", "fixed"])
        self.assertEqual(store.chain.timeout, 7.0)
        self.assertEqual(store.chain.failure.value, "tempfail")
        self.assertIs(store.reactor, self.reactor)
        self.assertIs(store.context(filterableMessage(b"").envelope).reactor, self.reactor)

    def test_badOptions(self):
        """
        An unknown filter or failure mode is a one-line usage error.
        """
        from twisted.python import usage

        from tests.test_tap import parse

        self.filterFactory()
        e = self.assertRaises(usage.UsageError, parse, "--filter", "nope")
        self.assertIn("unknown filter 'nope' (twistd smtpmx --list-filters lists them)", str(e))
        e = self.assertRaises(usage.UsageError, parse, "--filter-failure", "maybe")
        self.assertIn("accept, tempfail", str(e))

    def test_summary(self):
        """
        The start-up log line names the filters.
        """
        from smtpmx.config import summarize

        self.filterFactory()
        options, store = self.build("--filter", "fixed:a", "--filter", "fixed")
        self.assertIn(" filters=fixed:a,fixed ", summarize(options.config))

    def test_listFilters(self):
        """
        C{--list-filters} prints each filter with its description and
        exits 0.
        """
        import io
        import sys

        from tests.test_tap import parse

        self.filterFactory()
        out = io.StringIO()
        self.patch(sys, "stdout", out)
        e = self.assertRaises(SystemExit, parse, "--list-filters")
        self.assertEqual(e.code, 0)
        self.assertEqual(out.getvalue(), "fixed  for the tests\n")
