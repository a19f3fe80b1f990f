"""
Group commit of the relay queue's state changes: the relay service saves
a message's state or removes a message after every attempt, and each
change must be durable before the service goes on (docs/storage.rst).
Made one at a time, each costs its own directory fsync under the queue's
lock, and the attempts of a busy queue wait in line for it.
L{StateCommits} gathers the changes asked for while one batch is being
made durable into the next batch, made with one L{Queue.commit}: one
fsync of each directory for the whole batch, and every caller told only
once its change is durable.
"""

from __future__ import annotations

from typing import Callable

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from smtpmx.relay.queue import Queue
from smtpmx.relay.queueformat import QueuedMessage


class StateCommits:
    """
    Saves and removals of queued messages, made durable in batches.

    The first change asked for while none is being made starts a batch at
    once; the changes asked for meanwhile wait and go together in the
    next.  A batch that fails fails every change in it.

    @ivar batches: how many batches were committed, for tests and logs.
    """

    def __init__(self, queue: Queue, runBlocking: Callable[..., Deferred]) -> None:
        """
        @param queue: the queue the changes are made to.
        @param runBlocking: runs L{Queue.commit} off the reactor thread.
        """
        self.queue = queue
        self.runBlocking = runBlocking
        self.batches = 0
        self._saves: list[tuple[QueuedMessage, Deferred[bool]]] = []
        self._removals: list[tuple[str, Deferred[bool]]] = []
        self._committing = False

    def save(self, message: QueuedMessage) -> Deferred[bool]:
        """
        Save C{message}'s state (L{Queue.save}).  It must not change until
        the result fires.

        @return: a L{Deferred} firing, once the state is durable, with
            whether it was saved (C{False}: the message is no longer
            queued); or failing as L{Queue.commit} does.
        """
        d: Deferred[bool] = Deferred()
        self._saves.append((message, d))
        self._start()
        return d

    def remove(self, messageId: str) -> Deferred[bool]:
        """
        Remove a message (L{Queue.remove}).

        @return: a L{Deferred} firing, once the removal is durable, with
            whether the message was queued; or failing as L{Queue.commit}
            does.
        """
        d: Deferred[bool] = Deferred()
        self._removals.append((messageId, d))
        self._start()
        return d

    def _start(self) -> None:
        """
        Commit what waits, unless a batch is being committed (its end
        starts the next).
        """
        if self._committing or not (self._saves or self._removals):
            return
        self._committing = True
        saves, self._saves = self._saves, []
        removals, self._removals = self._removals, []
        self.batches += 1
        d = self.runBlocking(self.queue.commit, [m for m, _ in saves], [i for i, _ in removals])
        d.addBoth(self._committed, saves, removals)

    def _committed(
        self,
        result: tuple[list[bool], list[bool]] | Failure,
        saves: list[tuple[QueuedMessage, Deferred[bool]]],
        removals: list[tuple[str, Deferred[bool]]],
    ) -> None:
        """
        A batch is done: tell each change's caller, then start the next.
        """
        self._committing = False
        waiting = [d for _, d in saves] + [d for _, d in removals]
        if isinstance(result, Failure):
            outcomes = [result] * len(waiting)
        else:
            outcomes = list(result[0]) + list(result[1])
        try:
            for d, outcome in zip(waiting, outcomes):
                if isinstance(outcome, Failure):
                    d.errback(outcome)
                else:
                    d.callback(outcome)
        finally:
            self._start()
