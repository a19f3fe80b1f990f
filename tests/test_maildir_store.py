"""
Tests for L{smtpmx.delivery.maildir}: the Maildir layout, unique names,
L{deliverBytes} and the L{MaildirStore} that delivers into Maildirs,
durable and all or nothing (C{docs/storage.rst}), on the streaming engine
of L{smtpmx.streaming}.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import threading
from typing import Any, Callable, Optional

import pytest
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.logger import globalLogPublisher
from twisted.python import threadable
from twisted.python.threadpool import ThreadPool
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from smtpmx import durable, streaming
from smtpmx.address import Address
from smtpmx.delivery import maildir
from smtpmx.delivery.maildir import MaildirStore
from smtpmx.envelope import Envelope, LocalMailbox, Recipient, RemoteAddress
from smtpmx.interfaces import IIncomingMessage, IMessageStore, ITwoPhaseMessage
from tests.helpers import makeDirectory, namesMadeInThreads, recordDirectorySyncs, recordFsyncs

RECEIVED = b"Received: from client.example (client.example [192.0.2.1])\n\tby mx.example.org with ESMTP id ABC123\n"


def runNow(f: Callable[..., Any], *args: Any, **kwargs: Any) -> Deferred[Any]:
    """
    A thread runner that runs C{f} at once, for synchronous tests.
    """
    try:
        return succeed(f(*args, **kwargs))
    except BaseException:
        return fail()


class CountingRunner:
    """
    A thread runner that runs each job at once and counts them.
    """

    def __init__(self) -> None:
        """
        Nothing run yet.
        """
        self.calls = 0

    def __call__(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> Deferred[Any]:
        """
        Run C{f} now.
        """
        self.calls += 1
        return runNow(f, *args, **kwargs)


class ManualRunner:
    """
    A thread runner whose jobs wait until the test runs them, to see what
    is queued (and how much memory it holds) at any moment.
    """

    def __init__(self) -> None:
        """
        No job queued yet.
        """
        self.jobs: list[tuple[Callable[..., Any], tuple[Any, ...], Deferred[Any]]] = []
        self.calls = 0

    def __call__(self, f: Callable[..., Any], *args: Any) -> Deferred[Any]:
        """
        Queue C{f}.
        """
        self.calls += 1
        d: Deferred[Any] = Deferred()
        self.jobs.append((f, args, d))
        return d

    def heldBytes(self) -> int:
        """
        Body bytes held by the queued jobs.
        """
        return sum(len(a) for _, args, _ in self.jobs for a in args if isinstance(a, bytes))

    def runOne(self) -> None:
        """
        Run the oldest queued job.
        """
        f, args, d = self.jobs.pop(0)
        runNow(f, *args).chainDeferred(d)

    def runAll(self) -> None:
        """
        Run jobs until none is queued.
        """
        while self.jobs:
            self.runOne()


def makeEnvelope(
    recipients: list[tuple[str, Any]], sender: Optional[Address] = Address("Alice", "Example.NET")
) -> Envelope:
    """
    An envelope for C{recipients}: pairs of the address as given and a
    destination (a L{LocalMailbox}, or C{(domain, name)}).
    """
    return Envelope(
        queueId="ABC123",
        clientHost="192.0.2.1",
        heloName="client.example",
        reversePath=sender,
        recipients=[
            Recipient(
                Address(*given.rsplit("@", 1)),
                LocalMailbox(*where) if isinstance(where, tuple) else where,
            )
            for given, where in recipients
        ],
        received=RECEIVED,
    )


class StoreTestMixin:
    """
    A Maildir root and helpers to look at what was delivered.
    """

    root: str

    def listing(self, domain: str, name: str, sub: str) -> list[str]:
        """
        The files in one subdirectory of a Maildir.
        """
        path = os.path.join(self.root, domain, name, sub)
        return sorted(os.listdir(path)) if os.path.isdir(path) else []

    def delivered(self, domain: str, name: str) -> list[bytes]:
        """
        The contents of the files in a Maildir's C{new/}.
        """
        out = []
        for entry in self.listing(domain, name, "new"):
            with open(os.path.join(self.root, domain, name, "new", entry), "rb") as f:
                out.append(f.read())
        return out

    def allFiles(self) -> list[str]:
        """
        Every file (not directory) under the root.
        """
        return [
            os.path.join(where, f) for where, _, files in os.walk(self.root) for f in files
        ]


class UniqueNameTests(SynchronousTestCase):
    """
    Tests for L{maildir.uniqueName}.
    """

    def test_format(self) -> None:
        """
        Names have the Maildir form C{<secs>.M<usec>P<pid>Q<n>.<host>}.
        """
        name = maildir.uniqueName("mx.example.org")
        match = re.fullmatch(r"(\d+)\.M(\d+)P(\d+)Q(\d+)\.mx\.example\.org", name)
        self.assertIsNotNone(match)
        assert match is not None
        self.assertEqual(int(match.group(3)), os.getpid())
        self.assertLess(int(match.group(2)), 1_000_000)

    def test_escapesHost(self) -> None:
        """
        A C{/} or C{:} in the host name is escaped, so the name stays one
        path component and cannot be mistaken for Maildir flags.
        """
        name = maildir.uniqueName("a/b:c")
        self.assertTrue(name.endswith(".a\\057b\\072c"))
        self.assertNotIn("/", name)
        self.assertNotIn(":", name)

    def test_defaultHost(self) -> None:
        """
        Without a host name, this host's own is used.
        """
        import socket

        host = socket.gethostname().replace("/", "\\057").replace(":", "\\072")
        self.assertTrue(maildir.uniqueName().endswith("." + host))

    def test_uniqueAcrossThreads(self) -> None:
        """
        Names made at the same moment in many threads never collide.
        """
        names = namesMadeInThreads(lambda: maildir.uniqueName("h"))
        self.assertEqual(len(names), 16000)
        self.assertEqual(len(set(names)), 16000)


class EnsureMaildirTests(SynchronousTestCase):
    """
    Tests for L{maildir.ensureMaildir}.
    """

    def setUp(self) -> None:
        """
        Record every directory fsynced.
        """
        self.root = makeDirectory(self)
        self.synced = recordDirectorySyncs(self)

    def test_creates(self) -> None:
        """
        A Maildir and its missing parents are created, with private
        C{tmp}, C{new} and C{cur} directories.
        """
        path = os.path.join(self.root, "example.org", "bob")
        maildir.ensureMaildir(path)
        for sub in ("tmp", "new", "cur"):
            mode = os.stat(os.path.join(path, sub)).st_mode
            self.assertTrue(stat.S_ISDIR(mode))
            self.assertEqual(stat.S_IMODE(mode), 0o700)

    def test_fsyncsParents(self) -> None:
        """
        Every directory that received a new entry is fsynced once, so the
        new Maildir survives a crash.
        """
        domain = os.path.join(self.root, "example.org")
        path = os.path.join(domain, "bob")
        maildir.ensureMaildir(path)
        self.assertEqual(sorted(self.synced), sorted([self.root, domain, path]))

    def test_existing(self) -> None:
        """
        An existing Maildir is left alone and nothing is fsynced.
        """
        path = os.path.join(self.root, "bob")
        maildir.ensureMaildir(path)
        open(os.path.join(path, "new", "m"), "wb").close()
        del self.synced[:]
        maildir.ensureMaildir(path)
        self.assertEqual(self.synced, [])
        self.assertEqual(os.listdir(os.path.join(path, "new")), ["m"])

    def test_repairs(self) -> None:
        """
        A Maildir missing one of its subdirectories gets it back.
        """
        path = os.path.join(self.root, "bob")
        maildir.ensureMaildir(path)
        os.rmdir(os.path.join(path, "cur"))
        del self.synced[:]
        maildir.ensureMaildir(path)
        self.assertTrue(os.path.isdir(os.path.join(path, "cur")))
        self.assertEqual(self.synced, [path])


class MailboxPathTests(SynchronousTestCase):
    """
    Tests for L{maildir.mailboxPath}.
    """

    def test_layout(self) -> None:
        """
        A mailbox lives at C{<root>/<domain>/<name>}.
        """
        self.assertEqual(
            maildir.mailboxPath("/srv/mail", LocalMailbox("example.org", "bob")),
            "/srv/mail/example.org/bob",
        )

    def test_relativeRoot(self) -> None:
        """
        A relative root is taken from the working directory.
        """
        self.assertEqual(
            maildir.mailboxPath("Maildir", LocalMailbox("localhost", "postmaster")),
            os.path.join(os.getcwd(), "Maildir", "localhost", "postmaster"),
        )

    def test_neverEscapes(self) -> None:
        """
        No name or domain can point outside the Maildir root.
        """
        for domain, name in [
            ("example.org", ".."),
            ("example.org", "."),
            ("..", "bob"),
            ("example.org", "../../etc"),
            ("example.org", "/etc"),
            ("/", "bob"),
            ("example.org", "a\\b"),
            ("example.org", ""),
            ("", "bob"),
            ("example.org", "a\x00b"),
            ("example.org", ".hidden"),
        ]:
            self.assertRaises(
                ValueError, maildir.mailboxPath, "/srv/mail", LocalMailbox(domain, name)
            )


class DeliverBytesTests(SynchronousTestCase, StoreTestMixin):
    """
    Tests for L{maildir.deliverBytes}.
    """

    def test_deliver(self) -> None:
        """
        A message in memory lands in C{new/} of a Maildir created for it,
        with nothing left in C{tmp/}.
        """
        self.root = makeDirectory(self)
        path = maildir.mailboxPath(self.root, LocalMailbox("example.org", "bob"))
        target = maildir.deliverBytes(path, b"Subject: hi\n\nhello\n", "mx")
        self.assertEqual(os.path.dirname(target), os.path.join(path, "new"))
        self.assertEqual(self.delivered("example.org", "bob"), [b"Subject: hi\n\nhello\n"])
        self.assertEqual(self.listing("example.org", "bob", "tmp"), [])

    def test_deliverRepairs(self) -> None:
        """
        A Maildir that lost its C{new/} gets it back and the message.
        """
        self.root = makeDirectory(self)
        path = maildir.mailboxPath(self.root, LocalMailbox("example.org", "bob"))
        maildir.ensureMaildir(path)
        os.rmdir(os.path.join(path, "new"))
        maildir.deliverBytes(path, b"x\n", "mx")
        self.assertEqual(self.delivered("example.org", "bob"), [b"x\n"])
        self.assertEqual(self.listing("example.org", "bob", "tmp"), [])

    def test_deliverFails(self) -> None:
        """
        When C{new/} cannot be fsynced the message is taken back out, so a
        failed delivery leaves nothing to be read twice.
        """
        self.root = makeDirectory(self)
        path = maildir.mailboxPath(self.root, LocalMailbox("example.org", "bob"))
        maildir.ensureMaildir(path)

        def broken(directory: str) -> None:
            """
            Fail as a broken disk would.
            """
            raise OSError(errno.EIO, "I/O error")

        self.patch(durable, "fsyncDirectory", broken)
        self.assertRaises(OSError, maildir.deliverBytes, path, b"x\n", "mx")
        self.assertEqual(self.allFiles(), [])


class MessageFilesTests(SynchronousTestCase):
    """
    L{streaming.MessageFiles}, the blocking side every store gives.
    """

    def test_stepsRequired(self) -> None:
        """
        A store's files that leave out one of the steps cannot be made at
        all, rather than failing in the middle of a message.
        """

        class NoPublish(streaming.MessageFiles):
            """
            Every step but L{streaming.MessageFiles.publish}.
            """

            def appendBody(self, data: bytes) -> None:
                """
                Nothing to append to.
                """

            def seal(self) -> None:
                """
                Nothing to seal.
                """

            def discard(self) -> list[BaseException]:
                """
                Nothing to remove.
                """
                return []

        self.assertRaises(TypeError, NoPublish)


class StreamingStateTests(SynchronousTestCase, StoreTestMixin):
    """
    The states of L{streaming.StreamingMessage}, one L{streaming.State}
    each, as a Maildir message goes through them.
    """

    def setUp(self) -> None:
        """
        A store with a thread runner whose jobs run when told.
        """
        self.root = makeDirectory(self)
        self.runner = ManualRunner()
        self.store = MaildirStore(self.root, self.runner, hostname="mx")
        self.envelope = makeEnvelope([("bob@example.org", ("example.org", "bob"))])

    def test_finish(self) -> None:
        """
        A message is open until finished, finishing while its job runs,
        then done.
        """
        message = self.store.receive(self.envelope)
        self.assertIs(message.state, streaming.State.OPEN)
        d = message.finish()
        self.assertIs(message.state, streaming.State.FINISHING)
        self.runner.runAll()
        self.successResultOf(d)
        self.assertIs(message.state, streaming.State.DONE)

    def test_twoPhases(self) -> None:
        """
        The two-phase path goes through preparing, prepared, committing and
        done; a rollback then removes the message.
        """
        message = self.store.receive(self.envelope)
        d = message.prepare()
        self.assertIs(message.state, streaming.State.PREPARING)
        self.runner.runAll()
        self.successResultOf(d)
        self.assertIs(message.state, streaming.State.PREPARED)
        d = message.commit()
        self.assertIs(message.state, streaming.State.COMMITTING)
        self.runner.runAll()
        self.successResultOf(d)
        self.assertIs(message.state, streaming.State.DONE)
        self.assertEqual(len(self.delivered("example.org", "bob")), 1)
        d = message.rollback()
        self.assertIs(message.state, streaming.State.ROLLED_BACK)
        self.runner.runAll()
        self.successResultOf(d)
        self.assertEqual(self.allFiles(), [])

    def test_failedAndAborted(self) -> None:
        """
        A step that fails leaves the message failed; an abort leaves it
        aborted, and nothing can be written or finished after either.
        """
        message = self.store.receive(self.envelope)
        d = message.prepare()

        def full(*args: object) -> None:
            """
            Fail as a full disk would.
            """
            raise OSError(errno.ENOSPC, "No space left on device")

        self.patch(durable, "fsyncFile", full)
        self.runner.runAll()
        self.failureResultOf(d, OSError)
        self.assertIs(message.state, streaming.State.FAILED)
        self.assertRaises(RuntimeError, message.commit)
        finished = self.store.receive(self.envelope)
        d = finished.finish()
        self.runner.runAll()
        self.failureResultOf(d, OSError)
        self.assertIs(finished.state, streaming.State.FAILED)
        other = self.store.receive(self.envelope)
        other.abort()
        self.assertIs(other.state, streaming.State.ABORTED)
        self.assertIsNone(other.write(b"x"))
        self.assertRaises(RuntimeError, other.finish)
        self.assertEqual(self.allFiles(), [])


class MaildirStoreTests(SynchronousTestCase, StoreTestMixin):
    """
    Tests for L{MaildirStore} with a synchronous thread runner.
    """

    def setUp(self) -> None:
        """
        An empty Maildir root and a store on it.
        """
        self.root = makeDirectory(self)
        self.runner = CountingRunner()
        self.store = MaildirStore(self.root, self.runner, hostname="mx.example.org")

    def deliver(self, envelope: Envelope, *chunks: bytes) -> None:
        """
        Store a message and check that it succeeded.
        """
        message = self.store.receive(envelope)
        for chunk in chunks:
            self.assertIsNone(message.write(chunk))
        self.assertIsNone(self.successResultOf(message.finish()))

    def test_smallMessageOneWrite(self) -> None:
        """
        A small message is written with its headers in one write: one
        system call fewer in the thread for every message.
        """
        writes: list[int] = []
        original = durable.writeAll
        self.patch(durable, "writeAll", lambda fd, data: (writes.append(len(data)), original(fd, data)))
        envelope = makeEnvelope([("bob@example.org", ("example.org", "bob"))])
        self.deliver(envelope, b"Subject: hi\n", b"\nbody\n")
        [content] = self.delivered("example.org", "bob")
        self.assertTrue(content.endswith(b"Subject: hi\n\nbody\n"))
        self.assertEqual(writes, [len(content)])

    def test_interfaces(self) -> None:
        """
        The store and its messages provide the interfaces the server uses.
        """
        self.assertTrue(verifyObject(IMessageStore, self.store))
        message = self.store.receive(makeEnvelope([("bob@example.org", ("example.org", "bob"))]))
        self.assertTrue(verifyObject(IIncomingMessage, message))
        self.assertTrue(verifyObject(ITwoPhaseMessage, message))

    @pytest.mark.rfc("5321", "4.4", "5321-4.4-7")
    def test_single(self) -> None:
        """
        A message for one recipient is one private file in C{new/},
        headers first then the body exactly as written, and nothing is
        left in C{tmp/}.
        """
        self.deliver(
            makeEnvelope([("Bob@Example.org", ("example.org", "bob"))]),
            b"Subject: hi\n",
            b"\nhello\n.. not a dot\n",
        )
        self.assertEqual(
            self.delivered("example.org", "bob"),
            [
                b"Return-Path: <Alice@Example.NET>\n"
                b"Delivered-To: Bob@Example.org\n"
                + RECEIVED
                + b"Subject: hi\n\nhello\n.. not a dot\n"
            ],
        )
        self.assertEqual(self.listing("example.org", "bob", "tmp"), [])
        [name] = self.listing("example.org", "bob", "new")
        self.assertTrue(name.endswith(".mx.example.org"))
        mode = os.stat(os.path.join(self.root, "example.org", "bob", "new", name)).st_mode
        self.assertEqual(stat.S_IMODE(mode), 0o600)

    def test_createsMaildir(self) -> None:
        """
        A Maildir is created, with C{tmp}, C{new} and C{cur}, on its first
        delivery.
        """
        self.deliver(makeEnvelope([("bob@example.org", ("example.org", "bob"))]), b"x\n")
        for sub in ("tmp", "new", "cur"):
            self.assertTrue(os.path.isdir(os.path.join(self.root, "example.org", "bob", sub)))

    @pytest.mark.rfc("5321", "4.4", "5321-4.4-7")
    def test_nullSender(self) -> None:
        """
        A bounce (null reverse-path) gets C{Return-Path: <>}.
        """
        self.deliver(makeEnvelope([("bob@example.org", ("example.org", "bob"))], None), b"x\n")
        [content] = self.delivered("example.org", "bob")
        self.assertTrue(content.startswith(b"Return-Path: <>\nDelivered-To: bob@example.org\n"))

    def test_emptyBody(self) -> None:
        """
        A message with an empty body is stored with just its headers.
        """
        self.deliver(makeEnvelope([("bob@example.org", ("example.org", "bob"))]))
        self.assertEqual(
            self.delivered("example.org", "bob"),
            [b"Return-Path: <Alice@Example.NET>\nDelivered-To: bob@example.org\n" + RECEIVED],
        )

    def test_severalMailboxes(self) -> None:
        """
        Each recipient gets its own copy in its own Maildir, with its own
        Delivered-To and the same body.
        """
        self.deliver(
            makeEnvelope(
                [
                    ("Bob@example.org", ("example.org", "bob")),
                    ("carol@Other.example", ("other.example", "carol")),
                    ("dave@example.org", ("example.org", "dave")),
                ]
            ),
            b"Subject: all\n\nbody\n",
        )
        for domain, name, given in [
            ("example.org", "bob", b"Bob@example.org"),
            ("other.example", "carol", b"carol@Other.example"),
            ("example.org", "dave", b"dave@example.org"),
        ]:
            self.assertEqual(
                self.delivered(domain, name),
                [
                    b"Return-Path: <Alice@Example.NET>\nDelivered-To: "
                    + given
                    + b"\n"
                    + RECEIVED
                    + b"Subject: all\n\nbody\n"
                ],
            )
            self.assertEqual(self.listing(domain, name, "tmp"), [])

    def test_sameMailboxDistinctDeliveredTo(self) -> None:
        """
        Two recipients that land in one Maildir under different addresses
        (a tag, an alias) get a copy each, each saying whom it was for.
        """
        self.deliver(
            makeEnvelope(
                [
                    ("bob+lists@example.org", ("example.org", "bob")),
                    ("bob@example.org", ("example.org", "bob")),
                ]
            ),
            b"body\n",
        )
        contents = self.delivered("example.org", "bob")
        self.assertEqual(len(contents), 2)
        self.assertEqual(
            sorted(c.split(b"\n")[1] for c in contents),
            [b"Delivered-To: bob+lists@example.org", b"Delivered-To: bob@example.org"],
        )

    def test_duplicateRecipient(self) -> None:
        """
        A recipient given twice, in whatever case, gets a single copy,
        which names it as it was first given.
        """
        self.deliver(
            makeEnvelope(
                [
                    ("Bob@Example.org", ("example.org", "bob")),
                    ("bob@example.org", ("example.org", "bob")),
                ]
            ),
            b"body\n",
        )
        [content] = self.delivered("example.org", "bob")
        self.assertIn(b"\nDelivered-To: Bob@Example.org\n", content)

    def test_oneThreadHopForSmallMessage(self) -> None:
        """
        A small message costs a single trip to the thread pool, at
        C{finish}, however many recipients and chunks it has.
        """
        message = self.store.receive(
            makeEnvelope(
                [
                    ("bob@example.org", ("example.org", "bob")),
                    ("carol@example.org", ("example.org", "carol")),
                ]
            )
        )
        for _ in range(50):
            self.assertIsNone(message.write(b"a line of text\n"))
        self.assertEqual(self.runner.calls, 0)
        self.successResultOf(message.finish())
        self.assertEqual(self.runner.calls, 1)
        self.assertEqual(len(self.delivered("example.org", "carol")), 1)

    @pytest.mark.rfc("5321", "6.1", "5321-6.1-1")
    def test_fsync(self) -> None:
        """
        Every file is fsynced before any C{new/} directory, and each
        C{new/} directory is fsynced once after the renames.
        """
        for name in ("bob", "carol"):
            os.makedirs(os.path.join(self.root, "example.org", name, "tmp"))
            os.makedirs(os.path.join(self.root, "example.org", name, "new"))
        synced = recordFsyncs(self)
        self.deliver(
            makeEnvelope(
                [
                    ("bob@example.org", ("example.org", "bob")),
                    ("bob+x@example.org", ("example.org", "bob")),
                    ("carol@example.org", ("example.org", "carol")),
                ]
            ),
            b"body\n",
        )
        files = {
            os.stat(path).st_ino for path in self.allFiles()
        }
        directories = {
            os.stat(os.path.join(self.root, "example.org", name, "new")).st_ino
            for name in ("bob", "carol")
        }
        self.assertEqual(len(files), 3)
        self.assertEqual([kind for kind, _ in synced], ["file"] * 3 + ["dir"] * 2)
        self.assertEqual({ino for kind, ino in synced if kind == "file"}, files)
        self.assertEqual({ino for kind, ino in synced if kind == "dir"}, directories)

    def test_remoteRecipient(self) -> None:
        """
        A recipient to relay is not this store's to deliver.
        """
        envelope = makeEnvelope([("x@elsewhere.example", RemoteAddress(Address("x", "elsewhere.example")))])
        self.assertRaises(ValueError, self.store.receive, envelope)

    def test_unsafeMailbox(self) -> None:
        """
        A mailbox that would lie outside the root is refused before
        anything touches the disk.
        """
        envelope = makeEnvelope([("x@example.org", ("example.org", "../../escape"))])
        self.assertRaises(ValueError, self.store.receive, envelope)
        self.assertEqual(os.listdir(self.root), [])
        self.assertEqual(self.runner.calls, 0)

    def test_writeAfterFinish(self) -> None:
        """
        Writing to a finished message is a programming error.
        """
        message = self.store.receive(makeEnvelope([("bob@example.org", ("example.org", "bob"))]))
        message.finish()
        self.assertRaises(RuntimeError, message.write, b"late")

    def assertNothingLeft(self) -> None:
        """
        No file at all is left under the root: not in any C{new/}, not in
        any C{tmp/}.
        """
        self.assertEqual(self.allFiles(), [])

    def failedFinish(self, envelope: Envelope, *chunks: bytes) -> BaseException:
        """
        Store a message whose storing fails, and return the error.
        """
        message = self.store.receive(envelope)
        for chunk in chunks:
            message.write(chunk)
        return self.failureResultOf(message.finish()).value

    def threeRecipients(self) -> Envelope:
        """
        An envelope for three recipients in three Maildirs.
        """
        return makeEnvelope(
            [
                ("bob@example.org", ("example.org", "bob")),
                ("carol@example.org", ("example.org", "carol")),
                ("dave@example.org", ("example.org", "dave")),
            ]
        )

    @pytest.mark.rfc("5321", "4.1.1.4", "5321-4.1.1.4-3")
    def test_renameFails(self) -> None:
        """
        When the second copy cannot be moved into C{new/}, the first copy,
        already there, is taken back out: nothing is delivered at all, and
        the original error is reported.
        """
        real = os.rename
        calls: list[str] = []

        def rename(source: str, target: str) -> None:
            """
            Fail the second rename.
            """
            calls.append(target)
            if len(calls) == 2:
                raise OSError(errno.EIO, "Input/output error")
            real(source, target)

        self.patch(maildir.os, "rename", rename)
        error = self.failedFinish(self.threeRecipients(), b"body\n")
        self.assertEqual(error.errno, errno.EIO)
        self.assertEqual(len(calls), 2)
        self.assertNothingLeft()

    def test_secondMailboxUnwritable(self) -> None:
        """
        When the second mailbox's C{tmp/} cannot be written to, nothing is
        delivered to anyone.
        """
        real = os.open
        unwritable = os.path.join(self.root, "example.org", "carol", "tmp")

        def open_(path: str, flags: int, mode: int = 0o777, **kw: Any) -> int:
            """
            Refuse to create files in carol's C{tmp/}.
            """
            if os.path.dirname(path) == unwritable and flags & os.O_CREAT:
                raise PermissionError(errno.EACCES, "Permission denied", path)
            return real(path, flags, mode, **kw)

        self.patch(os, "open", open_)
        error = self.failedFinish(self.threeRecipients(), b"body\n")
        self.assertIsInstance(error, PermissionError)
        self.assertNothingLeft()

    def test_copyFails(self) -> None:
        """
        A full disk while copying the body for another recipient leaves
        nothing behind and reports the full disk.
        """

        def full(*args: object) -> None:
            """
            Fail as a full disk would.
            """
            raise OSError(errno.ENOSPC, "No space left on device")

        self.patch(durable, "copyRange", full)
        error = self.failedFinish(self.threeRecipients(), b"body\n")
        self.assertEqual(error.errno, errno.ENOSPC)
        self.assertNothingLeft()

    @pytest.mark.rfc("5321", "4.1.1.4", "5321-4.1.1.4-3")
    def test_directoryFsyncFails(self) -> None:
        """
        When a C{new/} directory cannot be fsynced, the copies already
        renamed into every C{new/} are removed.
        """
        directories: list[str] = []
        realDirectory = durable.fsyncDirectory

        def fsyncDirectory(path: str) -> None:
            """
            Fail the second directory fsync.
            """
            directories.append(path)
            if len(directories) == 2:
                raise OSError(errno.EIO, "Input/output error")
            realDirectory(path)

        self.patch(durable, "fsyncDirectory", fsyncDirectory)
        error = self.failedFinish(self.threeRecipients(), b"body\n")
        self.assertEqual(error.errno, errno.EIO)
        self.assertNothingLeft()

    def test_writeFailsWhileStreaming(self) -> None:
        """
        A full disk in the middle of a large message: the writer is never
        left waiting, C{finish} reports the full disk and nothing is left.
        """
        runner = ManualRunner()
        store = MaildirStore(self.root, runner, hostname="mx")
        message = store.receive(self.threeRecipients())
        real = os.write
        writes: list[int] = []

        def write(fd: int, data: Any) -> int:
            """
            Fail the third write as a full disk would.
            """
            writes.append(len(data))
            if len(writes) == 3:
                raise OSError(errno.ENOSPC, "No space left on device")
            return real(fd, data)

        self.patch(os, "write", write)
        chunk = b"x" * 65535 + b"\n"
        waits = 0
        for _ in range(40):
            d = message.write(chunk)
            if d is not None:
                waits += 1
                runner.runAll()
                self.successResultOf(d)
        self.assertGreater(waits, 0)
        finished = message.finish()
        runner.runAll()
        self.assertEqual(self.failureResultOf(finished).value.errno, errno.ENOSPC)
        self.assertNothingLeft()

    def test_largeMessageStreamed(self) -> None:
        """
        A 5 MB message goes to disk in several jobs while it arrives; the
        writer is asked to wait when too much is pending, and the bytes
        held in memory never pass the limit by more than a chunk.
        """
        runner = ManualRunner()
        store = MaildirStore(self.root, runner, hostname="mx")
        message = store.receive(
            makeEnvelope(
                [
                    ("bob@example.org", ("example.org", "bob")),
                    ("carol@example.org", ("example.org", "carol")),
                ]
            )
        )
        chunk = bytes(range(256)) * 256  # 64 KiB
        total = 5 * 1024 * 1024 // len(chunk) + 1
        tmp = os.path.join(self.root, "example.org", "bob", "tmp")
        headerSize = len(b"Return-Path: <Alice@Example.NET>\nDelivered-To: bob@example.org\n" + RECEIVED)

        def onDisk() -> int:
            """
            Body bytes of bob's copy in C{tmp/} so far.
            """
            files = os.listdir(tmp) if os.path.isdir(tmp) else []
            return sum(os.path.getsize(os.path.join(tmp, f)) - headerSize for f in files)

        waits = 0
        for i in range(1, total + 1):
            d = message.write(chunk)
            # What is written but not yet on disk is held in memory.
            held = i * len(chunk) - onDisk()
            self.assertLessEqual(held, streaming.BACKLOG_LIMIT + len(chunk))
            if d is not None:
                waits += 1
                self.assertNoResult(d)
                runner.runOne()
                while not d.called:
                    runner.runOne()
        self.assertGreater(waits, 0)
        # The body is already on disk, in tmp/, before the end of the data,
        # written in jobs of about 256 KiB.
        runner.runAll()
        self.assertEqual(runner.calls, total * len(chunk) // streaming.CHUNK_SIZE)
        self.assertGreater(onDisk(), 4 * 1024 * 1024)
        self.assertEqual(self.listing("example.org", "carol", "tmp"), [])
        finished = message.finish()
        runner.runAll()
        self.successResultOf(finished)
        for name in ("bob", "carol"):
            [content] = self.delivered("example.org", name)
            headers = (
                b"Return-Path: <Alice@Example.NET>\nDelivered-To: "
                + name.encode()
                + b"@example.org\n"
                + RECEIVED
            )
            self.assertEqual(len(content), len(headers) + total * len(chunk))
            self.assertTrue(content == headers + chunk * total)
            self.assertEqual(self.listing("example.org", name, "tmp"), [])

    def test_abortBeforeWriting(self) -> None:
        """
        Aborting a message that never reached the disk costs no I/O at all.
        """
        message = self.store.receive(self.threeRecipients())
        message.write(b"some body\n")
        message.abort()
        self.assertEqual(self.runner.calls, 0)
        self.assertNothingLeft()

    def test_abortAfterStreaming(self) -> None:
        """
        Aborting a message part of which is already on disk removes it,
        once the jobs under way are done.
        """
        runner = ManualRunner()
        store = MaildirStore(self.root, runner, hostname="mx")
        message = store.receive(self.threeRecipients())
        chunk = b"y" * (300 * 1024)
        message.write(chunk)
        runner.runAll()
        self.assertEqual(len(self.allFiles()), 1)
        message.write(chunk)
        self.assertEqual(len(runner.jobs), 1)
        message.abort()
        # The discard waits for the write job under way.
        self.assertEqual(len(runner.jobs), 1)
        runner.runAll()
        self.assertNothingLeft()
        self.assertIsNone(message.write(b"late"))
        message.abort()
        self.assertEqual(runner.jobs, [])

    def test_abortNeverRaises(self) -> None:
        """
        An abort whose clean-up fails does not raise; it logs.
        """
        message = self.store.receive(self.threeRecipients())
        message.write(b"z" * (300 * 1024))
        self.assertEqual(len(self.allFiles()), 1)
        self.patch(
            durable, "removeFile", lambda path: OSError(errno.EROFS, "Read-only file system")
        )
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        message.abort()
        self.assertEqual(self.flushLoggedErrors(), [])
        self.assertEqual(len(events), 1)
        self.assertEqual(events[0]["problem"].errno, errno.EROFS)

    def test_abortAfterFinish(self) -> None:
        """
        Aborting a message after it was stored does not remove it.
        """
        message = self.store.receive(self.threeRecipients())
        message.write(b"body\n")
        self.successResultOf(message.finish())
        message.abort()
        self.assertEqual(len(self.delivered("example.org", "carol")), 1)


class ThreadPoolTests(TestCase, StoreTestMixin):
    """
    L{MaildirStore} with a real thread pool and the real reactor.
    """

    def test_offReactorThread(self) -> Deferred[None]:
        """
        Every piece of disk I/O runs in the thread pool, never on the
        reactor thread, and the message is delivered.
        """
        from twisted.internet import reactor

        self.root = makeDirectory(self)
        pool = ThreadPool(minthreads=1, maxthreads=4, name="test-store")
        pool.start()
        self.addCleanup(pool.stop)
        inReactorThread: list[bool] = []
        jobThreads: set[int] = set()
        reactorThread = threading.get_ident()

        def runBlocking(f: Callable[..., Any], *args: Any, **kwargs: Any) -> Deferred[Any]:
            """
            Run C{f} in the pool, noting whether it ran on the reactor thread.
            """
            def job() -> Any:
                """
                Note the thread, then run C{f}.
                """
                inReactorThread.append(threadable.isInIOThread())
                jobThreads.add(threading.get_ident())
                return f(*args, **kwargs)

            return deferToThreadPool(reactor, pool, job)

        store = MaildirStore(self.root, runBlocking, hostname="mx")
        message = store.receive(
            makeEnvelope(
                [
                    ("bob@example.org", ("example.org", "bob")),
                    ("carol@example.org", ("example.org", "carol")),
                ]
            )
        )
        body = b"0123456789abcdef" * (64 * 1024)  # 1 MiB, several jobs
        waits: list[Deferred[None]] = []
        for i in range(0, len(body), 32 * 1024):
            d = message.write(body[i : i + 32 * 1024])
            if d is not None:
                waits.append(d)

        def check(ignored: object) -> None:
            """
            Check where the jobs ran and what was delivered.
            """
            self.assertTrue(threadable.isInIOThread())
            self.assertEqual(threading.get_ident(), reactorThread)
            self.assertNotIn(reactorThread, jobThreads)
            self.assertGreater(len(inReactorThread), 1)
            self.assertEqual(set(inReactorThread), {False})
            for name in ("bob", "carol"):
                [content] = self.delivered("example.org", name)
                self.assertTrue(content.endswith(body))
                self.assertEqual(self.listing("example.org", name, "tmp"), [])

        return message.finish().addCallback(check)
