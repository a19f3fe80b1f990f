"""
The free-space guard (C{--min-free-space}): while the file system of the
Maildir root or of the relay queue has less free space than the minimum,
MAIL is answered C{452 4.3.1} (RFC 5321 section 4.2.3, RFC 3463 X.3.1),
so that a client tries again later rather than sending a message that
could not be stored whole.

Asking the file system on every MAIL would block the reactor, so
L{FreeSpaceMonitor} measures at start-up and then every
L{CHECK_INTERVAL} seconds in the thread pool, and the session reads the
cached answer (L{FreeSpaceMonitor.isLow}).  Nothing else is held back:
mail already accepted is delivered and the relay goes on sending.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

# Seconds between two measures of the free space.
CHECK_INTERVAL = 5.0


def freeBytes(path: str) -> int:
    """
    The space free for unprivileged users on the file system of C{path}
    (blocking: a C{statvfs} call).

    @raise OSError: C{path} cannot be looked at.
    """
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


@dataclass(frozen=True)
class Shortage:
    """
    A directory whose file system is short of space.

    @ivar option: the option that names the directory (C{--queue-dir}).
    @ivar path: the directory.
    @ivar free: the bytes free there when it was measured.
    """

    option: str
    path: str
    free: int


class FreeSpaceMonitor(Service):
    """
    Measures the free space of some directories' file systems, now and
    then, off the reactor thread.

    @ivar shortage: the first directory found short of space at the last
        measure, or L{None} when each has enough.
    """

    log = Logger()

    def __init__(
        self,
        directories: Sequence[tuple[str, str]],
        minimum: int,
        runBlocking: Callable[..., Deferred],
        clock: IReactorTime,
        interval: float = CHECK_INTERVAL,
        measure: Callable[[str], int] = freeBytes,
    ) -> None:
        """
        @param directories: C{(option, path)} pairs: the directories whose
            file systems are watched, with the option that names each.
        @param minimum: the bytes each must have free.
        @param runBlocking: runs a blocking function in the thread pool.
        @param clock: times the measures.
        @param interval: seconds between two measures.
        @param measure: gives the free bytes of a path (blocking).
        """
        self.directories = list(directories)
        self.minimum = minimum
        self._runBlocking = runBlocking
        self._clock = clock
        self._interval = interval
        self._measure = measure
        self.shortage: Optional[Shortage] = None
        self._loop: Optional[LoopingCall] = None
        self._measuring = False
        self._broken: Optional[str] = None

    def isLow(self) -> bool:
        """
        Whether a watched file system was short of space at the last
        measure; it never blocks.
        """
        return self.shortage is not None

    def startService(self) -> None:
        """
        Measure now, before any connection is taken (blocking is fine at
        start-up), then every C{interval} seconds in the thread pool.
        """
        super().startService()
        try:
            self._measured(self.measureAll())
        except Exception:
            self._failed(Failure())
        self._loop = LoopingCall(self.refresh)
        self._loop.clock = self._clock
        self._loop.start(self._interval, now=False)

    def stopService(self) -> None:
        """
        Stop measuring.
        """
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None

    def measureAll(self) -> Optional[Shortage]:
        """
        Measure each directory's file system (blocking).

        @return: the first one short of space, or L{None}.
        @raise OSError: a directory cannot be looked at.
        """
        for option, path in self.directories:
            free = self._measure(path)
            if free < self.minimum:
                return Shortage(option, path, free)
        return None

    def refresh(self) -> None:
        """
        Measure again in the thread pool, unless a measure is under way.
        """
        if self._measuring:
            return
        self._measuring = True

        def done(result):
            self._measuring = False
            return result

        d = self._runBlocking(self.measureAll)
        d.addBoth(done)
        d.addCallbacks(self._measured, self._failed)

    def _measured(self, shortage: Optional[Shortage]) -> None:
        """
        Keep a new measure, and log when the space runs short or is back.
        """
        if self._broken is not None:
            self._broken = None
            self.log.info("free space measured again")
        before, self.shortage = self.shortage, shortage
        if shortage is not None and before is None:
            self.log.warn(
                "free space low: {path} ({option}) has {free} bytes free, less than"
                " --min-free-space {minimum}: MAIL gets 452 4.3.1 until there is more",
                path=shortage.path, option=shortage.option, free=shortage.free,
                minimum=self.minimum,
            )
        elif shortage is None and before is not None:
            self.log.info(
                "free space back above --min-free-space {minimum}: MAIL is accepted again",
                minimum=self.minimum,
            )

    def _failed(self, failure: Failure) -> None:
        """
        A measure failed: the last answer stands; the failure is logged
        once, not every few seconds.
        """
        why = " ".join(str(failure.value).split()) or failure.type.__name__
        if why != self._broken:
            self._broken = why
            self.log.error("cannot measure the free space: {why}", why=why)
