"""
Messages per second into a real private Dovecot (L{tests.dovecot}), two
ways in one run, with the real C{twistd -n smtpmx} (needs root and Debian's
dovecot-imapd and dovecot-lmtpd):

  - LMTP: C{--delivery example.org=lmtp:ENDPOINT} (the UNIX socket by
    default) with C{--validator lmtp}: each message is queued durably, then
    handed to Dovecot over LMTP (docs/relay.rst);
  - Maildir: smtpmx files the message itself under Dovecot's Maildir root
    (C{--maildir-mode 0660}, docs/storage.rst).

C clients (processes) send N messages in all, each to one of alice and
bob; for each way it prints the rate at which the clients got their
C{250}s and the rate until every message is readable by Dovecot over IMAP
(for LMTP: also the queue empty)::

    python bench/dovecot_bench.py [--messages 500] [--clients 10] [--size 2048] [--tcp] [--no-check]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import smtplib
import sys
import tempfile
import time
from contextlib import ExitStack

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests.dovecot import RunningDovecot, dovecotMissing  # noqa: E402
from tests.e2e import RunningServer, freePort  # noqa: E402

USERS = ("alice@example.org", "bob@example.org")


def makeMessage(n: int, size: int) -> bytes:
    """
    A message of about C{size} bytes, CRLF line endings.
    """
    head = (
        f"From: bench@remote.example\r\nTo: alice@example.org\r\n"
        f"Subject: bench {n}\r\nMessage-ID: <dcbench-{n}@remote.example>\r\n\r\n"
    ).encode()
    line = b"The quick brown fox jumps over the lazy dog, again and again. 0123456789\r\n"
    return head + line * max(1, (size - len(head)) // len(line))


def sendMany(args: tuple) -> int:
    """
    One client (a worker process): C{count} messages over one connection.

    @return: how many were accepted.
    """
    port, clientNumber, count, size, start = args
    while time.time() < start:
        time.sleep(0.001)
    with smtplib.SMTP("127.0.0.1", port, local_hostname="bench.example", timeout=120) as c:
        for i in range(count):
            c.sendmail("bench@remote.example", [USERS[(clientNumber + i) % len(USERS)]], makeMessage(i, size))
    return count


def imapCount(dovecot: RunningDovecot) -> int:
    """
    How many messages alice's and bob's INBOXes hold, by IMAP STATUS.
    """
    total = 0
    for address in USERS:
        session = dovecot.imap(address)
        try:
            _, data = session.status("INBOX", "(MESSAGES)")
            total += int(data[0].split(b"MESSAGES ")[1].rstrip(b")"))
        finally:
            session.logout()
    return total


def queueEmpty(server: RunningServer) -> bool:
    """
    Whether C{server}'s relay queue holds nothing (no C{env/} file).
    """
    try:
        return not [n for n in os.listdir(os.path.join(server.dir, "queue", "env")) if not n.startswith(".")]
    except FileNotFoundError:
        return True


def run(server: RunningServer, dovecot: RunningDovecot, messages: int, clients: int, size: int,
        lmtp: bool) -> tuple[float, float]:
    """
    Send C{messages} from C{clients} clients through C{server}.

    @return: messages per second until the last C{250}, and until all are
        readable over IMAP (and, for LMTP, the queue empty).
    """
    before = imapCount(dovecot)
    perClient = messages // clients
    with multiprocessing.Pool(clients) as pool:
        start = time.time() + 0.3
        accepted = sum(pool.map(sendMany, [(server.port, n, perClient, size, start) for n in range(clients)]))
        acceptedAt = time.time()
    deadline = time.time() + 300
    while imapCount(dovecot) < before + accepted or (lmtp and not queueEmpty(server)):
        if time.time() > deadline:
            raise SystemExit(f"not all {accepted} messages arrived: {imapCount(dovecot) - before}")
        time.sleep(0.02)
    readableAt = time.time()
    return accepted / (acceptedAt - start), accepted / (readableAt - start)


def main() -> None:
    """
    Parse the arguments, start Dovecot and two servers, run both ways,
    print the figures.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--messages", type=int, default=500)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--tcp", action="store_true", help="LMTP over loopback TCP, not the UNIX socket")
    parser.add_argument("--no-check", action="store_true",
                        help="accept alice and bob from an aliases file instead of asking Dovecot at RCPT")
    options = parser.parse_args()
    missing = dovecotMissing()
    if missing:
        raise SystemExit(f"cannot run: {missing}")
    with ExitStack() as stack:
        cleanup = stack.callback
        dovecot = RunningDovecot.start(cleanup)
        endpoint = dovecot.lmtpTCP if options.tcp else dovecot.lmtpUNIX
        common = ["--hostname", "mx.bench.test", "--domain", "example.org", "--dns-server", f"127.0.0.1:{freePort()}"]
        directory = tempfile.mkdtemp(prefix="smtpmx-bench-")
        cleanup(shutil.rmtree, directory, True)
        with open(os.path.join(directory, "aliases"), "w") as f:
            f.write("".join(f"{a}: {a}\n" for a in USERS))
        check = ["--validator", "aliases:aliases"] if options.no_check else ["--validator", "lmtp", "--validator", "any"]
        viaLmtp = RunningServer.start(cleanup, common + ["--delivery", f"example.org=lmtp:{endpoint}"] + check,
                                      directory=directory)
        intoMaildir = RunningServer.start(cleanup, common + [
            "--maildir-root", dovecot.maildirRoot, "--maildir-mode", "0660", "--validator", "any",
        ], maildirRoot=dovecot.maildirRoot)
        print(f"{options.messages} messages of ~{options.size} bytes from {options.clients} clients "
              f"to alice and bob of a private Dovecot")
        for label, server, lmtp in (("maildir", intoMaildir, False), (f"lmtp:{endpoint.split(':')[0]}", viaLmtp, True)):
            accepted, readable = run(server, dovecot, options.messages, options.clients, options.size, lmtp)
            print(f"  {label:10s} accepted {accepted:7.1f} msg/s   readable over IMAP {readable:7.1f} msg/s")


if __name__ == "__main__":
    main()
