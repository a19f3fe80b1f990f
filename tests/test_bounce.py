"""
Tests for L{smtpmx.bounce}: the delivery status notification sent back to
the sender of a message that could not be relayed.
"""

from __future__ import annotations

import email
import email.policy
from email.message import EmailMessage
from typing import Optional, Sequence

import pytest
from hypothesis import given, settings, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from smtpmx.bounce import BounceFailure, headersOf, makeBounce

ORIGINAL = (
    b"Received: from client.example (client.example [192.0.2.1])\n"
    b"\tby mx.example.org (smtpmx) with ESMTP id 4QX1ab;\n"
    b"\tTue, 14 Nov 2023 22:00:00 +0000\n"
    b"From: Alice <alice@example.org>\n"
    b"To: Bob <Bob@remote.example>, carol@remote.example\n"
    b"Subject: lunch\n"
    b"Message-ID: <1@example.org>\n"
)

NOW = 1700000000.0
ARRIVAL = 1699990000.0

BOB = BounceFailure(
    recipient="Bob@remote.example",
    status="5.1.1",
    remoteMta="mx1.remote.example",
    diagnostic="550 5.1.1 <Bob@remote.example>: no such user",
)

FIXED_LINES = {
    "This is the mail system at host mx.example.org.",
    "I'm sorry to have to inform you that your message could not",
    "be delivered to one or more recipients. Its headers are attached",
    "below.",
    "For further assistance, please send mail to postmaster.",
    "If you do so, please include this problem report. You can",
    "delete your own text from the attached returned message.",
    "                   The mail system",
}

TOP_HEADERS = [
    "From",
    "To",
    "Subject",
    "Date",
    "Message-ID",
    "Auto-Submitted",
    "MIME-Version",
    "Content-Type",
]

PER_MESSAGE_FIELDS = {"Reporting-MTA", "X-Smtpmx-Queue-ID", "Arrival-Date"}

PER_RECIPIENT_FIELDS = {
    "Final-Recipient",
    "Original-Recipient",
    "Action",
    "Status",
    "Remote-MTA",
    "Diagnostic-Code",
}


def bounce(
    failures: Sequence[BounceFailure] = (BOB,),
    sender: str = "alice@example.org",
    originalHeaders: bytes = ORIGINAL,
    arrival: Optional[float] = ARRIVAL,
    boundary: Optional[str] = None,
) -> bytes:
    """
    A bounce from C{mx.example.org} for queue ID C{4QX1ab}, with the test
    defaults for whatever is not given.
    """
    return makeBounce(
        originalHeaders,
        failures,
        sender,
        "mx.example.org",
        "4QX1ab",
        NOW,
        arrival=arrival,
        boundary=boundary,
    )


def parse(message: bytes) -> EmailMessage:
    """
    Parse a bounce the way a mail client would, after the CRLF conversion
    that sending it over SMTP does.
    """
    parsed = email.message_from_bytes(
        message.replace(b"\n", b"\r\n"), policy=email.policy.default
    )
    assert isinstance(parsed, EmailMessage)
    return parsed


def reportBlocks(message: bytes) -> list[EmailMessage]:
    """
    The header blocks of the C{message/delivery-status} part of a bounce:
    the per-message fields first, then one block per recipient.
    """
    parts = list(parse(message).iter_parts())
    return parts[1].get_payload()


class HeadersOfTests(SynchronousTestCase):
    """
    Tests for L{headersOf}.
    """

    def test_stopsAtBlankLine(self) -> None:
        """
        The header section ends at the first blank line, which is left out;
        the body is not included.
        """
        self.assertEqual(
            headersOf(b"A: 1\nB: 2\n\nbody\n\nmore\n"), b"A: 1\nB: 2\n"
        )

    def test_crlf(self) -> None:
        """
        A message with CRLF line endings is split at its first blank line
        too.
        """
        self.assertEqual(headersOf(b"A: 1\r\nB: 2\r\n\r\nbody\r\n"), b"A: 1\r\nB: 2\r\n")

    def test_foldedHeader(self) -> None:
        """
        A folded header's continuation lines are part of the section.
        """
        self.assertEqual(
            headersOf(b"Subject: a\n\tb\nX: y\n\nbody"), b"Subject: a\n\tb\nX: y\n"
        )

    def test_noBody(self) -> None:
        """
        A message with no blank line is all header section.
        """
        self.assertEqual(headersOf(b"A: 1\nB: 2\n"), b"A: 1\nB: 2\n")

    def test_noHeaders(self) -> None:
        """
        A message that starts with a blank line has no headers.
        """
        self.assertEqual(headersOf(b"\nbody\n"), b"")
        self.assertEqual(headersOf(b"\r\nbody\r\n"), b"")

    def test_bounded(self) -> None:
        """
        A header section longer than the limit is cut after its last
        complete line within the limit.
        """
        message = b"".join(b"X-%04d: aaaaaaaaaa\n" % i for i in range(100))
        message += b"\nbody\n"
        result = headersOf(message, limit=100)
        self.assertEqual(result, message[:95])
        self.assertTrue(result.endswith(b"\n"))
        self.assertLessEqual(len(result), 100)

    def test_boundedWithoutBlankLine(self) -> None:
        """
        A huge message without a blank line is cut at the limit too.
        """
        message = b"X: " + b"a" * 10 + b"\n" + b"Y: " + b"b" * 1000
        self.assertEqual(headersOf(message, limit=100), b"X: aaaaaaaaaa\n")

    def test_defaultLimit(self) -> None:
        """
        By default the header section quoted is at most 64 KiB.
        """
        message = b"X: y\n" * 100_000 + b"\nbody"
        self.assertLessEqual(len(headersOf(message)), 64 * 1024)
        self.assertGreater(len(headersOf(message)), 64 * 1024 - 6)


class MakeBounceTests(SynchronousTestCase):
    """
    Tests for L{makeBounce}.
    """

    @pytest.mark.rfc("5321", "4.5.4", "5321-4.5.4-2")
    @pytest.mark.rfc("5321", "4.5.5", "5321-4.5.5-2")
    @pytest.mark.rfc("5321", "6.1", "5321-6.1-3")
    def test_nullSender(self) -> None:
        """
        A message with the null reverse-path is never bounced: asking for a
        bounce to it is an error.
        """
        self.assertRaises(ValueError, bounce, sender="")
        self.assertRaises(ValueError, bounce, sender="<>")

    def test_noFailures(self) -> None:
        """
        A bounce with no failed recipient is an error.
        """
        self.assertRaises(ValueError, bounce, failures=[])

    def test_badBoundary(self) -> None:
        """
        A boundary that MIME does not allow is refused.
        """
        self.assertRaises(ValueError, bounce, boundary="a\nb")
        self.assertRaises(ValueError, bounce, boundary="")
        self.assertRaises(ValueError, bounce, boundary="x" * 71)

    def test_lfLineEndings(self) -> None:
        """
        The bounce uses LF line endings, as Maildir files and queue files
        do, even when the original headers had CRLF.
        """
        message = bounce(originalHeaders=ORIGINAL.replace(b"\n", b"\r\n"))
        self.assertNotIn(b"\r", message)
        self.assertTrue(message.endswith(b"--\n"))

    @pytest.mark.rfc("3464", "2", "3464-2-1")
    def test_multipartReport(self) -> None:
        """
        The bounce is a C{multipart/report} of report type
        C{delivery-status}, with an explanation, the report and the
        original headers, in that order.
        """
        message = parse(bounce())
        self.assertEqual(message.get_content_type(), "multipart/report")
        self.assertEqual(message.get_param("report-type"), "delivery-status")
        self.assertEqual(
            [part.get_content_type() for part in message.iter_parts()],
            ["text/plain", "message/delivery-status", "text/rfc822-headers"],
        )
        self.assertEqual(message.defects, [])

    @pytest.mark.rfc("3464", "2", "3464-2-2")
    @pytest.mark.rfc("5321", "4.4", "5321-4.4-10")
    def test_topHeaders(self) -> None:
        """
        The bounce comes from the mail delivery system of our host, goes to
        the sender, and says that it is automatic (RFC 3834).
        """
        raw = bounce()
        self.assertTrue(
            raw.startswith(
                b"From: Mail Delivery System <MAILER-DAEMON@mx.example.org>\n"
                b"To: <alice@example.org>\n"
            )
        )
        message = parse(raw)
        self.assertEqual(
            message["From"], "Mail Delivery System <MAILER-DAEMON@mx.example.org>"
        )
        self.assertEqual(message["To"].addresses[0].addr_spec, "alice@example.org")
        self.assertEqual(message["Subject"], "Undelivered Mail Returned to Sender")
        self.assertEqual(message["Date"], "Tue, 14 Nov 2023 22:13:20 +0000")
        self.assertEqual(message["Auto-Submitted"], "auto-replied")
        self.assertEqual(message["MIME-Version"], "1.0")
        self.assertEqual(list(message.keys()), TOP_HEADERS)

    def test_messageId(self) -> None:
        """
        The bounce's Message-ID names the queue ID and our host, and
        differs between bounces for one message made at different times.
        """
        first = parse(bounce())["Message-ID"]
        self.assertRegex(first, r"^<[^<>@\s]*4QX1ab[^<>@\s]*@mx\.example\.org>$")
        later = parse(
            makeBounce(ORIGINAL, [BOB], "a@b.example", "mx.example.org", "4QX1ab", NOW + 60)
        )["Message-ID"]
        self.assertNotEqual(first, later)

    @pytest.mark.rfc("3464", "2.2.2")
    def test_perMessageFields(self) -> None:
        """
        The report names our host as the reporting MTA, the queue ID and
        the time the message arrived.
        """
        perMessage = reportBlocks(bounce())[0]
        self.assertEqual(perMessage["Reporting-MTA"], "dns; mx.example.org")
        self.assertEqual(perMessage["X-Smtpmx-Queue-ID"], "4QX1ab")
        self.assertEqual(perMessage["Arrival-Date"], "Tue, 14 Nov 2023 19:26:40 +0000")

    def test_noArrival(self) -> None:
        """
        When the arrival time is unknown the report leaves it out.
        """
        perMessage = reportBlocks(bounce(arrival=None))[0]
        self.assertNotIn("Arrival-Date", perMessage)

    @pytest.mark.rfc("3464", "2.3.2")
    @pytest.mark.rfc("3464", "2.3.3")
    @pytest.mark.rfc("3464", "2.3.4")
    @pytest.mark.rfc("3464", "2.3.5")
    @pytest.mark.rfc("3464", "2.3.6")
    def test_perRecipientFields(self) -> None:
        """
        A recipient refused by a remote server is reported with its address,
        the action, the status, the server's name and its reply.
        """
        blocks = reportBlocks(bounce())
        self.assertEqual(len(blocks), 2)
        recipient = blocks[1]
        self.assertEqual(
            dict(recipient.items()),
            {
                "Final-Recipient": "rfc822; Bob@remote.example",
                "Action": "failed",
                "Status": "5.1.1",
                "Remote-MTA": "dns; mx1.remote.example",
                "Diagnostic-Code": "smtp; 550 5.1.1 <Bob@remote.example>: no such user",
            },
        )

    @pytest.mark.rfc("3464", "2.3.2")
    @pytest.mark.rfc("3464", "2.3.3")
    @pytest.mark.rfc("3464", "2.3.4")
    def test_noRemote(self) -> None:
        """
        A recipient that failed before any server replied (a null MX, an
        expired message) has no Remote-MTA and no Diagnostic-Code.
        """
        failure = BounceFailure("dave@nullmx.example", "5.1.10", None, None)
        recipient = reportBlocks(bounce(failures=[failure]))[1]
        self.assertEqual(
            dict(recipient.items()),
            {
                "Final-Recipient": "rfc822; dave@nullmx.example",
                "Action": "failed",
                "Status": "5.1.10",
            },
        )

    def test_originalRecipient(self) -> None:
        """
        A recipient rewritten by an alias also reports the address first
        given.
        """
        failure = BounceFailure(
            "bob@remote.example", "5.1.1", originalRecipient="info@example.org"
        )
        recipient = reportBlocks(bounce(failures=[failure]))[1]
        self.assertEqual(recipient["Original-Recipient"], "rfc822; info@example.org")
        self.assertEqual(
            list(recipient.keys()),
            ["Final-Recipient", "Original-Recipient", "Action", "Status"],
        )

    @pytest.mark.rfc("3464", "2.3.4")
    def test_expiredStatusKept(self) -> None:
        """
        A message that waited too long is reported failed with the
        transient status it last had, as RFC 3464 allows.
        """
        failure = BounceFailure("bob@remote.example", "4.4.7")
        self.assertEqual(reportBlocks(bounce(failures=[failure]))[1]["Status"], "4.4.7")

    @pytest.mark.rfc("3463", "2", "3463-2-1")
    @pytest.mark.rfc("3464", "2.3.4")
    def test_invalidStatus(self) -> None:
        """
        A status that is not an enhanced status code of a failure is
        reported as C{5.0.0}.
        """
        for status in ["2.0.0", "550", "5.1.1\nX: y", "", "5.x.1"]:
            failure = BounceFailure("bob@remote.example", status)
            self.assertEqual(
                reportBlocks(bounce(failures=[failure]))[1]["Status"], "5.0.0"
            )

    def test_onlyFailedListed(self) -> None:
        """
        Only the recipients given as failed appear in the explanation and
        the report; the one delivered to, named only in the original
        headers, appears in neither.
        """
        failures = [
            BOB,
            BounceFailure("erin@other.example", "5.7.1", "mx.other.example", "554 5.7.1 go away"),
        ]
        message = parse(bounce(failures=failures))
        notification, _, headers = message.iter_parts()
        text = notification.get_content()
        self.assertIn("<Bob@remote.example>: host mx1.remote.example said:", text)
        self.assertIn("<erin@other.example>: host mx.other.example said: 554 5.7.1 go away", text)
        self.assertNotIn("carol", text)
        blocks = reportBlocks(bounce(failures=failures))
        self.assertEqual(
            [block["Final-Recipient"] for block in blocks[1:]],
            ["rfc822; Bob@remote.example", "rfc822; erin@other.example"],
        )
        self.assertNotIn(b"carol", bounce(failures=failures).split(b"text/rfc822-headers")[0])

    def test_originalHeaders(self) -> None:
        """
        The last part holds the original message's headers.
        """
        headers = list(parse(bounce()).iter_parts())[2]
        self.assertEqual(
            headers.get_content().replace("\r\n", "\n"), ORIGINAL.decode("ascii")
        )
        self.assertIn(b"\n\n" + ORIGINAL + b"\n--", bounce())

    def test_originalHeadersFromMessage(self) -> None:
        """
        Given L{headersOf} a stored message, the bounce quotes its headers
        and none of its body.
        """
        stored = ORIGINAL + b"\nsecret body text\n"
        message = bounce(originalHeaders=headersOf(stored))
        self.assertNotIn(b"secret", message)
        self.assertIn(b"Subject: lunch\n", message)

    def test_originalHeadersBlankLines(self) -> None:
        """
        Blank lines and stray CRs in the given headers are dropped, so the
        quoted section cannot end early.
        """
        headers = list(
            parse(bounce(originalHeaders=b"A: 1\r\n\r\nB: 2\rC\n\n")).iter_parts()
        )[2]
        self.assertEqual(headers.get_content().replace("\r\n", "\n"), "A: 1\nB: 2C\n")

    def test_noOriginalHeaders(self) -> None:
        """
        A bounce can be made without the original headers; the part is
        then empty.
        """
        message = parse(bounce(originalHeaders=b""))
        self.assertEqual(len(list(message.iter_parts())), 3)

    def test_eightBitOriginalHeaders(self) -> None:
        """
        Original headers with raw UTF-8 (SMTPUTF8) are quoted as they are,
        in an 8bit part.
        """
        original = "Subject: Grüße\n".encode("utf-8")
        message = bounce(originalHeaders=original)
        self.assertIn(original, message)
        section = message.split(b"text/rfc822-headers\n")[1]
        self.assertTrue(section.startswith(b"Content-Transfer-Encoding: 8bit\n"))

    def test_explicitBoundary(self) -> None:
        """
        A boundary given is used, and the bounce is the same for the same
        inputs: it is a pure function.
        """
        message = bounce(boundary="simple-boundary")
        self.assertEqual(message, bounce(boundary="simple-boundary"))
        self.assertIn(b'boundary="simple-boundary"', message)
        self.assertEqual(message.count(b"\n--simple-boundary"), 4)
        self.assertEqual(bounce(), bounce())

    def test_boundaryInContent(self) -> None:
        """
        When the boundary asked for occurs in the original headers, another
        one is chosen, so the headers cannot end their part.
        """
        original = b"X-Evil: 1\n--evil\nContent-Type: text/html\n\n<b>hi</b>\n--evil--\n"
        message = bounce(originalHeaders=original, boundary="evil")
        parsed = parse(message)
        self.assertNotEqual(parsed.get_boundary(), "evil")
        parts = list(parsed.iter_parts())
        self.assertEqual(len(parts), 3)
        self.assertIn("--evil--", parts[2].get_content())

    def test_utf8Recipient(self) -> None:
        """
        A recipient with non-ASCII characters (SMTPUTF8) is reported with
        the C{utf-8} address type of RFC 6533 in its ASCII form, and named
        in UTF-8 in the explanation.
        """
        failure = BounceFailure("jörg+x=y@exämple.de", "5.1.1")
        message = bounce(failures=[failure])
        recipient = reportBlocks(message)[1]
        self.assertEqual(
            recipient["Final-Recipient"],
            "utf-8; j\\x{F6}rg\\x{2B}x\\x{3D}y@ex\\x{E4}mple.de",
        )
        self.assertIn("<jörg+x=y@exämple.de>: delivery failed".encode("utf-8"), message)

    def test_utf8Sender(self) -> None:
        """
        A bounce to a sender with non-ASCII characters is addressed to it
        in UTF-8 (RFC 6532).
        """
        message = bounce(sender="jörg@exämple.de")
        self.assertIn("\nTo: <jörg@exämple.de>\n".encode("utf-8"), message)

    def test_undecodableAddress(self) -> None:
        """
        An address carrying an undecodable byte (a surrogate escape) is
        reported with a replacement character instead of failing.
        """
        failure = BounceFailure("j\udcffrg@example.de", "5.1.1")
        message = bounce(failures=[failure], sender="a\udcfe@example.org")
        self.assertEqual(
            reportBlocks(message)[1]["Final-Recipient"], "utf-8; j\\x{FFFD}rg@example.de"
        )

    def test_nonAsciiDiagnostic(self) -> None:
        """
        A remote reply with non-ASCII text is written in ASCII in the
        report, which must be ASCII.
        """
        failure = BounceFailure("bob@remote.example", "5.1.1", "mx", "550 Benutzer unbekannt – ö")
        message = bounce(failures=[failure])
        report = message.split(b"message/delivery-status\n\n")[1].split(b"\n--")[0]
        self.assertTrue(report.isascii())
        self.assertEqual(
            reportBlocks(message)[1]["Diagnostic-Code"],
            "smtp; 550 Benutzer unbekannt \\x{2013} \\x{F6}",
        )

    def test_multilineDiagnostic(self) -> None:
        """
        A multiline remote reply is reported on one logical line.
        """
        failure = BounceFailure(
            "bob@remote.example", "5.1.1", "mx", "550-5.1.1 first\r\n550 5.1.1 second"
        )
        recipient = reportBlocks(bounce(failures=[failure]))[1]
        self.assertEqual(
            recipient["Diagnostic-Code"], "smtp; 550-5.1.1 first 550 5.1.1 second"
        )

    def test_longDiagnosticFolded(self) -> None:
        """
        A long remote reply is folded into short lines that unfold to the
        reply.
        """
        reply = "550 5.1.1 " + " ".join(f"word{i}" for i in range(100))
        failure = BounceFailure("bob@remote.example", "5.1.1", "mx", reply)
        message = bounce(failures=[failure])
        self.assertLessEqual(max(len(line) for line in message.split(b"\n")), 78)
        self.assertEqual(
            reportBlocks(message)[1]["Diagnostic-Code"], "smtp; " + reply
        )

    def test_hugeDiagnosticBounded(self) -> None:
        """
        A remote reply of any length is cut, and no line of the bounce
        exceeds the 998 octets RFC 5322 allows.
        """
        failure = BounceFailure("bob@remote.example", "5.1.1", "mx", "5" * 100_000)
        message = bounce(failures=[failure])
        self.assertLess(len(message), 10_000)
        self.assertLessEqual(max(len(line) for line in message.split(b"\n")), 998)

    def test_hugeAddressesBounded(self) -> None:
        """
        Addresses, host names and replies of any length, even made of
        characters that take many octets to write, never make a line longer
        than the 998 octets RFC 5322 allows.
        """
        huge = "\U0001f600" * 5000
        failure = BounceFailure(huge, "5.1.1", huge, huge, huge)
        message = bounce(failures=[failure], sender=huge)
        self.assertLessEqual(max(len(line) for line in message.split(b"\n")), 998)
        checkWellFormed(message)

    def test_headerInjection(self) -> None:
        """
        CR and LF in the recipient, the remote host or its reply cannot add
        a field to the report, a header to the bounce or a MIME part.
        """
        failure = BounceFailure(
            recipient="bob@remote.example\r\nAction: delivered\n\n--x\nContent-Type: text/html",
            status="5.1.1",
            remoteMta="mx.example\r\nX-Injected: 1",
            diagnostic="550 no\r\n\r\nFinal-Recipient: rfc822; mallory@example\n\n--x--",
        )
        message = bounce(
            failures=[failure],
            sender="alice@example.org>\r\nBcc: mallory@example\r\n\r\n",
            boundary="x",
        )
        parsed = parse(message)
        self.assertEqual(list(parsed.keys()), TOP_HEADERS)
        self.assertNotIn("Bcc", parsed)
        self.assertEqual(len(list(parsed.iter_parts())), 3)
        blocks = reportBlocks(message)
        self.assertEqual(len(blocks), 2)
        self.assertEqual(blocks[1]["Action"], "failed")
        self.assertNotIn("X-Injected", blocks[1])
        self.assertEqual(
            list(blocks[1].keys()),
            ["Final-Recipient", "Action", "Status", "Remote-MTA", "Diagnostic-Code"],
        )

    def test_unicodeLineBreaks(self) -> None:
        """
        Unicode line and paragraph separators, NEL and other control
        characters are removed too, so no reader can see a line break.
        """
        failure = BounceFailure(
            "bob\u2028X: 1\u2029Y: 2\x85Z: 3\x0bW: 4\x00@remote.example", "5.1.1"
        )
        message = bounce(failures=[failure])
        text = message.decode("utf-8")
        self.assertEqual(len(text.splitlines()), len(text.split("\n")) - 1)


def checkWellFormed(message: bytes) -> None:
    """
    Check that a bounce has exactly the structure L{makeBounce} writes,
    whatever went into it: the top-level headers, three parts separated by
    the one boundary, a report of the per-message block and one block per
    recipient with only the fields the report may have, and an
    explanation made only of our own lines and of recipient lines.
    """
    assert max(len(line) for line in message.split(b"\n")) <= 998
    parsed = parse(message)
    assert list(parsed.keys()) == TOP_HEADERS, list(parsed.keys())
    boundary = parsed.get_boundary()
    assert boundary is not None
    delimiter = b"--" + boundary.encode("ascii")
    lines = message.split(b"\n")
    assert [line for line in lines if line.startswith(delimiter)] == [
        delimiter,
        delimiter,
        delimiter,
        delimiter + b"--",
    ]
    parts = list(parsed.iter_parts())
    assert [part.get_content_type() for part in parts] == [
        "text/plain",
        "message/delivery-status",
        "text/rfc822-headers",
    ]
    blocks = parts[1].get_payload()
    assert len(blocks) == 2, blocks
    assert set(blocks[0].keys()) <= PER_MESSAGE_FIELDS
    assert set(blocks[1].keys()) <= PER_RECIPIENT_FIELDS, list(blocks[1].keys())
    assert blocks[1]["Action"] == "failed"
    assert len(blocks[1].get_all("Final-Recipient")) == 1

    # The raw report: every line a field of ours or a continuation.
    report = message.split(b"Content-Type: message/delivery-status\n\n")[1]
    report = report.split(b"\n" + delimiter)[0]
    assert report.isascii()
    for line in report.split(b"\n"):
        name = line.split(b":")[0].decode("ascii")
        assert (
            line == b""
            or line.startswith(b" ")
            or name in PER_MESSAGE_FIELDS | PER_RECIPIENT_FIELDS
        ), line

    # The explanation: our lines, recipient lines, indented continuations.
    notification = message.split(b"Content-Transfer-Encoding: ")[1]
    notification = notification.split(b"\n\n", 1)[1].split(b"\n" + delimiter)[0]
    for line in notification.decode("utf-8").split("\n"):
        assert (
            line == ""
            or line in FIXED_LINES
            or line.startswith("<")
            or line.startswith("    ")
        ), line


class InjectionPropertyTests(SynchronousTestCase):
    """
    Property tests: nothing a client or a remote server can say changes the
    structure of a bounce.
    """

    @settings(max_examples=300, deadline=None)
    @given(
        recipient=st.text(),
        diagnostic=st.none() | st.text(),
        remoteMta=st.none() | st.text(),
        original=st.none() | st.text(),
        sender=st.text().filter(lambda s: s.strip() not in ("", "<>")),
        originalHeaders=st.binary(),
        boundary=st.none() | st.sampled_from(["x", "B", "=_smtpmx_0", "--"]),
    )
    def test_anyText(
        self,
        recipient: str,
        diagnostic: Optional[str],
        remoteMta: Optional[str],
        original: Optional[str],
        sender: str,
        originalHeaders: bytes,
        boundary: Optional[str],
    ) -> None:
        """
        Whatever text is in the recipient, the remote host, its reply, the
        sender and the original headers, the bounce has its three parts,
        its headers and a report of one recipient block, and nothing more.
        """
        failure = BounceFailure(recipient, "5.1.1", remoteMta, diagnostic, original)
        try:
            message = bounce(
                failures=[failure],
                sender=sender,
                originalHeaders=originalHeaders,
                boundary=boundary,
            )
        except ValueError:
            # Only a sender that is nothing but control characters is
            # refused: it is the null path after cleaning.
            self.assertEqual(
                "".join(c for c in sender if c.isprintable()).strip(" <>"), ""
            )
            return
        self.assertNotIn(b"\r", message)
        checkWellFormed(message)

    @settings(max_examples=200, deadline=None)
    @given(
        pieces=st.lists(
            st.sampled_from(
                ["\r", "\n", "\r\n", "--x", "--x--", "Action: delivered", "Bcc: m@x",
                 "\u2028", "\x85", " ", "a@b", ":", ";", "é", "\x00"]
            ),
            max_size=30,
        ).map("".join)
    )
    def test_hostilePieces(self, pieces: str) -> None:
        """
        Recipients and replies built from line breaks, delimiters and field
        names cannot break the structure of a bounce either.
        """
        failure = BounceFailure(pieces, "5.1.1", pieces, pieces, pieces)
        message = bounce(
            failures=[failure],
            sender="alice@example.org" + pieces,
            originalHeaders=pieces.encode("utf-8"),
            boundary="x",
        )
        checkWellFormed(message)
