"""
Local delivery into Maildirs, all in one place: the layout
C{<root>/<domain>/<name>/} with its C{tmp}, C{new} and C{cur}
subdirectories and its Maildir++ folders (C{.Junk/}, with their
C{maildirfolder} marker), the unique file names, the checked path of a mailbox, the
delivery of a message held in memory (L{deliverBytes}) and the store that
streams received messages into every local recipient's Maildir
(L{MaildirStore}), all or nothing.  C{docs/storage.rst} describes the
layout and its guarantees.

Path computations are pure and safe to call on the reactor thread; the
functions that touch the disk block and belong in a thread.  Every durable
step is L{smtpmx.durable}'s.

L{MaildirStore} streams the body into the first copy's file in C{tmp/} as
it arrives (L{smtpmx.streaming}).  At the end one more job writes the
rest, makes the other copies from the first file's body (in the kernel
where possible), fsyncs every file, renames them into C{new/} and fsyncs
each C{new/} once.  If any step fails, every file of the message is
removed, including those already renamed into C{new/}.
"""

from __future__ import annotations

import enum
import itertools
import os
import socket
import time
from functools import lru_cache
from typing import Optional

from zope.interface import implementer

from smtpmx import durable
from smtpmx.address import UnsafeMailbox, checkSafeName
from smtpmx.envelope import Envelope, LocalMailbox
from smtpmx.headers import deliveredTo, returnPath
from smtpmx.interfaces import IMessageStore
from smtpmx.streaming import (
    BACKLOG_LIMIT,
    CHUNK_SIZE,
    MessageFiles,
    RunBlocking,
    StreamingMessage,
)

# The subdirectories of a Maildir.
SUBDIRECTORIES = ("tmp", "new", "cur")

# The empty file that marks a Maildir++ folder (a Maildir inside a
# mailbox, named with a leading dot), as Courier and Dovecot expect it.
FOLDER_MARKER = "maildirfolder"

# next() on itertools.count is atomic in CPython: no lock needed for names
# made from several threads at once.
_counter = itertools.count()

# Body bytes written in one write with a copy's headers, at most: joining
# costs a copy of them, saving one system call.
SMALL_WRITE = 256 * 1024


@lru_cache(maxsize=4096)
def mailboxPath(root: str, mailbox: LocalMailbox) -> str:
    """
    The Maildir of a mailbox under C{root}: the one function that turns a
    mailbox into a path, for the store, the validators and the relay's
    bounces alike.  The mailbox itself (INBOX) is C{<root>/<domain>/<name>};
    a folder of it is the Maildir++ folder C{<root>/<domain>/<name>/.<folder>}
    (C{docs/storage.rst}).

    The domain, the name and the folder must each be safe single directory
    names (none starts with a dot, so C{.<folder>} can never be C{..}), and
    the normalised result must lie strictly under the normalised root, so
    that no mailbox can ever name a path outside the Maildir root.  The
    check is lexical (no file-system access), which keeps it cheap enough
    for the reactor thread; symbolic links inside the root are the
    operator's own and are followed.

    The result is cached: the same few mailboxes receive most mail, and
    the answer is a pure function of its arguments.

    @param root: the Maildir root.

    @raise UnsafeMailbox: the mailbox would not be a directory under the
        root.  It is a L{ValueError}.
    """
    checkSafeName(mailbox.domain)
    checkSafeName(mailbox.name)
    parts = [mailbox.domain, mailbox.name]
    if mailbox.folder is not None:
        checkSafeName(mailbox.folder)
        folder = "." + mailbox.folder
        if len(folder.encode("utf-8", "surrogateescape")) > 255:
            raise UnsafeMailbox("folder name too long")
        parts.append(folder)
    top = os.path.abspath(root)
    path = os.path.normpath(os.path.join(top, *parts))
    if path == top or os.path.commonpath([top, path]) != top:
        raise UnsafeMailbox(f"mailbox {mailbox!r} is outside the Maildir root")
    return path


def isFolder(path: str) -> bool:
    """
    Whether the Maildir C{path} is a Maildir++ folder inside a mailbox
    rather than a mailbox itself: only a folder's directory name starts
    with a dot, for no domain or mailbox name may (L{mailboxPath}).
    """
    return os.path.basename(os.path.normpath(path)).startswith(".")


def uniqueName(hostname: Optional[str] = None) -> str:
    """
    A file name unique to this host, in the form Maildir readers expect:
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


def temporaryPath(mailbox: str, name: str) -> str:
    """
    Where a message being written to the Maildir C{mailbox} lives.
    """
    return os.path.join(mailbox, "tmp", name)


def newPath(mailbox: str, name: str) -> str:
    """
    Where a delivered message of the Maildir C{mailbox} lives.
    """
    return os.path.join(mailbox, "new", name)


def ensureMaildir(path: str, mode: int = durable.FILE_MODE) -> None:
    """
    Make sure C{path} is a Maildir: create it, any missing parent, and its
    C{tmp}, C{new} and C{cur} subdirectories (mode C{0o700}, or the
    directory mode matching C{--maildir-mode}), then fsync
    the parent of every directory created so that the new entries survive
    a crash.  Safe to call from several threads at once.  Blocks.

    A Maildir++ folder (L{isFolder}) also gets its mailbox made a whole
    Maildir and its C{maildirfolder} marker, written before its own
    subdirectories: a crash can leave a folder without C{tmp/} (repaired
    by the next delivery, which calls this again) but never one with
    C{tmp/} and without its marker.

    @param path: the Maildir.
    @param mode: the mode of the files in it (C{--maildir-mode}); its
        directories get L{durable.directoryModeFor} it.
    """
    path = os.path.normpath(path)
    subdirectories = [os.path.join(path, sub) for sub in SUBDIRECTORIES]
    directoryMode = durable.directoryModeFor(mode)
    if isFolder(path):
        parent = os.path.dirname(path)
        durable.makeDirectories(
            [parent] + [os.path.join(parent, sub) for sub in SUBDIRECTORIES] + [path],
            directoryMode,
        )
        durable.ensureEmptyFile(os.path.join(path, FOLDER_MARKER), mode)
        durable.makeDirectories(subdirectories, directoryMode)
    else:
        durable.makeDirectories([path] + subdirectories, directoryMode)


def createTemporary(
    mailbox: str, name: str, readable: bool = False, mode: int = durable.FILE_MODE
) -> int:
    """
    Create C{tmp/<name>} in a Maildir, mode C{0o600} unless told otherwise,
    creating the Maildir on first delivery.  The common case, a Maildir
    that exists, costs one C{open} (and one C{fchmod} for a mode other
    than the default).  Blocks.

    @param readable: open it for reading too.
    @param mode: the file's mode (C{--maildir-mode}).

    @return: the file descriptor.
    """
    path = temporaryPath(mailbox, name)
    try:
        return durable.createFile(path, readable, mode)
    except FileNotFoundError:
        ensureMaildir(mailbox, mode)
        return durable.createFile(path, readable, mode)


def renameIntoNew(mailbox: str, name: str, mode: int = durable.FILE_MODE) -> str:
    """
    Move a finished file from C{tmp/} to C{new/}, creating a C{new/} that
    went missing.  The caller fsyncs C{new/} afterwards.  Blocks.

    @param mode: the Maildir's file mode, for a C{new/} made again.

    @return: the path in C{new/}.
    """
    source = temporaryPath(mailbox, name)
    target = newPath(mailbox, name)
    try:
        durable.moveFile(source, target)
    except FileNotFoundError:
        if not os.path.exists(source):
            raise
        ensureMaildir(mailbox, mode)
        durable.moveFile(source, target)
    return target


def deliverBytes(
    mailbox: str, data: bytes, hostname: Optional[str] = None, mode: int = durable.FILE_MODE
) -> str:
    """
    File a whole message held in memory (a bounce, a notice) into a
    Maildir, creating the Maildir if need be: written in C{tmp/}, fsynced,
    moved into C{new/}, C{new/} fsynced; on failure nothing is left.
    Blocks.

    @param mailbox: the Maildir, from L{mailboxPath}.
    @param hostname: passed to L{uniqueName}.
    @param mode: the file's mode (C{--maildir-mode}).

    @return: the path of the delivered file.
    """
    name = uniqueName(hostname)
    target = newPath(mailbox, name)
    temporaryDirectory = os.path.join(mailbox, "tmp")
    try:
        durable.writeDurably(target, data, temporaryDirectory, replace=False, name=name, mode=mode)
    except FileNotFoundError:
        # A Maildir not made yet, or missing a subdirectory: nothing was
        # written, so make it and write again.
        ensureMaildir(mailbox, mode)
        durable.writeDurably(target, data, temporaryDirectory, replace=False, name=name, mode=mode)
    return target


class CopyState(enum.Enum):
    """
    Where the file of one L{MaildirCopy} is.
    """

    NONE = "none"
    TMP = "tmp"
    NEW = "new"


class MaildirCopy:
    """
    One file of a message: the copy for one mailbox and one Delivered-To
    value.  Used only inside the jobs, one at a time.

    @ivar state: L{CopyState.NONE} before the file exists,
        L{CopyState.TMP} while it is in C{tmp/}, L{CopyState.NEW} once
        renamed into C{new/}.
    """

    def __init__(self, mailbox: str, headers: bytes, mode: int = durable.FILE_MODE) -> None:
        """
        @param mailbox: the Maildir.
        @param headers: the headers that start this copy.
        @param mode: the file's mode (C{--maildir-mode}).
        """
        self.mailbox = mailbox
        self.headers = headers
        self.mode = mode
        self.name = ""
        self.fd: Optional[int] = None
        self.state = CopyState.NONE

    def create(self, hostname: str, readable: bool = False, body: bytes = b"") -> int:
        """
        Create this copy's file in C{tmp/} and write its headers, and
        C{body} after them in the same write.
        """
        self.name = uniqueName(hostname)
        self.fd = createTemporary(self.mailbox, self.name, readable, self.mode)
        self.state = CopyState.TMP
        durable.writeAll(self.fd, self.headers + body if body else self.headers)
        return self.fd

    def close(self) -> None:
        """
        Close the file if it is open.
        """
        if self.fd is not None:
            fd, self.fd = self.fd, None
            os.close(fd)

    def remove(self) -> Optional[OSError]:
        """
        Remove the file wherever it is (the caller fsyncs C{new/}).

        @return: L{None}, or the error that kept the file in place.
        """
        if self.state is CopyState.TMP:
            problem = durable.removeFile(temporaryPath(self.mailbox, self.name))
        elif self.state is CopyState.NEW:
            problem = durable.removeFile(newPath(self.mailbox, self.name))
        else:
            return None
        if problem is None:
            self.state = CopyState.NONE
        return problem


class MaildirFiles(MessageFiles):
    """
    The files of one message for one or more Maildirs, the blocking side
    of its L{StreamingMessage}: the body streams into the first copy, and
    sealing makes the others from it.
    """

    def __init__(self, copies: list[MaildirCopy], hostname: str) -> None:
        """
        @param copies: the copies, the first of which receives the body as
            it streams in.
        @param hostname: for the unique file names.
        """
        self._copies = copies
        self._hostname = hostname
        self._bodySize = 0

    def _first(self) -> int:
        """
        The first copy's descriptor, creating the file on first use.
        """
        first = self._copies[0]
        if first.fd is None:
            first.create(self._hostname, readable=True)
        assert first.fd is not None
        return first.fd

    def appendBody(self, data: bytes) -> None:
        """
        Append body bytes to the first copy; the first bytes go with its
        headers, in one write (a small message is one write in all).
        """
        first = self._copies[0]
        if first.fd is None and len(data) <= SMALL_WRITE:
            first.create(self._hostname, readable=True, body=data)
        else:
            durable.writeAll(self._first(), data)
        self._bodySize += len(data)

    def seal(self) -> None:
        """
        Make every other copy from the first one's body, then fsync them
        all, leaving them in C{tmp/}.
        """
        source = self._first()
        bodyOffset = len(self._copies[0].headers)
        for copy in self._copies[1:]:
            fd = copy.create(self._hostname)
            durable.copyRange(source, fd, bodyOffset, self._bodySize)
        for copy in self._copies:
            assert copy.fd is not None
            durable.fsyncFile(copy.fd)
            copy.close()

    def publish(self) -> None:
        """
        Move every sealed copy into C{new/} and fsync each C{new/}
        directory once.
        """
        directories: dict[str, None] = {}
        for copy in self._copies:
            renameIntoNew(copy.mailbox, copy.name, copy.mode)
            copy.state = CopyState.NEW
            directories[os.path.join(copy.mailbox, "new")] = None
        for directory in directories:
            durable.fsyncDirectory(directory)

    def discard(self) -> list[BaseException]:
        """
        Close and remove every file of the message, wherever it is, and
        fsync the C{new/} directories it was removed from.  Never raises.

        @return: the errors met on the way.
        """
        problems: list[BaseException] = []
        directories: dict[str, None] = {}
        for copy in self._copies:
            try:
                copy.close()
            except OSError as e:
                problems.append(e)
            wasNew = copy.state is CopyState.NEW
            problem = copy.remove()
            if problem is not None:
                problems.append(problem)
            elif wasNew:
                directories[os.path.join(copy.mailbox, "new")] = None
        for directory in directories:
            try:
                durable.fsyncDirectory(directory)
            except OSError as e:
                problems.append(e)
        return problems


@implementer(IMessageStore)
class MaildirStore:
    """
    Files messages for local recipients into Maildirs under a root,
    C{<root>/<domain>/<name>/}, creating a Maildir on its first delivery.
    Its messages are L{StreamingMessage}s, which provide
    L{smtpmx.interfaces.ITwoPhaseMessage}.

    Each copy starts with C{Return-Path}, C{Delivered-To} (the recipient as
    the client gave it), the envelope's C{Received} header and its
    C{extraHeaders} (the message filters' fields).  Recipients that share
    a mailbox and a C{Delivered-To} value (compared without regard to
    case) get one copy.

    A L{LocalMailbox} with a C{folder} is filed in that Maildir++ folder
    of the mailbox (C{.Junk/} for C{"Junk"}), created on first use with
    the same durability as the mailbox itself; one message's copies in
    mailboxes and folders are filed all or nothing.  One envelope files a
    mailbox in one folder only, so that no recipient gets the same message
    both in its INBOX and in its Junk folder.

    Files get C{mode} (C{--maildir-mode}) and the directories it makes
    the matching search bits (L{durable.directoryModeFor}): C{0660} and
    C{0770} let a Dovecot in the Maildir root's group read and write
    them (docs/storage.rst).
    """

    def __init__(
        self,
        root: str,
        runBlocking: RunBlocking,
        hostname: Optional[str] = None,
        chunkSize: int = CHUNK_SIZE,
        backlogLimit: int = BACKLOG_LIMIT,
        mode: int = durable.FILE_MODE,
    ) -> None:
        """
        @param root: the Maildir root; made absolute now, so that a later
            change of the working directory does not move it.
        @param runBlocking: C{runBlocking(f, *args, **kwargs)} runs C{f} in
            a thread pool and returns a L{Deferred} of its result.
        @param hostname: the host name in the unique file names; L{None}
            for this host's own, as the Maildir specification asks.
        @param chunkSize: body bytes gathered before a write job is sent.
        @param backlogLimit: pending body bytes past which C{write} asks
            the caller to wait.
        @param mode: the mode of the files filed (C{--maildir-mode}).
        """
        self._root = os.path.abspath(root)
        self._mode = mode
        self._runBlocking = runBlocking
        self._hostname = socket.gethostname() if hostname is None else hostname
        self._chunkSize = chunkSize
        self._backlogLimit = backlogLimit

    def receive(self, envelope: Envelope) -> StreamingMessage:
        """
        Begin storing a message for every recipient of C{envelope}.

        @raise ValueError: a recipient is not a local mailbox (relaying is
            not this store's job), a mailbox or folder is not a safe name
            under the root, a mailbox is given in two folders, or there is
            no recipient.
        """
        top = returnPath(envelope.reversePath)
        trace = envelope.received + envelope.extraHeaders
        copies: list[MaildirCopy] = []
        seen: set[tuple[LocalMailbox, str]] = set()
        folders: dict[tuple[str, str], Optional[str]] = {}
        for recipient in envelope.recipients:
            destination = recipient.destination
            if not isinstance(destination, LocalMailbox):
                raise ValueError(f"MaildirStore cannot deliver to {destination!r}")
            mailbox = (destination.domain, destination.name)
            folder = folders.setdefault(mailbox, destination.folder)
            if folder != destination.folder:
                raise ValueError(
                    f"mailbox {destination.name}@{destination.domain} given in folders "
                    f"{folder!r} and {destination.folder!r}"
                )
            key = (destination, str(recipient.address).lower())
            if key in seen:
                continue
            seen.add(key)
            copies.append(
                MaildirCopy(
                    mailboxPath(self._root, destination),
                    top + deliveredTo(recipient.address) + trace,
                    self._mode,
                )
            )
        if not copies:
            raise ValueError("a message needs at least one recipient")
        return StreamingMessage(
            MaildirFiles(copies, self._hostname),
            self._runBlocking,
            self._chunkSize,
            self._backlogLimit,
        )
