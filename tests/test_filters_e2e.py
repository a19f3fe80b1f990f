"""
End-to-end tests of the message filter plugin point (C{docs/plugins.rst}):
the real C{twistd -n smtpmx} with third-party filter plugins dropped into
an C{smtpmx/plugins/} directory on C{PYTHONPATH} (L{tests.examplefilter}),
talked to over loopback with smtplib.

The client at 127.0.0.1 is made untrusted with C{--relay-network
192.0.2.0/24}, so that its mail is filtered; the default relay networks
make it trusted.
"""

from __future__ import annotations

import os
import smtplib
import time

import pytest
from twisted.trial.unittest import SynchronousTestCase

from tests.e2e import RunningServer, headerBlock, makeTemporaryDirectory, runToExit
from tests.examplefilter import writeExampleFilters
from tests.helpers import message, unique

# Every blocking operation of a client is bounded by this.
TIMEOUT = 15
# Sender authentication is off: these tests are about the filters, and
# must not depend on the DNS of the host they run on.
UNTRUSTED = ["--relay-network", "192.0.2.0/24", "--validator", "any", "--auth-checks", "none"]


class FilterServerTests(SynchronousTestCase):
    """
    Each test starts its own server with the filters it needs.
    """

    def setUp(self) -> None:
        """
        Write the example filters into C{<tmp>/smtpmx/plugins/}.
        """
        self.pluginRoot = makeTemporaryDirectory(self.addCleanup, "smtpmx-filter-")
        writeExampleFilters(self.pluginRoot)

    def server(self, *args: str, trusted: bool = False) -> RunningServer:
        """
        A server with the example filters and C{args}; the test's client is
        untrusted unless C{trusted}.
        """
        options = (["--validator", "any"] if trusted else UNTRUSTED) + list(args)
        return RunningServer.start(self.addCleanup, options, pythonPath=[self.pluginRoot])

    def send(self, server: RunningServer, data: bytes, to: str = "alice@localhost"):
        """
        Send C{data} to C{to} with smtplib.

        @return: the (code, text) of the reply to the end of data.
        """
        with smtplib.SMTP(server.host, server.port, local_hostname="client.example",
                          timeout=TIMEOUT) as c:
            c.ehlo()
            c.mail("sender@remote.example")
            c.rcpt(to)
            code, text = c.data(data)
            return code, text.decode("utf-8", "replace")

    def test_acceptDelivered(self):
        """
        Filters that accept let the message through to INBOX, and the
        transaction's log line says what each filter said.
        """
        server = self.server("--filter", "verdict:accept", "--filter", "keyword:VIAGRA")
        token = unique("acc-")
        code, text = self.send(server, message(token))
        self.assertEqual(code, 250, text)
        [stored] = server.newMessages("localhost", "alice")
        self.assertIn(token.encode(), stored)
        line = server.transactionLine(text.split()[-1])
        self.assertIn("filters=[verdict accept, keyword accept]", line)
        self.assertNotIn("Traceback", server.log())

    def test_acceptHeaders(self):
        """
        The header fields of Accept verdicts are on the stored copy, below
        our Received field; the filter read the whole message from the
        spool.
        """
        server = self.server("--filter", "verdict:accept", "--filter", "keyword:VIAGRA")
        data = message(unique("hdr-"))
        code, text = self.send(server, data)
        self.assertEqual(code, 250, text)
        [stored] = server.newMessages("localhost", "alice")
        block = headerBlock(stored)
        self.assertIn(b"\nX-Verdict: accept\n", block)
        self.assertIn(b"\nX-Keyword-Checked: yes\n", block)
        self.assertIn(b"\nX-Verdict-Client: 127.0.0.1\n", block)
        size = len(data.replace(b"\r\n", b"\n"))
        self.assertIn(f"\nX-Verdict-Size: {size}/{size}\n".encode(), block)
        self.assertLess(block.index(b"Received:"), block.index(b"X-Verdict:"))

    def test_junk(self):
        """
        A Junk verdict files the message in the recipient's Maildir++
        C{.Junk/new/}, with the filter's fields; INBOX gets nothing.
        """
        server = self.server("--filter", "verdict:junk")
        token = unique("junk-")
        code, text = self.send(server, message(token))
        self.assertEqual(code, 250, text)
        junk = os.path.join(server.maildir("localhost", "alice"), ".Junk", "new")
        [name] = os.listdir(junk)
        with open(os.path.join(junk, name), "rb") as f:
            stored = f.read()
        self.assertIn(token.encode(), stored)
        self.assertIn(b"\nX-Spam: Yes\n", headerBlock(stored))
        self.assertEqual(server.newMessages("localhost", "alice"), [])

    @pytest.mark.rfc("5321", "4.1.1.4", "5321-4.1.1.4-3")
    def test_reject(self):
        """
        A Reject is the reply to the end of data, with the filter's own
        code and text on the wire, and nothing is stored anywhere.
        """
        server = self.server("--filter", "verdict:reject", "--filter", "verdict:accept")
        before = server.tree()
        code, text = self.send(server, message(unique("rej-")))
        self.assertEqual((code, text), (554, "5.7.1 Refused by the verdict filter, sorry"))
        self.assertEqual(server.tree() - before, set())
        self.assertIn("filters=[verdict 554 5.7.1, verdict accept] result=554",
                      server.transactionLine("result=554"))

    def test_keywordExample(self):
        """
        The README's example filter reads the spooled message and refuses
        one that contains its word; others pass.
        """
        server = self.server("--filter", "keyword:VIAGRA")
        code, text = self.send(server, message(unique("kw-"), body=b"Cheap VIAGRA here\r\n"))
        self.assertEqual((code, text), (550, "5.7.1 We do not want that here"))
        code, text = self.send(server, message(unique("kw-"), body=b"Lunch at noon?\r\n"))
        self.assertEqual(code, 250, text)
        self.assertEqual(len(server.newMessages("localhost", "alice")), 1)

    def test_deferredVerdict(self):
        """
        A filter that answers later, through a Deferred, is waited for.
        """
        server = self.server("--filter", "verdict:later")
        code, text = self.send(server, message(unique("later-")))
        self.assertEqual(code, 250, text)
        self.assertEqual(len(server.newMessages("localhost", "alice")), 1)
        self.assertIn("filters=[verdict accept]", server.transactionLine(text.split()[-1]))

    def test_raisingAccept(self):
        """
        Under C{--filter-failure accept} (the default), a filter that
        raises is logged with its traceback and the message is delivered.
        """
        server = self.server("--filter", "verdict:raise")
        code, text = self.send(server, message(unique("raise-")))
        self.assertEqual(code, 250, text)
        self.assertEqual(len(server.newMessages("localhost", "alice")), 1)
        self.assertIn("filters=[verdict failed]", server.transactionLine(text.split()[-1]))
        self.assertIn("the verdict filter broke, as asked", server.log())

    def test_raisingTempfail(self):
        """
        Under C{--filter-failure tempfail}, a filter that raises makes the
        message a temporary failure, C{451 4.7.1}; nothing is stored.
        """
        server = self.server("--filter", "verdict:raise", "--filter-failure", "tempfail")
        before = server.tree()
        code, text = self.send(server, message(unique("tf-")))
        self.assertEqual((code, text[:5]), (451, "4.7.1"))
        self.assertEqual(server.tree() - before, set())

    def test_timeout(self):
        """
        A filter that never answers is given up after C{--filter-timeout}.
        """
        server = self.server(
            "--filter", "verdict:hang", "--filter-timeout", "1", "--filter-failure", "tempfail"
        )
        started = time.monotonic()
        code, text = self.send(server, message(unique("hang-")))
        elapsed = time.monotonic() - started
        self.assertEqual((code, text[:5]), (451, "4.7.1"))
        self.assertLess(elapsed, 5)
        self.assertIn("gave no verdict within 1.0 s", server.log())

    def test_trustedNotFiltered(self):
        """
        Mail from a client in C{--relay-network} is not filtered: a filter
        that refuses everything never sees it.
        """
        server = self.server("--filter", "verdict:reject", trusted=True)
        code, text = self.send(server, message(unique("trust-")))
        self.assertEqual(code, 250, text)
        self.assertEqual(len(server.newMessages("localhost", "alice")), 1)
        self.assertNotIn("filters=", server.transactionLine(text.split()[-1]))

    def test_listFilters(self):
        """
        C{--list-filters} lists the third-party filters with their
        descriptions, and exits 0.
        """
        status, output = runToExit(["--list-filters"], self.pluginRoot, pythonPath=[self.pluginRoot])
        self.assertEqual(status, 0, output)
        self.assertRegex(output, r"(?m)^keyword  keyword:WORD - refuses messages that contain WORD\.$")
        self.assertRegex(output, r"(?m)^verdict\b")
        self.assertNotIn("Traceback", output)

    def test_unknownFilter(self):
        """
        An unknown filter name stops start-up with one line that says so.
        """
        status, output = runToExit(["--filter", "nope"], self.pluginRoot, pythonPath=[self.pluginRoot])
        self.assertNotEqual(status, 0)
        self.assertIn("unknown filter 'nope'", output)
        self.assertIn("--list-filters", output)
