"""
End-to-end tests of C{--metrics} and C{--log-format json}: the real
C{twistd -n smtpmx} on loopback, mail sent to it with smtplib, C{/metrics}
scraped and parsed with prometheus_client's parser, C{/healthz} asked, the
JSON log read back; and two servers sharing a multi-process directory,
their figures summed.
"""

from __future__ import annotations

import json
import os
import re
import smtplib
import socket
import ssl
import urllib.error
import urllib.request

from prometheus_client.parser import text_string_to_metric_families
from twisted.trial.unittest import SynchronousTestCase

from tests import certs
from tests.e2e import RunningServer, freePort, makeTemporaryDirectory, runToExit
from tests.helpers import message, unique, waitUntil
from tests.sink import RunningSink

# Every blocking operation of a client is bounded by this.
TIMEOUT = 15

METRICS_LISTENING = re.compile(r"smtpmx metrics listening on \[?([0-9.]+)\]?:(\d+)")

Samples = dict[tuple[str, tuple], float]


def startServer(addCleanup, *args: str, **kw) -> RunningServer:
    """
    A server with C{--metrics} on a free loopback port, whose C{metrics}
    attribute is that port's URL.
    """
    server = RunningServer.start(addCleanup, ["--metrics", "tcp:0:interface=127.0.0.1", *args], **kw)
    match = waitUntil(lambda: METRICS_LISTENING.search(server.output()), TIMEOUT)
    assert match, server.log()
    server.metrics = f"http://{match.group(1)}:{match.group(2)}"
    return server


def get(url: str) -> tuple[int, bytes, str]:
    """
    GET C{url}: the status, the body and the content type, 5xx included.
    """
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
            return response.status, response.read(), response.headers["Content-Type"]
    except urllib.error.HTTPError as e:
        return e.code, e.read(), e.headers["Content-Type"]


def scrape(server: RunningServer) -> Samples:
    """
    Every sample of C{/metrics}, parsed by prometheus_client's parser, by
    name and sorted labels.
    """
    status, body, contentType = get(server.metrics + "/metrics")
    assert status == 200, (status, body)
    assert contentType.startswith("text/plain"), contentType
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body.decode("utf-8"))
        for sample in family.samples
    }


def client(server: RunningServer, **kw) -> smtplib.SMTP:
    """
    An smtplib client connected to C{server}.
    """
    return smtplib.SMTP(server.host, server.port, local_hostname="client.example", timeout=TIMEOUT, **kw)


class MetricsTests(SynchronousTestCase):
    """
    What a real server counts, read the way Prometheus reads it.
    """

    def test_mailCounted(self):
        """
        An accepted message and a refused recipient show in C{/metrics}:
        the connections, the recipients by verdict, the message, its bytes
        and size, and its transaction time; connections end closed.
        """
        server = startServer(self.addCleanup)
        server.makeMaildir("localhost", "alice")
        with client(server) as c:
            c.sendmail("sender@remote.example", ["alice@localhost"], message(unique()))
        with client(server) as c:
            c.ehlo()
            c.mail("sender@remote.example")
            self.assertEqual(c.rcpt("nobody@localhost")[0], 550)
        [stored] = server.newMessages("localhost", "alice")
        waitUntil(lambda: scrape(server)[("smtpmx_connections_open", ())] == 0, TIMEOUT)
        samples = scrape(server)
        self.assertEqual(samples[("smtpmx_connections_total", ())], 2)
        self.assertEqual(samples[("smtpmx_recipients_total", (("result", "accepted"),))], 1)
        self.assertEqual(samples[("smtpmx_recipients_total", (("result", "rejected"),))], 1)
        self.assertEqual(samples[("smtpmx_messages_total", (("result", "accepted"),))], 1)
        self.assertEqual(samples[("smtpmx_messages_total", (("result", "rejected"),))], 0)
        self.assertEqual(samples[("smtpmx_messages_total", (("result", "tempfail"),))], 0)
        size = samples[("smtpmx_received_bytes_total", ())]
        # What was stored is what was received, after our trace fields.
        self.assertTrue(0 < size < len(stored), (size, len(stored)))
        self.assertEqual(samples[("smtpmx_message_size_bytes_sum", ())], size)
        self.assertEqual(samples[("smtpmx_transaction_duration_seconds_count", ())], 1)
        self.assertEqual(samples[("smtpmx_queue_messages", ())], 0)
        self.assertEqual(samples[("smtpmx_healthy", ())], 1)
        # One process alone: its memory and descriptors are there too.
        self.assertIn(("process_open_fds", ()), samples)
        self.assertEqual(get(server.metrics + "/healthz")[:2], (200, b"ok"))

    def test_relayCounted(self):
        """
        Relayed mail shows as relay deliveries by result, and a message
        waiting for its retry in the queue's figures.
        """
        sink = RunningSink.start(self.addCleanup, makeTemporaryDirectory(self.addCleanup))
        down = freePort()
        server = startServer(
            self.addCleanup, "--route", f"sink.example=127.0.0.3:{sink.port}",
            "--route", f"down.example=127.0.0.1:{down}", "--retry-schedule", "3600",
        )
        with client(server) as c:
            c.sendmail("sender@localhost", ["a@sink.example"], message(unique()))
            c.sendmail("sender@localhost", ["b@down.example"], message(unique()))
        sink.waitFor(1)

        def settled() -> Samples:
            samples = scrape(server)
            # The delivered message leaves the queue once its removal is
            # durable, a moment after the attempt is counted.
            done = samples[("smtpmx_relay_deliveries_total", (("result", "delivered"),))] == 1 and \
                samples[("smtpmx_relay_deliveries_total", (("result", "deferred"),))] == 1 and \
                samples[("smtpmx_queue_messages", ())] == 1
            return samples if done else {}

        samples = waitUntil(settled, TIMEOUT)
        self.assertTrue(samples, scrape(server))
        self.assertEqual(samples[("smtpmx_relay_deliveries_total", (("result", "bounced"),))], 0)
        self.assertEqual(samples[("smtpmx_queue_messages", ())], 1)
        self.assertGreaterEqual(samples[("smtpmx_queue_oldest_message_age_seconds", ())], 0)
        self.assertLess(samples[("smtpmx_queue_oldest_message_age_seconds", ())], 60)

    def test_tlsCounted(self):
        """
        A STARTTLS session counts under the TLS version it negotiated.
        """
        certDir = makeTemporaryDirectory(self.addCleanup, "smtpmx-certs-")
        authority = certs.makeAuthority(certDir)
        certificate, key = certs.makeServerCertificate(authority, certDir)
        server = startServer(self.addCleanup, "--tls-certificate", certificate, "--tls-key", key)
        with client(server) as c:
            c.starttls(context=ssl.create_default_context(cafile=authority.path))
            version = c.sock.version()
            c.ehlo()
        samples = waitUntil(lambda: scrape(server).get(("smtpmx_tls_sessions_total", (("version", version),))),
                            TIMEOUT)
        self.assertEqual(samples, 1)

    def test_healthFailsWhenTheMaildirRootCannotBeWritten(self):
        """
        C{/healthz} answers C{503} with the reason while the Maildir root
        cannot be written, and C{200 ok} again once it can; the health
        gauge follows.
        """
        server = startServer(self.addCleanup)
        root = os.path.join(server.dir, "Maildir")
        self.assertEqual(get(server.metrics + "/healthz")[:2], (200, b"ok"))
        # As root, permissions would not stop a write: a plain file where
        # the directory was does.
        os.rename(root, root + ".away")
        with open(root, "w"):
            pass
        status, body, contentType = get(server.metrics + "/healthz")
        self.assertEqual(status, 503)
        self.assertEqual(body.decode(), f"cannot write --maildir-root {root}: Not a directory\n")
        self.assertTrue(contentType.startswith("text/plain"))
        self.assertTrue(waitUntil(lambda: scrape(server)[("smtpmx_healthy", ())] == 0, TIMEOUT))
        os.remove(root)
        os.rename(root + ".away", root)
        self.assertEqual(get(server.metrics + "/healthz")[:2], (200, b"ok"))
        self.assertTrue(waitUntil(lambda: scrape(server)[("smtpmx_healthy", ())] == 1, TIMEOUT))

    def test_otherPaths(self):
        """
        Nothing else is served, and C{/metrics} is read-only.
        """
        server = startServer(self.addCleanup)
        self.assertEqual(get(server.metrics + "/")[0], 404)
        self.assertEqual(get(server.metrics + "/nothing")[0], 404)
        request = urllib.request.Request(server.metrics + "/metrics", data=b"x", method="POST")
        try:
            urllib.request.urlopen(request, timeout=TIMEOUT)
        except urllib.error.HTTPError as e:
            self.assertEqual(e.code, 405)
        else:
            self.fail("POST /metrics was accepted")


class StartupTests(SynchronousTestCase):
    """
    A C{--metrics} endpoint that cannot be listened on stops start-up, as
    a C{--listen} one does.
    """

    def test_portTaken(self):
        """
        The server exits at once, saying in one line, without a traceback,
        that its metrics cannot listen and why.
        """
        taken = socket.socket()
        self.addCleanup(taken.close)
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        status, output = runToExit(
            ["--listen", "tcp:0:interface=127.0.0.1", "--metrics", f"tcp:{port}:interface=127.0.0.1"],
            makeTemporaryDirectory(self.addCleanup),
        )
        self.assertEqual(status, 1, output)
        self.assertNotIn("Traceback", output)
        last = [line for line in output.splitlines() if line.strip()][-1]
        self.assertIn(f"smtpmx metrics cannot listen on tcp:{port}:interface=127.0.0.1:", last)
        self.assertIn("in use", last)


class MultiProcessTests(SynchronousTestCase):
    """
    Two servers sharing C{PROMETHEUS_MULTIPROC_DIR}, as workers would: the
    one serving C{/metrics} shows the sum of both.
    """

    def test_summed(self):
        """
        Each server takes one message; the figures either serves are the
        sum, and stay so when the other stops (its open connections leave
        the sum).
        """
        directory = makeTemporaryDirectory(self.addCleanup, "smtpmx-metrics-")
        environ = {"PROMETHEUS_MULTIPROC_DIR": directory}
        first = startServer(self.addCleanup, environ=environ)
        second = startServer(self.addCleanup, environ=environ)
        for server in (first, second):
            server.makeMaildir("localhost", "alice")
            with client(server) as c:
                c.sendmail("sender@remote.example", ["alice@localhost"], message(unique()))
        samples = scrape(first)
        self.assertEqual(samples[("smtpmx_connections_total", ())], 2)
        self.assertEqual(samples[("smtpmx_messages_total", (("result", "accepted"),))], 2)
        self.assertEqual(samples[("smtpmx_recipients_total", (("result", "accepted"),))], 2)
        self.assertEqual(samples[("smtpmx_message_size_bytes_count", ())], 2)
        # Per-process figures make no sense summed: they are left out.
        self.assertNotIn(("process_open_fds", ()), samples)
        self.assertEqual(scrape(second)[("smtpmx_messages_total", (("result", "accepted"),))], 2)
        pid = second.pid
        self.assertIn(f"gauge_livesum_{pid}.db", os.listdir(directory))
        second.stop()
        self.assertNotIn(f"gauge_livesum_{pid}.db", os.listdir(directory))
        after = scrape(first)
        self.assertEqual(after[("smtpmx_messages_total", (("result", "accepted"),))], 2)
        self.assertEqual(after[("smtpmx_connections_open", ())], 0)


class JSONLogTests(SynchronousTestCase):
    """
    C{--log-format json} under the real twistd.
    """

    def test_linesAreJSON(self):
        """
        Every line twistd writes is one JSON object with a time, a level and
        a text; the transaction's has its queue ID, client, sender,
        recipients, size and result.
        """
        server = RunningServer.start(self.addCleanup, ["--log-format", "json"])
        server.makeMaildir("localhost", "alice")
        with client(server) as c:
            c.ehlo()
            c.mail("sender@remote.example")
            c.rcpt("alice@localhost")
            c.rcpt("nobody@localhost")
            c.data(message(unique()))
        waitUntil(lambda: '"queue_id"' in server.output(), TIMEOUT)
        lines = [json.loads(line) for line in server.output().splitlines()]
        for line in lines:
            self.assertTrue({"time", "level", "text"} <= set(line), line)
            self.assertRegex(line["time"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00$")
        [transaction] = [line for line in lines if "queue_id" in line and "result" in line]
        self.assertEqual(transaction["client"], "127.0.0.1")
        self.assertEqual(transaction["from"], "sender@remote.example")
        self.assertEqual(transaction["to"], ["alice@localhost"])
        self.assertEqual(transaction["level"], "info")
        self.assertTrue(transaction["result"].startswith("250 2.0.0 Ok: queued as " + transaction["queue_id"]))
        [stored] = server.newMessages("localhost", "alice")
        self.assertGreater(transaction["size"], 0)
        self.assertLess(transaction["size"], len(stored))
        [reject] = [line for line in lines if line["text"].startswith("NOQUEUE: reject")]
        self.assertEqual(reject["client"], "127.0.0.1")
        self.assertTrue(any(line["text"].startswith("smtpmx listening on") for line in lines))
        self.assertEqual(server.errors(), "")
