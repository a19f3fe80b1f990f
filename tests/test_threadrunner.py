"""
Tests for L{smtpmx.threadrunner.ThreadRunner}: blocking jobs run in its
threads, and their results come back in the reactor thread, several with
one wake-up.
"""

from __future__ import annotations

import threading
import time

from twisted.trial.unittest import SynchronousTestCase

from smtpmx.threadrunner import ThreadRunner

# Seconds a test waits for a thread at most.
WAIT = 10.0


class FakeReactor:
    """
    Records what threads ask the reactor thread to call, and the shutdown
    triggers; the test plays the reactor thread with L{runCalls}.
    """

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.lock = threading.Lock()
        self.triggers: list[tuple] = []

    def callFromThread(self, f, *args) -> None:
        with self.lock:
            self.calls.append((f, args))

    def addSystemEventTrigger(self, phase, event, f, *args) -> None:
        self.triggers.append((phase, event, f))

    def waitForCalls(self, count: int) -> None:
        """
        Wait until at least C{count} calls were asked for.
        """
        deadline = time.monotonic() + WAIT
        while len(self.calls) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"only {len(self.calls)} calls")
            time.sleep(0.001)

    def runCalls(self) -> int:
        """
        Run the calls asked for so far, as the reactor thread would.

        @return: how many there were.
        """
        with self.lock:
            calls, self.calls = self.calls, []
        for f, args in calls:
            f(*args)
        return len(calls)


class ThreadRunnerTests(SynchronousTestCase):
    """
    L{ThreadRunner} runs jobs in threads and fires their results in the
    reactor thread.
    """

    def setUp(self) -> None:
        self.reactor = FakeReactor()
        self.runner = ThreadRunner(self.reactor, maxThreads=3)
        self.addCleanup(self.runner.stop)

    def test_resultInReactorThread(self):
        """
        A job runs in another thread; its result arrives only when the
        reactor thread runs what the runner asked of it.
        """
        threads = []

        def job(x):
            threads.append(threading.current_thread())
            return x * 2

        d = self.runner(job, 21)
        self.reactor.waitForCalls(1)
        self.assertNoResult(d)
        self.reactor.runCalls()
        self.assertEqual(self.successResultOf(d), 42)
        self.assertIsNot(threads[0], threading.current_thread())
        self.assertTrue(threads[0].name.startswith("smtpmx-io-"))

    def test_keywordArguments(self):
        """
        Keyword arguments reach the job.
        """
        d = self.runner(lambda a, b=0: a - b, 5, b=3)
        self.reactor.waitForCalls(1)
        self.reactor.runCalls()
        self.assertEqual(self.successResultOf(d), 2)

    def test_failure(self):
        """
        A job that raises fails its L{Deferred} with that exception.
        """

        def job():
            raise OSError(28, "No space left on device")

        d = self.runner(job)
        self.reactor.waitForCalls(1)
        self.reactor.runCalls()
        self.assertEqual(self.failureResultOf(d, OSError).value.errno, 28)

    def test_oneWakeUpForSeveral(self):
        """
        Results that end before the reactor thread takes them are handed
        back with one wake-up.
        """
        ds = [self.runner(lambda n=n: n) for n in range(5)]
        self.reactor.waitForCalls(1)
        # Let every job end before the reactor thread runs.
        deadline = time.monotonic() + WAIT
        while len(self.runner._results) < 5 and time.monotonic() < deadline:
            time.sleep(0.001)
        self.assertEqual(self.reactor.runCalls(), 1)
        self.assertEqual([self.successResultOf(d) for d in ds], list(range(5)))
        # The next result wakes the reactor again.
        d = self.runner(lambda: "again")
        self.reactor.waitForCalls(1)
        self.reactor.runCalls()
        self.assertEqual(self.successResultOf(d), "again")

    def test_threadsUpToTheLimit(self):
        """
        Jobs that block get threads of their own up to the limit; the rest
        wait for a thread, and every one is run.
        """
        release = threading.Event()
        started = []

        def job(n):
            started.append(n)
            release.wait(WAIT)
            return n

        ds = [self.runner(job, n) for n in range(5)]
        deadline = time.monotonic() + WAIT
        while len(started) < 3 and time.monotonic() < deadline:
            time.sleep(0.001)
        time.sleep(0.05)
        self.assertEqual(len(started), 3)
        self.assertEqual(len(self.runner._threads), 3)
        release.set()
        results = []
        deadline = time.monotonic() + WAIT
        while len(results) < 5 and time.monotonic() < deadline:
            self.reactor.runCalls()
            results = [r for d in ds for r in ([self.successResultOf(d)] if d.called else [])]
            time.sleep(0.001)
        self.assertEqual(sorted(results), list(range(5)))

    def test_idleThreadReused(self):
        """
        Jobs given one after another, each after the last ended, share one
        thread.
        """
        for n in range(3):
            d = self.runner(lambda n=n: n)
            self.reactor.waitForCalls(1)
            self.reactor.runCalls()
            self.assertEqual(self.successResultOf(d), n)
            # Let the thread go back to waiting for a job.
            deadline = time.monotonic() + WAIT
            while self.runner._idle == 0 and time.monotonic() < deadline:
                time.sleep(0.001)
        self.assertEqual(len(self.runner._threads), 1)

    def test_stop(self):
        """
        Stopping waits for the jobs already given, then the threads end;
        a job given after that is never run.  Stopping is tied to the
        reactor's shutdown.
        """
        release = threading.Event()
        done = []

        def job():
            release.wait(WAIT)
            done.append(True)

        self.runner(job)
        self.assertEqual(self.reactor.triggers, [("during", "shutdown", self.runner.stop)])
        timer = threading.Timer(0.05, release.set)
        timer.start()
        self.addCleanup(timer.cancel)
        self.runner.stop()
        self.assertEqual(done, [True])
        self.assertFalse(any(t.is_alive() for t in self.runner._threads))
        ran = []
        d = self.runner(ran.append, 1)
        time.sleep(0.05)
        self.assertEqual(ran, [])
        self.assertNoResult(d)
