"""
The HTTP side of C{--metrics}: C{/metrics} in Prometheus's text format
and C{/healthz} (docs/monitoring.rst), served with C{twisted.web}.

prometheus_client's own Twisted resource
(C{prometheus_client.twisted.MetricsResource}) is not used: importing it
takes the global reactor, and it cannot refresh the queue's figures before
a scrape.  L{MetricsResource} does the same with the reactor and thread
runner it is given: the text is made in the thread pool (in multi-process
mode it reads every process's files), in the format the scraper asks for
(C{choose_encoder}), gzipped when it accepts that.

C{/healthz} answers C{200 ok} while the server listens on every
C{--listen} endpoint and can write its Maildir root and its queue, and
C{503} with the reason otherwise.  The directories are tried in the
thread pool, by creating (and at once removing) an unnamed file in each,
bounded by L{HEALTH_TIMEOUT}: a disk that hangs is unhealthy too, and ties
up one thread however many checks come meanwhile.
"""

from __future__ import annotations

import tempfile
from typing import Callable, Optional, Sequence

from prometheus_client.exposition import choose_encoder
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import EncodingResourceWrapper, Resource
from twisted.web.server import NOT_DONE_YET, GzipEncoderFactory, Request, Site

from smtpmx.metrics import Metrics

# Seconds the directories have to answer a health check.
HEALTH_TIMEOUT = 10.0


def probeDirectories(directories: Sequence[tuple[str, str]]) -> Optional[str]:
    """
    Try writing in each directory: create an unnamed temporary file there
    (C{O_TMPFILE} where the system has it: nothing ever appears in the
    directory), write a byte, and drop it.  Blocks.

    @param directories: pairs of (the option that names it, its path).
    @return: why the first that cannot be written cannot be, or L{None}.
    """
    for option, path in directories:
        try:
            with tempfile.TemporaryFile(dir=path, prefix=".smtpmx-health-") as probe:
                probe.write(b".")
                probe.flush()
        except OSError as e:
            return f"cannot write {option} {path}: {e.strerror or e}"
    return None


class HealthCheck:
    """
    Whether the server is fit to take mail: it listens, and can write its
    Maildir root and queue.
    """

    log = Logger()

    def __init__(
        self,
        notListening: Callable[[], Sequence[str]],
        directories: Sequence[tuple[str, str]],
        runBlocking: Callable[..., Deferred],
        clock,
        timeout: float = HEALTH_TIMEOUT,
    ) -> None:
        """
        @param notListening: the C{--listen} endpoints not listened on now.
        @param directories: pairs of (option, path) that must be writable.
        @param runBlocking: runs a blocking callable in the thread pool.
        @param clock: the L{IReactorTime} of the timeout.
        @param timeout: seconds the directories have to answer.
        """
        self.notListening = notListening
        self.directories = list(directories)
        self.runBlocking = runBlocking
        self.clock = clock
        self.timeout = timeout
        self._waiting: Optional[list[Deferred]] = None

    def check(self) -> Deferred:
        """
        Check now.

        @return: a L{Deferred} firing with L{None} when healthy, else with
            the reason, one line; it never fails.
        """
        down = list(self.notListening())
        if down:
            return succeed(f"not listening on {', '.join(down)}")
        d: Deferred = Deferred()
        d.addTimeout(
            self.timeout, self.clock,
            onTimeoutCancel=lambda result, timeout: f"the disk gave no answer within {timeout:g} s",
        )
        if self._waiting is not None:
            self._waiting.append(d)
            return d
        self._waiting = [d]
        probe = self.runBlocking(probeDirectories, self.directories)
        probe.addErrback(self._probeFailed)
        probe.addCallback(self._probed)
        return d

    def _probeFailed(self, failure: Failure) -> str:
        """
        The probe itself broke (a bug): log it; the server is not known to
        be healthy.
        """
        self.log.failure("health check failed", failure)
        return f"health check failed: {failure.getErrorMessage()}"

    def _probed(self, reason: Optional[str]) -> None:
        """
        The directories answered: tell every check waiting (those that
        timed out meanwhile have their answer already).
        """
        waiting, self._waiting = self._waiting or [], None
        for d in waiting:
            if not d.called:
                d.callback(reason)


def answerLater(request: Request) -> Callable[[int, bytes, bytes], None]:
    """
    A way to answer C{request} later with a whole response (code, body,
    content type), which does nothing if the client went away meanwhile.
    """
    gone: list[bool] = []
    request.notifyFinish().addErrback(lambda _: gone.append(True))

    def answer(code: int, body: bytes, contentType: bytes) -> None:
        if gone:
            return
        request.setResponseCode(code)
        request.setHeader(b"content-type", contentType)
        request.setHeader(b"cache-control", b"no-store")
        request.write(body)
        request.finish()

    return answer


class HealthResource(Resource):
    """
    C{/healthz}: C{200 ok}, or C{503} and the reason.
    """

    isLeaf = True

    def __init__(self, health: HealthCheck) -> None:
        super().__init__()
        self.health = health

    def render_GET(self, request: Request):
        """
        Check, then answer.
        """

        send = answerLater(request)

        def answer(reason: Optional[str]) -> None:
            if reason is None:
                send(200, b"ok", b"text/plain; charset=utf-8")
            else:
                send(503, reason.encode("utf-8") + b"\n", b"text/plain; charset=utf-8")

        self.health.check().addCallback(answer)
        return NOT_DONE_YET


class MetricsResource(Resource):
    """
    C{/metrics}: every family, in the format the scraper accepts.
    """

    isLeaf = True
    log = Logger()

    def __init__(
        self,
        metrics: Metrics,
        runBlocking: Callable[..., Deferred],
        beforeScrape: Optional[Callable[[], None]] = None,
    ) -> None:
        """
        @param beforeScrape: called on the reactor thread before each
            scrape, to bring sampled figures up to date.
        """
        super().__init__()
        self.metrics = metrics
        self.runBlocking = runBlocking
        self.beforeScrape = beforeScrape

    def render_GET(self, request: Request):
        """
        Make the text in the thread pool, then send it.
        """
        if self.beforeScrape is not None:
            self.beforeScrape()
        accept = (request.getHeader(b"accept") or b"").decode("latin-1")
        encoder, contentType = choose_encoder(accept)
        send = answerLater(request)

        def encode() -> bytes:
            return encoder(self.metrics.exposition())

        def failed(failure: Failure) -> None:
            self.log.failure("cannot make the metrics", failure)
            send(500, b"cannot make the metrics\n", b"text/plain; charset=utf-8")

        d = self.runBlocking(encode)
        d.addCallback(lambda body: send(200, body, contentType.encode("latin-1")))
        d.addErrback(failed)
        return NOT_DONE_YET


class QuietSite(Site):
    """
    A L{Site} that writes no access log: a scrape every few seconds would
    bury the mail log.
    """

    noisy = False

    def log(self, request: Request) -> None:
        """
        Nothing.
        """


def statusSite(metrics: Metrics, health: HealthCheck, runBlocking: Callable[..., Deferred],
               beforeScrape: Optional[Callable[[], None]] = None) -> Site:
    """
    The site of C{--metrics}: C{/metrics} and C{/healthz}.
    """
    root = Resource()
    root.putChild(
        b"metrics",
        EncodingResourceWrapper(MetricsResource(metrics, runBlocking, beforeScrape), [GzipEncoderFactory()]),
    )
    root.putChild(b"healthz", HealthResource(health))
    return QuietSite(root)
