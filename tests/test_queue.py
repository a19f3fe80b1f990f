"""
Tests for the relay queue: its file format (L{smtpmx.relay.queueformat}),
its directory (L{smtpmx.relay.queue}) and the store that streams received
messages into it (L{smtpmx.relay.intake}); C{docs/storage.rst}.
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import json
import os
import threading
from typing import Any, Optional

import pytest
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from smtpmx import durable, streaming
from smtpmx.address import Address
from smtpmx.envelope import Envelope, LmtpRecipient, LocalMailbox, Recipient, RemoteAddress
from smtpmx.interfaces import IIncomingMessage, IMessageStore, ITwoPhaseMessage
from smtpmx.relay.intake import QueueStore
from smtpmx.relay.queue import Queue
from smtpmx.relay.queueformat import (
    CorruptMessage,
    QueuedMessage,
    QueuedRecipient,
    checkId,
    decodeMessage,
    encodeMessage,
    isValidId,
)
from tests.helpers import recordRemovals
from tests.test_maildir_store import CountingRunner, ManualRunner, makeDirectory, runNow

RECEIVED = b"Received: from client.example (client.example [192.0.2.1])\n\tby mx.example.org with ESMTP id 0A1B2C\n"


def makeMessage(messageId: str = "0A1B2C", created: float = 1000.0, **kwargs: Any) -> QueuedMessage:
    """
    A queued message with two recipients, one of them delivered.
    """
    values: dict[str, Any] = dict(
        id=messageId,
        created=created,
        sender="Alice@Example.NET",
        size=0,
        clientHost="192.0.2.1",
        heloName="client.example",
        recipients=[
            QueuedRecipient("Bob@Example.ORG", nextAttempt=created),
            QueuedRecipient(
                "carol@example.com",
                state="delivered",
                attempts=1,
                nextAttempt=created,
                lastReply="250 2.0.0 Ok: queued as X",
                remoteMta="mx.example.com",
            ),
        ],
    )
    values.update(kwargs)
    return QueuedMessage(**values)


def makeEnvelope(
    recipients: list[Any],
    sender: Optional[Address] = Address("Alice", "Example.NET"),
    queueId: str = "0A1B2C",
) -> Envelope:
    """
    An envelope for C{recipients}: addresses as text (relayed) or pairs of
    the address and a destination.
    """
    made = []
    for recipient in recipients:
        if isinstance(recipient, str):
            address = Address(*recipient.rsplit("@", 1))
            made.append(Recipient(address, RemoteAddress(address)))
        else:
            given, destination = recipient
            made.append(Recipient(Address(*given.rsplit("@", 1)), destination))
    return Envelope(
        queueId=queueId,
        clientHost="192.0.2.1",
        heloName="client.example",
        reversePath=sender,
        recipients=made,
        received=RECEIVED,
    )


def captureLog(case: SynchronousTestCase) -> list[dict[str, Any]]:
    """
    Every log event emitted until C{case} ends.
    """
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    case.addCleanup(globalLogPublisher.removeObserver, events.append)
    return events


class QueueTestMixin:
    """
    A fresh, recovered queue and helpers to look at it.
    """

    queue: Queue

    def makeQueue(self: Any) -> Queue:
        """
        A recovered queue in a fresh directory.
        """
        queue = Queue(os.path.join(makeDirectory(self), "queue"))
        self.assertEqual(queue.recover(), [])
        return queue

    def files(self, sub: str) -> list[str]:
        """
        The names in one subdirectory of the queue.
        """
        return sorted(os.listdir(os.path.join(self.queue.path, sub)))

    def assertEmpty(self: Any) -> None:
        """
        Nothing at all is left in the queue's directories.
        """
        for sub in ("tmp", "msg", "env"):
            self.assertEqual(self.files(sub), [], sub)

    def content(self, messageId: str) -> bytes:
        """
        The message file of C{messageId}.
        """
        with open(self.queue.messagePath(messageId), "rb") as f:
            return f.read()


class IdTests(SynchronousTestCase):
    """
    Tests for L{isValidId} and L{checkId}.
    """

    def test_valid(self) -> None:
        """
        The server's IDs, upper-case hexadecimal, and letters and digits in
        general are queue IDs.
        """
        for good in ["0195A2B3C4D5E6F70001", "abcXYZ019", "A"]:
            self.assertTrue(isValidId(good), good)
            self.assertEqual(checkId(good), good)

    def test_invalid(self) -> None:
        """
        Nothing that could name a path, a temporary file or anything but a
        queue entry is a queue ID.
        """
        for bad in ["", "..", "../x", "a/b", "ABC.env", ".ABC", "ABC ", "AB\x00", "\u0661\u0662", "é", "A" * 65, None, 12]:
            self.assertFalse(isValidId(bad), repr(bad))
        self.assertRaises(ValueError, checkId, "../etc/passwd")


class FormatTests(SynchronousTestCase):
    """
    Tests for L{encodeMessage} and L{decodeMessage}: the env file.
    """

    def test_roundTrip(self) -> None:
        """
        A message read back from its env file is the message written, with
        any character in its addresses and replies.
        """
        message = makeMessage(sender="", size=1234)
        message.recipients[0].address = "\"J\u00f6rg Smith\"@b\u00fccher.example"
        message.recipients[0].lastReply = "451 4.7.1 Gr\u00fcylisting \ud800 in force"
        data = encodeMessage(message)
        self.assertTrue(data.isascii())
        self.assertTrue(data.endswith(b"\n"))
        self.assertEqual(decodeMessage(data, "0A1B2C"), message)

    def test_unknownFieldsIgnored(self) -> None:
        """
        Fields this version does not know (added by a later one) are
        ignored.
        """
        decoded = json.loads(encodeMessage(makeMessage()))
        decoded["priority"] = 3
        decoded["recipients"][0]["dsnNotify"] = "never"
        self.assertEqual(decodeMessage(json.dumps(decoded).encode(), "0A1B2C"), makeMessage())

    def test_corrupt(self) -> None:
        """
        Anything that is not a whole, well-typed state of this message is
        refused with L{CorruptMessage}.
        """
        good = json.loads(encodeMessage(makeMessage()))

        def changed(**changes: Any) -> bytes:
            """
            The good env file with some top-level fields changed.
            """
            return json.dumps({**good, **changes}).encode()

        def recipientChanged(**changes: Any) -> bytes:
            """
            The good env file with some fields of a recipient changed.
            """
            return changed(recipients=[{**good["recipients"][0], **changes}])

        cases = [
            b"",
            b"{",
            encodeMessage(makeMessage())[:-20],
            b"[]",
            b"\xff\xfe",
            changed(id="OTHER"),
            changed(version=2),
            changed(size="12"),
            changed(size=True),
            changed(created=None),
            changed(recipients={}),
            changed(recipients=["bob@example.org"]),
            recipientChanged(state="sent"),
            recipientChanged(attempts=1.5),
            recipientChanged(lastReply=451),
            json.dumps({k: v for k, v in good.items() if k != "sender"}).encode(),
        ]
        for data in cases:
            self.assertRaises(CorruptMessage, decodeMessage, data, "0A1B2C")

    def test_pending(self) -> None:
        """
        L{QueuedMessage.pending} lists the recipients still to deliver, in
        order.
        """
        message = makeMessage()
        message.recipients.append(QueuedRecipient("dave@example.net"))
        self.assertEqual(
            [r.address for r in message.pending()], ["Bob@Example.ORG", "dave@example.net"]
        )


class QueueTests(SynchronousTestCase, QueueTestMixin):
    """
    Tests for L{Queue}: adding, reading, saving and removing messages.
    """

    def setUp(self) -> None:
        """
        A fresh queue.
        """
        self.queue = self.makeQueue()

    def test_layout(self) -> None:
        """
        Recovering an absent queue creates it, private to its owner.
        """
        for sub in ("tmp", "msg", "env", "corrupt"):
            path = os.path.join(self.queue.path, sub)
            self.assertTrue(os.path.isdir(path))
            self.assertEqual(os.stat(path).st_mode & 0o777, 0o700)
        self.assertTrue(self.queue.exists())
        self.assertFalse(Queue(os.path.join(self.queue.path, "elsewhere")).exists())

    def test_relativePath(self) -> None:
        """
        A relative queue directory is taken from the working directory at
        once, so that a later change of directory does not move it.
        """
        self.assertEqual(Queue("queue").path, os.path.join(os.getcwd(), "queue"))

    def test_roundTrip(self) -> None:
        """
        A message added is listed and loaded back as it was, and its file
        holds the data, whole.
        """
        message = makeMessage()
        data = b"Subject: hi\n\nbody\n"
        self.queue.add(message, data)
        self.assertEqual(message.size, len(data))
        self.assertEqual(self.queue.load("0A1B2C"), message)
        self.assertEqual(self.queue.list(), [message])
        self.assertEqual(self.queue.ids(), ["0A1B2C"])
        self.assertEqual(self.content("0A1B2C"), data)
        self.assertEqual(self.files("tmp"), [])
        self.assertEqual(os.stat(self.queue.messagePath("0A1B2C")).st_mode & 0o777, 0o600)
        self.assertEqual(os.stat(self.queue.envelopePath("0A1B2C")).st_mode & 0o777, 0o600)

    def test_listOldestFirst(self) -> None:
        """
        Messages are listed oldest first.
        """
        for messageId, created in [("B", 3.0), ("A", 2.0), ("C", 1.0)]:
            self.queue.add(makeMessage(messageId, created), b"x\n")
        self.assertEqual([m.id for m in self.queue.list()], ["C", "A", "B"])
        self.assertEqual([m.id for m in self.queue.recover()], ["C", "A", "B"])

    def test_loadMissing(self) -> None:
        """
        Loading a message that is not queued gives L{None}.
        """
        self.assertIsNone(self.queue.load("NOSUCH"))

    def test_invalidIds(self) -> None:
        """
        Every method that takes an ID refuses one that could name a path.
        """
        self.queue.add(makeMessage(), b"x\n")
        for method in (self.queue.load, self.queue.remove, self.queue.messagePath):
            self.assertRaises(ValueError, method, "../env/0A1B2C")
        self.assertRaises(ValueError, self.queue.save, makeMessage("../x"))
        self.assertRaises(ValueError, self.queue.add, makeMessage("a/b"), b"x\n")
        self.assertEqual(self.queue.ids(), ["0A1B2C"])

    def test_addTakenId(self) -> None:
        """
        Adding a message under an ID already queued fails and leaves the
        queued message as it was.
        """
        self.queue.add(makeMessage(), b"first\n")
        self.assertRaises(FileExistsError, self.queue.add, makeMessage(sender="x@y"), b"second\n")
        self.assertEqual(self.content("0A1B2C"), b"first\n")
        self.assertEqual(self.queue.load("0A1B2C").sender, "Alice@Example.NET")
        self.assertEqual(self.files("tmp"), [])

    def test_addEnvelopeFails(self) -> None:
        """
        When the env file of an added message cannot be written, its
        message file is removed too.
        """
        real = durable.fsyncDirectory

        def failing(path: str) -> None:
            """
            Fail to fsync C{env/}.
            """
            if path == self.queue.envelopeDirectory:
                raise OSError(errno.EIO, "I/O error")
            real(path)

        self.patch(durable, "fsyncDirectory", failing)
        self.assertRaises(OSError, self.queue.add, makeMessage(), b"x\n")
        self.patch(durable, "fsyncDirectory", real)
        self.assertEqual(self.files("msg"), [])
        self.assertEqual(self.queue.recover(), [])
        self.assertEmpty()

    def test_save(self) -> None:
        """
        Saving replaces the stored state.
        """
        message = makeMessage()
        self.queue.add(message, b"x\n")
        message.recipients[0].attempts = 1
        message.recipients[0].lastReply = "451 4.7.1 Try later"
        message.recipients[0].nextAttempt = 2000.0
        self.assertTrue(self.queue.save(message))
        self.assertEqual(self.queue.load("0A1B2C"), message)
        self.assertEqual(self.files("tmp"), [])

    def test_saveAfterRemove(self) -> None:
        """
        Saving a message that an operator deleted meanwhile does not bring
        it back.
        """
        message = makeMessage()
        self.queue.add(message, b"x\n")
        self.assertTrue(self.queue.remove("0A1B2C"))
        self.assertFalse(self.queue.save(message))
        self.assertEmpty()

    def test_update(self) -> None:
        """
        L{Queue.update} reads, changes and saves a state in one step.
        """
        self.queue.add(makeMessage(), b"x\n")

        def change(message: QueuedMessage) -> None:
            """
            Bounce the first recipient.
            """
            message.recipients[0].state = "bounced"

        updated = self.queue.update("0A1B2C", change)
        self.assertEqual(updated.recipients[0].state, "bounced")
        self.assertEqual(self.queue.load("0A1B2C"), updated)
        self.assertIsNone(self.queue.update("NOSUCH", change))

    def test_remove(self) -> None:
        """
        Removing a message removes its env file (the commit point) first,
        then its message file, each directory fsynced after.
        """
        self.queue.add(makeMessage(), b"x\n")
        events = recordRemovals(self)
        self.assertTrue(self.queue.remove("0A1B2C"))
        self.assertEqual(
            events, [("unlink", "env"), ("fsync", "env"), ("unlink", "msg"), ("fsync", "msg")]
        )
        self.assertEmpty()
        self.assertFalse(self.queue.remove("0A1B2C"))

    def test_flushRequest(self) -> None:
        """
        A flush request is seen once.
        """
        self.assertFalse(self.queue.takeFlushRequest())
        self.queue.requestFlush()
        self.queue.requestFlush()
        self.assertTrue(self.queue.takeFlushRequest())
        self.assertFalse(self.queue.takeFlushRequest())

    def test_listSkipsCorrupt(self) -> None:
        """
        Listing leaves out, and logs, an env file that cannot be read,
        without moving anything (only start-up does).
        """
        events = captureLog(self)
        self.queue.add(makeMessage("GOOD"), b"x\n")
        self.queue.add(makeMessage("BAD"), b"x\n")
        with open(self.queue.envelopePath("BAD"), "wb") as f:
            f.write(b"{not json")
        self.assertEqual([m.id for m in self.queue.list()], ["GOOD"])
        self.assertRaises(CorruptMessage, self.queue.load, "BAD")
        self.assertEqual(self.files("env"), ["BAD", "GOOD"])
        self.assertTrue(any(e.get("id") == "BAD" for e in events))


class LockTests(SynchronousTestCase, QueueTestMixin):
    """
    Writers of the same queue, in other threads or processes (the
    C{smtpmx-queue} command), take turns.
    """

    def test_writersWait(self) -> None:
        """
        While another writer holds the queue's lock, saving and removing
        wait for it.
        """
        self.queue = self.makeQueue()
        message = makeMessage()
        self.queue.add(message, b"x\n")
        # Another process's lock: a separate open file description.
        fd = os.open(os.path.join(self.queue.path, "lock"), os.O_RDWR | os.O_CREAT, 0o600)
        self.addCleanup(os.close, fd)
        fcntl.flock(fd, fcntl.LOCK_EX)
        results: list[object] = []

        def writer() -> None:
            """
            Save, then remove, recording the results.
            """
            results.append(self.queue.save(message))
            results.append(self.queue.remove(message.id))

        thread = threading.Thread(target=writer)
        thread.start()
        thread.join(0.2)
        self.assertTrue(thread.is_alive())
        self.assertEqual(results, [])
        fcntl.flock(fd, fcntl.LOCK_UN)
        thread.join(10)
        self.assertFalse(thread.is_alive())
        self.assertEqual(results, [True, True])


class AtomicSaveTests(SynchronousTestCase, QueueTestMixin):
    """
    A crash or an error while a state is saved leaves the old state or the
    new one, whole, never half of either.
    """

    def setUp(self) -> None:
        """
        A queue holding one message, and its changed state to be saved.
        """
        self.queue = self.makeQueue()
        self.old = makeMessage()
        self.queue.add(self.old, b"x\n")
        self.new = makeMessage()
        self.new.recipients[0].attempts = 7
        self.new.recipients[0].lastReply = "451 " + "x" * 100000

    def failOn(self, name: str) -> None:
        """
        Make C{os.<name>} fail as a full or broken disk would.
        """

        def failing(*args: Any) -> None:
            """
            Fail.
            """
            raise OSError(errno.EIO, "I/O error")

        self.patch(os, name, failing)

    def assertOld(self) -> None:
        """
        The stored state is the old one, whole, and no temporary file is
        left.
        """
        self.assertEqual(self.queue.load(self.old.id), self.old)
        self.assertEqual(self.files("tmp"), [])

    def test_renameFails(self) -> None:
        """
        A rename that fails leaves the old state.
        """
        self.failOn("rename")
        self.assertRaises(OSError, self.queue.save, self.new)
        self.assertOld()

    def test_fsyncFails(self) -> None:
        """
        An fsync that fails leaves the old state.
        """
        self.failOn("fsync")
        self.assertRaises(OSError, self.queue.save, self.new)
        self.assertOld()

    def test_writeFails(self) -> None:
        """
        A write that fails half-way (a full disk) leaves the old state.
        """
        real = os.write

        def write(fd: int, data: Any) -> int:
            """
            Write a little, then fail.
            """
            if len(data) > 100:
                return real(fd, bytes(data[:100]))
            raise OSError(errno.ENOSPC, "No space left on device")

        self.patch(os, "write", write)
        self.assertRaises(OSError, self.queue.save, self.new)
        self.assertOld()

    @pytest.mark.rfc("5321", "6.1", "5321-6.1-1")
    def test_crashBeforeRename(self) -> None:
        """
        A crash after the new state was written but before it replaced the
        old leaves the old state and a temporary file, which start-up
        removes.
        """

        class Crash(BaseException):
            """
            The process dies here.
            """

        def crash(*args: Any) -> None:
            """
            Die.
            """
            raise Crash()

        realRename, realRemove = os.rename, durable.removeFile
        self.patch(os, "rename", crash)
        # A dying process cleans nothing up.
        self.patch(durable, "removeFile", lambda path: None)
        self.assertRaises(Crash, self.queue.save, self.new)
        # The next process starts with the system's own calls.
        self.patch(os, "rename", realRename)
        self.patch(durable, "removeFile", realRemove)
        self.assertEqual(len(self.files("tmp")), 1)
        self.assertEqual(self.queue.load(self.old.id), self.old)
        self.assertEqual(self.queue.recover(), [self.old])
        self.assertOld()

    def test_crashAfterRename(self) -> None:
        """
        Once the rename is done, the new state is there, whole.
        """
        real = durable.fsyncDirectory

        def crash(path: str) -> None:
            """
            Fail the directory fsync after the rename.
            """
            raise OSError(errno.EIO, "I/O error")

        self.patch(durable, "fsyncDirectory", crash)
        self.assertRaises(OSError, self.queue.save, self.new)
        self.patch(durable, "fsyncDirectory", real)
        self.assertEqual(self.queue.load(self.new.id), self.new)


class RecoverTests(SynchronousTestCase, QueueTestMixin):
    """
    Tests for L{Queue.recover}: start-up after a stop or a crash at any
    point.
    """

    def setUp(self) -> None:
        """
        A queue holding one good message.
        """
        self.queue = self.makeQueue()
        self.good = makeMessage("GOOD")
        self.queue.add(self.good, b"good\n")
        self.events = captureLog(self)

    def write(self, path: str, data: bytes) -> None:
        """
        Put a file in the queue, as a crash might have left it.
        """
        with open(os.path.join(self.queue.path, path), "wb") as f:
            f.write(data)

    def test_temporaryLeftovers(self) -> None:
        """
        Files being written when the server stopped are removed.
        """
        self.write("tmp/GOOD2.msg", b"half a mess")
        self.write("tmp/GOOD2.env", b"{")
        self.write("tmp/1700000000.M1P2Q3.mx", b"half a state")
        self.assertEqual(self.queue.recover(), [self.good])
        self.assertEqual(self.files("tmp"), [])

    def test_messageWithoutEnvelope(self) -> None:
        """
        A message file without an env file was never acknowledged (the
        crash came before its commit): it is removed.
        """
        self.write("msg/NEVER", b"never acknowledged\n")
        self.assertEqual(self.queue.recover(), [self.good])
        self.assertEqual(self.files("msg"), ["GOOD"])

    def test_envelopeWithoutMessage(self) -> None:
        """
        An env file whose message file is gone cannot be delivered: it is
        dropped, with a log line naming it.
        """
        self.queue.add(makeMessage("LOST"), b"x\n")
        os.unlink(self.queue.messagePath("LOST"))
        self.assertEqual(self.queue.recover(), [self.good])
        self.assertEqual(self.files("env"), ["GOOD"])
        self.assertTrue(any(e.get("id") == "LOST" for e in self.events))

    def test_corruptEnvelope(self) -> None:
        """
        An env file that cannot be read is moved, with its message, into
        C{corrupt/} for the operator, and logged; the rest of the queue is
        recovered.
        """
        self.queue.add(makeMessage("BAD"), b"the message\n")
        self.write("env/BAD", b'{"version": 1, "id": "BAD", "crea')
        self.assertEqual(self.queue.recover(), [self.good])
        self.assertEqual(self.files("env"), ["GOOD"])
        self.assertEqual(self.files("msg"), ["GOOD"])
        self.assertEqual(self.files("corrupt"), ["BAD.env", "BAD.msg"])
        with open(os.path.join(self.queue.corruptDirectory, "BAD.msg"), "rb") as f:
            self.assertEqual(f.read(), b"the message\n")
        self.assertTrue(any(e.get("name") == "BAD" for e in self.events))
        # Again: the earlier corrupt files are kept.
        self.queue.add(makeMessage("BAD"), b"again\n")
        self.write("env/BAD", b"")
        self.queue.recover()
        self.assertEqual(len(self.files("corrupt")), 4)

    def test_strangeName(self) -> None:
        """
        A file in C{env/} whose name is not a queue ID is moved aside.
        """
        self.write("env/.hidden", b"{}")
        self.assertEqual(self.queue.recover(), [self.good])
        self.assertEqual(self.files("env"), ["GOOD"])
        self.assertEqual(self.files("corrupt"), [".hidden.env"])

    def test_recoverTwice(self) -> None:
        """
        Recovering a recovered queue changes nothing.
        """
        self.assertEqual(self.queue.recover(), [self.good])
        self.assertEqual(self.queue.recover(), [self.good])
        self.assertEqual(self.content("GOOD"), b"good\n")


class QueueStoreTests(SynchronousTestCase, QueueTestMixin):
    """
    Tests for L{QueueStore}: messages received over SMTP, streamed into the
    queue.
    """

    def setUp(self) -> None:
        """
        A queue, a clock and a store that runs jobs at once and counts
        them.
        """
        self.queue = self.makeQueue()
        self.clock = Clock()
        self.clock.advance(1700000000)
        self.runner = CountingRunner()
        self.announced: list[QueuedMessage] = []
        self.store = QueueStore(self.queue, self.runner, self.clock, onQueued=self.announced.append)

    def test_interfaces(self) -> None:
        """
        The store and its messages provide the storage interfaces.
        """
        self.assertTrue(verifyObject(IMessageStore, self.store))
        self.assertTrue(
            verifyObject(ITwoPhaseMessage, self.store.receive(makeEnvelope(["bob@example.org"])))
        )
        self.assertTrue(
            verifyObject(IIncomingMessage, self.store.receive(makeEnvelope(["bob@example.org"])))
        )

    def test_single(self) -> None:
        """
        A message is queued with our Received header on top and nothing
        else added, each recipient kept exactly as given and due at once.
        """
        message = self.store.receive(makeEnvelope(["Bob@Example.ORG", "carol@example.com"]))
        self.assertIsNone(message.write(b"Subject: hi\n\n"))
        self.assertIsNone(message.write(b"body\n"))
        self.clock.advance(5)
        self.successResultOf(message.finish())
        data = RECEIVED + b"Subject: hi\n\nbody\n"
        self.assertEqual(self.content("0A1B2C"), data)
        expected = QueuedMessage(
            id="0A1B2C",
            created=1700000005.0,
            sender="Alice@Example.NET",
            size=len(data),
            clientHost="192.0.2.1",
            heloName="client.example",
            recipients=[
                QueuedRecipient("Bob@Example.ORG", nextAttempt=1700000005.0),
                QueuedRecipient("carol@example.com", nextAttempt=1700000005.0),
            ],
        )
        self.assertEqual(self.queue.list(), [expected])
        self.assertEqual(self.announced, [expected])
        self.assertEqual(self.files("tmp"), [])

    def test_nullSender(self) -> None:
        """
        The null reverse-path is stored as C{""}.
        """
        message = self.store.receive(makeEnvelope(["bob@example.org"], sender=None))
        self.successResultOf(message.finish())
        self.assertEqual(self.queue.load("0A1B2C").sender, "")
        self.assertEqual(self.content("0A1B2C"), RECEIVED)

    def test_extraHeaders(self) -> None:
        """
        The envelope's extra header fields (the message filters') are
        queued right below our Received header, so that the next hop gets
        them too, and count in the message's size.
        """
        extra = b"X-Spam-Action: no action\nX-Spam-Score: 0.1\n"
        envelope = dataclasses.replace(makeEnvelope(["bob@example.org"]), extraHeaders=extra)
        message = self.store.receive(envelope)
        message.write(b"Subject: hi\n\nbody\n")
        self.successResultOf(message.finish())
        data = RECEIVED + extra + b"Subject: hi\n\nbody\n"
        self.assertEqual(self.content("0A1B2C"), data)
        self.assertEqual(self.queue.load("0A1B2C").size, len(data))

    def test_distinctRecipients(self) -> None:
        """
        A recipient given twice (its domain in another case) is stored
        once, as first given; local parts that differ in case are distinct
        mailboxes to the next hop (RFC 5321 2.4).
        """
        message = self.store.receive(
            makeEnvelope(["bob@example.org", "bob@EXAMPLE.org", "Bob@example.org"])
        )
        self.successResultOf(message.finish())
        self.assertEqual(
            [r.address for r in self.queue.load("0A1B2C").recipients],
            ["bob@example.org", "Bob@example.org"],
        )

    def test_aliasTarget(self) -> None:
        """
        A recipient rewritten by an alias is queued for its target.
        """
        envelope = makeEnvelope(
            [("info@example.org", RemoteAddress(Address("Info.Desk", "elsewhere.example")))]
        )
        self.successResultOf(self.store.receive(envelope).finish())
        self.assertEqual(
            [r.address for r in self.queue.load("0A1B2C").recipients],
            ["Info.Desk@elsewhere.example"],
        )

    def test_lmtpRecipients(self) -> None:
        """
        A recipient of a domain delivered over LMTP is queued with the LMTP
        server's endpoint as C{via}, its address exactly as given (case and
        delimiter tag kept: the LMTP server interprets it), beside a
        relayed recipient without C{via}; the message gets only our
        C{Received} header (the LMTP server adds C{Return-Path} and
        C{Delivered-To}, docs/storage.rst).
        """
        bob = Address("Bob+Lists", "Example.ORG")
        envelope = makeEnvelope(
            [("Bob+Lists@Example.ORG", LmtpRecipient(bob, "unix:/run/dovecot/lmtp")), "carol@example.com"]
        )
        message = self.store.receive(envelope)
        message.write(b"Subject: hi\n\nbody\n")
        self.successResultOf(message.finish())
        self.assertEqual(self.content("0A1B2C"), RECEIVED + b"Subject: hi\n\nbody\n")
        queued = self.queue.load("0A1B2C")
        self.assertEqual(
            [(r.address, r.via) for r in queued.recipients],
            [("Bob+Lists@Example.ORG", "lmtp:unix:/run/dovecot/lmtp"), ("carol@example.com", None)],
        )
        self.assertEqual(self.announced, [queued])

    def test_viaRoundTrip(self) -> None:
        """
        C{via} survives the queue file; a recipient without it is written
        as before (no C{via} key), so older queue files read the same.
        """
        message = QueuedMessage(
            id="0A1B2C", created=1.0, sender="", size=0, clientHost="192.0.2.1", heloName="h",
            recipients=[QueuedRecipient("a@example.org", via="lmtp:tcp:127.0.0.1:24"), QueuedRecipient("b@example.net")],
        )
        data = encodeMessage(message)
        self.assertEqual(decodeMessage(data, "0A1B2C"), message)
        entries = json.loads(data)["recipients"]
        self.assertEqual(("via" in entries[0], "via" in entries[1]), (True, False))

    def test_refused(self) -> None:
        """
        The store refuses local recipients, an envelope without recipients
        and a queue ID that could name a path.
        """
        self.assertRaises(
            ValueError,
            self.store.receive,
            makeEnvelope([("bob@example.org", LocalMailbox("example.org", "bob"))]),
        )
        self.assertRaises(ValueError, self.store.receive, makeEnvelope([]))
        self.assertRaises(
            ValueError, self.store.receive, makeEnvelope(["bob@example.org"], queueId="../x")
        )

    def test_oneThreadHopForSmallMessage(self) -> None:
        """
        A small message costs a single trip to the thread pool, at
        C{finish}, however many chunks it has.
        """
        message = self.store.receive(makeEnvelope(["bob@example.org"]))
        for _ in range(50):
            self.assertIsNone(message.write(b"a line of text\n"))
        self.assertEqual(self.runner.calls, 0)
        self.successResultOf(message.finish())
        self.assertEqual(self.runner.calls, 1)
        self.assertEqual(len(self.queue.list()), 1)

    def test_largeMessageStreamed(self) -> None:
        """
        A large message goes to disk in chunks while it arrives; the
        writer is asked to wait while too much is pending, so memory stays
        bounded, and the message is stored whole.
        """
        runner = ManualRunner()
        store = QueueStore(self.queue, runner, self.clock)
        message = store.receive(makeEnvelope(["bob@example.org"]))
        chunk = b"x" * 1000 + b"\n"
        total = 4000
        waited = 0
        for _ in range(total):
            d = message.write(chunk)
            self.assertLessEqual(runner.heldBytes(), streaming.BACKLOG_LIMIT + len(chunk))
            if d is not None:
                waited += 1
                self.assertNoResult(d)
                runner.runAll()
                self.successResultOf(d)
        self.assertGreater(waited, 0)
        self.assertEqual(os.listdir(self.queue.temporaryDirectory), ["0A1B2C.msg"])
        d = message.finish()
        runner.runAll()
        self.successResultOf(d)
        self.assertEqual(self.content("0A1B2C"), RECEIVED + chunk * total)
        self.assertEqual(self.queue.load("0A1B2C").size, len(RECEIVED) + len(chunk) * total)

    @pytest.mark.rfc("5321", "6.1", "5321-6.1-1")
    def test_fsyncOrder(self) -> None:
        """
        The message file is fsynced before the state that commits it is
        written, and both before the env directory is.
        """
        events: list[str] = []
        realFsync = os.fsync
        realSync = durable.fsyncDirectory

        def fsync(fd: int) -> None:
            """
            Record a file fsync (a directory's is recorded by C{sync}).
            """
            if not inDirectory:
                events.append("file")
            realFsync(fd)

        def sync(path: str) -> None:
            """
            Record a directory fsync.
            """
            events.append(os.path.basename(path))
            inDirectory.append(path)
            try:
                realSync(path)
            finally:
                inDirectory.pop()

        inDirectory: list[str] = []

        self.patch(durable.os, "fsync", fsync)
        self.patch(durable, "fsyncDirectory", sync)
        message = self.store.receive(makeEnvelope(["bob@example.org"]))
        message.write(b"body\n")
        self.successResultOf(message.finish())
        self.assertEqual(events, ["file", "msg", "file", "env"])

    def failOn(self, name: str, module: Any = os, where: Optional[str] = None) -> None:
        """
        Make C{module.<name>} fail, for paths in C{where} only if given.
        """
        real = getattr(module, name)

        def failing(*args: Any) -> Any:
            """
            Fail as a broken disk would.
            """
            if where is None or any(where in str(a) for a in args):
                raise OSError(errno.EIO, "I/O error")
            return real(*args)

        self.patch(module, name, failing)

    def assertFails(self) -> None:
        """
        Finishing a message fails, leaving nothing in the queue and
        announcing nothing.
        """
        message = self.store.receive(makeEnvelope(["bob@example.org"]))
        message.write(b"body\n")
        self.failureResultOf(message.finish(), OSError)
        self.assertEmpty()
        self.assertEqual(self.announced, [])

    def test_fsyncFails(self) -> None:
        """
        An fsync that fails leaves nothing behind.
        """
        self.failOn("fsync")
        self.assertFails()

    def test_linkFails(self) -> None:
        """
        A message file that cannot be moved into C{msg/} leaves nothing
        behind.
        """
        self.failOn("link")
        self.assertFails()

    def test_envelopeWriteFails(self) -> None:
        """
        A state that cannot be written leaves nothing behind, not even the
        message file already in C{msg/}.
        """
        real = os.write
        calls = []

        def write(fd: int, data: Any) -> int:
            """
            Fail the write of the state (the third write: header, body,
            state).
            """
            calls.append(fd)
            if len(calls) == 3:
                raise OSError(errno.ENOSPC, "No space left on device")
            return real(fd, data)

        self.patch(os, "write", write)
        self.assertFails()

    def test_commitRenameFails(self) -> None:
        """
        A state that cannot be moved into C{env/} leaves nothing behind.
        """
        self.failOn("rename")
        self.assertFails()

    def test_commitFsyncFails(self) -> None:
        """
        When C{env/} cannot be fsynced after the commit, the message is
        removed again (the client was not told it is queued).
        """
        self.failOn("fsyncDirectory", durable, where=os.sep + "env")
        self.assertFails()

    def test_writeFailsWhileStreaming(self) -> None:
        """
        A write that fails while the body streams in fails the message at
        C{finish}, nothing left behind.
        """
        store = QueueStore(self.queue, runNow, self.clock, chunkSize=10)
        message = store.receive(makeEnvelope(["bob@example.org"]))
        message.write(b"x" * 20)
        self.assertEqual(self.files("tmp"), ["0A1B2C.msg"])
        self.failOn("write")
        message.write(b"y" * 20)
        self.failureResultOf(message.finish(), OSError)
        self.assertEmpty()

    def test_takenId(self) -> None:
        """
        A message whose ID is already queued fails, and the queued message
        is untouched.
        """
        self.queue.add(makeMessage(), b"the first\n")
        message = self.store.receive(makeEnvelope(["bob@example.org"]))
        message.write(b"the second\n")
        self.failureResultOf(message.finish(), FileExistsError)
        self.assertEqual(self.content("0A1B2C"), b"the first\n")
        self.assertEqual(self.queue.list(), [makeMessage(size=len(b"the first\n"))])
        self.assertEqual(self.files("tmp"), [])

    def test_directoriesRecreated(self) -> None:
        """
        A queue whose directories went missing is created again.
        """
        for sub in ("tmp", "msg", "env"):
            os.rmdir(os.path.join(self.queue.path, sub))
        self.successResultOf(self.store.receive(makeEnvelope(["bob@example.org"])).finish())
        self.assertEqual(len(self.queue.list()), 1)

    def test_abort(self) -> None:
        """
        Aborting a message, before or after its body was streamed, leaves
        nothing behind.
        """
        store = QueueStore(self.queue, runNow, self.clock, chunkSize=10)
        store.receive(makeEnvelope(["bob@example.org"])).abort()
        message = store.receive(makeEnvelope(["bob@example.org"]))
        message.write(b"x" * 100)
        message.abort()
        self.assertEmpty()

    def test_twoPhase(self) -> None:
        """
        A prepared message is written but not queued until it is
        committed.
        """
        message = self.store.receive(makeEnvelope(["bob@example.org"]))
        message.write(b"body\n")
        self.successResultOf(message.prepare())
        self.assertEqual(self.queue.list(), [])
        self.assertEqual(self.announced, [])
        self.assertEqual(self.files("msg"), ["0A1B2C"])
        self.successResultOf(message.commit())
        self.assertEqual([m.id for m in self.queue.list()], ["0A1B2C"])
        self.assertEqual(len(self.announced), 1)
        self.assertEqual(message.queued, self.announced[0])

    def test_crashWhilePrepared(self) -> None:
        """
        A crash between prepare and commit leaves a message that was never
        acknowledged; start-up removes it.
        """
        message = self.store.receive(makeEnvelope(["bob@example.org"]))
        message.write(b"body\n")
        self.successResultOf(message.prepare())
        self.assertEqual(self.queue.recover(), [])
        self.assertEmpty()

    def test_rollback(self) -> None:
        """
        Rolling back a prepared message, or a committed one, removes every
        file of it; aborting a prepared one too.
        """
        for undo in ("rollbackPrepared", "rollbackCommitted", "abortPrepared"):
            message = self.store.receive(makeEnvelope(["bob@example.org"]))
            message.write(b"body\n")
            self.successResultOf(message.prepare())
            if undo == "rollbackCommitted":
                self.successResultOf(message.commit())
            if undo == "abortPrepared":
                message.abort()
            else:
                self.successResultOf(message.rollback())
            self.assertEmpty()

    def test_commitWithoutPrepare(self) -> None:
        """
        Committing a message not prepared is a programming error.
        """
        message = self.store.receive(makeEnvelope(["bob@example.org"]))
        self.assertRaises(RuntimeError, message.commit)
        self.successResultOf(message.prepare())
        self.assertRaises(RuntimeError, message.prepare)
        self.assertRaises(RuntimeError, message.finish)

    def test_listenerFails(self) -> None:
        """
        A listener that raises is logged; the message stays queued.
        """

        def broken(message: QueuedMessage) -> None:
            """
            Fail.
            """
            raise RuntimeError("bug")

        self.store.onQueued = broken
        self.successResultOf(self.store.receive(makeEnvelope(["bob@example.org"])).finish())
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(len(self.queue.list()), 1)
