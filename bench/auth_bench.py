"""
What sender authentication costs per message: in one run, start the
loopback DNS zone of the tests (C{tests/authzone.py}: SPF, DKIM key and
DMARC records, with C{--ttl}, 300 s by default, as domains publish them)
and two real C{twistd -n smtpmx} servers, the
same but for C{--auth-checks}: one with every check (the default,
C{spf,dkim,dmarc,arc}, asking the zone), one with C{none}.  Both have
C{--relay-network 192.0.2.0/24}, so the 127.0.0.1 clients are untrusted.
C clients (processes) send N DKIM-signed messages (rsa-sha256, 2048-bit
key, signed once before the clocks start, the same ones to both) to
each; the script prints both rates, how many messages got the full set
of passing verdicts, and the cost per message.

Usage: C{python bench/auth_bench.py [--messages 2000] [--clients 10]}.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import smtplib
import sys
import time
from contextlib import ExitStack

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests.authzone import CLIENT_HELO, dkimSigned, startDNS  # noqa: E402
from tests.e2e import RunningServer  # noqa: E402

UNTRUSTED = ["--validator", "any", "--relay-network", "192.0.2.0/24", "--hostname", "mx.bench.test"]
RECIPIENT_DOMAIN = "localhost"
PASSED = "auth=[spf=pass dkim=pass dmarc=pass arc=none]"


def makeMessage(n: int, size: int) -> bytes:
    """
    A message of about C{size} bytes from C{example.test}, signed by it.
    """
    head = (
        f"From: bench@example.test\r\nTo: bench@{RECIPIENT_DOMAIN}\r\n"
        f"Subject: bench {n}\r\nMessage-ID: <bench-{n}@example.test>\r\n"
        "Date: Tue, 01 Dec 2026 10:00:00 +0000\r\n\r\n"
    ).encode()
    line = b"The quick brown fox jumps over the lazy dog, again and again. 0123456789\r\n"
    body = line * max(1, (size - len(head) - 600) // len(line))
    return dkimSigned(head + body, "example.test", "rsa")


def sendMany(args: tuple) -> int:
    """
    One client: wait for the common start, then send C{messages} over
    one connection, one transaction after the other, from
    C{bench@example.test} (whose SPF record authorizes 127.0.0.1) to
    C{LABEL@localhost}.  Runs in a worker process.

    @return: how many were accepted.
    """
    port, label, messages, start = args
    while time.time() < start:
        time.sleep(0.001)
    accepted = 0
    with smtplib.SMTP("127.0.0.1", port, local_hostname=CLIENT_HELO, timeout=60) as c:
        for data in messages:
            c.sendmail("bench@example.test", [f"{label}@{RECIPIENT_DOMAIN}"], data)
            accepted += 1
    return accepted


def run(server: RunningServer, label: str, clients: int, messages: list[bytes]) -> tuple[int, float]:
    """
    C{clients} concurrent clients each sending C{messages} to their own
    mailbox C{LABELN@localhost}.

    @return: messages accepted and seconds taken from the common start.
    """
    with multiprocessing.Pool(clients) as pool:
        # Every worker waits for the same start time, once all exist.
        start = time.time() + 0.5
        results = pool.map(
            sendMany, [(server.port, f"{label}{n}", messages, start) for n in range(clients)]
        )
        elapsed = time.time() - start
    return sum(results), elapsed


def main() -> None:
    """
    Run both servers and print the table.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=2000, help="messages per server")
    parser.add_argument("--clients", type=int, default=10, help="concurrent clients")
    parser.add_argument("--size", type=int, default=2048, help="message size in bytes")
    parser.add_argument("--ttl", type=int, default=300, help="TTL of the zone's records in seconds")
    options = parser.parse_args()
    perClient = max(1, options.messages // options.clients)

    messages = [makeMessage(n, options.size) for n in range(perClient)]
    rows = []
    with ExitStack() as cleanups:
        dns = startDNS(cleanups.callback, options.ttl)
        dnsServer = ["--dns-server", f"{dns.host}:{dns.port}"]
        unchecked = RunningServer.start(cleanups.callback, UNTRUSTED + dnsServer + ["--auth-checks", "none"])
        checked = RunningServer.start(cleanups.callback, UNTRUSTED + dnsServer)
        # Warm up both (imports, the first lookups), not counted.
        run(unchecked, "warm", 2, messages[:5])
        run(checked, "warm", 2, messages[:5])
        warm = checked.log().count(PASSED)
        for name, server in (("--auth-checks none", unchecked), ("every check (default)", checked)):
            n, seconds = run(server, "run", options.clients, messages)
            rows.append((name, n, seconds))
            if "Traceback" in server.log():
                print(f"warning: the server with {name} logged a traceback", file=sys.stderr)
        passed = checked.log().count(PASSED) - warm

    print(f"{'run':24} {'messages':>8} {'seconds':>8} {'msg/s':>8}")
    for name, n, seconds in rows:
        print(f"{name:24} {n:>8} {seconds:>8.2f} {n / seconds:>8.0f}")
    (_, n0, s0), (_, n1, s1) = rows
    cost = (s1 / n1 - s0 / n0) * 1000
    print(f"messages logged with {PASSED}: {passed} of {n1};"
          f" cost per message (1/rate with - 1/rate without): {cost:.2f} ms"
          f" ({os.cpu_count()} CPUs, {options.clients} clients, {options.size}-byte signed messages,"
          f" DNS TTL {options.ttl} s, every message fsynced)")


if __name__ == "__main__":
    main()
