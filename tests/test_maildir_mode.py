"""
Tests for C{--maildir-mode}: the modes of the files and directories the
Maildir store makes, so that a Dovecot in the Maildir root's group can
read and write them (docs/storage.rst).
"""

from __future__ import annotations

import os
import stat

from twisted.trial.unittest import SynchronousTestCase

from smtpmx import durable
from smtpmx.delivery import maildir
from smtpmx.delivery.maildir import MaildirStore
from smtpmx.envelope import LocalMailbox
from tests.helpers import makeDirectory
from tests.test_maildir_store import makeEnvelope, runNow


def modeOf(path: str) -> int:
    """
    The permission bits of C{path}, the setgid bit included.
    """
    return stat.S_IMODE(os.stat(path).st_mode)


class DirectoryModeTests(SynchronousTestCase):
    """
    L{durable.directoryModeFor}.
    """

    def test_searchBitsWhereReadable(self) -> None:
        """
        Directories get search bits wherever their files may be read: 0600
        gives 0700, 0640 gives 0750, 0660 gives 0770.
        """
        self.assertEqual(
            [durable.directoryModeFor(m) for m in (0o600, 0o640, 0o660)],
            [0o700, 0o750, 0o770],
        )


class MaildirModeTests(SynchronousTestCase):
    """
    L{MaildirStore} and L{maildir.deliverBytes} with a file mode: every
    file gets it exactly, every directory made the matching search bits,
    whatever the process's umask.
    """

    def setUp(self) -> None:
        """
        An empty Maildir root, and the usual umask C{022} (which would take
        a group's write bit away) for the test's length.
        """
        self.root = makeDirectory(self)
        old = os.umask(0o022)
        self.addCleanup(os.umask, old)

    def deliver(self, mode: int, folder: str | None = None) -> None:
        """
        File one message for bob@example.org with C{mode}, in C{folder}.
        """
        store = MaildirStore(self.root, runNow, hostname="mx.example.org", mode=mode)
        message = store.receive(
            makeEnvelope([("bob@example.org", LocalMailbox("example.org", "bob", folder))])
        )
        message.write(b"Subject: hi\n\nbody\n")
        self.successResultOf(message.finish())

    def modes(self) -> dict[str, int]:
        """
        The mode of every file and directory under the root, by path
        relative to it, with file names in C{new/} replaced by C{MSG}.
        """
        found = {}
        for where, directories, files in os.walk(self.root):
            for name in directories + files:
                path = os.path.join(where, name)
                relative = os.path.relpath(path, self.root)
                if os.path.basename(where) == "new":
                    relative = os.path.join(os.path.dirname(relative), "MSG")
                found[relative] = modeOf(path)
        return found

    def test_defaultPrivate(self) -> None:
        """
        By default the Maildirs are private to smtpmx's user: files 0600,
        directories 0700.
        """
        self.deliver(durable.FILE_MODE)
        modes = self.modes()
        self.assertEqual(modes["example.org/bob/new/MSG"], 0o600)
        self.assertEqual({m for p, m in modes.items() if not p.endswith("MSG")}, {0o700})

    def test_groupReadWrite(self) -> None:
        """
        With C{0660} a message is filed group-readable and writable, and
        the domain, mailbox and C{tmp}/C{new}/C{cur} directories made get
        C{0770}, despite a C{022} umask: a Dovecot in the group can move
        it to C{cur/} and set its flags.
        """
        self.deliver(0o660)
        self.assertEqual(
            self.modes(),
            {
                "example.org": 0o770,
                "example.org/bob": 0o770,
                "example.org/bob/tmp": 0o770,
                "example.org/bob/new": 0o770,
                "example.org/bob/cur": 0o770,
                "example.org/bob/new/MSG": 0o660,
            },
        )

    def test_groupReadOnly(self) -> None:
        """
        With C{0640} files are group-readable only and directories C{0750}.
        """
        self.deliver(0o640)
        modes = self.modes()
        self.assertEqual(modes["example.org/bob/new/MSG"], 0o640)
        self.assertEqual(modes["example.org/bob/cur"], 0o750)

    def test_junkFolder(self) -> None:
        """
        A Junk folder's directories and its C{maildirfolder} marker get the
        same modes as the mailbox.
        """
        self.deliver(0o660, folder="Junk")
        modes = self.modes()
        self.assertEqual(modes["example.org/bob/.Junk/new/MSG"], 0o660)
        self.assertEqual(modes["example.org/bob/.Junk/maildirfolder"], 0o660)
        self.assertEqual(modes["example.org/bob/.Junk"], 0o770)
        self.assertEqual(modes["example.org/bob/.Junk/cur"], 0o770)

    def test_setgidRootKept(self) -> None:
        """
        Below a setgid Maildir root (the operator's C{chmod 2770}), the
        directories made keep the setgid bit they inherit, so that every
        file below gets the root's group: setting the mode does not clear
        it.
        """
        os.chmod(self.root, 0o2770)
        self.deliver(0o660)
        modes = self.modes()
        self.assertEqual(modes["example.org"], 0o2770)
        self.assertEqual(modes["example.org/bob/new"], 0o2770)
        self.assertEqual(modes["example.org/bob/new/MSG"], 0o660)

    def test_existingDirectoriesLeftAlone(self) -> None:
        """
        A directory that exists already keeps the mode its operator gave it.
        """
        os.makedirs(os.path.join(self.root, "example.org"), 0o755)
        os.chmod(os.path.join(self.root, "example.org"), 0o711)
        self.deliver(0o660)
        self.assertEqual(self.modes()["example.org"], 0o711)

    def test_deliverBytes(self) -> None:
        """
        A message filed whole (a bounce) gets the mode too.
        """
        path = maildir.deliverBytes(
            os.path.join(self.root, "example.org", "bob"), b"x\n", "mx.example.org", mode=0o660
        )
        self.assertEqual(modeOf(path), 0o660)
        self.assertEqual(modeOf(os.path.dirname(path)), 0o770)
