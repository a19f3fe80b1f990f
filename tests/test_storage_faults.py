"""
Fault injection at every storage step, seen from the client: the real
stores (L{smtpmx.routing.RoutingStore} over L{smtpmx.delivery.maildir}
and the relay queue's L{smtpmx.relay.intake.QueueStore}) behind the real
server protocol, in memory, with each system call that makes a message
durable -- the temporary file's creation, a write, the file's C{fsync},
the rename or link, the directory's C{fsync} (C{docs/storage.rst}) --
made to fail in turn, one at a time.

Every single failure ends the same way: the client hears C{451 4.3.0}
(RFC 5321 section 4.1.1.4: the server did not take responsibility),
nothing is in any Maildir (C{new/}, C{cur/}, C{tmp/}), nothing in the
queue (C{env/}, C{msg/}, C{tmp/}), the relay service is told of
nothing; and the same client, sending the same message again on the same
connection once the disk is well, gets C{250} and exactly one copy for
each recipient.  The tests of each store (C{tests/test_maildir_store.py},
C{tests/test_queue.py}, C{tests/test_routing.py}) hold the details of
each rollback; this file proves the whole path, step by step.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import Any, Callable, Optional

from twisted.internet.error import ConnectionDone
from twisted.logger import capturedLogs
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from smtpmx import streaming
from smtpmx.delivery.maildir import MaildirStore
from smtpmx.relay.intake import QueueStore
from smtpmx.relay.queue import Queue
from smtpmx.routing import RoutingStore
from smtpmx.validation import Accept
from tests.helpers import makeDirectory
from tests.serverhelpers import Server
from tests.test_maildir_store import runNow

# The steps of a durable write (smtpmx.durable), and the error each fails
# with, as a disk would.
STEPS = {
    "create": errno.EACCES,
    "write": errno.ENOSPC,
    "fsync": errno.EIO,
    "move": errno.EIO,
    "dirsync": errno.EIO,
}

CLIENT = "192.0.2.1"
BODY = b"Subject: fault\r\n\r\n" + b"A line of the body, long enough to stream.\r\n" * 8


class Faults:
    """
    Watches the system calls that make a message durable, each classed
    by step and by where its file is (the Maildir root or the queue), and
    fails one of them when told to.

    @ivar seen: every call watched, as C{(step, area)}, in order.
    @ivar failAt: the index in L{seen} of the call to fail, or L{None}.
    @ivar failed: the C{(step, area)} that was failed, once it was.
    """

    def __init__(self, case: SynchronousTestCase, areas: dict[str, str]) -> None:
        """
        Patch C{os} for the length of the test C{case}.

        @param areas: directory by area name; calls on other paths are
            not watched.
        """
        self.areas = areas
        self.seen: list[tuple[str, str]] = []
        self.failAt: Optional[int] = None
        self.failed: Optional[tuple[str, str]] = None
        real = {name: getattr(os, name) for name in ("open", "write", "fsync", "rename", "link", "copy_file_range")}

        def watch(step: Callable[..., Optional[str]], name: str, where: Callable[..., Optional[str]]):
            """
            A wrapper of C{os.<name>} that classes each call.
            """
            def call(*args: Any, **kwargs: Any) -> Any:
                """
                Note the call; fail it if it is the one to fail.
                """
                kind = step(*args, **kwargs)
                area = self.area(where(*args)) if kind is not None else None
                if area is not None:
                    self.seen.append((kind, area))
                    if len(self.seen) - 1 == self.failAt:
                        self.failed = (kind, area)
                        raise OSError(STEPS[kind], os.strerror(STEPS[kind]))
                return real[name](*args, **kwargs)
            return call

        def creating(path: Any, flags: int, *rest: Any, **kw: Any) -> Optional[str]:
            """
            An C{open} that creates a new file is the create step.
            """
            return "create" if flags & os.O_CREAT and flags & os.O_EXCL else None

        def syncing(fd: int) -> str:
            """
            An C{fsync} of a directory is a step of its own.
            """
            return "dirsync" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync"

        case.patch(os, "open", watch(creating, "open", lambda path, *a: path))
        case.patch(os, "write", watch(lambda *a: "write", "write", lambda fd, *a: self.pathOf(fd)))
        case.patch(os, "copy_file_range", watch(lambda *a: "write", "copy_file_range", lambda src, dst, *a: self.pathOf(dst)))
        case.patch(os, "fsync", watch(syncing, "fsync", lambda fd: self.pathOf(fd)))
        case.patch(os, "rename", watch(lambda *a: "move", "rename", lambda src, dst: dst))
        case.patch(os, "link", watch(lambda *a: "move", "link", lambda src, dst, *a: dst))

    @staticmethod
    def pathOf(fd: int) -> str:
        """
        The path an open descriptor is for.
        """
        return os.readlink(f"/proc/self/fd/{fd}")

    def area(self, path: Any) -> Optional[str]:
        """
        Which area C{path} lies in, if any.
        """
        path = os.path.abspath(os.fsdecode(path))
        for name, directory in self.areas.items():
            if path.startswith(directory + os.sep):
                return name
        return None


class StorageFaultTests(SynchronousTestCase):
    """
    Every durable step of storing a message fails in turn, behind the
    real protocol; the client is told C{451}, nothing is stored, and the
    next attempt is stored once.
    """

    def makeServer(self, chunkSize: int) -> tuple[Server, dict[str, str], list]:
        """
        A server whose messages go to a real Maildir root and a real
        queue in fresh directories, their blocking jobs run at once.

        @return: the server, the areas, and the list of messages the
            relay service is told of.
        """
        top = makeDirectory(self)
        areas = {"maildir": os.path.join(top, "Maildir"), "queue": os.path.join(top, "queue")}
        queue = Queue(areas["queue"])
        queue.recover()
        announced: list = []
        server = Server(
            verdicts={"alice@example.org": Accept(), "bob@example.org": Accept()},
            clientHost=CLIENT,
            relayNetworks=(CLIENT + "/32",),
            maildirRoot=areas["maildir"],
            queueDir=areas["queue"],
        )
        server.factory.store = RoutingStore(
            MaildirStore(areas["maildir"], runNow, hostname="mx", chunkSize=chunkSize),
            QueueStore(queue, runNow, server.clock, onQueued=announced.append, chunkSize=chunkSize),
        )
        server.protocol, server.transport = server.connect()
        server.output()
        server.send("EHLO client.example\r\n")
        return server, areas, announced

    def transaction(self, server: Server, recipients: list[str], piece: int) -> str:
        """
        One whole transaction, the commands in one write, the message in
        writes of C{piece} bytes; the last line of the reply to the end of
        the data.
        """
        data = b"MAIL FROM:<sender@remote.example>\r\n"
        data += b"".join(b"RCPT TO:<" + r.encode() + b">\r\n" for r in recipients)
        server.codes(data + b"DATA\r\n")
        message = BODY + b".\r\n"
        replies = []
        for start in range(0, len(message), piece):
            replies += server.codes(message[start:start + piece])
        [last] = replies
        return last

    def files(self, areas: dict[str, str]) -> dict[str, list[str]]:
        """
        Every file under each area, relative to it.
        """
        return {
            name: sorted(
                os.path.relpath(os.path.join(where, f), top)
                for where, _, names in os.walk(top)
                for f in names
                if not f.startswith(".")
            )
            for name, top in areas.items()
        }

    def stored(self, areas: dict[str, str]) -> list[str]:
        """
        The files a reader sees: in a Maildir's C{new/} or C{cur/}, in the
        queue's C{msg/} or C{env/}, or anywhere in a C{tmp/}.
        """
        return [
            path
            for paths in self.files(areas).values()
            for path in paths
            if os.path.basename(os.path.dirname(path)) in ("new", "cur", "msg", "env", "tmp")
        ]

    def expected(self, recipients: list[str]) -> list[str]:
        """
        The kinds of file that one stored message leaves: one in C{new/}
        per local recipient, C{env/} and C{msg/} in the queue if any is
        remote.
        """
        kinds = [f"{r.split('@')[0]}/new" for r in recipients if r.endswith("@example.org")]
        if any(not r.endswith("@example.org") for r in recipients):
            kinds += ["env", "msg"]
        return sorted(kinds)

    def kinds(self, areas: dict[str, str]) -> list[str]:
        """
        L{stored}, each path shortened to what L{expected} lists.
        """
        out = []
        for path in self.stored(areas):
            parts = path.split(os.sep)
            out.append(parts[0] if parts[0] in ("env", "msg", "tmp") else f"{parts[-3]}/{parts[-2]}")
        return sorted(out)

    def everyFault(self, recipients: list[str], chunkSize: int = streaming.CHUNK_SIZE) -> int:
        """
        Store a message for C{recipients} once with no fault, to see every
        durable step it takes; then, for each step, on a fresh server: fail
        that one step, check the C{451} and that nothing is stored; send
        again, check the C{250} and one copy each.

        @return: how many faults were tried.
        """
        server, areas, announced = self.makeServer(chunkSize)
        faults = Faults(self, areas)
        self.assertTrue(self.transaction(server, recipients, chunkSize).startswith("250 2.0.0"))
        steps = list(faults.seen)
        self.assertEqual(self.kinds(areas), self.expected(recipients))
        self.assertEqual({step for step, _ in steps}, set(STEPS), steps)
        problems = []
        for index in range(len(steps)):
            server, areas, announced = self.makeServer(chunkSize)
            faults.areas, faults.seen, faults.failAt, faults.failed = areas, [], index, None
            with capturedLogs() as events:
                first = self.transaction(server, recipients, chunkSize)
            faults.failAt = None
            what = f"fault {index} {steps[index]}"
            if faults.failed != steps[index]:
                problems.append(f"{what}: failed {faults.failed} instead")
            if not first.startswith("451 4.3.0"):
                problems.append(f"{what}: the client heard {first!r}")
            if self.stored(areas) or announced:
                problems.append(f"{what}: left {self.stored(areas)}, announced {announced}")
            failures = [e["log_failure"] for e in events if "log_failure" in e]
            if not failures or not all(f.check(OSError) for f in failures):
                problems.append(f"{what}: logged {[str(f.value) for f in failures]}")
            second = self.transaction(server, recipients, chunkSize)
            if not second.startswith("250 2.0.0"):
                problems.append(f"{what}: the second attempt heard {second!r}")
            if self.kinds(areas) != self.expected(recipients) or len(announced) != any(
                not r.endswith("@example.org") for r in recipients
            ):
                problems.append(f"{what}: the second attempt stored {self.kinds(areas)}, announced {announced}")
            server.protocol.connectionLost(Failure(ConnectionDone()))
        # Each failure was logged with its cause, and nothing else.
        self.assertEqual(len(self.flushLoggedErrors(OSError)), len(steps))
        self.assertEqual(problems, [])
        return len(steps)

    def test_localRecipient(self) -> None:
        """
        A message for one local recipient: each of its durable steps
        (creating C{tmp/} file, writing, fsync, rename into C{new/},
        fsync of C{new/}) failing gives C{451} and an empty Maildir.
        """
        self.assertGreaterEqual(self.everyFault(["alice@example.org"]), 5)

    def test_remoteRecipient(self) -> None:
        """
        A message to relay: each durable step of the queue (the message
        file in C{tmp/}, its write and fsync, its link into C{msg/}, the
        fsync of C{msg/}, the state's file, write, fsync, rename into
        C{env/}, the fsync of C{env/}) failing gives C{451} and an empty
        queue, and the relay service hears of nothing.
        """
        self.assertGreaterEqual(self.everyFault(["dave@remote.example"]), 10)

    def test_localAndRemoteRecipients(self) -> None:
        """
        Two local recipients and a remote one, the body streamed to disk
        in small chunks as it comes: whichever step fails -- the queue's,
        the first Maildir's, the second's, even the fsync of C{env/} after
        both copies are in C{new/} -- no copy stays anywhere.
        """
        self.assertGreaterEqual(
            self.everyFault(["alice@example.org", "dave@remote.example", "bob@example.org"], chunkSize=64), 20
        )
