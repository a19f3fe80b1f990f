"""
Tests for L{smtpmx.webstatus}: the health check (with a Clock and a thread
runner the test controls), C{/healthz} and C{/metrics} rendered for
requests made in memory.
"""

from __future__ import annotations

import os
import shutil
import tempfile

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.server import NOT_DONE_YET
from twisted.web.test.requesthelper import DummyRequest

from smtpmx.metrics import Metrics
from smtpmx.webstatus import HealthCheck, HealthResource, MetricsResource, probeDirectories, statusSite


def runAtOnce(f, *args, **kwargs) -> Deferred:
    """
    A thread runner that runs C{f} now.
    """
    return maybeDeferred(f, *args, **kwargs)


class HeldRunner:
    """
    A thread runner whose calls wait until the test lets them run.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[Deferred, object, tuple]] = []

    def __call__(self, f, *args) -> Deferred:
        d: Deferred = Deferred()
        self.calls.append((d, f, args))
        return d

    def release(self) -> None:
        """
        Run every call held, in order.
        """
        calls, self.calls = self.calls, []
        for d, f, args in calls:
            d.callback(f(*args))


def render(resource, path: bytes = b"", headers: dict | None = None) -> DummyRequest:
    """
    A GET of C{resource}; the request, answered or still waiting.
    """
    request = DummyRequest([path] if path else [])
    for name, value in (headers or {}).items():
        request.requestHeaders.addRawHeader(name, value)
    result = resource.render(request)
    if result is not NOT_DONE_YET:
        request.write(result)
        request.finish()
    return request


class ProbeTests(SynchronousTestCase):
    """
    L{probeDirectories} writes in each directory and leaves nothing there.
    """

    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.dir, True)

    def test_writable(self):
        """
        Writable directories are fine, and stay empty.
        """
        a, b = os.path.join(self.dir, "a"), os.path.join(self.dir, "b")
        os.mkdir(a)
        os.mkdir(b)
        self.assertIsNone(probeDirectories([("--maildir-root", a), ("--queue-dir", b)]))
        self.assertEqual(os.listdir(a) + os.listdir(b), [])

    def test_notADirectory(self):
        """
        A path that is not a directory cannot be written: the reason names
        the option, the path and the error.
        """
        path = os.path.join(self.dir, "Maildir")
        with open(path, "w"):
            pass
        self.assertEqual(
            probeDirectories([("--queue-dir", self.dir), ("--maildir-root", path)]),
            f"cannot write --maildir-root {path}: Not a directory",
        )

    def test_missing(self):
        """
        A directory that is gone cannot be written.
        """
        path = os.path.join(self.dir, "gone")
        self.assertEqual(
            probeDirectories([("--queue-dir", path)]),
            f"cannot write --queue-dir {path}: No such file or directory",
        )


class HealthCheckTests(SynchronousTestCase):
    """
    L{HealthCheck}: listening, then the directories, off the reactor
    thread and bounded in time.
    """

    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.down: list[str] = []
        self.clock = Clock()
        self.runner = HeldRunner()
        self.health = HealthCheck(
            lambda: self.down, [("--maildir-root", self.dir)], self.runner, self.clock, timeout=10
        )

    def test_healthy(self):
        """
        Listening and writable: healthy, once the thread pool answered.
        """
        d = self.health.check()
        self.assertNoResult(d)
        self.runner.release()
        self.assertIsNone(self.successResultOf(d))

    def test_notListening(self):
        """
        An endpoint not listened on makes the server unhealthy, at once.
        """
        self.down.append("tcp:25")
        self.assertEqual(self.successResultOf(self.health.check()), "not listening on tcp:25")
        self.assertEqual(self.runner.calls, [])

    def test_oneProbeAtATime(self):
        """
        Checks made while the directories are being tried share that try:
        a slow disk ties up one thread, not one per check.
        """
        first, second = self.health.check(), self.health.check()
        self.assertEqual(len(self.runner.calls), 1)
        self.runner.release()
        self.assertIsNone(self.successResultOf(first))
        self.assertIsNone(self.successResultOf(second))
        third = self.health.check()
        self.assertEqual(len(self.runner.calls), 1)
        self.runner.release()
        self.assertIsNone(self.successResultOf(third))

    def test_diskHangs(self):
        """
        A disk that does not answer in time is unhealthy; its late answer
        goes nowhere.
        """
        d = self.health.check()
        self.clock.advance(10)
        self.assertEqual(self.successResultOf(d), "the disk gave no answer within 10 s")
        self.runner.release()

    def test_probeBreaks(self):
        """
        A probe that raises is logged, and the server is not healthy.
        """

        def broken(f, *args):
            return maybeDeferred(lambda: 1 / 0)

        self.health.runBlocking = broken
        reason = self.successResultOf(self.health.check())
        self.assertTrue(reason.startswith("health check failed: "), reason)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)


class ResourceTests(SynchronousTestCase):
    """
    C{/healthz} and C{/metrics}.
    """

    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.down: list[str] = []
        self.health = HealthCheck(lambda: self.down, [("--maildir-root", self.dir)], runAtOnce, Clock())
        self.metrics = Metrics()

    def test_healthy(self):
        """
        C{200 ok} while healthy.
        """
        request = render(HealthResource(self.health))
        self.assertEqual(request.responseCode, 200)
        self.assertEqual(b"".join(request.written), b"ok")
        self.assertEqual(request.responseHeaders.getRawHeaders(b"content-type"), [b"text/plain; charset=utf-8"])

    def test_unhealthy(self):
        """
        C{503} with the reason when not.
        """
        shutil.rmtree(self.dir)
        request = render(HealthResource(self.health))
        self.assertEqual(request.responseCode, 503)
        self.assertEqual(
            b"".join(request.written).decode(),
            f"cannot write --maildir-root {self.dir}: No such file or directory\n",
        )

    def test_clientGone(self):
        """
        A client that went away before the answer gets none, and nothing
        breaks.
        """
        runner = HeldRunner()
        self.health.runBlocking = runner
        request = render(HealthResource(self.health))
        request.processingFailed(Exception("gone"))
        runner.release()
        self.assertEqual(request.written, [])

    def test_metrics(self):
        """
        C{/metrics} is Prometheus's text format, with the figures brought
        up to date first.
        """
        sampled = []
        self.metrics.connectionOpened("192.0.2.1")
        resource = MetricsResource(self.metrics, runAtOnce, lambda: sampled.append(True))
        request = render(resource)
        self.assertEqual(sampled, [True])
        self.assertEqual(request.responseCode, 200)
        self.assertTrue(request.responseHeaders.getRawHeaders(b"content-type")[0].startswith(b"text/plain"))
        families = {f.name: f for f in text_string_to_metric_families(b"".join(request.written).decode())}
        self.assertEqual(families["smtpmx_connections"].samples[0].value, 1)
        self.assertIn("smtpmx_messages", families)

    def test_openMetrics(self):
        """
        A scraper that asks for OpenMetrics gets it.
        """
        request = render(
            MetricsResource(self.metrics, runAtOnce),
            headers={b"accept": b"application/openmetrics-text; version=1.0.0"},
        )
        self.assertTrue(
            request.responseHeaders.getRawHeaders(b"content-type")[0].startswith(b"application/openmetrics-text")
        )
        self.assertTrue(b"".join(request.written).endswith(b"# EOF\n"))

    def test_site(self):
        """
        The site serves C{/metrics} and C{/healthz}, and writes no access
        log.
        """
        site = statusSite(self.metrics, self.health, runAtOnce)
        self.assertEqual(sorted(site.resource.children), [b"healthz", b"metrics"])
        self.assertIsNone(site.log(DummyRequest([b"metrics"])))
