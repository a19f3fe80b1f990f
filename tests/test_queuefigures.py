"""
Tests for L{smtpmx.relay.queuefigures}: the queue's figures, counted on
disk and followed in between.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, succeed
from twisted.trial.unittest import SynchronousTestCase

from smtpmx.relay.queuefigures import COUNT_INTERVAL, QueueFigures


def run(coroutine) -> Deferred:
    return Deferred.fromCoroutine(coroutine)


class QueueFiguresTests(SynchronousTestCase):
    """
    L{QueueFigures} follows the queue and takes a count of the disk only
    when nothing changed while it was made.
    """

    def test_followed(self) -> None:
        """
        Messages queued and leaving move the size; the oldest is the
        earliest queued.
        """
        figures = QueueFigures()
        figures.queued(20.0)
        figures.queued(10.0)
        figures.left()
        self.assertEqual((figures.size, figures.oldest), (1, 10.0))

    def test_counted(self) -> None:
        """
        A count of the disk replaces the figures, at most every
        L{COUNT_INTERVAL} seconds.
        """
        figures = QueueFigures()
        figures.queued(5.0)
        counts = []

        def statistics():
            counts.append(1)
            return succeed((3, 1.0))

        self.successResultOf(run(figures.count(100.0, statistics)))
        self.assertEqual((figures.size, figures.oldest), (3, 1.0))
        self.successResultOf(run(figures.count(100.0 + COUNT_INTERVAL / 2, statistics)))
        self.assertEqual(len(counts), 1)
        self.successResultOf(run(figures.count(100.0 + COUNT_INTERVAL, statistics)))
        self.assertEqual(len(counts), 2)

    def test_changedWhileCounting(self) -> None:
        """
        A message that leaves while the disk is counted may or may not be in
        the count: the followed figure stands, and the next call counts
        again.
        """
        figures = QueueFigures()
        figures.queued(1.0)
        figures.queued(2.0)
        pending: Deferred = Deferred()
        d = run(figures.count(100.0, lambda: pending))
        figures.left()
        pending.callback((2, 1.0))
        self.successResultOf(d)
        self.assertEqual(figures.size, 1)
        self.successResultOf(run(figures.count(100.1, lambda: succeed((1, 1.0)))))
        self.assertEqual((figures.size, figures.oldest), (1, 1.0))
