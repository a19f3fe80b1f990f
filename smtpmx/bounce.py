"""
The bounce: a delivery status notification (RFC 3464) sent to the
reverse-path when a relayed message cannot be delivered (docs/relay.rst).

L{makeBounce} is a pure function of the original headers, the failures, the
sender, our host name, the queue ID and the time; it returns the complete
message with LF line endings, ready to be filed in a Maildir or queued like
any other message.  Sending it, with the null reverse-path, is the caller's
job.

Recipients, remote replies and remote host names come from clients and
remote servers.  Every one of them is reduced to a single line of printable
text before it is written, and the MIME boundary is chosen so that it occurs
nowhere in the content: nothing a client or a remote server says can add a
header or a MIME part to the report.
"""

from __future__ import annotations

import hashlib
import re
import textwrap
import unicodedata
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import format_datetime
from typing import Optional, Sequence

# The first blank line ends the header section (RFC 5322 section 2.1); the
# header section we quote is never longer than this.
HEADERS_LIMIT = 64 * 1024

# RFC 2046 section 5.1.1: a boundary is 1 to 70 of these characters, and
# does not end with a space.
_BOUNDARY_RE = re.compile(r"[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]")

# RFC 3463 section 2: class "." subject "." detail.  A bounce reports
# permanent failures (class 5) and messages that waited too long in the
# queue after transient ones (class 4, as RFC 3464 section 2.3.3 allows).
_STATUS_RE = re.compile(r"[45]\.[0-9]{1,3}\.[0-9]{1,3}")

# RFC 6533 section 3: the characters an utf-8-addr-xtext may carry as they
# are; every other one is written \x{HEX}.
_QCHAR = frozenset(chr(c) for c in range(0x21, 0x7F)) - frozenset("+=\\")

# Every value is cut to a number of octets, so that no line of a bounce can
# exceed the 998 octets of RFC 5322 section 2.1.1, whatever went into it,
# even once its non-ASCII characters are escaped.

# Remote replies are quoted up to this many octets; RFC 5321 section
# 4.5.3.1.5 bounds a reply line at 512 octets.
_DIAGNOSTIC_LIMIT = 900

# Paths are bounded by RFC 5321 section 4.5.3.1.3 at 256 octets; we quote
# a little more rather than cut a legitimate one short.
_ADDRESS_LIMIT = 512

# The escaped (ASCII) form of an address in the report.
_ESCAPED_ADDRESS_LIMIT = 960

# Host names: RFC 1035 section 2.3.4 bounds a name at 255 octets.
_HOST_LIMIT = 255

# The characters a line of a report may never hold: C0 and C1 controls,
# DEL, and the Unicode line and paragraph separators.
_UNSAFE_CATEGORIES = frozenset({"Cc", "Zl", "Zp"})


@dataclass(frozen=True)
class BounceFailure:
    """
    One recipient that could not be delivered, as the relay client saw it.

    @ivar recipient: the forward-path as the client gave it, case kept.
    @ivar status: the enhanced status code (RFC 3463), such as C{5.1.1}.
    @ivar remoteMta: the host name of the server that refused the
        recipient, or L{None} when none was reached.
    @ivar diagnostic: that server's reply, such as C{550 5.1.1 no such
        user}, or L{None} when there was no reply.
    @ivar originalRecipient: the recipient as first given (before an alias
        rewrote it), reported as C{Original-Recipient}, or L{None}.
    """

    recipient: str
    status: str
    remoteMta: Optional[str] = None
    diagnostic: Optional[str] = None
    originalRecipient: Optional[str] = None


def headersOf(message: bytes, limit: int = HEADERS_LIMIT) -> bytes:
    """
    The header section of a stored message: everything before the first
    blank line, without that line.

    Only the first C{limit} octets are looked at; a header section longer
    than that is cut after its last complete line within them, so that a
    hostile message cannot make a bounce arbitrarily large.

    @param message: the stored message, with LF (or CRLF) line endings.
    @param limit: the largest header section returned, in octets.
    @return: the header lines, each ending with its line ending.
    """
    head = message[: limit + 2]
    if head.startswith(b"\n") or head.startswith(b"\r\n"):
        return b""
    ends = [
        index + len(separator) // 2
        for separator in (b"\n\n", b"\r\n\r\n")
        for index in [head.find(separator)]
        if index != -1
    ]
    if ends:
        end = min(ends)
        if end <= limit:
            return head[:end]
    if len(message) <= limit:
        # No blank line: a message that is all headers.
        return message
    lastLine = message.rfind(b"\n", 0, limit)
    return message[: lastLine + 1]


def makeBounce(
    originalHeaders: bytes,
    failures: Sequence[BounceFailure],
    sender: str,
    hostname: str,
    queueId: str,
    now: float,
    arrival: Optional[float] = None,
    boundary: Optional[str] = None,
) -> bytes:
    """
    The delivery status notification telling C{sender} that its message
    could not be delivered to the recipients in C{failures}.

    The message is a C{multipart/report; report-type=delivery-status}
    (RFC 6522) of three parts: an explanation for people, the
    C{message/delivery-status} report for programs (RFC 3464) and the
    original message's headers (C{text/rfc822-headers}).  Only the failed
    recipients are named.

    A recipient with non-ASCII characters (SMTPUTF8) is reported with the
    C{utf-8} address type of RFC 6533, in its ASCII C{\\x{HEX}} form, since
    a C{message/delivery-status} part is ASCII; the explanation and the
    C{To:} header carry it in UTF-8 (RFC 6532).

    @param originalHeaders: the header section of the undelivered message,
        such as L{headersOf} returns.
    @param failures: the recipients that failed, one L{BounceFailure} each.
    @param sender: the reverse-path of the undelivered message, to which
        the bounce is addressed.
    @param hostname: our host name, the C{Reporting-MTA}.
    @param queueId: the queue ID of the undelivered message.
    @param now: the time of the report, in seconds since the epoch.
    @param arrival: when the undelivered message arrived, in seconds since
        the epoch, or L{None} when unknown.
    @param boundary: the MIME boundary to use (for reproducible output);
        when L{None}, or when it occurs in the content, one derived from the
        content is used instead.

    @raise ValueError: when C{sender} is the null reverse-path (a bounce is
        never bounced: RFC 5321 section 6.1), when there is no failure to
        report, or when C{boundary} is not a valid MIME boundary.

    @return: the bounce, headers and body, with LF line endings.
    """
    recipientAddress = _oneLine(sender, _ADDRESS_LIMIT).strip()
    if recipientAddress in ("", "<>"):
        raise ValueError("a message with the null reverse-path is never bounced")
    if not failures:
        raise ValueError("a bounce needs at least one failed recipient")
    if boundary is not None and _BOUNDARY_RE.fullmatch(boundary) is None:
        raise ValueError(f"not a MIME boundary: {boundary!r}")

    host = _hostName(hostname) or "localhost"
    queue = _hostName(queueId) or "unknown"
    date = _date(now)

    notification = _notification(failures, host).encode("utf-8")
    report = _deliveryStatus(failures, host, queue, arrival).encode("ascii")
    quoted = _quotedHeaders(originalHeaders)
    parts = [
        _part(
            [
                b"Content-Description: Notification",
                b"Content-Type: text/plain; charset=utf-8",
                b"Content-Transfer-Encoding: " + _encoding(notification),
            ],
            notification,
        ),
        _part(
            [
                b"Content-Description: Delivery report",
                b"Content-Type: message/delivery-status",
            ],
            report,
        ),
        _part(
            [
                b"Content-Description: Undelivered Message Headers",
                b"Content-Type: text/rfc822-headers",
                b"Content-Transfer-Encoding: " + _encoding(quoted),
            ],
            quoted,
        ),
    ]
    chosen = _chooseBoundary(parts, boundary)

    headers = [
        f"From: Mail Delivery System <MAILER-DAEMON@{host}>",
        f"To: <{recipientAddress}>",
        "Subject: Undelivered Mail Returned to Sender",
        f"Date: {date}",
        f"Message-ID: <{int(now * 1000)}.{queue}.bounce@{host}>",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        "Content-Type: multipart/report; report-type=delivery-status;",
        f'\tboundary="{chosen}"',
    ]
    delimiter = b"--" + chosen.encode("ascii")
    out = [
        "\n".join(headers).encode("utf-8", "surrogateescape"),
        b"\n\nThis is a MIME-encapsulated message.\n",
    ]
    for part in parts:
        out += [b"\n", delimiter, b"\n", part]
    out += [b"\n", delimiter, b"--\n"]
    return b"".join(out)


def _notification(failures: Sequence[BounceFailure], host: str) -> str:
    """
    The explanation for people: what happened, and to which recipients.

    Every line is indented or written by us, so none can begin with a MIME
    delimiter whatever the recipients and replies say.
    """
    lines = [
        f"This is the mail system at host {host}.",
        "",
        "I'm sorry to have to inform you that your message could not",
        "be delivered to one or more recipients. Its headers are attached",
        "below.",
        "",
        "For further assistance, please send mail to postmaster.",
        "",
        "If you do so, please include this problem report. You can",
        "delete your own text from the attached returned message.",
        "",
        "                   The mail system",
    ]
    for failure in failures:
        recipient = _oneLine(failure.recipient, _ADDRESS_LIMIT)
        reason = _reason(failure)
        lines.append("")
        lines.extend(
            textwrap.wrap(
                f"<{recipient}>: {reason}",
                width=76,
                subsequent_indent="    ",
                break_long_words=False,
                break_on_hyphens=False,
            )
        )
    return "\n".join(lines) + "\n"


def _reason(failure: BounceFailure) -> str:
    """
    Why one recipient failed, in a sentence.
    """
    remote = _hostName(failure.remoteMta) if failure.remoteMta else ""
    diagnostic = (
        _oneLine(failure.diagnostic, _DIAGNOSTIC_LIMIT).strip()
        if failure.diagnostic
        else ""
    )
    if remote and diagnostic:
        return f"host {remote} said: {diagnostic}"
    if diagnostic:
        return diagnostic
    if remote:
        return f"delivery to host {remote} failed (status {_status(failure.status)})"
    return f"delivery failed (status {_status(failure.status)})"


def _deliveryStatus(
    failures: Sequence[BounceFailure],
    host: str,
    queue: str,
    arrival: Optional[float],
) -> str:
    """
    The C{message/delivery-status} content (RFC 3464 section 2): the
    per-message fields, then one block of fields per failed recipient, the
    blocks separated by blank lines.  All of it is ASCII.
    """
    blocks = []
    perMessage = [f"Reporting-MTA: dns; {host}", f"X-Smtpmx-Queue-ID: {queue}"]
    if arrival is not None:
        perMessage.append(f"Arrival-Date: {_date(arrival)}")
    blocks.append(perMessage)
    for failure in failures:
        fields = [f"Final-Recipient: {_addressField(failure.recipient)}"]
        if failure.originalRecipient:
            fields.append(
                f"Original-Recipient: {_addressField(failure.originalRecipient)}"
            )
        fields += ["Action: failed", f"Status: {_status(failure.status)}"]
        if failure.remoteMta:
            remote = _hostName(failure.remoteMta)
            if remote:
                fields.append(f"Remote-MTA: dns; {remote}")
        if failure.diagnostic:
            diagnostic = _ascii(
                _oneLine(failure.diagnostic, _DIAGNOSTIC_LIMIT), _DIAGNOSTIC_LIMIT
            ).strip()
            if diagnostic:
                fields.append(_fold(f"Diagnostic-Code: smtp; {diagnostic}"))
        blocks.append(fields)
    return "\n".join("\n".join(block) + "\n" for block in blocks)


def _quotedHeaders(originalHeaders: bytes) -> bytes:
    """
    The original headers for the C{text/rfc822-headers} part: LF line
    endings, no stray CR, no blank line (which would end the section early),
    ending with a line ending.
    """
    text = originalHeaders.replace(b"\r\n", b"\n").replace(b"\r", b"")
    lines = [line for line in text.split(b"\n") if line]
    if not lines:
        return b""
    return b"\n".join(lines) + b"\n"


def _part(headers: list[bytes], content: bytes) -> bytes:
    """
    One body part: its headers, a blank line and its content.  The line
    ending before the next delimiter belongs to the delimiter (RFC 2046
    section 5.1.1), so a content ending with a line ending keeps it.
    """
    return b"\n".join(headers) + b"\n\n" + content


def _encoding(content: bytes) -> bytes:
    """
    The C{Content-Transfer-Encoding} of a part: C{8bit} when the content
    has octets outside ASCII (sent with 8BITMIME, RFC 6152), else C{7bit}.
    """
    return b"7bit" if content.isascii() else b"8bit"


def _chooseBoundary(parts: list[bytes], wanted: Optional[str]) -> str:
    """
    A MIME boundary that occurs nowhere in the parts, so that no content
    can end a part or start a new one (RFC 2046 section 5.1.1).

    The wanted one is used when it is safe; otherwise one is derived from a
    hash of the content, which the content cannot contain.
    """
    content = b"\n".join(parts)
    if wanted is not None and b"--" + wanted.encode("ascii") not in content:
        return wanted
    digest = hashlib.sha256(content)
    counter = 0
    while True:
        candidate = "=_smtpmx_" + digest.hexdigest()[:40]
        if b"--" + candidate.encode("ascii") not in content:
            return candidate
        counter += 1
        digest = hashlib.sha256(content + str(counter).encode("ascii"))


def _date(when: float) -> str:
    """
    An RFC 5322 date, in UTC.
    """
    return format_datetime(datetime.fromtimestamp(when, timezone.utc))


def _status(status: str) -> str:
    """
    The C{Status} of a failed recipient: the given enhanced status code when
    it is one a failure can have, else C{5.0.0} (RFC 3463: other undefined
    status).
    """
    status = status.strip()
    return status if _STATUS_RE.fullmatch(status) else "5.0.0"


def _oneLine(text: str, limit: int) -> str:
    """
    Remote or client text reduced to one printable line: every run of
    control characters and line separators becomes one space, an
    undecodable byte (a surrogate escape) becomes U+FFFD, and the result is
    cut after at most C{limit} octets of UTF-8, between characters.
    """
    out = []
    size = 0
    previousSpace = False
    for character in text:
        category = unicodedata.category(character)
        if category in _UNSAFE_CATEGORIES or character == "\t":
            if previousSpace:
                continue
            character = " "
            previousSpace = True
        else:
            previousSpace = False
            if category == "Cs":
                character = "\ufffd"
        size += len(character.encode("utf-8"))
        if size > limit:
            break
        out.append(character)
    return "".join(out)


def _ascii(text: str, limit: int, keep: frozenset[str] | None = None) -> str:
    """
    Text made ASCII for a C{message/delivery-status} field: each character
    not kept written as C{\\x{HEX}}, the notation of RFC 6533, the result
    cut between characters after at most C{limit} octets.

    @param keep: the characters written as they are; by default every ASCII
        character.
    """
    out = []
    size = 0
    for character in text:
        kept = character.isascii() if keep is None else character in keep
        if kept:
            piece = character
        else:
            piece = f"\\x{{{ord(character):02X}}}"
        size += len(piece)
        if size > limit:
            break
        out.append(piece)
    return "".join(out)


def _hostName(text: Optional[str]) -> str:
    """
    A host name, or a queue ID, for a C{dns;} field, a header or a
    Message-ID: one ASCII word with no space, angle bracket or semicolon.
    """
    if not text:
        return ""
    word = _ascii(_oneLine(text, _HOST_LIMIT), _HOST_LIMIT)
    return "".join(c for c in word if c.isprintable() and c not in " <>;\"")


def _addressField(address: str) -> str:
    """
    The value of a C{Final-Recipient} or C{Original-Recipient} field: an
    ASCII address as C{rfc822; local@domain} (RFC 3464 section 2.3.2), any
    other as C{utf-8; ...} in the utf-8-addr-xtext form (RFC 6533
    section 3), which is ASCII with no space.
    """
    line = _oneLine(address, _ADDRESS_LIMIT).strip()
    if line.isascii():
        return f"rfc822; {line}"
    return "utf-8; " + _ascii(line, _ESCAPED_ADDRESS_LIMIT, _QCHAR)


def _fold(field: str, width: int = 78) -> str:
    """
    A long field folded at its spaces (RFC 5322 section 2.2.3): each
    continuation line starts with the one space the fold replaced, so the
    field unfolds to what it was, and a continuation can never be read as a
    field of its own.
    """
    if len(field) <= width:
        return field
    lines = textwrap.wrap(
        field,
        width=width,
        subsequent_indent=" ",
        break_long_words=False,
        break_on_hyphens=False,
    )
    return "\n".join(lines)
