"""
Fault injection in the relay: the real relay service
(L{smtpmx.relay.service.RelayService}) with the real SMTP client
(L{smtpmx.relay.transaction.deliver}) and a real queue on disk, against a
next hop (the sink of L{tests.sink}, on loopback) that accepts and never
answers, that never answers the end of the data, or that drops the
connection in the middle of the data, and against DNS that times out.

Each time the attempt is a temporary failure recorded on disk (the
recipient pending, its attempt counted, its next attempt scheduled, the
reason kept); the message survives a restart of the service; and once the
fault is gone, the next attempt delivers it, exactly once -- or, when the
next hop took the whole message but its reply to the final dot was lost,
once more: the at-least-once case of RFC 1047 that C{docs/relay.rst}
documents, never a third time.

The schedule runs on a L{Clock}; connections and their timeouts on the
real reactor, shortened to half a second.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable

from twisted.internet import reactor
from twisted.internet.defer import maybeDeferred
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import Clock, deferLater
from twisted.names import authority, dns, server
from twisted.trial.unittest import TestCase

from smtpmx.relay import transaction
from smtpmx.relay.nexthop import makeResolver
from smtpmx.relay.queue import Queue
from smtpmx.relay.queueformat import PENDING, QueuedMessage, QueuedRecipient
from smtpmx.relay.service import POLL_INTERVAL, RelayService
from tests.dnszone import zoneSource
from tests.helpers import makeDirectory, unique
from tests.sink import Sink
from tests.serverhelpers import directoryConfig

# Every relay timeout, in seconds, while the fault lasts: it shows within
# a second.  Once the fault is gone, a slow machine gets longer ones.
SHORT = {"connect": 2, "greeting": 0.5, "command": 0.5, "tlsHandshake": 1, "dataBlock": 0.5, "finalDot": 0.5, "quit": 0.5}
HEALED = {name: 10.0 for name in SHORT}
RETRY = 60
# A message big enough to be cut off while the client still sends it.
BIG = 1024 * 1024
WAIT = 10.0


class RelayFaultTests(TestCase):
    """
    A queued message meets a faulty next hop or DNS, is retried, and is
    delivered, never lost.
    """

    def setUp(self) -> None:
        """
        A sink on 127.0.0.1, a queue in a fresh directory, and a schedule
        clock.
        """
        self.directory = makeDirectory(self)
        self.sink = Sink(reactor)
        self.port = self.sink.listen()
        self.addCleanup(self.sink.stop)
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.config = directoryConfig(
            self.directory,
            routes=(("remote.example", "127.0.0.1", self.port),),
            relayPort=self.port,
            retrySchedule=(RETRY,),
        )
        self.queue = Queue(self.config.queueDir)
        self.ids = (f"B{n:04d}" for n in range(1000))
        self.timeouts = SHORT

    def startService(self, resolver=None) -> RelayService:
        """
        Start a relay service on the queue (recovering it, as at start-up),
        its connections timing out after C{self.timeouts}.
        """

        def deliver(request, **kwargs):
            """
            The real client, with the test's timeouts.
            """
            return transaction.deliver(dataclasses.replace(request, timeouts=self.timeouts), **kwargs)

        service = RelayService(
            self.config, self.queue, lambda f, *a, **kw: maybeDeferred(f, *a, **kw), self.clock,
            resolver, deliver, lambda: next(self.ids), reactor=reactor,
        )
        service.startService()
        self.addCleanup(lambda: service.running and service.stopService())
        return service

    async def until(self, predicate: Callable[[], object], what: str) -> None:
        """
        Spin the reactor until C{predicate} is true, for at most L{WAIT}
        seconds.
        """
        deadline = reactor.seconds() + WAIT
        while not predicate():
            if reactor.seconds() > deadline:
                self.fail(f"timed out waiting for {what}")
            await deferLater(reactor, 0.02, lambda: None)

    async def enqueue(self, service: RelayService, recipient: str, size: int = 0) -> tuple[QueuedMessage, str]:
        """
        Queue a message as the server does, tell the service, and wait for
        its first attempt to end.

        @return: the message and its Message-ID.
        """
        messageId = unique() + "@client.example"
        body = b"Received: from x\nSubject: fault\nMessage-ID: <" + messageId.encode() + b">\n\n"
        body += (b"x" * 76 + b"\n") * (size // 77)
        message = QueuedMessage(
            id=unique("M").upper(), created=self.clock.seconds(), sender="someone@client.example",
            size=len(body), clientHost="127.0.0.1", heloName="client.example",
            recipients=[QueuedRecipient(recipient, nextAttempt=self.clock.seconds())],
        )
        self.queue.add(message, body)
        service.queued(message)
        await self.until(lambda: not service.inFlight, "the first attempt")
        return message, messageId

    def assertDeferred(self, message: QueuedMessage, reply: str) -> None:
        """
        The message is still queued, on disk, its recipient pending after
        one attempt, due again after the retry delay, the reason kept.
        """
        [recipient] = self.queue.load(message.id).recipients
        self.assertEqual(recipient.state, PENDING)
        self.assertEqual(recipient.attempts, 1)
        self.assertGreater(recipient.nextAttempt, self.clock.seconds())
        self.assertLessEqual(recipient.nextAttempt, self.clock.seconds() + 2 * RETRY)
        self.assertTrue(recipient.lastReply.startswith(reply), recipient.lastReply)

    async def restartAndRetry(self, service: RelayService, resolver=None) -> RelayService:
        """
        Restart the service on the same queue, let the retry delay pass,
        and wait until the queue is empty.
        """
        await service.stopService()
        self.timeouts = HEALED
        service = self.startService(resolver)
        self.clock.advance(2 * RETRY)
        self.clock.advance(POLL_INTERVAL)
        await self.until(lambda: not self.queue.list() and not service.inFlight, "the queue to empty")
        return service

    def carrying(self, messageId: str) -> list:
        """
        The sink's transactions whose data ended and carried C{messageId}.
        """
        return [t for t in self.sink.transactions if b"<" + messageId.encode() + b">" in (t.data or b"")]

    async def test_acceptsAndNeverAnswers(self) -> None:
        """
        A next hop that accepts the connection and never says a word: the
        attempt gives up within the greeting timeout, a temporary failure
        kept on disk; after a restart, with the next hop well again, the
        message is delivered once and leaves the queue.
        """
        self.sink.hang = {"GREETING"}
        service = self.startService()
        message, messageId = await self.enqueue(service, "dave@remote.example")
        self.assertDeferred(message, "451 4.4.1")
        self.assertEqual(self.carrying(messageId), [])
        self.sink.hang = set()
        await self.restartAndRetry(service)
        self.assertEqual(len(self.carrying(messageId)), 1)

    async def test_dropsInTheMiddleOfData(self) -> None:
        """
        A next hop that drops the connection after 64 kB of a 1 MB
        message: a temporary failure, nothing delivered; the next attempt
        delivers the whole message once.
        """
        self.sink.dropInData = 64 * 1024
        service = self.startService()
        message, messageId = await self.enqueue(service, "dave@remote.example", BIG)
        self.assertDeferred(message, "451 4.4.2")
        self.assertIn("while sending message content", self.queue.load(message.id).recipients[0].lastReply)
        self.assertEqual(self.carrying(messageId), [])
        self.assertGreaterEqual(len(self.sink.sessions), 1)
        self.sink.dropInData = None
        await self.restartAndRetry(service)
        [delivered] = self.carrying(messageId)
        self.assertGreater(len(delivered.data), BIG)

    async def test_finalReplyNeverComes(self) -> None:
        """
        A next hop that takes the whole message and never answers the
        final dot: the attempt times out, a temporary failure; the message
        is sent again on the next attempt.  The next hop then has it
        twice -- the documented at-least-once case (RFC 1047) -- never
        three times, and never lost.
        """
        self.sink.hang = {"."}
        service = self.startService()
        message, messageId = await self.enqueue(service, "dave@remote.example")
        self.assertDeferred(message, "451 4.4.2")
        self.assertEqual(len(self.carrying(messageId)), 1)
        self.sink.hang = set()
        await self.restartAndRetry(service)
        self.assertEqual(len(self.carrying(messageId)), 2)

    async def test_dnsTimesOut(self) -> None:
        """
        DNS that never answers: the MX lookup times out, a temporary
        failure (C{451 4.4.3}) kept on disk, no connection made; once the
        DNS server answers on the same address, the next attempt finds the
        MX and delivers the message once.
        """
        silent = reactor.listenUDP(0, DatagramProtocol(), interface="127.0.0.1")
        dnsPort = silent.getHost().port
        resolver = makeResolver(("127.0.0.1", dnsPort), reactor, timeout=(0.3,))
        service = self.startService(resolver)
        message, messageId = await self.enqueue(service, "dave@dns.test")
        await silent.stopListening()
        self.assertDeferred(message, "451 4.4.3")
        self.assertEqual(self.sink.sessions, [])

        zone = os.path.join(self.directory, "dns.test.py")
        with open(zone, "w") as f:
            f.write(zoneSource("dns.test", [("MX", "dns.test", 10, "mx.dns.test"), ("A", "mx.dns.test", "127.0.0.1")]))
        factory = server.DNSServerFactory(authorities=[authority.PySourceAuthority(zone)])
        answering = reactor.listenUDP(dnsPort, dns.DNSDatagramProtocol(factory), interface="127.0.0.1")
        self.addCleanup(answering.stopListening)
        await self.restartAndRetry(service, resolver)
        self.assertEqual(len(self.carrying(messageId)), 1)
