"""
The relay queue's figures for the metrics (docs/monitoring.rst): how many
messages it holds and when the oldest was queued, counted on disk now and
then and kept up to date in between.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

from twisted.internet.defer import Deferred

# Seconds between two counts of the queue on disk.
COUNT_INTERVAL = 5.0


class QueueFigures:
    """
    The queue's size and oldest message: counted on disk every
    L{COUNT_INTERVAL} seconds (which corrects any drift, such as messages
    deleted by the operator), and followed between counts as messages are
    queued and leave.

    @ivar size: how many messages the queue holds.
    @ivar oldest: when the oldest was queued, or L{None}.
    """

    def __init__(self) -> None:
        self.size = 0
        self.oldest: Optional[float] = None
        self._counted = -math.inf
        self._changes = 0

    def queued(self, created: float) -> None:
        """
        A message queued at C{created} (seconds since the epoch).
        """
        self._changes += 1
        self.size += 1
        if self.oldest is None or created < self.oldest:
            self.oldest = created

    def left(self) -> None:
        """
        A message left the queue (delivered, bounced or deleted).
        """
        self._changes += 1
        self.size = max(self.size - 1, 0)

    async def count(self, now: float, statistics: Callable[[], Deferred]) -> None:
        """
        Count the queue on disk if the last count is L{COUNT_INTERVAL}
        seconds old.  A message that came or went during the count may or
        may not be in it: the figures followed meanwhile then stand, and
        the next call counts again.

        @param statistics: runs L{smtpmx.relay.queue.Queue.statistics} off
            the reactor thread.
        """
        if now - self._counted < COUNT_INTERVAL:
            return
        self._counted = now
        changes = self._changes
        size, oldest = await statistics()
        if self._changes == changes:
            self.size, self.oldest = size, oldest
        else:
            self._counted = -math.inf
