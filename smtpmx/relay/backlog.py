"""
The relay's backlog: the queued messages that wait on disk rather than in
memory (docs/relay.rst).

The relay service holds at most C{--relay-active-limit} messages in
memory, those being attempted; every other queued message waits in the
queue directory, and L{Backlog} decides when to look there for messages
that are due and takes them in through L{Queue.due} (a scan of the env
files' modification times, the next-attempt hint, as Postfix's deferred
queue does), as many as there is room for, oldest due first.

What it keeps in memory is bounded: the earliest time a message on disk
may be due, and a bounded list of IDs a scan found due but had no room
for.  A look runs in the thread pool while attempts go on; a message whose
attempt ends meanwhile may have been read in its older state, so what a
look read of it is dropped (L{Backlog.settled}): nothing delivered is ever
taken in again from a stale read.
"""

from __future__ import annotations

import math
from typing import Callable, Collection, Optional

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from smtpmx.relay.queue import DueMessages, Queue
from smtpmx.relay.queueformat import QueuedMessage

# Seconds between two scans even when none is known to be needed: the
# safety net for messages queued by another process without a word, and
# for hints lost in a crash.
RESCAN_INTERVAL = 60.0


class Backlog:
    """
    The messages waiting on disk, and the looks that take them in.

    @ivar dueAt: the earliest time a message waiting on disk (neither
        held nor a candidate) may be due: C{-inf} when unknown (the next
        chance to look does), C{inf} when none.
    @ivar candidates: IDs found due by the last scan, not taken in yet.
    @ivar looking: whether a look is running.
    """

    log = Logger()

    def __init__(self, queue: Queue, runBlocking: Callable[..., Deferred], clock, keep: int) -> None:
        """
        @param queue: the relay queue.
        @param runBlocking: runs L{Queue.due} off the reactor thread.
        @param clock: the clock of the schedule.
        @param keep: how many candidates to keep at most.
        """
        self.queue = queue
        self.runBlocking = runBlocking
        self.clock = clock
        self.keep = keep
        self.dueAt = -math.inf
        self.candidates: list[str] = []
        self.looking = False
        self._settled: set[str] = set()
        self._dueWhileLooking = math.inf
        self._lastScan = -math.inf

    def noteDue(self, at: float) -> None:
        """
        A message waiting on disk is due at C{at} (C{-inf}: something on
        disk may be due, look).
        """
        self.dueAt = min(self.dueAt, at)
        if self.looking:
            self._dueWhileLooking = min(self._dueWhileLooking, at)

    def settled(self, messageId: str) -> None:
        """
        The attempt of a held message ended and its state is on disk: what
        a look running now read of it may be older, and is dropped.
        """
        if self.looking:
            self._settled.add(messageId)

    def hear(self, messageId: str) -> None:
        """
        Someone else queued or changed C{messageId}: a candidate for the
        next look, first.
        """
        if messageId not in self.candidates:
            self.candidates.insert(0, messageId)

    def flushed(self) -> None:
        """
        Everything on disk was made due (C{smtpmx-queue flush}): scan
        afresh.
        """
        self.candidates = []
        self.noteDue(-math.inf)

    def tick(self, now: float) -> None:
        """
        The poll: after L{RESCAN_INTERVAL} seconds without a scan, scan.
        """
        if now - self._lastScan >= RESCAN_INTERVAL:
            self.noteDue(-math.inf)

    def look(self, room: int, held: Collection[str]) -> Optional[Deferred[list[QueuedMessage]]]:
        """
        Read up to C{room} messages due from disk, when some may be due and
        no look is running: the candidates first, then, if something on
        disk may be due, a scan.

        @param held: the IDs of the messages held in memory, left out.
        @return: L{None} when there is nothing to look for; else a
            L{Deferred} firing with the messages to take in, oldest due
            first, those settled meanwhile left out; it never fails (a
            failure is logged, and the next chance looks again).
        """
        now = self.clock.seconds()
        if self.looking or room <= 0 or (not self.candidates and self.dueAt > now):
            return None
        self.looking = True
        self._settled = set()
        self._dueWhileLooking = math.inf
        candidates, self.candidates = self.candidates, []
        d = self.runBlocking(self.queue.due, now, room, candidates, frozenset(held), self.keep, self.dueAt <= now)
        return d.addCallbacks(self._found, self._failed, callbackArgs=(now,))

    def _found(self, found: DueMessages, now: float) -> list[QueuedMessage]:
        """
        A look is done: note what it learnt of the disk, and drop what it
        read of messages settled meanwhile.
        """
        self.looking = False
        if found.scanned:
            self._lastScan = now
            self.dueAt = min(found.nextDue, self._dueWhileLooking)
        settled, self._settled = self._settled, set()
        heard = self.candidates
        self.candidates = heard + [c for c in found.candidates if c not in settled and c not in heard]
        return [m for m in found.messages if m.id not in settled]

    def _failed(self, failure: Failure) -> list[QueuedMessage]:
        """
        A look failed: logged; the next chance looks again.
        """
        self.looking = False
        self._settled = set()
        self.noteDue(-math.inf)
        self.log.failure("cannot read the relay queue", failure)
        return []
