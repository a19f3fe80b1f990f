"""
Soak: the real C{twistd -n smtpmx} under a long, mixed load, its memory
and descriptors watched.

Tens of concurrent clients (threads, smtplib) send thousands of messages,
several per connection, then reconnect; each connection is one of four
kinds, in turn:

  - C{local}: to a mailbox at C{localhost}, filed in its Maildir;
  - C{relayed}: to C{remote.example}, queued and handed to the recording
    sink of C{tests/sink.py} (C{python -m tests.sink} on 127.0.0.3);
  - C{refused}: from 127.0.0.2, outside the relay network, to
    C{remote.example}: C{554 5.7.1}, then C{RSET}, every time;
  - C{tls}: STARTTLS with a certificate made for the run, then local.

The load runs in rounds of equal size; after each round the server is let
drain its relay queue.  Every half second the server's resident set
(C{VmRSS}), its open descriptors (C{/proc/PID/fd}) and the length of its
relay queue are sampled.  At the end, once the relay's idle connections
are closed too (L{smtpmx.relay.pool.IDLE_TIMEOUT}), the figures are printed
and checked (L{problems}):

  - every message accepted was filed or relayed, exactly once, and every
    refused one was refused;
  - the resident set at the end of every round after the first is within
    L{RSS_SLACK_KB} (plus L{RSS_SLACK_RATIO} of it) of the resident set at
    the end of the first round, which holds the warm-up (imports, caches,
    pools) and the high-water mark of a round's relay backlog: the next
    hop is slower than the clients, so the queue grows during a round and
    what it held in memory is reused, not added to, by the next round;
  - the open descriptors at the end are within L{FD_SLACK} of those before
    the first message: no connection, file or pipe is left open;
  - the server logged no traceback.

Usage: C{python bench/soak.py [--messages 5000] [--clients 40]
[--rounds 5] [--per-connection 5] [--size 2048]}; the exit status is 1 if
a check fails.  C{tests/test_soak.py} runs a short version.
"""

from __future__ import annotations

import argparse
import os
import re
import smtplib
import ssl
import sys
import threading
import time
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Callable, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from smtpmx.relay.pool import IDLE_TIMEOUT  # noqa: E402
from tests import certs  # noqa: E402
from tests.e2e import RunningServer, makeTemporaryDirectory  # noqa: E402
from tests.helpers import waitUntil  # noqa: E402
from tests.sink import RunningSink  # noqa: E402

KINDS = ("local", "relayed", "refused", "tls")
SINK_HOST = "127.0.0.3"
REFUSED_SOURCE = "127.0.0.2"
# How much the resident set may grow after the first round: this many kB,
# plus this share of the reference.
RSS_SLACK_KB = 2048
RSS_SLACK_RATIO = 0.01
# How many more descriptors may be open at the end than at the start.
FD_SLACK = 2
SAMPLE_INTERVAL = 0.5
TIMEOUT = 60.0


@dataclass(frozen=True)
class Sample:
    """
    The server's figures at one moment.

    @ivar elapsed: seconds since the load began.
    @ivar done: messages finished by the clients so far.
    @ivar rss: the resident set, in kB.
    @ivar fds: open descriptors.
    @ivar queued: messages in the relay queue.
    """

    elapsed: float
    done: int
    rss: int
    fds: int
    queued: int = 0


@dataclass
class SoakResult:
    """
    What one soak run did and saw.

    @ivar counts: messages by outcome: C{local}, C{relayed}, C{tls}
        (accepted), C{refused} (refused as they should be), C{wrong}
        (anything else).
    @ivar start: the figures before the first message.
    @ivar rounds: the figures at the end of each round, once the relay
        queue was empty.
    @ivar end: the figures once everything settled.
    @ivar filed: messages found in the Maildirs.
    @ivar relayedOnce: relayed messages the sink got exactly once.
    @ivar relayedTwice: relayed messages the sink got more than once.
    """

    messages: int
    clients: int
    counts: Counter = field(default_factory=Counter)
    samples: list[Sample] = field(default_factory=list)
    start: Optional[Sample] = None
    rounds: list[Sample] = field(default_factory=list)
    end: Optional[Sample] = None
    elapsed: float = 0.0
    filed: int = 0
    relayedOnce: int = 0
    relayedTwice: int = 0
    queueLeft: int = 0
    tracebacks: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def rssBound(self) -> int:
        """
        The most the resident set may be at the end of a round after the
        first, in kB.
        """
        return int(self.rounds[0].rss * (1 + RSS_SLACK_RATIO)) + RSS_SLACK_KB


def figures(pid: int) -> tuple[int, int]:
    """
    The resident set (kB) and the number of open descriptors of C{pid}.
    """
    with open(f"/proc/{pid}/status") as f:
        rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


def makeMessage(messageId: str, size: int) -> bytes:
    """
    A message of about C{size} bytes with its Message-ID, CRLF line
    endings, a dot line in it.
    """
    head = (
        f"From: soak@client.example\r\nTo: soak@localhost\r\nSubject: soak\r\n"
        f"Message-ID: <{messageId}>\r\n\r\n.a line with a dot\r\n"
    ).encode()
    line = b"The quick brown fox jumps over the lazy dog, again and again. 0123456789\r\n"
    return head + line * max(1, (size - len(head)) // len(line))


class Load:
    """
    The clients: each thread opens connections one after the other, each
    connection of one kind, carrying a few messages.
    """

    def __init__(self, server: RunningServer, messages: int, clients: int, perConnection: int,
                 size: int, authority: str) -> None:
        """
        @param authority: the CA file a TLS client trusts.
        """
        self.server = server
        self.messages = messages
        self.clients = clients
        self.perConnection = perConnection
        self.size = size
        self.context = ssl.create_default_context(cafile=authority)
        self.lock = threading.Lock()
        self.next = 0
        self.limit = messages
        self.done = 0
        self.counts: Counter = Counter()
        self.relayedIds: set[str] = set()
        self.errors: list[str] = []

    def take(self) -> Optional[tuple[int, int]]:
        """
        The next connection's number and how many messages it carries, or
        L{None} when all are handed out.
        """
        with self.lock:
            if self.next >= self.limit:
                return None
            first = self.next
            count = min(self.perConnection, self.limit - first)
            self.next += count
            return first // self.perConnection, count

    def finished(self, kind: str, messageId: Optional[str] = None) -> None:
        """
        Count one message.
        """
        with self.lock:
            self.done += 1
            self.counts[kind] += 1
            if messageId is not None:
                self.relayedIds.add(messageId)

    def connection(self, number: int, count: int) -> None:
        """
        One connection of the kind its number says, C{count} messages.
        """
        kind = KINDS[number % len(KINDS)]
        source = (REFUSED_SOURCE, 0) if kind == "refused" else None
        with smtplib.SMTP(self.server.host, self.server.port, local_hostname="client.example",
                          timeout=TIMEOUT, source_address=source) as c:
            c.ehlo()
            if kind == "tls":
                code, _ = c.starttls(context=self.context)
                if code != 220:
                    raise AssertionError(f"STARTTLS: {code}")
                c.ehlo()
            for i in range(count):
                messageId = f"soak-{number}-{i}@client.example"
                if kind == "refused":
                    c.mail("soak@client.example")
                    code, text = c.rcpt(f"r{number}-{i}@remote.example")
                    c.rset()
                    self.finished("refused" if code == 554 else "wrong")
                    continue
                to = f"r{number}-{i}@remote.example" if kind == "relayed" else f"{kind}{number % 50}@localhost"
                c.sendmail("soak@client.example", [to], makeMessage(messageId, self.size))
                self.finished(kind, messageId if kind == "relayed" else None)

    def client(self) -> None:
        """
        One client thread: connections until there are no more messages.
        """
        while True:
            taken = self.take()
            if taken is None:
                return
            try:
                self.connection(*taken)
            except Exception as e:
                with self.lock:
                    self.errors.append(f"connection {taken[0]}: {e!r}")
                    self.done += taken[1]
                    self.counts["wrong"] += taken[1]

    def run(self, limit: int, sample: Callable[[], None]) -> None:
        """
        Run every client until C{limit} messages in all are done, calling
        C{sample} every L{SAMPLE_INTERVAL} seconds meanwhile.
        """
        self.limit = limit
        threads = [threading.Thread(target=self.client, daemon=True) for _ in range(self.clients)]
        for thread in threads:
            thread.start()
        while any(thread.is_alive() for thread in threads):
            sample()
            for thread in threads:
                thread.join(SAMPLE_INTERVAL / len(threads))
        sample()


def filedMessages(server: RunningServer) -> int:
    """
    How many messages are in the Maildirs under C{localhost}.
    """
    total = 0
    for parent, _, files in os.walk(os.path.join(server.dir, "Maildir", "localhost")):
        if os.path.basename(parent) == "new":
            total += len(files)
    return total


def queued(server: RunningServer) -> int:
    """
    How many messages are in the relay queue.
    """
    try:
        return len([n for n in os.listdir(os.path.join(server.dir, "queue", "env")) if not n.startswith(".")])
    except FileNotFoundError:
        return 0


def soak(messages: int = 5000, clients: int = 40, rounds: int = 5, perConnection: int = 5, size: int = 2048,
         cleanups: Optional[ExitStack] = None, report: Callable[[str], None] = lambda text: None) -> SoakResult:
    """
    Run the soak: start the sink and the server, load them round after
    round, letting them drain after each, and gather the figures.

    @param cleanups: where the processes' stops go; a fresh one, closed at
        the end, if L{None}.
    @param report: called with a line of text at each sample.
    """
    with ExitStack() as own:
        stack = cleanups if cleanups is not None else own
        directory = makeTemporaryDirectory(stack.callback, "smtpmx-soak-")
        authority = certs.makeAuthority(directory)
        certificate, key = certs.makeServerCertificate(authority, directory)
        sink = RunningSink.start(stack.callback, directory, SINK_HOST, arguments=("--no-fsync",))
        server = RunningServer.start(stack.callback, [
            "--hostname", "soak.test",
            "--validator", "any",
            "--relay-network", "127.0.0.1/32",
            "--route", f"remote.example={SINK_HOST}:{sink.port}",
            "--retry-schedule", "1",
            "--max-connections-per-ip", str(clients + 10),
            "--tls-certificate", certificate, "--tls-key", key,
        ])
        result = SoakResult(messages, clients)
        load = Load(server, messages, clients, perConnection, size, authority.path)
        began = time.monotonic()

        def sample() -> Sample:
            """
            Take, keep and report the server's figures now.
            """
            rss, fds = figures(server.pid)
            s = Sample(time.monotonic() - began, load.done, rss, fds, queued(server))
            result.samples.append(s)
            report(f"{s.elapsed:7.1f} s {s.done:7d} msgs {s.rss / 1024:8.1f} MB RSS {s.fds:5d} fds {s.queued:6d} queued")
            return s

        result.start = sample()
        for number in range(1, rounds + 1):
            load.run(messages * number // rounds, sample)
            relayed = load.counts["relayed"]
            waitUntil(lambda: queued(server) == 0 and len(sink.transactions()) >= relayed, TIMEOUT, 0.2)
            result.rounds.append(sample())
            report(f"round {number} done, the relay queue empty")
        result.elapsed = time.monotonic() - began
        result.counts = load.counts
        result.errors = load.errors
        # The relay keeps idle connections to the sink for a while.
        time.sleep(IDLE_TIMEOUT + 1)
        result.end = sample()
        result.filed = filedMessages(server)
        result.queueLeft = queued(server)
        seen = Counter(
            m.group(1) for t in sink.transactions()
            for m in [re.search(rb"Message-ID: <([^>]*)>", t.data or b"")] if m
        )
        result.relayedOnce = sum(1 for i in load.relayedIds if seen[i.encode()] == 1)
        result.relayedTwice = sum(1 for i in load.relayedIds if seen[i.encode()] > 1)
        result.tracebacks = server.log().count("Traceback")
        return result


def problems(result: SoakResult) -> list[str]:
    """
    What went wrong in a soak run, as sentences; empty when all is well.
    """
    found = list(result.errors)
    counts = result.counts
    if counts["wrong"]:
        found.append(f"{counts['wrong']} messages did not get the reply they should")
    if sum(counts.values()) != result.messages:
        found.append(f"{sum(counts.values())} messages finished of {result.messages}")
    if result.filed != counts["local"] + counts["tls"]:
        found.append(f"{counts['local'] + counts['tls']} local messages accepted, {result.filed} filed")
    if result.relayedOnce != counts["relayed"] or result.relayedTwice:
        found.append(
            f"{counts['relayed']} relayed messages accepted, {result.relayedOnce} reached the sink once, "
            f"{result.relayedTwice} more than once"
        )
    if result.queueLeft:
        found.append(f"{result.queueLeft} messages left in the queue")
    if result.tracebacks:
        found.append(f"the server logged {result.tracebacks} tracebacks")
    assert result.start is not None and result.end is not None
    moments = [(f"after round {n}", r) for n, r in enumerate(result.rounds[1:], 2)] + [("at the end", result.end)]
    for when, after in moments:
        if after.rss > result.rssBound:
            found.append(f"RSS grew from {result.rounds[0].rss} kB after round 1 to {after.rss} kB "
                         f"{when} (bound {result.rssBound} kB)")
    if result.end.fds > result.start.fds + FD_SLACK:
        found.append(f"{result.end.fds} descriptors open at the end, {result.start.fds} at the start")
    return found


def summary(result: SoakResult) -> str:
    """
    The figures of a run, for people.
    """
    assert result.start is not None and result.end is not None
    counts = result.counts
    peak = max(result.samples, key=lambda s: s.rss)
    mostFds = max(s.fds for s in result.samples)
    mostQueued = max(s.queued for s in result.samples)
    return "\n".join([
        f"messages: {result.messages} from {result.clients} clients in {len(result.rounds)} rounds, "
        f"{result.elapsed:.1f} s ({result.messages / result.elapsed:.0f}/s): local {counts['local']}, "
        f"tls {counts['tls']}, relayed {counts['relayed']}, refused {counts['refused']}, wrong {counts['wrong']}",
        f"stored: {result.filed} filed, {result.relayedOnce} relayed once, {result.relayedTwice} more than once, "
        f"{result.queueLeft} left queued (at most {mostQueued} queued at once)",
        f"RSS: {result.start.rss / 1024:.1f} MB at start; after each round "
        + ", ".join(f"{r.rss / 1024:.1f}" for r in result.rounds)
        + f" MB; {peak.rss / 1024:.1f} MB peak; {result.end.rss / 1024:.1f} MB at end "
        f"(bound after round 1: {result.rssBound / 1024:.1f} MB)",
        f"descriptors: {result.start.fds} at start, {mostFds} at most, {result.end.fds} at end "
        f"(bound {result.start.fds + FD_SLACK})",
    ])


def main(argv: Optional[list[str]] = None) -> int:
    """
    The command line.
    """
    parser = argparse.ArgumentParser(description="Soak the real server with a long mixed load.")
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--clients", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--per-connection", type=int, default=5)
    parser.add_argument("--size", type=int, default=2048, help="bytes per message, about")
    options = parser.parse_args(argv)
    result = soak(options.messages, options.clients, options.rounds, options.per_connection, options.size,
                  report=print)
    print(summary(result))
    found = problems(result)
    for problem in found:
        print("PROBLEM:", problem)
    print("flat and complete" if not found else "FAILED")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
