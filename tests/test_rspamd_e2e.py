"""
End-to-end tests of the built-in C{rspamd[:URL]} filter
(C{docs/plugins.rst}): the real C{twistd -n smtpmx --filter rspamd:URL}
asking a REAL private rspamd (L{tests.rspamd}), talked to over loopback
with smtplib.

The shared server trusts C{192.0.2.0/24} and C{127.0.0.2} only
(C{--relay-network}), so a client connecting from 127.0.0.1 is untrusted
and filtered, and one bound to 127.0.0.2 is trusted and not filtered.
rspamd's test patterns give its actions: GTUBE C{reject}, its C{Y}
variant C{add header}.
"""

from __future__ import annotations

import os
import shutil
import smtplib
import socket
import tempfile
import threading
import time
import unittest
from typing import Optional

import pytest
from twisted.trial.unittest import SynchronousTestCase

from tests import rspamd as harness
from tests.e2e import RunningServer, SharedProcessesTestCase, freePort, headerBlock
from tests.helpers import message, unique

# Every blocking operation of a client is bounded by this.
TIMEOUT = 15
# Sender authentication is off: these tests are about rspamd, and must
# not depend on the DNS of the host they run on.
UNTRUSTED = ["--relay-network", "192.0.2.0/24", "--validator", "any", "--auth-checks", "none"]
# The source address of a trusted client of the shared server.
TRUSTED_SOURCE = "127.0.0.2"
DATE = b"Date: Tue, 01 Dec 2026 10:00:00 +0000\r\n"


def send(
    server: RunningServer, data: bytes, to: str, source: Optional[str] = None
) -> tuple[int, str]:
    """
    Send C{data} to C{to} with smtplib, from C{source} (an address on
    loopback) if given.

    @return: the (code, text) of the reply to the end of data.
    """
    sourceAddress = (source, 0) if source else None
    with smtplib.SMTP(server.host, server.port, local_hostname="client.example",
                      timeout=TIMEOUT, source_address=sourceAddress) as c:
        c.ehlo()
        c.mail("sender@remote.example")
        c.rcpt(to)
        code, text = c.data(data)
        return code, text.decode("utf-8", "replace")


def spamMessage(pattern: bytes, token: str) -> bytes:
    """
    A message, as a client sends it, whose body is one of rspamd's test
    patterns.
    """
    return message(token, body=pattern + b"\r\n", extra=DATE)


def filesUnder(directory: str) -> list[str]:
    """
    Every file below C{directory} (none if it does not exist).
    """
    return [os.path.join(parent, name)
            for parent, _, names in os.walk(directory) for name in names]


def junkMessages(server: RunningServer, domain: str, user: str) -> list[bytes]:
    """
    The messages in C{user@domain}'s Maildir++ C{.Junk/new/}.
    """
    directory = os.path.join(server.maildir(domain, user), ".Junk", "new")
    found = []
    for path in sorted(filesUnder(directory)):
        with open(path, "rb") as f:
            found.append(f.read())
    return found


class RspamdServerTests(SharedProcessesTestCase):
    """
    One private rspamd and one server asking it, for the whole class.
    """

    @classmethod
    def startProcesses(cls, addCleanup) -> None:
        """
        Start rspamd, then the server filtering through it; skip, visibly,
        where rspamd is not installed.
        """
        reason = harness.available()
        if reason:
            raise unittest.SkipTest(reason)
        directory = tempfile.mkdtemp(prefix="rspamd")
        addCleanup(shutil.rmtree, directory, True)
        cls.rspamd = harness.RunningRspamd(directory).start()
        addCleanup(cls.rspamd.stop)
        cls.server = RunningServer.start(addCleanup, UNTRUSTED + [
            "--relay-network", f"{TRUSTED_SOURCE}/32",
            "--filter", f"rspamd:{cls.rspamd.url}", "--filter-failure", "tempfail",
        ])

    @pytest.mark.rfc("5321", "4.1.1.4", "5321-4.1.1.4-3")
    def test_gtubeRefused(self):
        """
        GTUBE, which rspamd rejects, is refused at the end of data with
        C{550 5.7.1}: nothing is stored, neither in INBOX nor in the Junk
        folder nor in the relay queue, and the log line says why.
        """
        user = unique("gtube-")
        code, text = send(self.server, spamMessage(harness.GTUBE, user), f"{user}@localhost")
        self.assertEqual(code, 550, text)
        self.assertTrue(text.startswith("5.7.1 "), text)
        maildir = self.server.maildir("localhost", user)
        self.assertEqual(filesUnder(os.path.join(maildir, "new")), [])
        self.assertEqual(filesUnder(os.path.join(maildir, ".Junk", "new")), [])
        self.assertEqual(filesUnder(os.path.join(self.server.dir, "queue")), [])
        self.assertIn("filters=[rspamd 550 5.7.1] result=550", self.server.transactionLine(user))

    def test_addHeaderJunk(self):
        """
        A message rspamd marks C{add header} is delivered to the Junk
        folder (C{.Junk/new/}) with C{X-Spam: Yes} and rspamd's action and
        score; INBOX gets nothing.
        """
        user = unique("junk-")
        code, text = send(self.server, spamMessage(harness.GTUBE_ADD_HEADER, user),
                          f"{user}@localhost")
        self.assertEqual(code, 250, text)
        [stored] = junkMessages(self.server, "localhost", user)
        block = headerBlock(stored)
        self.assertIn(b"\nX-Spam: Yes\n", block)
        self.assertIn(b"\nX-Spam-Action: add header\n", block)
        self.assertRegex(block, rb"\nX-Spam-Score: \d+\.\d\d\n")
        self.assertLess(block.index(b"Received:"), block.index(b"X-Spam:"))
        self.assertEqual(self.server.newMessages("localhost", user), [])
        self.assertIn("filters=[rspamd junk]", self.server.transactionLine(user))

    def test_hamInbox(self):
        """
        Ham (rspamd: C{no action}) lands in INBOX (C{new/}) with
        C{X-Spam-Action: no action} and its score, and no C{X-Spam: Yes}.
        """
        user = unique("ham-")
        data = message(user, body=b"Shall we have lunch on Friday?\r\n", extra=DATE)
        code, text = send(self.server, data, f"{user}@localhost")
        self.assertEqual(code, 250, text)
        [stored] = self.server.newMessages("localhost", user)
        block = headerBlock(stored)
        self.assertIn(b"\nX-Spam-Action: no action\n", block)
        self.assertRegex(block, rb"\nX-Spam-Score: -?\d+\.\d\d\n")
        self.assertNotIn(b"X-Spam: ", block)
        self.assertEqual(junkMessages(self.server, "localhost", user), [])
        self.assertIn("filters=[rspamd accept]", self.server.transactionLine(user))

    def test_trustedNotFiltered(self):
        """
        A trusted client (inside C{--relay-network}) is not filtered: even
        GTUBE is delivered to INBOX, without any X-Spam field.
        """
        user = unique("trusted-")
        code, text = send(self.server, spamMessage(harness.GTUBE, user), f"{user}@localhost",
                          source=TRUSTED_SOURCE)
        self.assertEqual(code, 250, text)
        [stored] = self.server.newMessages("localhost", user)
        self.assertNotIn(b"X-Spam", headerBlock(stored))
        self.assertIn(harness.GTUBE, stored)
        self.assertNotIn("filters=", self.server.transactionLine(user))


class SilentServer:
    """
    An rspamd stand-in on loopback that accepts TCP connections and never
    answers, run in a thread of the test; L{stop} closes it all.

    @ivar port: its port on 127.0.0.1.
    @ivar accepted: how many connections it accepted.
    """

    def __init__(self) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.accepted = 0
        self.connections: list[socket.socket] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        """
        Accept connections, and hold them open without reading or writing.
        """
        while not self.stopping.is_set():
            try:
                connection, _ = self.listener.accept()
            except (socket.timeout, OSError):
                continue
            self.accepted += 1
            self.connections.append(connection)

    def stop(self) -> None:
        """
        Stop accepting and close every connection (bounded).
        """
        self.stopping.set()
        self.thread.join(5)
        for connection in self.connections:
            connection.close()
        self.listener.close()


class RspamdFailureTests(SynchronousTestCase):
    """
    rspamd down or silent: C{--filter-failure} decides, within
    C{--filter-timeout}.  Each test starts its own server.
    """

    def server(self, url: str, *args: str) -> RunningServer:
        """
        A server filtering the untrusted test client through rspamd at
        C{url}.
        """
        return RunningServer.start(
            self.addCleanup, UNTRUSTED + ["--filter", f"rspamd:{url}"] + list(args)
        )

    def test_downAccept(self):
        """
        With rspamd down and C{--filter-failure accept}, the message is
        delivered to INBOX, without X-Spam fields, and the failure is
        logged.
        """
        server = self.server(f"http://127.0.0.1:{freePort()}", "--filter-failure", "accept")
        user = unique("down-")
        code, text = send(server, message(user), f"{user}@localhost")
        self.assertEqual(code, 250, text)
        [stored] = server.newMessages("localhost", user)
        self.assertNotIn(b"X-Spam", headerBlock(stored))
        self.assertIn("filters=[rspamd failed] result=250", server.transactionLine(user))
        self.assertIn("filter 'rspamd' failed", server.log())
        self.assertIn("ConnectionRefusedError", server.log())

    @pytest.mark.rfc("5321", "4.1.1.4", "5321-4.1.1.4-3")
    def test_downTempfail(self):
        """
        With rspamd down and C{--filter-failure tempfail}, the end of data
        is answered C{451 4.7.1} and nothing is stored.
        """
        server = self.server(f"http://127.0.0.1:{freePort()}", "--filter-failure", "tempfail")
        before = server.tree()
        user = unique("down-")
        code, text = send(server, message(user), f"{user}@localhost")
        self.assertEqual(code, 451, text)
        self.assertTrue(text.startswith("4.7.1 "), text)
        self.assertEqual(server.tree() - before, set())

    def silent(self, failure: str) -> tuple:
        """
        Send a message through a server whose rspamd never answers, with
        C{--filter-timeout 2} and C{--filter-failure failure}.

        @return: the server, the stand-in, the recipient's local part, the
            seconds the reply to the data took, and that reply's code and
            text.
        """
        silent = SilentServer()
        self.addCleanup(silent.stop)
        server = self.server(f"http://127.0.0.1:{silent.port}",
                             "--filter-timeout", "2", "--filter-failure", failure)
        user = unique("silent-")
        started = time.monotonic()
        code, text = send(server, message(user), f"{user}@localhost")
        elapsed = time.monotonic() - started
        self.assertGreaterEqual(silent.accepted, 1)
        return server, silent, user, elapsed, code, text

    def test_silentTempfail(self):
        """
        An rspamd that takes the connection and never answers is given up
        after C{--filter-timeout} (2 s): the reply, C{451 4.7.1}, comes
        within the timeout and a little, and the timeout is logged.
        """
        server, silent, user, elapsed, code, text = self.silent("tempfail")
        self.assertEqual(code, 451, text)
        self.assertTrue(text.startswith("4.7.1 "), text)
        self.assertGreaterEqual(elapsed, 1.9)
        self.assertLess(elapsed, 4.0)
        self.assertIn("filter 'rspamd' gave no verdict within 2", server.log())
        self.assertEqual(server.newMessages("localhost", user), [])

    def test_silentAccept(self):
        """
        Under C{--filter-failure accept}, the same silent rspamd delays the
        message by the timeout only: it is delivered, without X-Spam
        fields.
        """
        server, silent, user, elapsed, code, text = self.silent("accept")
        self.assertEqual(code, 250, text)
        self.assertLess(elapsed, 4.0)
        [stored] = server.newMessages("localhost", user)
        self.assertNotIn(b"X-Spam", headerBlock(stored))
