"""
Tests for L{smtpmx.relay.retry}: when a deferred message is tried again,
and when it is given up.
"""

import pytest
from hypothesis import given, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from smtpmx.relay.retry import isExpired, nextAttemptDelay

SCHEDULE = (60, 300, 900, 1800, 3600)


class NextAttemptDelayTests(SynchronousTestCase):
    """
    Tests for L{nextAttemptDelay}.
    """

    @pytest.mark.rfc("5321", "4.5.4.1", "5321-4.5.4.1-2")
    def test_followsSchedule(self) -> None:
        """
        After attempt I{n} the message waits the I{n}th delay of the
        schedule.
        """
        self.assertEqual(
            [nextAttemptDelay(n, SCHEDULE) for n in range(1, 6)],
            [60.0, 300.0, 900.0, 1800.0, 3600.0],
        )

    @pytest.mark.rfc("5321", "4.5.4.1", "5321-4.5.4.1-1")
    @pytest.mark.rfc("5321", "4.5.4.1", "5321-4.5.4.1-2")
    def test_lastRepeats(self) -> None:
        """
        Once the schedule is used up, its last delay repeats for every
        further attempt.
        """
        self.assertEqual(
            [nextAttemptDelay(n, SCHEDULE) for n in (6, 7, 50, 10_000)],
            [3600.0] * 4,
        )

    def test_singleDelay(self) -> None:
        """
        A schedule of one delay retries at that interval forever.
        """
        self.assertEqual(
            [nextAttemptDelay(n, (120,)) for n in (1, 2, 3)], [120.0] * 3
        )

    def test_returnsFloat(self) -> None:
        """
        The delay is a float, ready for C{IReactorTime.callLater}.
        """
        self.assertIsInstance(nextAttemptDelay(1, SCHEDULE), float)

    def test_noAttempt(self) -> None:
        """
        Asking for the delay before any attempt was made is a programming
        error.
        """
        self.assertRaises(ValueError, nextAttemptDelay, 0, SCHEDULE)
        self.assertRaises(ValueError, nextAttemptDelay, -1, SCHEDULE)

    def test_emptySchedule(self) -> None:
        """
        An empty schedule is refused rather than retried at once forever.
        """
        self.assertRaises(ValueError, nextAttemptDelay, 1, ())

    def test_negativeDelay(self) -> None:
        """
        A negative delay in the schedule is refused.
        """
        self.assertRaises(ValueError, nextAttemptDelay, 2, (60, -5))

    def test_jitterOutOfRange(self) -> None:
        """
        A jitter below 0 or above 1 (which could make the delay negative)
        is refused.
        """
        self.assertRaises(ValueError, nextAttemptDelay, 1, SCHEDULE, -0.1)
        self.assertRaises(ValueError, nextAttemptDelay, 1, SCHEDULE, 1.5)

    def test_noJitterNoRandom(self) -> None:
        """
        Without jitter the random source is never consulted.
        """

        def random() -> float:
            """
            A random source that must not be called.
            """
            raise AssertionError("consulted the random source")

        self.assertEqual(nextAttemptDelay(2, SCHEDULE, 0.0, random), 300.0)

    def test_jitterUsesInjectedRandom(self) -> None:
        """
        The jitter comes from the random source given: its lowest draw
        shortens the delay by the whole jitter, its middle draw keeps it.
        """
        self.assertEqual(nextAttemptDelay(1, SCHEDULE, 0.5, lambda: 0.0), 30.0)
        self.assertEqual(nextAttemptDelay(1, SCHEDULE, 0.5, lambda: 0.5), 60.0)
        self.assertEqual(nextAttemptDelay(1, SCHEDULE, 0.5, lambda: 0.75), 75.0)

    def test_jitterDefaultRandom(self) -> None:
        """
        With jitter and no random source given, the module's own random
        source is used, and the delay stays within bounds.
        """
        for _ in range(100):
            delay = nextAttemptDelay(3, SCHEDULE, 0.2)
            self.assertTrue(720.0 <= delay <= 1080.0, delay)

    @given(
        attempts=st.integers(min_value=1, max_value=100),
        schedule=st.lists(
            st.integers(min_value=0, max_value=10**6), min_size=1, max_size=10
        ).map(tuple),
        jitter=st.floats(min_value=0.0, max_value=1.0),
        draw=st.floats(min_value=0.0, max_value=1.0, exclude_max=True),
    )
    def test_jitterBounded(
        self, attempts: int, schedule: tuple, jitter: float, draw: float
    ) -> None:
        """
        Whatever the draw, the delay stays within the jitter's fraction of
        the scheduled delay either side, and is never negative.
        """
        base = schedule[min(attempts, len(schedule)) - 1]
        delay = nextAttemptDelay(attempts, schedule, jitter, lambda: draw)
        self.assertGreaterEqual(delay, 0.0)
        self.assertGreaterEqual(delay, base * (1 - jitter) - 1e-6)
        self.assertLessEqual(delay, base * (1 + jitter) + 1e-6)


class IsExpiredTests(SynchronousTestCase):
    """
    Tests for L{isExpired}.
    """

    def test_young(self) -> None:
        """
        A message younger than the maximum age is retried.
        """
        self.assertFalse(isExpired(1000.0, 1000.0 + 431999, 432000))

    def test_exactlyMaxAge(self) -> None:
        """
        A message exactly as old as the maximum age is bounced.
        """
        self.assertTrue(isExpired(1000.0, 1000.0 + 432000, 432000))

    def test_old(self) -> None:
        """
        A message older than the maximum age is bounced.
        """
        self.assertTrue(isExpired(1000.0, 1000.0 + 10**7, 432000))

    def test_clockWentBack(self) -> None:
        """
        A message that seems to come from the future, because the clock
        went back, is not bounced.
        """
        self.assertFalse(isExpired(5000.0, 1000.0, 432000))

    def test_zeroMaxAge(self) -> None:
        """
        With a maximum age of 0 a message gets its first attempt only.
        """
        self.assertTrue(isExpired(1000.0, 1000.0, 0))
