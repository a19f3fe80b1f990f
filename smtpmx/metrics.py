"""
What smtpmx counts, in Prometheus's families (C{--metrics},
docs/monitoring.rst).

L{Metrics} holds every family and counts from what the server already
makes: it is the SMTP server's L{IServerObserver} (connections, each
C{RCPT}'s verdict, each transaction's L{TransactionRecord}, each TLS
handshake), it is told what each relay attempt found for each recipient
(L{RecipientAttempt}), and L{MetricsService} samples the relay queue.  The
session and the relay know nothing of it.

Several processes: prometheus_client keeps its figures in memory, unless
the environment variable C{PROMETHEUS_MULTIPROC_DIR} names a directory
when the process starts.  Then every process writes its figures to files
of its own in that directory, and whichever process serves C{/metrics}
reads them all (L{Metrics.exposition}): counters and histograms are
summed over the processes, living or dead; the gauges of a process that
stopped are dropped (L{MetricsService.stopService}), those of the living
summed (open connections, queued messages) or their maximum taken (the
oldest message's age).  Whoever starts the processes empties the
directory first.
"""

from __future__ import annotations

import os
from typing import Callable, Iterable, Mapping, Optional

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.process_collector import ProcessCollector
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from zope.interface import implementer

from smtpmx.auth.results import AuthResults
from smtpmx.interfaces import IServerObserver
from smtpmx.relay.queueformat import QueuedMessage
from smtpmx.relay.request import Disposition, RecipientAttempt
from smtpmx.reply import Reply
from smtpmx.session import NegotiatedTLS
from smtpmx.transactionlog import RecipientVerdict, TransactionRecord

# prometheus_client's switch to its multi-process mode: a directory for
# the figures of every process (read once, when it is first imported).
MULTIPROCESS_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"

# Seconds between samples of the relay queue.
QUEUE_SAMPLE_INTERVAL = 5.0

# Upper bounds of the histograms' buckets: a transaction from MAIL to the
# reply to its data (seconds), and a message's size (bytes).
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
SIZE_BUCKETS = tuple(float(1024 * 4**n) for n in range(9))  # 1 KiB .. 64 MiB

# The result of a reply, by its first digit (RFC 5321 section 4.2.1).
REPLY_RESULTS = {"2": "accepted", "4": "tempfail", "5": "rejected"}

# The result of a relay attempt for one recipient.
DELIVERY_RESULTS = {
    Disposition.DELIVERED: "delivered",
    Disposition.TEMPORARY: "deferred",
    Disposition.PERMANENT: "bounced",
}


def replyResult(reply: Reply) -> str:
    """
    C{accepted}, C{tempfail} or C{rejected}: what a reply did to a
    message or recipient.
    """
    return REPLY_RESULTS.get(str(reply.code)[:1], "rejected")


def filterVerdict(text: str) -> tuple[str, str]:
    """
    The filter and its verdict in one of a transaction's filter verdicts
    (L{smtpmx.interfaces.IFilteredMessage.filterVerdicts}):
    C{"rspamd junk"} is C{("rspamd", "junk")}; a refusal's code becomes
    C{reject} (5xx) or C{tempfail} (4xx): C{"spam 550 5.7.1"} is
    C{("spam", "reject")}.  The verdicts are then C{accept}, C{junk},
    C{reject}, C{tempfail}, C{none} and C{failed}.
    """
    name, _, verdict = text.partition(" ")
    code = verdict.split(" ", 1)[0]
    if code.isdigit():
        verdict = "tempfail" if code.startswith("4") else "reject"
    return name, verdict or "none"


def authOutcomes(results: AuthResults) -> list[tuple[str, str]]:
    """
    One C{(method, result)} per verdict of sender authentication, with
    RFC 8601's words: one for SPF, DMARC and ARC each when checked, one
    per DKIM signature.
    """
    outcomes = []
    if results.spf is not None:
        outcomes.append(("spf", results.spf.result))
    for dkim in results.dkim or ():
        outcomes.append(("dkim", dkim.result))
    if results.dmarc is not None:
        outcomes.append(("dmarc", results.dmarc.result))
    if results.arc is not None:
        outcomes.append(("arc", results.arc.result))
    return outcomes


@implementer(IServerObserver)
class Metrics:
    """
    Every family smtpmx exports, and the counting.

    @ivar registry: the families' own registry (never prometheus_client's
        global one, so that any number can exist side by side).
    @ivar multiprocessDirectory: where every process writes its figures,
        or L{None} when they are kept in memory.
    """

    def __init__(self, multiprocessDirectory: Optional[str] = None) -> None:
        """
        @param multiprocessDirectory: the value of C{PROMETHEUS_MULTIPROC_DIR}
            when prometheus_client was imported (L{fromEnvironment}).
        """
        self.multiprocessDirectory = multiprocessDirectory
        self.registry = r = CollectorRegistry()
        if multiprocessDirectory is None:
            # Memory and descriptors: of this process only, so not
            # meaningful as a sum over several.
            ProcessCollector(registry=r)
        self.connections = Counter(
            "smtpmx_connections", "SMTP connections made to the server, refused ones included.",
            registry=r,
        )
        self.connectionsRefused = Counter(
            "smtpmx_connections_refused",
            "SMTP connections refused with 421 4.7.0 past --max-connections or"
            " --max-connections-per-ip.",
            registry=r,
        )
        self.connectionsOpen = Gauge(
            "smtpmx_connections_open", "SMTP connections open now.",
            registry=r, multiprocess_mode="livesum",
        )
        self.messages = Counter(
            "smtpmx_messages",
            "Messages whose data was received, by the reply to it: accepted (stored),"
            " rejected (5xx) or tempfail (4xx).",
            ["result"], registry=r,
        )
        self.recipients = Counter(
            "smtpmx_recipients", "RCPT commands, by their verdict: accepted, rejected or tempfail.",
            ["result"], registry=r,
        )
        self.receivedBytes = Counter(
            "smtpmx_received_bytes", "Bytes of message data received (as stored: LF line endings), whatever the result.",
            registry=r,
        )
        self.relayDeliveries = Counter(
            "smtpmx_relay_deliveries",
            "Delivery attempts from the relay queue, one per recipient: delivered,"
            " deferred (to be retried) or bounced.",
            ["result"], registry=r,
        )
        self.queueMessages = Gauge(
            "smtpmx_queue_messages", "Messages in the relay queue.",
            registry=r, multiprocess_mode="livesum",
        )
        self.queueOldestAge = Gauge(
            "smtpmx_queue_oldest_message_age_seconds",
            "Age of the oldest message in the relay queue; 0 when it is empty.",
            registry=r, multiprocess_mode="livemax",
        )
        self.authResults = Counter(
            "smtpmx_auth_results",
            "Sender authentication verdicts (RFC 8601 words), by method; one per DKIM signature.",
            ["method", "result"], registry=r,
        )
        self.filterVerdicts = Counter(
            "smtpmx_filter_verdicts",
            "Message filter verdicts: accept, junk, reject, tempfail, none or failed.",
            ["filter", "verdict"], registry=r,
        )
        self.transactionDuration = Histogram(
            "smtpmx_transaction_duration_seconds",
            "Seconds from MAIL to the reply to the end of data.",
            buckets=DURATION_BUCKETS, registry=r,
        )
        self.messageSize = Histogram(
            "smtpmx_message_size_bytes", "Size of the message data received, in bytes, as stored.",
            buckets=SIZE_BUCKETS, registry=r,
        )
        self.healthy = Gauge(
            "smtpmx_healthy",
            "1 while /healthz would answer 200 (listening; Maildir root and queue writable), else 0.",
            registry=r, multiprocess_mode="livemin",
        )
        self.tlsSessions = Counter(
            "smtpmx_tls_sessions", "STARTTLS handshakes completed, by TLS version.",
            ["version"], registry=r,
        )
        # The fixed label values exist from the start, at 0, so that a
        # rate is right from the first count.
        for result in REPLY_RESULTS.values():
            self.messages.labels(result)
            self.recipients.labels(result)
        for result in DELIVERY_RESULTS.values():
            self.relayDeliveries.labels(result)

    @classmethod
    def fromEnvironment(cls, environ: Mapping[str, str] = os.environ) -> "Metrics":
        """
        The families, in memory or, when C{PROMETHEUS_MULTIPROC_DIR} is
        set, in that directory's files (see the module's docstring).
        """
        return cls(environ.get(MULTIPROCESS_VARIABLE) or None)

    def exposition(self) -> CollectorRegistry:
        """
        What C{/metrics} serves: this process's figures or, with several
        processes, a registry that reads and combines every process's
        files, each time it is collected (blocking: read it off the
        reactor thread).
        """
        if self.multiprocessDirectory is None:
            return self.registry
        return WorkersFigures(self.multiprocessDirectory).exposition()

    def processStopped(self, pid: Optional[int] = None) -> None:
        """
        In multi-process mode, drop the gauges of a process that stopped
        (this one by default): its open connections and queue are no
        longer anyone's.  Its counters stay in the sums.
        """
        if self.multiprocessDirectory is not None:
            mark_process_dead(os.getpid() if pid is None else pid, self.multiprocessDirectory)

    # The SMTP server (IServerObserver).

    def connectionOpened(self, clientHost: str) -> None:
        """
        Count an admitted connection; it is open.
        """
        self.connections.inc()
        self.connectionsOpen.inc()

    def connectionRefused(self, clientHost: str, reason: str) -> None:
        """
        Count a refused connection.
        """
        self.connections.inc()
        self.connectionsRefused.inc()

    def connectionClosed(self, clientHost: str) -> None:
        """
        An admitted connection is no longer open.
        """
        self.connectionsOpen.dec()

    def tlsStarted(self, tls: NegotiatedTLS) -> None:
        """
        Count a TLS session by its version (C{TLSv1.3}).
        """
        self.tlsSessions.labels(tls.version).inc()

    def recipientDecided(self, verdict: RecipientVerdict) -> None:
        """
        Count a recipient by its verdict.
        """
        self.recipients.labels(replyResult(verdict.reply)).inc()

    def transactionEnded(self, record: TransactionRecord) -> None:
        """
        Count a message by its result, its size and duration, what each
        filter said of it and, when they were checked, its sender
        authentication verdicts (C{authResults}).
        """
        self.messages.labels(replyResult(record.reply)).inc()
        self.receivedBytes.inc(record.size)
        self.messageSize.observe(record.size)
        self.transactionDuration.observe(max(record.duration, 0.0))
        for text in record.filters:
            self.filterVerdicts.labels(*filterVerdict(text)).inc()
        results = record.authResults
        if results is not None:
            self.countAuthResults(results)

    # The rest of the server.

    def countAuthResults(self, results: AuthResults) -> None:
        """
        Count one message's sender authentication verdicts.
        """
        for method, result in authOutcomes(results):
            self.authResults.labels(method, result).inc()

    def relayAttempted(self, attempt: RecipientAttempt) -> None:
        """
        Count what one relay attempt found for one recipient
        (L{smtpmx.relay.service.RelayService.onAttempt}).
        """
        self.relayDeliveries.labels(DELIVERY_RESULTS[attempt.disposition]).inc()

    def healthChecked(self, reason: Optional[str]) -> None:
        """
        The outcome of a health check: L{None} when healthy, else why not.
        """
        self.healthy.set(1 if reason is None else 0)

    def sampleQueue(self, messages: Iterable[QueuedMessage], now: float) -> None:
        """
        Take the relay queue's size and the age of its oldest message.
        """
        count = 0
        oldest = now
        for message in messages:
            count += 1
            oldest = min(oldest, message.created)
        self.queueFigures(count, oldest, now)

    def queueFigures(self, count: int, oldest: Optional[float], now: float) -> None:
        """
        Take the relay queue's size and when its oldest message was queued
        (L{None}: none).
        """
        self.queueMessages.set(count)
        self.queueOldestAge.set(max(now - oldest, 0.0) if count and oldest is not None else 0.0)


class WorkersFigures:
    """
    The figures of every process writing to a multi-process directory,
    for a process that counts nothing itself: the parent of C{--workers},
    which serves C{/metrics} for its workers.  It makes no family (one
    would write this process's figures there too: its health, 0, would be
    the lowest).

    @ivar multiprocessDirectory: the workers' C{PROMETHEUS_MULTIPROC_DIR}.
    """

    def __init__(self, multiprocessDirectory: str) -> None:
        self.multiprocessDirectory = multiprocessDirectory

    def exposition(self) -> CollectorRegistry:
        """
        A registry that reads and combines every process's files each time
        it is collected (blocking).
        """
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=self.multiprocessDirectory)
        return registry

    def processStopped(self, pid: int) -> None:
        """
        Drop the gauges of process C{pid}, which stopped without saying so
        (killed): its connections and queue are no longer anyone's.
        """
        mark_process_dead(pid, self.multiprocessDirectory)


class MetricsService(Service):
    """
    Samples the relay queue into L{Metrics} (when asked, before a scrape,
    and every few seconds), checks the server's health as often, and in
    multi-process mode drops this process's gauges when it stops.
    """

    def __init__(
        self,
        metrics: Metrics,
        relay,
        clock,
        interval: float = QUEUE_SAMPLE_INTERVAL,
        checkHealth: Optional[Callable[[], Deferred]] = None,
    ) -> None:
        """
        @param relay: the L{smtpmx.relay.service.RelayService}, whose
            C{queueStatistics} are the queue's; L{None} in a process
            without one.
        @param clock: the L{IReactorTime} to sample by.
        @param checkHealth: checks the server's health
            (L{smtpmx.webstatus.HealthCheck.check}): a L{Deferred} firing
            with L{None} or the reason, never failing.
        """
        self.metrics = metrics
        self.relay = relay
        self.clock = clock
        self.interval = interval
        self.checkHealth = checkHealth
        self._loop: Optional[LoopingCall] = None

    def sample(self) -> None:
        """
        Sample the relay queue now.
        """
        if self.relay is not None:
            count, oldest = self.relay.queueStatistics()
            self.metrics.queueFigures(count, oldest, self.clock.seconds())

    def tick(self) -> None:
        """
        Sample the queue, and check the health (its outcome is recorded
        when it comes).
        """
        self.sample()
        if self.checkHealth is not None:
            self.checkHealth().addCallback(self.metrics.healthChecked)

    def startService(self) -> None:
        """
        Sample now and every C{interval} seconds.
        """
        super().startService()
        self._loop = LoopingCall(self.tick)
        self._loop.clock = self.clock
        self._loop.start(self.interval, now=True)

    def stopService(self) -> None:
        """
        Stop sampling; this process's gauges leave the sums.
        """
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self.metrics.processStopped()
