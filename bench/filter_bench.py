"""
The cost of the rspamd filter per message: in one run, start a private
rspamd (C{tests/rspamd.py}) and two real C{twistd -n smtpmx} servers, the
same but for C{--filter rspamd:URL}, whose test client (127.0.0.1) is
untrusted (C{--relay-network 192.0.2.0/24}) so that its mail is filtered;
send N messages from C concurrent clients (processes) to each, and print
both rates and the difference per message.

Usage: C{python bench/filter_bench.py [--messages 2000] [--clients 10]}.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from contextlib import ExitStack

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench import RECIPIENT_DOMAIN, sendMany  # noqa: E402
from tests import rspamd as harness  # noqa: E402
from tests.e2e import RunningServer  # noqa: E402

UNTRUSTED = ["--validator", "any", "--relay-network", "192.0.2.0/24"]


def run(server: RunningServer, label: str, clients: int, perClient: int, size: int) -> tuple[int, float]:
    """
    C{clients} concurrent clients each sending C{perClient} messages to
    their own mailbox C{LABEL-N@localhost}.

    @return: messages accepted and seconds taken.
    """
    with multiprocessing.Pool(clients) as pool:
        # Every worker waits for the same start time, once all exist.
        start = time.time() + 0.3
        results = pool.map(
            sendMany, [(server.port, f"{label}{n}", perClient, size, start) for n in range(clients)]
        )
        elapsed = time.time() - start
    return sum(results), elapsed


def filed(server: RunningServer, label: str, clients: int) -> tuple[int, int]:
    """
    How many of a run's messages are in INBOX and in the Junk folder.
    """
    inbox = junk = 0
    for n in range(clients):
        mailbox = server.maildir(RECIPIENT_DOMAIN, f"c{label}{n}")
        inbox += len(os.listdir(os.path.join(mailbox, "new")))
        junkDirectory = os.path.join(mailbox, ".Junk", "new")
        if os.path.isdir(junkDirectory):
            junk += len(os.listdir(junkDirectory))
    return inbox, junk


def main() -> None:
    """
    Run both servers and print the table.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=2000, help="messages per server")
    parser.add_argument("--clients", type=int, default=10, help="concurrent clients")
    parser.add_argument("--size", type=int, default=2048, help="message size in bytes")
    options = parser.parse_args()
    reason = harness.available()
    if reason:
        sys.exit(f"cannot measure: {reason}")
    perClient = max(1, options.messages // options.clients)

    rows = []
    with ExitStack() as cleanups:
        directory = tempfile.mkdtemp(prefix="rspamd")
        cleanups.callback(shutil.rmtree, directory, True)
        rspamd = harness.RunningRspamd(directory).start()
        cleanups.callback(rspamd.stop)
        plain = RunningServer.start(cleanups.callback, UNTRUSTED)
        filtered = RunningServer.start(
            cleanups.callback, UNTRUSTED + ["--filter", f"rspamd:{rspamd.url}"]
        )
        # Warm up both (imports, rspamd's first scan), not counted.
        run(plain, "warm", 2, 5, options.size)
        run(filtered, "warm", 2, 5, options.size)
        warm = filtered.log().count("filters=[rspamd accept]")
        for name, server in (("without filter", plain), ("--filter rspamd", filtered)):
            n, seconds = run(server, "run", options.clients, perClient, options.size)
            inbox, junk = filed(server, "run", options.clients)
            rows.append((name, n, seconds, inbox, junk))
            if "Traceback" in server.log():
                print(f"warning: the server {name} logged a traceback", file=sys.stderr)
        checked = filtered.log().count("filters=[rspamd accept]") - warm

    print(f"{'run':20} {'messages':>8} {'seconds':>8} {'msg/s':>8} {'INBOX':>6} {'Junk':>5}")
    for name, n, seconds, inbox, junk in rows:
        print(f"{name:20} {n:>8} {seconds:>8.2f} {n / seconds:>8.0f} {inbox:>6} {junk:>5}")
    (_, n0, s0, _, _), (_, n1, s1, _, _) = rows
    cost = (s1 / n1 - s0 / n0) * 1000
    print(f"rspamd verdicts logged (accept): {checked};"
          f" cost per message (1/rate with - 1/rate without): {cost:.2f} ms"
          f" ({os.cpu_count()} CPUs, {options.size}-byte messages, every message fsynced)")


if __name__ == "__main__":
    main()
