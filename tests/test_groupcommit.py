"""
Tests for the group commit of the relay queue's state changes:
L{smtpmx.relay.queue.Queue.commit} (several saves and removals, one fsync
per directory) and L{smtpmx.relay.groupcommit.StateCommits}, which
gathers the changes asked for while a batch is being made durable.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from smtpmx import durable
from smtpmx.relay.groupcommit import StateCommits
from smtpmx.relay.queue import Queue
from tests.helpers import recordDirectorySyncs, recordRemovals
from tests.test_queue import makeMessage


class QueueCommitTests(SynchronousTestCase):
    """
    L{Queue.commit}: saves and removals made durable together.
    """

    def setUp(self) -> None:
        """
        A recovered queue holding three messages, A, B and C.
        """
        path = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, path)
        self.queue = Queue(os.path.join(path, "queue"))
        self.queue.recover()
        for messageId in "ABC":
            self.queue.add(makeMessage(messageId), b"x\n")

    def test_oneFsyncPerDirectory(self) -> None:
        """
        Two saves and two removals cost one fsync of C{env/} and then one of
        C{msg/}; the saved states and the removals are all there afterwards.
        """
        synced = recordDirectorySyncs(self)
        a, b = makeMessage("A", sender="new@example.net"), makeMessage("B", sender="other@example.net")
        self.assertEqual(self.queue.commit([a, b], ["C", "D"]), ([True, True], [True, False]))
        self.assertEqual(synced, [self.queue.envelopeDirectory, self.queue.messageDirectory])
        self.assertEqual(self.queue.load("A"), a)
        self.assertEqual(self.queue.load("B"), b)
        self.assertIsNone(self.queue.load("C"))
        self.assertEqual(sorted(os.listdir(self.queue.messageDirectory)), ["A", "B"])
        self.assertEqual(os.listdir(self.queue.temporaryDirectory), [])

    def test_envelopeGoneBeforeMessageFile(self) -> None:
        """
        The removed messages' env files are gone, durably, before their
        message files are removed: a crash in between leaves message files
        that recovery removes, never a queued message without its file.
        """
        events = recordRemovals(self)
        self.queue.commit([], ["A", "B"])
        self.assertEqual(
            events,
            [("unlink", "env"), ("unlink", "env"), ("fsync", "env"),
             ("unlink", "msg"), ("unlink", "msg"), ("fsync", "msg")],
        )

    def test_deletedNotBroughtBack(self) -> None:
        """
        A message deleted meanwhile is not saved again; the others are, and
        its temporary state file is not left behind.
        """
        self.queue.remove("B")
        a, b = makeMessage("A", sender="new@example.net"), makeMessage("B", sender="new@example.net")
        self.assertEqual(self.queue.commit([a, b]), ([True, False], []))
        self.assertIsNone(self.queue.load("B"))
        self.assertEqual(self.queue.load("A"), a)
        self.assertEqual(os.listdir(self.queue.temporaryDirectory), [])

    def test_nothingToSync(self) -> None:
        """
        A batch that changes nothing syncs nothing.
        """
        synced = recordDirectorySyncs(self)
        self.assertEqual(self.queue.commit([makeMessage("Z")], ["Y"]), ([False], [False]))
        self.assertEqual(synced, [])

    def test_failedFsync(self) -> None:
        """
        When C{env/} cannot be fsynced the whole batch fails, and no
        temporary file is left behind.
        """

        def broken(path: str) -> None:
            """
            Fail.
            """
            raise OSError(errno.EIO, "I/O error")

        self.patch(durable, "fsyncDirectory", broken)
        self.assertRaises(OSError, self.queue.commit, [makeMessage("A")], ["B"])
        self.assertEqual(os.listdir(self.queue.temporaryDirectory), [])

    def test_badIdChangesNothing(self) -> None:
        """
        An ID that is not a queue ID fails the batch before anything is
        written.
        """
        before = self.queue.load("A")
        self.assertRaises(ValueError, self.queue.commit, [makeMessage("A", sender="x@y")], ["../B"])
        self.assertEqual(self.queue.load("A"), before)
        self.assertEqual(os.listdir(self.queue.temporaryDirectory), [])


class StateCommitsTests(SynchronousTestCase):
    """
    L{StateCommits}: changes asked for while a batch is committed go
    together in the next.
    """

    def setUp(self) -> None:
        """
        Commits whose thread runner records each job and lets the test
        finish it.
        """
        self.jobs: list[tuple[tuple, Deferred]] = []

        def runBlocking(f, *args):
            """
            Record the job; the test fires its result.
            """
            d: Deferred = Deferred()
            self.jobs.append((args, d))
            return d

        self.commits = StateCommits(Queue(tempfile.gettempdir()), runBlocking)

    def test_firstAtOnceRestTogether(self) -> None:
        """
        The first change is committed at once; those asked for meanwhile
        wait and go in one batch when it is done, and each caller learns
        its own outcome only when its batch is.
        """
        a = makeMessage("A")
        first = self.commits.save(a)
        self.assertEqual([args for args, _ in self.jobs], [([a], [])])
        second = self.commits.remove("B")
        c = makeMessage("C")
        third = self.commits.save(c)
        self.assertEqual(len(self.jobs), 1)
        self.assertNoResult(second)
        self.jobs[0][1].callback(([True], []))
        self.assertTrue(self.successResultOf(first))
        self.assertEqual([args for args, _ in self.jobs[1:]], [([c], ["B"])])
        self.assertNoResult(second)
        self.jobs[1][1].callback(([False], [True]))
        self.assertTrue(self.successResultOf(second))
        self.assertFalse(self.successResultOf(third))
        self.assertEqual(self.commits.batches, 2)

    def test_failureFailsTheBatch(self) -> None:
        """
        A batch that fails fails every change in it, and the changes asked
        for meanwhile are still committed after it.
        """
        first = self.commits.remove("A")
        second = self.commits.remove("B")
        third = self.commits.remove("C")
        self.jobs[0][1].callback(([], [True]))
        self.jobs[1][1].errback(OSError(errno.EIO, "I/O error"))
        self.failureResultOf(second, OSError)
        self.failureResultOf(third, OSError)
        self.assertTrue(self.successResultOf(first))
        fourth = self.commits.remove("D")
        self.assertEqual(self.jobs[2][0], ([], ["D"]))
        self.jobs[2][1].callback(([], [True]))
        self.assertTrue(self.successResultOf(fourth))
