"""
Tests for LMTP delivery (RFC 2033; docs/relay.rst): the relay client's LMTP
mode (L{smtpmx.relay.transaction.deliver} with C{protocol="lmtp"}) and the
relay service handing recipients queued C{via} an LMTP server to it, against
the recording sink in LMTP mode (L{tests.sink}) on a real loopback TCP
socket and a real unix socket.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from typing import Callable

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock, deferLater
from twisted.internet.threads import deferToThreadPool
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import TestCase

from smtpmx.relay.nexthop import NextHop
from smtpmx.relay.pool import SessionPool
from smtpmx.relay.queue import Queue
from smtpmx.relay.queueformat import PENDING, QueuedMessage, QueuedRecipient
from smtpmx.relay.service import RelayService
from smtpmx.relay.request import DeliveryRequest, DeliveryResult, Disposition
from smtpmx.relay.transaction import deliver
from tests.sink import Sink
from tests.serverhelpers import directoryConfig

MESSAGE = b"Received: from client.example\nSubject: test\n\nHello.\n.leading dot\nend\n"
SHORT = {"connect": 2, "greeting": 2, "command": 2, "tlsHandshake": 2, "dataBlock": 2, "finalDot": 2, "quit": 2}


def runBlocking(f, *args, **kwargs) -> Deferred:
    """
    Run C{f} in the reactor's thread pool, as the service does.
    """
    return deferToThreadPool(reactor, reactor.getThreadPool(), f, *args, **kwargs)


async def eventually(predicate: Callable[[], object], timeout: float = 10.0) -> object:
    """
    Wait, without blocking the reactor, until C{predicate} returns
    something true or C{timeout} seconds pass.

    @return: its last result.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result or time.monotonic() >= deadline:
            return result
        await deferLater(reactor, 0.02, lambda: None)


class _LmtpMixin:
    """
    A short temporary directory (unix socket paths are short), the message
    file, and LMTP sinks stopped at the end.
    """

    def setUp(self) -> None:
        """
        Make the directory and the message.
        """
        self.directory = tempfile.mkdtemp(prefix="lmtp", dir="/tmp")
        self.addCleanup(shutil.rmtree, self.directory, True)
        self.messageFile = os.path.join(self.directory, "message")
        with open(self.messageFile, "wb") as f:
            f.write(MESSAGE)

    def startSink(self, unix: bool = False, **kwargs) -> tuple[Sink, str]:
        """
        A listening LMTP sink on a loopback TCP port or a unix socket,
        stopped at the end of the test.

        @return: the sink and its Twisted client endpoint string.
        """
        sink = Sink(reactor, lmtp=True, greeting="220 sink.test LMTP", **kwargs)
        if unix:
            path = sink.listenUNIX(os.path.join(self.directory, "lmtp"))
            endpoint = f"unix:{path}"
        else:
            endpoint = f"tcp:127.0.0.1:{sink.listen()}"
        self.addCleanup(sink.stop)
        return sink, endpoint


class LmtpClientTests(_LmtpMixin, TestCase):
    """
    L{deliver} in LMTP mode (RFC 2033 section 4).
    """

    def deliver(self, endpoint: str, recipients=("alice@example.org", "bob@example.org"), *,
                tlsMode="none", timeouts=SHORT, pool=None) -> Deferred[DeliveryResult]:
        """
        Hand the message to the LMTP server at C{endpoint}.
        """
        request = DeliveryRequest(
            NextHop.lmtp(endpoint), "mx.example.org", "sender@client.example", recipients,
            self.messageFile, os.path.getsize(self.messageFile), tlsMode, None, timeouts, protocol="lmtp",
        )
        return deliver(request, reactor=reactor, runBlocking=runBlocking, pool=pool)

    async def check_twoRecipientsOneTransaction(self, unix: bool) -> None:
        """
        Two recipients go in one transaction after LHLO (no EHLO, no
        HELO), MAIL and both RCPTs pipelined, and each gets its own reply
        after the data.
        """
        sink, endpoint = self.startSink(unix, dataReplies={
            "alice@example.org": "250 2.0.0 <alice@example.org> Saved",
            "bob@example.org": "250 2.0.0 <bob@example.org> Saved",
        })
        result = await self.deliver(endpoint)
        self.assertTrue(result.connected, result.error)
        self.assertEqual(
            {r: (rr.code, rr.text, rr.disposition) for r, rr in result.recipients.items()},
            {
                "alice@example.org": (250, "2.0.0 <alice@example.org> Saved", Disposition.DELIVERED),
                "bob@example.org": (250, "2.0.0 <bob@example.org> Saved", Disposition.DELIVERED),
            },
        )
        [transaction] = sink.transactions
        self.assertEqual(transaction.recipients, ["alice@example.org", "bob@example.org"])
        self.assertEqual(transaction.heloName, "mx.example.org")
        self.assertEqual(transaction.data, MESSAGE)
        commands = [c for c, _ in sink.sessions[0].commands]
        self.assertEqual(commands[0], "LHLO mx.example.org")
        self.assertFalse([c for c in commands if c.split(" ")[0] in ("EHLO", "HELO", "STARTTLS")])
        self.assertIn(
            ["MAIL FROM:<sender@client.example> SIZE=%d BODY=8BITMIME" % len(MESSAGE),
             "RCPT TO:<alice@example.org>", "RCPT TO:<bob@example.org>", "DATA"],
            sink.sessions[0].batches,
        )
        self.assertEqual(commands[-1], "QUIT")

    def test_twoRecipientsOneTransactionTCP(self) -> Deferred:
        """
        Over a loopback TCP endpoint (C{tcp:127.0.0.1:PORT}).
        """
        return Deferred.fromCoroutine(self.check_twoRecipientsOneTransaction(False))

    def test_twoRecipientsOneTransactionUnix(self) -> Deferred:
        """
        Over a unix socket endpoint (C{unix:PATH}), as Dovecot's
        C{/run/dovecot/lmtp}.
        """
        return Deferred.fromCoroutine(self.check_twoRecipientsOneTransaction(True))

    async def test_mixedRepliesAfterData(self) -> None:
        """
        The replies after the data are matched to the accepted recipients
        in RCPT order: 250 delivered, 452 temporary, 550 permanent; a
        recipient refused at RCPT keeps its RCPT reply and gets no reply
        after the data.
        """
        sink, endpoint = self.startSink(
            rcptReplies={"dave@example.org": "550 5.1.1 <dave@example.org> User doesn't exist"},
            dataReplies={
                "bob@example.org": "452 4.2.2 <bob@example.org> Quota exceeded",
                "carol@example.org": "550 5.2.0 <carol@example.org> Sieve said no",
            },
        )
        recipients = ["alice@example.org", "dave@example.org", "bob@example.org", "carol@example.org"]
        result = await self.deliver(endpoint, recipients)
        self.assertEqual(
            {r: (rr.code, rr.enhanced, rr.disposition) for r, rr in result.recipients.items()},
            {
                "alice@example.org": (250, "2.0.0", Disposition.DELIVERED),
                "dave@example.org": (550, "5.1.1", Disposition.PERMANENT),
                "bob@example.org": (452, "4.2.2", Disposition.TEMPORARY),
                "carol@example.org": (550, "5.2.0", Disposition.PERMANENT),
            },
        )
        [transaction] = sink.transactions
        self.assertEqual(transaction.accepted, ["alice@example.org", "bob@example.org", "carol@example.org"])
        # The session stayed in step: the three replies were all read.
        self.assertEqual(sink.sessions[0].commands[-1][0], "QUIT")

    async def test_refused(self) -> None:
        """
        Nothing listening at the endpoint: not connected, every recipient
        a temporary failure (to be retried), the endpoint in the reason.
        """
        sink, endpoint = self.startSink()
        await sink.stopListening()
        result = await self.deliver(endpoint)
        self.assertFalse(result.connected)
        self.assertIn(f"lmtp:{endpoint}", result.error)
        self.assertEqual({rr.disposition for rr in result.recipients.values()}, {Disposition.TEMPORARY})

    async def test_missingSocket(self) -> None:
        """
        A unix socket that does not exist is the same: a temporary failure.
        """
        result = await self.deliver(f"unix:{self.directory}/nothing")
        self.assertFalse(result.connected)
        self.assertEqual({rr.disposition for rr in result.recipients.values()}, {Disposition.TEMPORARY})

    async def test_lhloRefusedNoHelo(self) -> None:
        """
        A server that refuses LHLO (an SMTP server) is not greeted with
        HELO instead: the session is given up, nothing sent.
        """
        sink = Sink(reactor)
        port = sink.listen()
        self.addCleanup(sink.stop)
        result = await self.deliver(f"tcp:127.0.0.1:{port}")
        self.assertFalse(result.connected)
        self.assertIn("refused our greeting", result.error)
        self.assertEqual([c for c, _ in sink.sessions[0].commands], ["LHLO mx.example.org"])

    async def test_noStartTLS(self) -> None:
        """
        LMTP has no STARTTLS: a relay TLS policy that requires it does not
        apply to the LMTP server, which gets the message in clear.
        """
        sink, endpoint = self.startSink()
        result = await self.deliver(endpoint, tlsMode="verify")
        self.assertEqual({rr.disposition for rr in result.recipients.values()}, {Disposition.DELIVERED})
        self.assertIsNone(result.tls)

    async def test_connectionReuse(self) -> None:
        """
        With a pool, the second message goes on the first connection after
        RSET; sessions are keyed by endpoint.
        """
        sink, endpoint = self.startSink()
        other, otherEndpoint = self.startSink(unix=True)
        pool = SessionPool(reactor)
        self.addCleanup(pool.close)
        first = await self.deliver(endpoint, pool=pool)
        second = await self.deliver(endpoint, pool=pool)
        third = await self.deliver(otherEndpoint, pool=pool)
        self.assertEqual((first.connectionUse, second.connectionUse, third.connectionUse), (1, 2, 1))
        self.assertEqual((len(sink.sessions), len(sink.transactions)), (1, 2))
        self.assertIn("RSET", [c for c, _ in sink.sessions[0].commands])
        self.assertEqual((len(other.sessions), len(other.transactions)), (1, 1))
        for result in (first, second, third):
            self.assertEqual({rr.disposition for rr in result.recipients.values()}, {Disposition.DELIVERED})

    async def test_timeoutAfterData(self) -> None:
        """
        Replies after the data that never come: every accepted recipient a
        temporary failure within the final-dot timeout.
        """
        sink, endpoint = self.startSink(hang=["."])
        started = time.monotonic()
        result = await self.deliver(endpoint, timeouts={**SHORT, "finalDot": 0.5})
        self.assertLess(time.monotonic() - started, 5)
        for rr in result.recipients.values():
            self.assertIs(rr.disposition, Disposition.TEMPORARY)
            self.assertIn("end of data", rr.text)

    async def test_greetingTimeout(self) -> None:
        """
        A server that never greets: not connected, within the greeting
        timeout.
        """
        sink, endpoint = self.startSink(hang=["GREETING"])
        result = await self.deliver(endpoint, timeouts={**SHORT, "greeting": 0.5})
        self.assertFalse(result.connected)
        self.assertIn("timeout", result.error)


class LmtpServiceTests(_LmtpMixin, TestCase):
    """
    L{RelayService} with the real LMTP client: recipients queued C{via} an
    LMTP server are handed to it, recorded and retried or bounced as relay
    recipients are (docs/relay.rst).
    """

    def setUp(self) -> None:
        """
        A service on a real queue, with a Clock for its schedule and the
        real reactor for its connections; an SMTP sink as the next hop of
        the senders' domain, for bounces; and the log lines caught.
        """
        super().setUp()
        self.smtp = Sink(reactor)
        smtpPort = self.smtp.listen()
        self.addCleanup(self.smtp.stop)
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.config = directoryConfig(
            self.directory,
            routes=(("client.example", "127.0.0.1", smtpPort),),
            retrySchedule=(60, 300),
            maxQueueAge=3600,
        )
        self.queue = Queue(self.config.queueDir)
        ids = iter(f"B{n:04d}" for n in range(1000))
        self.service = RelayService(
            self.config, self.queue, runBlocking, self.clock, None, deliver, lambda: next(ids), reactor=reactor,
        )
        self.service.startService()
        self.addCleanup(self.service.stopService)
        self.lines: list[str] = []

        def observe(event) -> None:
            """
            Keep the text of every log event.
            """
            self.lines.append(formatEvent(event))

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)

    def enqueue(self, via: str, *recipients: str, sender: str = "sender@client.example",
                messageId: str = "M1") -> QueuedMessage:
        """
        Queue a message for local recipients of an LMTP domain, as intake
        does, and tell the service.
        """
        message = QueuedMessage(
            id=messageId, created=self.clock.seconds(), sender=sender, size=len(MESSAGE),
            clientHost="127.0.0.1", heloName="client.example",
            recipients=[QueuedRecipient(r, nextAttempt=self.clock.seconds(), via=f"lmtp:{via}") for r in recipients],
        )
        self.queue.add(message, MESSAGE)
        self.service.queued(message)
        return message

    async def idle(self) -> None:
        """
        Wait until no attempt is under way.
        """
        await deferLater(reactor, 0.01, lambda: None)
        self.assertTrue(await eventually(lambda: not self.service.inFlight))

    async def check_delivered(self, unix: bool) -> None:
        """
        Two recipients: one transaction with the LMTP server, no DNS (the
        service has no resolver), both delivered, the message gone from
        the queue, the log saying C{relay=lmtp:ENDPOINT}.
        """
        sink, endpoint = self.startSink(unix)
        self.enqueue(endpoint, "alice@example.org", "Bob@Example.org")
        await self.idle()
        [transaction] = sink.transactions
        self.assertEqual(transaction.recipients, ["alice@example.org", "Bob@Example.org"])
        self.assertEqual(transaction.data, MESSAGE)
        self.assertEqual(self.queue.ids(), [])
        sent = [line for line in self.lines if f"relay=lmtp:{endpoint}" in line and "status=sent" in line]
        self.assertEqual(len(sent), 2, self.lines)

    def test_deliveredTCP(self) -> Deferred:
        """
        Over a loopback TCP endpoint.
        """
        return Deferred.fromCoroutine(self.check_delivered(False))

    def test_deliveredUnix(self) -> Deferred:
        """
        Over a unix socket endpoint.
        """
        return Deferred.fromCoroutine(self.check_delivered(True))

    async def test_mixedRepliesRecorded(self) -> None:
        """
        After the data, 250 delivers, 452 defers on the retry schedule and
        550 bounces (an RFC 3464 report to the sender naming only that
        recipient and quoting the server's reply).
        """
        sink, endpoint = self.startSink(dataReplies={
            "bob@example.org": "452 4.2.2 <bob@example.org> Quota exceeded",
            "carol@example.org": "550 5.1.1 <carol@example.org> User doesn't exist",
        })
        self.enqueue(endpoint, "alice@example.org", "bob@example.org", "carol@example.org")
        await self.idle()
        [message] = self.queue.list()
        states = {r.address: (r.state, r.lastReply) for r in message.recipients}
        self.assertEqual(states["bob@example.org"],
                         (PENDING, "452 4.2.2 <bob@example.org> Quota exceeded"))
        [bob] = [r for r in message.recipients if r.address == "bob@example.org"]
        self.assertEqual(bob.nextAttempt, self.clock.seconds() + 60)
        self.assertEqual(bob.via, f"lmtp:{endpoint}")
        self.assertNotEqual(states["alice@example.org"][0], PENDING)
        self.assertNotEqual(states["carol@example.org"][0], PENDING)
        self.assertTrue(await eventually(lambda: self.smtp.transactions))
        [bounce] = self.smtp.transactions
        self.assertEqual((bounce.mailFrom, bounce.recipients), ("", ["sender@client.example"]))
        text = bounce.data.decode()
        self.assertIn("Final-Recipient: rfc822; carol@example.org", text)
        self.assertNotIn("Final-Recipient: rfc822; bob@example.org", text)
        self.assertIn("User doesn't exist", text)

        # Bob's mailbox has room again: the retry delivers him alone.
        sink.dataReplies.clear()
        self.clock.advance(61)
        await self.idle()
        self.assertEqual(sink.transactions[-1].recipients, ["bob@example.org"])
        self.assertEqual(self.queue.ids(), [])

    async def test_unreachableRetried(self) -> None:
        """
        An LMTP server that is down: the recipients stay queued with the
        reason and are delivered by the retry once it is back.
        """
        sink, endpoint = self.startSink(unix=True)
        await sink.stopListening()
        self.enqueue(endpoint, "alice@example.org")
        await self.idle()
        [message] = self.queue.list()
        [r] = message.recipients
        self.assertEqual((r.state, r.attempts), (PENDING, 1))
        self.assertIn(f"lmtp:{endpoint}", r.lastReply)
        self.assertTrue([line for line in self.lines if f"relay=lmtp:{endpoint} unreachable" in line])
        sink.listenUNIX(endpoint[len("unix:"):])
        self.clock.advance(61)
        await self.idle()
        self.assertEqual([t.recipients for t in sink.transactions], [["alice@example.org"]])
        self.assertEqual(self.queue.ids(), [])

    async def test_temporaryAtRcptRetried(self) -> None:
        """
        A 4xx at RCPT (the server's user lookup failing) defers like one
        after the data.
        """
        sink, endpoint = self.startSink(failFirst=1)
        self.enqueue(endpoint, "alice@example.org")
        await self.idle()
        [message] = self.queue.list()
        self.assertEqual(message.recipients[0].lastReply, "451 4.3.0 try later")
        self.clock.advance(61)
        await self.idle()
        self.assertEqual(len(sink.transactions), 1)
        self.assertEqual(self.queue.ids(), [])
