"""
A benchmark of the relay: start the real C{twistd -n smtpmx} with
C{--route remote.example=} a next hop on loopback, send it N messages for
remote recipients from C clients (processes) at once, and measure the
time from the first message sent until the queue is empty, that is until
every message has been handed to the next hop and removed.

The next hop is Postfix's C{smtp-sink -c} when installed (its counters
give the sessions and messages it saw), else (or with C{--sink ours}) the
recording sink of C{tests/sink.py} (C{python -m tests.sink}), which counts
connections itself.

Prints the messages/second accepted, the messages/second relayed (end to
end, first message sent to queue empty), the relay drain time after the
last message was accepted, and how many connections the next hop saw.

With C{--queued} it measures a drain instead: the queue is filled while
the next hop is down, the server left to defer every message, then the
next hop started and C{smtpmx-queue flush} run; the drain is timed from
the moment the server takes the flush request until the queue is empty,
and the server's CPU time per message over it is read from C{/proc}.

Usage: C{python bench/relay_bench.py [--messages 1000] [--clients 10]
[--recipients 1] [--sink smtp-sink|ours] [--queued]}.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import smtplib
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests.e2e import RunningServer, freePort  # noqa: E402
from tests.postfix import SMTP_SINK, startSmtpSink  # noqa: E402
from tests.helpers import waitUntil  # noqa: E402
from tests.sink import RunningSink  # noqa: E402

SINK_HOST = "127.0.0.6"


def makeMessage(n: int, size: int) -> bytes:
    """
    A message of about C{size} bytes, CRLF line endings.
    """
    head = (
        f"From: bench@client.example\r\nTo: bench@remote.example\r\n"
        f"Subject: relay bench {n}\r\nMessage-ID: <relay-bench-{n}@client.example>\r\n\r\n"
    ).encode()
    line = b"The quick brown fox jumps over the lazy dog, again and again. 0123456789\r\n"
    return head + line * max(1, (size - len(head)) // len(line))


def sendMany(args: tuple) -> int:
    """
    One client: C{count} messages over one connection.  Runs in a worker
    process.

    @return: how many were accepted.
    """
    port, clientNumber, count, recipients, size, start = args
    while time.time() < start:
        time.sleep(0.001)
    accepted = 0
    with smtplib.SMTP("127.0.0.1", port, local_hostname="bench.example", timeout=120) as c:
        for i in range(count):
            n = clientNumber * count + i
            to = [f"user{n}-{r}@remote.example" for r in range(recipients)]
            refused = c.sendmail("bench@client.example", to, makeMessage(n, size))
            if not refused:
                accepted += 1
    return accepted


def queueLength(server: RunningServer) -> int:
    """
    How many messages are in the server's queue.
    """
    try:
        return len(os.listdir(os.path.join(server.dir, "queue", "env")))
    except FileNotFoundError:
        return 0


def main() -> None:
    """
    Run the benchmark and print the results.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--recipients", type=int, default=1, help="remote recipients per message")
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--sink", choices=["smtp-sink", "ours"], default="smtp-sink")
    parser.add_argument("--timeout", type=float, default=600, help="give up draining after this")
    parser.add_argument(
        "--queued", action="store_true",
        help="fill the queue while the next hop is down, then start it, flush and time the drain",
    )
    options = parser.parse_args()
    if options.queued:
        return queued(options)
    useSmtpSink = options.sink == "smtp-sink" and os.path.exists(SMTP_SINK)

    with ExitStack() as stack:
        addCleanup = stack.callback
        directory = tempfile.mkdtemp(prefix="smtpmx-relay-bench-")
        addCleanup(shutil.rmtree, directory, True)
        if useSmtpSink:
            sink = startSmtpSink(addCleanup, directory, SINK_HOST, freePort(SINK_HOST))
        else:
            sink = RunningSink.start(addCleanup, directory, SINK_HOST)
        server = RunningServer.start(
            addCleanup,
            [
                "--validator", "any",
                "--hostname", "mx.bench.example",
                "--route", f"remote.example={SINK_HOST}:{sink.port}",
                "--retry-schedule", "1",
                "--max-recipients", str(max(100, options.recipients)),
                "--max-connections-per-ip", str(max(20, options.clients + 5)),
            ],
        )
        perClient = options.messages // options.clients
        total = perClient * options.clients
        start = time.time() + 0.5
        with multiprocessing.Pool(options.clients) as pool:
            jobs = [(server.port, i, perClient, options.recipients, options.size, start) for i in range(options.clients)]
            accepted = sum(pool.map(sendMany, jobs))
        acceptedAt = time.time()
        waitUntil(lambda: not queueLength(server), options.timeout, interval=0.01)
        drainedAt = time.time()
        left = queueLength(server)
        # Sessions are counted when they end: let cached connections close.
        time.sleep(6.5)
        if useSmtpSink:
            connections, delivered = sink.counters()
            nextHop = "Postfix smtp-sink"
        else:
            connections, delivered = sink.connections(), len(sink.transactions())
            nextHop = "tests/sink.py"
        tracebacks = server.log().count("Traceback")
        print(f"next hop:                  {nextHop} on {SINK_HOST}:{sink.port}")
        print(f"messages sent:             {total} ({options.clients} clients x {perClient},"
              f" {options.recipients} recipient(s) each, ~{options.size} bytes)")
        print(f"accepted (250):            {accepted}")
        print(f"accept rate:               {accepted / (acceptedAt - start):.0f} msg/s"
              f" ({acceptedAt - start:.2f} s)")
        print(f"relayed, end to end:       {accepted / (drainedAt - start):.0f} msg/s"
              f" (first sent to queue empty: {drainedAt - start:.2f} s)")
        print(f"drain after last accepted: {drainedAt - acceptedAt:.2f} s")
        print(f"left in queue:             {left}")
        print(f"next hop saw:              {delivered} messages over {connections} connections")
        print(f"tracebacks in server log:  {tracebacks}")


def serverCpu(pid: int) -> float:
    """
    The CPU time (user and system) a process has used so far, in seconds,
    from C{/proc}.
    """
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def allAttempted(queueDirectory: str) -> bool:
    """
    Whether every message in the queue has had its first attempt recorded:
    the server is done with the queue until a flush.
    """
    envelopes = os.path.join(queueDirectory, "env")
    for name in os.listdir(envelopes):
        try:
            with open(os.path.join(envelopes, name), "rb") as f:
                if any(r["attempts"] < 1 for r in json.load(f)["recipients"]):
                    return False
        except FileNotFoundError:
            continue
        except ValueError:
            return False
    return True


def waitForLine(log, text: str, timeout: float) -> bool:
    """
    Read an open log file on until a line holding C{text} appears.

    @return: whether it appeared within C{timeout} seconds.
    """
    deadline = time.monotonic() + timeout
    seen = ""
    while time.monotonic() < deadline:
        seen = seen[-len(text):] + log.read()
        if text in seen:
            return True
        time.sleep(0.002)
    return False


def queued(options) -> None:
    """
    Relay from a full queue: accept every message while Postfix's
    C{smtp-sink} is down and wait until the server has deferred them all,
    then start it, C{smtpmx-queue flush}, and time the drain from the
    moment the server takes the flush request (its next poll) until the
    queue is empty.  The flush command itself (which rewrites every
    message's state) and the wait for the poll are timed apart.
    """
    with ExitStack() as stack:
        addCleanup = stack.callback
        directory = tempfile.mkdtemp(prefix="smtpmx-relay-bench-")
        addCleanup(shutil.rmtree, directory, True)
        port = freePort(SINK_HOST)
        server = RunningServer.start(
            addCleanup,
            [
                "--validator", "any",
                "--hostname", "mx.bench.example",
                "--route", f"remote.example={SINK_HOST}:{port}",
                "--retry-schedule", "3600",
                "--max-recipients", str(max(100, options.recipients)),
                "--max-connections-per-ip", str(max(20, options.clients + 5)),
            ],
        )
        queueDirectory = os.path.join(server.dir, "queue")
        perClient = options.messages // options.clients
        start = time.time() + 0.5
        with multiprocessing.Pool(options.clients) as pool:
            jobs = [(server.port, i, perClient, options.recipients, options.size, start) for i in range(options.clients)]
            accepted = sum(pool.map(sendMany, jobs))
        acceptedAt = time.time()
        if not waitUntil(lambda: allAttempted(queueDirectory), options.timeout, interval=0.1):
            raise SystemExit("the server did not defer every message in time")
        deferredIn = time.time() - acceptedAt
        waiting = queueLength(server)
        sink = startSmtpSink(addCleanup, directory, SINK_HOST, port)
        with open(server.logPaths()[0]) as log:
            log.seek(0, os.SEEK_END)
            flushedAt = time.time()
            subprocess.run(
                [sys.executable, "-c", "from smtpmx.queuecli import main; raise SystemExit(main())",
                 "--queue-dir", queueDirectory, "flush"],
                check=True, env=dict(os.environ, PYTHONPATH=ROOT), stdout=subprocess.DEVNULL,
            )
            flushDone = time.time()
            if not waitForLine(log, "relay queue flush requested", 30):
                raise SystemExit("the server did not take the flush request")
        takenAt = time.time()
        cpuBefore = serverCpu(server.pid)
        waitUntil(lambda: not queueLength(server), options.timeout, interval=0.005)
        emptyAt = time.time()
        cpu = serverCpu(server.pid) - cpuBefore
        drained = emptyAt - takenAt
        # smtp-sink counts a session when it ends: let the relay's idle
        # cached connections time out (5 s) and close first.
        time.sleep(6.5)
        connections, delivered = sink.counters()
        print(f"accepted into the queue:   {accepted} (queue held {waiting} while the next hop was down;"
              f" all deferred {deferredIn:.2f} s after the last was accepted)")
        print(f"flush command:             {flushDone - flushedAt:.2f} s (rewrites every message's state);"
              f" taken by the server {takenAt - flushDone:.2f} s later")
        print(f"drained after flush:       {drained:.2f} s, {waiting / drained:.0f} msg/s")
        print(f"flush command to empty:    {emptyAt - flushedAt:.2f} s, {waiting / (emptyAt - flushedAt):.0f} msg/s")
        print(f"server CPU while draining: {1000 * cpu / max(waiting, 1):.2f} ms/msg")
        print(f"left in queue:             {queueLength(server)}")
        print(f"smtp-sink saw:             {delivered} messages over {connections} connections")
        print(f"tracebacks in server log:  {server.log().count('Traceback')}")


if __name__ == "__main__":
    main()
