"""
SMTP dialogues written as data, run by every harness: the session alone
(tests/test_session.py), the protocol in memory (tests/test_server.py) and a
real server over a socket (tests/test_dialogues_e2e.py).

A L{Dialogue} is a list of steps, each the client's line (or several lines
sent in one write: pipelining, RFC 2920) and the reply code (or codes)
expected, in the manner of chasquid's dialog scripts.  An expected code is
a prefix of the last line of the reply: C{"250"}, C{"503 5.5.1"}.  Every
dialogue begins after the C{220} greeting, which each runner checks.
The replies are described in C{docs/replies.rst}.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Union

import pytest

# The configuration every runner gives its server, as L{Config} fields...
CONFIG = dict(
    hostname="mx.example.org",
    domains=("example.org",),
    maxMessageSize=2000,
    maxRecipients=2,
)
# ... and as smtpmx options, for a real server (with the C{any} validator,
# which accepts alice and bob as the in-memory harness does).
OPTIONS = (
    "--hostname", "mx.example.org",
    "--domain", "example.org",
    "--validator", "any",
    "--max-message-size", "2000",
    "--max-recipients", "2",
)

Lines = Union[str, Sequence[str]]
Codes = Union[str, Sequence[str]]


@dataclass(frozen=True)
class Dialogue:
    """
    One scripted session.

    @ivar name: the test ID.
    @ivar doc: what the dialogue shows.
    @ivar steps: pairs of (what the client sends, the codes expected): a
        line, or a tuple of lines sent in one write, without line endings
        (a message's text in one step may hold CRLFs); one expected code,
        or a tuple of them, one per reply.
    @ivar rfc: the arguments of the C{rfc} markers of the dialogue's
        tests: (RFC number, section, the ids of the requirements of
        C{docs/rfc-requirements.toml} it checks), the ids left out only
        for a section of a single requirement.  C{docs/rfc_conformance.py}
        reads them from this file's source, so they are literals.
    @ivar closes: whether the server closes the connection after the
        last step.
    """

    name: str
    doc: str
    steps: tuple[tuple[Lines, Codes], ...]
    rfc: tuple[tuple[str, ...], ...] = ()
    closes: bool = False

    def exchanges(self) -> list[tuple[bytes, list[str]]]:
        """
        The steps as the bytes of one write each and the list of codes
        expected for it.
        """
        result = []
        for lines, codes in self.steps:
            if isinstance(lines, str):
                lines = (lines,)
            if isinstance(codes, str):
                codes = (codes,)
            data = "".join(line + "\r\n" for line in lines).encode("utf-8")
            result.append((data, list(codes)))
        return result


def check(dialogue: Dialogue, step: int, expected: Sequence[str], got: Sequence[str]) -> None:
    """
    Fail unless each reply line in C{got} starts with its code in
    C{expected}.

    @param got: the last line of each reply to step C{step}.
    """
    ok = len(got) == len(expected) and all(g.startswith(e) for g, e in zip(got, expected))
    assert ok, f"{dialogue.name}, step {step + 1}: expected {list(expected)}, got {list(got)}"


EHLO = ("EHLO client.example", "250")
FROM = ("MAIL FROM:<sender@remote.example>", "250 2.1.0")
TO_ALICE = ("RCPT TO:<alice@example.org>", "250 2.1.5")
MESSAGE = ("Subject: dialogue\r\n\r\nHello.\r\n.", "250 2.0.0")
BIG_MESSAGE = ("Subject: big\r\n\r\n" + ("x" * 78 + "\r\n") * 40 + ".", "552 5.3.4")

DIALOGUES = (
    Dialogue(
        "ehloTransaction",
        "EHLO, MAIL, RCPT, DATA, the message, QUIT: a whole session.",
        (EHLO, FROM, TO_ALICE, ("DATA", "354"), MESSAGE, ("QUIT", "221 2.0.0")),
        rfc=(
            ("5321", "4.5.1", "5321-4.5.1-1"),
            ("5321", "4.1.1.4", "5321-4.1.1.4-3"),
            ("5321", "4.1.1.10", "5321-4.1.1.10-1"),
        ),
        closes=True,
    ),
    Dialogue(
        "heloTransaction",
        "HELO greets without extensions and a transaction can follow.",
        (("HELO client.example", "250"), FROM, TO_ALICE, ("DATA", "354"), MESSAGE),
        rfc=(("5321", "4.1.1.1", "5321-4.1.1.1-1"), ("5321", "4.5.1", "5321-4.5.1-1")),
    ),
    Dialogue(
        "greetingNeedsName",
        "EHLO and HELO without a name are a syntax error.",
        (("EHLO", "501 5.5.4"), ("HELO", "501 5.5.4"), EHLO),
        rfc=(("5321", "4.1.4", "5321-4.1.4-3"), ("3463", "3")),
    ),
    Dialogue(
        "mailBeforeHelo",
        "MAIL before EHLO/HELO is out of sequence.",
        (("MAIL FROM:<a@remote.example>", "503 5.5.1"), EHLO, FROM),
        rfc=(("5321", "4.1.4", "5321-4.1.4-8"), ("3463", "3")),
    ),
    Dialogue(
        "commandOrder",
        "RCPT before MAIL, DATA before MAIL and a nested MAIL are out of sequence.",
        (
            EHLO,
            ("RCPT TO:<alice@example.org>", "503 5.5.1"),
            ("DATA", "503 5.5.1"),
            FROM,
            ("MAIL FROM:<other@remote.example>", "503 5.5.1"),
            TO_ALICE,
        ),
        rfc=(
            ("5321", "4.1.4", "5321-4.1.4-8"),
            ("5321", "4.1.1.3", "5321-4.1.1.3-3"),
            ("3463", "3"),
        ),
    ),
    Dialogue(
        "dataWithoutRecipients",
        "DATA when no recipient was accepted gets 554 5.5.1.",
        (EHLO, FROM, ("DATA", "554 5.5.1"), ("RSET", "250 2.0.0")),
        rfc=(("2920", "3.2", "2920-3.2-2"), ("5321", "4.1.1.5", "5321-4.1.1.5-2")),
    ),
    Dialogue(
        "unknownCommand",
        "An unknown command gets 500 5.5.2, and the session goes on.",
        (EHLO, ("FROB", "500 5.5.2"), ("NOOP", "250 2.0.0")),
        rfc=(("5321", "4.2.4", "5321-4.2.4-1"), ("5321", "3.8", "5321-3.8-1"), ("3463", "3")),
    ),
    Dialogue(
        "badArguments",
        "Arguments that cannot be parsed get 501 5.5.4.",
        (
            EHLO,
            ("MAIL FROM:sender", "501 5.5.4"),
            ("MAIL TO:<a@remote.example>", "501 5.5.4"),
            ("RSET now", "501 5.5.4"),
            ("VRFY", "501 5.5.4"),
            FROM,
            ("RCPT TO:<>", "501 5.5.4"),
            ("DATA now", "501 5.5.4"),
        ),
        rfc=(("5321", "4.1.4", "5321-4.1.4-7"), ("3463", "3")),
    ),
    Dialogue(
        "noopRsetVrfyHelp",
        "NOOP and RSET answer 250; VRFY 252 without disclosing; HELP 214.",
        (
            EHLO,
            ("NOOP", "250 2.0.0"),
            ("NOOP whatever", "250 2.0.0"),
            FROM,
            ("RSET", "250 2.0.0"),
            ("RCPT TO:<alice@example.org>", "503 5.5.1"),
            ("VRFY alice", "252 2.0.0"),
            ("HELP", "214 2.0.0"),
        ),
        rfc=(
            ("5321", "4.1.1.9", "5321-4.1.1.9-1"),
            ("5321", "4.1.1.5", "5321-4.1.1.5-1", "5321-4.1.1.5-2", "5321-4.1.1.5-3"),
            ("5321", "3.5.3", "5321-3.5.3-1", "5321-3.5.3-2"),
            ("5321", "4.1.1.8", "5321-4.1.1.8-1"),
            ("5321", "4.5.1", "5321-4.5.1-1"),
        ),
    ),
    Dialogue(
        "quit",
        "QUIT gets 221 and the server closes the connection.",
        (EHLO, ("QUIT", "221 2.0.0")),
        rfc=(("5321", "4.1.1.10", "5321-4.1.1.10-1"),),
        closes=True,
    ),
    Dialogue(
        "nullPath",
        "The null reverse-path <> is a valid sender (bounces).",
        (EHLO, ("MAIL FROM:<>", "250 2.1.0"), TO_ALICE, ("DATA", "354"), MESSAGE),
    ),
    Dialogue(
        "sourceRoute",
        "A source route is accepted and ignored.",
        (
            EHLO,
            ("MAIL FROM:<@relay.example:sender@remote.example>", "250 2.1.0"),
            ("RCPT TO:<@mx.example.org:alice@example.org>", "250 2.1.5"),
        ),
        rfc=(("5321", "4.1.1.3", "5321-4.1.1.3-1"), ("5321", "C", "5321-C-1")),
    ),
    Dialogue(
        "sizeDeclared",
        "A SIZE within the limit is accepted, one above it gets 552 5.3.4.",
        (
            EHLO,
            ("MAIL FROM:<sender@remote.example> SIZE=3000", "552 5.3.4"),
            ("MAIL FROM:<sender@remote.example> SIZE=1000", "250 2.1.0"),
        ),
        rfc=(("1870", "6.1", "1870-6.1-1"), ("3463", "3")),
    ),
    Dialogue(
        "sizeExceeded",
        "A message larger than the limit gets 552 5.3.4 at its end; the session goes on.",
        (EHLO, FROM, TO_ALICE, ("DATA", "354"), BIG_MESSAGE, ("NOOP", "250 2.0.0")),
        rfc=(("1870", "6.3", "1870-6.3-1"), ("3463", "3")),
    ),
    Dialogue(
        "tooManyRecipients",
        "Recipients past the limit get 452 4.5.3; the accepted ones get the message.",
        (
            EHLO,
            FROM,
            TO_ALICE,
            ("RCPT TO:<bob@example.org>", "250 2.1.5"),
            ("RCPT TO:<alice@example.org>", "452 4.5.3"),
            ("DATA", "354"),
            MESSAGE,
        ),
        rfc=(
            ("5321", "4.5.3.1.8", "5321-4.5.3.1.8-2"),
            ("5321", "4.5.3.1.9", "5321-4.5.3.1.9-1"),
            ("3463", "3"),
        ),
    ),
    Dialogue(
        "tooManyErrors",
        "The 20th refused command is followed by 421 4.7.0 and the close.",
        (EHLO,)
        + (("FROB", "500 5.5.2"),) * 19
        + ((("FROB", "NOOP"), ("500 5.5.2", "421 4.7.0")),),
        rfc=(("5321", "3.8", "5321-3.8-2"),),
        closes=True,
    ),
    Dialogue(
        "pipelining",
        "A pipelined transaction is answered in order, each reply after its command.",
        (
            EHLO,
            (
                (
                    "MAIL FROM:<sender@remote.example>",
                    "RCPT TO:<alice@example.org>",
                    "RCPT TO:<nobody@remote.invalid> NOTIFY=NEVER",
                    "RCPT TO:<bob@example.org>",
                    "DATA",
                ),
                ("250 2.1.0", "250 2.1.5", "555 5.5.4", "250 2.1.5", "354"),
            ),
            (
                ("Subject: pipelined\r\n\r\nHello.\r\n.", "NOOP", "QUIT"),
                ("250 2.0.0", "250 2.0.0", "221 2.0.0"),
            ),
        ),
        rfc=(
            ("2920", "3.2", "2920-3.2-1", "2920-3.2-5"),
            ("5321", "4.1.1.11", "5321-4.1.1.11-1"),
        ),
        closes=True,
    ),
    Dialogue(
        "smtputf8",
        "A non-ASCII address needs SMTPUTF8 on MAIL.",
        (
            EHLO,
            ("MAIL FROM:<jörg@remote.example>", "553 5.6.7"),
            ("MAIL FROM:<jörg@remote.example> SMTPUTF8", "250 2.1.0"),
        ),
        rfc=(("6531", "3.5", "6531-3.5-1"), ("6531", "3.3", "6531-3.3-1")),
    ),
    Dialogue(
        "eightBitMime",
        "BODY=8BITMIME and BODY=7BIT are accepted; another BODY is a syntax error.",
        (
            EHLO,
            ("MAIL FROM:<sender@remote.example> BODY=BINARYMIME", "501 5.5.4"),
            ("MAIL FROM:<sender@remote.example> BODY=8BITMIME", "250 2.1.0"),
            ("RSET", "250 2.0.0"),
            ("MAIL FROM:<sender@remote.example> BODY=7BIT", "250 2.1.0"),
        ),
        rfc=(
            ("6152", "2", "6152-2-1"),
            ("5321", "2.4", "5321-2.4-2"),
            ("5321", "4.1.4", "5321-4.1.4-7"),
        ),
    ),
)


def parameters() -> list:
    """
    The dialogues as pytest parameters, each with its C{rfc} markers and
    its name as the test ID.
    """
    return [
        pytest.param(d, marks=[pytest.mark.rfc(*r) for r in d.rfc], id=d.name)
        for d in DIALOGUES
    ]
