"""
Tests for L{smtpmx.routing.RoutingStore}: local recipients to the Maildirs,
remote ones to the relay queue, all or nothing.
"""

from __future__ import annotations

import dataclasses
import errno
import os
from typing import Any, Callable

import pytest
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from smtpmx import durable, streaming
from smtpmx.delivery import maildir
from smtpmx.delivery.maildir import MaildirStore
from smtpmx.address import Address
from smtpmx.envelope import LmtpRecipient, LocalMailbox
from smtpmx.interfaces import IIncomingMessage, IMessageStore
from smtpmx.relay.intake import QueueStore
from smtpmx.relay.queue import Queue
from smtpmx.relay.queueformat import QueuedMessage
from smtpmx.routing import RoutingStore
from tests.test_maildir_store import CountingRunner, ManualRunner, makeDirectory
from tests.test_queue import RECEIVED, makeEnvelope

BOB = ("bob@example.org", LocalMailbox("example.org", "bob"))
CAROL = ("Carol@Example.org", LocalMailbox("example.org", "carol"))


class RoutingStoreTests(SynchronousTestCase):
    """
    Tests for L{RoutingStore}.
    """

    def setUp(self) -> None:
        """
        A Maildir root, a queue, and a routing store over both whose jobs
        run at once.
        """
        self.root = os.path.join(makeDirectory(self), "Maildir")
        self.queue = Queue(os.path.join(makeDirectory(self), "queue"))
        self.queue.recover()
        self.announced: list[QueuedMessage] = []
        self.makeStore(CountingRunner())

    def makeStore(self, runner: Callable[..., Any], chunkSize: int = streaming.CHUNK_SIZE) -> None:
        """
        Make the store with C{runner} as the thread runner.
        """
        self.runner = runner
        self.store = RoutingStore(
            MaildirStore(self.root, runner, hostname="mx", chunkSize=chunkSize),
            QueueStore(
                self.queue, runner, Clock(), onQueued=self.announced.append, chunkSize=chunkSize
            ),
        )

    def maildirFiles(self) -> list[str]:
        """
        Every file under the Maildir root, relative to it.
        """
        return sorted(
            os.path.relpath(os.path.join(where, name), self.root)
            for where, _, names in os.walk(self.root)
            for name in names
        )

    def delivered(self, name: str) -> list[bytes]:
        """
        The messages in C{new/} of C{name}'s Maildir in C{example.org}.
        """
        directory = os.path.join(self.root, "example.org", name, "new")
        out = []
        for entry in sorted(os.listdir(directory)) if os.path.isdir(directory) else []:
            with open(os.path.join(directory, entry), "rb") as f:
                out.append(f.read())
        return out

    def queueFiles(self) -> list[str]:
        """
        Every file in the queue's C{tmp/}, C{msg/} and C{env/}.
        """
        return sorted(
            os.path.join(sub, name)
            for sub in ("tmp", "msg", "env")
            for name in os.listdir(os.path.join(self.queue.path, sub))
        )

    def assertNothingStored(self) -> None:
        """
        Neither the Maildirs nor the queue hold any file, and nothing was
        announced to the relay service.
        """
        self.assertEqual(self.maildirFiles(), [])
        self.assertEqual(self.queueFiles(), [])
        self.assertEqual(self.announced, [])

    def mixed(self) -> Any:
        """
        Begin a message for two local recipients and two remote ones.
        """
        return self.store.receive(
            makeEnvelope([BOB, "Dave@Example.NET", CAROL, "erin@example.com"])
        )

    def test_interfaces(self) -> None:
        """
        The store and its messages provide the storage interfaces.
        """
        self.assertTrue(verifyObject(IMessageStore, self.store))
        self.assertTrue(verifyObject(IIncomingMessage, self.mixed()))

    def test_localOnly(self) -> None:
        """
        A message for local recipients only goes to the Maildirs.
        """
        message = self.store.receive(makeEnvelope([BOB]))
        message.write(b"body\n")
        self.successResultOf(message.finish())
        [content] = self.delivered("bob")
        self.assertTrue(content.startswith(b"Return-Path: <Alice@Example.NET>\nDelivered-To: bob@example.org\n"))
        self.assertEqual(self.queueFiles(), [])
        self.assertEqual(self.runner.calls, 1)

    def test_remoteOnly(self) -> None:
        """
        A message for remote recipients only goes to the queue.
        """
        message = self.store.receive(makeEnvelope(["dave@example.net"]))
        message.write(b"body\n")
        self.successResultOf(message.finish())
        self.assertEqual(self.maildirFiles(), [])
        self.assertEqual([r.address for r in self.queue.load("0A1B2C").recipients], ["dave@example.net"])
        self.assertEqual(self.runner.calls, 1)

    def test_mixed(self) -> None:
        """
        A message for local and remote recipients is filed in each local
        Maildir and queued once for the remote ones; only then is it
        announced to the relay service.
        """
        message = self.mixed()
        self.assertIsNone(message.write(b"Subject: hi\n\n"))
        self.assertIsNone(message.write(b"body\n"))
        self.successResultOf(message.finish())
        [bob] = self.delivered("bob")
        [carol] = self.delivered("carol")
        self.assertTrue(bob.endswith(RECEIVED + b"Subject: hi\n\nbody\n"))
        self.assertIn(b"\nDelivered-To: Carol@Example.org\n", carol)
        with open(self.queue.messagePath("0A1B2C"), "rb") as f:
            self.assertEqual(f.read(), RECEIVED + b"Subject: hi\n\nbody\n")
        [queued] = self.queue.list()
        self.assertEqual(
            [r.address for r in queued.recipients], ["Dave@Example.NET", "erin@example.com"]
        )
        self.assertEqual(self.announced, [queued])
        # Queue prepare, Maildir finish, queue commit.
        self.assertEqual(self.runner.calls, 3)

    def test_lmtpOnly(self) -> None:
        """
        A message for recipients of an LMTP domain only goes to the queue,
        with the LMTP server as their C{via}, and nothing in the Maildir
        root: the C{250} waits for the queue copy alone (docs/storage.rst).
        """
        dora = Address("Dora", "example.org")
        message = self.store.receive(makeEnvelope([("Dora@example.org", LmtpRecipient(dora, "tcp:127.0.0.1:24"))]))
        message.write(b"body\n")
        self.successResultOf(message.finish())
        self.assertEqual(self.maildirFiles(), [])
        [queued] = self.queue.list()
        self.assertEqual([(r.address, r.via) for r in queued.recipients], [("Dora@example.org", "lmtp:tcp:127.0.0.1:24")])
        self.assertEqual(self.announced, [queued])

    def test_maildirAndLmtp(self) -> None:
        """
        A message for a Maildir domain and an LMTP domain is filed in the
        Maildir and queued for the LMTP server, all or nothing, and
        announced to the relay service only once both are done.
        """
        dora = Address("dora", "lmtp.example")
        message = self.store.receive(
            makeEnvelope([BOB, ("dora@lmtp.example", LmtpRecipient(dora, "unix:/run/dovecot/lmtp"))])
        )
        message.write(b"body\n")
        self.successResultOf(message.finish())
        self.assertEqual(len(self.delivered("bob")), 1)
        [queued] = self.queue.list()
        self.assertEqual([(r.address, r.via) for r in queued.recipients], [("dora@lmtp.example", "lmtp:unix:/run/dovecot/lmtp")])
        self.assertEqual(self.announced, [queued])
        self.assertEqual(self.runner.calls, 3)

    def test_backpressure(self) -> None:
        """
        Body bytes go to both parts; the writer is asked to wait while
        either part has too much pending, and goes on once neither has.
        """
        runner = ManualRunner()
        self.makeStore(runner, chunkSize=1000)
        message = self.mixed()
        chunk = b"y" * 999 + b"\n"
        d = None
        written = 0
        while d is None:
            d = message.write(chunk)
            written += 1
        # Both parts asked to wait, and each catches up with its first job.
        self.assertNoResult(d)
        runner.runOne()
        self.assertNoResult(d)
        runner.runOne()
        self.successResultOf(d)
        done = message.finish()
        runner.runAll()
        self.successResultOf(done)
        self.assertTrue(self.delivered("bob")[0].endswith(chunk * written))
        self.assertEqual(self.queue.load("0A1B2C").size, len(RECEIVED) + len(chunk) * written)

    @pytest.mark.rfc("5321", "4.1.1.4", "5321-4.1.1.4-3")
    def test_maildirFails(self) -> None:
        """
        When the local copies cannot be filed, the message is not queued
        either and the failure is reported.
        """

        def failing(mailbox: str, name: str, mode: int = durable.FILE_MODE) -> str:
            """
            Fail to move the second copy into C{new/}.
            """
            if mailbox.endswith("carol"):
                raise OSError(errno.EIO, "I/O error")
            return real(mailbox, name, mode)

        real = maildir.renameIntoNew
        self.patch(maildir, "renameIntoNew", failing)
        message = self.mixed()
        message.write(b"body\n")
        self.failureResultOf(message.finish(), OSError)
        self.assertNothingStored()

    @pytest.mark.rfc("5321", "4.1.1.4", "5321-4.1.1.4-3")
    def test_queuePrepareFails(self) -> None:
        """
        When the message cannot be written to the queue, nothing is filed
        locally either, even a copy whose body was already streaming.
        """

        def failing(*args: Any) -> None:
            """
            Fail to move the message into C{msg/}.
            """
            raise OSError(errno.ENOSPC, "No space left on device")

        self.makeStore(self.runner, chunkSize=10)
        message = self.mixed()
        message.write(b"x" * 100)
        self.assertNotEqual(self.maildirFiles(), [])
        self.patch(os, "link", failing)
        self.failureResultOf(message.finish(), OSError)
        self.assertNothingStored()

    @pytest.mark.rfc("5321", "4.1.1.4", "5321-4.1.1.4-3")
    def test_queueCommitFails(self) -> None:
        """
        When the message cannot be committed to the queue after the local
        copies were filed, those copies are removed again.
        """
        real = os.rename

        def failing(source: str, target: str) -> None:
            """
            Fail to move the state into C{env/}.
            """
            if os.sep + "env" + os.sep in target:
                raise OSError(errno.EIO, "I/O error")
            real(source, target)

        self.patch(os, "rename", failing)
        message = self.mixed()
        message.write(b"body\n")
        self.failureResultOf(message.finish(), OSError)
        self.assertNothingStored()
        self.assertTrue(os.path.isdir(os.path.join(self.root, "example.org", "bob", "new")))

    def test_abort(self) -> None:
        """
        Aborting a message removes what both parts streamed.
        """
        self.makeStore(self.runner, chunkSize=10)
        message = self.mixed()
        message.write(b"x" * 100)
        message.abort()
        self.assertNothingStored()

    def test_receiveRefused(self) -> None:
        """
        When one store refuses its recipients, C{receive} fails and the
        other part is given up.
        """
        self.assertRaises(
            ValueError,
            self.store.receive,
            makeEnvelope([BOB, "dave@example.net"], queueId="../x"),
        )
        self.assertRaises(
            ValueError,
            self.store.receive,
            makeEnvelope([("x@example.org", LocalMailbox("example.org", "..")), "dave@example.net"]),
        )
        self.assertNothingStored()

    def test_nullSender(self) -> None:
        """
        A message from the null reverse-path is stored for both kinds of
        recipient.
        """
        message = self.store.receive(makeEnvelope([BOB, "dave@example.net"], sender=None))
        self.successResultOf(message.finish())
        self.assertTrue(self.delivered("bob")[0].startswith(b"Return-Path: <>\n"))
        self.assertEqual(self.queue.load("0A1B2C").sender, "")

    def test_junkAndExtraHeaders(self) -> None:
        """
        A junked message for local and remote recipients goes to the local
        recipients' Junk folders and to the queue, every copy with the
        extra header fields right below Received; INBOX gets nothing.
        """
        extra = b"X-Spam: Yes\nX-Spam-Score: 9\n"
        junk = [
            (given, dataclasses.replace(mailbox, folder="Junk")) for given, mailbox in (BOB, CAROL)
        ]
        envelope = dataclasses.replace(
            makeEnvelope([junk[0], "Dave@Example.NET", junk[1]]), extraHeaders=extra
        )
        message = self.store.receive(envelope)
        self.assertIsNone(message.write(b"Subject: buy\n\nnow\n"))
        self.successResultOf(message.finish())
        self.assertEqual(self.delivered("bob"), [])
        for name in ("bob", "carol"):
            [copy] = self.delivered(os.path.join(name, ".Junk"))
            self.assertTrue(copy.endswith(RECEIVED + extra + b"Subject: buy\n\nnow\n"))
        with open(self.queue.messagePath("0A1B2C"), "rb") as f:
            self.assertEqual(f.read(), RECEIVED + extra + b"Subject: buy\n\nnow\n")
        self.assertEqual(len(self.announced), 1)

    def test_junkQueueFails(self) -> None:
        """
        When the queue's part fails, the Junk copies already filed are
        taken back out: all or nothing holds across folders and the queue.
        """

        def broken(path: str) -> None:
            """
            Fail the fsync that commits the queue's part, which comes after
            the local copies are filed.
            """
            synced.append(path)
            if path == self.queue.envelopeDirectory:
                raise OSError(errno.EIO, "Input/output error")
            real(path)

        synced: list[str] = []

        real = durable.fsyncDirectory
        self.patch(durable, "fsyncDirectory", broken)
        junk = [(given, dataclasses.replace(mailbox, folder="Junk")) for given, mailbox in (BOB, CAROL)]
        message = self.store.receive(makeEnvelope([junk[0], "dave@example.net", junk[1]]))
        message.write(b"\nhi\n")
        self.assertEqual(self.failureResultOf(message.finish()).value.errno, errno.EIO)
        junkNew = os.path.join(self.root, "example.org", "bob", ".Junk", "new")
        self.assertIn(junkNew, synced[: synced.index(self.queue.envelopeDirectory)])
        self.assertEqual([f for f in self.maildirFiles() if not f.endswith("maildirfolder")], [])
        self.assertEqual(self.announced, [])
