"""
The Maildir layout (SPEC section 5): C{<root>/<domain>/<name>/} with its
C{tmp}, C{new} and C{cur} subdirectories.

Path computations are pure and safe to call on the reactor thread; the
functions that touch the disk block and belong in a thread.
"""

from __future__ import annotations

import os
from functools import lru_cache
from typing import Optional

from smtpmx.address import UnsafeMailbox, checkSafeName
from smtpmx.envelope import LocalMailbox
from smtpmx.spool import (
    createFile,
    ensureMaildir,
    fsyncDirectory,
    removeFile,
    uniqueName,
    writeAll,
)


@lru_cache(maxsize=4096)
def mailboxPath(root: str, mailbox: LocalMailbox) -> str:
    """
    The directory of a mailbox under C{root}.

    Both the domain and the name must be safe single directory names, and
    the normalised result must lie strictly under the normalised root, so
    that no mailbox can ever name a path outside the Maildir root.  The
    check is lexical (no file-system access), which keeps it cheap enough
    for the reactor thread; symbolic links inside the root are the
    operator's own and are followed.

    @param root: the Maildir root.

    The result is cached: the same few mailboxes receive most mail, and
    the answer is a pure function of its arguments.

    @raise UnsafeMailbox: the mailbox would not be a directory under the
        root.  It is a L{ValueError}.
    """
    checkSafeName(mailbox.domain)
    checkSafeName(mailbox.name)
    top = os.path.abspath(root)
    path = os.path.normpath(os.path.join(top, mailbox.domain, mailbox.name))
    if path == top or os.path.commonpath([top, path]) != top:
        raise UnsafeMailbox(f"mailbox {mailbox!r} is outside the Maildir root")
    return path


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


def createTemporary(mailbox: str, name: str, readable: bool = False) -> int:
    """
    Create C{tmp/<name>} in a Maildir, mode C{0o600}, creating the Maildir
    on first delivery.  The common case, a Maildir that exists, costs one
    C{open}.  Blocks.

    @param readable: open it for reading too.

    @return: the file descriptor.
    """
    path = temporaryPath(mailbox, name)
    try:
        return createFile(path, readable)
    except FileNotFoundError:
        ensureMaildir(mailbox)
        return createFile(path, readable)


def renameIntoNew(mailbox: str, name: str) -> str:
    """
    Move a finished file from C{tmp/} to C{new/}, creating a C{new/} that
    went missing.  The caller fsyncs C{new/} afterwards.  Blocks.

    @return: the path in C{new/}.
    """
    source = temporaryPath(mailbox, name)
    target = newPath(mailbox, name)
    try:
        os.rename(source, target)
    except FileNotFoundError:
        if not os.path.exists(source):
            raise
        ensureMaildir(mailbox)
        os.rename(source, target)
    return target


def deliverBytes(mailbox: str, data: bytes, hostname: Optional[str] = None) -> str:
    """
    File a whole message held in memory (a bounce, a notice) into a
    Maildir, creating the Maildir if need be: written in C{tmp/}, fsynced,
    renamed into C{new/}, C{new/} fsynced.  Blocks.

    @param mailbox: the Maildir, from L{mailboxPath}.
    @param hostname: passed to L{uniqueName}.

    @return: the path of the delivered file.
    """
    name = uniqueName(hostname)
    temporary = temporaryPath(mailbox, name)
    fd = createTemporary(mailbox, name)
    try:
        try:
            writeAll(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        target = renameIntoNew(mailbox, name)
    except BaseException:
        removeFile(temporary)
        raise
    try:
        fsyncDirectory(os.path.dirname(target))
    except BaseException:
        removeFile(target)
        raise
    return target
