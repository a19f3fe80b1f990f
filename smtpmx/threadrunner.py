"""
The thread runner of the stores: C{runBlocking(f, *args, **kwargs)} runs a
blocking function (file I/O, above all) in a thread and returns a
L{Deferred} that fires with its result in the reactor thread.

It does what C{deferToThreadPool} on the reactor's L{ThreadPool} does, for
a quarter of the CPU: a job is one C{put} on a L{queue.SimpleQueue} (a C
queue, no Python lock of our own on the way in), the thread runs it with
no context to set up, and results that end while the reactor is busy are
handed back together, with one wake-up of the reactor for all of them
rather than one each.  Every message received costs at least one job, so
this is on the path of every C{250} (C{docs/storage.rst}).

Threads are started as jobs need them, up to a limit, and stopped when the
reactor shuts down, once the jobs already given to them are done.
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Callable

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

# As many threads as the reactor's own pool has by default.
MAX_THREADS = 10


class ThreadRunner:
    """
    Runs blocking functions in threads of its own; call it as
    C{runBlocking(f, *args, **kwargs)}.
    """

    def __init__(self, reactor: Any, maxThreads: int = MAX_THREADS, name: str = "smtpmx-io") -> None:
        """
        @param reactor: the reactor results are handed back to
            (C{callFromThread}), and whose shutdown stops the threads.
        @param maxThreads: the most threads run at once.
        @param name: the threads' names start with it.
        """
        self._reactor = reactor
        self._maxThreads = maxThreads
        self._name = name
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        # Threads waiting for a job; changed under the lock.
        self._idle = 0
        # Results not yet handed back, and whether the reactor has been
        # asked to take them; both under the lock.
        self._results: list[tuple[Deferred, bool, Any]] = []
        self._handing = False
        self._stopped = False

    def __call__(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> Deferred:
        """
        Run C{f(*args, **kwargs)} in a thread.

        @return: a L{Deferred} that fires, in the reactor thread, with what
            C{f} returned or with the exception it raised.  Once the runner
            is stopped nothing more is run, and the L{Deferred} never
            fires (as with the reactor's own pool).
        """
        d: Deferred = Deferred()
        if self._stopped:
            return d
        self._jobs.put((d, f, args, kwargs))
        if self._idle == 0 and len(self._threads) < self._maxThreads:
            self._startThread()
        return d

    def _startThread(self) -> None:
        """
        Start one more thread; the first one also arranges for all of them
        to stop when the reactor shuts down.
        """
        if not self._threads:
            addTrigger = getattr(self._reactor, "addSystemEventTrigger", None)
            if addTrigger is not None:
                addTrigger("during", "shutdown", self.stop)
        thread = threading.Thread(
            target=self._work, name=f"{self._name}-{len(self._threads) + 1}", daemon=True
        )
        self._threads.append(thread)
        thread.start()

    def _work(self) -> None:
        """
        A thread's life: run jobs one after another until told to stop.
        """
        get = self._jobs.get
        lock = self._lock
        while True:
            with lock:
                self._idle += 1
            job = get()
            with lock:
                self._idle -= 1
            if job is None:
                return
            d, f, args, kwargs = job
            try:
                outcome = (True, f(*args, **kwargs))
            except BaseException:
                outcome = (False, Failure())
            self._handBack(d, *outcome)
            # Hold nothing of the job while waiting for the next one.
            del job, d, f, args, kwargs, outcome

    def _handBack(self, d: Deferred, succeeded: bool, result: Any) -> None:
        """
        Give a job's result to the reactor thread; only the first result
        waiting wakes the reactor up.
        """
        with self._lock:
            self._results.append((d, succeeded, result))
            if self._handing:
                return
            self._handing = True
        self._reactor.callFromThread(self._fire)

    def _fire(self) -> None:
        """
        In the reactor thread: fire the L{Deferred} of every job done.
        """
        with self._lock:
            results, self._results = self._results, []
            self._handing = False
        for d, succeeded, result in results:
            if succeeded:
                d.callback(result)
            else:
                d.errback(result)

    def stop(self) -> None:
        """
        Run no more jobs; wait until the threads have done those already
        given to them.
        """
        if self._stopped:
            return
        self._stopped = True
        for _ in self._threads:
            self._jobs.put(None)
        for thread in self._threads:
            thread.join()
