"""
Tests for L{smtpmx.durable}: the one module that makes files durable
(C{docs/storage.rst}).
"""

import errno
import os
import stat

import pytest
from twisted.trial.unittest import SynchronousTestCase

from smtpmx import durable
from tests.helpers import makeDirectory, namesMadeInThreads, recordDirectorySyncs, recordFsyncs


class TemporaryNameTests(SynchronousTestCase):
    """
    Tests for L{durable.temporaryName}.
    """

    def test_uniqueAcrossThreads(self) -> None:
        """
        Names made at the same moment in many threads never collide, and
        each is a single path component.
        """
        names = namesMadeInThreads(durable.temporaryName)
        self.assertEqual(len(set(names)), 16000)
        self.assertFalse([n for n in names if os.sep in n or n.startswith(".")])


class DirectoryTests(SynchronousTestCase):
    """
    Tests for L{durable.fsyncDirectory} and L{durable.makeDirectories}.
    """

    def setUp(self) -> None:
        """
        Record every directory fsynced.
        """
        self.root = makeDirectory(self)
        self.synced = recordDirectorySyncs(self)

    def test_makeDirectories(self) -> None:
        """
        Missing directories and their parents are created private (mode
        C{0o700}), and the parent of each is fsynced once; existing ones
        cost no fsync.
        """
        top = os.path.join(self.root, "a")
        paths = [os.path.join(top, "b", "c"), os.path.join(top, "d")]
        created = durable.makeDirectories(paths)
        self.assertEqual(created, [top, os.path.join(top, "b"), *paths])
        for path in created:
            self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o700)
        self.assertEqual(sorted(self.synced), sorted([self.root, top, os.path.join(top, "b")]))
        del self.synced[:]
        self.assertEqual(durable.makeDirectories(paths), [])
        self.assertEqual(self.synced, [])

    def test_realFsync(self) -> None:
        """
        L{durable.fsyncDirectory} fsyncs a directory without error.
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

        self.patch(durable.os, "fsync", record)
        durable.fsyncDirectory(self.root)
        self.assertEqual(len(calls), 1)


class FileTests(SynchronousTestCase):
    """
    Tests for L{durable.createFile}, L{durable.writeAll}, L{durable.copyRange},
    L{durable.removeFile} and L{durable.writeDurably}.
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
        os.close(durable.createFile(path))
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        self.assertRaises(FileExistsError, durable.createFile, path)

    def test_writeAllPartial(self) -> None:
        """
        Short writes are continued until everything is written.
        """
        path = os.path.join(self.root, "f")
        fd = durable.createFile(path)
        self.addCleanup(os.close, fd)
        real = os.write
        self.patch(durable.os, "write", lambda fd, data: real(fd, bytes(data)[:3]))
        durable.writeAll(fd, b"0123456789")
        with open(path, "rb") as f:
            self.assertEqual(f.read(), b"0123456789")

    def copy(self, data: bytes, offset: int) -> bytes:
        """
        Copy C{data[offset:]} with L{durable.copyRange} after a prefix, and
        return the result.
        """
        source = os.path.join(self.root, "source")
        with open(source, "wb") as f:
            f.write(data)
        target = os.path.join(self.root, "target")
        s = os.open(source, os.O_RDONLY)
        t = durable.createFile(target)
        try:
            durable.writeAll(t, b"prefix:")
            durable.copyRange(s, t, offset, len(data) - offset)
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

        self.patch(durable.os, "copy_file_range", unsupported)
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

        self.patch(durable.os, "copy_file_range", full)
        error = self.assertRaises(OSError, self.copy, b"abc", 0)
        self.assertEqual(error.errno, errno.ENOSPC)

    def test_removeFile(self) -> None:
        """
        Removing a file that is already gone is fine; other errors are
        returned, not raised.
        """
        path = os.path.join(self.root, "f")
        open(path, "wb").close()
        self.assertIsNone(durable.removeFile(path))
        self.assertFalse(os.path.exists(path))
        self.assertIsNone(durable.removeFile(path))
        self.assertIsInstance(durable.removeFile(self.root), OSError)

    @pytest.mark.rfc("5321", "6.1", "5321-6.1-1")
    def test_writeDurably(self) -> None:
        """
        A file written durably is complete at its name, fsynced along with
        its directory, and no temporary file is left.
        """
        synced = recordFsyncs(self)
        path = os.path.join(self.root, "msg")
        durable.writeDurably(path, [b"one ", b"two"])
        with open(path, "rb") as f:
            self.assertEqual(f.read(), b"one two")
        self.assertEqual(os.listdir(self.root), ["msg"])
        self.assertEqual(
            synced, [("file", os.stat(path).st_ino), ("dir", os.stat(self.root).st_ino)]
        )

    def test_writeDurablyNoReplace(self) -> None:
        """
        Without C{replace}, an existing file is never overwritten and the
        temporary file is removed.
        """
        path = os.path.join(self.root, "msg")
        durable.writeDurably(path, b"first")
        self.assertRaises(FileExistsError, durable.writeDurably, path, b"second", replace=False)
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

        self.patch(durable.os, "fsync", full)
        tmp = os.path.join(self.root, "tmp")
        os.mkdir(tmp)
        path = os.path.join(self.root, "msg")
        self.assertRaises(OSError, durable.writeDurably, path, b"x", temporaryDirectory=tmp)
        self.assertEqual(os.listdir(self.root), ["tmp"])
        self.assertEqual(os.listdir(tmp), [])

    def test_writeDurablyNewFileDirectoryFsyncFails(self) -> None:
        """
        Without C{replace}, a new file whose directory cannot be fsynced is
        taken out again: it is there durably or not at all.
        """

        def broken(path: str) -> None:
            """
            Fail as a broken disk would.
            """
            raise OSError(errno.EIO, "I/O error")

        self.patch(durable, "fsyncDirectory", broken)
        path = os.path.join(self.root, "msg")
        self.assertRaises(OSError, durable.writeDurably, path, b"x", replace=False)
        self.assertEqual(os.listdir(self.root), [])

    def test_writeDurablyName(self) -> None:
        """
        The temporary file can be given its name, in a directory of its
        own (a Maildir's C{tmp/} for its C{new/}).
        """
        tmp = os.path.join(self.root, "tmp")
        new = os.path.join(self.root, "new")
        os.mkdir(tmp)
        os.mkdir(new)
        names: list[str] = []
        real = os.link

        def link(source: str, target: str) -> None:
            """
            Record the temporary name, then link.
            """
            names.append(source)
            real(source, target)

        self.patch(durable.os, "link", link)
        durable.writeDurably(os.path.join(new, "m"), b"x", tmp, replace=False, name="m")
        self.assertEqual(names, [os.path.join(tmp, "m")])
        self.assertEqual((os.listdir(tmp), os.listdir(new)), ([], ["m"]))

    def test_writeNewFileFails(self) -> None:
        """
        A file that cannot be written whole is removed; an existing one is
        never touched.
        """
        path = os.path.join(self.root, "f")

        def full(fd: int, data: object) -> int:
            """
            Fail as a full disk would.
            """
            raise OSError(errno.ENOSPC, "No space left on device")

        with open(path, "wb") as f:
            f.write(b"kept")
        self.assertRaises(FileExistsError, durable.writeNewFile, path, b"new")
        with open(path, "rb") as f:
            self.assertEqual(f.read(), b"kept")
        other = os.path.join(self.root, "g")
        self.patch(durable.os, "write", full)
        self.assertRaises(OSError, durable.writeNewFile, other, b"new")
        self.assertFalse(os.path.exists(other))

    def test_moveFile(self) -> None:
        """
        A move with C{replace} replaces the target; without, an existing
        target stays and so does the source.
        """
        source = os.path.join(self.root, "s")
        target = os.path.join(self.root, "t")
        for path, content in ((source, b"new"), (target, b"old")):
            with open(path, "wb") as f:
                f.write(content)
        self.assertRaises(FileExistsError, durable.moveFile, source, target, replace=False)
        self.assertEqual(sorted(os.listdir(self.root)), ["s", "t"])
        durable.moveFile(source, target)
        self.assertEqual(os.listdir(self.root), ["t"])
        with open(target, "rb") as f:
            self.assertEqual(f.read(), b"new")

    def test_moveFileNoReplaceUndone(self) -> None:
        """
        A move without C{replace} whose source cannot be unlinked after the
        link is undone: the file is still only at its source.
        """
        source = os.path.join(self.root, "s")
        target = os.path.join(self.root, "t")
        open(source, "wb").close()

        def broken(path: str) -> None:
            """
            Fail to unlink the source, and only it.
            """
            if path == source:
                raise OSError(errno.EIO, "I/O error")
            real(path)

        real = os.unlink
        self.patch(durable.os, "unlink", broken)
        self.assertRaises(OSError, durable.moveFile, source, target, replace=False)
        self.assertEqual(os.listdir(self.root), ["s"])

    def test_removeDurably(self) -> None:
        """
        A removal fsyncs the directory when the file was there, and says
        whether it was.
        """
        synced = recordDirectorySyncs(self)
        path = os.path.join(self.root, "f")
        open(path, "wb").close()
        self.assertTrue(durable.removeDurably(path))
        self.assertEqual(synced, [self.root])
        self.assertFalse(durable.removeDurably(path))
        self.assertEqual(synced, [self.root])

    def test_ensureEmptyFile(self) -> None:
        """
        A marker file is created empty and private, fsynced with its
        directory; an existing one costs no fsync and keeps its content.
        """
        synced = recordDirectorySyncs(self)
        path = os.path.join(self.root, "maildirfolder")
        self.assertTrue(durable.ensureEmptyFile(path))
        info = os.stat(path)
        self.assertEqual((info.st_size, stat.S_IMODE(info.st_mode)), (0, 0o600))
        self.assertEqual(synced, [self.root])
        with open(path, "ab") as f:
            f.write(b"kept")
        self.assertFalse(durable.ensureEmptyFile(path))
        self.assertEqual(synced, [self.root])
        with open(path, "rb") as f:
            self.assertEqual(f.read(), b"kept")

    def test_ensureEmptyFileFails(self) -> None:
        """
        A marker whose directory cannot be fsynced is removed again, so
        that the next attempt makes it durably; a missing directory is
        reported as such.
        """

        def broken(path: str) -> None:
            """
            Fail every directory fsync.
            """
            raise OSError(errno.EIO, "Input/output error")

        self.assertRaises(
            FileNotFoundError, durable.ensureEmptyFile, os.path.join(self.root, "no", "m")
        )
        self.patch(durable, "fsyncDirectory", broken)
        self.assertRaises(OSError, durable.ensureEmptyFile, os.path.join(self.root, "m"))
        self.assertEqual(os.listdir(self.root), [])
