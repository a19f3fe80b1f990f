"""
Tests for the Maildir++ folders of L{smtpmx.delivery.maildir}: a
L{LocalMailbox} with a C{folder} (the Junk folder the message filters file
spam in) is filed in C{<mailbox>/.<folder>/}, created on first use with the
C{maildirfolder} marker and the same durability as INBOX, all or nothing
with the other copies; and every copy carries the envelope's
C{extraHeaders} right below C{Received} (C{docs/storage.rst}).
"""

from __future__ import annotations

import dataclasses
import errno
import os
import stat
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from smtpmx import durable
from smtpmx.address import UnsafeMailbox
from smtpmx.delivery import maildir
from smtpmx.delivery.maildir import MaildirStore
from smtpmx.envelope import Envelope, LocalMailbox
from tests import test_maildir_store as base
from tests.helpers import makeDirectory, recordDirectorySyncs, recordFsyncs

EXTRA = b"X-Spam-Action: add header\nX-Spam-Score: 7.5\nX-Spam: Yes\n"

JUNK_BOB = LocalMailbox("example.org", "bob", "Junk")


class FolderPathTests(SynchronousTestCase):
    """
    Tests for L{maildir.mailboxPath} and L{maildir.isFolder} with folders.
    """

    def test_layout(self) -> None:
        """
        A mailbox's folder is the Maildir++ folder C{.<folder>} inside the
        mailbox's own Maildir, the directory Dovecot shows as that IMAP
        folder.
        """
        self.assertEqual(
            maildir.mailboxPath("/srv/mail", JUNK_BOB), "/srv/mail/example.org/bob/.Junk"
        )
        self.assertEqual(
            maildir.mailboxPath("/srv/mail", LocalMailbox("example.org", "bob", None)),
            "/srv/mail/example.org/bob",
        )

    def test_unsafeFolder(self) -> None:
        """
        A folder name is checked like a mailbox name: no empty name, no
        leading dot (which would make C{..}), no slash, no control
        character, nothing too long for one directory entry.
        """
        for folder in ("", ".", "..", ".Junk", "a/b", "../../x", "J\nunk", "\\x", "x" * 255):
            with self.subTest(folder=folder):
                self.assertRaises(
                    UnsafeMailbox,
                    maildir.mailboxPath,
                    "/srv/mail",
                    LocalMailbox("example.org", "bob", folder),
                )
        self.assertTrue(
            maildir.mailboxPath("/srv/mail", LocalMailbox("example.org", "bob", "x" * 254))
        )

    @given(st.text(max_size=40))
    def test_neverEscapesMailbox(self, folder: str) -> None:
        """
        Whatever the folder's name, its path is refused or is one directory
        named with a leading dot right inside the mailbox: no folder name
        reaches another mailbox or leaves the Maildir root.
        """
        mailbox = "/srv/mail/example.org/bob"
        try:
            path = maildir.mailboxPath("/srv/mail", LocalMailbox("example.org", "bob", folder))
        except ValueError:
            return
        self.assertEqual(os.path.dirname(path), mailbox)
        self.assertEqual(os.path.basename(path), "." + folder)
        self.assertTrue(maildir.isFolder(path))

    def test_isFolder(self) -> None:
        """
        Only a folder's directory name starts with a dot.
        """
        self.assertTrue(maildir.isFolder(maildir.mailboxPath("/srv/mail", JUNK_BOB)))
        self.assertTrue(maildir.isFolder("/srv/mail/example.org/bob/.Junk/"))
        self.assertFalse(maildir.isFolder("/srv/mail/example.org/bob"))


class EnsureFolderTests(SynchronousTestCase):
    """
    Tests for L{maildir.ensureMaildir} on a Maildir++ folder.
    """

    def setUp(self) -> None:
        """
        A Maildir root; every directory fsynced is recorded.
        """
        self.root = makeDirectory(self)
        self.synced = recordDirectorySyncs(self)
        self.mailbox = os.path.join(self.root, "example.org", "bob")
        self.folder = os.path.join(self.mailbox, ".Junk")

    def test_creates(self) -> None:
        """
        A folder made on first use is a private Maildir with the empty
        C{maildirfolder} marker, inside a mailbox that is a whole Maildir
        too, as Maildir++ readers such as Dovecot expect.
        """
        maildir.ensureMaildir(self.folder)
        for path in (self.mailbox, self.folder):
            for sub in ("tmp", "new", "cur"):
                mode = os.stat(os.path.join(path, sub)).st_mode
                self.assertTrue(stat.S_ISDIR(mode))
                self.assertEqual(stat.S_IMODE(mode), 0o700)
        marker = os.stat(os.path.join(self.folder, "maildirfolder"))
        self.assertTrue(stat.S_ISREG(marker.st_mode))
        self.assertEqual(marker.st_size, 0)
        self.assertEqual(stat.S_IMODE(marker.st_mode), 0o600)
        self.assertFalse(os.path.exists(os.path.join(self.mailbox, "maildirfolder")))

    def test_durable(self) -> None:
        """
        Every directory that received a new entry, the marker's included,
        is fsynced, so that the new folder survives a crash like a new
        mailbox does.
        """
        domain = os.path.join(self.root, "example.org")
        maildir.ensureMaildir(self.folder)
        self.assertEqual(
            sorted(set(self.synced)), sorted([self.root, domain, self.mailbox, self.folder])
        )

    def test_existingMailbox(self) -> None:
        """
        In an existing mailbox only the folder is made; the mailbox's own
        files are left alone.
        """
        maildir.ensureMaildir(self.mailbox)
        open(os.path.join(self.mailbox, "new", "m"), "wb").close()
        del self.synced[:]
        maildir.ensureMaildir(self.folder)
        self.assertEqual(os.listdir(os.path.join(self.mailbox, "new")), ["m"])
        self.assertEqual(sorted(set(self.synced)), sorted([self.mailbox, self.folder]))
        del self.synced[:]
        maildir.ensureMaildir(self.folder)
        self.assertEqual(self.synced, [])

    def test_markerBeforeSubdirectories(self) -> None:
        """
        The marker is made before the folder's C{tmp/}: a crash in between
        leaves a folder that the next delivery (which finds no C{tmp/})
        completes, never a folder without its marker that deliveries
        would use as it is.
        """
        real = durable.ensureEmptyFile

        def crash(path: str, mode: int = durable.FILE_MODE) -> bool:
            """
            Make the marker, then crash.
            """
            real(path)
            raise OSError(errno.EIO, "crash")

        self.patch(durable, "ensureEmptyFile", crash)
        self.assertRaises(OSError, maildir.ensureMaildir, self.folder)
        self.assertTrue(os.path.exists(os.path.join(self.folder, "maildirfolder")))
        self.assertFalse(os.path.exists(os.path.join(self.folder, "tmp")))

    def test_repairsMarker(self) -> None:
        """
        A folder that lost its marker and its C{tmp/} gets both back.
        """
        maildir.ensureMaildir(self.folder)
        os.unlink(os.path.join(self.folder, "maildirfolder"))
        os.rmdir(os.path.join(self.folder, "tmp"))
        maildir.ensureMaildir(self.folder)
        self.assertTrue(os.path.exists(os.path.join(self.folder, "maildirfolder")))
        self.assertTrue(os.path.isdir(os.path.join(self.folder, "tmp")))


class FolderStoreTests(SynchronousTestCase):
    """
    Tests for L{MaildirStore} filing into folders and adding the
    envelope's C{extraHeaders}.
    """

    def setUp(self) -> None:
        """
        An empty Maildir root and a store on it whose jobs run at once.
        """
        self.root = makeDirectory(self)
        self.runner = base.CountingRunner()
        self.store = MaildirStore(self.root, self.runner, hostname="mx.example.org")

    def envelope(self, *recipients: tuple[str, Any], extra: bytes = EXTRA) -> Envelope:
        """
        An envelope for C{recipients} carrying C{extra} as its
        C{extraHeaders}.
        """
        return dataclasses.replace(base.makeEnvelope(list(recipients)), extraHeaders=extra)

    def deliver(self, envelope: Envelope, *chunks: bytes) -> None:
        """
        Store a message and check that it succeeded.
        """
        message = self.store.receive(envelope)
        for chunk in chunks:
            self.assertIsNone(message.write(chunk))
        self.assertIsNone(self.successResultOf(message.finish()))

    def messages(self, *parts: str) -> list[bytes]:
        """
        The contents of the messages in C{new/} of the Maildir at C{parts}
        under the root.
        """
        directory = os.path.join(self.root, *parts, "new")
        out = []
        for entry in sorted(os.listdir(directory)) if os.path.isdir(directory) else []:
            with open(os.path.join(directory, entry), "rb") as f:
                out.append(f.read())
        return out

    def messageFiles(self) -> list[str]:
        """
        Every message file under the root (in any C{tmp/}, C{new/} or
        C{cur/}), relative to it; the folders' markers are not messages.
        """
        return sorted(
            os.path.relpath(os.path.join(where, name), self.root)
            for where, _, names in os.walk(self.root)
            for name in names
            if name != "maildirfolder"
        )

    def test_junkFolder(self) -> None:
        """
        A copy for the Junk folder lands in C{.Junk/new/}, not in INBOX,
        with the usual headers, then the extra ones right below
        C{Received}, then the message; the folder is made on first use.
        """
        self.deliver(self.envelope(("Bob@Example.org", JUNK_BOB)), b"Subject: buy\n\n", b"now\n")
        self.assertEqual(
            self.messages("example.org", "bob", ".Junk"),
            [
                b"Return-Path: <Alice@Example.NET>\n"
                b"Delivered-To: Bob@Example.org\n"
                + base.RECEIVED
                + EXTRA
                + b"Subject: buy\n\nnow\n"
            ],
        )
        self.assertEqual(self.messages("example.org", "bob"), [])
        [path] = self.messageFiles()
        self.assertEqual(os.path.dirname(path), os.path.join("example.org", "bob", ".Junk", "new"))
        self.assertTrue(
            os.path.isfile(os.path.join(self.root, "example.org", "bob", ".Junk", "maildirfolder"))
        )
        for sub in ("tmp", "new", "cur"):
            self.assertTrue(os.path.isdir(os.path.join(self.root, "example.org", "bob", sub)))

    def test_extraHeadersInbox(self) -> None:
        """
        A copy for INBOX carries the extra headers too, right below
        C{Received}; without them the copy is as before.
        """
        self.deliver(self.envelope(("bob@example.org", ("example.org", "bob"))), b"\nhi\n")
        self.deliver(
            self.envelope(("carol@example.org", ("example.org", "carol")), extra=b""), b"\nhi\n"
        )
        [bob] = self.messages("example.org", "bob")
        [carol] = self.messages("example.org", "carol")
        self.assertTrue(bob.endswith(base.RECEIVED + EXTRA + b"\nhi\n"))
        self.assertTrue(carol.endswith(base.RECEIVED + b"\nhi\n"))
        self.assertFalse(os.path.exists(os.path.join(self.root, "example.org", "bob", ".Junk")))

    def test_severalFoldersOneMessage(self) -> None:
        """
        One message can go to one mailbox's Junk folder and another
        mailbox's INBOX (their own verdicts, from a filter written for
        that): each gets its copy, aliases' Delivered-To values kept
        apart.
        """
        self.deliver(
            self.envelope(
                ("bob@example.org", JUNK_BOB),
                ("bob+x@example.org", JUNK_BOB),
                ("carol@example.org", ("example.org", "carol")),
            ),
            b"\nhi\n",
        )
        junk = self.messages("example.org", "bob", ".Junk")
        self.assertEqual(len(junk), 2)
        self.assertEqual(
            sorted(m.split(b"\n")[1] for m in junk),
            [b"Delivered-To: bob+x@example.org", b"Delivered-To: bob@example.org"],
        )
        self.assertEqual(len(self.messages("example.org", "carol")), 1)
        self.assertEqual(self.messages("example.org", "bob"), [])

    def test_oneFolderPerMailbox(self) -> None:
        """
        One envelope cannot file a mailbox both in INBOX and in its Junk
        folder, so no recipient ever gets the message twice: such an
        envelope is refused before anything touches the disk.
        """
        envelope = self.envelope(
            ("bob@example.org", ("example.org", "bob")), ("bob+spam@example.org", JUNK_BOB)
        )
        self.assertRaises(ValueError, self.store.receive, envelope)
        envelope = self.envelope(("bob@example.org", JUNK_BOB), ("bob@example.org", ("example.org", "bob")))
        self.assertRaises(ValueError, self.store.receive, envelope)
        self.assertEqual(os.listdir(self.root), [])
        self.assertEqual(self.runner.calls, 0)

    def test_duplicateInFolder(self) -> None:
        """
        A recipient given twice for the Junk folder gets one copy.
        """
        self.deliver(
            self.envelope(("bob@example.org", JUNK_BOB), ("BOB@example.org", JUNK_BOB)), b"\nhi\n"
        )
        self.assertEqual(len(self.messages("example.org", "bob", ".Junk")), 1)

    def test_unsafeFolder(self) -> None:
        """
        A folder that would lie outside its mailbox is refused before
        anything touches the disk.
        """
        envelope = self.envelope(("bob@example.org", LocalMailbox("example.org", "bob", "../../x")))
        self.assertRaises(ValueError, self.store.receive, envelope)
        self.assertEqual(os.listdir(self.root), [])

    @pytest.mark.rfc("5321", "6.1", "5321-6.1-1")
    def test_fsync(self) -> None:
        """
        A copy in the Junk folder is as durable as one in INBOX before the
        message is acknowledged: its file is fsynced, renamed into
        C{.Junk/new/}, and C{.Junk/new/} fsynced after the rename.
        """
        maildir.ensureMaildir(maildir.mailboxPath(self.root, JUNK_BOB))
        maildir.ensureMaildir(maildir.mailboxPath(self.root, LocalMailbox("example.org", "carol")))
        synced = recordFsyncs(self)
        self.deliver(
            self.envelope(("bob@example.org", JUNK_BOB), ("carol@example.org", ("example.org", "carol"))),
            b"\nhi\n",
        )
        files = {os.stat(os.path.join(self.root, path)).st_ino for path in self.messageFiles()}
        directories = {
            os.stat(os.path.join(self.root, "example.org", *parts, "new")).st_ino
            for parts in (("bob", ".Junk"), ("carol",))
        }
        self.assertEqual(len(files), 2)
        self.assertEqual([kind for kind, _ in synced], ["file"] * 2 + ["dir"] * 2)
        self.assertEqual({ino for kind, ino in synced if kind == "file"}, files)
        self.assertEqual({ino for kind, ino in synced if kind == "dir"}, directories)

    @pytest.mark.rfc("5321", "4.1.1.4", "5321-4.1.1.4-3")
    def test_allOrNothingAcrossFolders(self) -> None:
        """
        When the Junk copy cannot be moved into C{.Junk/new/}, the INBOX
        copy already there is taken back out: nothing is delivered to
        anyone, and the original error is reported.
        """
        real = os.rename

        def rename(source: str, target: str) -> None:
            """
            Fail the rename into a Junk folder.
            """
            if "/.Junk/new/" in target:
                raise OSError(errno.EIO, "Input/output error")
            real(source, target)

        self.patch(maildir.os, "rename", rename)
        message = self.store.receive(
            self.envelope(
                ("carol@example.org", LocalMailbox("example.org", "carol")),
                ("bob@example.org", JUNK_BOB),
            )
        )
        message.write(b"\nhi\n")
        error = self.failureResultOf(message.finish()).value
        self.assertEqual(error.errno, errno.EIO)
        self.assertEqual(self.messageFiles(), [])

    def test_rollbackJunk(self) -> None:
        """
        A Junk copy already filed is removed again when the rest of the
        message (the relay queue's part) fails afterwards.
        """
        message = self.store.receive(self.envelope(("bob@example.org", JUNK_BOB)))
        message.write(b"\nhi\n")
        self.successResultOf(message.finish())
        self.assertEqual(len(self.messages("example.org", "bob", ".Junk")), 1)
        self.successResultOf(message.rollback())
        self.assertEqual(self.messageFiles(), [])
