"""
Durable writes: the blocking helpers shared by the Maildir store and the
relay queue.

A file is durable once it has been written to a temporary name, C{fsync}ed,
renamed (or linked) to its final name and its directory C{fsync}ed: only
then may C{250} be sent (SPEC section 4).  Everything here blocks; callers
on the reactor thread must run it through their C{runBlocking} (a thread
pool), never call it directly.
"""

from __future__ import annotations

import errno
import itertools
import os
import socket
import time
from typing import Iterable, Optional, Union

# Maildir directories are private to the mail system (and its user).
DIRECTORY_MODE = 0o700
FILE_MODE = 0o600

# Chunk size of the portable fallback of copyRange.
_COPY_CHUNK = 256 * 1024

# Errors that mean "this way of copying is not available here", after which
# copyRange falls back to plain reads and writes.  ENOSPC, EIO and the like
# are real failures and propagate.
_COPY_UNSUPPORTED = frozenset(
    {errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EBADF, errno.EPERM}
)

# next() on itertools.count is atomic in CPython: no lock needed for names
# made from several threads at once.
_counter = itertools.count()


def fsyncDirectory(path: str) -> None:
    """
    Make the entries of a directory (files created, renamed or removed in
    it) durable.

    @param path: the directory.
    """
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _makeDirectory(path: str, created: list[str]) -> None:
    """
    Create C{path} and any missing parents, recording what was created.

    @param created: the list each directory created is appended to,
        parents before children.
    """
    try:
        os.mkdir(path, DIRECTORY_MODE)
    except FileExistsError:
        return
    except FileNotFoundError:
        parent = os.path.dirname(path)
        if not parent or parent == path:
            raise
        _makeDirectory(parent, created)
        try:
            os.mkdir(path, DIRECTORY_MODE)
        except FileExistsError:
            # Another thread delivering to the same new mailbox won the race.
            return
    created.append(path)


def ensureMaildir(path: str) -> None:
    """
    Make sure C{path} is a Maildir: create it, any missing parent, and its
    C{tmp}, C{new} and C{cur} subdirectories (mode C{0o700}), then fsync
    the parent of every directory created so that the new entries survive
    a crash.  Safe to call from several threads at once.

    @param path: the Maildir.
    """
    path = os.path.normpath(path)
    created: list[str] = []
    _makeDirectory(path, created)
    for sub in ("tmp", "new", "cur"):
        _makeDirectory(os.path.join(path, sub), created)
    parents: dict[str, None] = {}
    for directory in reversed(created):
        parents[os.path.dirname(directory)] = None
    for parent in parents:
        fsyncDirectory(parent)


def uniqueName(hostname: Optional[str] = None) -> str:
    """
    A name unique to this host, in the form Maildir readers expect:
    C{<secs>.M<usec>P<pid>Q<counter>.<host>}.

    C{/} and C{:} in the host name would break the directory or the C{:2,}
    flags suffix, so they are written C{\\057} and C{\\072}, as the Maildir
    specification asks.

    @param hostname: the host name, or L{None} for this host's own.
    """
    if hostname is None:
        hostname = socket.gethostname()
    host = hostname.replace("/", "\\057").replace(":", "\\072")
    seconds, microseconds = divmod(time.time_ns() // 1000, 1_000_000)
    return f"{seconds}.M{microseconds}P{os.getpid()}Q{next(_counter)}.{host}"


def createFile(path: str, readable: bool = False) -> int:
    """
    Create a new file, mode C{0o600}; never open an existing one.

    @param readable: open it for reading too (to copy from it later).

    @return: the file descriptor.

    @raise FileExistsError: the name is taken.
    """
    flags = os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    flags |= os.O_RDWR if readable else os.O_WRONLY
    return os.open(path, flags, FILE_MODE)


def writeAll(fd: int, data: Union[bytes, memoryview]) -> None:
    """
    Write all of C{data}, however many C{write} calls it takes.
    """
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _copyByReading(source: int, destination: int, offset: int, count: int) -> None:
    """
    Copy with C{pread} and C{write}, a bounded chunk at a time.
    """
    while count > 0:
        chunk = os.pread(source, min(count, _COPY_CHUNK), offset)
        if not chunk:
            raise OSError(errno.EIO, "source file shorter than expected")
        writeAll(destination, chunk)
        offset += len(chunk)
        count -= len(chunk)


def copyRange(source: int, destination: int, offset: int, count: int) -> None:
    """
    Append C{count} bytes of C{source}, starting at C{offset}, to
    C{destination} at its current position, without ever holding more than
    a bounded chunk in memory: in the kernel with C{copy_file_range} where
    the system has it, else by reading and writing.

    @param source: a descriptor open for reading.
    @param destination: a descriptor open for writing (not C{O_APPEND}).
    """
    copyFileRange = getattr(os, "copy_file_range", None)
    if copyFileRange is not None:
        try:
            while count > 0:
                copied = copyFileRange(source, destination, count, offset)
                if copied == 0:
                    break
                offset += copied
                count -= copied
        except OSError as e:
            if e.errno not in _COPY_UNSUPPORTED:
                raise
    _copyByReading(source, destination, offset, count)


def removeFile(path: str) -> Optional[OSError]:
    """
    Remove a file, for cleaning up after a failure: a file already gone is
    fine, and any other error is returned rather than raised so that the
    error that caused the cleanup is the one reported.

    @return: L{None}, or the error that kept the file in place.
    """
    try:
        os.unlink(path)
    except FileNotFoundError:
        return None
    except OSError as e:
        return e
    return None


def writeDurably(
    path: str,
    data: Union[bytes, Iterable[bytes]],
    temporaryDirectory: Optional[str] = None,
    hostname: Optional[str] = None,
    replace: bool = True,
) -> None:
    """
    Put C{data} at C{path} so that it is either wholly there, durably, or
    not there at all: write it to a unique temporary file, fsync it, move
    it to C{path} and fsync C{path}'s directory.

    @param data: the content, or an iterable of chunks of it.
    @param temporaryDirectory: where the temporary file goes; it must be on
        the same file system as C{path}.  L{None} for C{path}'s own
        directory (the temporary name then starts with a dot).
    @param hostname: passed to L{uniqueName}.
    @param replace: whether an existing C{path} is replaced (C{rename});
        if not, C{link} is used and an existing C{path} raises
        L{FileExistsError}.
    """
    directory = os.path.dirname(path) or "."
    if temporaryDirectory is None:
        temporary = os.path.join(directory, "." + uniqueName(hostname))
    else:
        temporary = os.path.join(temporaryDirectory, uniqueName(hostname))
    chunks = [data] if isinstance(data, (bytes, bytearray, memoryview)) else data
    fd = createFile(temporary)
    try:
        try:
            for chunk in chunks:
                writeAll(fd, chunk)
            os.fsync(fd)
        finally:
            os.close(fd)
        if replace:
            os.rename(temporary, path)
        else:
            os.link(temporary, path)
            os.unlink(temporary)
    except BaseException:
        removeFile(temporary)
        raise
    fsyncDirectory(directory)
