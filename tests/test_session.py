"""
Tests for L{smtpmx.session.Session} driven directly: command lines and
message bytes in, L{Answer}s and L{TransactionRecord}s out, no transport,
no protocol.  The scripted dialogues of L{tests.dialogues} run here first.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from smtpmx import reply
from smtpmx.access import Access
from smtpmx.session import MAX_BAD_COMMANDS, Action, Answer, NegotiatedTLS, Session
from smtpmx.testing import MemoryStore, runAtOnce
from smtpmx.transactionlog import TRANSACTION_LOG_FORMAT, TransactionRecord
from smtpmx.validation import Accept, ValidationContext, ValidatorChain
from tests import dialogues
from tests.serverhelpers import DictValidator, makeConfig

TRANSACTION = (
    b"EHLO client.example",
    b"MAIL FROM:<sender@remote.example>",
    b"RCPT TO:<alice@example.org>",
    b"DATA",
)


class SessionDriver:
    """
    One L{Session} on a L{MemoryStore}, a L{Clock} and a L{DictValidator},
    with the few lines of a protocol that a test needs: it splits bytes
    into command lines while in command mode and hands them to
    L{Session.feedData} in the DATA phase.
    """

    def __init__(self, verdicts: Optional[dict] = None, tlsAvailable: bool = False, **config) -> None:
        """
        @param verdicts: the validator's verdict per lower-cased address;
            alice and bob at example.org are accepted by default.
        @param config: L{Config} fields over L{makeConfig}'s.
        """
        self.clock = Clock()
        self.store = MemoryStore()
        self.validator = DictValidator(
            verdicts if verdicts is not None
            else {"alice@example.org": Accept(), "bob@example.org": Accept()}
        )
        self.config = makeConfig(**config)
        self.ids = iter(f"ID{n}" for n in range(1000))
        self.session = Session(
            self.config,
            ValidatorChain([("dict", self.validator)]),
            Access.fromConfig(self.config),
            self.store,
            "192.0.2.1",
            runAtOnce,
            self.clock,
            lambda: next(self.ids),
            tlsAvailable=tlsAvailable,
        )
        self.records: list[TransactionRecord] = []
        self.closed = False

    def command(self, line: bytes) -> Answer:
        """
        One command line; a late answer must have come already.
        """
        result = self.session.command(line)
        if isinstance(result, Deferred):
            answers: list = []
            result.addCallback(answers.append)
            [result] = answers
        return result

    def run(self, data: bytes) -> list[str]:
        """
        Bytes from the client, as a protocol would hand them over.

        @return: the last line of each reply they caused.
        """
        replies: list[str] = []

        def say(r: reply.Reply) -> None:
            replies.append(r.format().decode("utf-8").split("\r\n")[-2])

        while data and not self.closed:
            if self.session.inData:
                pending, leftover = self.session.feedData(data)
                assert pending is None
                if leftover is None:
                    break
                data = leftover
                self.session.endData().addCallback(self.records.append)
                say(self.records[-1].reply)
                continue
            line, newline, rest = data.partition(b"\n")
            if not newline:
                break
            data = rest
            answer = self.command(line.rstrip(b"\r"))
            say(answer.reply)
            if answer.farewell is not None:
                say(answer.farewell)
            if answer.action is Action.CLOSE:
                self.closed = True
        return replies

    def lines(self, *lines: bytes) -> list[Answer]:
        """
        The answers to command lines.
        """
        return [self.command(line) for line in lines]


@pytest.mark.parametrize("dialogue", dialogues.parameters())
def test_dialogue(dialogue: dialogues.Dialogue) -> None:
    """
    Every scripted dialogue of L{tests.dialogues}, played on the session:
    each step's replies have the codes the dialogue expects, and the
    session asks to close exactly when the dialogue says it closes.
    """
    driver = SessionDriver(**dialogues.CONFIG)
    assert driver.session.greeting().code == 220
    for step, (data, expected) in enumerate(dialogue.exchanges()):
        dialogues.check(dialogue, step, expected, driver.run(data))
    assert driver.closed == dialogue.closes


class CommandTests(SynchronousTestCase):
    """
    L{Session.command}: each line answered with a reply and an action.
    """

    @pytest.mark.rfc("5321", "4.5.1", "5321-4.5.1-1")
    def test_ehloAnswer(self):
        """
        EHLO answers 250 with our name and the extensions, and the
        connection goes on.
        """
        d = SessionDriver(maxMessageSize=1000)
        [answer] = d.lines(b"EHLO client.example")
        self.assertEqual(answer.action, Action.CONTINUE)
        self.assertEqual(
            answer.reply.text.split("\n"),
            ["mx.example.org", "PIPELINING", "SIZE 1000", "8BITMIME", "ENHANCEDSTATUSCODES", "SMTPUTF8", "HELP"],
        )
        self.assertEqual(d.session.heloName, "client.example")

    @pytest.mark.rfc("5321", "4.4", "5321-4.4-2")
    def test_dataOpensMessage(self):
        """
        DATA answers 354 with the action to read the message, and a message
        is opened in the store with the envelope and our Received header.
        """
        d = SessionDriver()
        answers = d.lines(*TRANSACTION)
        self.assertEqual([a.reply.code for a in answers], [250, 250, 250, 354])
        self.assertEqual(answers[-1].action, Action.READ_DATA)
        self.assertTrue(d.session.inData)
        [message] = d.store.started
        self.assertEqual(message.envelope.queueId, "ID0")
        self.assertEqual(message.envelope.clientHost, "192.0.2.1")
        self.assertTrue(message.envelope.received.startswith(b"Received: from client.example ([192.0.2.1])\n"))

    @pytest.mark.rfc("5321", "4.5.3.1.4")
    def test_lineTooLong(self):
        """
        A command line over 512 octets with its CRLF gets 500 5.5.2 and
        counts as a bad command.
        """
        d = SessionDriver()
        [answer] = d.lines(b"NOOP " + b"x" * 506)
        self.assertEqual(answer.reply, reply.LINE_TOO_LONG)
        self.assertEqual(d.session.badCommands, 1)
        [answer] = d.lines(b"NOOP " + b"x" * 505)
        self.assertEqual(answer.reply, reply.OK)

    @pytest.mark.rfc("5321", "3.8", "5321-3.8-2")
    def test_badCommandLimit(self):
        """
        Every refused command counts; the one that reaches the limit is
        answered, then followed by 421 4.7.0 and the close.
        """
        d = SessionDriver()
        answers = d.lines(b"EHLO client.example", *[b"FROB"] * (MAX_BAD_COMMANDS - 1))
        self.assertEqual({a.action for a in answers}, {Action.CONTINUE})
        self.assertEqual(d.session.badCommands, MAX_BAD_COMMANDS - 1)
        [last] = d.lines(b"RCPT TO:<alice@example.org>")
        self.assertEqual(last.reply, reply.NEED_MAIL)
        self.assertEqual(last.action, Action.CLOSE)
        self.assertEqual(last.farewell, reply.tooManyErrors("mx.example.org"))

    def test_goodRepliesDoNotCount(self):
        """
        Replies that are not a client's error (250, 252, 214, 552 at MAIL,
        554 without recipients) do not count towards the limit.
        """
        d = SessionDriver(maxMessageSize=10)
        d.lines(
            b"EHLO client.example",
            b"NOOP",
            b"VRFY x",
            b"HELP",
            b"MAIL FROM:<a@remote.example> SIZE=100",
            b"MAIL FROM:<a@remote.example>",
            b"DATA",
        )
        self.assertEqual(d.session.badCommands, 0)

    def test_internalError(self):
        """
        A command that raises is answered 451 4.3.0 and logged; the
        session goes on.
        """
        d = SessionDriver()
        d.lines(b"EHLO client.example", b"MAIL FROM:<a@remote.example>")
        d.session.access = None
        [answer] = d.lines(b"RCPT TO:<alice@example.org>")
        self.assertEqual(answer.reply, reply.INTERNAL_ERROR)
        self.assertEqual(len(self.flushLoggedErrors(AttributeError)), 1)

    def test_lateInternalError(self):
        """
        A late answer that fails is answered 451 4.3.0 and logged.
        """
        verdict: Deferred = Deferred()
        d = SessionDriver({"alice@example.org": lambda: verdict})
        d.lines(b"EHLO client.example", b"MAIL FROM:<a@remote.example>")
        late = d.session.command(b"RCPT TO:<alice@example.org>")
        answers: list = []
        late.addCallback(answers.append)
        d.session.access = None
        verdict.callback(Accept())
        self.assertEqual([a.reply for a in answers], [reply.INTERNAL_ERROR])
        self.assertEqual(len(self.flushLoggedErrors(AttributeError)), 1)


class ValidationContextTests(SynchronousTestCase):
    """
    Validators get a frozen L{ValidationContext}, never the session.
    """

    def context(self, driver: SessionDriver) -> ValidationContext:
        """
        The context the validator was given for its last question.
        """
        asked = []
        driver.validator.validateRecipient = lambda session, recipient: asked.append(session) or Accept()
        driver.lines(b"RCPT TO:<alice@example.org>", b"RCPT TO:<bob@example.org>")
        self.assertIs(asked[0], asked[1])
        return asked[0]

    def test_attributes(self):
        """
        It has what a plugin uses: the client's address, the HELO name, the
        sender, the configuration and C{runBlocking}.
        """
        d = SessionDriver()
        d.lines(b"HELO client.example", b"MAIL FROM:<sender@remote.example>")
        context = self.context(d)
        self.assertIsInstance(context, ValidationContext)
        self.assertEqual(context.clientHost, "192.0.2.1")
        self.assertEqual(context.heloName, "client.example")
        self.assertEqual(str(context.reversePath), "sender@remote.example")
        self.assertIs(context.config, d.config)
        self.assertEqual(self.successResultOf(context.runBlocking(len, "abc")), 3)

    def test_nullSender(self):
        """
        For the null reverse-path C{<>} the sender is L{None}.
        """
        d = SessionDriver()
        d.lines(b"EHLO client.example", b"MAIL FROM:<>")
        self.assertIsNone(self.context(d).reversePath)

    def test_frozen(self):
        """
        A validator cannot change what it was given.
        """
        d = SessionDriver()
        d.lines(b"EHLO client.example", b"MAIL FROM:<sender@remote.example>")
        context = self.context(d)
        with self.assertRaises(dataclasses.FrozenInstanceError):
            context.heloName = "evil.example"


class DataPhaseTests(SynchronousTestCase):
    """
    L{Session.feedData} and L{Session.endData}: the message, its limits
    and its record.
    """

    def started(self, **config) -> SessionDriver:
        """
        A session in the DATA phase of a message to alice.
        """
        d = SessionDriver(**config)
        d.lines(*TRANSACTION)
        return d

    def end(self, d: SessionDriver) -> TransactionRecord:
        """
        End the data and return the transaction's record.
        """
        return self.successResultOf(d.session.endData())

    @pytest.mark.rfc("5321", "4.5.2", "5321-4.5.2-2")
    def test_message(self):
        """
        Chunks are unstuffed and streamed; the end gives the bytes after it
        and a record whose reply names the queue ID; the transaction is over.
        """
        d = self.started()
        self.assertEqual(d.session.feedData(b"Subject: x\r\n\r\n..dot\r"), (None, None))
        pending, leftover = d.session.feedData(b"\n.\r\nNOOP\r\n")
        self.assertEqual((pending, leftover), (None, b"NOOP\r\n"))
        record = self.end(d)
        self.assertEqual(record.reply, reply.queued("ID0"))
        self.assertEqual(record.size, len(b"Subject: x\n\n.dot\n"))
        self.assertEqual(d.store.messages[0].body, b"Subject: x\n\n.dot\n")
        self.assertFalse(d.session.inData)
        self.assertIsNone(d.session.transaction)

    def test_logFields(self):
        """
        The record gives the fields of the transaction's log line: the
        line reads as it always has.
        """
        d = SessionDriver({"alice@example.org": Accept()})
        d.run(
            b"EHLO client.example\r\nMAIL FROM:<sender@remote.example>\r\n"
            b"RCPT TO:<alice@example.org>\r\nRCPT TO:<carol@example.org>\r\n"
            b"RCPT TO:<postmaster>\r\nDATA\r\nhello\r\n.\r\n"
        )
        [record] = d.records
        line = TRANSACTION_LOG_FORMAT.format(**record.logFields())
        self.assertEqual(
            line,
            "ID0: client=[192.0.2.1] helo=client.example from=<sender@remote.example> "
            "to=[<alice@example.org> 250 2.1.5 by dict, <carol@example.org> 550 5.1.1, "
            "<postmaster> 250 2.1.5 by postmaster] size=6 result=250 2.0.0 Ok: queued as ID0",
        )

    def test_storeBackpressure(self):
        """
        When the store asks to wait, L{Session.feedData} hands its
        L{Deferred} on.
        """
        d = self.started()
        waiting: Deferred = Deferred()
        d.store.started[0].write = lambda data: waiting
        pending, leftover = d.session.feedData(b"a line\r\nanother\r\n")
        self.assertIs(pending, waiting)
        self.assertIsNone(leftover)

    @pytest.mark.rfc("1870", "6.3")
    @pytest.mark.rfc("3463", "3")
    def test_tooBig(self):
        """
        Past the size limit the message is thrown away, the rest is read to
        the end, and the reply is 552 5.3.4.
        """
        d = self.started(maxMessageSize=10)
        d.session.feedData(b"0123456789abcdef\r\n")
        self.assertTrue(d.store.started[0].aborted)
        _, leftover = d.session.feedData(b"more\r\n.\r\n")
        self.assertEqual(leftover, b"")
        self.assertEqual(self.end(d).reply, reply.TOO_BIG)
        self.assertEqual(d.store.messages, [])

    @pytest.mark.rfc("5321", "6.3", "5321-6.3-1")
    def test_tooManyHops(self):
        """
        More Received headers than the hop limit: 554 5.4.6, nothing kept.
        """
        d = self.started(maxHops=1)
        d.session.feedData(b"Received: a\r\nReceived: b\r\n\r\nbody\r\n.\r\n")
        self.assertEqual(self.end(d).reply, reply.TOO_MANY_HOPS)
        self.assertTrue(d.store.started[0].aborted)

    def test_storageFailure(self):
        """
        A store that fails gives 451 4.3.0, logged.
        """
        d = self.started()
        d.store.failWith = OSError(28, "No space left on device")
        d.session.feedData(b"x\r\n.\r\n")
        self.assertEqual(self.end(d).reply, reply.STORAGE_FAILED)
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)

    def test_storeRefuses(self):
        """
        A store that cannot even open the message gives 451 4.3.0 at the
        end of the data.
        """
        d = SessionDriver()

        def refuse(envelope):
            raise OSError("read-only file system")

        d.store.receive = refuse
        d.lines(*TRANSACTION)
        d.session.feedData(b"x\r\n.\r\n")
        self.assertEqual(self.end(d).reply, reply.STORAGE_FAILED)
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)

    @pytest.mark.rfc("5321", "4.5.3.2.7")
    def test_timedOut(self):
        """
        A timeout in the middle of the data throws the message away and
        gives the 421 4.4.2 to send before closing.
        """
        d = self.started()
        d.session.feedData(b"partial\r\n")
        self.assertEqual(d.session.timedOut(), reply.timedOut("mx.example.org"))
        self.assertTrue(d.store.started[0].aborted)

    def test_abortMessage(self):
        """
        L{Session.abortMessage} (the connection is gone) aborts the message
        once; with no message it does nothing.
        """
        d = self.started()
        d.session.abortMessage()
        d.session.abortMessage()
        self.assertTrue(d.store.started[0].aborted)
        SessionDriver().session.abortMessage()


class TLSTests(SynchronousTestCase):
    """
    The TLS state: STARTTLS accepted, then the handshake's result.
    """

    @pytest.mark.rfc("3207", "4.2", "3207-4.2-1", "3207-4.2-4")
    def test_startTLSResets(self):
        """
        STARTTLS answers 220 with the action to start TLS, and the session
        forgets what was said in the clear.
        """
        d = SessionDriver(tlsAvailable=True)
        answers = d.lines(b"EHLO client.example", b"MAIL FROM:<a@remote.example>", b"STARTTLS")
        self.assertIn("STARTTLS", answers[0].reply.text.split("\n"))
        self.assertEqual(answers[-1], Answer(reply.START_TLS, Action.START_TLS))
        self.assertTrue(d.session.secure)
        self.assertIsNone(d.session.heloName)
        self.assertIsNone(d.session.transaction)
        [ehlo, again] = d.lines(b"EHLO client.example", b"STARTTLS")
        self.assertNotIn("STARTTLS", ehlo.reply.text.split("\n"))
        self.assertEqual(again.reply, reply.TLS_ACTIVE)

    def test_unavailable(self):
        """
        Without a certificate STARTTLS is an unknown command.
        """
        [answer] = SessionDriver().lines(b"STARTTLS")
        self.assertEqual(answer.reply, reply.UNKNOWN_COMMAND)

    def test_receivedNamesHandshake(self):
        """
        The Received header of a message after STARTTLS says ESMTPS and the
        version and cipher the handshake negotiated.
        """
        d = SessionDriver(tlsAvailable=True)
        d.lines(b"EHLO client.example", b"STARTTLS")
        d.session.handshakeCompleted(NegotiatedTLS("TLSv1.3", "TLS_AES_256_GCM_SHA384", 256))
        d.lines(*TRANSACTION)
        received = d.store.started[0].envelope.received
        self.assertIn(b" with ESMTPS id ID0", received)
        self.assertIn(b"(using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits))", received)

    def test_description(self):
        """
        L{NegotiatedTLS} reads as the Received header and the logs show it.
        """
        self.assertEqual(
            str(NegotiatedTLS("TLSv1.2", "ECDHE-RSA-AES128-GCM-SHA256", 128)),
            "TLSv1.2 with cipher ECDHE-RSA-AES128-GCM-SHA256 (128/128 bits)",
        )
