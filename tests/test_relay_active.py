"""
Tests for the relay's cap on attempts in progress (C{--relay-active-limit},
docs/relay.rst): at most so many messages are held in memory and
attempted at once; the rest wait on disk, in the queue, and are taken in
oldest due first as attempts end.  A real queue, a Clock and the fake
transaction of L{tests.test_relay_service}, held until the test lets it
go.
"""

from __future__ import annotations

import os
import shutil
import tempfile

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from smtpmx.relay.queue import Queue, dueTime
from smtpmx.relay.queueformat import QueuedMessage, QueuedRecipient
from smtpmx.relay.backlog import RESCAN_INTERVAL
from smtpmx.relay.request import DeliveryRequest, DeliveryResult, Disposition, RecipientResult
from smtpmx.relay.pool import DOWN_TIME
from smtpmx.relay.service import RelayService
from tests.test_relay_service import FakeDeliver
from tests.serverhelpers import directoryConfig

LIMIT = 4


class ActiveLimitTests(SynchronousTestCase):
    """
    L{RelayService} with C{relayActiveLimit} 4.
    """

    def setUp(self) -> None:
        """
        A started service on a real queue; every transaction is held
        until the test lets it go.
        """
        self.dir = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.dir)
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.config = directoryConfig(
            self.dir,
            routes=(("*", "127.0.0.9", 25),), retrySchedule=(60,), maxQueueAge=86400,
            relayActiveLimit=LIMIT,
        )
        self.queue = Queue(self.config.queueDir)
        self.deliver = FakeDeliver()
        self.deliver.hold = True
        self.service = self.makeService()
        self.service.startService()
        self.addCleanup(self.service.stopService)

    def makeService(self) -> RelayService:
        """
        A service on the test's queue, its jobs run at once.
        """
        return RelayService(
            self.config, self.queue, lambda f, *a, **kw: maybeDeferred(f, *a, **kw), self.clock, None,
            self.deliver, lambda: "BOUNCE",
        )

    def enqueue(self, n: int, tell: bool = True) -> QueuedMessage:
        """
        Queue message C{M<n>} for one remote recipient, as the server does,
        and tell the service unless C{tell} is false.
        """
        now = self.clock.seconds()
        message = QueuedMessage(
            id=f"M{n:03d}", created=now, sender="", size=0, clientHost="127.0.0.1", heloName="client.example",
            recipients=[QueuedRecipient(f"r{n}@remote.example", nextAttempt=now)],
        )
        self.queue.add(message, b"Subject: hi\n\nbody\n")
        if tell:
            self.service.queued(message)
        return message

    def attempted(self) -> list[str]:
        """
        The recipients of every transaction so far, in order.
        """
        return [c["recipients"][0] for c in self.deliver.calls]

    def finish(self, count: int) -> None:
        """
        Let the oldest C{count} held transactions end (delivered, unless
        the fake was told otherwise).
        """
        for _ in range(count):
            d, result = self.deliver.held.pop(0)
            d.callback(result)

    def test_newMessagesWaitOnDisk(self) -> None:
        """
        Messages queued while 4 are attempted wait on disk, not in memory;
        as attempts end they are taken in, oldest first, never more than 4
        at once, and each is delivered once.
        """
        for n in range(10):
            self.enqueue(n)
        self.assertEqual(self.attempted(), [f"r{n}@remote.example" for n in range(4)])
        self.assertEqual(sorted(self.service.messages), ["M000", "M001", "M002", "M003"])
        self.finish(1)
        self.assertEqual(len(self.service.messages), LIMIT)
        self.assertEqual(self.attempted()[-1], "r4@remote.example")
        while self.deliver.held:
            self.assertLessEqual(len(self.service.messages), LIMIT)
            self.finish(1)
        self.assertEqual(self.attempted(), [f"r{n}@remote.example" for n in range(10)])
        self.assertEqual(self.queue.ids(), [])
        self.assertEqual(self.service.messages, {})

    def test_deferredLeaveMemory(self) -> None:
        """
        A message deferred goes back to disk; it is taken in again when its
        next attempt comes, and only then.
        """
        self.deliver.replies["r0@remote.example"] = (451, "4.3.0 busy")
        self.enqueue(0)
        self.finish(1)
        self.assertEqual(self.service.messages, {})
        [message] = self.queue.list()
        self.assertEqual(os.stat(self.queue.envelopePath("M000")).st_mtime, dueTime(message))
        self.clock.advance(30)
        self.assertEqual(len(self.deliver.calls), 1)
        del self.deliver.replies["r0@remote.example"]
        self.clock.advance(31)
        self.assertEqual(len(self.deliver.calls), 2)
        self.finish(1)
        self.assertEqual(self.queue.ids(), [])

    def test_recoveredTakenInByTheLimit(self) -> None:
        """
        After a restart the messages waiting are taken in at the first
        poll, 4 at a time.
        """
        self.service.stopService()
        for n in range(7):
            self.enqueue(n, tell=False)
        service = self.makeService()
        service.startService()
        self.addCleanup(service.stopService)
        self.assertEqual(service.queueStatistics()[0], 7)
        self.clock.advance(1)
        self.assertEqual(len(service.messages), LIMIT)
        self.assertEqual(len(self.deliver.calls), LIMIT)
        self.finish(LIMIT)
        self.assertEqual(len(self.deliver.calls), 7)
        self.finish(3)
        self.assertEqual(self.queue.ids(), [])
        self.assertEqual(service.queueStatistics()[0], 0)

    def test_notRetakenWhileSettling(self) -> None:
        """
        A message whose attempt ends while a look at the disk is reading
        the queue is not taken in again from what that look read: nothing
        delivered is delivered twice.
        """
        jobs: list[tuple] = []

        def runBlocking(f, *args):
            """
            Hold the first look at the disk; run the rest at once.
            """
            if getattr(f, "__name__", "") == "due" and not jobs:
                d = Deferred()
                jobs.append((f, args, d))
                return d
            return maybeDeferred(f, *args)

        self.service.backlog.runBlocking = runBlocking
        for n in range(6):
            self.enqueue(n)
        self.finish(1)
        [(f, args, d)] = jobs
        found = f(*args)
        jobs.append(None)
        self.assertEqual([m.id for m in found.messages], ["M004"])
        # M004 is taken in another way meanwhile and delivered.
        self.service.queued(self.queue.load("M004"))
        self.assertEqual(self.attempted()[-1], "r4@remote.example")
        held, result = self.deliver.held.pop()
        held.callback(result)
        self.assertEqual(self.queue.load("M004"), None)
        d.callback(found)
        while self.deliver.held:
            self.finish(1)
        self.assertEqual(self.attempted().count("r4@remote.example"), 1)
        self.assertEqual(self.queue.ids(), [])

    def test_otherProcessesFound(self) -> None:
        """
        A message put in the queue by someone else, without a word to the
        service, is found by the scan every minute or so, or at once after
        L{RelayService.wake}.
        """
        self.clock.advance(1)
        self.enqueue(0, tell=False)
        self.clock.advance(1)
        self.assertEqual(self.deliver.calls, [])
        self.clock.advance(RESCAN_INTERVAL)
        self.assertEqual(len(self.deliver.calls), 1)
        self.finish(1)
        self.enqueue(1, tell=False)
        self.service.wake()
        self.clock.advance(1)
        self.assertEqual(len(self.deliver.calls), 2)

    def test_flushReachesDisk(self) -> None:
        """
        A flush request makes the messages waiting on disk due: the flush
        command made them due, and the service looks at once.
        """
        self.deliver.replies["r0@remote.example"] = (451, "4.3.0 busy")
        self.enqueue(0)
        self.finish(1)

        def due(message: QueuedMessage) -> None:
            """
            What C{smtpmx-queue flush} does.
            """
            for r in message.pending():
                r.nextAttempt = self.clock.seconds()

        self.queue.update("M000", due)
        self.queue.requestFlush()
        self.clock.advance(1)
        self.assertEqual(len(self.deliver.calls), 2)

    def test_staleHintPutRight(self) -> None:
        """
        An env file whose hint says due while its state is not (written by
        an older version) is read once, not held, and its hint put right.
        """
        self.deliver.replies["r0@remote.example"] = (451, "4.3.0 busy")
        self.enqueue(0)
        self.finish(1)
        path = self.queue.envelopePath("M000")
        os.utime(path, (0, 0))
        self.service.wake()
        self.clock.advance(1)
        self.assertEqual(len(self.deliver.calls), 1)
        self.assertEqual(self.service.messages, {})
        self.assertEqual(os.stat(path).st_mtime, dueTime(self.queue.load("M000")))


class DownDestinationTests(SynchronousTestCase):
    """
    A destination that could not be reached is not tried again for
    L{DOWN_TIME} seconds: the attempts waiting for its connection slots go
    back to the queue at once instead of each waiting its own timeout.
    """

    def setUp(self) -> None:
        """
        A started service whose transactions wait until the test ends
        them.
        """
        self.dir = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.dir)
        self.clock = Clock()
        self.clock.advance(1_000_000)
        config = directoryConfig(
            self.dir,
            routes=(("*", "127.0.0.9", 25),), retrySchedule=(60,), maxQueueAge=86400,
        )
        self.queue = Queue(config.queueDir)
        self.calls: list[tuple[DeliveryRequest, Deferred]] = []

        def deliver(request, *, reactor, runBlocking, pool=None):
            """
            A transaction the test ends.
            """
            d: Deferred = Deferred()
            self.calls.append((request, d))
            return d

        self.service = RelayService(
            config, self.queue, lambda f, *a, **kw: maybeDeferred(f, *a, **kw), self.clock, None, deliver,
            lambda: "BOUNCE",
        )
        self.service.startService()
        self.addCleanup(self.service.stopService)
        self.clock.advance(1)

    def enqueue(self, n: int) -> None:
        """
        Queue message C{M<n>} for one remote recipient and tell the service.
        """
        now = self.clock.seconds()
        message = QueuedMessage(
            id=f"M{n:03d}", created=now, sender="", size=0, clientHost="127.0.0.1", heloName="client.example",
            recipients=[QueuedRecipient(f"r{n}@remote.example", nextAttempt=now)],
        )
        self.queue.add(message, b"Subject: hi\n\nbody\n")
        self.service.queued(message)

    def test_waitingAttemptsDeferredAtOnce(self) -> None:
        """
        Twelve messages for one next hop: ten connect (the cap of one
        destination) and time out; the two waiting are deferred at once,
        with the same reason, without a connection; after L{DOWN_TIME}
        seconds the next hop is tried again.
        """
        for n in range(12):
            self.enqueue(n)
        self.assertEqual(len(self.calls), 10)
        for _, d in self.calls:
            d.callback(DeliveryResult(connected=False, error="connect to 127.0.0.9 failed: timed out"))
        self.assertEqual(len(self.calls), 10)
        self.assertEqual(self.service.messages, {})
        states = [m.recipients[0] for m in self.queue.list()]
        self.assertEqual(len(states), 12)
        self.assertTrue(all("timed out" in r.lastReply and r.attempts == 1 for r in states))
        self.clock.advance(DOWN_TIME)
        self.enqueue(12)
        self.assertEqual(len(self.calls), 11)
        [(request, d)] = self.calls[10:]
        d.callback(DeliveryResult(recipients={"r12@remote.example": RecipientResult(250, "2.0.0", "ok", Disposition.DELIVERED)}))
        self.assertEqual(self.service.down.destinations, {})

    def test_flushForgets(self) -> None:
        """
        A flush request forgets the destinations found down: the operator
        wants everything tried now.
        """
        self.enqueue(0)
        self.calls[0][1].callback(DeliveryResult(connected=False, error="refused"))
        self.assertEqual(len(self.service.down.destinations), 1)
        self.queue.requestFlush()
        self.clock.advance(1)
        self.assertEqual(self.service.down.destinations, {})


class QueueDueTests(SynchronousTestCase):
    """
    L{Queue.due}, the look at the disk, and L{Queue.statistics}.
    """

    def setUp(self) -> None:
        """
        A recovered queue with five messages, M000 due at 100 and then one
        every 10 seconds, queued at 50 and then one a second.
        """
        path = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, path)
        self.queue = Queue(os.path.join(path, "queue"))
        self.queue.recover()
        for n in (3, 0, 4, 1, 2):
            self.queue.add(QueuedMessage(
                id=f"M{n:03d}", created=50.0 + n, sender="", size=0, clientHost="127.0.0.1", heloName="c",
                recipients=[QueuedRecipient(f"r{n}@remote.example", nextAttempt=100.0 + 10 * n)],
            ), b"x\n")

    def test_oldestDueFirst(self) -> None:
        """
        The messages due come oldest due first, up to the limit; the rest
        due are kept as candidates (up to C{keep}), and the earliest due
        of the others is known.
        """
        found = self.queue.due(125.0, 1, keep=5)
        self.assertEqual([m.id for m in found.messages], ["M000"])
        self.assertEqual(found.candidates, ["M001", "M002"])
        self.assertEqual(found.nextDue, 130.0)
        self.assertTrue(found.scanned)
        self.assertEqual(found.count, 5)

    def test_candidatesFirst(self) -> None:
        """
        Candidates are loaded before any scan, and what is held is left
        out.
        """
        found = self.queue.due(125.0, 1, candidates=["M001", "M002"], exclude={"M001"})
        self.assertEqual([m.id for m in found.messages], ["M002"])
        self.assertFalse(found.scanned)

    def test_tooManyToKeep(self) -> None:
        """
        Due messages beyond the candidates kept make the next look scan
        again at once.
        """
        found = self.queue.due(1000.0, 1, keep=1)
        self.assertEqual(found.candidates, ["M001"])
        self.assertEqual(found.nextDue, 1000.0)

    def test_statistics(self) -> None:
        """
        The count and the time the oldest message was queued, from the
        message files.
        """
        self.assertEqual(self.queue.statistics(), (5, 50.0))
        self.queue.remove("M000")
        self.assertEqual(self.queue.statistics(), (4, 51.0))
