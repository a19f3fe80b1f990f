"""
Verdicts of message filters (C{docs/plugins.rst}): what a filter may say of
a whole message after its data is received, before the reply to DATA.

C{Accept} and C{Junk} may carry header fields for every stored copy;
C{Junk} also files the local copies in the recipient's Junk folder;
C{Reject} refuses the message in the SMTP dialogue.  A filter returns
L{None} for "no opinion".
"""

from __future__ import annotations

import re
from typing import Iterable, Sequence

# RFC 5322 section 2.2: a field name is printable US-ASCII but the colon.
_FIELD_NAME = re.compile(r"[!-9;-~]+\Z")


def checkHeaders(headers: Iterable[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    """
    Header fields given by a filter, checked so that none can break the
    message: a name is an RFC 5322 field name, and a value's line breaks
    are folded into single spaces (no filter can add a line of its own).

    @raise ValueError: a name is not a valid field name.
    """
    checked = []
    for name, value in headers:
        name = str(name)
        if not _FIELD_NAME.match(name):
            raise ValueError(f"not a header field name: {name!r}")
        checked.append((name, " ".join(str(value).split())))
    return tuple(checked)


def formatHeaders(headers: Sequence[tuple[str, str]]) -> bytes:
    """
    Header fields as the lines stored on top of a message (LF line endings,
    as every stored copy has; UTF-8, RFC 6532).
    """
    return b"".join(f"{name}: {value}\n".encode("utf-8") for name, value in headers)


class Accept:
    """
    The message is delivered as usual, with these header fields added.

    @ivar headers: C{(name, value)} pairs added to every copy.
    """

    def __init__(self, headers: Iterable[tuple[str, str]] = ()) -> None:
        self.headers = checkHeaders(headers)

    def __repr__(self) -> str:
        return f"Accept(headers={list(self.headers)!r})"


class Junk:
    """
    The message is delivered, but every local copy goes to the recipient's
    Junk folder (Maildir++ C{.Junk}); header fields are added as for
    L{Accept}.

    @ivar headers: C{(name, value)} pairs added to every copy.
    """

    def __init__(self, headers: Iterable[tuple[str, str]] = ()) -> None:
        self.headers = checkHeaders(headers)

    def __repr__(self) -> str:
        return f"Junk(headers={list(self.headers)!r})"


class Reject:
    """
    The message is refused with a 4xx (try later) or 5xx (never) reply
    after its data, and nothing is stored.
    """

    def __init__(self, code: int, enhanced: str, text: str) -> None:
        if not (400 <= int(code) <= 599):
            raise ValueError(f"a rejection needs a 4xx or 5xx code, not {code!r}")
        if str(enhanced)[:1] != str(code)[:1]:
            raise ValueError(f"enhanced code {enhanced!r} does not match reply code {code}")
        self.code = int(code)
        self.enhanced = str(enhanced)
        # A filter's text goes on the wire: no line breaks in it.
        self.text = " ".join(str(text).split()) or "Message rejected"

    def __repr__(self) -> str:
        return f"Reject({self.code}, {self.enhanced!r}, {self.text!r})"
