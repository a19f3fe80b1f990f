"""
End-to-end tests of the relay (C{docs/relay.rst}; RFC 5321 sections 5.1,
4.5.4.1 and 6.1, RFC 3464, RFC 7505): the real C{twistd -n smtpmx} in a
subprocess takes mail from smtplib on loopback, queues it and hands it to
a next hop that is a real SMTP server in another process: our recording
sink (L{tests.sink}, run with C{python -m tests.sink}), found through C{--route} or through MX
records served by Twisted's own DNS server (L{tests.dnszone}), or Postfix's
C{smtp-sink}.  Bounces are read back from the Maildirs with L{email}.

Each class shares its servers between its tests where they do not step on
each other (every test uses its own Message-ID and recipients); every
process is stopped by PID in a cleanup.  Retry schedules of a second keep
the whole file to seconds.
"""

from __future__ import annotations

import email
import email.policy
import os
import re
import smtplib
import subprocess
import sys
import time
from typing import Optional, Sequence

import pytest
from twisted.trial.unittest import SynchronousTestCase

from tests.dnszone import RunningDNS, zoneSource
from tests.e2e import RunningServer, SharedProcessesTestCase, environment, freePort, makeTemporaryDirectory
from tests.helpers import message, unique, waitUntil
from tests.postfix import SMTP_SINK, startSmtpSink
from tests.sink import RunningSink, Transaction

# Every blocking client operation, and every wait for the relay, is
# bounded by this.
TIMEOUT = 15.0


HOSTNAME = "mx.smtpmx.test"


# Small helpers.


def send(
    server: RunningServer,
    sender: str,
    recipients: Sequence[str],
    data: bytes,
    sourceAddress: Optional[tuple] = None,
) -> tuple[list[tuple[int, str]], Optional[tuple[int, str]]]:
    """
    One transaction with smtplib.

    @return: the reply to each RCPT, and the reply to the data (L{None}
        when no recipient was accepted and DATA was not sent).
    """
    with smtplib.SMTP(
        server.host,
        server.port,
        local_hostname="client.example",
        timeout=TIMEOUT,
        source_address=sourceAddress,
    ) as c:
        c.ehlo()
        code, text = c.mail(sender)
        if code != 250:
            raise AssertionError(f"MAIL FROM:<{sender}>: {code} {text!r}")
        replies = []
        for recipient in recipients:
            code, text = c.rcpt(recipient)
            replies.append((code, text.decode("utf-8", "replace")))
        if not any(code == 250 for code, _ in replies):
            c.rset()
            return replies, None
        code, text = c.data(data)
        return replies, (code, text.decode("utf-8", "replace"))


def queueIdOf(reply: tuple[int, str]) -> str:
    """
    The queue ID in a C{250 2.0.0 Ok: queued as ID} reply.
    """
    m = re.search(r"queued as ([0-9A-Za-z]+)", reply[1])
    if reply[0] != 250 or m is None:
        raise AssertionError(f"not queued: {reply!r}")
    return m.group(1)


def queued(server: RunningServer) -> list[str]:
    """
    The IDs of the messages in C{server}'s queue: its C{env/} files (a
    message is queued if and only if its env file exists, as
    C{docs/storage.rst} says).
    """
    try:
        return sorted(n for n in os.listdir(os.path.join(server.dir, "queue", "env")) if not n.startswith("."))
    except FileNotFoundError:
        return []


def messageIdOf(data: bytes) -> Optional[str]:
    """
    The Message-ID (without brackets) in the header section of C{data}, a
    message as the sink stores it (LF line endings).
    """
    head = data.split(b"\n\n", 1)[0].decode("utf-8", "replace")
    m = re.search(r"^Message-ID:\s*<([^>]*)>", head, re.M | re.I)
    return m.group(1) if m else None


def transactionsFor(sink: RunningSink, messageId: str) -> list[Transaction]:
    """
    The sink's transactions that carried the message C{messageId}.
    """
    return [t for t in sink.transactions() if messageIdOf(t.data) == messageId]


def waitForTransactions(sink: RunningSink, messageId: str, count: int = 1, timeout: float = TIMEOUT) -> list[Transaction]:
    """
    Wait (bounded) until the sink has seen C{count} transactions of
    C{messageId}.
    """
    waitUntil(lambda: len(transactionsFor(sink, messageId)) >= count, timeout)
    return transactionsFor(sink, messageId)


def bounces(server: RunningServer, user: str, domain: str = "localhost") -> list[email.message.Message]:
    """
    The messages in C{user@domain}'s Maildir C{new/}, parsed.
    """
    return [email.message_from_bytes(m, policy=email.policy.compat32) for m in server.newMessages(domain, user)]


def waitForBounce(server: RunningServer, user: str, timeout: float = TIMEOUT) -> list[email.message.Message]:
    """
    Wait (bounded) until C{user@localhost} has at least one message.
    """
    waitUntil(lambda: server.newMessages("localhost", user), timeout)
    return bounces(server, user)


def deliveryStatus(report: email.message.Message) -> tuple[email.message.Message, list[email.message.Message]]:
    """
    The per-message fields and the per-recipient field groups of a
    C{multipart/report; report-type=delivery-status} (RFC 3464).
    """
    for part in report.walk():
        if part.get_content_type() == "message/delivery-status":
            groups = part.get_payload()
            return groups[0], list(groups[1:])
    raise AssertionError("no message/delivery-status part in:\n" + report.as_string())


def queueCommand(server: RunningServer, *arguments: str) -> subprocess.CompletedProcess:
    """
    Run C{smtpmx-queue --queue-dir DIR arguments} against C{server}'s
    queue.
    """
    return subprocess.run(
        [sys.executable, "-c", "from smtpmx.queuecli import main; raise SystemExit(main())",
         "--queue-dir", os.path.join(server.dir, "queue"), *arguments],
        cwd=server.dir,
        env=environment(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


def allFiles(server: RunningServer, under: str) -> list[str]:
    """
    Every file below C{server.dir/under}.
    """
    found = []
    for parent, _, files in os.walk(os.path.join(server.dir, under)):
        found.extend(os.path.join(parent, name) for name in files)
    return found


# The shared machinery.


class RelayTestCase(SharedProcessesTestCase):
    """
    A test class whose processes (sinks, DNS servers, one smtpmx) are
    started once, by L{startProcesses}, before its first test; every test
    fails if the server logged a traceback while it ran.
    """

    def assertLeavesQueue(self, queueId: str, timeout: float = TIMEOUT) -> None:
        """
        Wait (bounded) until the message C{queueId} is out of the queue.
        """
        gone = waitUntil(lambda: queueId not in queued(self.server), timeout)
        self.assertTrue(gone, f"{queueId} is still queued:\n{self.server.log()[-3000:]}")


class RouteTests(RelayTestCase):
    """
    A server relaying through C{--route} to recording sinks: one for
    C{remote.example} that refuses C{bad@remote.example} with a 5xx, one
    for C{retry.example} that says 4xx to its first transaction.  Only
    127.0.0.1 may relay; local recipients are any address at localhost.
    """

    @classmethod
    def startProcesses(cls, addCleanup) -> None:
        """
        Two sinks, then the server with a route to each.
        """
        directory = makeTemporaryDirectory(addCleanup, prefix="smtpmx-sink-")
        cls.sink = RunningSink.start(
            addCleanup, directory, "127.0.0.3",
            arguments=("--reply-rcpt", "bad@remote.example=550 5.1.1 no such user"),
        )
        cls.retrySink = RunningSink.start(
            addCleanup, directory, "127.0.0.5", arguments=("--fail-first", "1")
        )
        cls.server = RunningServer.start(
            addCleanup,
            [
                "--hostname", HOSTNAME,
                "--validator", "any",
                "--relay-network", "127.0.0.1/32",
                # Not about sender authentication: no DNS of the host.
                "--auth-checks", "none",
                "--route", f"remote.example=127.0.0.3:{cls.sink.port}",
                "--route", f"retry.example=127.0.0.5:{cls.retrySink.port}",
                "--route", f"backup.example=127.0.0.3:{cls.sink.port}",
                "--relay-domain", "backup.example",
                "--retry-schedule", "1",
            ],
        )

    @pytest.mark.rfc("5321", "2.4", "5321-2.4-1")
    @pytest.mark.rfc("5321", "4.4", "5321-4.4-1", "5321-4.4-8")
    @pytest.mark.rfc("5321", "4.5.4.1", "5321-4.5.4.1-7")
    @pytest.mark.rfc("5321", "2.3.8", "5321-2.3.8-2")
    def test_oneTransactionForRecipientsSharingANextHop(self) -> None:
        """
        A message from a trusted client to three recipients at one remote
        domain reaches the next hop in one transaction with the three
        RCPTs exactly as the client wrote them, case and all; the copy
        starts with our Received header and carries no Return-Path or
        Delivered-To, every line on the wire ends with CRLF, and the
        message leaves the queue.
        """
        messageId = unique() + "@client.example"
        recipients = ["Alice@Remote.Example", "bob@remote.example", "CAROL@remote.example"]
        replies, dataReply = send(self.server, "Sender@Client.Example", recipients, message(messageId=messageId))
        self.assertEqual([code for code, _ in replies], [250, 250, 250])
        queueId = queueIdOf(dataReply)

        found = waitForTransactions(self.sink, messageId)
        self.assertEqual(len(found), 1, found)
        # Let a wrong second transaction show up, if there is to be one.
        time.sleep(0.5)
        found = transactionsFor(self.sink, messageId)
        self.assertEqual(len(found), 1, f"the message was sent in {len(found)} transactions")
        [transaction] = found
        self.assertEqual(transaction.accepted, recipients)
        self.assertEqual(transaction.mailFrom, "Sender@Client.Example")
        data = transaction.data
        self.assertTrue(data.startswith(b"Received: "), data[:200])
        head = data.split(b"\n\n", 1)[0]
        self.assertIn(HOSTNAME.encode(), head)
        self.assertNotRegex(head, rb"(?im)^Return-Path:")
        self.assertNotRegex(head, rb"(?im)^Delivered-To:")
        # On the wire every line ends with CRLF, whatever the queue stores.
        self.assertNotRegex(transaction.raw, rb"(?<!\r)\n")
        self.assertTrue(transaction.raw.endswith(b"\r\n\r\nHello.\r\n.\r\n"), transaction.raw[-50:])
        self.assertTrue(data.endswith(b"\n\nHello.\n"), data[-50:])
        self.assertLeavesQueue(queueId)

    @pytest.mark.rfc("5321", "4.5.2", "5321-4.5.2-1")
    @pytest.mark.rfc("6152", "2")
    @pytest.mark.rfc("6152", "3", "6152-3-1")
    def test_bodyArrivesByteForByte(self) -> None:
        """
        Lines that start with a dot, a line that is only a dot, 8-bit text
        and a 5000-byte line reach the next hop exactly as the client sent
        them: on the wire the relay stuffs each leading dot again, and the
        next hop, unstuffing, gets the body back.
        """
        messageId = unique() + "@client.example"
        body = (
            b".leading dot\r\n..two dots\r\n.\r\nafter a lone dot\r\n"
            + "caf\u00e9 \u00fcber \u2603\r\n".encode()
            + b"L" * 5000 + b"\r\nend\r\n"
        )
        onTheWire = (
            b"..leading dot\r\n...two dots\r\n..\r\nafter a lone dot\r\n"
            + "caf\u00e9 \u00fcber \u2603\r\n".encode()
            + b"L" * 5000 + b"\r\nend\r\n.\r\n"
        )
        _, dataReply = send(self.server, "someone@client.example", ["olga@remote.example"], message(messageId=messageId, body=body))
        queueId = queueIdOf(dataReply)
        [transaction] = waitForTransactions(self.sink, messageId)
        self.assertTrue(transaction.raw.endswith(b"\r\n\r\n" + onTheWire), transaction.raw[-300:])
        self.assertTrue(transaction.data.endswith(b"\n\n" + body.replace(b"\r\n", b"\n")), transaction.data[-300:])
        self.assertLeavesQueue(queueId)

    @pytest.mark.rfc("5321", "4.5.5", "5321-4.5.5-1")
    @pytest.mark.rfc("3464", "2", "3464-2-1", "3464-2-2", "3464-2-4")
    def test_bounceToRemoteSenderIsRelayed(self) -> None:
        """
        A bounce for a remote sender is relayed to the sender's next hop
        with the null reverse-path, as a delivery-status report.
        """
        messageId = unique() + "@client.example"
        sender = unique("Sender") + "@remote.example"
        _, dataReply = send(self.server, sender, ["bad@remote.example"], message(messageId=messageId))
        queueId = queueIdOf(dataReply)

        def bounced() -> list[Transaction]:
            """
            The sink's transactions that carry the bounce.
            """
            return [t for t in self.sink.transactions() if messageId.encode() in t.data and t.accepted == [sender]]

        found = waitUntil(bounced, TIMEOUT)
        self.assertEqual(len(found), 1, self.server.log()[-3000:])
        self.assertEqual(found[0].mailFrom, "")
        report = email.message_from_bytes(found[0].data, policy=email.policy.compat32)
        self.assertEqual(report.get_content_type(), "multipart/report")
        _, perRecipient = deliveryStatus(report)
        self.assertEqual([g["Status"].strip() for g in perRecipient], ["5.1.1"])
        self.assertLeavesQueue(queueId)

    def test_relayDomainFromAnyClient(self) -> None:
        """
        Mail for a relay domain (we are its backup MX) is accepted from a
        client outside the relay networks and carried to its next hop,
        while that client's mail for another domain is still refused.
        """
        messageId = unique() + "@client.example"
        replies, dataReply = send(
            self.server, "someone@client.example", ["Ops@Backup.Example", "x@remote.example"],
            message(messageId=messageId), sourceAddress=("127.0.0.2", 0),
        )
        self.assertEqual([code for code, _ in replies], [250, 554])
        queueId = queueIdOf(dataReply)
        [transaction] = waitForTransactions(self.sink, messageId)
        self.assertEqual(transaction.accepted, ["Ops@Backup.Example"])
        self.assertLeavesQueue(queueId)

    def test_untrustedClientMayNotRelay(self) -> None:
        """
        A client outside the relay networks is refused a remote recipient
        with 554 5.7.1, and nothing of its message reaches the queue or
        the next hop.
        """
        messageId = unique() + "@client.example"
        recipient = unique("victim") + "@remote.example"
        replies, dataReply = send(
            self.server, "spammer@client.example", [recipient], message(messageId=messageId),
            sourceAddress=("127.0.0.2", 0),
        )
        [(code, text)] = replies
        self.assertEqual(code, 554, text)
        self.assertTrue(text.startswith("5.7.1"), text)
        self.assertIsNone(dataReply)
        for path in allFiles(self.server, "queue"):
            with open(path, "rb") as f:
                self.assertNotIn(recipient.encode(), f.read(), path)
        time.sleep(0.3)
        self.assertEqual(transactionsFor(self.sink, messageId), [])

    def test_localAndRemoteRecipients(self) -> None:
        """
        One message for a local and a remote recipient is filed into the
        local Maildir and relayed to the remote one.
        """
        messageId = unique() + "@client.example"
        local = unique("local")
        replies, dataReply = send(
            self.server, "someone@client.example",
            [f"{local}@localhost", "Dave@remote.example"], message(messageId=messageId),
        )
        self.assertEqual([code for code, _ in replies], [250, 250])
        queueId = queueIdOf(dataReply)
        [stored] = self.server.waitForFiles("localhost", local, 1)
        self.assertIn(messageId.encode(), stored)
        [transaction] = waitForTransactions(self.sink, messageId)
        self.assertEqual(transaction.accepted, ["Dave@remote.example"])
        self.assertLeavesQueue(queueId)

    @pytest.mark.rfc("5321", "4.5.4.1", "5321-4.5.4.1-1")
    def test_temporaryFailureIsRetried(self) -> None:
        """
        A next hop that answers 4xx the first time gets the message on a
        later attempt, a second or so later, and the queue lets it go.
        """
        messageId = unique() + "@client.example"
        replies, dataReply = send(self.server, "someone@client.example", ["erin@retry.example"], message(messageId=messageId))
        queueId = queueIdOf(dataReply)
        [transaction] = waitForTransactions(self.retrySink, messageId)
        self.assertEqual(transaction.accepted, ["erin@retry.example"])
        self.assertGreaterEqual(self.retrySink.connections(), 2)
        self.assertLeavesQueue(queueId)

    @pytest.mark.rfc("5321", "6.1", "5321-6.1-2")
    @pytest.mark.rfc("3464", "2", "3464-2-1", "3464-2-2", "3464-2-3")
    def test_permanentFailureBouncesThatRecipient(self) -> None:
        """
        A 5xx reply to one recipient bounces that recipient alone: the
        local sender gets a multipart/report delivery-status notification
        from MAILER-DAEMON that lists only the failed recipient, with
        Action: failed, Status: 5.1.1 and the remote reply; the other
        recipient is delivered.
        """
        sender = unique("someone")
        messageId = unique() + "@client.example"
        replies, dataReply = send(
            self.server, f"{sender}@localhost",
            ["good@remote.example", "bad@remote.example"], message(messageId=messageId),
        )
        self.assertEqual([code for code, _ in replies], [250, 250])
        queueId = queueIdOf(dataReply)

        [transaction] = waitForTransactions(self.sink, messageId)
        self.assertEqual(transaction.accepted, ["good@remote.example"])
        found = waitForBounce(self.server, sender)
        self.assertEqual(len(found), 1, [m.as_string()[:500] for m in found])
        [report] = found
        self.assertEqual(report.get_content_type(), "multipart/report")
        self.assertEqual(report.get_param("report-type"), "delivery-status")
        self.assertIn("MAILER-DAEMON@" + HOSTNAME, report["From"])
        self.assertEqual(report["Return-Path"], "<>")
        self.assertEqual(report["Delivered-To"], f"{sender}@localhost")
        perMessage, perRecipient = deliveryStatus(report)
        self.assertIn(HOSTNAME, perMessage["Reporting-MTA"])
        self.assertEqual(len(perRecipient), 1, [str(g) for g in perRecipient])
        [failed] = perRecipient
        self.assertIn("bad@remote.example", failed["Final-Recipient"])
        self.assertEqual(failed["Action"].strip().lower(), "failed")
        self.assertEqual(failed["Status"].strip(), "5.1.1")
        self.assertIn("no such user", failed["Diagnostic-Code"])
        self.assertIn("550", failed["Diagnostic-Code"])
        # The original headers come back with the report.
        self.assertIn(messageId, report.as_string())
        self.assertLeavesQueue(queueId)

    @pytest.mark.rfc("5321", "4.5.5", "5321-4.5.5-2")
    @pytest.mark.rfc("5321", "6.1", "5321-6.1-3")
    def test_noBounceForNullReversePath(self) -> None:
        """
        A message with the null reverse-path that meets a 5xx is dropped
        without a bounce: nothing new appears in any Maildir and the queue
        lets it go.
        """
        messageId = unique() + "@client.example"
        before = set(allFiles(self.server, "Maildir"))
        replies, dataReply = send(self.server, "", ["bad@remote.example"], message(messageId=messageId))
        self.assertEqual([code for code, _ in replies], [250])
        queueId = queueIdOf(dataReply)
        self.assertLeavesQueue(queueId)
        time.sleep(0.5)
        fresh = set(allFiles(self.server, "Maildir")) - before
        for path in fresh:
            with open(path, "rb") as f:
                self.assertNotIn(messageId.encode(), f.read(), f"a bounce for <>: {path}")
        self.assertEqual(transactionsFor(self.sink, messageId), [])


class ExpiryTests(RelayTestCase):
    """
    A server whose only next hop is down, with a queue lifetime of three
    seconds.
    """

    @classmethod
    def startProcesses(cls, addCleanup) -> None:
        """
        The server, routing to a port where nothing listens.
        """
        cls.server = RunningServer.start(
            addCleanup,
            [
                "--hostname", HOSTNAME,
                "--validator", "any",
                "--route", f"remote.example=127.0.0.3:{freePort('127.0.0.3')}",
                "--retry-schedule", "1",
                "--max-queue-age", "3",
            ],
        )

    @pytest.mark.rfc("5321", "6.1", "5321-6.1-2")
    def test_expiredMessageBounces(self) -> None:
        """
        A message that cannot be delivered before --max-queue-age runs out
        is bounced to its local sender within seconds, and leaves the
        queue.
        """
        sender = unique("someone")
        messageId = unique() + "@client.example"
        replies, dataReply = send(self.server, f"{sender}@localhost", ["frank@remote.example"], message(messageId=messageId))
        queueId = queueIdOf(dataReply)
        found = waitForBounce(self.server, sender, timeout=10)
        self.assertEqual(len(found), 1, self.server.log()[-3000:])
        [report] = found
        self.assertEqual(report.get_content_type(), "multipart/report")
        _, perRecipient = deliveryStatus(report)
        self.assertEqual(len(perRecipient), 1)
        self.assertIn("frank@remote.example", perRecipient[0]["Final-Recipient"])
        self.assertEqual(perRecipient[0]["Action"].strip().lower(), "failed")
        self.assertRegex(perRecipient[0]["Status"].strip(), r"^[45]\.\d+\.\d+$")
        self.assertLeavesQueue(queueId)


class MXTests(RelayTestCase):
    """
    A server that finds next hops through MX records served by Twisted's
    DNS server on 127.0.0.1, and connects to them on the sink's port.
    """

    @classmethod
    def startProcesses(cls, addCleanup) -> None:
        """
        The sink on 127.0.0.4, the DNS server, then smtpmx.
        """
        directory = makeTemporaryDirectory(addCleanup, prefix="smtpmx-sink-")
        cls.sink = RunningSink.start(addCleanup, directory, "127.0.0.4")
        zone = zoneSource(
            "example.test",
            [
                # One MX.
                ("MX", "mx.example.test", 10, "mx1.example.test"),
                ("A", "mx1.example.test", "127.0.0.4"),
                # The first MX is down; the second is the sink.
                ("MX", "fallback.example.test", 10, "down.example.test"),
                ("MX", "fallback.example.test", 20, "mx1.example.test"),
                ("A", "down.example.test", "127.0.0.5"),
                # RFC 7505: this domain takes no mail.
                ("MX", "null.example.test", 0, ""),
                # No MX: the A record is the implicit MX.
                ("A", "implicit.example.test", "127.0.0.4"),
            ],
        )
        cls.dns = RunningDNS.start(addCleanup, zone, "mx.example.test")
        cls.server = RunningServer.start(
            addCleanup,
            [
                "--hostname", HOSTNAME,
                "--validator", "any",
                "--dns-server", f"127.0.0.1:{cls.dns.port}",
                "--relay-port", str(cls.sink.port),
                "--retry-schedule", "1",
            ],
        )

    def relay(self, recipient: str) -> tuple[str, list[dict]]:
        """
        Send one message to C{recipient}; return its queue ID and the
        sink's transactions for it once one arrives (or time runs out).
        """
        messageId = unique() + "@client.example"
        _, dataReply = send(self.server, "someone@client.example", [recipient], message(messageId=messageId))
        queueId = queueIdOf(dataReply)
        return queueId, waitForTransactions(self.sink, messageId)

    @pytest.mark.rfc("5321", "5.1", "5321-5.1-1")
    def test_deliveredToMX(self) -> None:
        """
        Mail for a domain is delivered to the host its MX record names.
        """
        queueId, found = self.relay("Grace@mx.example.test")
        self.assertEqual([t.accepted for t in found], [["Grace@mx.example.test"]], self.server.log()[-3000:])
        self.assertLeavesQueue(queueId)

    @pytest.mark.rfc("5321", "5.1", "5321-5.1-7")
    def test_nextMXWhenFirstIsDown(self) -> None:
        """
        When the most preferred MX does not answer, the next one gets the
        message in the same attempt.
        """
        queueId, found = self.relay("heidi@fallback.example.test")
        self.assertEqual([t.accepted for t in found], [["heidi@fallback.example.test"]], self.server.log()[-3000:])
        self.assertLeavesQueue(queueId)

    @pytest.mark.rfc("7505", "3", "7505-3-1")
    def test_nullMXBounces(self) -> None:
        """
        Mail for a domain with a null MX (RFC 7505) bounces at once to its
        local sender, and never reaches any host.
        """
        sender = unique("someone")
        messageId = unique() + "@client.example"
        _, dataReply = send(self.server, f"{sender}@localhost", ["ivan@null.example.test"], message(messageId=messageId))
        queueId = queueIdOf(dataReply)
        found = waitForBounce(self.server, sender, timeout=10)
        self.assertEqual(len(found), 1, self.server.log()[-3000:])
        _, perRecipient = deliveryStatus(found[0])
        self.assertEqual(len(perRecipient), 1)
        self.assertIn("ivan@null.example.test", perRecipient[0]["Final-Recipient"])
        self.assertTrue(perRecipient[0]["Status"].strip().startswith("5."), perRecipient[0]["Status"])
        self.assertLeavesQueue(queueId)
        self.assertEqual(transactionsFor(self.sink, messageId), [])

    @pytest.mark.rfc("5321", "5.1", "5321-5.1-4")
    def test_implicitMX(self) -> None:
        """
        Mail for a domain with no MX record but an A record goes to that
        address (the implicit MX).
        """
        queueId, found = self.relay("judy@implicit.example.test")
        self.assertEqual([t.accepted for t in found], [["judy@implicit.example.test"]], self.server.log()[-3000:])
        self.assertLeavesQueue(queueId)


class CrashTests(SynchronousTestCase):
    """
    The queue across a kill -9.
    """

    @pytest.mark.rfc("5321", "6.1", "5321-6.1-1")
    def test_killNineLosesAndDuplicatesNothing(self) -> None:
        """
        Twenty messages acknowledged while the next hop is down survive a
        kill -9 of the server: after a restart on the same directory, with
        the next hop back, each reaches it exactly once and the queue ends
        empty.
        """
        directory = makeTemporaryDirectory(self.addCleanup, prefix="smtpmx-sink-")
        port = freePort("127.0.0.3")
        server = RunningServer.start(
            self.addCleanup,
            [
                "--hostname", HOSTNAME,
                "--route", f"remote.example=127.0.0.3:{port}",
                "--retry-schedule", "1",
            ],
        )
        messageIds = [unique() + "@client.example" for _ in range(20)]
        with smtplib.SMTP(server.host, server.port, local_hostname="client.example", timeout=TIMEOUT) as c:
            for i, messageId in enumerate(messageIds):
                c.ehlo_or_helo_if_needed()
                self.assertEqual(c.mail("someone@client.example")[0], 250)
                self.assertEqual(c.rcpt(f"user{i}@remote.example")[0], 250)
                code, text = c.data(message(messageId=messageId))
                self.assertEqual(code, 250, text)
        self.assertEqual(len(queued(server)), 20)
        server.kill9()
        server.launch()
        sink = RunningSink.start(self.addCleanup, directory, "127.0.0.3", port)
        waitUntil(lambda: not queued(server), 30)
        # Anything sent twice would arrive about now.
        time.sleep(1.0)
        received = [messageIdOf(t.data) for t in sink.transactions()]
        self.assertEqual(sorted(set(received)), sorted(messageIds), server.log()[-3000:])
        self.assertEqual(len(received), 20, "some messages were delivered more than once")
        self.assertEqual(queued(server), [])
        self.assertNotIn("Traceback", server.log())


class QueueCommandTests(SynchronousTestCase):
    """
    C{smtpmx-queue} against a running server whose next hop is down and
    whose retry schedule is an hour, so that only a flush explains a
    delivery.
    """

    def test_listFlushDelete(self) -> None:
        """
        While the next hop is down, C{smtpmx-queue list} shows each
        deferred message with its recipient, state, attempts and last
        reply; C{delete ID} takes one out; once the next hop is up,
        C{flush} has the running server deliver the other within a couple
        of seconds, and the deleted one never goes out.
        """
        directory = makeTemporaryDirectory(self.addCleanup, prefix="smtpmx-sink-")
        port = freePort("127.0.0.3")
        server = RunningServer.start(
            self.addCleanup,
            [
                "--hostname", HOSTNAME,
                "--route", f"remote.example=127.0.0.3:{port}",
                "--retry-schedule", "3600",
            ],
        )
        keep, drop = unique() + "@client.example", unique() + "@client.example"
        _, reply = send(server, "someone@client.example", ["Keep.Me@remote.example"], message(messageId=keep))
        keepId = queueIdOf(reply)
        _, reply = send(server, "someone@client.example", ["drop.me@remote.example"], message(messageId=drop))
        dropId = queueIdOf(reply)

        def listed() -> str:
            """
            The output of C{smtpmx-queue list}, which must succeed.
            """
            result = queueCommand(server, "list")
            self.assertEqual(result.returncode, 0, result.stderr)
            return result.stdout

        # The first attempt fails at once; wait until it is recorded.
        waitUntil(lambda: listed().count("1 attempt") >= 2, 10)
        text = listed()
        self.assertIn(keepId, text)
        self.assertIn(dropId, text)
        self.assertIn("<Keep.Me@remote.example>", text)
        self.assertIn("<drop.me@remote.example>", text)
        self.assertIn("pending", text)
        self.assertEqual(text.count("1 attempt"), 2, text)
        self.assertIn("last reply:", text)

        result = queueCommand(server, "delete", dropId)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertNotIn(dropId, listed())
        self.assertNotIn(dropId, queued(server))

        sink = RunningSink.start(self.addCleanup, directory, "127.0.0.3", port)
        time.sleep(0.5)
        self.assertEqual(sink.transactions(), [], "delivered before the flush")
        started = time.monotonic()
        result = queueCommand(server, "flush")
        self.assertEqual(result.returncode, 0, result.stderr)
        found = waitUntil(lambda: transactionsFor(sink, keep), 10)
        self.assertTrue(found, "flush did not make the server try:\n" + server.log()[-3000:])
        self.assertLess(time.monotonic() - started, 3.0)
        self.assertEqual(found[0].accepted, ["Keep.Me@remote.example"])
        self.assertTrue(waitUntil(lambda: not queued(server), 5), queued(server))
        self.assertEqual(transactionsFor(sink, drop), [])
        self.assertIn("The queue is empty.", listed())
        self.assertNotIn("Traceback", server.log())


class PostfixSinkTests(SynchronousTestCase):
    """
    Relaying into Postfix's C{smtp-sink}, a next hop we did not write.
    """

    def test_relayIntoSmtpSink(self) -> None:
        """
        A message routed to Postfix's smtp-sink is accepted by it and
        leaves our queue.
        """
        if not os.path.exists(SMTP_SINK):
            self.skipTest(f"{SMTP_SINK} is not installed")
        directory = makeTemporaryDirectory(self.addCleanup, prefix="smtpmx-smtp-sink-")
        port = freePort("127.0.0.6")
        sink = startSmtpSink(self.addCleanup, directory, "127.0.0.6", port)
        server = RunningServer.start(
            self.addCleanup,
            ["--hostname", HOSTNAME, "--route", f"remote.example=127.0.0.6:{port}", "--retry-schedule", "1"],
        )
        messageId = unique() + "@client.example"
        _, reply = send(server, "someone@client.example", ["kim@remote.example", "Lee@remote.example"], message(messageId=messageId))
        queueId = queueIdOf(reply)
        self.assertTrue(waitUntil(lambda: queueId not in queued(server)), server.log()[-3000:])
        self.assertIn("127.0.0.6", server.log())
        self.assertNotIn("Traceback", server.log())
        # Its counters (-c) end with the message it took.
        counted = waitUntil(lambda: re.findall(r"mesg=(\d+)", sink.output()), 5)
        self.assertTrue(counted and int(counted[-1]) >= 1, sink.output())
