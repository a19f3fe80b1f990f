"""
Tests for the relay service: grouping by next hop, retries, bounces and
removal from the queue, with a real queue on disk, a Clock and a fake
SMTP transaction.
"""

from __future__ import annotations

import dataclasses
import email
import email.policy
import os
import shutil
import tempfile

import pytest
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from smtpmx.access import Access
from smtpmx.delivery.maildir import deliverBytes
from smtpmx.relay.tlspolicy import TLSPolicy
from smtpmx.relay.request import DeliveryRequest, DeliveryResult, Disposition, RecipientResult
from smtpmx.relay.queue import Queue
from smtpmx.relay.queueformat import PENDING, QueuedMessage, QueuedRecipient
from smtpmx.relay.service import RelayService
from tests.serverhelpers import directoryConfig


class FakeDeliver:
    """
    Records each transaction; answers with the reply given per recipient
    (default 250), or as unreachable for hosts in C{down}.
    """

    def __init__(self) -> None:
        """
        No calls yet; everything delivered and nothing held by default.
        """
        self.calls: list[dict] = []
        self.replies: dict[str, tuple[int, str]] = {}
        self.down: set[str] = set()
        self.hold = False
        self.held: list[Deferred] = []

    def __call__(self, request: DeliveryRequest, *, reactor, runBlocking, pool=None):
        """
        Record one call of L{smtpmx.relay.transaction.deliver}: its
        request, the message as read from its file, and the pool given.
        """
        hop = request.hop
        with open(request.messageFile, "rb") as f:
            data = f.read()
        self.calls.append(dict(hop=(hop.host, hop.port), sender=request.sender, recipients=list(request.recipients),
                               data=data, pool=pool, request=request))
        if hop.host in self.down:
            return succeed(DeliveryResult(connected=False, error="connection refused", remoteMta=hop.name))
        result = DeliveryResult(remoteMta=hop.name)
        for r in request.recipients:
            code, text = self.replies.get(r.lower(), (250, "2.0.0 Ok"))
            enhanced = text.split(" ")[0] if "." in text.split(" ")[0] else None
            result.recipients[r] = RecipientResult(code, enhanced, text, Disposition.ofCode(code))
        if self.hold:
            d = Deferred()
            self.held.append((d, result))
            return d
        return succeed(result)


class RelayServiceTests(SynchronousTestCase):
    """
    L{RelayService} drives the queue.
    """

    def setUp(self) -> None:
        """
        A started service on a real queue in a temporary directory, a
        Clock, and the fake transaction.
        """
        self.dir = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.dir)
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.config = directoryConfig(
            self.dir,
            routes=(("remote.example", "127.0.0.3", 2525), ("other.example", "127.0.0.4", 2525), ("*", "127.0.0.9", 25)),
            retrySchedule=(60, 300),
            maxQueueAge=3600,
        )
        self.queue = Queue(self.config.queueDir)
        self.deliver = FakeDeliver()
        ids = iter(f"B{n:04d}" for n in range(1000))
        self.service = RelayService(
            self.config,
            self.queue,
            lambda f, *a, **kw: maybeDeferred(f, *a, **kw),
            self.clock,
            None,
            self.deliver,
            lambda: next(ids),
        )
        self.service.startService()
        self.addCleanup(self.service.stopService)

    def enqueue(self, sender: str, *recipients: str, messageId: str = "M1") -> QueuedMessage:
        """
        Put a message in the queue as the server would, and tell the
        service.
        """
        message = QueuedMessage(
            id=messageId,
            created=self.clock.seconds(),
            sender=sender,
            size=0,
            clientHost="127.0.0.1",
            heloName="client.example",
            recipients=[QueuedRecipient(r, nextAttempt=self.clock.seconds()) for r in recipients],
        )
        self.queue.add(message, b"Received: from x\nSubject: hello\nMessage-ID: <m1@client.example>\n\nbody\n")
        self.service.queued(message)
        return message

    def test_oneTransactionPerNextHop(self):
        """
        Recipients sharing a next hop go in one transaction, as given;
        another domain gets its own; delivered messages leave the queue.
        """
        self.enqueue("a@client.example", "Alice@Remote.Example", "bob@remote.example", "carol@other.example")
        hops = sorted((c["hop"], c["recipients"]) for c in self.deliver.calls)
        self.assertEqual(
            hops,
            [(("127.0.0.3", 2525), ["Alice@Remote.Example", "bob@remote.example"]), (("127.0.0.4", 2525), ["carol@other.example"])],
        )
        self.assertEqual(self.queue.ids(), [])

    @pytest.mark.rfc("5321", "4.5.4.1", "5321-4.5.4.1-1", "5321-4.5.4.1-2")
    @pytest.mark.rfc("5321", "4.2.1", "5321-4.2.1-1")
    def test_retryOnTemporaryFailure(self):
        """
        A 4xx is retried on the schedule, then delivered.
        """
        self.deliver.replies["bob@remote.example"] = (451, "4.3.0 busy")
        self.enqueue("a@client.example", "bob@remote.example")
        [message] = self.queue.list()
        [r] = message.recipients
        self.assertEqual((r.state, r.attempts, r.lastReply), (PENDING, 1, "451 4.3.0 busy"))
        self.assertEqual(r.nextAttempt, self.clock.seconds() + 60)
        del self.deliver.replies["bob@remote.example"]
        self.clock.advance(30)
        self.assertEqual(len(self.deliver.calls), 1)
        self.clock.advance(31)
        self.assertEqual(len(self.deliver.calls), 2)
        self.assertEqual(self.queue.ids(), [])

    @pytest.mark.rfc("5321", "4.5.4.1", "5321-4.5.4.1-1")
    def test_unreachable(self):
        """
        When no next hop can be reached, the recipients stay pending with
        the reason and are retried later.
        """
        self.deliver.down.add("127.0.0.3")
        self.enqueue("a@client.example", "bob@remote.example")
        [message] = self.queue.list()
        self.assertEqual(message.recipients[0].state, PENDING)
        self.assertIn("connection refused", message.recipients[0].lastReply)

    @pytest.mark.rfc("5321", "4.5.5", "5321-4.5.5-1")
    @pytest.mark.rfc("3464", "2", "3464-2-1", "3464-2-2", "3464-2-4")
    @pytest.mark.rfc("5321", "4.2.1", "5321-4.2.1-2")
    def test_bounceToRemoteSender(self):
        """
        A 5xx bounces only the failed recipient; the bounce is queued to
        the sender from <>, a multipart/report naming that recipient.
        """
        self.deliver.replies["bad@remote.example"] = (550, "5.1.1 no such user")
        self.enqueue("sender@client.example", "good@remote.example", "bad@remote.example")
        bounceCall = self.deliver.calls[-1]
        self.assertEqual((bounceCall["sender"], bounceCall["recipients"]), ("", ["sender@client.example"]))
        report = email.message_from_bytes(bounceCall["data"].replace(b"\n", b"\r\n"), policy=email.policy.default)
        self.assertEqual(report.get_content_type(), "multipart/report")
        text = bounceCall["data"].decode()
        self.assertIn("Final-Recipient: rfc822; bad@remote.example", text)
        self.assertNotIn("Final-Recipient: rfc822; good@remote.example", text)
        self.assertIn("550 5.1.1 no such user", text)
        self.assertEqual(self.queue.ids(), [])

    def test_bounceToLocalSender(self):
        """
        A bounce for a local sender is filed into its Maildir.
        """
        self.deliver.replies["bad@remote.example"] = (550, "5.1.1 no such user")
        self.enqueue("Someone@example.org", "bad@remote.example")
        new = os.path.join(self.config.maildirRoot, "example.org", "someone", "new")
        [name] = os.listdir(new)
        with open(os.path.join(new, name), "rb") as f:
            data = f.read()
        self.assertTrue(data.startswith(b"Return-Path: <>\nDelivered-To: Someone@example.org\n"))
        self.assertIn(b"report-type=delivery-status", data)

    @pytest.mark.rfc("5321", "4.5.5", "5321-4.5.5-2")
    def test_noBounceForNullSender(self):
        """
        A message from <> that fails is dropped, never bounced.
        """
        self.deliver.replies["bad@remote.example"] = (550, "5.1.1 no such user")
        self.enqueue("", "bad@remote.example")
        self.assertEqual(len(self.deliver.calls), 1)
        self.assertEqual(self.queue.ids(), [])

    @pytest.mark.rfc("5321", "4.5.4.1", "5321-4.5.4.1-4")
    @pytest.mark.rfc("5321", "4.5.5", "5321-4.5.5-1")
    @pytest.mark.rfc("5321", "6.1", "5321-6.1-2")
    def test_expiry(self):
        """
        Past the maximum queue age the remaining recipients bounce.
        """
        self.deliver.down.add("127.0.0.3")
        self.enqueue("sender@client.example", "bob@remote.example")
        self.deliver.down.clear()
        self.deliver.replies["bob@remote.example"] = (451, "4.3.0 busy")
        self.clock.advance(3601)
        self.clock.advance(1)
        bounces = [c for c in self.deliver.calls if c["sender"] == ""]
        self.assertEqual(len(bounces), 1)
        self.assertIn(b"Action: failed", bounces[0]["data"])
        self.assertEqual(self.queue.ids(), [])

    def test_restartKeepsSchedule(self):
        """
        A new service on the same queue keeps each recipient's schedule.
        """
        self.deliver.replies["bob@remote.example"] = (451, "4.3.0 busy")
        self.enqueue("a@client.example", "bob@remote.example")
        self.service.stopService()
        calls = len(self.deliver.calls)
        service = RelayService(self.config, Queue(self.config.queueDir), lambda f, *a: maybeDeferred(f, *a), self.clock, None, self.deliver, lambda: "X")
        service.startService()
        self.addCleanup(service.stopService)
        self.clock.advance(1)
        self.assertEqual(len(self.deliver.calls), calls)
        self.clock.advance(60)
        self.assertEqual(len(self.deliver.calls), calls + 1)

    def test_flush(self):
        """
        A flush request makes every deferred message due at once.
        """
        self.deliver.replies["bob@remote.example"] = (451, "4.3.0 busy")
        self.enqueue("a@client.example", "bob@remote.example")
        del self.deliver.replies["bob@remote.example"]

        def flushNow(message):
            """
            What C{smtpmx-queue flush} does: every pending recipient due.
            """
            for r in message.pending():
                r.nextAttempt = 0

        self.queue.update("M1", flushNow)
        self.queue.requestFlush()
        self.clock.advance(1)
        self.assertEqual(len(self.deliver.calls), 2)
        self.assertEqual(self.queue.ids(), [])

    def test_deletedWhileDeferred(self):
        """
        A message deleted by the operator is not brought back.
        """
        self.deliver.hold = True
        self.enqueue("a@client.example", "bob@remote.example")
        self.queue.remove("M1")
        d, result = self.deliver.held.pop()
        d.callback(result)
        self.assertEqual(self.queue.ids(), [])
        self.assertNotIn("M1", self.service.messages)

    def test_domainsSharingANextHop(self):
        """
        Recipients of two domains routed to the same next hop share one
        transaction: one copy of the data.
        """
        self.config = dataclasses.replace(
            self.config, routes=(("a.example", "127.0.0.3", 2525), ("b.example", "127.0.0.3", 2525))
        )
        self.service.config = self.config
        self.enqueue("s@client.example", "x@a.example", "Y@B.example")
        self.assertEqual([c["recipients"] for c in self.deliver.calls], [["x@a.example", "Y@B.example"]])

    def test_bounceFailureKeepsMessage(self):
        """
        A bounce that cannot be filed (full disk) is not lost: the
        recipient stays queued and is bounced on a later attempt.
        """
        from smtpmx.relay import bouncing as serviceModule

        def diskFull(path, data, mode=0o600):
            """
            A Maildir delivery on a full disk.
            """
            raise OSError(28, "No space left on device")

        self.patch(serviceModule, "deliverBytes", diskFull)
        self.deliver.replies["bad@remote.example"] = (550, "5.1.1 no such user")
        self.enqueue("someone@example.org", "bad@remote.example")
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
        [message] = self.queue.list()
        self.assertEqual(message.recipients[0].state, PENDING)
        self.patch(serviceModule, "deliverBytes", deliverBytes)
        self.clock.advance(61)
        self.assertEqual(self.queue.ids(), [])
        new = os.path.join(self.config.maildirRoot, "example.org", "someone", "new")
        self.assertEqual(len(os.listdir(new)), 1)

    @pytest.mark.rfc("5321", "4.1.4", "5321-4.1.4-4")
    def test_request(self):
        """
        Each transaction gets one request: our hostname for EHLO, the
        message's reverse-path, size and file, and the configured TLS
        policy and trust roots.
        """
        self.config = dataclasses.replace(self.config, relayTls="verify", caCerts="/etc/ca.pem")
        self.service.config = self.config
        message = self.enqueue("a@client.example", "x@remote.example")
        request = self.deliver.calls[0]["request"]
        self.assertIsInstance(request, DeliveryRequest)
        self.assertEqual(
            (request.hop.host, request.hop.port, request.heloName, request.sender, request.recipients),
            ("127.0.0.3", 2525, "mx.example.org", "a@client.example", ("x@remote.example",)),
        )
        self.assertEqual((request.size, request.messageFile), (message.size, self.queue.messagePath("M1")))
        self.assertEqual((TLSPolicy(request.tlsPolicy), request.trustRoot), (TLSPolicy.VERIFY, "/etc/ca.pem"))

    def test_connectionCaps(self):
        """
        At most 10 transactions run at once to one next hop; the others
        wait for one to end.
        """
        self.deliver.hold = True
        for n in range(12):
            self.enqueue("a@client.example", "x@remote.example", messageId=f"M{n}")
        self.assertEqual(len(self.deliver.calls), 10)
        d, result = self.deliver.held.pop(0)
        d.callback(result)
        self.assertEqual(len(self.deliver.calls), 11)
        self.enqueue("a@client.example", "y@other.example", messageId="O1")
        self.assertEqual(len(self.deliver.calls), 12)
        while self.deliver.held:
            d, result = self.deliver.held.pop(0)
            d.callback(result)
        self.assertEqual(len(self.deliver.calls), 13)
        self.assertEqual(self.queue.ids(), [])

    def test_connectionCacheGivenAndClosed(self):
        """
        Every transaction gets the service's connection cache; stopping
        the service closes the idle connections in it (so the process
        exits at once), and a restart gets a fresh cache.
        """
        from twisted.internet.testing import StringTransport

        from smtpmx.relay.pool import PooledSession
        from smtpmx.relay.protocol import ClientProtocol

        self.enqueue("a@client.example", "x@remote.example")
        pool = self.service.pool
        self.assertIs(self.deliver.calls[0]["pool"], pool)
        protocol = ClientProtocol(self.clock)
        transport = StringTransport()
        protocol.makeConnection(transport)
        pool.release(PooledSession(("h",), protocol, {}, None, False, 30.0), True)
        self.assertEqual(pool.idleCount(), 1)

        d = self.service.stopService()
        self.assertEqual(transport.value(), b"QUIT\r\n")
        protocol.dataReceived(b"221 2.0.0 Bye\r\n")
        protocol.connectionLost(None)
        self.successResultOf(d)
        self.assertTrue(pool.closed)
        self.assertEqual(pool.idleCount(), 0)

        self.service.startService()
        self.assertIsNot(self.service.pool, pool)
        self.assertFalse(self.service.pool.closed)

    def test_groupedByEndpoint(self):
        """
        One LMTP transaction per endpoint, apart from the relayed
        recipients of the same message; the hop is the endpoint string.
        """
        message = QueuedMessage(
            id="L1", created=self.clock.seconds(), sender="a@client.example", size=0,
            clientHost="127.0.0.1", heloName="client.example",
            recipients=[
                QueuedRecipient("alice@example.org", nextAttempt=self.clock.seconds(), via="lmtp:unix:/run/dovecot/lmtp"),
                QueuedRecipient("x@remote.example", nextAttempt=self.clock.seconds()),
                QueuedRecipient("Bob@example.org", nextAttempt=self.clock.seconds(), via="lmtp:unix:/run/dovecot/lmtp"),
                QueuedRecipient("carol@example.net", nextAttempt=self.clock.seconds(), via="lmtp:tcp:127.0.0.1:24"),
            ],
        )
        self.queue.add(message, b"Subject: hello\n\nbody\n")
        self.service.queued(message)
        calls = sorted(
            (c["request"].protocol, c["request"].hop.endpoint, tuple(c["recipients"])) for c in self.deliver.calls
        )
        self.assertEqual(calls, [
            ("lmtp", "tcp:127.0.0.1:24", ("carol@example.net",)),
            ("lmtp", "unix:/run/dovecot/lmtp", ("alice@example.org", "Bob@example.org")),
            ("smtp", None, ("x@remote.example",)),
        ])
        self.assertEqual(self.queue.ids(), [])

    def test_bounceToSenderOfLmtpDomain(self):
        """
        A bounce for a sender of a local domain delivered over LMTP is
        queued via its LMTP server, not filed in smtpmx's Maildir.
        """
        self.config = dataclasses.replace(self.config, delivery=(("example.org", "lmtp:unix:/run/dovecot/lmtp"),))
        self.service.config = self.service.bouncer.config = self.config
        self.service.access = self.service.bouncer.access = Access.fromConfig(self.config)
        self.deliver.replies["bad@remote.example"] = (550, "5.1.1 no such user")
        self.enqueue("Someone@example.org", "bad@remote.example")
        bounceCall = self.deliver.calls[-1]
        self.assertEqual(
            (bounceCall["request"].protocol, bounceCall["request"].hop.endpoint, bounceCall["recipients"]),
            ("lmtp", "unix:/run/dovecot/lmtp", ["Someone@example.org"]),
        )
        self.assertFalse(os.path.exists(self.config.maildirRoot + "/example.org"))
