"""
End-to-end tests of C{--workers N}: the real C{twistd -n smtpmx --workers
2}, its workers found by the PIDs its log names, paused (C{SIGSTOP}) to
make the other one accept, killed with C{SIGKILL} in the middle of a
load, and the server stopped, hung up and killed as an operator (or a
power cut) would.
"""

from __future__ import annotations

import json
import os
import re
import signal
import smtplib
import threading
import time
from contextlib import contextmanager
from typing import Iterator

from twisted.trial.unittest import SynchronousTestCase

from tests.e2e import RunningServer, SharedProcessesTestCase, makeTemporaryDirectory
from tests.helpers import message, unique, waitUntil
from tests.sink import RunningSink
from tests.test_metrics_e2e import get, scrape, startServer
from tests.test_relay_e2e import messageIdOf

# Every blocking operation of a client is bounded by this.
TIMEOUT = 15

STARTED = re.compile(r"worker (\d+) started: pid (\d+)")
QUEUED_AS = re.compile(r"queued as ([0-9A-F]+)")


def workerPids(server: RunningServer) -> dict[int, int]:
    """
    The PID of each worker now, from the parent's log (the last start of
    each).
    """
    return {int(n): int(pid) for n, pid in STARTED.findall(server.output())}


def waitForWorkers(server: RunningServer, count: int = 2) -> dict[int, int]:
    """
    Wait until C{count} workers have started and accept.
    """
    waitUntil(lambda: server.output().count("accepting on") >= count, TIMEOUT)
    return workerPids(server)


def pidOfQueueId(queueId: str) -> int:
    """
    The process that made a queue ID: the digits between the time (10) and
    the counter (4).
    """
    return int(queueId[10:-4], 16)


def alive(pid: int) -> bool:
    """
    Whether process C{pid} exists and is not a zombie.
    """
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@contextmanager
def paused(*pids: int) -> Iterator[None]:
    """
    Stop the processes C{pids} (C{SIGSTOP}) for the time of the block, so
    that the other workers take the connections.
    """
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)


def send(server: RunningServer, recipients: list[str], messageId: str) -> str:
    """
    Send one message; its queue ID.
    """
    with smtplib.SMTP(server.host, server.port, local_hostname="client.example", timeout=TIMEOUT) as c:
        c.ehlo()
        c.mail("sender@remote.example")
        for recipient in recipients:
            code, text = c.rcpt(recipient)
            assert code == 250, (code, text)
        code, text = c.data(message(messageId=messageId))
    assert code == 250, (code, text)
    return QUEUED_AS.search(text.decode()).group(1)


class WorkersTests(SharedProcessesTestCase):
    """
    One server with two workers, relaying to the recording sink.
    """

    @classmethod
    def startProcesses(cls, addCleanup) -> None:
        """
        The sink, then the server relaying everything to it.
        """
        directory = makeTemporaryDirectory(addCleanup)
        cls.sink = RunningSink.start(addCleanup, directory)
        cls.server = RunningServer.start(
            addCleanup, ["--workers", "2", "--validator", "any", "--auth-checks", "none",
                         "--smarthost", f"{cls.sink.host}:{cls.sink.port}"],
        )
        cls.pids = waitForWorkers(cls.server)

    def test_everyWorkerAccepts(self):
        """
        Each worker accepts on the shared socket: with the other paused, a
        message is taken by it (its PID is in the queue ID) and filed.
        """
        for index, pid in self.pids.items():
            others = [p for i, p in self.pids.items() if i != index]
            user = unique("w")
            with paused(*others):
                queueId = send(self.server, [f"{user}@localhost"], unique("id") + "@client.example")
            self.assertEqual(pidOfQueueId(queueId), pid)
            self.assertEqual(len(self.server.waitForFiles("localhost", user, 1)), 1)

    def test_relayedFromTheOtherWorker(self):
        """
        A message for a remote recipient received by a worker that does not
        run the relay is relayed at once by the one that does: the word
        comes over the pipe, not the minute's look at the queue.
        """
        messageId = unique("id") + "@client.example"
        with paused(self.pids[1]):
            queueId = send(self.server, [f"{unique('r')}@remote.example"], messageId)
        self.assertEqual(pidOfQueueId(queueId), self.pids[2])
        began = time.monotonic()
        waitUntil(lambda: any(messageIdOf(t.data) == messageId for t in self.sink.transactions()), TIMEOUT)
        self.assertLess(time.monotonic() - began, 10)
        self.assertNotIn("will find the message", self.server.output())

    def test_logAsOneProcess(self):
        """
        A worker's lines are in the parent's log as the one-process server
        writes them (the fail2ban filter reads them).
        """
        queueId = send(self.server, [f"{unique('l')}@localhost"], unique("id") + "@client.example")
        pattern = re.compile(
            r"^\S+ \[smtpmx\.server\.SMTPServerProtocol#info\] " + queueId + r": client=\[127\.0\.0\.1\] ", re.M
        )
        self.assertTrue(waitUntil(lambda: pattern.search(self.server.output()), TIMEOUT))

    def test_hangUpPassedOn(self):
        """
        C{SIGHUP} to the parent (C{systemctl reload}) reloads every worker;
        the parent lives on.
        """
        before = self.server.output().count("SIGHUP: reloading")
        os.kill(self.server.pid, signal.SIGHUP)
        waitUntil(lambda: self.server.output().count("SIGHUP: reloading") >= before + 2, TIMEOUT)
        self.assertIn("SIGHUP: passed on to 2 worker(s)", self.server.output())
        self.assertIsNone(self.server.process.poll())
        self.assertEqual(workerPids(self.server), self.pids)


class Load:
    """
    Eight clients sending one message a connection, every third one for a
    remote recipient, until told to stop; what got its 250 is recorded.

    @ivar accepted: C{(Message-ID, recipient)} of each message that got its
        250.
    @ivar failures: what went wrong for the others (cut-off connections).
    """

    def __init__(self, server: RunningServer, clients: int = 8) -> None:
        self.server = server
        self.accepted: list[tuple[str, str]] = []
        self.failures: list[str] = []
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.client, args=(n,)) for n in range(clients)]

    def client(self, number: int) -> None:
        """
        One client's messages, one a connection.
        """
        n = 0
        while not self.stopping.is_set():
            n += 1
            messageId = f"load-{number}-{n}@client.example"
            recipient = f"r{number}@remote.example" if n % 3 == 0 else f"u{number}@localhost"
            try:
                send(self.server, [recipient], messageId)
            except (OSError, smtplib.SMTPException, AssertionError) as e:
                with self.lock:
                    self.failures.append(repr(e))
                time.sleep(0.01)
                continue
            with self.lock:
                self.accepted.append((messageId, recipient))

    def __enter__(self) -> "Load":
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopping.set()
        for t in self.threads:
            t.join(TIMEOUT)

    def filed(self) -> dict[str, int]:
        """
        How many times each Message-ID was filed in the Maildirs of the
        local recipients.
        """
        filed: dict[str, int] = {}
        for user in {r.split("@")[0] for _, r in self.accepted if r.endswith("@localhost")}:
            for data in self.server.newMessages("localhost", user):
                messageId = messageIdOf(data)
                filed[messageId] = filed.get(messageId, 0) + 1
        return filed

    def check(self, case: SynchronousTestCase, sink: RunningSink) -> None:
        """
        Every message that got its 250 is there: filed exactly once, or
        relayed (at least once: a next hop may get a message twice when
        the relay is killed between its reply and the record of it); no
        message at all was filed twice.
        """
        case.assertGreater(len(self.accepted), 20, self.failures)
        filed = self.filed()
        local = [m for m, r in self.accepted if r.endswith("@localhost")]
        case.assertEqual([m for m in local if filed.get(m) != 1], [])
        case.assertEqual([m for m, count in filed.items() if count > 1], [])
        remote = {m for m, r in self.accepted if r.endswith("@remote.example")}

        def relayed() -> set:
            return {messageIdOf(t.data) for t in sink.transactions()}

        waitUntil(lambda: remote <= relayed(), 30)
        case.assertEqual(remote - relayed(), set())


class LoadTests(SynchronousTestCase):
    """
    Processes killed in the middle of a load.
    """

    def startServer(self) -> tuple[RunningServer, RunningSink]:
        """
        Two workers relaying to a sink that does not fsync.
        """
        directory = makeTemporaryDirectory(self.addCleanup)
        sink = RunningSink.start(self.addCleanup, directory, arguments=["--no-fsync"])
        server = RunningServer.start(
            self.addCleanup, ["--workers", "2", "--validator", "any", "--auth-checks", "none",
                              "--smarthost", f"{sink.host}:{sink.port}", "--retry-schedule", "1"],
        )
        return server, sink

    def test_killedWorkersLoseNothing(self):
        """
        While eight clients send, each worker is killed with C{SIGKILL} in
        turn (the relay worker second); the parent starts them again.
        Every message that got its 250 is there: filed exactly once, or
        relayed.
        """
        server, sink = self.startServer()
        pids = waitForWorkers(server)
        with Load(server) as load:
            time.sleep(1.5)
            os.kill(pids[2], signal.SIGKILL)
            time.sleep(1.5)
            os.kill(pids[1], signal.SIGKILL)
            time.sleep(2.5)
        log = server.output()
        self.assertIn(f"worker 2 (pid {pids[2]}) was killed by SIGKILL", log)
        self.assertIn(f"worker 1 (pid {pids[1]}) was killed by SIGKILL", log)
        self.assertTrue(waitUntil(lambda: len(STARTED.findall(server.output())) >= 4, TIMEOUT))
        load.check(self, sink)

    def test_killedParentLosesNothing(self):
        """
        The parent killed with C{SIGKILL} in the middle of a load: its
        workers stop, and once the server is started again every message
        that got its 250 is there.
        """
        server, sink = self.startServer()
        pids = waitForWorkers(server)
        with Load(server) as load:
            time.sleep(2)
            server.kill9()
            waitUntil(lambda: not any(alive(p) for p in pids.values()), TIMEOUT)
            self.assertEqual([p for p in pids.values() if alive(p)], [])
        server.launch()
        load.check(self, sink)


class LifeTests(SynchronousTestCase):
    """
    Starting, stopping and losing the parent.
    """

    def test_oneWorkerIsOneProcess(self):
        """
        C{--workers 1} is the server of old: one process, which takes the
        mail itself.
        """
        server = RunningServer.start(self.addCleanup, ["--workers", "1", "--validator", "any"])
        queueId = send(server, [f"{unique('u')}@localhost"], unique("id") + "@client.example")
        self.assertEqual(pidOfQueueId(queueId), server.pid)
        self.assertNotIn("worker 1 started", server.output())

    def test_jsonLog(self):
        """
        With C{--log-format json} every line, the parent's and the
        workers', is one JSON object; a worker's says which worker.
        """
        server = RunningServer.start(self.addCleanup, ["--workers", "2", "--validator", "any",
                                                       "--log-format", "json"])
        waitForWorkers(server)
        queueId = send(server, [f"{unique('u')}@localhost"], unique("id") + "@client.example")

        def transaction():
            lines = [json.loads(line) for line in server.output().splitlines()]
            return [line for line in lines if line.get("queue_id") == queueId and "result" in line]

        [line] = waitUntil(transaction, TIMEOUT)
        self.assertIn(line["worker"], (1, 2))
        self.assertEqual(line["client"], "127.0.0.1")
        [started] = [json.loads(x) for x in server.output().splitlines() if "worker 2 started" in x]
        self.assertNotIn("worker", started)

    def test_stopStopsAll(self):
        """
        C{SIGTERM} to the parent stops every worker, then the parent, in
        bounded time.
        """
        server = RunningServer.start(self.addCleanup, ["--workers", "2"])
        pids = waitForWorkers(server)
        began = time.monotonic()
        # As twistd does alone: it ends by the signal it was stopped with.
        self.assertEqual(server.stop(), -signal.SIGTERM)
        self.assertLess(time.monotonic() - began, 10)
        waitUntil(lambda: not any(alive(p) for p in pids.values()), TIMEOUT)
        self.assertEqual([p for p in pids.values() if alive(p)], [])
        self.assertNotIn("Traceback", server.log())

    def test_parentKilled(self):
        """
        Workers whose parent is killed with C{SIGKILL} stop by themselves.
        """
        server = RunningServer.start(self.addCleanup, ["--workers", "2"])
        pids = waitForWorkers(server)
        server.kill9()
        waitUntil(lambda: not any(alive(p) for p in pids.values()), TIMEOUT)
        self.assertEqual([p for p in pids.values() if alive(p)], [])


class MetricsTests(SynchronousTestCase):
    """
    C{--metrics} with workers: the parent serves their sums.
    """

    def test_summedOverWorkers(self):
        """
        One message through each worker counts two, and a worker killed
        keeps its counts in the sums but no longer any open connection.
        """
        server = startServer(self.addCleanup, "--workers", "2", "--validator", "any")
        pids = waitForWorkers(server)
        for index, pid in pids.items():
            with paused(*[p for i, p in pids.items() if i != index]):
                send(server, [f"{unique('m')}@localhost"], unique("id") + "@client.example")
        waitUntil(lambda: scrape(server)[("smtpmx_messages_total", (("result", "accepted"),))] == 2, TIMEOUT)
        samples = scrape(server)
        self.assertEqual(samples[("smtpmx_connections_total", ())], 2)
        self.assertEqual(samples[("smtpmx_healthy", ())], 1)
        os.kill(pids[2], signal.SIGKILL)
        waitUntil(lambda: len(STARTED.findall(server.output())) >= 3, TIMEOUT)
        after = scrape(server)
        self.assertEqual(after[("smtpmx_messages_total", (("result", "accepted"),))], 2)
        self.assertEqual(after[("smtpmx_connections_open", ())], 0)
        status, body, _ = get(server.metrics + "/healthz")
        self.assertEqual((status, body), (200, b"ok"))
