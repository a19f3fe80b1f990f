"""
SMTP replies as values, and the table of the standard ones.

Every reply with a 2xx, 4xx or 5xx code carries an enhanced status code
(RFC 3463, RFC 2034 section 3), except the greeting and the EHLO/HELO
answer, which RFC 2034 leaves without one.  The table is described for
users in C{docs/replies.rst}; the session and the protocol build no
standard reply of their own, they take it from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Optional, Sequence


@dataclass(frozen=True)
class Reply:
    """
    One SMTP reply: a code, an optional enhanced status code, and text that
    may span several lines.
    """

    code: int
    enhanced: Optional[str]
    text: str

    def format(self) -> bytes:
        """
        The reply as it goes on the wire, CRLF-terminated, each line of a
        multi-line reply but the last written C{code-}.  Its text is
        printable ASCII whatever it was made from (RFC 5321 section 4.2:
        a textstring is C{%d09 / %d32-126}): a text that echoes what a
        client sent, or that a validator or filter gave, has any other
        character escaped, C{\\x00} or C{\\xe9}, never sent raw.

        Made once per reply: the standard replies are sent again and
        again, so the bytes are kept on the value (not a field: equality
        and hashing do not see them).
        """
        wire = self.__dict__.get("_wire")
        if wire is None:
            wire = self._format()
            object.__setattr__(self, "_wire", wire)
        return wire

    def _format(self) -> bytes:
        """
        The reply as it goes on the wire (L{format}), made anew.
        """
        lines = self.text.split("\n")
        out = []
        for i, line in enumerate(lines):
            if not (line.isascii() and line.isprintable()):
                line = _escape(line)
            sep = "-" if i < len(lines) - 1 else " "
            if self.enhanced:
                line = f"{self.enhanced} {line}" if line else self.enhanced
            out.append(f"{self.code}{sep}{line}".rstrip(" ") + "\r\n")
        return "".join(out).encode("utf-8", "replace")

    @property
    def isPositive(self) -> bool:
        """
        Whether the code is 2xx or 3xx.
        """
        return self.code < 400

    def __str__(self) -> str:
        """
        The reply on one line, its lines joined by C{" / "}: how logs show it.
        """
        return self.format().decode("utf-8").replace("\r\n", " / ").rstrip(" /")


def _escape(line: str) -> str:
    """
    C{line} with every character but printable ASCII as a Python escape
    (C{\\r}, C{\\x00}, C{\\xe9}, C{\\u2028}).
    """
    return "".join(c if " " <= c <= "~" else ascii(c)[1:-1] for c in line)


# The standard replies, keyed by what they answer.
OK = Reply(250, "2.0.0", "Ok")
SENDER_OK = Reply(250, "2.1.0", "Ok")
RECIPIENT_OK = Reply(250, "2.1.5", "Ok")
START_DATA = Reply(354, None, "End data with <CR><LF>.<CR><LF>")
BYE = Reply(221, "2.0.0", "Bye")
VRFY = Reply(252, "2.0.0", "Cannot VRFY user, but will accept message and attempt delivery")
HELP = Reply(
    214,
    "2.0.0",
    "Commands: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT VRFY HELP STARTTLS\n"
    "See RFC 5321",
)
START_TLS = Reply(220, "2.0.0", "Ready to start TLS")

UNKNOWN_COMMAND = Reply(500, "5.5.2", "Error: command not recognized")
LINE_TOO_LONG = Reply(500, "5.5.2", "Error: line too long")
NEED_HELO = Reply(503, "5.5.1", "Error: send HELO/EHLO first")
NESTED_MAIL = Reply(503, "5.5.1", "Error: nested MAIL command")
NEED_MAIL = Reply(503, "5.5.1", "Error: need MAIL command")
TLS_ACTIVE = Reply(503, "5.5.1", "Error: TLS already active")
NO_RECIPIENTS = Reply(554, "5.5.1", "Error: no valid recipients")
UNSUPPORTED_PARAMETER = Reply(555, "5.5.4", "Unsupported parameter")
NEED_SMTPUTF8 = Reply(553, "5.6.7", "Non-ASCII address requires SMTPUTF8")
TOO_BIG = Reply(552, "5.3.4", "Error: message size exceeds fixed limit")
TOO_MANY_RECIPIENTS = Reply(452, "4.5.3", "Error: too many recipients")
TOO_MANY_HOPS = Reply(554, "5.4.6", "Error: too many hops (mail loop?)")
UNKNOWN_USER = Reply(550, "5.1.1", "Error: recipient unknown: user unknown in local recipient table")
UNSAFE_MAILBOX = Reply(550, "5.1.3", "Error: bad destination mailbox name")
RELAY_DENIED = Reply(554, "5.7.1", "Error: relay access denied")
VALIDATOR_FAILED = Reply(451, "4.3.0", "Error: temporary failure checking the recipient, try again later")
STORAGE_FAILED = Reply(451, "4.3.0", "Error: local storage failure, try again later")
INTERNAL_ERROR = Reply(451, "4.3.0", "Error: internal server error, try again later")
# RFC 5321 section 4.2.3 and RFC 3463 section 3.4 (X.3.1, mail system full).
INSUFFICIENT_STORAGE = Reply(452, "4.3.1", "Error: insufficient system storage, try again later")


def syntaxError(text: str) -> Reply:
    """
    A C{501 5.5.4} reply: the command's arguments cannot be parsed.
    """
    return Reply(501, "5.5.4", f"Syntax: {text}")


def queued(queueId: str) -> Reply:
    """
    The reply to a message made durable.
    """
    return Reply(250, "2.0.0", f"Ok: queued as {queueId}")


@lru_cache(maxsize=16)
def greeting(hostname: str) -> Reply:
    """
    The C{220} greeting of a new connection (RFC 5321 section 4.2); no
    enhanced code before EHLO (RFC 2034 section 3).  The same value for
    the same name, so that its wire form is made once (L{Reply.format}).
    """
    return Reply(220, None, f"{hostname} ESMTP smtpmx")


def ehlo(hostname: str, extensions: Sequence[str]) -> Reply:
    """
    The answer to EHLO (RFC 5321 section 4.1.1.1): our name, then one
    extension keyword per line.  The same value for the same name and
    extensions, like L{greeting}.
    """
    return _ehlo(hostname, tuple(extensions))


@lru_cache(maxsize=64)
def _ehlo(hostname: str, extensions: tuple[str, ...]) -> Reply:
    """
    L{ehlo}, remembered.
    """
    return Reply(250, None, "\n".join([hostname, *extensions]))


def helo(hostname: str) -> Reply:
    """
    The answer to HELO (RFC 5321 section 4.1.1.1): our name alone.
    """
    return Reply(250, None, hostname)


def connectionRefused(hostname: str, why: str) -> Reply:
    """
    The C{421 4.7.0} answer to a connection past a connection limit
    (RFC 5321 section 3.8), C{why} saying which.
    """
    return Reply(421, "4.7.0", f"{hostname} Error: {why}")


def timedOut(hostname: str) -> Reply:
    """
    The C{421 4.4.2} sent before closing an idle connection (RFC 5321
    section 4.5.3.2).
    """
    return Reply(421, "4.4.2", f"{hostname} Error: timeout exceeded")


def makingRoom(hostname: str) -> Reply:
    """
    The C{421 4.7.0} sent before closing the session idle the longest,
    to make room for a new connection when the server is full (RFC 5321
    section 3.8: the server may close a session it cannot keep).
    """
    return Reply(421, "4.7.0", f"{hostname} Error: too many connections, closing idle session")


def tooManyErrors(hostname: str) -> Reply:
    """
    The C{421 4.7.0} sent before closing a session that had too many
    commands refused (RFC 5321 section 3.8).
    """
    return Reply(421, "4.7.0", f"{hostname} Error: too many errors")


def spfFailed(domain: str, client: str) -> Reply:
    """
    The C{550 5.7.23} answer to C{MAIL FROM} whose SPF verdict is C{fail}
    under C{--spf-reject} (RFC 7208 section 8.4, RFC 7372 section 3.2):
    C{domain} does not let C{client} send its mail.
    """
    return Reply(
        550, "5.7.23",
        f"Error: SPF check failed: {domain} does not permit [{client}] to send its mail",
    )


def dmarcRejected(domain: str) -> Reply:
    """
    The C{550 5.7.1} answer to the end of the data of a message that fails
    DMARC while its C{From:} domain asks for C{p=reject} (RFC 7489
    section 6.6.3 and 7.3): nothing is stored.
    """
    return Reply(
        550, "5.7.1",
        f"Error: message refused: it fails DMARC and {domain} asks for it to be rejected",
    )


class Refused(Exception):
    """
    A message is refused as a whole after its data (a message filter's
    verdict, RFC 5321 section 4.1.1.4): raised, or failed with, by a
    store's C{finish()} when nothing was stored.  The client hears
    C{reply}.

    @ivar reply: the L{Reply} to the end of the data (4xx or 5xx).
    """

    def __init__(self, reply: Reply) -> None:
        super().__init__(str(reply))
        self.reply = reply
