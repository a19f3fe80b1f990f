"""
Tests for L{smtpmx.metrics}: what the server, the relay and the queue are
counted as, through the in-memory server (StringTransport, Clock), the
relay service with a fake transaction, and records made by hand; and, in
subprocesses, that the figures of several processes are summed.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap

from twisted.internet.defer import maybeDeferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from smtpmx.address import parseAddress
from smtpmx.auth.results import ArcResult, AuthResults, DkimResult, DmarcResult, SpfResult
from smtpmx.envelope import Envelope
from smtpmx.metrics import (
    MULTIPROCESS_VARIABLE,
    Metrics,
    MetricsService,
    authOutcomes,
    filterVerdict,
    replyResult,
)
from smtpmx.relay.queue import Queue
from smtpmx.relay.queueformat import QueuedMessage, QueuedRecipient
from smtpmx.relay.service import RelayService
from smtpmx.reply import Reply
from smtpmx.session import NegotiatedTLS
from smtpmx.transactionlog import TransactionRecord
from smtpmx.validation import Accept, Reject
from tests.e2e import ROOT
from tests.serverhelpers import Server, TLSv13Handle, directoryConfig
from tests.test_relay_service import FakeDeliver

TRANSACTION = (
    "MAIL FROM:<sender@remote.example>\r\n"
    "RCPT TO:<alice@example.org>\r\n"
    "DATA\r\n"
)


def value(metrics: Metrics, name: str, **labels) -> float:
    """
    The value of one sample of C{metrics}, 0 when there is none.
    """
    found = metrics.registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


def record(code: int = 250, size: int = 100, filters=(), duration: float = 1.5, **extra) -> TransactionRecord:
    """
    A transaction's record, as the session makes it.
    """
    envelope = Envelope(
        queueId="Q1", clientHost="192.0.2.1", heloName="client.example",
        reversePath=parseAddress("sender@remote.example"), recipients=[], received=b"",
    )
    reply = Reply(code, f"{code // 100}.0.0", "whatever")
    made = TransactionRecord(envelope, [], size, reply, tuple(filters), duration=duration)
    for name, v in extra.items():
        object.__setattr__(made, name, v)
    return made


class ValuesTests(SynchronousTestCase):
    """
    The pure functions that turn what the server knows into label values.
    """

    def test_replyResult(self):
        """
        A 2xx reply is C{accepted}, a 4xx C{tempfail}, a 5xx C{rejected}.
        """
        self.assertEqual(replyResult(Reply(250, "2.1.5", "Ok")), "accepted")
        self.assertEqual(replyResult(Reply(451, "4.3.0", "later")), "tempfail")
        self.assertEqual(replyResult(Reply(550, "5.1.1", "no")), "rejected")

    def test_filterVerdict(self):
        """
        A filter's verdict text is split into the filter and a verdict
        word; a refusal's code becomes C{reject} or C{tempfail}.
        """
        self.assertEqual(filterVerdict("rspamd junk"), ("rspamd", "junk"))
        self.assertEqual(filterVerdict("rspamd accept"), ("rspamd", "accept"))
        self.assertEqual(filterVerdict("spam 550 5.7.1"), ("spam", "reject"))
        self.assertEqual(filterVerdict("slow 451 4.7.1"), ("slow", "tempfail"))
        self.assertEqual(filterVerdict("slow failed"), ("slow", "failed"))
        self.assertEqual(filterVerdict("quiet none"), ("quiet", "none"))

    def test_authOutcomes(self):
        """
        Each method checked gives one outcome, DKIM one per signature;
        a method that was off gives none.
        """
        results = AuthResults(
            spf=SpfResult("pass", mailfrom="remote.example"),
            dkim=(DkimResult("pass", "remote.example", "s1"), DkimResult("fail", "other.example", "s2")),
            dmarc=DmarcResult("pass", "remote.example"),
        )
        self.assertEqual(
            authOutcomes(results),
            [("spf", "pass"), ("dkim", "pass"), ("dkim", "fail"), ("dmarc", "pass")],
        )
        self.assertEqual(authOutcomes(AuthResults(arc=ArcResult("none"))), [("arc", "none")])
        self.assertEqual(authOutcomes(AuthResults()), [])


class ServerCountingTests(SynchronousTestCase):
    """
    L{Metrics} as the SMTP server's observer: what clients do is counted.
    """

    def setUp(self) -> None:
        """
        An in-memory server whose factory tells a fresh L{Metrics}.
        """
        self.metrics = Metrics()
        self.server = Server(
            verdicts={"alice@example.org": Accept(), "bob@example.org": Reject(550, "5.1.1", "no such user")},
            observer=self.metrics,
            clientHost="192.0.2.1",
        )

    def test_familiesExist(self):
        """
        Every family is there from the start, those with a fixed set of
        results at 0 for each.
        """
        families = {m.name for m in self.metrics.registry.collect()}
        for name in (
            "smtpmx_connections", "smtpmx_messages", "smtpmx_recipients", "smtpmx_received_bytes",
            "smtpmx_relay_deliveries", "smtpmx_queue_messages", "smtpmx_auth_results",
            "smtpmx_filter_verdicts", "smtpmx_transaction_duration_seconds",
            "smtpmx_message_size_bytes", "smtpmx_queue_oldest_message_age_seconds",
            "smtpmx_tls_sessions", "smtpmx_connections_open", "smtpmx_connections_refused",
            "smtpmx_healthy",
        ):
            self.assertIn(name, families)
        for result in ("accepted", "rejected", "tempfail"):
            self.assertEqual(self.metrics.registry.get_sample_value("smtpmx_messages_total", {"result": result}), 0)
        for result in ("delivered", "deferred", "bounced"):
            self.assertEqual(
                self.metrics.registry.get_sample_value("smtpmx_relay_deliveries_total", {"result": result}), 0
            )

    def test_connections(self):
        """
        A connection is counted when it is made and is open until it ends.
        """
        self.assertEqual(value(self.metrics, "smtpmx_connections_total"), 1)
        self.assertEqual(value(self.metrics, "smtpmx_connections_open"), 1)
        self.server.codes("QUIT\r\n")
        self.server.protocol.connectionLost(None)
        self.assertEqual(value(self.metrics, "smtpmx_connections_open"), 0)
        self.assertEqual(value(self.metrics, "smtpmx_connections_total"), 1)

    def test_refusedConnection(self):
        """
        A connection refused past a limit counts as a connection, and as
        refused, but is never open.
        """
        self.server.config = self.server.factory.config = dataclasses.replace(
            self.server.config, maxConnectionsPerIp=1
        )
        self.server.connect()
        self.assertEqual(value(self.metrics, "smtpmx_connections_total"), 2)
        self.assertEqual(value(self.metrics, "smtpmx_connections_refused_total"), 1)
        self.assertEqual(value(self.metrics, "smtpmx_connections_open"), 1)

    def test_recipientsWithoutData(self):
        """
        Every RCPT's verdict counts, even when the transaction never
        reaches DATA: a client probing for users shows up as rejected
        recipients.
        """
        self.server.greeted()
        codes = self.server.codes(
            "MAIL FROM:<sender@remote.example>\r\n"
            "RCPT TO:<alice@example.org>\r\n"
            "RCPT TO:<bob@example.org>\r\n"
            "RCPT TO:<someone@elsewhere.example>\r\n"
            "RSET\r\n"
        )
        self.assertEqual([c[:3] for c in codes], ["250", "250", "550", "554", "250"])
        self.assertEqual(value(self.metrics, "smtpmx_recipients_total", result="accepted"), 1)
        self.assertEqual(value(self.metrics, "smtpmx_recipients_total", result="rejected"), 2)
        self.assertEqual(value(self.metrics, "smtpmx_messages_total", result="accepted"), 0)

    def test_acceptedMessage(self):
        """
        A stored message counts as accepted, with its bytes (as stored,
        with LF line endings), its size and its duration, from MAIL to the
        reply, by the server's clock.
        """
        self.server.greeted()
        self.server.codes("MAIL FROM:<sender@remote.example>\r\n")
        self.server.clock.advance(2)
        self.server.codes("RCPT TO:<alice@example.org>\r\nDATA\r\n")
        self.server.clock.advance(1)
        codes = self.server.codes("Subject: hi\r\n\r\nhello\r\n.\r\n")
        self.assertEqual(codes[-1][:3], "250")
        size = len(b"Subject: hi\n\nhello\n")
        self.assertEqual(value(self.metrics, "smtpmx_messages_total", result="accepted"), 1)
        self.assertEqual(value(self.metrics, "smtpmx_received_bytes_total"), size)
        self.assertEqual(value(self.metrics, "smtpmx_message_size_bytes_sum"), size)
        self.assertEqual(value(self.metrics, "smtpmx_message_size_bytes_bucket", le="1024.0"), 1)
        self.assertEqual(value(self.metrics, "smtpmx_transaction_duration_seconds_sum"), 3)
        self.assertEqual(value(self.metrics, "smtpmx_transaction_duration_seconds_bucket", le="2.5"), 0)
        self.assertEqual(value(self.metrics, "smtpmx_transaction_duration_seconds_bucket", le="5.0"), 1)

    def test_failedStore(self):
        """
        A message the store cannot keep (C{451 4.3.0}) counts as tempfail;
        one too big (C{552}) as rejected.
        """
        self.server.greeted()
        self.server.store.failWith = OSError("disk on fire")
        codes = self.server.codes(TRANSACTION + "x\r\n.\r\n")
        self.assertEqual(codes[-1][:3], "451")
        self.flushLoggedErrors(OSError)
        self.server.store.failWith = None
        self.server.factory.config = dataclasses.replace(self.server.config, maxMessageSize=10)
        other, _ = self.server.connect()
        self.server.protocol = other
        self.server.transport = other.transport
        self.server.greeted()
        codes = self.server.codes(TRANSACTION + "x" * 100 + "\r\n.\r\n")
        self.assertEqual(codes[-1][:3], "552")
        self.assertEqual(value(self.metrics, "smtpmx_messages_total", result="tempfail"), 1)
        self.assertEqual(value(self.metrics, "smtpmx_messages_total", result="rejected"), 1)

    def test_tlsSession(self):
        """
        A completed STARTTLS handshake counts under its TLS version.
        """
        self.metrics.tlsStarted(NegotiatedTLS("TLSv1.3", "TLS_AES_128_GCM_SHA256", 128))
        self.metrics.tlsStarted(NegotiatedTLS("TLSv1.2", "ECDHE-RSA-AES128-GCM-SHA256", 128))
        self.metrics.tlsStarted(NegotiatedTLS("TLSv1.3", "TLS_AES_256_GCM_SHA384", 256))
        self.assertEqual(value(self.metrics, "smtpmx_tls_sessions_total", version="TLSv1.3"), 2)
        self.assertEqual(value(self.metrics, "smtpmx_tls_sessions_total", version="TLSv1.2"), 1)

    def test_tlsSessionFromTheProtocol(self):
        """
        The protocol tells the observer of the handshake it completed.
        """

        self.server.transport.getHandle = TLSv13Handle
        self.server.protocol.handshakeCompleted()
        self.assertEqual(value(self.metrics, "smtpmx_tls_sessions_total", version="TLSv1.3"), 1)


class RecordCountingTests(SynchronousTestCase):
    """
    L{Metrics.transactionEnded} and the other counting methods, from
    values made by hand.
    """

    def test_filterVerdicts(self):
        """
        What each filter said of a message counts under its name.
        """
        metrics = Metrics()
        metrics.transactionEnded(record(filters=("rspamd junk", "spam 550 5.7.1")))
        metrics.transactionEnded(record(filters=("rspamd accept",)))
        self.assertEqual(value(metrics, "smtpmx_filter_verdicts_total", filter="rspamd", verdict="junk"), 1)
        self.assertEqual(value(metrics, "smtpmx_filter_verdicts_total", filter="rspamd", verdict="accept"), 1)
        self.assertEqual(value(metrics, "smtpmx_filter_verdicts_total", filter="spam", verdict="reject"), 1)

    def test_authResults(self):
        """
        Sender authentication verdicts count by method and result, once
        per DKIM signature.
        """
        metrics = Metrics()
        metrics.countAuthResults(AuthResults(
            spf=SpfResult("softfail", mailfrom="remote.example"),
            dkim=(DkimResult("pass", "a.example", "s"), DkimResult("pass", "b.example", "s")),
            dmarc=DmarcResult("fail", "remote.example", "reject"),
        ))
        self.assertEqual(value(metrics, "smtpmx_auth_results_total", method="spf", result="softfail"), 1)
        self.assertEqual(value(metrics, "smtpmx_auth_results_total", method="dkim", result="pass"), 2)
        self.assertEqual(value(metrics, "smtpmx_auth_results_total", method="dmarc", result="fail"), 1)

    def test_authResultsOfARecord(self):
        """
        A record carrying C{authResults} has them counted; one without
        (sender authentication off) counts nothing for them.
        """
        metrics = Metrics()
        metrics.transactionEnded(record())
        metrics.transactionEnded(record(authResults=AuthResults(spf=SpfResult("pass", mailfrom="x.example"))))
        self.assertEqual(value(metrics, "smtpmx_auth_results_total", method="spf", result="pass"), 1)

    def test_queueSample(self):
        """
        The queue's size and the age of its oldest message are sampled;
        an empty queue is 0 and 0.
        """
        metrics = Metrics()
        messages = [
            QueuedMessage(id=f"M{n}", created=1000.0 + n * 100, sender="", size=0, clientHost="", heloName="")
            for n in range(3)
        ]
        metrics.sampleQueue(messages, 5000.0)
        self.assertEqual(value(metrics, "smtpmx_queue_messages"), 3)
        self.assertEqual(value(metrics, "smtpmx_queue_oldest_message_age_seconds"), 4000)
        metrics.sampleQueue([], 5000.0)
        self.assertEqual(value(metrics, "smtpmx_queue_messages"), 0)
        self.assertEqual(value(metrics, "smtpmx_queue_oldest_message_age_seconds"), 0)


class HealthGaugeTests(SynchronousTestCase):
    """
    C{smtpmx_healthy}: the health, checked as often as the queue is
    sampled, as a figure an alert rule can watch.
    """

    def test_checkedEveryInterval(self):
        """
        The service checks the health when it starts and every interval;
        the gauge follows.
        """
        from twisted.internet.defer import succeed

        metrics = Metrics()
        outcomes = iter([None, "cannot write --queue-dir /q: Read-only file system", None])
        clock = Clock()
        service = MetricsService(metrics, None, clock, interval=5, checkHealth=lambda: succeed(next(outcomes)))
        service.startService()
        self.addCleanup(service.stopService)
        self.assertEqual(value(metrics, "smtpmx_healthy"), 1)
        clock.advance(5)
        self.assertEqual(value(metrics, "smtpmx_healthy"), 0)
        clock.advance(5)
        self.assertEqual(value(metrics, "smtpmx_healthy"), 1)


class RelayCountingTests(SynchronousTestCase):
    """
    The relay service's results, counted through its C{onAttempt}, and
    its queue sampled by L{MetricsService}.
    """

    def setUp(self) -> None:
        """
        A started relay service on a real queue, a fake transaction, a
        Clock, and a started L{MetricsService}.
        """
        self.dir = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.dir)
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.config = directoryConfig(
            self.dir,
            routes=(("*", "127.0.0.9", 25),), retrySchedule=(60,), maxQueueAge=3600,
        )
        self.queue = Queue(self.config.queueDir)
        self.deliver = FakeDeliver()
        ids = iter(f"B{n:04d}" for n in range(1000))
        self.relay = RelayService(
            self.config, self.queue, lambda f, *a, **kw: maybeDeferred(f, *a, **kw), self.clock, None,
            self.deliver, lambda: next(ids),
        )
        self.metrics = Metrics()
        self.relay.onAttempt = self.metrics.relayAttempted
        self.relay.startService()
        self.addCleanup(self.relay.stopService)
        self.sampler = MetricsService(self.metrics, self.relay, self.clock, interval=5)
        self.sampler.startService()
        self.addCleanup(self.sampler.stopService)

    def enqueue(self, *recipients: str, messageId: str = "M1") -> None:
        """
        Queue a message from C{<>} (no bounce) as the server would.
        """
        message = QueuedMessage(
            id=messageId, created=self.clock.seconds(), sender="", size=0, clientHost="127.0.0.1",
            heloName="client.example",
            recipients=[QueuedRecipient(r, nextAttempt=self.clock.seconds()) for r in recipients],
        )
        self.queue.add(message, b"Subject: hi\n\nbody\n")
        self.relay.queued(message)

    def test_deliveries(self):
        """
        Each recipient's result counts: delivered, deferred (then
        delivered on the retry), bounced.
        """
        self.deliver.replies = {
            "later@remote.example": (451, "4.2.0 busy"),
            "nobody@remote.example": (550, "5.1.1 no such user"),
        }
        self.enqueue("ok@remote.example", "later@remote.example", "nobody@remote.example")
        self.assertEqual(value(self.metrics, "smtpmx_relay_deliveries_total", result="delivered"), 1)
        self.assertEqual(value(self.metrics, "smtpmx_relay_deliveries_total", result="deferred"), 1)
        self.assertEqual(value(self.metrics, "smtpmx_relay_deliveries_total", result="bounced"), 1)
        self.deliver.replies = {}
        self.clock.advance(61)
        self.assertEqual(value(self.metrics, "smtpmx_relay_deliveries_total", result="delivered"), 2)
        self.assertEqual(value(self.metrics, "smtpmx_relay_deliveries_total", result="deferred"), 1)

    def test_queueSampled(self):
        """
        The queue is sampled every few seconds: a message waiting for its
        retry is counted, and its age grows.
        """
        self.deliver.replies = {"later@remote.example": (451, "4.2.0 busy")}
        self.enqueue("later@remote.example")
        self.clock.advance(5)
        self.assertEqual(value(self.metrics, "smtpmx_queue_messages"), 1)
        self.assertEqual(value(self.metrics, "smtpmx_queue_oldest_message_age_seconds"), 5)
        self.clock.advance(30)
        self.assertEqual(value(self.metrics, "smtpmx_queue_oldest_message_age_seconds"), 35)
        self.deliver.replies = {}
        self.clock.advance(30)
        self.assertEqual(value(self.metrics, "smtpmx_queue_messages"), 0)


# A process counting into a multi-process directory: a connection, two
# accepted recipients and one message of 1000 bytes, an open connection.
WORKER = textwrap.dedent("""
    from smtpmx.metrics import Metrics
    from smtpmx.reply import Reply
    from smtpmx.transactionlog import RecipientVerdict
    from tests.test_metrics import record

    metrics = Metrics.fromEnvironment()
    metrics.connectionOpened("192.0.2.1")
    for _ in range(2):
        metrics.recipientDecided(RecipientVerdict("a@example.org", Reply(250, "2.1.5", "Ok"), None))
    metrics.transactionEnded(record(size=1000))
    metrics.sampleQueue([], 0.0)
""")


class MultiProcessTests(SynchronousTestCase):
    """
    With C{PROMETHEUS_MULTIPROC_DIR}, what several processes count is
    summed in what any of them serves.
    """

    def runWorker(self, directory: str, code: str = WORKER) -> None:
        """
        Run a process that counts into C{directory}, to its end.
        """
        env = dict(os.environ, PYTHONPATH=ROOT, **{MULTIPROCESS_VARIABLE: directory})
        subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, check=True, timeout=60)

    def test_summedOverProcesses(self):
        """
        Two processes' counters and histograms are summed; the gauge of
        open connections is summed over the living and a stopped
        process's is dropped.
        """
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory)
        self.runWorker(directory)
        self.runWorker(directory)
        # The reader is a third process, as the one serving /metrics would be.
        reader = textwrap.dedent("""
            import json, sys
            from prometheus_client.exposition import generate_latest
            from smtpmx.metrics import Metrics
            metrics = Metrics.fromEnvironment()
            sys.stdout.write(generate_latest(metrics.exposition()).decode())
        """)
        env = dict(os.environ, PYTHONPATH=ROOT, **{MULTIPROCESS_VARIABLE: directory})
        out = subprocess.run(
            [sys.executable, "-c", reader], env=env, cwd=ROOT, check=True, timeout=60,
            capture_output=True, text=True,
        ).stdout
        from prometheus_client.parser import text_string_to_metric_families

        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(out)
            for s in family.samples
        }
        self.assertEqual(samples[("smtpmx_connections_total", ())], 2)
        self.assertEqual(samples[("smtpmx_recipients_total", (("result", "accepted"),))], 4)
        self.assertEqual(samples[("smtpmx_messages_total", (("result", "accepted"),))], 2)
        self.assertEqual(samples[("smtpmx_received_bytes_total", ())], 2000)
        self.assertEqual(samples[("smtpmx_message_size_bytes_count", ())], 2)
        # Both workers have exited without saying so: their open
        # connections still count until they are marked dead.
        self.assertEqual(samples[("smtpmx_connections_open", ())], 2)
        pids = {
            name.rsplit("_", 1)[1][: -len(".db")]
            for name in os.listdir(directory)
            if name.startswith("gauge_livesum_")
        }
        # The reader's own (it counts too, as every worker does) and the
        # two workers'.
        self.assertEqual(len(pids), 3)
        metrics = Metrics(directory)
        for pid in pids:
            metrics.processStopped(int(pid))
        self.assertFalse([n for n in os.listdir(directory) if n.startswith("gauge_live")])
