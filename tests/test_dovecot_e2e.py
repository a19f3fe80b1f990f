"""
The end-to-end proof of issue 9: the real C{twistd -n smtpmx} beside a
real private Dovecot (L{tests.dovecot}), everything on loopback.

 - Mail smtpmx files in Maildirs under Dovecot's Maildir root (with
   C{--maildir-mode 0660} and the setgid root docs/storage.rst describes)
   is read back by Dovecot over IMAP: INBOX, and C{Junk} for a message a
   filter junked.
 - Mail for a domain delivered over LMTP (C{--delivery
   DOMAIN=lmtp:ENDPOINT}, TCP and UNIX socket) is queued, handed to
   Dovecot in one LMTP transaction (RFC 2033 section 4.2) and read back
   over IMAP; nothing is filed by smtpmx itself; the queue empties.
 - An LMTP domain and a Maildir domain side by side, one message to both.
 - Dovecot down: the client still gets C{250}, the message waits in the
   queue (docs/storage.rst, docs/relay.rst), and arrives exactly once when
   Dovecot is back and the queue is flushed.
 - A user removed between RCPT and delivery: Dovecot's LMTP 5xx bounces
   that recipient, and an RFC 3464 report reaches the sender.

Skipped, saying why, where Dovecot is missing or we are not root.
"""

from __future__ import annotations

import email
import email.policy
import os
import smtplib
import time
from typing import Sequence

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from tests.dovecot import USERS_REREAD, RunningDovecot, dovecotMissing
from tests.e2e import RunningServer, freePort, headerBlock, makeTemporaryDirectory
from tests.examplefilter import writeExampleFilters
from tests.helpers import message, unique, waitUntil
from tests.test_relay_e2e import deliveryStatus, queueCommand, queueIdOf, queued, send

HOSTNAME = "mx.smtpmx.test"

# How long a delivery (or a bounce) may take to show, in seconds.
TIMEOUT = 20


def smtplibSession(server: RunningServer) -> smtplib.SMTP:
    """
    An smtplib session with C{server}, after EHLO.
    """
    c = smtplib.SMTP(server.host, server.port, local_hostname="client.example", timeout=TIMEOUT)
    c.ehlo()
    return c


class DovecotEndToEndTests(SynchronousTestCase):
    """
    Each test starts its own private Dovecot and the smtpmx it needs.
    """

    def setUp(self) -> None:
        """
        Start a private Dovecot, or skip saying why it cannot run.
        """
        missing = dovecotMissing()
        if missing:
            raise SkipTest(missing)
        self.dovecot = RunningDovecot.start(self.addCleanup)
        self.addCleanup(self.assertDovecotLoggedNoError)

    def assertDovecotLoggedNoError(self) -> None:
        """
        Dovecot logged no error or warning: it could read and write every
        Maildir smtpmx made (mode, group, setgid) and took every
        transaction without complaint (its master's note that we stopped
        it aside).
        """
        for line in self.dovecot.log().splitlines():
            if "master: Warning: Killed with signal 15" in line:
                continue
            self.assertNotIn("Error:", line)
            self.assertNotIn("Warning:", line)

    def server(self, *args: str, maildirRoot: str = "Maildir", pythonPath: Sequence[str] = (),
               aliases: str = "") -> RunningServer:
        """
        The real smtpmx for C{example.org} and C{files.example}, its
        Maildirs 0660 under C{maildirRoot} (its own C{./Maildir} unless
        told otherwise), a resolver with nothing behind it (nothing leaves
        the host), and C{args}.

        @param aliases: the text of C{./aliases} in its directory, for
            C{--validator aliases:aliases}.
        """
        directory = makeTemporaryDirectory(self.addCleanup)
        with open(os.path.join(directory, "aliases"), "w", encoding="utf-8") as f:
            f.write(aliases)
        options = [
            "--hostname", HOSTNAME,
            "--domain", "example.org",
            "--domain", "files.example",
            "--maildir-root", maildirRoot,
            "--maildir-mode", "0660",
            "--dns-server", f"127.0.0.1:{freePort()}",
            *args,
        ]
        server = RunningServer.start(self.addCleanup, options, pythonPath=pythonPath, maildirRoot=maildirRoot,
                                     directory=directory)
        self.addCleanup(lambda: self.assertNotIn("Traceback", server.log()))
        return server

    def waitForImap(self, address: str, count: int, folder: str = "INBOX") -> list[bytes]:
        """
        Wait until Dovecot shows C{count} messages in C{address}'s
        C{folder} over IMAP, and return them.
        """
        waitUntil(lambda: len(self.dovecot.messages(address, folder)) >= count, TIMEOUT, interval=0.2)
        return self.dovecot.messages(address, folder)

    def waitForEmptyQueue(self, server: RunningServer) -> None:
        """
        Wait until C{server}'s queue holds nothing.
        """
        waitUntil(lambda: queued(server) == [], TIMEOUT, interval=0.1)

    def lmtpDelivery(self, endpoint: str) -> None:
        """
        One message to alice and bob of an LMTP domain, checked at RCPT by
        Dovecot (C{--validator lmtp}), is read back by both over IMAP,
        once each, with Dovecot's C{Return-Path} and C{Received} above
        smtpmx's one C{Received}; smtpmx filed nothing; the queue empties
        and the log says C{relay=lmtp:ENDPOINT}.  (Dovecot 2.3 writes
        C{Delivered-To} only in a transaction with one recipient; see
        L{test_dovecotDownThenBack}.)
        """
        server = self.server(
            "--delivery", f"example.org=lmtp:{endpoint}",
            "--validator", "lmtp", "--validator", "any",
        )
        token = unique("lmtp-")
        rcpts, reply = send(server, "someone@client.example", ["alice@example.org", "Bob@example.org"],
                            message(token, messageId=token + "@client.example"))
        self.assertEqual([code for code, _ in rcpts], [250, 250])
        assert reply is not None
        queueIdOf(reply)
        self.waitForEmptyQueue(server)
        [alice] = self.waitForImap("alice@example.org", 1)
        [bob] = self.waitForImap("bob@example.org", 1)
        for copy in (alice, bob):
            block = headerBlock(copy.replace(b"\r\n", b"\n"))
            self.assertIn(token.encode(), copy)
            self.assertTrue(block.startswith(b"Return-Path: <someone@client.example>\nReceived: from "
                                             + HOSTNAME.encode()), block)
            self.assertIn(b"with LMTP", block)
            self.assertEqual(block.count(f"by {HOSTNAME} (smtpmx)".encode()), 1, block)
        self.assertEqual(server.tree() & {"Maildir/example.org"}, set())
        self.assertFalse(os.path.exists(os.path.join(server.dir, "Maildir", "example.org")))
        self.assertIn(f"relay=lmtp:{endpoint}", server.output())

    def test_maildirReadByDovecot(self) -> None:
        """
        A message smtpmx files under Dovecot's Maildir root (0660, in the
        root's group) is in the user's INBOX over IMAP.
        """
        server = self.server("--validator", "any", maildirRoot=self.dovecot.maildirRoot)
        token = unique("md-")
        rcpts, reply = send(server, "someone@client.example", ["alice@example.org"], message(token))
        self.assertEqual(rcpts, [(250, rcpts[0][1])])
        assert reply is not None and reply[0] == 250
        [stored] = self.waitForImap("alice@example.org", 1)
        self.assertIn(token.encode(), stored)
        self.assertIn(f"by {HOSTNAME}".encode(), headerBlock(stored))
        self.assertEqual(self.dovecot.messages("alice@example.org", "Junk"), [])

    def test_junkReadByDovecot(self) -> None:
        """
        A message a filter plugin junks (the client untrusted) is filed in
        Maildir++'s C{.Junk}, which Dovecot shows as the IMAP folder
        C{Junk}; INBOX stays empty.
        """
        plugins = makeTemporaryDirectory(self.addCleanup, "smtpmx-filter-")
        writeExampleFilters(plugins)
        server = self.server(
            "--relay-network", "192.0.2.0/24", "--auth-checks", "none", "--validator", "any",
            "--filter", "verdict:junk",
            maildirRoot=self.dovecot.maildirRoot, pythonPath=[plugins],
        )
        token = unique("junk-")
        rcpts, reply = send(server, "someone@client.example", ["alice@example.org"], message(token))
        assert reply is not None and reply[0] == 250, (rcpts, reply)
        [stored] = self.waitForImap("alice@example.org", 1, "Junk")
        self.assertIn(token.encode(), stored)
        self.assertIn(b"\nX-Spam: Yes\n", headerBlock(stored.replace(b"\r\n", b"\n")))
        self.assertEqual(self.dovecot.messages("alice@example.org"), [])

    def test_lmtpOverTCP(self) -> None:
        """
        LMTP delivery to Dovecot's loopback TCP port.
        """
        self.lmtpDelivery(self.dovecot.lmtpTCP)

    def test_lmtpOverUNIX(self) -> None:
        """
        LMTP delivery to Dovecot's UNIX socket.
        """
        self.lmtpDelivery(self.dovecot.lmtpUNIX)

    def test_bodyByteForByteOverLmtp(self) -> None:
        """
        A 1 MB message with 8-bit text, lines that begin with a dot and a
        line that is only a dot (dot-stuffed on both hops, RFC 5321
        section 4.5.2) reaches Dovecot over LMTP byte for byte.
        """
        server = self.server(
            "--delivery", f"example.org=lmtp:{self.dovecot.lmtpUNIX}",
            "--validator", "lmtp", "--validator", "any",
        )
        body = (b".leading dot\r\n..two dots\r\n.\r\nna\xc3\xafve caf\xc3\xa9\r\n"
                + b"0123456789abcdef" * 64 + b"\r\n") * 1000
        data = message(unique("body-"), body=body, extra=b"Content-Type: text/plain; charset=utf-8\r\n"
                       b"Content-Transfer-Encoding: 8bit\r\n")
        with smtplibSession(server) as c:
            self.assertEqual(c.sendmail("someone@client.example", ["alice@example.org"], data,
                                        mail_options=["BODY=8BITMIME"]), {})
        self.waitForEmptyQueue(server)
        [stored] = self.waitForImap("alice@example.org", 1)
        self.assertEqual(stored[stored.index(b"\r\n\r\n") + 4:], body)
        self.assertTrue(stored.endswith(data[data.index(b"\r\n\r\n"):]))

    def test_backendsSideBySide(self) -> None:
        """
        One message to an LMTP domain and a Maildir domain: Dovecot has
        alice's copy (IMAP), smtpmx's Maildir erin's, with the same
        message; nothing of example.org under smtpmx's root.
        """
        server = self.server(
            "--delivery", f"example.org=lmtp:{self.dovecot.lmtpTCP}",
            "--delivery", "files.example=maildir",
            "--validator", "lmtp", "--validator", "any",
        )
        token = unique("both-")
        rcpts, reply = send(server, "someone@client.example", ["alice@example.org", "erin@files.example"],
                            message(token))
        self.assertEqual([code for code, _ in rcpts], [250, 250])
        assert reply is not None and reply[0] == 250
        [erin] = server.waitForFiles("files.example", "erin", 1)
        [alice] = self.waitForImap("alice@example.org", 1)
        self.assertIn(token.encode(), erin)
        self.assertIn(token.encode(), alice)
        self.waitForEmptyQueue(server)
        self.assertEqual(sorted(os.listdir(os.path.join(server.dir, "Maildir"))), ["files.example"])

    def test_dovecotDownThenBack(self) -> None:
        """
        With Dovecot stopped the client still gets C{250} (alice is listed
        in an aliases file: C{any} has no opinion on an LMTP domain, and
        C{lmtp} would say C{451} with Dovecot down); the message waits in
        the queue via the LMTP endpoint (C{smtpmx-queue list}); Dovecot
        started again and the queue flushed, it arrives exactly once, with
        Dovecot's C{Delivered-To} (one recipient), and the queue empties.
        """
        server = self.server(
            "--delivery", f"example.org=lmtp:{self.dovecot.lmtpTCP}",
            "--validator", "aliases:aliases", "--retry-schedule", "3600",
            aliases="alice@example.org: alice@example.org\n",
        )
        self.dovecot.stop()
        token = unique("down-")
        rcpts, reply = send(server, "someone@client.example", ["alice@example.org"], message(token))
        self.assertEqual([code for code, _ in rcpts], [250])
        assert reply is not None
        queueId = queueIdOf(reply)

        def listed() -> str:
            """
            C{smtpmx-queue list}, which must succeed.
            """
            result = queueCommand(server, "list")
            self.assertEqual(result.returncode, 0, result.stderr)
            return result.stdout

        waitUntil(lambda: "1 attempt" in listed(), TIMEOUT)
        text = listed()
        self.assertIn(queueId, text)
        self.assertIn(f"<alice@example.org>  pending  via lmtp {self.dovecot.lmtpTCP}", text)
        self.assertEqual(queued(server), [queueId])

        self.dovecot.launch()
        result = queueCommand(server, "flush")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.waitForEmptyQueue(server)
        [stored] = self.waitForImap("alice@example.org", 1)
        self.assertIn(token.encode(), stored)
        self.assertIn(b"\nDelivered-To: alice@example.org\n", headerBlock(stored.replace(b"\r\n", b"\n")))
        # Nothing more comes: the message was handed over once.
        time.sleep(1)
        self.assertEqual(len(self.dovecot.messages("alice@example.org")), 1)

    def test_queuedViaLmtpSurvivesACrash(self) -> None:
        """
        A message queued via the LMTP server while Dovecot is down stays
        queued via it when smtpmx is killed (SIGKILL) and started again in
        the same directory; with Dovecot back and the queue flushed it is
        delivered once.
        """
        server = self.server(
            "--delivery", f"example.org=lmtp:{self.dovecot.lmtpUNIX}",
            "--validator", "aliases:aliases", "--retry-schedule", "3600",
            aliases="alice@example.org: alice@example.org\n",
        )
        self.dovecot.stop()
        token = unique("crash-")
        rcpts, reply = send(server, "someone@client.example", ["alice@example.org"], message(token))
        assert reply is not None
        queueId = queueIdOf(reply)
        server.kill9()
        server.launch()
        result = queueCommand(server, "list")
        self.assertIn(f"<alice@example.org>  pending  via lmtp {self.dovecot.lmtpUNIX}", result.stdout)
        self.assertEqual(queued(server), [queueId])
        self.dovecot.launch()
        self.assertEqual(queueCommand(server, "flush").returncode, 0)
        self.waitForEmptyQueue(server)
        [stored] = self.waitForImap("alice@example.org", 1)
        self.assertIn(token.encode(), stored)
        time.sleep(1)
        self.assertEqual(len(self.dovecot.messages("alice@example.org")), 1)

    def test_userRemovedBeforeDelivery(self) -> None:
        """
        bob is accepted at RCPT by Dovecot itself (C{--validator lmtp}),
        then removed from Dovecot's users before the end of the data;
        Dovecot's LMTP C{550 5.1.1} after the data bounces him, alice gets
        her copy, and the sender (a Maildir address of files.example)
        finds an RFC 3464 report naming bob as failed with Dovecot's
        status; the queue empties.
        """
        server = self.server(
            "--delivery", f"example.org=lmtp:{self.dovecot.lmtpTCP}",
            "--validator", "lmtp", "--validator", "any", "--retry-schedule", "3600",
        )
        token = unique("gone-")
        with smtplib.SMTP(server.host, server.port, local_hostname="client.example", timeout=TIMEOUT) as c:
            c.ehlo()
            self.assertEqual(c.mail("sender@files.example")[0], 250)
            self.assertEqual(c.rcpt("alice@example.org")[0], 250)
            self.assertEqual(c.rcpt("bob@example.org")[0], 250)
            self.dovecot.removeUser("bob@example.org")
            time.sleep(USERS_REREAD)
            code, text = c.data(message(token, sender="sender@files.example"))
            self.assertEqual(code, 250, text)
        self.assertBobBounced(server, token)

    def assertBobBounced(self, server: RunningServer, token: str) -> None:
        """
        The queue empties, alice has the message C{token} over IMAP, and
        C{sender@files.example} has one RFC 3464 report for it naming bob
        as failed with Dovecot's C{5.1.1}.
        """
        self.waitForEmptyQueue(server)
        [alice] = self.waitForImap("alice@example.org", 1)
        self.assertIn(token.encode(), alice)
        [bounce] = server.waitForFiles("files.example", "sender", 1, TIMEOUT)
        report = email.message_from_bytes(bounce, policy=email.policy.compat32)
        self.assertEqual(report.get_content_type(), "multipart/report")
        self.assertEqual(report.get_param("report-type"), "delivery-status")
        _, [recipient] = deliveryStatus(report)
        self.assertEqual(recipient["Action"], "failed")
        self.assertIn("bob@example.org", recipient["Final-Recipient"])
        self.assertTrue(recipient["Status"].startswith("5.1.1"), recipient["Status"])
        self.assertIn(token.encode(), bounce)

    def test_userRemovedWhileDovecotDown(self) -> None:
        """
        alice and bob accepted (an aliases file) while Dovecot is down, the
        message deferred; bob removed meanwhile; Dovecot started again
        (reading its users afresh) and the queue flushed: alice gets it,
        bob's LMTP C{550 5.1.1} turns his deferral into a bounce to the
        sender.
        """
        server = self.server(
            "--delivery", f"example.org=lmtp:{self.dovecot.lmtpTCP}",
            "--validator", "aliases:aliases", "--validator", "any", "--retry-schedule", "3600",
            aliases="alice@example.org: alice@example.org\nbob@example.org: bob@example.org\n",
        )
        self.dovecot.stop()
        token = unique("down-gone-")
        rcpts, reply = send(server, "sender@files.example", ["alice@example.org", "bob@example.org"],
                            message(token, sender="sender@files.example"))
        self.assertEqual([code for code, _ in rcpts], [250, 250])
        assert reply is not None
        waitUntil(lambda: queueCommand(server, "list").stdout.count("1 attempt") == 2, TIMEOUT)
        self.dovecot.removeUser("bob@example.org")
        self.dovecot.launch()
        self.assertEqual(queueCommand(server, "flush").returncode, 0)
        self.assertBobBounced(server, token)

    def test_bounceToAnLmtpSender(self) -> None:
        """
        The sender is alice of the LMTP domain: bob, removed after RCPT,
        bounces, and the RFC 3464 report (null reverse path) is queued via
        Dovecot and read by alice over IMAP.
        """
        server = self.server(
            "--delivery", f"example.org=lmtp:{self.dovecot.lmtpUNIX}",
            "--validator", "lmtp", "--validator", "any", "--retry-schedule", "3600",
        )
        token = unique("lmtp-bounce-")
        with smtplibSession(server) as c:
            self.assertEqual(c.mail("alice@example.org")[0], 250)
            self.assertEqual(c.rcpt("bob@example.org")[0], 250)
            self.dovecot.removeUser("bob@example.org")
            time.sleep(USERS_REREAD)
            code, text = c.data(message(token, sender="alice@example.org"))
            self.assertEqual(code, 250, text)
        self.waitForEmptyQueue(server)
        [bounce] = self.waitForImap("alice@example.org", 1)
        self.assertTrue(bounce.startswith(b"Return-Path: <>\r\n"), bounce[:200])
        report = email.message_from_bytes(bounce, policy=email.policy.compat32)
        self.assertEqual(report.get_param("report-type"), "delivery-status")
        _, [recipient] = deliveryStatus(report)
        self.assertIn("bob@example.org", recipient["Final-Recipient"])
        self.assertTrue(recipient["Status"].startswith("5.1.1"), recipient["Status"])
        self.assertIn(token.encode(), bounce)

    def test_junkOverLmtp(self) -> None:
        """
        A junked message to an LMTP domain and a Maildir domain: the
        Maildir copy is filed in C{.Junk}; the LMTP copy carries the
        filter's C{X-Spam: Yes} into Dovecot's INBOX, where a Sieve script
        would file it (docs/storage.rst: the Junk folder is not smtpmx's
        business for LMTP domains).
        """
        plugins = makeTemporaryDirectory(self.addCleanup, "smtpmx-filter-")
        writeExampleFilters(plugins)
        server = self.server(
            "--delivery", f"example.org=lmtp:{self.dovecot.lmtpUNIX}",
            "--relay-network", "192.0.2.0/24", "--auth-checks", "none",
            "--validator", "lmtp", "--validator", "any",
            "--filter", "verdict:junk", pythonPath=[plugins],
        )
        token = unique("junk-lmtp-")
        rcpts, reply = send(server, "someone@client.example", ["alice@example.org", "erin@files.example"],
                            message(token))
        assert reply is not None and reply[0] == 250, (rcpts, reply)
        [alice] = self.waitForImap("alice@example.org", 1)
        self.assertIn(b"\nX-Spam: Yes\n", headerBlock(alice.replace(b"\r\n", b"\n")))
        self.assertEqual(self.dovecot.messages("alice@example.org", "Junk"), [])
        junk = os.path.join(server.maildir("files.example", "erin"), ".Junk", "new")
        waitUntil(lambda: os.path.isdir(junk) and os.listdir(junk), TIMEOUT)
        self.assertEqual(server.newMessages("files.example", "erin"), [])
