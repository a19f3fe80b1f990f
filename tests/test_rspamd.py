"""
Tests of the built-in C{rspamd[:URL]} message filter
(L{smtpmx.filters.rspamd}): the pure parts (URL, request fields, verdicts,
the streamed body) in memory, the protocol against a REAL private rspamd
(L{tests.rspamd}), and connection reuse, HTTP errors and a silent server
against small fake servers on loopback.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from typing import Optional

from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred, gatherResults
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.error import ConnectionRefusedError
from twisted.logger import globalLogPublisher
from twisted.web.client import URI
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.internet.testing import MemoryReactor, MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.server import Site
from zope.interface.verify import verifyObject

from smtpmx.filtering import Accept, Junk, Reject
from smtpmx.filters.rspamd import (
    DEFAULT_URL,
    RspamdError,
    RspamdFilter,
    RspamdEndpoints,
    RspamdFilterFactory,
    SpooledBody,
    checkURL,
    requestHeaders,
    verdictOf,
)
from smtpmx.interfaces import IMessageFilter, IMessageFilterFactory
from smtpmx.config import Config
from smtpmx.envelope import Envelope
from smtpmx.testing import runAtOnce, validationContext
from tests import rspamd as harness
from tests.rspamd import HAM, FileMessage, makeEnvelope, spam, threadContext
from tests.e2e import freePort

class CheckURLTests(SynchronousTestCase):
    """
    L{checkURL} turns C{--filter rspamd:URL} into the C{/checkv2} address.
    """

    def test_default(self) -> None:
        """
        The default server is the normal worker on the local host.
        """
        self.assertEqual(checkURL(DEFAULT_URL), b"http://127.0.0.1:11333/checkv2")

    def test_prefix(self) -> None:
        """
        A path (rspamd behind a proxy) is kept, C{/checkv2} appended.
        """
        self.assertEqual(checkURL("https://spam.example/rspamd/"),
                         b"https://spam.example/rspamd/checkv2")

    def test_unusable(self) -> None:
        """
        Anything but an http(s) URL with a host, a good port and no query
        is refused at start-up.
        """
        for url in ("127.0.0.1:11333", "ftp://h/", "http://", "http://h:x/", "http://h/?a=1",
                    "http://u:p@h/"):
            self.assertRaises(ValueError, checkURL, url)


class RequestHeadersTests(SynchronousTestCase):
    """
    The envelope goes to rspamd as its protocol's request fields.
    """

    def test_envelope(self) -> None:
        """
        IP, Helo, From, one Rcpt per recipient, Queue-Id and our name
        (MTA-Name) are sent; the client has no verified name (Hostname
        C{unknown}).
        """
        message = FileMessage(HAM)
        self.addCleanup(message.remove)
        headers = requestHeaders(message, "mx.example.com")
        self.assertEqual(headers.getRawHeaders(b"IP"), [b"192.0.2.7"])
        self.assertEqual(headers.getRawHeaders(b"Helo"), [b"mail.example.org"])
        self.assertEqual(headers.getRawHeaders(b"From"), [b"<alice@example.org>"])
        self.assertEqual(headers.getRawHeaders(b"Rcpt"),
                         [b"<bob@example.com>", b"<carol@example.com>"])
        self.assertEqual(headers.getRawHeaders(b"Queue-Id"), [b"4XyZ12AbQ"])
        self.assertEqual(headers.getRawHeaders(b"Hostname"), [b"unknown"])
        self.assertEqual(headers.getRawHeaders(b"MTA-Name"), [b"mx.example.com"])

    def test_nullSender(self) -> None:
        """
        The null reverse-path (a bounce) is sent as C{<>}.
        """
        message = FileMessage(HAM, makeEnvelope(reversePath=None))
        self.addCleanup(message.remove)
        self.assertEqual(requestHeaders(message, "mx").getRawHeaders(b"From"), [b"<>"])

    def test_noLineBreak(self) -> None:
        """
        A HELO name cannot smuggle a line into the request.
        """
        envelope = makeEnvelope()
        envelope.heloName = "evil\r\nRcpt: x@y"
        message = FileMessage(HAM, envelope)
        self.addCleanup(message.remove)
        headers = requestHeaders(message, "mx")
        self.assertEqual(headers.getRawHeaders(b"Helo"), [b"evil Rcpt: x@y"])


class VerdictTests(SynchronousTestCase):
    """
    rspamd's actions map to verdicts as C{docs/plugins.rst} says.
    """

    def test_reject(self) -> None:
        """
        C{reject} refuses for good with C{550 5.7.1} and rspamd's text.
        """
        verdict = verdictOf({"action": "reject", "score": 15.0,
                             "messages": {"smtp_message": "Gtube pattern"}})
        self.assertIsInstance(verdict, Reject)
        self.assertEqual((verdict.code, verdict.enhanced, verdict.text),
                         (550, "5.7.1", "Gtube pattern"))

    def test_rejectDefaultText(self) -> None:
        """
        Without a message from rspamd the refusal has a text of ours; a
        control character in rspamd's text never reaches the wire.
        """
        self.assertEqual(verdictOf({"action": "reject", "score": 20}).text,
                         "Spam message rejected")
        said = verdictOf({"action": "reject", "score": 20,
                          "messages": {"smtp_message": "bad\x00\r\nword"}})
        self.assertEqual(said.text, "badword")

    def test_temporary(self) -> None:
        """
        C{soft reject} and C{greylist} refuse for now with C{451 4.7.1}.
        """
        for action in ("soft reject", "greylist"):
            verdict = verdictOf({"action": action, "score": 4.5})
            self.assertEqual((verdict.code, verdict.enhanced), (451, "4.7.1"))

    def test_junk(self) -> None:
        """
        C{add header} and C{rewrite subject} file the message as junk,
        marked C{X-Spam: Yes}, with the action and score.
        """
        for action in ("add header", "rewrite subject"):
            verdict = verdictOf({"action": action, "score": 6.5})
            self.assertIsInstance(verdict, Junk)
            self.assertEqual(list(verdict.headers), [
                ("X-Spam", "Yes"), ("X-Spam-Action", action), ("X-Spam-Score", "6.50"),
            ])

    def test_noAction(self) -> None:
        """
        C{no action} delivers, with the action and score.
        """
        verdict = verdictOf({"action": "no action", "score": -0.1})
        self.assertIsInstance(verdict, Accept)
        self.assertEqual(list(verdict.headers),
                         [("X-Spam-Action", "no action"), ("X-Spam-Score", "-0.10")])

    def test_customAction(self) -> None:
        """
        An action of the site's own delivers, saying which.
        """
        verdict = verdictOf({"action": "my_action", "score": 9})
        self.assertIsInstance(verdict, Accept)
        self.assertIn(("X-Spam-Action", "my_action"), verdict.headers)

    def test_unusable(self) -> None:
        """
        A reply without an action and a numeric score is an error.
        """
        for reply in ([], {}, {"action": "reject"}, {"action": 1, "score": 1},
                      {"action": "no action", "score": "1"},
                      {"action": "no action", "score": True},
                      {"action": "no action", "score": float("nan")}):
            self.assertRaises(RspamdError, verdictOf, reply)


class RecordingConsumer:
    """
    An HTTP request's body consumer that keeps what it is given, and may
    pause its producer after each write.
    """

    def __init__(self, pauseEach: bool = False) -> None:
        """
        @param pauseEach: pause the producer after every write.
        """
        self.chunks: list[bytes] = []
        self.producer = None
        self.pauseEach = pauseEach

    def write(self, data: bytes) -> None:
        """
        Keep C{data}; pause if asked to.
        """
        self.chunks.append(data)
        if self.pauseEach:
            self.producer.pauseProducing()


class SpooledBodyTests(SynchronousTestCase):
    """
    L{SpooledBody} streams the spooled file in chunks, honours flow
    control and always closes the file.
    """

    def test_chunks(self) -> None:
        """
        The message is sent in chunks of the size asked, its length
        announced beforehand, the file closed at the end.
        """
        message = FileMessage(b"x" * 25)
        self.addCleanup(message.remove)
        body = SpooledBody(message, runAtOnce, chunkSize=10)
        self.assertEqual(body.length, 25)
        consumer = RecordingConsumer()
        self.successResultOf(body.startProducing(consumer))
        self.assertEqual([len(c) for c in consumer.chunks], [10, 10, 5])
        self.assertTrue(message.opened[0].closed)

    def test_flowControl(self) -> None:
        """
        A paused body reads nothing more until resumed.
        """
        message = FileMessage(b"y" * 25)
        self.addCleanup(message.remove)
        body = SpooledBody(message, runAtOnce, chunkSize=10)
        consumer = RecordingConsumer(pauseEach=True)
        consumer.producer = body
        done = body.startProducing(consumer)
        self.assertEqual(len(consumer.chunks), 1)
        self.assertNoResult(done)
        body.resumeProducing()
        body.resumeProducing()
        body.resumeProducing()
        self.successResultOf(done)
        self.assertEqual(b"".join(consumer.chunks), b"y" * 25)

    def test_cancel(self) -> None:
        """
        Cancelling a body half sent stops reading and closes the file.
        """
        message = FileMessage(b"z" * 25)
        self.addCleanup(message.remove)
        body = SpooledBody(message, runAtOnce, chunkSize=10)
        consumer = RecordingConsumer(pauseEach=True)
        consumer.producer = body
        done = body.startProducing(consumer)
        done.cancel()
        self.failureResultOf(done, CancelledError)
        self.assertTrue(message.opened[0].closed)
        body.resumeProducing()
        self.assertEqual(len(consumer.chunks), 1)

    def test_readError(self) -> None:
        """
        A spool that cannot be read fails the request.
        """
        message = FileMessage(b"")
        message.remove()
        body = SpooledBody(message, runAtOnce)
        self.failureResultOf(body.startProducing(RecordingConsumer()), FileNotFoundError)


class EndpointTests(SynchronousTestCase):
    """
    L{RspamdEndpoints} connects to an IP address without a name lookup,
    to a name through L{HostnameEndpoint}, and quietly.
    """

    def endpoint(self, url: bytes):
        """
        The endpoint the filter's HTTP client would use for C{url}.
        """
        return RspamdEndpoints(MemoryReactor()).endpointForURI(URI.fromBytes(url))

    def test_addresses(self) -> None:
        """
        IPv4 and IPv6 addresses get plain TCP endpoints, names a
        L{HostnameEndpoint}.
        """
        self.assertIsInstance(self.endpoint(b"http://127.0.0.1:11333/checkv2").endpoint,
                              TCP4ClientEndpoint)
        self.assertIsInstance(self.endpoint(b"http://[::1]:11333/checkv2").endpoint,
                              TCP6ClientEndpoint)
        self.assertIsInstance(self.endpoint(b"http://rspamd.test:11333/checkv2").endpoint,
                              HostnameEndpoint)

    def test_quiet(self) -> None:
        """
        The factory of each connection is made quiet: no "Starting
        factory" log line per message checked (rspamd closes each
        connection).
        """
        reactor = MemoryReactor()
        endpoint = RspamdEndpoints(reactor).endpointForURI(
            URI.fromBytes(b"http://127.0.0.1:11333/checkv2")
        )
        factory = Factory.forProtocol(Protocol)
        endpoint.connect(factory)
        self.assertFalse(factory.noisy)
        self.assertEqual(reactor.tcpClients[0][:2], ("127.0.0.1", 11333))


class CountingRunner:
    """
    A C{runBlocking} that counts its thread hops.
    """

    def __init__(self) -> None:
        """
        No call yet.
        """
        self.calls = 0

    def __call__(self, f, *args, **kwargs) -> Deferred:
        """
        Count the call, then run it in the reactor's thread pool.
        """
        self.calls += 1
        return deferToThread(f, *args, **kwargs)


class FactoryTests(SynchronousTestCase):
    """
    L{RspamdFilterFactory} is the C{rspamd[:URL]} plugin.
    """

    def test_interfaces(self) -> None:
        """
        The factory and its filters provide the plugin interfaces.
        """
        factory = RspamdFilterFactory(MemoryReactor())
        verifyObject(IMessageFilterFactory, factory)
        self.assertEqual(factory.name, "rspamd")
        verifyObject(IMessageFilter, factory.makeFilter(None))

    def test_url(self) -> None:
        """
        Without an argument the filter asks the default server; an
        argument names another; a bad one stops start-up.
        """
        factory = RspamdFilterFactory(MemoryReactor())
        self.assertEqual(factory.makeFilter(None).url, b"http://127.0.0.1:11333/checkv2")
        self.assertEqual(factory.makeFilter("http://10.0.0.2:11333").url,
                         b"http://10.0.0.2:11333/checkv2")
        self.assertRaises(ValueError, factory.makeFilter, "10.0.0.2")

    def test_reactorFromContext(self) -> None:
        """
        The server's factory has no reactor: a filter connects with the
        C{reactor} of the context it is asked with, making its connection
        pool on first use, once (injected, never looked up globally).
        Cancelled while still connecting, a check fails with
        L{CancelledError}, which the chain's timeout recognises.
        """
        from smtpmx.testing import validationContext

        memory = MemoryReactorClock()
        f = RspamdFilterFactory().makeFilter("http://127.0.0.1:11333")
        self.assertIsNone(f.pool)
        context = validationContext(config=Config(hostname="mx.example.com"),
                                    reactor=memory)
        message = FileMessage(HAM)
        self.addCleanup(message.remove)
        checks = [f.filterMessage(context, message) for _ in range(2)]
        memory.advance(1)
        self.assertEqual([(host, port) for host, port, *_ in memory.tcpClients],
                         [("127.0.0.1", 11333), ("127.0.0.1", 11333)])
        for d in checks:
            d.cancel()
            self.failureResultOf(d, CancelledError)

    def test_noReactor(self) -> None:
        """
        A context without a reactor (and a filter given none) fails the
        check with L{RspamdError}, which the chain treats as a failed
        filter; closing a filter never used does nothing.
        """
        from smtpmx.testing import validationContext

        f = RspamdFilterFactory().makeFilter(None)
        message = FileMessage(HAM)
        self.addCleanup(message.remove)
        self.failureResultOf(f.filterMessage(validationContext(), message), RspamdError)
        self.successResultOf(f.close())


class FilterTestCase(TestCase):
    """
    Helpers for tests that run the filter over real sockets.
    """

    def makeFilter(self, url: str, chunkSize: int = 64 * 1024) -> RspamdFilter:
        """
        A filter for C{url} whose connections are closed after the test.
        """
        f = RspamdFilter(url, reactor, chunkSize=chunkSize)
        self.addCleanup(f.close)
        return f

    def message(self, data: bytes, envelope: Optional[Envelope] = None) -> FileMessage:
        """
        A spooled message removed after the test.
        """
        m = FileMessage(data, envelope)
        self.addCleanup(m.remove)
        return m


class RealRspamdTests(FilterTestCase):
    """
    The filter against a REAL private rspamd (L{tests.rspamd}).
    """

    rspamd: Optional[harness.RunningRspamd] = None

    @classmethod
    def setUpClass(cls) -> None:
        """
        Start one private rspamd for the class, unless rspamd is missing.
        """
        if harness.available() is None:
            cls.directory = tempfile.mkdtemp(prefix="rspamd")
            cls.rspamd = harness.RunningRspamd(cls.directory).start()

    @classmethod
    def tearDownClass(cls) -> None:
        """
        Stop it by its PID and remove its directory.
        """
        if cls.rspamd is not None:
            cls.rspamd.stop()
            shutil.rmtree(cls.directory, ignore_errors=True)

    def setUp(self) -> None:
        """
        Skip, visibly, where rspamd is not installed.
        """
        reason = harness.available()
        if reason:
            raise self.skipTest(reason)

    async def check(self, data: bytes, envelope: Optional[Envelope] = None):
        """
        rspamd's verdict on C{data}.
        """
        f = self.makeFilter(self.rspamd.url)
        return await f.filterMessage(threadContext(), self.message(data, envelope))

    def test_gtube(self) -> Deferred:
        """
        GTUBE is refused for good: C{550 5.7.1} with rspamd's text.
        """
        async def run() -> None:
            """
            The test's steps, run on the reactor.
            """
            verdict = await self.check(spam(harness.GTUBE))
            self.assertIsInstance(verdict, Reject)
            self.assertEqual((verdict.code, verdict.enhanced, verdict.text),
                             (550, "5.7.1", "Gtube pattern"))
        return Deferred.fromCoroutine(run())

    def test_addHeader(self) -> Deferred:
        """
        A message rspamd marks C{add header} is junk, with C{X-Spam: Yes}
        and rspamd's action and score.
        """
        async def run() -> None:
            """
            The test's steps, run on the reactor.
            """
            verdict = await self.check(spam(harness.GTUBE_ADD_HEADER))
            self.assertIsInstance(verdict, Junk)
            self.assertEqual(list(verdict.headers), [
                ("X-Spam", "Yes"), ("X-Spam-Action", "add header"), ("X-Spam-Score", "6.00"),
            ])
        return Deferred.fromCoroutine(run())

    def test_rewriteSubject(self) -> Deferred:
        """
        A message rspamd marks C{rewrite subject} is junk too.
        """
        async def run() -> None:
            """
            The test's steps, run on the reactor.
            """
            verdict = await self.check(spam(harness.GTUBE_REWRITE_SUBJECT))
            self.assertIsInstance(verdict, Junk)
            self.assertIn(("X-Spam-Action", "rewrite subject"), verdict.headers)
        return Deferred.fromCoroutine(run())

    def test_ham(self) -> Deferred:
        """
        Ham is delivered with C{X-Spam-Action: no action} and its score;
        rspamd logged the envelope we sent (queue ID, client, sender,
        recipients).
        """
        async def run() -> None:
            """
            The test's steps, run on the reactor.
            """
            verdict = await self.check(HAM)
            self.assertIsInstance(verdict, Accept)
            self.assertEqual(list(verdict.headers),
                             [("X-Spam-Action", "no action"), ("X-Spam-Score", "0.00")])
            log = self.rspamd.log()
            self.assertRegex(log, r"qid: <4XyZ12AbQ>, ip: 192\.0\.2\.7, from: <alice@example\.org>")
            self.assertIn("rcpts: <bob@example.com,carol@example.com>", log)
        return Deferred.fromCoroutine(run())

    def test_largeMessage(self) -> Deferred:
        """
        A 5 MB message is streamed from its spool in small chunks and
        reaches rspamd whole (rspamd logs its size).
        """
        async def run() -> None:
            """
            The test's steps, run on the reactor.
            """
            line = b"Lorem ipsum dolor sit amet, consectetur adipiscing elit.\n"
            data = HAM + line * (5_000_000 // len(line))
            envelope = makeEnvelope()
            envelope.queueId = "4XyZbig"
            f = self.makeFilter(self.rspamd.url, chunkSize=16 * 1024)
            verdict = await f.filterMessage(threadContext(), self.message(data, envelope))
            self.assertIsInstance(verdict, Accept)
            self.assertIn(f"queue-id: <4XyZbig>; size: {len(data)};", self.rspamd.log())
        return Deferred.fromCoroutine(run())

    def test_manyChecks(self) -> Deferred:
        """
        One filter runs many checks, in sequence and at once, through its
        connection pool; rspamd 3.4 answers C{Connection: close}, so each
        check has a connection of its own there and the pool must cope.
        """
        async def run() -> None:
            """
            The test's steps, run on the reactor.
            """
            f = self.makeFilter(self.rspamd.url)
            mark = self.rspamd.mark()
            for _ in range(5):
                verdict = await f.filterMessage(threadContext(), self.message(HAM))
                self.assertIsInstance(verdict, Accept)
            verdicts = await gatherResults([
                f.filterMessage(threadContext(), self.message(spam(harness.GTUBE)))
                for _ in range(10)
            ])
            self.assertEqual([v.code for v in verdicts], [550] * 10)
            ports = self.rspamd.clientPorts(mark)
            self.assertEqual(len(ports), 15)
        return Deferred.fromCoroutine(run())

    def test_down(self) -> Deferred:
        """
        rspamd down: the check fails (the chain applies
        C{--filter-failure}).
        """
        async def run() -> None:
            """
            The test's steps, run on the reactor.
            """
            f = self.makeFilter(f"http://127.0.0.1:{freePort()}")
            with self.assertRaises(ConnectionRefusedError):
                await f.filterMessage(threadContext(), self.message(HAM))
        return Deferred.fromCoroutine(run())


class CountingFactory(Factory):
    """
    Wraps a server factory and counts the connections it accepts, and the
    ones it has lost.
    """

    def __init__(self, wrapped: Factory) -> None:
        """
        @param wrapped: the real server factory.
        """
        self.wrapped = wrapped
        self.accepted = 0
        self.protocols: list = []

    def buildProtocol(self, addr):
        """
        Count, then build the real server's protocol.
        """
        self.accepted += 1
        p = self.wrapped.buildProtocol(addr)
        self.protocols.append(p)
        return p


class FakeCheck(Resource):
    """
    A keep-alive HTTP server's C{/checkv2} answering a fixed reply.
    """

    isLeaf = True

    def __init__(self, status: int, body: bytes) -> None:
        """
        @param status: the HTTP status answered.
        @param body: the reply body.
        """
        super().__init__()
        self.status = status
        self.body = body
        self.received: list[bytes] = []

    def render_POST(self, request) -> bytes:
        """
        Keep the request body; answer the fixed reply.
        """
        self.received.append(request.content.read())
        request.setResponseCode(self.status)
        request.setHeader(b"content-type", b"application/json")
        return self.body


class Silent(Protocol):
    """
    A server that takes the connection and never answers.
    """

    lost = False

    def connectionLost(self, reason) -> None:
        """
        Note that the client hung up.
        """
        self.lost = True


class FakeServerTests(FilterTestCase):
    """
    The filter against fake servers on loopback: connection reuse, HTTP
    errors and a server that never answers.
    """

    def listen(self, factory: Factory) -> str:
        """
        Serve C{factory} on a loopback port until the test ends.

        @return: its URL.
        """
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return f"http://127.0.0.1:{port.getHost().port}"

    def fake(self, status: int, body: bytes) -> tuple[FakeCheck, CountingFactory, str]:
        """
        A fake rspamd answering C{status} and C{body}.
        """
        resource = FakeCheck(status, body)
        factory = CountingFactory(Site(resource))
        return resource, factory, self.listen(factory)

    def test_connectionReuse(self) -> Deferred:
        """
        A server that keeps connections open gets all of one filter's
        checks in sequence over one TCP connection, each with the whole
        message.
        """
        async def run() -> None:
            """
            The test's steps, run on the reactor.
            """
            resource, counting, url = self.fake(
                200, b'{"action": "no action", "score": 1.5, "is_skipped": false}'
            )
            f = self.makeFilter(url)
            for _ in range(6):
                verdict = await f.filterMessage(threadContext(), self.message(HAM))
                self.assertEqual(verdict.headers[1], ("X-Spam-Score", "1.50"))
            self.assertEqual(counting.accepted, 1)
            self.assertEqual(resource.received, [HAM] * 6)
        return Deferred.fromCoroutine(run())

    def test_smallMessageOneRead(self) -> Deferred:
        """
        A message no bigger than a chunk is read in one thread hop (open,
        read and close together); a bigger one is streamed in chunks.
        Both arrive whole, and no per-connection log line is written.
        """
        async def run() -> None:
            """
            The test's steps, run on the reactor.
            """
            resource, _, url = self.fake(200, b'{"action": "no action", "score": 0}')
            events: list = []
            globalLogPublisher.addObserver(events.append)
            self.addCleanup(globalLogPublisher.removeObserver, events.append)
            counting = CountingRunner()
            context = validationContext(
                config=Config(hostname="mx.example.com"), runBlocking=counting, reactor=reactor
            )
            small = self.makeFilter(url, chunkSize=len(HAM))
            await small.filterMessage(context, self.message(HAM))
            self.assertEqual(counting.calls, 1)
            big = self.makeFilter(url, chunkSize=len(HAM) // 3)
            await big.filterMessage(context, self.message(HAM))
            self.assertGreater(counting.calls, 4)
            self.assertEqual(resource.received, [HAM, HAM])
            self.assertEqual(
                [e for e in events if "factory" in str(e.get("log_format", ""))], []
            )
        return Deferred.fromCoroutine(run())

    def test_httpError(self) -> Deferred:
        """
        An HTTP status other than 200 fails the check.
        """
        async def run() -> None:
            """
            The test's steps, run on the reactor.
            """
            _, _, url = self.fake(500, b'{"error": "invalid command"}')
            with self.assertRaises(RspamdError) as caught:
                await self.makeFilter(url).filterMessage(threadContext(), self.message(HAM))
            self.assertIn("HTTP 500", str(caught.exception))
        return Deferred.fromCoroutine(run())

    def test_badJSON(self) -> Deferred:
        """
        A reply that is not JSON fails the check.
        """
        async def run() -> None:
            """
            The test's steps, run on the reactor.
            """
            _, _, url = self.fake(200, b"<html>proxy error</html>")
            with self.assertRaises(RspamdError):
                await self.makeFilter(url).filterMessage(threadContext(), self.message(HAM))
        return Deferred.fromCoroutine(run())

    def test_silentServerCancelled(self) -> Deferred:
        """
        A server that accepts the connection and never answers leaves the
        check pending until the chain's timeout cancels it; then the check
        fails with L{CancelledError}, the connection is closed and the
        spool file too.
        """
        async def run() -> None:
            """
            The test's steps, run on the reactor.
            """
            counting = CountingFactory(Factory.forProtocol(Silent))
            url = self.listen(counting)
            message = self.message(HAM)
            d = self.makeFilter(url).filterMessage(threadContext(), message)
            await deferLater(reactor, 0.3, lambda: None)
            self.assertNoResult(d)
            started = time.monotonic()
            d.cancel()
            with self.assertRaises(CancelledError):
                await d
            self.assertLess(time.monotonic() - started, 1.0)
            for _ in range(50):
                if counting.protocols[0].lost and message.opened[0].closed:
                    break
                await deferLater(reactor, 0.02, lambda: None)
            self.assertTrue(counting.protocols[0].lost)
            self.assertTrue(message.opened[0].closed)
        return Deferred.fromCoroutine(run())
