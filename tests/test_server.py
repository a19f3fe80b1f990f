"""
Tests for the SMTP server protocol, in memory: every command, reply code,
limit and ordering rule (RFC 5321, RFC 2920, RFC 1870, RFC 3207; the
replies are in docs/replies.rst), through bytes as a client sends them.
The scripted dialogues of L{tests.dialogues} run here too.
"""

from __future__ import annotations

import pytest
from twisted.internet.defer import Deferred
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from smtpmx.address import Address
from smtpmx.envelope import LocalMailbox, RemoteAddress
from smtpmx.validation import Accept, Reject
from smtpmx.server import MAX_BUFFERED_LINE

from tests import dialogues
from tests.serverhelpers import Server, TLSv13Handle

TRANSACTION = (
    "MAIL FROM:<sender@remote.example>\r\n"
    "RCPT TO:<alice@example.org>\r\n"
    "DATA\r\n"
)


@pytest.mark.parametrize("dialogue", dialogues.parameters())
def test_dialogue(dialogue: dialogues.Dialogue) -> None:
    """
    Every scripted dialogue of L{tests.dialogues}, played on the protocol
    in memory, each step in one write: the replies have the codes the
    dialogue expects, and the connection is closed exactly when the
    dialogue says.
    """
    s = Server(**dialogues.CONFIG)
    [greeting] = s.output()
    assert greeting.startswith("220 mx.example.org")
    for step, (data, expected) in enumerate(dialogue.exchanges()):
        dialogues.check(dialogue, step, expected, s.codes(data))
    assert s.closed == dialogue.closes


class GreetingTests(SynchronousTestCase):
    """
    The greeting, EHLO and HELO.
    """

    def test_greeting(self):
        """
        A new connection is greeted with 220 and our host name.
        """
        s = Server()
        self.assertEqual(s.output(), ["220 mx.example.org ESMTP smtpmx"])

    @pytest.mark.rfc("5321", "4.5.1", "5321-4.5.1-1")
    @pytest.mark.rfc("1870", "4")
    @pytest.mark.rfc("2034", "3")
    @pytest.mark.rfc("6531", "3.1")
    @pytest.mark.rfc("6152", "2")
    def test_ehloExtensions(self):
        """
        EHLO lists PIPELINING, SIZE with the limit, 8BITMIME,
        ENHANCEDSTATUSCODES and SMTPUTF8, and no STARTTLS without a
        certificate.
        """
        s = Server(maxMessageSize=1000)
        s.output()
        lines = s.send("EHLO client.example\r\n")
        self.assertEqual(lines[0], "250-mx.example.org")
        keywords = [line[4:] for line in lines[1:]]
        for k in ["PIPELINING", "SIZE 1000", "8BITMIME", "ENHANCEDSTATUSCODES", "SMTPUTF8"]:
            self.assertIn(k, keywords)
        self.assertNotIn("STARTTLS", keywords)
        self.assertTrue(lines[-1].startswith("250 "))

    @pytest.mark.rfc("5321", "4.1.4", "5321-4.1.4-3")
    def test_ehloNeedsArgument(self):
        """
        EHLO and HELO without a name are a syntax error, 501 5.5.4.
        """
        s = Server()
        s.output()
        self.assertEqual(s.codes("EHLO\r\n")[0][:9], "501 5.5.4")
        self.assertEqual(s.codes("HELO\r\n")[0][:9], "501 5.5.4")

    @pytest.mark.rfc("5321", "4.1.1.1", "5321-4.1.1.1-1")
    def test_helo(self):
        """
        HELO answers 250 with our name, and a transaction can follow.
        """
        s = Server()
        s.output()
        self.assertEqual(s.send("HELO client.example\r\n"), ["250 mx.example.org"])
        self.assertEqual(s.codes("MAIL FROM:<a@b.example>\r\n"), ["250 2.1.0 Ok"])

    def test_commandsCaseInsensitive(self):
        """
        Commands and keywords are case-insensitive.
        """
        s = Server()
        s.output()
        replies = s.codes(
            "ehlo client.example\r\nmail from:<a@b.example>\r\nrcpt to:<alice@example.org>\r\n"
        )
        self.assertEqual(replies[1:], ["250 2.1.0 Ok", "250 2.1.5 Ok"])


class CommandTests(SynchronousTestCase):
    """
    NOOP, RSET, VRFY, HELP, QUIT and unknown commands.
    """

    @pytest.mark.rfc("5321", "4.1.1.9")
    def test_noop(self):
        """
        NOOP answers 250 2.0.0, with or without an argument.
        """
        s = Server().greeted()
        self.assertEqual(s.codes("NOOP\r\nNOOP hello\r\n"), ["250 2.0.0 Ok"] * 2)

    @pytest.mark.rfc("5321", "4.1.1.5", "5321-4.1.1.5-1", "5321-4.1.1.5-2")
    def test_rset(self):
        """
        RSET forgets the transaction: RCPT after it needs a new MAIL.
        """
        s = Server().greeted()
        replies = s.codes("MAIL FROM:<a@b.example>\r\nRSET\r\nRCPT TO:<alice@example.org>\r\n")
        self.assertEqual(replies[1], "250 2.0.0 Ok")
        self.assertEqual(replies[2][:9], "503 5.5.1")

    def test_rsetWithArgument(self):
        """
        RSET takes no argument: 501 5.5.4.
        """
        s = Server().greeted()
        self.assertEqual(s.codes("RSET now\r\n")[0][:9], "501 5.5.4")

    @pytest.mark.rfc("5321", "3.5.3", "5321-3.5.3-1", "5321-3.5.3-2")
    def test_vrfy(self):
        """
        VRFY never discloses who exists: 252; without argument 501.
        """
        s = Server().greeted()
        self.assertEqual(s.codes("VRFY alice\r\n")[0][:9], "252 2.0.0")
        self.assertEqual(s.codes("VRFY\r\n")[0][:9], "501 5.5.4")

    @pytest.mark.rfc("5321", "4.1.1.8")
    def test_help(self):
        """
        HELP answers 214.
        """
        s = Server().greeted()
        self.assertEqual(s.codes("HELP\r\n")[0][:9], "214 2.0.0")

    @pytest.mark.rfc("5321", "4.1.1.10", "5321-4.1.1.10-1")
    def test_quit(self):
        """
        QUIT answers 221 2.0.0 and closes the connection.
        """
        s = Server().greeted()
        self.assertEqual(s.codes("QUIT\r\n"), ["221 2.0.0 Bye"])
        self.assertTrue(s.closed)

    @pytest.mark.rfc("5321", "4.2.4", "5321-4.2.4-1")
    def test_unknown(self):
        """
        An unknown command, and EXPN, get 500 5.5.2.
        """
        s = Server().greeted()
        self.assertEqual([r[:9] for r in s.codes("FOO\r\nEXPN x\r\n\r\n")], ["500 5.5.2"] * 3)

    def test_starttlsWithoutCertificate(self):
        """
        STARTTLS is an unknown command when no certificate is configured.
        """
        s = Server().greeted()
        self.assertEqual(s.codes("STARTTLS\r\n")[0][:9], "500 5.5.2")

    @pytest.mark.rfc("5321", "4.1.2", "5321-4.1.2-4")
    def test_invalidUTF8(self):
        """
        A command that is not UTF-8 gets 501, not a traceback.
        """
        s = Server().greeted()
        self.assertEqual(s.codes(b"MAIL FROM:<\xff@x.example>\r\n")[0][:9], "501 5.5.4")

    @pytest.mark.rfc("5321", "2.3.8", "5321-2.3.8-1")
    def test_bareLFCommands(self):
        """
        Commands ended by a bare LF, as typed by hand, are understood.
        """
        s = Server()
        s.output()
        self.assertEqual(s.codes("HELO a\nNOOP\n"), ["250 mx.example.org", "250 2.0.0 Ok"])


class SequenceTests(SynchronousTestCase):
    """
    Commands out of order get 503 5.5.1.
    """

    @pytest.mark.rfc("5321", "4.1.4", "5321-4.1.4-8")
    def test_mailBeforeHelo(self):
        """
        MAIL before HELO/EHLO is out of sequence.
        """
        s = Server()
        s.output()
        self.assertEqual(s.codes("MAIL FROM:<a@b.example>\r\n")[0][:9], "503 5.5.1")

    @pytest.mark.rfc("5321", "4.1.4", "5321-4.1.4-8")
    @pytest.mark.rfc("5321", "4.1.1.3", "5321-4.1.1.3-3")
    def test_rcptBeforeMail(self):
        """
        RCPT before MAIL is out of sequence.
        """
        s = Server().greeted()
        self.assertEqual(s.codes("RCPT TO:<alice@example.org>\r\n")[0][:9], "503 5.5.1")

    @pytest.mark.rfc("5321", "4.1.4", "5321-4.1.4-8")
    def test_dataBeforeMail(self):
        """
        DATA before MAIL is out of sequence.
        """
        s = Server().greeted()
        self.assertEqual(s.codes("DATA\r\n")[0][:9], "503 5.5.1")

    @pytest.mark.rfc("5321", "4.1.4", "5321-4.1.4-8")
    def test_nestedMail(self):
        """
        A second MAIL in a transaction is out of sequence.
        """
        s = Server().greeted()
        replies = s.codes("MAIL FROM:<a@b.example>\r\nMAIL FROM:<a@b.example>\r\n")
        self.assertEqual(replies[1][:9], "503 5.5.1")

    @pytest.mark.rfc("2920", "3.2", "2920-3.2-2")
    def test_dataWithoutRecipients(self):
        """
        DATA when every RCPT was refused gets 554 5.5.1.
        """
        s = Server().greeted()
        replies = s.codes("MAIL FROM:<a@b.example>\r\nRCPT TO:<nobody@example.org>\r\nDATA\r\n")
        self.assertEqual(replies[1][:9], "550 5.1.1")
        self.assertEqual(replies[2][:9], "554 5.5.1")

    @pytest.mark.rfc("5321", "4.1.4", "5321-4.1.4-2")
    def test_ehloResetsTransaction(self):
        """
        EHLO in a transaction abandons it.
        """
        s = Server().greeted()
        replies = s.codes("MAIL FROM:<a@b.example>\r\nEHLO again\r\nRCPT TO:<alice@example.org>\r\n")
        self.assertEqual(replies[-1][:9], "503 5.5.1")


class MailTests(SynchronousTestCase):
    """
    MAIL FROM and its parameters.
    """

    def mail(self, argument: str, **config) -> str:
        s = Server(**config).greeted()
        return s.codes(f"MAIL FROM:{argument}\r\n")[0]

    def test_nullPath(self):
        """
        The null reverse-path <> is accepted.
        """
        self.assertEqual(self.mail("<>"), "250 2.1.0 Ok")

    @pytest.mark.rfc("5321", "C")
    def test_sourceRoute(self):
        """
        A source route is accepted and ignored.
        """
        self.assertEqual(self.mail("<@a.example,@b.example:user@c.example>"), "250 2.1.0 Ok")

    def test_spaceAfterColon(self):
        """
        A space after the colon, as many clients send, is accepted.
        """
        self.assertEqual(self.mail(" <a@b.example>"), "250 2.1.0 Ok")

    @pytest.mark.rfc("5321", "4.1.2", "5321-4.1.2-4")
    def test_badSyntax(self):
        """
        A malformed path gets 501 5.5.4.
        """
        for bad in ["<a@b.example", "<a@>", "<@b.example>", "<a b@c.example>", ""]:
            self.assertEqual(self.mail(bad)[:9], "501 5.5.4", bad)

    @pytest.mark.rfc("5321", "4.1.4", "5321-4.1.4-7")
    def test_missingFrom(self):
        """
        MAIL without FROM: is a syntax error.
        """
        s = Server().greeted()
        self.assertEqual(s.codes("MAIL <a@b.example>\r\n")[0][:9], "501 5.5.4")

    @pytest.mark.rfc("1870", "6.1")
    def test_sizeWithinLimit(self):
        """
        SIZE= at or below the limit is accepted.
        """
        self.assertEqual(self.mail("<a@b.example> SIZE=1000", maxMessageSize=1000), "250 2.1.0 Ok")

    @pytest.mark.rfc("1870", "6.1")
    @pytest.mark.rfc("3463", "3")
    def test_sizeOverLimit(self):
        """
        SIZE= above the limit gets 552 5.3.4 at MAIL time.
        """
        self.assertEqual(self.mail("<a@b.example> SIZE=1001", maxMessageSize=1000)[:9], "552 5.3.4")

    @pytest.mark.rfc("6152", "2")
    @pytest.mark.rfc("5321", "2.4", "5321-2.4-2", "5321-2.4-3")
    @pytest.mark.rfc("6531", "3.5")
    def test_bodyAndSmtputf8(self):
        """
        BODY=8BITMIME and SMTPUTF8 are accepted; a UTF-8 address needs
        SMTPUTF8.
        """
        self.assertEqual(self.mail("<a@b.example> BODY=8BITMIME SMTPUTF8"), "250 2.1.0 Ok")
        self.assertEqual(self.mail("<jörg@b.example> SMTPUTF8"), "250 2.1.0 Ok")
        self.assertEqual(self.mail("<jörg@b.example>")[:9], "553 5.6.7")

    @pytest.mark.rfc("5321", "4.1.1.11")
    def test_unknownParameter(self):
        """
        An unknown parameter gets 555 5.5.4; a bad value 501 5.5.4.
        """
        self.assertEqual(self.mail("<a@b.example> FOO=BAR")[:9], "555 5.5.4")
        self.assertEqual(self.mail("<a@b.example> SIZE=big")[:9], "501 5.5.4")
        self.assertEqual(self.mail("<a@b.example> BODY=BINARYMIME")[:9], "501 5.5.4")


class RecipientTests(SynchronousTestCase):
    """
    RCPT TO: each recipient decided on its own.
    """

    def rcpt(self, s: Server, *addresses: str) -> list[str]:
        s.codes("MAIL FROM:<sender@remote.example>\r\n")
        return s.codes("".join(f"RCPT TO:{a}\r\n" for a in addresses))

    def test_perRecipientVerdicts(self):
        """
        A refused recipient does not end the transaction: the next one is
        decided on its own and DATA goes ahead.
        """
        s = Server().greeted()
        replies = self.rcpt(s, "<nobody@example.org>", "<alice@example.org>")
        self.assertEqual([r[:9] for r in replies], ["550 5.1.1", "250 2.1.5"])
        self.assertEqual(s.codes("DATA\r\n")[0][:3], "354")

    def test_rejectVerdict(self):
        """
        A validator's Reject is sent as given.
        """
        s = Server({"bob@example.org": Reject(550, "5.7.1", "bob is on holiday")}).greeted()
        self.assertEqual(self.rcpt(s, "<bob@example.org>"), ["550 5.7.1 bob is on holiday"])

    def test_deferredVerdict(self):
        """
        A validator may answer later with a Deferred; the reply waits for it
        and commands pipelined after it wait too, so replies stay in order.
        """
        later = Deferred()
        s = Server({"alice@example.org": lambda: later}).greeted()
        s.codes("MAIL FROM:<a@b.example>\r\n")
        self.assertEqual(s.codes("RCPT TO:<alice@example.org>\r\nNOOP\r\n"), [])
        later.callback(Accept())
        self.assertEqual(s.output(), ["250 2.1.5 Ok", "250 2.0.0 Ok"])

    @pytest.mark.rfc("2920", "3.2", "2920-3.2-1")
    def test_pipelinedFloodWhileWaiting(self):
        """
        While a verdict is pending, a client that pipelines more than a long
        line's worth of commands has its socket paused, so what waits for us
        stays bounded; once the verdict arrives every command is answered,
        in order, and reading resumes.
        """
        later = Deferred()
        s = Server({"alice@example.org": lambda: later}).greeted()
        s.codes("MAIL FROM:<a@b.example>\r\n")
        self.assertEqual(s.codes("RCPT TO:<alice@example.org>\r\n"), [])
        self.assertEqual(s.transport.producerState, "producing")
        flood = "NOOP\r\n" * (MAX_BUFFERED_LINE // 6 + 1)
        self.assertEqual(s.codes(flood), [])
        self.assertEqual(s.transport.producerState, "paused")
        later.callback(Accept())
        replies = s.output()
        self.assertEqual(replies[0], "250 2.1.5 Ok")
        self.assertEqual(len(replies), 1 + MAX_BUFFERED_LINE // 6 + 1)
        self.assertEqual(s.transport.producerState, "producing")

    def test_validatorRaises(self):
        """
        A validator that raises gives 451 4.3.0 for that recipient only.
        """
        s = Server({"bob@example.org": RuntimeError("plugin bug"), "alice@example.org": Accept()}).greeted()
        replies = self.rcpt(s, "<bob@example.org>", "<alice@example.org>")
        self.assertEqual([r[:9] for r in replies], ["451 4.3.0", "250 2.1.5"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_validatorReturnsNonsense(self):
        """
        A validator that returns something other than a verdict gives 451.
        """
        s = Server({"bob@example.org": lambda: "250 ok"}).greeted()
        self.assertEqual(self.rcpt(s, "<bob@example.org>")[0][:9], "451 4.3.0")

    @pytest.mark.rfc("5321", "4.5.1", "5321-4.5.1-2", "5321-4.5.1-3")
    def test_postmasterAlwaysAccepted(self):
        """
        postmaster@ a local domain and a bare <postmaster> are accepted
        whatever the validators say, in any case.
        """
        s = Server({"postmaster@example.org": Reject(550, "5.1.1", "no")}).greeted()
        replies = self.rcpt(s, "<postmaster@example.org>", "<PostMaster@EXAMPLE.org>", "<postmaster>")
        self.assertEqual(replies, ["250 2.1.5 Ok"] * 3)
        self.assertEqual(s.validator.asked, [])

    @pytest.mark.rfc("5321", "3.6.2")
    def test_relayDenied(self):
        """
        A remote recipient from a client outside the relay networks is
        refused 554 5.7.1, even when a validator accepts it.
        """
        s = Server({"x@remote.example": Accept()}, clientHost="192.0.2.1").greeted()
        self.assertEqual(self.rcpt(s, "<x@remote.example>")[0][:9], "554 5.7.1")

    def test_relayFromTrustedClient(self):
        """
        A remote recipient from a trusted client is accepted for relay,
        its forward-path kept exactly as given.
        """
        s = Server().greeted()
        self.assertEqual(self.rcpt(s, "<X@Remote.Example>")[0][:9], "250 2.1.5")
        [recipient] = s.protocol.session.transaction.recipients
        self.assertEqual(recipient.destination, RemoteAddress(Address("X", "Remote.Example")))

    def test_unsafeMailbox(self):
        """
        A local part that cannot be a directory name is refused 550 5.1.3.
        """
        verdicts = {a: Accept() for a in ["a/b@example.org", ".hidden@example.org", '"a\\\\b"@example.org']}
        s = Server(verdicts).greeted()
        replies = self.rcpt(s, "<a/b@example.org>", "<.hidden@example.org>", '<"a\\\\b"@example.org>')
        self.assertEqual([r[:9] for r in replies], ["550 5.1.3"] * 3)

    @pytest.mark.rfc("5321", "4.5.3.1.8", "5321-4.5.3.1.8-2")
    @pytest.mark.rfc("3463", "3")
    @pytest.mark.rfc("5321", "4.5.3.1.9", "5321-4.5.3.1.9-1")
    def test_tooManyRecipients(self):
        """
        Past the recipient limit RCPT gets 452 4.5.3.
        """
        s = Server(maxRecipients=1).greeted()
        replies = self.rcpt(s, "<alice@example.org>", "<bob@example.org>")
        self.assertEqual([r[:9] for r in replies], ["250 2.1.5", "452 4.5.3"])

    @pytest.mark.rfc("5321", "2.4", "5321-2.4-1")
    def test_caseKept(self):
        """
        The forward-path is recorded exactly as sent, case included, and the
        Maildir name is lower-cased with the tag stripped.
        """
        s = Server({"alice+news@example.org": Accept()}).greeted()
        self.rcpt(s, "<Alice+News@Example.ORG>")
        recipient = s.protocol.session.transaction.recipients[0]
        self.assertEqual(str(recipient.address), "Alice+News@Example.ORG")
        self.assertEqual(recipient.destination, LocalMailbox("example.org", "alice"))

    @pytest.mark.rfc("5321", "4.1.1.11")
    def test_rcptParameter(self):
        """
        RCPT parameters are not supported: 555 5.5.4.
        """
        s = Server().greeted()
        self.assertEqual(self.rcpt(s, "<alice@example.org> NOTIFY=NEVER")[0][:9], "555 5.5.4")

    def test_emptyRecipient(self):
        """
        RCPT TO:<> is a syntax error.
        """
        s = Server().greeted()
        self.assertEqual(self.rcpt(s, "<>")[0][:9], "501 5.5.4")


class DataTests(SynchronousTestCase):
    """
    The DATA phase: termination, unstuffing, sizes, storage.
    """

    @pytest.mark.rfc("5321", "4.5.2", "5321-4.5.2-2")
    def test_message(self):
        """
        A message is stored dot-unstuffed with LF endings, and 250 names
        its queue ID.
        """
        s = Server().greeted()
        replies = s.codes(TRANSACTION + "Subject: hi\r\n\r\n..leading dot\r\nend\r\n.\r\n")
        self.assertEqual(replies[2][:3], "354")
        self.assertRegex(replies[3], r"^250 2\.0\.0 Ok: queued as [0-9A-F]+$")
        [message] = s.store.messages
        self.assertEqual(message.body, b"Subject: hi\n\n.leading dot\nend\n")
        self.assertIn(message.envelope.queueId, replies[3])

    @pytest.mark.rfc("5321", "4.5.2", "5321-4.5.2-2")
    def test_dataInPieces(self):
        """
        Data split at any byte gives the same message.
        """
        s = Server().greeted()
        s.codes(TRANSACTION)
        data = b"a\r\n..b\r\nc\r\n.\r\n"
        for i in range(len(data)):
            s.protocol.dataReceived(data[i : i + 1])
        self.assertEqual(s.store.messages[0].body, b"a\n.b\nc\n")

    @pytest.mark.rfc("5321", "4.1.1.4", "5321-4.1.1.4-1")
    @pytest.mark.rfc("5321", "2.3.8", "5321-2.3.8-1")
    def test_smuggling(self):
        """
        A bare LF or bare CR before a dot never ends the data: what follows
        is part of the message, never a second transaction.
        """
        for ending in [b"\n.\n", b"\r\n.\n", b"\n.\r\n", b"\r.\r"]:
            s = Server().greeted()
            s.codes(TRANSACTION)
            smuggled = b"MAIL FROM:<evil@x.example>\r\nRCPT TO:<bob@example.org>\r\nDATA\r\nevil\r\n"
            replies = s.codes(b"hello" + ending + smuggled + b".\r\n")
            self.assertEqual(len(replies), 1, (ending, replies))
            self.assertEqual(replies[0][:3], "250")
            self.assertEqual(len(s.store.messages), 1)
            self.assertIn(b"MAIL FROM:<evil@x.example>\n", s.store.messages[0].body)

    @pytest.mark.rfc("2920", "3.2", "2920-3.2-1")
    def test_pipelinedAfterData(self):
        """
        Commands pipelined after the end of data are answered after the
        250, in order.
        """
        s = Server().greeted()
        replies = s.codes(TRANSACTION + "x\r\n.\r\nMAIL FROM:<a@b.example>\r\nQUIT\r\n")
        self.assertEqual([r[:3] for r in replies], ["250", "250", "354", "250", "250", "221"])

    @pytest.mark.rfc("5321", "6.1", "5321-6.1-1")
    def test_replyOnlyAfterStorage(self):
        """
        The 250 goes out only once the store says the message is durable,
        and pipelined commands wait for it.
        """
        s = Server().greeted()
        s.store.hold = True
        replies = s.codes(TRANSACTION + "x\r\n.\r\nNOOP\r\n")
        self.assertEqual([r[:3] for r in replies], ["250", "250", "354"])
        s.store.release()
        self.assertEqual([r[:3] for r in s.output()], ["250", "250"])

    def test_storageFailure(self):
        """
        A store that fails gives 451 4.3.0, and the session goes on.
        """
        s = Server().greeted()
        s.store.failWith = OSError(28, "No space left on device")
        replies = s.codes(TRANSACTION + "x\r\n.\r\nNOOP\r\n")
        self.assertEqual(replies[3][:9], "451 4.3.0")
        self.assertEqual(replies[4], "250 2.0.0 Ok")
        self.flushLoggedErrors(OSError)

    @pytest.mark.rfc("1870", "6.3")
    @pytest.mark.rfc("3463", "3")
    def test_tooBig(self):
        """
        A body past the size limit gets 552 5.3.4 after the data, and what
        was stored is thrown away.
        """
        s = Server(maxMessageSize=100).greeted()
        replies = s.codes(TRANSACTION + "x" * 200 + "\r\n.\r\nNOOP\r\n")
        self.assertEqual(replies[3][:9], "552 5.3.4")
        self.assertEqual(replies[4], "250 2.0.0 Ok")
        self.assertEqual(s.store.messages, [])
        self.assertTrue(s.store.started[0].aborted)

    def test_longLine(self):
        """
        A text line far longer than 1000 octets is stored as sent and never
        ends the DATA phase.
        """
        s = Server().greeted()
        line = b"y" * 100000
        replies = s.codes(TRANSACTION.encode() + line + b"\r\nMAIL FROM:<a@b.example>\r\n.\r\n")
        self.assertEqual(replies[-1][:3], "250")
        self.assertEqual(s.store.messages[0].body, line + b"\nMAIL FROM:<a@b.example>\n")

    @pytest.mark.rfc("5321", "6.3", "5321-6.3-1")
    def test_tooManyHops(self):
        """
        More Received headers than the hop limit: 554 5.4.6.
        """
        s = Server(maxHops=2).greeted()
        headers = "Received: from a\r\nReceived: from b\r\nreceived: from c\r\n\r\nbody\r\n"
        self.assertEqual(s.codes(TRANSACTION + headers + ".\r\n")[3][:9], "554 5.4.6")
        s2 = Server(maxHops=3).greeted()
        self.assertEqual(s2.codes(TRANSACTION + headers + ".\r\n")[3][:3], "250")

    @pytest.mark.rfc("5321", "4.4", "5321-4.4-1", "5321-4.4-2", "5321-4.4-3", "5321-4.4-6")
    def test_receivedHeader(self):
        """
        The Received header names the HELO name, the client address, our
        name, ESMTP and the queue ID.
        """
        s = Server().greeted()
        s.codes(TRANSACTION + "x\r\n.\r\n")
        envelope = s.store.messages[0].envelope
        received = envelope.received.decode()
        self.assertTrue(received.startswith("Received: from client.example ([127.0.0.1])\n"))
        self.assertIn("by mx.example.org (smtpmx) with ESMTP id " + envelope.queueId, received)
        self.assertIn("for <alice@example.org>;", received)
        self.assertTrue(received.endswith("+0000\n"))

    def test_abortOnDisconnect(self):
        """
        A client that goes away in the middle of the data leaves nothing
        stored.
        """
        s = Server().greeted()
        s.codes(TRANSACTION + "partial\r\n")
        s.protocol.connectionLost(None)
        self.assertTrue(s.store.started[0].aborted)
        self.assertEqual(s.store.messages, [])


class LimitTests(SynchronousTestCase):
    """
    Line length, timeouts, error counts and connection limits.
    """

    @pytest.mark.rfc("5321", "4.5.3.1.4")
    def test_longCommandLine(self):
        """
        A command line over 512 octets gets 500 5.5.2 and the session goes on.
        """
        s = Server().greeted()
        replies = s.codes("NOOP " + "x" * 600 + "\r\nNOOP\r\n")
        self.assertEqual([r[:9] for r in replies], ["500 5.5.2", "250 2.0.0"])
        self.assertFalse(s.closed)

    def test_unboundedLine(self):
        """
        A line that never ends is cut off and the connection closed.
        """
        s = Server().greeted()
        replies = s.codes("x" * 100000)
        self.assertEqual(replies[0][:9], "500 5.5.2")
        self.assertTrue(s.closed)

    @pytest.mark.rfc("5321", "4.5.3.2.7")
    def test_commandTimeout(self):
        """
        Idle past the command timeout: 421 4.4.2 and close.
        """
        s = Server(commandTimeout=30).greeted()
        s.clock.advance(29)
        self.assertFalse(s.closed)
        s.clock.advance(2)
        self.assertEqual(s.output()[0][:9], "421 4.4.2")
        self.assertTrue(s.closed)

    @pytest.mark.rfc("5321", "4.5.3.2.7")
    def test_dataTimeout(self):
        """
        Idle in DATA past the data timeout: 421 4.4.2, close, nothing kept.
        """
        s = Server(commandTimeout=30, dataTimeout=100).greeted()
        s.codes(TRANSACTION + "partial\r\n")
        s.clock.advance(50)
        self.assertFalse(s.closed)
        s.clock.advance(51)
        self.assertEqual(s.output()[0][:9], "421 4.4.2")
        self.assertTrue(s.store.started[0].aborted)

    @pytest.mark.rfc("5321", "3.8", "5321-3.8-2")
    def test_badCommands(self):
        """
        After 20 bad commands the session gets 421 4.7.0 and is closed.
        """
        s = Server().greeted()
        replies = s.codes("BAD\r\n" * 25)
        self.assertEqual(len(replies), 21)
        self.assertEqual(replies[-1][:9], "421 4.7.0")
        self.assertTrue(s.closed)

    @pytest.mark.rfc("5321", "3.8", "5321-3.8-2")
    def test_tooManyConnectionsPerIp(self):
        """
        Past the per-address limit a connection gets 421 4.7.0 and is closed;
        a closed connection frees its place.
        """
        s = Server(maxConnectionsPerIp=1)
        protocol, transport = s.connect()
        self.assertEqual(transport.value()[:9], b"421 4.7.0")
        self.assertTrue(transport.disconnecting)
        protocol.connectionLost(None)
        s.protocol.connectionLost(None)
        protocol, transport = s.connect()
        self.assertEqual(transport.value()[:3], b"220")

    @pytest.mark.rfc("5321", "3.8", "5321-3.8-2")
    def test_tooManyConnections(self):
        """
        Past the global limit, when no session is idle (the one there
        waits for a verdict), a connection gets 421 4.7.0 and is closed.
        """
        s = Server({"alice@example.org": lambda: Deferred()}, maxConnections=1).greeted()
        s.codes(TRANSACTION)
        _, transport = s.connect()
        self.assertEqual(transport.value()[:9], b"421 4.7.0")
        self.assertIn(b"too many connections", transport.value())
        self.assertTrue(transport.disconnecting)
        self.assertFalse(s.closed)


class StartTLSTests(SynchronousTestCase):
    """
    STARTTLS (RFC 3207) at the protocol level; the real handshake is in the
    end-to-end tests.
    """

    def server(self) -> Server:
        s = Server(tlsOptions=object())
        s.tlsStarted = []
        s.transport.startTLS = s.tlsStarted.append
        s.output()
        return s

    def test_advertised(self):
        """
        EHLO lists STARTTLS when a certificate is configured.
        """
        s = self.server()
        self.assertIn("250-STARTTLS", s.send("EHLO client.example\r\n"))

    @pytest.mark.rfc("3207", "4.2", "3207-4.2-1")
    def test_pipelinedCommandsDiscarded(self):
        """
        Commands pipelined after STARTTLS in the clear get no reply and are
        never run after the handshake.
        """
        s = self.server()
        replies = s.codes("EHLO client.example\r\nSTARTTLS\r\nMAIL FROM:<a@b.example>\r\nNOOP\r\n")
        self.assertEqual(replies, ["250 HELP", "220 2.0.0 Ready to start TLS"])
        self.assertEqual(len(s.tlsStarted), 1)
        self.assertEqual(s.codes("NOOP\r\n"), ["250 2.0.0 Ok"])

    @pytest.mark.rfc("3207", "4.2", "3207-4.2-1", "3207-4.2-4")
    def test_sessionReset(self):
        """
        After STARTTLS the session is back to before EHLO: a MAIL given in
        the clear is forgotten, and EHLO no longer offers STARTTLS.
        """
        s = self.server()
        s.codes("EHLO client.example\r\nMAIL FROM:<a@b.example>\r\nSTARTTLS\r\n")
        self.assertEqual(s.codes("RCPT TO:<alice@example.org>\r\n")[0][:9], "503 5.5.1")
        self.assertEqual(s.codes("MAIL FROM:<a@b.example>\r\n")[0][:9], "503 5.5.1")
        lines = s.send("EHLO client.example\r\n")
        self.assertNotIn("250-STARTTLS", lines)
        self.assertEqual(s.codes("STARTTLS\r\n")[0][:9], "503 5.5.1")

    def test_handshakeRecorded(self):
        """
        When the handshake is done (the protocol is an
        L{IHandshakeListener}), the negotiated version and cipher go to the
        session and into the Received header.
        """
        s = self.server()
        s.codes("EHLO client.example\r\nSTARTTLS\r\n")

        s.transport.getHandle = TLSv13Handle
        s.protocol.handshakeCompleted()
        s.codes("EHLO client.example\r\n" + TRANSACTION + "x\r\n.\r\n")
        self.assertIn(
            b"(using TLSv1.3 with cipher TLS_AES_128_GCM_SHA256 (128/128 bits))",
            s.store.messages[0].envelope.received,
        )

    def test_handshakeUnreadable(self):
        """
        A TLS session whose version cannot be read is logged, and the
        Received header still says ESMTPS, without a version.
        """
        s = self.server()
        s.codes("EHLO client.example\r\nSTARTTLS\r\n")
        s.protocol.handshakeCompleted()
        self.assertEqual(len(self.flushLoggedErrors(AttributeError)), 1)
        s.codes("EHLO client.example\r\n" + TRANSACTION + "x\r\n.\r\n")
        received = s.store.messages[0].envelope.received
        self.assertIn(b" with ESMTPS id ", received)
        self.assertNotIn(b"(using", received)

    def test_receivedSaysESMTPS(self):
        """
        A message received after STARTTLS and EHLO is recorded as ESMTPS.
        """
        s = self.server()
        s.codes("EHLO client.example\r\nSTARTTLS\r\n")
        s.codes("EHLO client.example\r\n" + TRANSACTION + "x\r\n.\r\n")
        self.assertIn(b" with ESMTPS id ", s.store.messages[0].envelope.received)

    @pytest.mark.rfc("3207", "4", "3207-4-2")
    def test_argument(self):
        """
        STARTTLS takes no argument.
        """
        s = self.server()
        self.assertEqual(s.codes("EHLO c\r\nSTARTTLS now\r\n")[-1][:9], "501 5.5.4")


class BackpressureTests(SynchronousTestCase):
    """
    A client that does not read our replies cannot make us buffer without
    bound, nor hold a connection forever.
    """

    def test_notReading(self):
        """
        When the transport's buffer of replies is full, commands are not
        acted on until it drains; then they are answered in order.
        """
        s = Server().greeted()
        s.protocol.pauseProducing()
        self.assertEqual(s.codes("NOOP\r\nRSET\r\n"), [])
        self.assertEqual(s.transport.producerState, "paused")
        s.protocol.resumeProducing()
        self.assertEqual(s.output(), ["250 2.0.0 Ok", "250 2.0.0 Ok"])

    def test_timeoutWhileNotReading(self):
        """
        The idle timeout still runs for a client that does not read, and a
        closing connection that cannot flush is cut off after a grace
        period.
        """
        s = Server(commandTimeout=10).greeted()
        s.protocol.pauseProducing()
        s.clock.advance(11)
        self.assertTrue(s.closed)
        aborted = []
        s.transport.abortConnection = lambda: aborted.append(True)
        s.clock.advance(30)
        self.assertEqual(aborted, [True])

    def test_registeredAsProducer(self):
        """
        The protocol registers with its transport as a streaming producer.
        """
        s = Server()
        self.assertIs(s.transport.producer, s.protocol)
        self.assertTrue(s.transport.streaming)


class ControlCharacterTests(SynchronousTestCase):
    """
    Control characters in addresses never reach a file or the next hop.
    """

    def test_sender(self):
        """
        A reverse-path with a NUL is a syntax error.
        """
        s = Server().greeted()
        self.assertEqual(s.codes("MAIL FROM:<a\x00b@c.example>\r\n")[0][:9], "501 5.5.4")

    def test_remoteRecipient(self):
        """
        A remote forward-path with a control character is a syntax error,
        never relayed; a local one is an unsafe mailbox name.
        """
        s = Server({"a\x01b@example.org": Accept()}).greeted()
        s.codes("MAIL FROM:<a@c.example>\r\n")
        self.assertEqual(s.codes("RCPT TO:<a\x01b@remote.example>\r\n")[0][:9], "501 5.5.4")
        self.assertEqual(s.codes("RCPT TO:<a\x01b@example.org>\r\n")[0][:9], "550 5.1.3")


class CloseTests(SynchronousTestCase):
    """
    Closing a connection schedules exactly one cut-off, cancelled once
    the connection is gone.
    """

    def test_quitThenLost(self):
        """
        After QUIT and the transport's own stopProducing, the connection's
        loss leaves no timer behind.
        """
        s = Server().greeted()
        s.codes("QUIT\r\n")
        s.protocol.stopProducing()
        s.protocol.connectionLost(None)
        self.assertEqual(s.clock.getDelayedCalls(), [])


class ValidatorTimeoutTests(SynchronousTestCase):
    """
    A validator that never answers cannot hold a session for ever.
    """

    def test_hungValidator(self):
        """
        A verdict that does not come within the validator timeout (or the
        command timeout, if shorter) is a temporary failure, 451 4.3.0, and
        the session goes on.
        """
        s = Server({"alice@example.org": lambda: Deferred()}, commandTimeout=30).greeted()
        s.codes("MAIL FROM:<a@b.example>\r\n")
        self.assertEqual(s.codes("RCPT TO:<alice@example.org>\r\nNOOP\r\n"), [])
        s.clock.advance(29)
        self.assertEqual(s.output(), [])
        s.clock.advance(2)
        self.assertEqual(s.output(), ["451 4.3.0 Error: temporary failure checking the recipient, try again later", "250 2.0.0 Ok"])

    def test_verdictAtOnceNoTimer(self):
        """
        A verdict given at once needs no timer: none is set for it.
        """
        s = Server(commandTimeout=30).greeted()
        s.codes("MAIL FROM:<a@b.example>\r\n")
        delays = []
        callLater = s.clock.callLater
        s.clock.callLater = lambda delay, *a, **kw: (delays.append(delay), callLater(delay, *a, **kw))[1]
        self.assertEqual(s.codes("RCPT TO:<alice@example.org>\r\n"), ["250 2.1.5 Ok"])
        self.assertNotIn(30, delays)


class LogTests(SynchronousTestCase):
    """
    The protocol writes the log lines of a connection, the transaction's
    made from the session's record, in the server's namespace.
    """

    def lines(self, events) -> list[tuple[str, str]]:
        """
        The namespace and text of each event.
        """
        return [(e["log_namespace"], formatEvent(e)) for e in events]

    def test_transactionLine(self):
        """
        One line per transaction: queue ID, client, HELO name, sender, each
        recipient's verdict and who gave it, size and result.
        """
        with capturedLogs() as events:
            s = Server().greeted()
            s.codes(TRANSACTION + "hello\r\n.\r\n")
        queueId = s.store.messages[0].envelope.queueId
        self.assertIn(
            (
                "smtpmx.server.SMTPServerProtocol",
                f"{queueId}: client=[127.0.0.1] helo=client.example from=<sender@remote.example> "
                f"to=[<alice@example.org> 250 2.1.5 by dict] size=6 result=250 2.0.0 Ok: queued as {queueId}",
            ),
            self.lines(events),
        )

    def test_tooManyErrorsLine(self):
        """
        The bad-command limit is logged once, when its 421 is sent.
        """
        with capturedLogs() as events:
            s = Server().greeted()
            s.codes("BAD\r\n" * 20)
        self.assertEqual(
            [line for line in self.lines(events) if "too many errors" in line[1]],
            [("smtpmx.server.SMTPServerProtocol", "too many errors from [127.0.0.1]")],
        )
