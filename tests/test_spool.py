"""
Tests for L{smtpmx.spool}: the durable-write helpers.
"""

import errno
import os
import re
import shutil
import stat
import tempfile
import threading

from twisted.trial.unittest import SynchronousTestCase

from smtpmx import spool


def makeDirectory(case: SynchronousTestCase) -> str:
    """
    A fresh temporary directory, removed when C{case} ends.
    """
    path = tempfile.mkdtemp()
    case.addCleanup(shutil.rmtree, path, True)
    return path


class UniqueNameTests(SynchronousTestCase):
    """
    Tests for L{spool.uniqueName}.
    """

    def test_format(self) -> None:
        """
        Names have the Maildir form C{<secs>.M<usec>P<pid>Q<n>.<host>}.
        """
        name = spool.uniqueName("mx.example.org")
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
        name = spool.uniqueName("a/b:c")
        self.assertTrue(name.endswith(".a\\057b\\072c"))
        self.assertNotIn("/", name)
        self.assertNotIn(":", name)

    def test_defaultHost(self) -> None:
        """
        Without a host name, this host's own is used.
        """
        import socket

        host = socket.gethostname().replace("/", "\\057").replace(":", "\\072")
        self.assertTrue(spool.uniqueName().endswith("." + host))

    def test_uniqueAcrossThreads(self) -> None:
        """
        Names made at the same moment in many threads never collide.
        """
        names: list[str] = []
        lock = threading.Lock()

        def make() -> None:
            """
            Make names and collect them.
            """
            mine = [spool.uniqueName("h") for _ in range(2000)]
            with lock:
                names.extend(mine)

        threads = [threading.Thread(target=make) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual(len(names), 16000)
        self.assertEqual(len(set(names)), 16000)


class EnsureMaildirTests(SynchronousTestCase):
    """
    Tests for L{spool.ensureMaildir} and L{spool.fsyncDirectory}.
    """

    def setUp(self) -> None:
        """
        Record every directory fsynced.
        """
        self.root = makeDirectory(self)
        self.synced: list[str] = []
        real = spool.fsyncDirectory

        def record(path: str) -> None:
            """
            Record the directory, then fsync it.
            """
            self.synced.append(path)
            real(path)

        self.patch(spool, "fsyncDirectory", record)

    def test_creates(self) -> None:
        """
        A Maildir and its missing parents are created, with private
        C{tmp}, C{new} and C{cur} directories.
        """
        path = os.path.join(self.root, "example.org", "bob")
        spool.ensureMaildir(path)
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
        spool.ensureMaildir(path)
        self.assertEqual(sorted(self.synced), sorted([self.root, domain, path]))

    def test_existing(self) -> None:
        """
        An existing Maildir is left alone and nothing is fsynced.
        """
        path = os.path.join(self.root, "bob")
        spool.ensureMaildir(path)
        open(os.path.join(path, "new", "m"), "wb").close()
        del self.synced[:]
        spool.ensureMaildir(path)
        self.assertEqual(self.synced, [])
        self.assertEqual(os.listdir(os.path.join(path, "new")), ["m"])

    def test_repairs(self) -> None:
        """
        A Maildir missing one of its subdirectories gets it back.
        """
        path = os.path.join(self.root, "bob")
        spool.ensureMaildir(path)
        os.rmdir(os.path.join(path, "cur"))
        del self.synced[:]
        spool.ensureMaildir(path)
        self.assertTrue(os.path.isdir(os.path.join(path, "cur")))
        self.assertEqual(self.synced, [path])

    def test_realFsync(self) -> None:
        """
        L{spool.fsyncDirectory} fsyncs a directory without error.
        """
        calls: list[int] = []
        real = os.fsync

        def record(fd: int) -> None:
            """
            Record the call, then fsync.
            """
            calls.append(fd)
            self.assertTrue(stat.S_ISDIR(os.fstat(fd).st_mode))
            real(fd)

        self.patch(spool.os, "fsync", record)
        spool.fsyncDirectory(self.root)
        self.assertEqual(len(calls), 1)


class FileTests(SynchronousTestCase):
    """
    Tests for L{spool.createFile}, L{spool.writeAll}, L{spool.copyRange},
    L{spool.removeFile} and L{spool.writeDurably}.
    """

    def setUp(self) -> None:
        """
        Work in a fresh directory.
        """
        self.root = makeDirectory(self)

    def test_createPrivate(self) -> None:
        """
        Files are created private (mode 0600), and never over an existing
        one.
        """
        path = os.path.join(self.root, "f")
        os.close(spool.createFile(path))
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        self.assertRaises(FileExistsError, spool.createFile, path)

    def test_writeAllPartial(self) -> None:
        """
        Short writes are continued until everything is written.
        """
        path = os.path.join(self.root, "f")
        fd = spool.createFile(path)
        self.addCleanup(os.close, fd)
        real = os.write
        self.patch(spool.os, "write", lambda fd, data: real(fd, bytes(data)[:3]))
        spool.writeAll(fd, b"0123456789")
        with open(path, "rb") as f:
            self.assertEqual(f.read(), b"0123456789")

    def copy(self, data: bytes, offset: int) -> bytes:
        """
        Copy C{data[offset:]} with L{spool.copyRange} after a prefix, and
        return the result.
        """
        source = os.path.join(self.root, "source")
        with open(source, "wb") as f:
            f.write(data)
        target = os.path.join(self.root, "target")
        s = os.open(source, os.O_RDONLY)
        t = spool.createFile(target)
        try:
            spool.writeAll(t, b"prefix:")
            spool.copyRange(s, t, offset, len(data) - offset)
        finally:
            os.close(s)
            os.close(t)
        with open(target, "rb") as f:
            return f.read()

    def test_copyRange(self) -> None:
        """
        A range of one file is appended to another after what it holds.
        """
        data = os.urandom(3 * 1024 * 1024 + 17)
        self.assertEqual(self.copy(data, 100), b"prefix:" + data[100:])

    def test_copyRangeFallback(self) -> None:
        """
        Where the kernel cannot copy between the files, the copy is made
        by reading and writing.
        """

        def unsupported(*args: object) -> int:
            """
            Fail as copying between file systems may.
            """
            raise OSError(errno.EXDEV, "cross-device")

        self.patch(spool.os, "copy_file_range", unsupported)
        data = os.urandom(600 * 1024)
        self.assertEqual(self.copy(data, 5), b"prefix:" + data[5:])

    def test_copyRangeError(self) -> None:
        """
        A real error while copying, such as a full disk, is raised.
        """

        def full(*args: object) -> int:
            """
            Fail as a full disk would.
            """
            raise OSError(errno.ENOSPC, "No space left on device")

        self.patch(spool.os, "copy_file_range", full)
        error = self.assertRaises(OSError, self.copy, b"abc", 0)
        self.assertEqual(error.errno, errno.ENOSPC)

    def test_removeFile(self) -> None:
        """
        Removing a file that is already gone is fine; other errors are
        returned, not raised.
        """
        path = os.path.join(self.root, "f")
        open(path, "wb").close()
        self.assertIsNone(spool.removeFile(path))
        self.assertFalse(os.path.exists(path))
        self.assertIsNone(spool.removeFile(path))
        self.assertIsInstance(spool.removeFile(self.root), OSError)

    def test_writeDurably(self) -> None:
        """
        A file written durably is complete at its name, fsynced along with
        its directory, and no temporary file is left.
        """
        synced: list[tuple[bool, int]] = []
        real = os.fsync

        def record(fd: int) -> None:
            """
            Record what is fsynced, then fsync it.
            """
            info = os.fstat(fd)
            synced.append((stat.S_ISDIR(info.st_mode), info.st_ino))
            real(fd)

        self.patch(spool.os, "fsync", record)
        path = os.path.join(self.root, "msg")
        spool.writeDurably(path, [b"one ", b"two"])
        with open(path, "rb") as f:
            self.assertEqual(f.read(), b"one two")
        self.assertEqual(os.listdir(self.root), ["msg"])
        self.assertEqual(
            synced, [(False, os.stat(path).st_ino), (True, os.stat(self.root).st_ino)]
        )

    def test_writeDurablyNoReplace(self) -> None:
        """
        Without C{replace}, an existing file is never overwritten and the
        temporary file is removed.
        """
        path = os.path.join(self.root, "msg")
        spool.writeDurably(path, b"first")
        self.assertRaises(FileExistsError, spool.writeDurably, path, b"second", replace=False)
        with open(path, "rb") as f:
            self.assertEqual(f.read(), b"first")
        self.assertEqual(os.listdir(self.root), ["msg"])

    def test_writeDurablyFailure(self) -> None:
        """
        A write that fails leaves nothing behind.
        """

        def full(fd: int) -> None:
            """
            Fail as a full disk would.
            """
            raise OSError(errno.ENOSPC, "No space left on device")

        self.patch(spool.os, "fsync", full)
        tmp = os.path.join(self.root, "tmp")
        os.mkdir(tmp)
        path = os.path.join(self.root, "msg")
        self.assertRaises(OSError, spool.writeDurably, path, b"x", temporaryDirectory=tmp)
        self.assertEqual(os.listdir(self.root), ["tmp"])
        self.assertEqual(os.listdir(tmp), [])
