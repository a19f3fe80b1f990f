"""
The trace headers prepended to stored messages (RFC 5321 section 4.4;
the Maildir file format of docs/storage.rst), as small pure functions
returning bytes with an LF line ending, the way the Maildir file is
written.

Values come from the envelope, which the client chose: any CR or LF in
them is dropped, so that no value can end its header early and smuggle in
another one.
"""

from __future__ import annotations

from datetime import datetime, timezone
from email.utils import format_datetime
from functools import lru_cache
from typing import Optional

from smtpmx.address import Address


def _headerValue(text: str) -> bytes:
    """
    Encode a header value, without any CR or LF.

    Addresses may be UTF-8 (SMTPUTF8, RFC 6531) and may carry undecodable
    bytes as surrogate escapes; both go back out as the bytes that came in.
    """
    return text.encode("utf-8", "surrogateescape").replace(b"\r", b"").replace(b"\n", b"")


def returnPath(reversePath: Optional[Address]) -> bytes:
    """
    The C{Return-Path:} header (RFC 5321 section 4.4): the reverse-path in
    angle brackets, C{<>} for the null path.

    @param reversePath: the sender, or L{None} for the null path.
    """
    if reversePath is None:
        return b"Return-Path: <>\n"
    return b"Return-Path: <" + _headerValue(str(reversePath)) + b">\n"


def deliveredTo(address: Address) -> bytes:
    """
    The C{Delivered-To:} header: the recipient exactly as the client gave
    it, case kept, without angle brackets.

    @param address: the forward-path.
    """
    return b"Delivered-To: " + _headerValue(str(address)) + b"\n"


def received(
    heloName: str,
    clientHost: str,
    hostname: str,
    protocol: str,
    queueId: str,
    when: float,
    tls: Optional[str] = None,
    recipient: Optional[Address] = None,
) -> bytes:
    """
    Our C{Received:} trace header (RFC 5321 section 4.4), folded over a few
    lines the way Postfix writes it.

    @param protocol: C{SMTP}, C{ESMTP}, C{SMTPS} or C{ESMTPS} (RFC 3848).
    @param when: the time of receipt, in seconds since the epoch.
    @param tls: the TLS version and cipher, when the session used TLS.
    @param recipient: the one recipient, named in a C{for} clause; none
        when the message has several, so as not to disclose them.
    """
    literal = f"[IPv6:{clientHost}]" if ":" in clientHost else f"[{clientHost}]"
    lines = [f"Received: from {_printable(heloName)} ({literal})"]
    if tls is not None:
        lines.append(f"\t(using {_printable(tls)})")
    lines.append(f"\tby {hostname} (smtpmx) with {protocol} id {queueId}")
    date = _date(int(when))
    if recipient is not None:
        lines.append(f"\tfor <{_printable(str(recipient))}>; {date}")
    else:
        lines[-1] += ";"
        lines.append(f"\t{date}")
    return ("\n".join(lines) + "\n").encode("utf-8", "surrogateescape")


@lru_cache(maxsize=4)
def _date(when: int) -> str:
    """
    The RFC 5322 date of a second, cached: many messages share one.
    """
    return format_datetime(datetime.fromtimestamp(when, timezone.utc))


def _printable(text: str) -> str:
    """
    Client-given text made safe inside a header: one line, printable.
    """
    if text.isprintable():
        return text[:255]
    return "".join(c if c.isprintable() else "?" for c in text)[:255]
