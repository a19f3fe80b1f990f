"""
Protocol fuzzing with hypothesis: the server protocol of L{smtpmx.server}
over a C{StringTransport}, and the L{smtpmx.session.Session} under it,
fed random and mutated command streams -- random chunking, NUL, invalid
UTF-8, bare CR, overlong lines, garbage pipelined into transactions.

Whatever comes in:

  - every byte written back is a well-formed SMTP reply (RFC 5321
    section 4.2: C{Reply-code [SP textstring] CRLF}, the lines of a
    multi-line reply all with the same code);
  - nothing raises and nothing is logged as a failure or an error;
  - a message is stored only when a whole valid transaction was sent,
    and then byte for byte (after dot-unstuffing, RFC 5321 section
    4.5.2); one that is cut off is thrown away.

The example counts are set per test (C{settings(max_examples=...)}),
sized to a few seconds each.
"""

from __future__ import annotations

import re
from typing import Optional

from hypothesis import HealthCheck, given, settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.task import deferLater
from twisted.logger import LogLevel, capturedLogs
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from smtpmx.session import MAX_BAD_COMMANDS, MAX_COMMAND_LINE, Action, Answer
from smtpmx.validation import Accept
from tests.serverhelpers import Server
from tests.test_session import SessionDriver

# Example counts (each test says how long it takes at this count).
ARBITRARY_EXAMPLES = 1000
STREAM_EXAMPLES = 400
SESSION_EXAMPLES = 200

# RFC 5321 section 4.2: Reply-code is %x32-35 %x30-35 %x30-39, textstring
# is 1*(%d09 / %d32-126).
REPLY_LINE = re.compile(rb"([2-5][0-5][0-9])(?:(-)([\t\x20-\x7e]*)|( )([\t\x20-\x7e]+))?\Z")

# The client is not in a relay network: a remote recipient is refused.
CLIENT = "192.0.2.1"
ACCEPTED = ("alice@example.org", "bob@example.org")
REFUSED = {"nobody@example.org": 550, "someone@elsewhere.example": 554}

NOT_LF = st.binary(max_size=100).map(lambda b: b.replace(b"\n", b""))


# Commands a client sends, for L{mutated} to spoil.
COMMANDS = (
    b"EHLO client.example", b"HELO client.example", b"MAIL FROM:<sender@remote.example>",
    b"MAIL FROM:<> SIZE=100 BODY=8BITMIME SMTPUTF8", b"RCPT TO:<alice@example.org>",
    b'RCPT TO:<"quoted local"@example.org>', b"RCPT TO:<@route.example:bob@example.org>",
    b"RCPT TO:<postmaster>", b"DATA", b"RSET", b"NOOP", b"VRFY bob", b"HELP", b"STARTTLS", b"QUIT",
)


@st.composite
def mutated(draw) -> bytes:
    """
    A command line spoiled: random bytes or characters (in UTF-8) put in
    at a random place, a
    stretch cut out, or random parameters added; CRLF, bare LF or bare CR
    after it.
    """
    line = draw(st.sampled_from(COMMANDS))
    how = draw(st.sampled_from(["insert", "cut", "parameters"]))
    at = draw(st.integers(0, len(line)))
    junk = draw(st.one_of(
        st.binary(min_size=1, max_size=20),
        st.text(min_size=1, max_size=20).map(lambda t: t.encode("utf-8")),
    ))
    if how == "insert":
        line = line[:at] + junk + line[at:]
    elif how == "cut":
        line = line[:at] + line[at + draw(st.integers(1, 10)):]
    else:
        line += b" " + junk + draw(st.sampled_from([b"", b"=", b"=1", b" " + junk]))
    return line + draw(st.sampled_from([b"\r\n", b"\n", b"\r", b""]))


def parseReplies(output: bytes) -> list[tuple[int, list[bytes]]]:
    """
    Split what the server wrote into replies, checking each line against
    the grammar of RFC 5321 section 4.2.

    @return: each reply's code and its lines' texts.
    @raise AssertionError: anything that is not a well-formed reply.
    """
    if not output:
        return []
    assert output.endswith(b"\r\n"), output[-200:]
    replies: list[tuple[int, list[bytes]]] = []
    current: Optional[tuple[int, list[bytes]]] = None
    for line in output[:-2].split(b"\r\n"):
        m = REPLY_LINE.match(line)
        assert m is not None, f"not an SMTP reply line: {line!r}"
        code, separator = int(m.group(1)), m.group(2) or m.group(4)
        text = m.group(3) or m.group(5) or b""
        if current is None:
            current = (code, [])
        assert current[0] == code, f"the lines of one reply have different codes: {current!r}, {line!r}"
        current[1].append(text)
        if separator != b"-":
            replies.append(current)
            current = None
    assert current is None, f"a multi-line reply was never finished: {current!r}"
    return replies


def problems(events) -> list[str]:
    """
    The log events that are failures or errors, as text, for an assertion.
    """
    return [
        str(e.get("log_failure") or e.get("log_format"))
        for e in events
        if "log_failure" in e or e.get("log_level") in (LogLevel.error, LogLevel.critical)
    ]


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    """
    C{data} cut at the offsets C{cuts} (any order, any range).
    """
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:])]


def stuff(lines: list[bytes]) -> bytes:
    """
    The DATA phase a client sends for C{lines} (none holding LF): each
    line ended by CRLF, a leading dot doubled, and the final dot line.
    """
    return b"".join((b"." + line if line.startswith(b".") else line) + b"\r\n" for line in lines) + b".\r\n"


def stored(lines: list[bytes]) -> bytes:
    """
    The message the store gets for C{lines} (RFC 5321 section 2.3.8 and
    C{docs/storage.rst}): LF line endings, a bare CR a line ending too.
    """
    return b"".join(line.replace(b"\r", b"\n") + b"\n" for line in lines)


def lost(server: Server) -> None:
    """
    The client goes away.
    """
    server.protocol.connectionLost(Failure(ConnectionDone()))


class Stream:
    """
    A command stream being built, with the reply code each line must get,
    in order, and the messages that must be stored.
    """

    def __init__(self) -> None:
        """
        Nothing sent yet: the greeting is expected.
        """
        self.data = b""
        self.codes = [220]
        self.messages: list[tuple[list[str], bytes]] = []
        self.errors = 0

    def send(self, line: bytes, code: int) -> None:
        """
        One command line and the code of its reply.
        """
        self.data += line + b"\r\n"
        self.codes.append(code)
        if code in (500, 501, 503):
            self.errors += 1


# Lines that are no command, with the code each gets.
@st.composite
def noise(draw) -> tuple[bytes, int]:
    """
    A line of garbage that changes no state: unknown verbs with any bytes
    after them (NUL, bare CR, invalid UTF-8), overlong lines, and the
    harmless commands.
    """
    kind = draw(st.sampled_from(["unknown", "overlong", "harmless"]))
    if kind == "harmless":
        return draw(st.sampled_from([(b"NOOP", 250), (b"HELP", 214), (b"VRFY alice", 252), (b"NOOP \x00\xff", 501)]))
    if kind == "overlong":
        size = draw(st.integers(MAX_COMMAND_LINE + 1, 4000))
        fill = draw(st.sampled_from([b"a", b"\x00", b"\r", b"\xff", b". "]))
        return b"MAIL FROM:<" + fill * size, 500
    line = b"X" + draw(NOT_LF)
    if len(line) > MAX_COMMAND_LINE:
        return line, 500
    try:
        line.decode("utf-8")
    except UnicodeDecodeError:
        return line, 501
    return line, 500


@st.composite
def streams(draw) -> Stream:
    """
    A greeting, then transactions -- complete, abandoned with RSET, or
    whose recipients are all refused -- with garbage between and inside
    them, and at the end perhaps QUIT, or a message cut off in its DATA
    phase.
    """
    s = Stream()
    s.send(draw(st.sampled_from([b"EHLO client.example", b"HELO client.example", b"ehlo x"])), 250)
    budget = MAX_BAD_COMMANDS - 1

    def garbage() -> None:
        """
        Perhaps a line of garbage or two, within the bad-command limit.
        """
        for line, code in draw(st.lists(noise(), max_size=2)):
            if s.errors + (code in (500, 501, 503)) <= budget:
                s.send(line, code)

    for _ in range(draw(st.integers(0, 4))):
        garbage()
        sender = draw(st.sampled_from([b"<>", b"<sender@remote.example>", b"<Odd.Sender+tag@Remote.Example> BODY=8BITMIME"]))
        s.send(b"MAIL FROM:" + sender, 250)
        garbage()
        recipients = draw(st.lists(st.sampled_from(ACCEPTED + tuple(REFUSED)), min_size=1, max_size=4))
        accepted = []
        for recipient in recipients:
            if recipient in ACCEPTED:
                accepted.append(recipient)
            s.send(b"RCPT TO:<" + recipient.encode() + b">", REFUSED.get(recipient, 250))
            garbage()
        if draw(st.booleans()) and accepted:
            s.send(b"RSET", 250)
            continue
        if not accepted:
            s.send(b"DATA", 554)
            s.send(b"RSET", 250)
            continue
        s.send(b"DATA", 354)
        lines = draw(st.lists(NOT_LF, max_size=12))
        s.data += stuff(lines)
        s.codes.append(250)
        s.messages.append((accepted, stored(lines)))
    garbage()
    end = draw(st.sampled_from(["quit", "nothing", "cut"]))
    if end == "quit":
        s.send(b"QUIT", 221)
    elif end == "cut":
        s.send(b"MAIL FROM:<sender@remote.example>", 250)
        s.send(b"RCPT TO:<alice@example.org>", 250)
        s.send(b"DATA", 354)
        line = draw(NOT_LF)
        if line.startswith(b"."):
            line = b"." + line  # dot-stuffed: a line "." would end the data
        s.data += b"Subject: cut off\r\n\r\n" + line + draw(st.sampled_from([b"", b"\r\n", b"\r\n.", b"\r\n.\r"]))
    return s


class ProtocolFuzzTests(SynchronousTestCase):
    """
    The protocol, in memory, fed bytes a client could send.
    """

    def feed(
        self, server: Server, chunks: list[bytes], step: float = 0, idle: bool = True
    ) -> list[tuple[int, list[bytes]]]:
        """
        Feed C{chunks} one write at a time, C{step} seconds apart, then
        (if C{idle}) let the idle timer run out, and let the client go;
        return the replies, checked for form, and check that nothing was
        logged as a failure or an error.
        """
        with capturedLogs() as events:
            for chunk in chunks:
                server.protocol.dataReceived(chunk)
                server.clock.advance(step)
            # Late verdicts held the rest back: a second for each line.
            for _ in range(sum(chunk.count(b"\n") for chunk in chunks) if step else 0):
                server.clock.advance(step)
            if idle:
                server.clock.advance(server.config.dataTimeout + 1)
            lost(server)
        self.assertEqual(problems(events), [])
        return parseReplies(server.transport.value())

    def assertAbortedOrFinished(self, server: Server) -> None:
        """
        Every message the store was asked to receive was finished or
        thrown away: nothing is left half-written.
        """
        for message in server.store.started:
            self.assertTrue(message.finished or message.aborted, message.envelope.queueId)

    @settings(max_examples=ARBITRARY_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(
        st.booleans(),
        st.lists(
            st.one_of(
                st.binary(max_size=200),
                st.tuples(st.binary(max_size=100), st.sampled_from([b"\r\n", b"\n"])).map(b"".join),
                mutated(),
                mutated(),
                st.sampled_from([b"\r\n", b"\n", b"\r", b"\x00", b".\r\n", b"\r\n.\r\n", b"DATA\r\n",
                                 b"MAIL FROM:<a@b.example>\r\n", b"RCPT TO:<alice@example.org>\r\n"]),
                st.builds(lambda n, fill: fill * n, st.integers(500, 20000), st.sampled_from([b"a", b"\r", b"\x00"])),
            ),
            max_size=30,
        ),
        st.booleans(),
    )
    def test_arbitraryBytes(self, greet: bool, chunks: list[bytes], idle: bool) -> None:
        """
        Any bytes at all -- random ones, spoiled commands, parts of a
        transaction -- in any chunks, greeted or not, the client going
        idle or away at the end: every reply is
        well-formed, nothing raises or is logged as a failure, a message
        is stored only after a C{354} and only with its C{250}, and none
        is left half-written when the client goes.  (1000 examples, about
        2 s.)
        """
        server = Server(clientHost=CLIENT)
        if greet:
            chunks = [b"EHLO client.example\r\n"] + chunks
        replies = self.feed(server, chunks, idle=idle)
        self.assertEqual(replies[0][0], 220)
        queued = [r for r in replies if r[0] == 250 and r[1][-1].startswith(b"2.0.0 Ok: queued as")]
        self.assertEqual(len(server.store.messages), len(queued))
        self.assertLessEqual(len(queued), len([r for r in replies if r[0] == 354]))
        self.assertAbortedOrFinished(server)

    @settings(max_examples=STREAM_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(streams(), st.lists(st.integers(min_value=0), max_size=40), st.booleans(), st.booleans())
    def test_mutatedStreams(self, stream: Stream, cuts: list[int], late: bool, idle: bool) -> None:
        """
        Valid transactions with garbage pipelined before, between and
        inside them (NUL, bare CR, invalid UTF-8, overlong lines),
        abandoned ones and ones whose recipients are all refused, the last
        perhaps cut off in its DATA phase (then the idle timer runs out or
        the client goes), all sent in random chunks: each
        line gets the reply it must, in order; exactly the complete
        transactions with an accepted recipient are stored, byte for byte,
        for exactly their accepted recipients; the cut-off message is
        thrown away.  Half the time the validator's verdict on alice comes
        a second late, while the client's commands keep coming.  (400
        examples, about 4 s.)
        """
        server = Server(clientHost=CLIENT)
        if late:
            server.validator.verdicts["alice@example.org"] = lambda: deferLater(server.clock, 1, Accept)
        replies = self.feed(server, chunked(stream.data, cuts), step=1 if late else 0, idle=idle)
        codes = [code for code, _ in replies]
        # The idle timer may run out after the last reply: a 421 then.
        if codes[len(stream.codes):] == [421]:
            codes = codes[: len(stream.codes)]
        self.assertEqual(codes, stream.codes)
        self.assertEqual(
            [([str(r.address) for r in m.envelope.recipients], m.body) for m in server.store.messages],
            stream.messages,
        )
        self.assertAbortedOrFinished(server)


class SessionMachine(RuleBasedStateMachine):
    """
    The session alone, driven command by command against a model of
    RFC 5321 section 4.1.4's sequencing: the code of every reply is the
    one the model expects, the bad-command limit closes the session at
    its count, and a message is stored exactly when a transaction with an
    accepted recipient ends its data.
    """

    @initialize()
    def start(self) -> None:
        """
        Capture the log, and open the first session.
        """
        self.logs = capturedLogs()
        self.events = self.logs.__enter__()
        self.fresh()

    def fresh(self) -> None:
        """
        A fresh session on a fresh store; nobody greeted, no transaction.
        """
        self.driver = SessionDriver(
            verdicts={"alice@example.org": Accept(), "bob@example.org": Accept()}
        )
        self.driver.session.clientHost = CLIENT
        self.greeted = False
        self.transaction = False
        self.accepted = 0
        self.errors = 0
        self.closed = False
        self.expected: list[bytes] = []

    def reopen(self) -> None:
        """
        After a session was closed, the client connects again.
        """
        if self.closed:
            self.fresh()

    def teardown(self) -> None:
        """
        Stop capturing the log.
        """
        if hasattr(self, "logs"):
            self.logs.__exit__(None, None, None)

    def answer(self, line: bytes, code: int) -> Answer:
        """
        Send one command line; check its reply's form and code, and the
        bad-command limit.
        """
        result = self.driver.session.command(line)
        if isinstance(result, Deferred):
            answers: list = []
            result.addCallback(answers.append)
            [result] = answers
        assert isinstance(result, Answer), result
        parseReplies(result.reply.format())
        assert result.reply.code == code, (line, result.reply, code)
        if code in (500, 501, 503):
            self.errors += 1
            if self.errors >= MAX_BAD_COMMANDS:
                assert result.action is Action.CLOSE and result.farewell.code == 421, result
                self.closed = True
                return result
        assert result.farewell is None, result
        return result

    @rule(name=st.sampled_from([b"client.example", b"", b"two words", b"x\x00"]), verb=st.sampled_from([b"EHLO", b"HELO"]))
    def greet(self, verb: bytes, name: bytes) -> None:
        """
        EHLO or HELO: a valid one starts afresh; one without a name or
        with a space in it is a syntax error.
        """
        self.reopen()
        line = verb + (b" " + name if name else b"")
        valid = name and b" " not in name
        self.answer(line, 250 if valid else 501)
        if valid:
            self.greeted, self.transaction, self.accepted = True, False, 0

    @rule(path=st.sampled_from([b"<>", b"<sender@remote.example>", b"<a@b.example> SIZE=10", b"<broken", b"sender@remote.example>"]))
    def mail(self, path: bytes) -> None:
        """
        MAIL: first the greeting, then no transaction under way, then the
        syntax.
        """
        self.reopen()
        valid = path.startswith(b"<") and b">" in path
        if not self.greeted:
            code = 503
        elif self.transaction:
            code = 503
        else:
            code = 250 if valid else 501
        self.answer(b"MAIL FROM:" + path, code)
        if code == 250:
            self.transaction, self.accepted = True, 0

    @rule(recipient=st.sampled_from(ACCEPTED + tuple(REFUSED) + ("<broken",)))
    def rcpt(self, recipient: str) -> None:
        """
        RCPT: within a transaction, accepted, refused as unknown or as a
        relay, or a syntax error.
        """
        self.reopen()
        if not self.transaction:
            code = 503
        elif recipient.startswith("<"):
            code = 501
        else:
            code = REFUSED.get(recipient, 250)
        wire = recipient if recipient.startswith("<") else f"<{recipient}>"
        self.answer(b"RCPT TO:" + wire.encode(), code)
        if code == 250:
            self.accepted += 1

    @rule(lines=st.lists(NOT_LF, max_size=8), cuts=st.lists(st.integers(min_value=0), max_size=8), cutOff=st.booleans())
    def data(self, lines: list[bytes], cuts: list[int], cutOff: bool) -> None:
        """
        DATA: refused without a transaction or an accepted recipient;
        else the message, in random chunks, is stored when its data ends,
        and thrown away when the client goes before.
        """
        self.reopen()
        if not self.transaction:
            self.answer(b"DATA", 503)
            return
        if not self.accepted:
            self.answer(b"DATA", 554)
            return
        self.answer(b"DATA", 354)
        session = self.driver.session
        wire = stuff(lines)
        if cutOff:
            wire = wire[:-3]
        leftover = None
        for chunk in chunked(wire, cuts):
            assert leftover is None
            pending, leftover = session.feedData(chunk)
            assert pending is None
        self.transaction, self.accepted = False, 0
        if cutOff:
            assert leftover is None
            session.abortMessage()
            self.closed = True
            return
        assert leftover == b"", leftover
        records: list = []
        session.endData().addCallback(records.append)
        [record] = records
        assert record.reply.code == 250, record.reply
        parseReplies(record.reply.format())
        self.expected.append(stored(lines))

    @rule(line=st.one_of(
        st.sampled_from([b"RSET", b"NOOP", b"RSET now", b"QUIT"]),
        NOT_LF.map(lambda b: b"X" + b),
        st.integers(MAX_COMMAND_LINE + 1, 2000).map(lambda n: b"N" * n),
    ))
    def other(self, line: bytes) -> None:
        """
        RSET forgets the transaction, NOOP does nothing, QUIT ends the
        session; garbage and overlong lines are errors that change nothing.
        """
        self.reopen()
        if line == b"RSET":
            self.answer(line, 250)
            self.transaction, self.accepted = False, 0
        elif line == b"NOOP":
            self.answer(line, 250)
        elif line == b"QUIT":
            assert self.answer(line, 221).action is Action.CLOSE
            self.closed = True
        elif line == b"RSET now":
            self.answer(line, 501)
        elif len(line) > MAX_COMMAND_LINE:
            self.answer(line, 500)
        else:
            try:
                line.decode("utf-8")
            except UnicodeDecodeError:
                self.answer(line, 501)
            else:
                self.answer(line, 500)

    @invariant()
    def storedExactly(self) -> None:
        """
        The store holds exactly the messages whose data ended, in order;
        nothing is logged as a failure.
        """
        if not hasattr(self, "driver"):
            return
        assert [m.body for m in self.driver.store.messages] == self.expected
        assert problems(self.events) == [], problems(self.events)


SessionMachine.TestCase.settings = settings(
    max_examples=SESSION_EXAMPLES, stateful_step_count=40, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


class SessionFuzzTests(SessionMachine.TestCase):
    """
    L{SessionMachine}'s runs (200 examples of up to 40 steps, about 3 s).
    """
