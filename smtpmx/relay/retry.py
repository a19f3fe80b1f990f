"""
The retry schedule of the relay queue (RFC 5321 section 4.5.4.1;
docs/relay.rst), as pure functions.

A message whose delivery failed transiently (a 4xx reply, a connection
failure) waits before its next attempt: after attempt I{n} it waits
C{schedule[n - 1]} seconds, and once the schedule is used up its last delay
repeats (C{--retry-schedule}, default C{60,300,900,1800,3600}).  A
proportional jitter spreads the retries of many messages deferred together
so that they do not hit the next hop at the same moment.  A message older
than C{--max-queue-age} is no longer retried but bounced.
"""

from __future__ import annotations

import random as _random
from typing import Callable, Optional, Sequence


def nextAttemptDelay(
    attempts: int,
    schedule: Sequence[int],
    jitter: float = 0.0,
    random: Optional[Callable[[], float]] = None,
) -> float:
    """
    How long to wait before the next delivery attempt.

    @param attempts: how many attempts have been made so far, at least 1;
        after attempt I{n} the delay is C{schedule[n - 1]}, and the last
        delay of the schedule repeats for every attempt past its end.
    @param schedule: the delays in seconds, in order; not empty, none
        negative.
    @param jitter: the largest change to the delay, as a fraction of it,
        from 0 (none) to 1: with C{0.1} the delay is anywhere within 10%
        either side of the scheduled one.
    @param random: a source of uniform numbers in [0, 1), such as
        C{random.Random(seed).random}; L{random.random} when not given.
        Only consulted when C{jitter} is not 0.

    @raise ValueError: for fewer than one attempt, an empty schedule, a
        negative delay or a jitter outside [0, 1].

    @return: the delay in seconds, never negative.
    """
    if attempts < 1:
        raise ValueError(f"attempts must be at least 1, not {attempts}")
    if not schedule:
        raise ValueError("the retry schedule is empty")
    if not 0.0 <= jitter <= 1.0:
        raise ValueError(f"jitter must be between 0 and 1, not {jitter}")
    delay = schedule[min(attempts, len(schedule)) - 1]
    if delay < 0:
        raise ValueError(f"negative delay in the retry schedule: {delay}")
    if jitter == 0.0:
        return float(delay)
    draw = (random or _random.random)()
    # draw in [0, 1) becomes a factor in [1 - jitter, 1 + jitter).
    return max(0.0, delay * (1.0 + jitter * (2.0 * draw - 1.0)))


def isExpired(created: float, now: float, maxAge: int) -> bool:
    """
    Whether a queued message has waited too long and must be bounced
    rather than retried.

    @param created: when the message was queued, in seconds since the
        epoch.
    @param now: the current time, in seconds since the epoch.
    @param maxAge: C{--max-queue-age}: the age in seconds at which a
        message still undelivered is bounced (RFC 5321 section 4.5.4.1
        suggests at least 4-5 days); with 0 a message gets only its first
        attempt.

    @return: L{True} once the message is C{maxAge} seconds old or older.
        A message queued "in the future" (the clock went back) is not
        expired.
    """
    return now - created >= maxAge
