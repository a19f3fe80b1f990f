"""
The delivery backend plugin point (docs/plugins.rst): the lookup of
C{--delivery [DOMAIN=]NAME[:ARG]} over plugins, the built-in C{maildir}
and C{lmtp} backends, the queue's C{via}, the relay service handing a courier's
recipients to it, and the helpers of L{smtpmx.testing} for backend
authors.
"""

from __future__ import annotations

import os
import shutil
import tempfile

from twisted.internet.defer import maybeDeferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from smtpmx.access import Access
from smtpmx.address import Address
from smtpmx.backendlookup import BackendLoadError, BackendNotFound, findBackendFactories, makeBackends
from smtpmx.backends import describeVia
from smtpmx.envelope import CourierRecipient, LmtpRecipient
from smtpmx.interfaces import IDeliveryBackend, IDeliveryBackendFactory
from smtpmx.plugins.builtin_backends import LmtpBackend
from smtpmx.relay.queue import Queue
from smtpmx.relay.queueformat import BOUNCED, DELIVERED, PENDING, QueuedMessage, QueuedRecipient
from smtpmx.relay.request import Disposition, RecipientResult, resultOf
from smtpmx.relay.service import RelayService
from smtpmx.reply import Reply
from smtpmx.testing import RecordingBackend, deliverWithBackend
from tests.helpers import assertShownIn
from tests.examplebackend import loadExampleBackend
from tests.serverhelpers import directoryConfig


class BackendLookupTests(SynchronousTestCase):
    """
    The plugins found for C{--delivery}.
    """

    def test_builtins(self):
        """
        The plugin lookup finds the built-in C{maildir} and C{lmtp}
        backends, each an L{IDeliveryBackendFactory} with a description.
        """
        factories = {f.name: f for f in findBackendFactories()}
        self.assertLessEqual({"maildir", "lmtp"}, set(factories))
        for factory in factories.values():
            self.assertTrue(verifyObject(IDeliveryBackendFactory, factory))
            self.assertTrue(factory.description)

    def test_make(self):
        """
        C{maildir} is no courier (L{None}); C{lmtp:ENDPOINT} is an
        L{LmtpBackend} for that endpoint.
        """
        made = makeBackends(["maildir", "lmtp:unix:/run/dovecot/lmtp"])
        self.assertIsNone(made["maildir"])
        lmtp = made["lmtp:unix:/run/dovecot/lmtp"]
        self.assertIsInstance(lmtp, LmtpBackend)
        self.assertTrue(verifyObject(IDeliveryBackend, lmtp))
        self.assertEqual(lmtp.endpoint, "unix:/run/dovecot/lmtp")

    def test_unknownAndRefused(self):
        """
        A name no plugin has is L{BackendNotFound}; an argument a plugin
        refuses is L{BackendLoadError}, naming the specification.
        """
        with self.assertRaises(BackendNotFound) as caught:
            makeBackends(["pigeon:loft"])
        self.assertEqual(caught.exception.args[0], "pigeon")
        for bad in ("maildir:x", "lmtp:/run/dovecot/lmtp"):
            with self.assertRaises(BackendLoadError) as refused:
                makeBackends([bad])
            self.assertIn(repr(bad), str(refused.exception))


class ViaTests(SynchronousTestCase):
    """
    A queued recipient's C{via} and the destination it comes from.
    """

    def test_describeVia(self):
        """
        A queued recipient's backend is shown as its name then its
        argument, as the log and C{smtpmx-queue} print it.
        """
        self.assertEqual(describeVia("lmtp:unix:/run/dovecot/lmtp"), "lmtp unix:/run/dovecot/lmtp")
        self.assertEqual(describeVia("spool:/var/spool/x"), "spool /var/spool/x")

    def test_courierDestination(self):
        """
        A local recipient of a domain with a courier backend is a
        L{CourierRecipient} naming the backend; C{LmtpRecipient} makes the
        one of an LMTP server.
        """
        access = Access(("example.org", "files.example"), (), (), None, (("example.org", "spool:/x"),))
        alice = Address("Alice", "example.org")
        self.assertEqual(access.localDestination(alice), CourierRecipient(alice, "spool:/x"))
        self.assertEqual(LmtpRecipient(alice, "tcp:127.0.0.1:24"), CourierRecipient(alice, "lmtp:tcp:127.0.0.1:24"))
        self.assertEqual(LmtpRecipient(alice, "tcp:127.0.0.1:24").endpoint, "tcp:127.0.0.1:24")
        self.assertIsNone(CourierRecipient(alice, "spool:/x").endpoint)


class CourierServiceTests(SynchronousTestCase):
    """
    The relay service hands a courier backend's queued recipients to it.
    """

    def setUp(self) -> None:
        """
        A started service on a real queue, a Clock, and a recording
        backend as C{spool:x}; no SMTP or LMTP transaction is expected.
        """
        self.dir = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.dir)
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.config = directoryConfig(
            self.dir, domains=("example.org", "files.example"),
            retrySchedule=(60, 300),
            delivery=(("example.org", "spool:x"),),
        )
        self.queue = Queue(self.config.queueDir)
        self.backend = RecordingBackend({
            "nobody@example.org": resultOf(Reply(550, "5.1.1", "No such user")),
            "later@example.org": resultOf(Reply(451, "4.2.0", "Later")),
        })

        def noTransaction(*args, **kwargs):
            """
            No next hop is to be contacted.
            """
            raise AssertionError("no transaction expected")

        ids = iter(f"B{n:04d}" for n in range(1000))
        self.service = RelayService(
            self.config, self.queue, lambda f, *a, **kw: maybeDeferred(f, *a, **kw), self.clock, None,
            noTransaction, lambda: next(ids), backends={"spool:x": self.backend},
        )
        self.service.startService()
        self.addCleanup(self.service.stopService)

    def test_deliveredRetriedBounced(self):
        """
        One hand-over carries every recipient of the backend with the
        queued message; its 250 delivers, its 451 is retried on the
        schedule and its 550 bounces to the (local, Maildir) sender.
        """
        data = b"Received: from x\nSubject: hello\n\nbody\n"
        message = QueuedMessage(
            id="C1", created=self.clock.seconds(), sender="sender@files.example", size=len(data),
            clientHost="127.0.0.1", heloName="client.example",
            recipients=[
                QueuedRecipient(r, nextAttempt=self.clock.seconds(), via="spool:x")
                for r in ("alice@example.org", "nobody@example.org", "later@example.org")
            ],
        )
        self.queue.add(message, data)
        self.service.queued(message)
        [request] = self.backend.requests
        self.assertEqual(request.recipients, ("alice@example.org", "nobody@example.org", "later@example.org"))
        self.assertEqual((request.backend, request.sender, request.size), ("spool:x", "sender@files.example", len(data)))
        self.assertEqual(self.backend.messages, [data])
        [stored] = self.queue.list()
        states = {r.address: (r.state, r.lastReply) for r in stored.recipients}
        self.assertEqual(states, {
            "alice@example.org": (DELIVERED, "250 2.0.0 Ok"),
            "nobody@example.org": (BOUNCED, "550 5.1.1 No such user"),
            "later@example.org": (PENDING, "451 4.2.0 Later"),
        })
        [later] = [r for r in stored.recipients if r.state == PENDING]
        self.assertEqual(later.nextAttempt, self.clock.seconds() + 60)
        bounces = os.listdir(os.path.join(self.config.maildirRoot, "files.example", "sender", "new"))
        self.assertEqual(len(bounces), 1)

    def test_unknownBackendRetried(self):
        """
        A recipient queued for a backend no plugin provides (a queue
        written under another configuration) stays queued, retried; the
        plugins are looked up for it once, through the thread runner, not
        again at every retry.
        """
        ran: list[object] = []
        runBlocking = self.service.runBlocking

        def counting(f, *args, **kwargs):
            """
            Note what goes to the thread runner.
            """
            ran.append(f)
            return runBlocking(f, *args, **kwargs)

        self.service.runBlocking = counting
        message = QueuedMessage(
            id="C2", created=self.clock.seconds(), sender="", size=1,
            clientHost="127.0.0.1", heloName="client.example",
            recipients=[QueuedRecipient("a@example.org", nextAttempt=self.clock.seconds(), via="pigeon:loft")],
        )
        self.queue.add(message, b"x")
        self.service.queued(message)
        [stored] = self.queue.list()
        [r] = stored.recipients
        self.assertEqual(r.state, PENDING)
        self.assertTrue(r.lastReply.startswith("451 4.4.1 "), r.lastReply)
        self.assertEqual(ran.count(makeBackends), 1)
        self.clock.advance(3600)
        self.service.poll()
        [stored] = self.queue.list()
        self.assertEqual(stored.recipients[0].attempts, 2)
        self.assertEqual(ran.count(makeBackends), 1)
        self.flushLoggedErrors()


class TestingHelperTests(SynchronousTestCase):
    """
    L{deliverWithBackend}, for backend authors, with docs/plugins.rst's
    example backend.
    """

    def test_example(self):
        """
        The example C{spool} backend files the message for each recipient
        it takes and refuses C{nobody} with 550.
        """
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory)
        backend = loadExampleBackend()["spool"].makeBackend(directory)
        results = self.successResultOf(deliverWithBackend(
            backend, b"Subject: hi\n\nbody\n", ["Alice@example.org", "nobody@example.org"],
        ))
        self.assertEqual(results["Alice@example.org"].disposition, Disposition.DELIVERED)
        self.assertEqual((results["nobody@example.org"].code, results["nobody@example.org"].disposition),
                         (550, Disposition.PERMANENT))
        with open(os.path.join(directory, "alice@example.org"), "rb") as f:
            self.assertEqual(f.read(), b"Subject: hi\n\nbody\n")

    def test_missingResult(self):
        """
        A backend that leaves a recipient out fails the helper with
        L{TypeError}.
        """
        class Forgetful:
            """
            Answers for nobody.
            """

            def deliver(self, request):
                """
                No results.
                """
                return {}

        self.failureResultOf(deliverWithBackend(Forgetful(), b"x\n", ["a@example.org"]), TypeError)

    def test_recordingBackend(self):
        """
        L{RecordingBackend} delivers everyone unless told otherwise, and
        keeps the message it was handed.
        """
        refused = RecipientResult(550, "5.1.1", "5.1.1 No", Disposition.PERMANENT)
        backend = RecordingBackend({"b@example.org": refused})
        results = self.successResultOf(deliverWithBackend(backend, b"m\n", ["a@example.org", "b@example.org"]))
        self.assertEqual(results["a@example.org"].code, 250)
        self.assertEqual(results["b@example.org"], refused)
        self.assertEqual(backend.messages, [b"m\n"])


class DocumentedExampleTests(SynchronousTestCase):
    """
    docs/plugins.rst shows the example backend the tests run.
    """

    def test_shown(self):
        """
        The example's code is in docs/plugins.rst, indented as a literal
        block, so that what is documented is what is tested.
        """
        from tests.examplebackend import SOURCE

        assertShownIn(self, SOURCE, os.path.join("docs", "plugins.rst"))
