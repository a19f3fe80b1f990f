"""
End-to-end tests: the real C{twistd -n smtpmx} in a subprocess, on
loopback, driven with smtplib, raw sockets, swaks and Postfix's
C{smtp-source}; each checks what a user of the server would see, on the
wire and in the Maildirs.

Servers are shared by the tests of a class where the tests do not step on
each other (each uses its own recipients); every server is stopped by PID
in a cleanup.
"""

from __future__ import annotations

import os
import re
import smtplib
import socket
import ssl
import subprocess
import threading
import time
from typing import Sequence

import pytest
from twisted.trial.unittest import SynchronousTestCase

from tests import certs
from tests.denybob import writeDenyBob
from tests.e2e import (
    ReplyReader,
    RunningServer,
    SharedProcessesTestCase,
    codes,
    headerBlock,
    makeTemporaryDirectory,
    portIsFree,
    rawDialog,
    runToExit,
)
from tests.helpers import message, unique

# Every blocking operation of a client is bounded by this.
TIMEOUT = 15

SWAKS = "/usr/bin/swaks"
SMTP_SOURCE = "/usr/sbin/smtp-source"


def client(server: RunningServer, **kw) -> smtplib.SMTP:
    """
    An smtplib client connected to C{server}, greeting read.
    """
    return smtplib.SMTP(
        server.host, server.port, local_hostname="client.example", timeout=TIMEOUT, **kw
    )


def rcptReply(server: RunningServer, recipient: str, **kw) -> tuple[int, str]:
    """
    The server's reply (code, text) to C{RCPT TO:<recipient>}, in a fresh
    transaction that is then abandoned.
    """
    with client(server, **kw) as c:
        c.ehlo()
        c.mail("sender@remote.example")
        code, text = c.rcpt(recipient)
        c.rset()
        return code, text.decode("utf-8", "replace")


def header(stored: bytes, name: bytes) -> list[bytes]:
    """
    The values (unfolded) of every header C{name} in a stored LF message.
    """
    block = headerBlock(stored).decode("utf-8", "surrogateescape")
    pattern = re.compile(r"^" + re.escape(name.decode()) + r":[ \t]*(.*(?:\n[ \t].*)*)", re.M | re.I)
    return [re.sub(r"\n[ \t]+", " ", m.group(1)).encode("utf-8", "surrogateescape") for m in pattern.finditer(block)]


def readAll(reader: ReplyReader) -> list[str]:
    """
    The last line of every reply until the server closes the connection.
    """
    result = []
    while True:
        try:
            result.append(reader.reply()[-1])
        except EOFError:
            return result


class ServerTestCase(SharedProcessesTestCase):
    """
    A test class with one shared server, started with L{serverArgs} before
    its first test; every test fails if the server logged a traceback while
    it ran.
    """

    serverArgs: tuple[str, ...] = ()

    @classmethod
    def serverArguments(cls, addCleanup) -> Sequence[str]:
        """
        The options of the shared server; a hook for classes that must
        prepare files first.

        @param addCleanup: registers the cleanup of what is prepared.
        """
        return cls.serverArgs

    @classmethod
    def startProcesses(cls, addCleanup) -> None:
        """
        Start the shared server, stopped by C{addCleanup}'s cleanups.
        """
        cls.server = RunningServer.start(addCleanup, cls.serverArguments(addCleanup))


class DefaultsTests(ServerTestCase):
    """
    The server with no options but a loopback port chosen by the system:
    domain C{localhost}, the C{mailbox} validator, C{./Maildir}.
    """

    @pytest.mark.rfc("5321", "4.4", "5321-4.4-1", "5321-4.4-2", "5321-4.4-7", "5321-4.4-9")
    @pytest.mark.rfc("5321", "4.5.2", "5321-4.5.2-2")
    @pytest.mark.rfc("5321", "4.5.1", "5321-4.5.1-2")
    def test_postmasterDelivered(self):
        """
        A message to postmaster@localhost lands, with no configuration, as
        one file in ./Maildir/localhost/postmaster/new/ with Return-Path,
        Delivered-To and Received headers on top, LF line endings, and
        nothing left in tmp/.
        """
        subject = unique("defaults-")
        sent = message(subject, b"First line.\r\n..dotted\r\nLast line.\r\n")
        with client(self.server) as c:
            refused = c.sendmail("Sender@Remote.Example", ["postmaster@localhost"], sent)
        self.assertEqual(refused, {})
        [stored] = [m for m in self.server.newMessages("localhost", "postmaster") if subject.encode() in m]
        self.assertNotIn(b"\r", stored)
        self.assertEqual(header(stored, b"Return-Path"), [b"<Sender@Remote.Example>"])
        self.assertEqual(header(stored, b"Delivered-To"), [b"postmaster@localhost"])
        [received] = header(stored, b"Received")
        self.assertIn(b"client.example", received)
        self.assertIn(b"127.0.0.1", received)
        self.assertIn(b"ESMTP", received)
        self.assertTrue(stored.startswith(b"Return-Path: "))
        self.assertTrue(stored.endswith(sent.replace(b"\r\n", b"\n")))
        self.assertEqual(self.server.tmpFiles("localhost", "postmaster"), [])

    @pytest.mark.rfc("5321", "4.4", "5321-4.4-7")
    def test_nullSender(self):
        """
        A bounce (null reverse-path) to postmaster is stored with
        C{Return-Path: <>}.
        """
        subject = unique("null-")
        with client(self.server) as c:
            c.sendmail("<>", ["postmaster@localhost"], message(subject))
        [stored] = [m for m in self.server.newMessages("localhost", "postmaster") if subject.encode() in m]
        self.assertEqual(header(stored, b"Return-Path"), [b"<>"])

    @pytest.mark.rfc("5321", "4.5.1", "5321-4.5.1-1")
    @pytest.mark.rfc("1870", "4")
    @pytest.mark.rfc("6152", "2")
    @pytest.mark.rfc("2034", "3")
    @pytest.mark.rfc("6531", "3.1")
    def test_ehloExtensions(self):
        """
        EHLO advertises PIPELINING, SIZE with the default limit, 8BITMIME,
        ENHANCEDSTATUSCODES and SMTPUTF8, and no STARTTLS without a
        certificate.
        """
        with client(self.server) as c:
            code, _ = c.ehlo()
            self.assertEqual(code, 250)
            for keyword in ["pipelining", "8bitmime", "enhancedstatuscodes", "smtputf8"]:
                self.assertTrue(c.has_extn(keyword), keyword)
            self.assertEqual(c.esmtp_features.get("size"), "26214400")
            self.assertFalse(c.has_extn("starttls"))

    @pytest.mark.rfc("3463", "3")
    def test_unknownLocalRecipient(self):
        """
        With the default C{mailbox} validator, a local user without a
        Maildir is refused with 550 5.1.1.
        """
        code, text = rcptReply(self.server, unique("nobody-") + "@localhost")
        self.assertEqual((code, text[:5]), (550, "5.1.1"))

    @pytest.mark.rfc("2920", "3.2", "2920-3.2-1")
    def test_pipelinedInOneWrite(self):
        """
        A whole transaction written at once, EHLO to QUIT, gets every reply
        in order (a refused recipient in the middle included) and stores
        exactly one message.
        """
        subject = unique("pipe-")
        data = (
            b"EHLO client.example\r\n"
            b"MAIL FROM:<sender@remote.example>\r\n"
            b"RCPT TO:<postmaster@localhost>\r\n"
            b"RCPT TO:<" + unique("nobody-").encode() + b"@localhost>\r\n"
            b"DATA\r\n" + message(subject) + b".\r\n"
            b"QUIT\r\n"
        )
        replies = rawDialog(self.server, data, 7)
        self.assertEqual(
            codes(replies),
            ["250", "250 2.1.0", "250 2.1.5", "550 5.1.1", "354", "250 2.0.0", "221 2.0.0"],
        )
        stored = [m for m in self.server.newMessages("localhost", "postmaster") if subject.encode() in m]
        self.assertEqual(len(stored), 1)


class DefaultPortTests(SynchronousTestCase):
    """
    The server with no options at all.
    """

    def test_listensOn2525(self):
        """
        With no options, the server listens on 127.0.0.1:2525 and files
        mail for postmaster@localhost under ./Maildir.
        """
        if not portIsFree(2525):
            raise self.skipTest("127.0.0.1:2525 is in use")
        try:
            server = RunningServer.start(self.addCleanup, listen=False)
        except Exception:
            if not portIsFree(2525):
                raise self.skipTest("127.0.0.1:2525 was taken meanwhile")
            raise
        self.assertEqual((server.host, server.port), ("127.0.0.1", 2525))
        subject = unique("default-port-")
        with smtplib.SMTP("127.0.0.1", 2525, local_hostname="client.example", timeout=TIMEOUT) as c:
            c.sendmail("a@b.example", ["postmaster@localhost"], message(subject))
        stored = [m for m in server.newMessages("localhost", "postmaster") if subject.encode() in m]
        self.assertEqual(len(stored), 1)


class AnyValidatorTests(ServerTestCase):
    """
    A server for C{example.org} that accepts every local recipient.
    """

    serverArgs = ("--domain", "example.org", "--validator", "any", "--max-message-size", "12000000")

    def test_severalRecipients(self):
        """
        One message to several recipients is filed once in each
        recipient's Maildir (lower-cased, tag stripped), each copy with a
        Delivered-To naming that recipient exactly as the client wrote it.
        """
        token = unique("")
        recipients = [
            f"Alice{token}@example.org",
            f"BOB{token}@Example.ORG",
            f"carol{token}+lists@example.org",
        ]
        subject = unique("multi-")
        with client(self.server) as c:
            self.assertEqual(c.sendmail("sender@remote.example", recipients, message(subject)), {})
        for recipient, user in zip(recipients, ["alice", "bob", "carol"]):
            stored = self.server.newMessages("example.org", user + token)
            self.assertEqual(len(stored), 1, recipient)
            self.assertEqual(header(stored[0], b"Delivered-To"), [recipient.encode()])
            self.assertIn(subject.encode(), stored[0])

    def test_unsafeLocalParts(self):
        """
        A local part that cannot be a safe directory name is refused with
        550 5.1.3, and nothing is created anywhere, inside the Maildir root
        or outside it.
        """
        escape = unique("escape-")
        before = self.server.tree()
        unsafe = [
            f'"../../{escape}"@example.org',
            f'"../../../{escape}"@example.org',
            f'".{escape}"@example.org',
            f"a/{escape}@example.org",
            f'"a\\\\{escape}"@example.org',
            '".."@example.org',
        ]
        for recipient in unsafe:
            code, text = rcptReply(self.server, recipient)
            self.assertEqual((code, text[:5]), (550, "5.1.3"), recipient)
        self.assertEqual(self.server.tree() - before, set())
        self.assertFalse(os.path.exists(os.path.join(os.path.dirname(self.server.dir), escape)))

    @pytest.mark.rfc("5321", "4.1.1.4", "5321-4.1.1.4-3")
    def test_storageFailureIsAllOrNothing(self):
        """
        When one recipient's Maildir cannot be written (its tmp/ is a plain
        file), the message gets 451 4.3.0 and the copy already written for
        the other recipient is removed: nothing is filed for anyone.
        """
        token = unique("")
        good, broken = f"good{token}", f"broken{token}"
        mailbox = self.server.maildir("example.org", broken)
        os.makedirs(mailbox)
        for sub in ("new", "cur"):
            os.makedirs(os.path.join(mailbox, sub))
        open(os.path.join(mailbox, "tmp"), "w").close()
        with client(self.server) as c:
            with self.assertRaises(smtplib.SMTPDataError) as caught:
                c.sendmail("sender@remote.example", [f"{good}@example.org", f"{broken}@example.org"], message(token))
        self.assertEqual(caught.exception.smtp_code, 451)
        self.assertTrue(caught.exception.smtp_error.startswith(b"4.3.0"))
        goodBox = self.server.maildir("example.org", good)
        for sub in ("new", "tmp"):
            path = os.path.join(goodBox, sub)
            self.assertEqual(os.listdir(path) if os.path.isdir(path) else [], [], sub)
        self.assertEqual(os.listdir(os.path.join(mailbox, "new")), [])
        # The failure is logged with its cause, as a failure, not a crash.
        self.assertIn("cannot store message", self.server.log())
        type(self).logSeen = len(self.server.log())

    def test_logLines(self):
        """
        The log has a line at connect, one per transaction (queue ID,
        client, sender, each recipient with its verdict, size, result) and
        one at disconnect, so that an operator can follow every session.
        """
        token = unique("")
        with client(self.server) as c:
            c.sendmail("logger@remote.example", [f"log{token}@example.org"], message(token))
        log = self.server.log()
        [line] = [l for l in log.splitlines() if f"<log{token}@example.org>" in l and "result=" in l]
        queueId = re.search(r"\] ([0-9A-F]+): client=", line).group(1)
        self.assertIn("client=[127.0.0.1]", line)
        self.assertIn("from=<logger@remote.example>", line)
        self.assertIn(f"<log{token}@example.org> 250 2.1.5 by any", line)
        self.assertRegex(line, r"size=\d+")
        self.assertIn(f"result=250 2.0.0 Ok: queued as {queueId}", line)
        self.assertIn("connect from [127.0.0.1]:", log)
        self.assertIn("disconnect from [127.0.0.1]:", log)

    @pytest.mark.rfc("2920", "3.2", "2920-3.2-1")
    def test_pipelinedTwoRecipients(self):
        """
        EHLO, MAIL, two RCPTs, DATA, the message and QUIT in one write get
        their replies in order and one copy of the message per recipient.
        """
        users = [unique("p1-"), unique("p2-")]
        subject = unique("pipe-")
        data = (
            b"EHLO client.example\r\nMAIL FROM:<sender@remote.example>\r\n"
            + b"".join(b"RCPT TO:<" + u.encode() + b"@example.org>\r\n" for u in users)
            + b"DATA\r\n"
            + message(subject)
            + b".\r\nQUIT\r\n"
        )
        replies = rawDialog(self.server, data, 7)
        self.assertEqual(
            codes(replies),
            ["250", "250 2.1.0", "250 2.1.5", "250 2.1.5", "354", "250 2.0.0", "221 2.0.0"],
        )
        for u in users:
            self.assertEqual(len(self.server.newMessages("example.org", u)), 1, u)

    def smuggle(self, ending: bytes) -> tuple[list[str], list[bytes], int]:
        """
        Send a message whose body holds C{ending} followed by a second
        transaction, all in one write after the 354.

        @return: the replies after the 354 until the server hangs up, the
            messages filed for the real recipient, and the number filed for
            the smuggled one.
        """
        victim, smuggled = unique("victim-"), unique("smuggled-")
        with self.server.connect(TIMEOUT) as sock:
            reader = ReplyReader(sock)
            reader.reply()
            sock.sendall(
                b"EHLO client.example\r\nMAIL FROM:<sender@remote.example>\r\n"
                b"RCPT TO:<" + victim.encode() + b"@example.org>\r\nDATA\r\n"
            )
            self.assertEqual(codes(reader.replies(4)), ["250", "250 2.1.0", "250 2.1.5", "354"])
            sock.sendall(
                b"Subject: innocent\r\n\r\nhello"
                + ending
                + b"MAIL FROM:<attacker@remote.example>\r\n"
                b"RCPT TO:<" + smuggled.encode() + b"@example.org>\r\n"
                b"DATA\r\n"
                b"Subject: smuggled\r\n\r\nevil\r\n"
                b".\r\n"
                b"QUIT\r\n"
            )
            after = readAll(reader)
        return (
            after,
            self.server.newMessages("example.org", victim),
            len(self.server.newMessages("example.org", smuggled)),
        )

    def assertNotSmuggled(self, ending: bytes) -> None:
        """
        The data ends only at the final CRLF.CRLF: one reply to it, then
        221 to QUIT, at most one message, holding the would-be commands as
        text, and nothing for the smuggled recipient.
        """
        after, victim, smuggled = self.smuggle(ending)
        self.assertEqual(len(after), 2, after)
        self.assertTrue(after[0][:1] in ("2", "5"), after)
        self.assertEqual(codes(after[1:]), ["221 2.0.0"])
        self.assertEqual(smuggled, 0)
        if after[0].startswith("250"):
            self.assertEqual(len(victim), 1)
            self.assertIn(b"RCPT TO:<smuggled-", victim[0])
            self.assertTrue(victim[0].endswith(b"evil\n"), victim[0][-200:])
        else:
            self.assertEqual(victim, [])

    @pytest.mark.rfc("5321", "4.1.1.4", "5321-4.1.1.4-1")
    @pytest.mark.rfc("5321", "2.3.8", "5321-2.3.8-1")
    def test_smugglingBareLF(self):
        """
        LF . LF inside the data does not end it: the commands after it are
        message text, never a second transaction.
        """
        self.assertNotSmuggled(b"\n.\n")

    @pytest.mark.rfc("5321", "4.1.1.4", "5321-4.1.1.4-1")
    @pytest.mark.rfc("5321", "2.3.8", "5321-2.3.8-1")
    def test_smugglingCRLFDotLF(self):
        """
        CRLF . LF inside the data does not end it.
        """
        self.assertNotSmuggled(b"\r\n.\n")

    @pytest.mark.rfc("5321", "4.1.1.4", "5321-4.1.1.4-1")
    @pytest.mark.rfc("5321", "2.3.8", "5321-2.3.8-1")
    def test_smugglingLFDotCRLF(self):
        """
        LF . CRLF inside the data does not end it.
        """
        self.assertNotSmuggled(b"\n.\r\n")

    @pytest.mark.rfc("5321", "4.1.1.4", "5321-4.1.1.4-1")
    @pytest.mark.rfc("5321", "2.3.8", "5321-2.3.8-1")
    def test_smugglingBareCR(self):
        """
        CR . CR inside the data does not end it.
        """
        self.assertNotSmuggled(b"\r.\r")

    @pytest.mark.rfc("5321", "4.5.2", "5321-4.5.2-2")
    @pytest.mark.rfc("2920", "3.2", "2920-3.2-1")
    def test_pipelinedSecondTransaction(self):
        """
        A real CRLF . CRLF followed by a second transaction in the same
        write gives two messages, one per transaction (the check the
        smuggling tests rely on).
        """
        after, victim, second = self.smuggle(b"\r\n.\r\n")
        self.assertEqual(
            codes(after), ["250 2.0.0", "250 2.1.0", "250 2.1.5", "354", "250 2.0.0", "221 2.0.0"]
        )
        self.assertEqual((len(victim), second), (1, 1))

    @pytest.mark.rfc("5321", "4.5.2", "5321-4.5.2-2")
    @pytest.mark.rfc("6152", "2")
    @pytest.mark.rfc("5321", "4.5.3.1.6")
    @pytest.mark.rfc("5321", "4.5.3.1.7")
    @pytest.mark.rfc("6152", "3", "6152-3-1")
    def test_largeMessage(self):
        """
        A 10 MB message, with dot-stuffed lines, 8-bit text and a 100 kB
        line, is stored intact: the bytes sent, with CRLF turned into LF.
        """
        user = unique("big-")
        subject = unique("big-")
        lines = []
        block = os.urandom(57 * 1000).hex().encode()
        size = 0
        i = 0
        while size < 10 * 1024 * 1024:
            if i % 997 == 0:
                line = b"." + block[i % 500 : i % 500 + 70]
            elif i % 1999 == 0:
                line = "caf\u00e9 \u00fcber na\u00efve \u2603".encode()
            elif i == 5000:
                line = block[:100000]
            else:
                start = (i * 76) % (len(block) - 76)
                line = block[start : start + 76]
            lines.append(line)
            size += len(line) + 2
            i += 1
        sent = message(subject, b"\r\n".join(lines) + b"\r\n")
        with client(self.server) as c:
            self.assertEqual(c.sendmail("sender@remote.example", [user + "@example.org"], sent), {})
        [stored] = self.server.newMessages("example.org", user)
        expected = sent.replace(b"\r\n", b"\n")
        self.assertTrue(stored.endswith(expected), "the stored message differs from the one sent")
        self.assertEqual(self.server.tmpFiles("example.org", user), [])

    @pytest.mark.rfc("1870", "6.1")
    @pytest.mark.rfc("1870", "4")
    def test_sizeParameterTooBig(self):
        """
        MAIL FROM with a SIZE above --max-message-size is refused at once
        with 552 5.3.4; EHLO advertises the configured limit.
        """
        with client(self.server) as c:
            c.ehlo()
            self.assertEqual(c.esmtp_features.get("size"), "12000000")
            code, text = c.mail("sender@remote.example", ["SIZE=12000001"])
            self.assertEqual((code, text[:5]), (552, b"5.3.4"))
            code, _ = c.mail("sender@remote.example", ["SIZE=1000"])
            self.assertEqual(code, 250)

    @pytest.mark.rfc("1870", "6.3")
    def test_bodyTooBig(self):
        """
        A message that grows past --max-message-size without announcing
        its size gets 552 5.3.4 after the data, and nothing is filed.
        """
        user = unique("toobig-")
        line = b"x" * 998 + b"\r\n"
        sent = message(unique("toobig-"), line * 12100)
        with client(self.server) as c:
            c.ehlo()
            c.mail("sender@remote.example")
            c.rcpt(user + "@example.org")
            code, text = c.data(sent)
            self.assertEqual((code, text[:5]), (552, b"5.3.4"))
            self.assertEqual(c.noop()[0], 250)
        self.assertEqual(self.server.newMessages("example.org", user), [])

    def test_remoteRecipientFromRelayNetwork(self):
        """
        A remote recipient from 127.0.0.1 (in the default relay networks)
        is accepted for relay.
        """
        code, text = rcptReply(self.server, "someone@remote.example")
        self.assertEqual((code, text[:5]), (250, "2.1.5"))


class MailboxAndRelayTests(ServerTestCase):
    """
    A server for C{example.org} with the C{mailbox} validator that lets
    only 127.0.0.1 relay.
    """

    serverArgs = (
        "--domain",
        "example.org",
        "--validator",
        "mailbox",
        "--relay-network",
        "127.0.0.1/32",
        # Not about sender authentication: no DNS of the host.
        "--auth-checks",
        "none",
    )

    @pytest.mark.rfc("3463", "3")
    def test_unknownRecipient(self):
        """
        A recipient without a Maildir is refused with 550 5.1.1.
        """
        code, text = rcptReply(self.server, unique("nobody-") + "@example.org")
        self.assertEqual((code, text[:5]), (550, "5.1.1"))

    def test_existingMaildir(self):
        """
        A recipient whose Maildir the operator created is accepted,
        whatever the case of its local part and with a +tag, and the
        message is filed there.
        """
        user = unique("user-")
        self.server.makeMaildir("example.org", user)
        recipient = user.upper() + "+news@Example.org"
        with client(self.server) as c:
            self.assertEqual(c.sendmail("sender@remote.example", [recipient], message(unique())), {})
        [stored] = self.server.newMessages("example.org", user)
        self.assertEqual(header(stored, b"Delivered-To"), [recipient.encode()])

    @pytest.mark.rfc("5321", "4.5.1", "5321-4.5.1-2")
    def test_postmasterAlwaysAccepted(self):
        """
        postmaster@ a local domain is accepted even without a Maildir, which
        is created by the first delivery.
        """
        subject = unique("pm-")
        with client(self.server) as c:
            self.assertEqual(c.sendmail("", ["Postmaster@example.org"], message(subject)), {})
        [stored] = [m for m in self.server.newMessages("example.org", "postmaster") if subject.encode() in m]
        self.assertEqual(header(stored, b"Return-Path"), [b"<>"])

    def test_relayDenied(self):
        """
        A remote recipient from 127.0.0.2, outside --relay-network
        127.0.0.1/32, is refused with 554 5.7.1 (relay access denied),
        while a local recipient from the same client is still accepted.
        """
        source = ("127.0.0.2", 0)
        code, text = rcptReply(self.server, "someone@remote.example", source_address=source)
        self.assertEqual((code, text[:5]), (554, "5.7.1"))
        code, text = rcptReply(self.server, "postmaster@example.org", source_address=source)
        self.assertEqual(code, 250)

    def test_relayAllowed(self):
        """
        A remote recipient from 127.0.0.1, inside --relay-network, is
        accepted for relay.
        """
        code, text = rcptReply(self.server, "someone@remote.example")
        self.assertEqual((code, text[:5]), (250, "2.1.5"))


class TLSTests(ServerTestCase):
    """
    A server with a certificate for localhost and 127.0.0.1, signed by a CA
    the clients trust.
    """

    @classmethod
    def serverArguments(cls, addCleanup) -> Sequence[str]:
        """
        Make a CA and a certificate for localhost/127.0.0.1, and serve with
        them.
        """
        certDir = makeTemporaryDirectory(addCleanup, "smtpmx-certs-")
        cls.authority = certs.makeAuthority(certDir)
        certificate, key = certs.makeServerCertificate(cls.authority, certDir)
        return ("--tls-certificate", certificate, "--tls-key", key)

    def context(self) -> ssl.SSLContext:
        """
        A client context that trusts only the test CA.
        """
        return ssl.create_default_context(cafile=self.authority.path)

    @pytest.mark.rfc("3207", "4", "3207-4-2")
    def test_deliveryOverTLS(self):
        """
        EHLO offers STARTTLS; a client that verifies the certificate
        delivers over TLS, and the Received header says ESMTPS and which
        TLS version was used.
        """
        subject = unique("tls-")
        with client(self.server) as c:
            c.ehlo()
            self.assertTrue(c.has_extn("starttls"))
            code, _ = c.starttls(context=self.context())
            self.assertEqual(code, 220)
            version = c.sock.version()
            c.sendmail("sender@remote.example", ["postmaster@localhost"], message(subject))
        [stored] = [m for m in self.server.newMessages("localhost", "postmaster") if subject.encode() in m]
        [received] = header(stored, b"Received")
        self.assertIn(b"ESMTPS", received)
        self.assertIn(version.encode(), received)

    @pytest.mark.rfc("3207", "4.2", "3207-4.2-4")
    def test_ehloAfterTLS(self):
        """
        EHLO after STARTTLS no longer offers STARTTLS, and a second
        STARTTLS inside TLS is refused with 503.
        """
        with client(self.server) as c:
            c.ehlo()
            c.starttls(context=self.context())
            c.ehlo()
            self.assertFalse(c.has_extn("starttls"))
            self.assertTrue(c.has_extn("pipelining"))
            code, text = c.docmd("STARTTLS")
            self.assertEqual((code, text[:5]), (503, b"5.5.1"))
            self.assertEqual(c.noop()[0], 250)

    @pytest.mark.rfc("3207", "4.2", "3207-4.2-1", "3207-4.2-4")
    def test_commandsPipelinedAfterSTARTTLS(self):
        """
        A command sent in the clear in the same write as STARTTLS is
        thrown away: STARTTLS gets its single 220, and inside TLS the NOOP
        gets no reply; EHLO then works as usual.
        """
        with self.server.connect(TIMEOUT) as sock:
            reader = ReplyReader(sock)
            reader.reply()
            sock.sendall(b"EHLO x\r\n")
            reader.reply()
            sock.sendall(b"STARTTLS\r\nNOOP\r\n")
            self.assertEqual(codes([reader.reply()[-1]]), ["220 2.0.0"])
            self.assertEqual(reader.buffer, b"")
            sock.settimeout(0.5)
            try:
                extra = sock.recv(1024, socket.MSG_PEEK)
            except (socket.timeout, TimeoutError):
                extra = b""
            self.assertEqual(extra, b"", "a reply in the clear after 220")
            sock.settimeout(TIMEOUT)
            with self.context().wrap_socket(sock, server_hostname="localhost") as tls:
                secure = ReplyReader(tls)
                self.assertEqual(secure.nothingMore(1.0), b"")
                tls.sendall(b"EHLO x\r\n")
                lines = secure.reply()
                self.assertTrue(lines[-1].startswith("250 "), lines)
                self.assertNotIn("STARTTLS", [line[4:].upper() for line in lines])
                tls.sendall(b"QUIT\r\n")
                self.assertEqual(codes([secure.reply()[-1]]), ["221 2.0.0"])


class StartupErrorTests(SynchronousTestCase):
    """
    A server that cannot start says why in one line and exits with a
    non-zero status, never with a traceback.
    """

    def setUp(self) -> None:
        """
        A working directory for the server that will not start.
        """
        self.dir = makeTemporaryDirectory(self.addCleanup)

    def assertRefused(self, args, named: str) -> str:
        """
        Starting with C{args} fails quickly, without a traceback, and the
        last words of the output name C{named}.
        """
        started = time.monotonic()
        status, output = runToExit(args, self.dir)
        self.assertIsNotNone(status, "still running:\n" + output)
        self.assertNotEqual(status, 0, output)
        self.assertLess(time.monotonic() - started, 15)
        self.assertNotIn("Traceback", output)
        lines = [line for line in output.splitlines() if line.strip()]
        self.assertTrue(lines, "no error message")
        self.assertIn(named.lower(), lines[-1].lower(), output)
        return output

    def test_unknownValidator(self):
        """
        An unknown validator name stops start-up, naming it.
        """
        self.assertRefused(["--listen", "tcp:0:interface=127.0.0.1", "--validator", "nosuchvalidator"], "nosuchvalidator")

    def test_badNumber(self):
        """
        A size that is not a number stops start-up, naming the option.
        """
        self.assertRefused(["--listen", "tcp:0:interface=127.0.0.1", "--max-message-size", "lots"], "size")

    def test_badNetwork(self):
        """
        A relay network that is not a CIDR stops start-up, naming it.
        """
        self.assertRefused(["--listen", "tcp:0:interface=127.0.0.1", "--relay-network", "10.0.0.0/99"], "10.0.0.0/99")

    def test_badEndpoint(self):
        """
        A --listen that is not an endpoint description stops start-up.
        """
        self.assertRefused(["--listen", "bogus:1234"], "bogus")

    def test_unwritableMaildirRoot(self):
        """
        A Maildir root that cannot be a directory stops start-up, naming the
        option, rather than failing every delivery later.
        """
        path = os.path.join(self.dir, "plain-file")
        open(path, "w").close()
        self.assertRefused(
            ["--listen", "tcp:0:interface=127.0.0.1", "--maildir-root", os.path.join(path, "Maildir")],
            "--maildir-root",
        )

    def test_missingConfig(self):
        """
        A --config file that does not exist stops start-up, naming it.
        """
        self.assertRefused(["--config", os.path.join(self.dir, "missing.toml")], "missing.toml")

    def test_missingAliases(self):
        """
        A validator that cannot load (an aliases file that does not exist)
        stops start-up, naming the file.
        """
        path = os.path.join(self.dir, "no-aliases")
        self.assertRefused(["--listen", "tcp:0:interface=127.0.0.1", "--validator", "aliases:" + path], "no-aliases")

    def test_missingCertificate(self):
        """
        A certificate file that does not exist stops start-up, naming it.
        """
        self.assertRefused(
            [
                "--listen",
                "tcp:0:interface=127.0.0.1",
                "--tls-certificate",
                os.path.join(self.dir, "nocert.pem"),
                "--tls-key",
                os.path.join(self.dir, "nokey.pem"),
            ],
            "nocert.pem",
        )

    def test_keyDoesNotMatch(self):
        """
        A key that does not belong to the certificate stops start-up with
        a one-line error.
        """
        authority = certs.makeAuthority(self.dir)
        certificate, _ = certs.makeServerCertificate(authority, self.dir)
        stray = certs.makeStrayKey(self.dir)
        output = self.assertRefused(
            ["--listen", "tcp:0:interface=127.0.0.1", "--tls-certificate", certificate, "--tls-key", stray],
            "match",
        )
        self.assertNotIn("smtpmx listening", output)


END_MARKER = b"END-OF-MESSAGE "


class DurabilityTests(SynchronousTestCase):
    """
    Acknowledged mail survives C{kill -9}.
    """

    @pytest.mark.rfc("5321", "6.1", "5321-6.1-1")
    def test_sigkill(self):
        """
        Clients send mail while the server is killed with SIGKILL: every
        message that got a 250 is in new/ exactly once and complete, no
        file in new/ is partial, and the server starts again on the same
        directory and accepts mail.
        """
        server = RunningServer.start(self.addCleanup, ["--validator", "any"])
        acknowledged: list[str] = []
        stop = threading.Event()
        filler = (b"x" * 70 + b"\r\n") * 300  # about 20 kB

        def sender(n: int) -> None:
            """
            Send to tN@localhost until told to stop, reconnecting after
            errors, recording every message that got its 250.
            """
            count = 0
            while not stop.is_set():
                try:
                    with client(server) as c:
                        while not stop.is_set():
                            ident = f"dur-{n}-{count}"
                            count += 1
                            body = filler + END_MARKER + ident.encode() + b"\r\n"
                            c.sendmail("sender@remote.example", [f"t{n}@localhost"], message(ident, body))
                            acknowledged.append(ident)
                except (OSError, smtplib.SMTPException):
                    time.sleep(0.02)

        threads = [threading.Thread(target=sender, args=(n,), daemon=True) for n in range(5)]
        for t in threads:
            t.start()
        time.sleep(2.0)
        server.kill9()
        stop.set()
        for t in threads:
            t.join(TIMEOUT + 5)
        self.assertTrue(acknowledged, "no message was acknowledged in 2 s")

        found: dict[str, int] = {}
        for n in range(5):
            for name, content in server.newFiles("localhost", f"t{n}"):
                m = re.search(rb"^Subject: (dur-\d+-\d+)$", content, re.M)
                self.assertIsNotNone(m, f"no subject in new/{name}")
                ident = m.group(1).decode()
                self.assertTrue(
                    content.endswith(END_MARKER + ident.encode() + b"\n"),
                    f"new/{name} ({ident}) is incomplete: {len(content)} bytes",
                )
                found[ident] = found.get(ident, 0) + 1
        missing = [i for i in acknowledged if i not in found]
        self.assertEqual(missing, [], f"{len(missing)} of {len(acknowledged)} acknowledged messages lost")
        self.assertEqual({i: c for i, c in found.items() if c != 1}, {})

        server.restart()
        with client(server) as c:
            c.sendmail("sender@remote.example", ["t0@localhost"], message("after-restart"))
        self.assertTrue(any(b"after-restart" in m for m in server.newMessages("localhost", "t0")))


class ThirdPartyValidatorTests(SynchronousTestCase):
    """
    A validator plugin dropped into an C{smtpmx/plugins/} directory on
    C{sys.path}, like README's DenyBob example (C{docs/plugins.rst}).
    """

    def setUp(self) -> None:
        """
        Write the DenyBob plugin into C{<tmp>/smtpmx/plugins/}, with no
        C{__init__.py}.
        """
        self.pluginRoot = makeTemporaryDirectory(self.addCleanup, "smtpmx-plugin-")
        writeDenyBob(self.pluginRoot)

    def test_denyBob(self):
        """
        With C{--validator denybob --validator any}, bob is refused with
        the plugin's 550 5.7.1 and alice is accepted and gets her mail.
        """
        server = RunningServer.start(
            self.addCleanup, ["--validator", "denybob", "--validator", "any"], pythonPath=[self.pluginRoot]
        )
        code, text = rcptReply(server, "bob@localhost")
        self.assertEqual((code, text[:5]), (550, "5.7.1"))
        self.assertIn("holiday", text)
        with client(server) as c:
            self.assertEqual(c.sendmail("sender@remote.example", ["alice@localhost"], message("for-alice")), {})
        self.assertEqual(len(server.newMessages("localhost", "alice")), 1)
        self.assertNotIn("Traceback", server.log())

    def test_listValidators(self):
        """
        C{--list-validators} lists the third-party validator next to the
        built-in ones, with descriptions, and exits 0.
        """
        status, output = runToExit(["--list-validators"], self.pluginRoot, pythonPath=[self.pluginRoot])
        self.assertEqual(status, 0, output)
        for name in ["denybob", "mailbox", "any", "aliases"]:
            self.assertRegex(output, r"(?m)^\s*" + name + r"\b", output)
        self.assertIn("Rejects bob.", output)
        self.assertNotIn("Traceback", output)


class InteroperabilityTests(ServerTestCase):
    """
    Other people's SMTP clients deliver to smtpmx.
    """

    def test_swaks(self):
        """
        swaks, with its defaults, delivers to postmaster@localhost.
        """
        if not os.path.exists(SWAKS):
            raise self.skipTest("swaks is not installed")
        subject = unique("swaks-")
        before = len(self.server.newMessages("localhost", "postmaster"))
        result = subprocess.run(
            [
                SWAKS,
                "--server",
                f"127.0.0.1:{self.server.port}",
                "--to",
                "postmaster@localhost",
                "--from",
                "swaks@remote.example",
                "--helo",
                "client.example",
                "--header",
                f"Subject: {subject}",
            ],
            capture_output=True,
            timeout=30,
        )
        self.assertEqual(result.returncode, 0, result.stdout.decode() + result.stderr.decode())
        messages = self.server.newMessages("localhost", "postmaster")
        self.assertEqual(len(messages), before + 1)
        self.assertTrue(any(subject.encode() in m for m in messages))

    def test_smtpSource(self):
        """
        Postfix's smtp-source, 5 sessions in parallel sending 50 messages,
        gets all 50 filed.
        """
        if not os.path.exists(SMTP_SOURCE):
            raise self.skipTest("smtp-source is not installed")
        before = len(self.server.newMessages("localhost", "postmaster"))
        result = subprocess.run(
            [
                SMTP_SOURCE,
                "-s", "5",
                "-m", "50",
                "-f", "a@b.example",
                "-t", "postmaster@localhost",
                f"127.0.0.1:{self.server.port}",
            ],
            capture_output=True,
            timeout=60,
        )
        self.assertEqual(result.returncode, 0, result.stdout.decode() + result.stderr.decode())
        self.assertEqual(len(self.server.newMessages("localhost", "postmaster")), before + 50)
