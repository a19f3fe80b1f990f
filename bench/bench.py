"""
A small benchmark of the real server: start C{twistd -n smtpmx --validator
any} in a temporary directory and measure

  - messages per second from one client, one connection, sequential
    transactions (no RSET between them), ~2 KB messages;
  - messages per second from 10 concurrent clients (processes, so that the
    clients' GIL is not what is measured);
  - Postfix's C{smtp-source} (C{-s 10 -l 2048 -m 2000}), when installed;
  - the server's peak RSS (VmHWM) while it receives one 30 MB message;
  - for each run, the server's CPU time per message (user and system, all
    its threads, from /proc).

With C{--workers N} the server runs N workers (C{--workers}); the CPU
time is then summed over its processes and the peak RSS is the largest
of them.

Usage: C{python bench/bench.py [--messages N] [--clients C] [--workers N]}.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import smtplib
import subprocess
import sys
import time
from contextlib import ExitStack

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests import proctree  # noqa: E402
from tests.e2e import RunningServer  # noqa: E402
from tests.helpers import waitUntil  # noqa: E402

SMTP_SOURCE = "/usr/sbin/smtp-source"
RECIPIENT_DOMAIN = "localhost"


def makeMessage(n: int, size: int) -> bytes:
    """
    A message of about C{size} bytes, CRLF line endings.
    """
    head = (
        f"From: bench@remote.example\r\nTo: bench@localhost\r\n"
        f"Subject: bench {n}\r\nMessage-ID: <bench-{n}@remote.example>\r\n\r\n"
    ).encode()
    line = b"The quick brown fox jumps over the lazy dog, again and again. 0123456789\r\n"
    body = line * max(1, (size - len(head)) // len(line))
    return head + body


def sendMany(args: tuple) -> int:
    """
    One client: C{count} messages over one connection, one transaction
    after the other.  Runs in a worker process.

    @return: how many were accepted.
    """
    port, clientNumber, count, size, start = args
    while time.time() < start:
        time.sleep(0.001)
    accepted = 0
    with smtplib.SMTP("127.0.0.1", port, local_hostname="bench.example", timeout=60) as c:
        for i in range(count):
            c.sendmail(
                "bench@remote.example",
                [f"c{clientNumber}@{RECIPIENT_DOMAIN}"],
                makeMessage(i, size),
            )
            accepted += 1
    return accepted


def clientsRun(server: RunningServer, clients: int, perClient: int, size: int) -> tuple[int, float]:
    """
    C{clients} concurrent clients, each sending C{perClient} messages.

    @return: messages accepted and seconds taken.
    """
    with multiprocessing.Pool(clients) as pool:
        # Every worker waits for the same start time, once all exist.
        start = time.time() + 0.3
        results = pool.map(
            sendMany, [(server.port, n + 1000 * clients, perClient, size, start) for n in range(clients)]
        )
        elapsed = time.time() - start
    filed = sum(
        len(server.newMessages(RECIPIENT_DOMAIN, f"c{n + 1000 * clients}")) for n in range(clients)
    )
    if filed != sum(results):
        print(f"warning: {sum(results)} accepted but {filed} filed", file=sys.stderr)
    return sum(results), elapsed


def smtpSourceRun(server: RunningServer, messages: int, sessions: int, size: int) -> tuple[int, float]:
    """
    Postfix's smtp-source against the server.

    @return: messages filed and seconds taken.
    """
    user = "smtpsource"
    before = len(server.newMessages(RECIPIENT_DOMAIN, user))
    began = time.monotonic()
    subprocess.run(
        [
            SMTP_SOURCE, "-c", "-l", str(size), "-m", str(messages), "-s", str(sessions),
            "-f", "bench@remote.example", "-t", f"{user}@{RECIPIENT_DOMAIN}",
            f"127.0.0.1:{server.port}",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
        timeout=600,
    )
    elapsed = time.monotonic() - began
    return len(server.newMessages(RECIPIENT_DOMAIN, user)) - before, elapsed


def cpuSeconds(pid: int) -> float:
    """
    The CPU time (user and system, every thread) process C{pid} and the
    processes below it (the workers of C{--workers}) have used.
    """
    return proctree.cpuSeconds(proctree.descendants(pid))


def peakRss(pid: int) -> int:
    """
    The peak resident set size of C{pid} in kB (VmHWM).
    """
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise RuntimeError("no VmHWM")


def serverPeakRss(server: RunningServer) -> int:
    """
    The largest peak resident set size among the server's processes, in kB.
    """
    return max(peakRss(pid) for pid in proctree.descendants(server.pid))


def startServer(cleanups: ExitStack, args: list[str], workers: int) -> RunningServer:
    """
    The server with C{args} and C{--workers}, once every worker accepts.
    """
    server = RunningServer.start(cleanups.callback, [*args, "--workers", str(workers)])
    if workers > 1:
        # Every worker, not only the relay worker that says the server is up.
        waitUntil(lambda: server.output().count("accepting on") >= workers, 30)
    return server


def bigMessageRss(cleanups: ExitStack, megabytes: int, workers: int = 1) -> tuple[int, int, float]:
    """
    A fresh server receives one message of C{megabytes} MB.

    @return: peak RSS in kB before and after, and seconds taken.
    """
    server = startServer(
        cleanups, ["--validator", "any", "--max-message-size", str((megabytes + 10) * 1024 * 1024)], workers
    )
    # Let start-up settle, then one small message so that lazily imported
    # code is counted in the baseline.
    with smtplib.SMTP("127.0.0.1", server.port, local_hostname="bench.example", timeout=60) as c:
        c.sendmail("bench@remote.example", ["big@localhost"], makeMessage(0, 2048))
    before = serverPeakRss(server)
    line = b"x" * 76 + b"\r\n"
    body = line * (megabytes * 1024 * 1024 // len(line))
    message = b"Subject: big\r\n\r\n" + body
    began = time.monotonic()
    with smtplib.SMTP("127.0.0.1", server.port, local_hostname="bench.example", timeout=120) as c:
        c.sendmail("bench@remote.example", ["big@localhost"], message)
    elapsed = time.monotonic() - began
    after = serverPeakRss(server)
    assert len(server.newMessages("localhost", "big")) == 2
    return before, after, elapsed


def main() -> None:
    """
    Run every measurement and print the table.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=1000, help="messages for the 1-client run")
    parser.add_argument("--clients", type=int, default=10, help="concurrent clients")
    parser.add_argument("--per-client", type=int, default=200, help="messages per concurrent client")
    parser.add_argument("--size", type=int, default=2048, help="message size in bytes")
    parser.add_argument("--big", type=int, default=30, help="size of the big message in MB")
    parser.add_argument("--workers", type=int, default=1, help="the server's --workers")
    options = parser.parse_args()
    loadBefore = os.getloadavg()[0]

    rows = []
    with ExitStack() as cleanups:
        server = startServer(cleanups, ["--validator", "any"], options.workers)

        def measured(name: str, run) -> None:
            # The server's CPU per message: its processes' user and system
            # time over the run, from /proc.
            before = cpuSeconds(server.pid)
            n, seconds = run()
            perMessage = (cpuSeconds(server.pid) - before) * 1000 / max(n, 1)
            rows.append((name, n, seconds, f"{n / seconds:.0f} msg/s, server CPU {perMessage:.2f} ms/msg"))

        measured("smtplib, 1 client", lambda: clientsRun(server, 1, options.messages, options.size))
        measured(
            f"smtplib, {options.clients} clients",
            lambda: clientsRun(server, options.clients, options.per_client, options.size),
        )
        if os.path.exists(SMTP_SOURCE):
            measured("smtp-source -s 10 -m 2000", lambda: smtpSourceRun(server, 2000, 10, options.size))
        else:
            rows.append(("smtp-source", 0, 0.0, "not installed"))
        if "Traceback" in server.log():
            print("warning: the server logged a traceback", file=sys.stderr)

        before, after, seconds = bigMessageRss(cleanups, options.big, options.workers)
        rows.append(
            (f"one {options.big} MB message", 1, seconds, f"VmHWM {before // 1024} MB -> {after // 1024} MB")
        )

    print(f"{'run':32} {'messages':>8} {'seconds':>8}  result")
    for name, n, seconds, result in rows:
        print(f"{name:32} {n:>8} {seconds:>8.2f}  {result}")
    print(f"({os.cpu_count()} CPUs, --workers {options.workers}, message size {options.size} bytes,"
          f" every message fsynced; load average {loadBefore:.2f} before, {os.getloadavg()[0]:.2f} after)")


if __name__ == "__main__":
    main()
