"""
Durable files: the only code in smtpmx that creates, fsyncs, renames or
links files so that they survive a crash.  The Maildir store and the relay
queue are both built on it.

A file is durable once it has been written under a temporary name,
C{fsync}ed, renamed (or linked) to its final name and its directory
C{fsync}ed (POSIX leaves the directory entry volatile until then): only
then may C{250} be sent, for with it the server accepts responsibility
for the message and must not lose it if the host crashes (RFC 5321
section 6.1; see C{docs/storage.rst}).  L{writeDurably} is that whole
sequence for data held in memory; the other functions are its steps, for a
caller that streams a file over several jobs or moves several files before
one directory fsync.

Everything here blocks; callers on the reactor thread must run it through
their C{runBlocking} (a thread pool), never call it directly.  Nothing here
knows about Maildir or the queue's layout.
"""

from __future__ import annotations

import errno
import itertools
import os
import stat
import time
from typing import Iterable, Optional, Union

# Directories and files of the mail system are private to it (and its user)
# unless a caller asks for more (--maildir-mode, for a Dovecot in the
# group: docs/storage.rst).
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

Data = Union[bytes, bytearray, memoryview]


def directoryModeFor(fileMode: int) -> int:
    """
    The mode of the directories that hold files of C{fileMode}: the same
    bits, plus search (C{x}) wherever the files may be read, so that whoever
    may read the files may reach them: C{0600} gives C{0700}, C{0640}
    C{0750}, C{0660} C{0770}.
    """
    return fileMode | ((fileMode & 0o444) >> 2)


def _applyDirectoryMode(path: str, mode: int) -> None:
    """
    Give a directory just made exactly C{mode}, whatever the process's
    umask took away, keeping the setgid bit it inherited from a setgid
    parent (a C{chmod} without it would clear it, and with it the group
    that new files inherit).  The default mode costs nothing.
    """
    if mode == DIRECTORY_MODE:
        return
    current = os.stat(path).st_mode
    if stat.S_IMODE(current) & 0o777 != mode:
        os.chmod(path, mode | (current & stat.S_ISGID))


def temporaryName() -> str:
    """
    A file name unique on this host, for a file being written: the time,
    the process ID and a counter shared by every thread of the process.
    """
    return f"{time.time_ns()}.P{os.getpid()}Q{next(_counter)}"


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


def fsyncFile(fd: int) -> None:
    """
    Make the content of an open file durable.

    @param fd: its descriptor.
    """
    os.fsync(fd)


def _makeDirectory(path: str, created: list[str], mode: int = DIRECTORY_MODE) -> None:
    """
    Create C{path} and any missing parents, recording what was created.
    Another thread creating the same directory at the same time is fine.

    @param created: the list each directory created is appended to,
        parents before children.
    @param mode: the mode of the directories created.
    """
    try:
        os.mkdir(path, mode)
    except FileExistsError:
        return
    except FileNotFoundError:
        parent = os.path.dirname(path)
        if not parent or parent == path:
            raise
        _makeDirectory(parent, created, mode)
        try:
            os.mkdir(path, mode)
        except FileExistsError:
            # Another thread making the same directory won the race.
            return
    _applyDirectoryMode(path, mode)
    created.append(path)


def makeDirectories(paths: Iterable[str], mode: int = DIRECTORY_MODE) -> list[str]:
    """
    Create every directory of C{paths} that is missing, with any missing
    parent (mode C{0o700} unless told otherwise), then fsync the parent of
    every directory created, once each, so that the new entries survive a
    crash.  Safe to call from several threads at once.  An existing
    directory costs one C{mkdir} and no fsync; its mode is left alone.

    @param paths: the directories, parents before children.
    @param mode: the mode of the directories created, exactly (the umask
        does not apply; a setgid bit inherited from the parent is kept).

    @return: the directories created, parents first.
    """
    created: list[str] = []
    for path in paths:
        _makeDirectory(os.path.normpath(path), created, mode)
    parents: dict[str, None] = {}
    for directory in reversed(created):
        parents[os.path.dirname(directory)] = None
    for parent in parents:
        fsyncDirectory(parent)
    return created


def ensureEmptyFile(path: str, mode: int = FILE_MODE) -> bool:
    """
    Make sure an empty marker file exists at C{path} (mode C{0o600}
    unless told otherwise),
    durably: a file created is fsynced, and so is its directory.  An
    existing file costs one C{open} and is left as it is.  Safe to call
    from several threads at once.

    @return: whether the file was created.

    @raise FileNotFoundError: its directory is missing.
    """
    try:
        fd = createFile(path, mode=mode)
    except FileExistsError:
        return False
    try:
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        fsyncDirectory(os.path.dirname(path) or ".")
    except BaseException:
        removeFile(path)
        raise
    return True


def createFile(path: str, readable: bool = False, mode: int = FILE_MODE) -> int:
    """
    Create a new file, mode C{0o600} unless told otherwise; never open an
    existing one.

    @param readable: open it for reading too (to copy from it later).
    @param mode: the file's mode, exactly: a mode other than the default
        is set again after the file is made, for the process's umask
        (C{022} by default) would take a group's write bit away.

    @return: the file descriptor.

    @raise FileExistsError: the name is taken.
    """
    flags = os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    flags |= os.O_RDWR if readable else os.O_WRONLY
    fd = os.open(path, flags, mode)
    if mode != FILE_MODE:
        try:
            os.fchmod(fd, mode)
        except BaseException:
            os.close(fd)
            removeFile(path)
            raise
    return fd


def writeAll(fd: int, data: Data) -> None:
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
    error that caused the cleanup is the one reported.  The caller fsyncs
    the directory if the removal must be durable.

    @return: L{None}, or the error that kept the file in place.
    """
    try:
        os.unlink(path)
    except FileNotFoundError:
        return None
    except OSError as e:
        return e
    return None


def removeDurably(path: str) -> bool:
    """
    Remove a file and fsync its directory, so that it stays gone after a
    crash.

    @return: whether the file was there.

    @raise OSError: it could not be removed, or the directory not fsynced.
    """
    return removeFiles([path])[0]


def moveFile(source: str, target: str, replace: bool = True) -> None:
    """
    Give a file its final name, atomically; the caller fsyncs the target's
    directory afterwards (once for several moves into one directory).

    @param replace: whether an existing C{target} is replaced
        (C{rename}); if not, C{link} then C{unlink} is used, and an
        existing C{target} raises L{FileExistsError} with C{source} left in
        place.

    @raise OSError: the file could not be moved; it is still at
        C{source}.
    """
    if replace:
        os.rename(source, target)
        return
    os.link(source, target)
    try:
        os.unlink(source)
    except BaseException:
        # Undo the link: the file is moved wholly or not at all.
        removeFile(target)
        raise


def writeNewFile(path: str, data: Union[Data, Iterable[Data]], mode: int = FILE_MODE) -> None:
    """
    Create C{path}, write C{data} and fsync it: the first half of
    L{writeDurably}, for a caller that gives the file its final name later.
    On failure the file is removed.

    @param data: the content, or an iterable of chunks of it.
    @param mode: the file's mode (L{createFile}).

    @raise FileExistsError: the name is taken; nothing was changed.
    """
    chunks = [data] if isinstance(data, (bytes, bytearray, memoryview)) else data
    fd = createFile(path, mode=mode)
    try:
        try:
            for chunk in chunks:
                writeAll(fd, chunk)
            os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        removeFile(path)
        raise


def writeDurably(
    path: str,
    data: Union[Data, Iterable[Data]],
    temporaryDirectory: Optional[str] = None,
    replace: bool = True,
    name: Optional[str] = None,
    mode: int = FILE_MODE,
) -> None:
    """
    Put C{data} at C{path} so that it is either wholly there, durably, or
    not there at all: write it to a unique temporary file, fsync it, move
    it to C{path} and fsync C{path}'s directory.

    @param data: the content, or an iterable of chunks of it.
    @param temporaryDirectory: where the temporary file goes; it must be on
        the same file system as C{path}.  L{None} for C{path}'s own
        directory (the temporary name then starts with a dot).
    @param replace: whether an existing C{path} is replaced (C{rename}); if
        not, C{link} is used, an existing C{path} raises
        L{FileExistsError}, and a new file whose directory cannot be
        fsynced is removed again.
    @param name: the temporary file's name, L{None} for a
        L{temporaryName}.
    @param mode: the file's mode (L{createFile}).

    @raise FileNotFoundError: a directory is missing; nothing was changed.
    """
    directory = os.path.dirname(path) or "."
    name = temporaryName() if name is None else name
    if temporaryDirectory is None:
        temporary = os.path.join(directory, "." + name)
    else:
        temporary = os.path.join(temporaryDirectory, name)
    writeNewFile(temporary, data, mode)
    try:
        moveFile(temporary, path, replace)
    except BaseException:
        removeFile(temporary)
        raise
    try:
        fsyncDirectory(directory)
    except BaseException:
        if not replace:
            removeFile(path)
        raise


def unlinkFiles(paths: Iterable[str]) -> list[bool]:
    """
    Remove files without syncing anything: the first half of
    L{removeFiles}, for a caller that fsyncs their directory once with
    other changes made in it.

    @return: for each path, whether the file was there.

    @raise OSError: a file could not be removed; those before it are gone.
    """
    removed = []
    for path in paths:
        try:
            os.unlink(path)
        except FileNotFoundError:
            removed.append(False)
        else:
            removed.append(True)
    return removed


def removeFiles(paths: Iterable[str]) -> list[bool]:
    """
    Remove files and fsync each of their directories once, after every
    removal: L{removeDurably} for several files at the cost of one fsync
    per directory (a group commit).

    @return: for each path, whether the file was there.

    @raise OSError: a file could not be removed, or a directory not
        fsynced.
    """
    paths = list(paths)
    removed = unlinkFiles(paths)
    directories = {os.path.dirname(path) or ".": None for path, gone in zip(paths, removed) if gone}
    for directory in directories:
        fsyncDirectory(directory)
    return removed


def writeNewFiles(files: Iterable[tuple[str, Data]], mode: int = FILE_MODE) -> None:
    """
    L{writeNewFile} for several files: each is created and written, then
    each is fsynced, so that the file system may flush them together
    rather than one journal commit each.  On failure every file made is
    removed.

    @param files: pairs of path and content.
    @param mode: the files' mode (L{createFile}).

    @raise FileExistsError: a name is taken.
    """
    made: list[tuple[str, int]] = []
    try:
        for path, data in files:
            fd = createFile(path, mode=mode)
            made.append((path, fd))
            writeAll(fd, data)
        for _, fd in made:
            os.fsync(fd)
    except BaseException:
        for path, fd in made:
            try:
                os.close(fd)
            except OSError:
                pass
            removeFile(path)
        raise
    for _, fd in made:
        os.close(fd)
