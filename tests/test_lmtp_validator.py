"""
Tests for the C{lmtp[:ENDPOINT]} validator: the verdict of each reply to
RCPT, which server is asked, one connection reused (LHLO once, RSET
between checks) and remade, the bounded waits, against a fake LMTP server
on a loopback port and a UNIX socket, then against a real private Dovecot
(L{tests.dovecot}).
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from typing import Callable, Optional

from twisted.internet import reactor
from twisted.internet.protocol import Factory
from twisted.internet.task import deferLater
from twisted.protocols.basic import LineOnlyReceiver
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from smtpmx.address import parseAddress
from smtpmx.config import Config
from smtpmx.plugins.builtin_validators import lmtp as lmtpFactory
from smtpmx.reply import Reply
from smtpmx.testing import validationContext
from smtpmx.validation import Accept, Reject, ValidationContext
from smtpmx.validators.lmtp import LmtpValidator, verdictOf
from tests.dovecot import USERS_REREAD, RunningDovecot, dovecotMissing
from tests.helpers import dropConnections, listenLoopback


def context(config: Optional[Config] = None, **fields) -> ValidationContext:
    """
    A validation context with the real reactor, for example.org (local)
    unless told otherwise.
    """
    base = validationContext(
        config=config or Config(domains=("example.org", "example.com")),
        clientHost="192.0.2.7",
        reversePath=parseAddress("sender@example.net"),
        reactor=reactor,
    )
    return dataclasses.replace(base, **fields)


class VerdictTests(SynchronousTestCase):
    """
    L{verdictOf}: the LMTP server's reply to RCPT as a verdict.
    """

    def test_accepted(self) -> None:
        """
        A 2xx accepts the recipient.
        """
        self.assertIsInstance(verdictOf(Reply(250, "2.1.5", "OK")), Accept)

    def test_unknownUser(self) -> None:
        """
        A 550 with an enhanced code keeps the server's code and text
        (Dovecot's C{550 5.1.1 <x> User doesn't exist}); without one it is
        C{550 5.1.1 User unknown}.
        """
        verdict = verdictOf(Reply(550, "5.1.1", "<x@example.org> User doesn't exist: x@example.org"))
        self.assertEqual((verdict.code, verdict.enhanced), (550, "5.1.1"))
        self.assertIn("User doesn't exist", verdict.text)
        verdict = verdictOf(Reply(550, None, "no such user"))
        self.assertEqual((verdict.code, verdict.enhanced, verdict.text), (550, "5.1.1", "User unknown"))

    def test_overQuota(self) -> None:
        """
        A quota's 552 or 452 is given as it came; a missing enhanced code
        is C{X.2.2}, mailbox full (RFC 3463 section 3.3).
        """
        verdict = verdictOf(Reply(552, "5.2.2", "<bob@example.org> Quota exceeded (mailbox for user is full)"))
        self.assertEqual((verdict.code, verdict.enhanced), (552, "5.2.2"))
        self.assertIn("Quota exceeded", verdict.text)
        verdict = verdictOf(Reply(452, None, "Mailbox is full"))
        self.assertEqual((verdict.code, verdict.enhanced, verdict.text), (452, "4.2.2", "Mailbox is full"))

    def test_otherReplies(self) -> None:
        """
        Other 4xx and 5xx replies are passed on; C{421} (the server is
        closing) is C{451 4.3.0}.
        """
        verdict = verdictOf(Reply(451, "4.3.0", "Temporary internal error"))
        self.assertEqual((verdict.code, verdict.enhanced), (451, "4.3.0"))
        verdict = verdictOf(Reply(554, None, "no"))
        self.assertEqual((verdict.code, verdict.enhanced), (554, "5.0.0"))
        verdict = verdictOf(Reply(421, "4.3.2", "shutting down"))
        self.assertEqual((verdict.code, verdict.enhanced), (451, "4.3.0"))


class WhichServerTests(SynchronousTestCase):
    """
    Which LMTP server is asked about a recipient, if any.
    """

    def test_explicitEndpoint(self) -> None:
        """
        C{lmtp:ENDPOINT} asks that server about every local recipient.
        """
        validator = lmtpFactory.makeValidator("tcp:127.0.0.1:24")
        config = Config(domains=("example.org",))
        session = context(config)
        self.assertEqual(validator.endpointFor(session, parseAddress("a@example.org")), "tcp:127.0.0.1:24")

    def test_domainBackend(self) -> None:
        """
        Plain C{lmtp} asks each domain's LMTP backend, and has no opinion
        on a Maildir domain.
        """
        validator = lmtpFactory.makeValidator(None)
        config = Config(
            domains=("example.org", "example.com"),
            delivery=(("example.org", "lmtp:unix:/run/dovecot/lmtp"), (None, "maildir")),
        )
        session = context(config)
        self.assertEqual(validator.endpointFor(session, parseAddress("a@example.org")), "unix:/run/dovecot/lmtp")
        self.assertIsNone(validator.endpointFor(session, parseAddress("a@example.com")))

    def test_remoteNotAsked(self) -> None:
        """
        A recipient that is not local (relayed) is nobody's LMTP business:
        no opinion, without connecting.
        """
        validator = lmtpFactory.makeValidator("tcp:127.0.0.1:24")
        d = validator.validateRecipient(context(), parseAddress("someone@example.net"))
        self.assertIsNone(self.successResultOf(d))

    def test_badEndpoint(self) -> None:
        """
        An argument that is not a client endpoint is refused at start-up.
        """
        with self.assertRaises(ValueError):
            lmtpFactory.makeValidator("bogus:here")


class FakeLmtpServer(LineOnlyReceiver):
    """
    One connection to L{FakeLmtp}: a greeting, LHLO, and the factory's
    answer to each RCPT (L{None}: silence).
    """

    delimiter = b"\r\n"

    def connectionMade(self) -> None:
        """
        Greet, and count the connection.
        """
        self.factory.connections.append(self)
        self.transport.write(b"220 fake LMTP ready\r\n")

    def lineReceived(self, line: bytes) -> None:
        """
        Record the command and answer it.
        """
        command = line.decode("utf-8")
        self.factory.commands.append(command)
        verb = command.split(" ", 1)[0].upper()
        if verb == "LHLO":
            extensions = ["PIPELINING", "ENHANCEDSTATUSCODES"] if self.factory.pipelining else ["ENHANCEDSTATUSCODES"]
            lines = ["fake"] + extensions
            self.transport.write("".join(
                f"250{'-' if i < len(lines) - 1 else ' '}{text}\r\n" for i, text in enumerate(lines)
            ).encode())
        elif verb == "MAIL":
            self.transport.write(b"250 2.1.0 OK\r\n")
        elif verb == "RCPT":
            answer = self.factory.answer(command)
            if answer is not None:
                self.transport.write(answer.encode() + b"\r\n")
        elif verb == "RSET":
            self.transport.write(b"250 2.0.0 OK\r\n")
            if self.factory.closeAfterCheck:
                self.transport.loseConnection()
        else:
            self.transport.write(b"500 5.5.1 what\r\n")


class FakeLmtp(Factory):
    """
    A fake LMTP server answering each RCPT with C{answer(command)}.

    @ivar commands: every command received.
    @ivar connections: every connection accepted.
    """

    protocol = FakeLmtpServer

    def __init__(self, answer: Callable[[str], Optional[str]], pipelining: bool = True) -> None:
        self.answer = answer
        self.pipelining = pipelining
        self.closeAfterCheck = False
        self.commands: list[str] = []
        self.connections: list[FakeLmtpServer] = []


class FakeServerTests(TestCase):
    """
    The validator against a fake LMTP server on a loopback TCP port.
    """

    def serve(self, answer: Callable[[str], Optional[str]], pipelining: bool = True) -> tuple[FakeLmtp, LmtpValidator]:
        """
        Start a fake server and a validator asking it; both are stopped
        at the end of the test.
        """
        server = FakeLmtp(answer, pipelining)
        validator = LmtpValidator(f"tcp:127.0.0.1:{listenLoopback(self, server)}")
        self.addCleanup(validator.close)
        return server, validator

    async def ask(self, validator: LmtpValidator, recipient: str = "alice@example.org"):
        """
        The validator's verdict on one recipient.
        """
        return await validator.validateRecipient(context(), parseAddress(recipient))

    async def test_eachReply(self) -> None:
        """
        250 accepts; 550 is C{550 5.1.1}; the quota's 552 and 452 come
        through as they are; every check is C{MAIL FROM:<>}, RCPT, RSET.
        """
        replies = {
            "alice": "250 2.1.5 OK",
            "nobody": "550 5.1.1 <nobody@example.org> User doesn't exist: nobody@example.org",
            "full": "552 5.2.2 <full@example.org> Quota exceeded (mailbox for user is full)",
            "tempfull": "452 4.2.2 <tempfull@example.org> Mailbox is full",
        }
        server, validator = self.serve(lambda c: replies[c.split("<")[1].split("@")[0]])
        self.assertIsInstance(await self.ask(validator, "alice@example.org"), Accept)
        verdict = await self.ask(validator, "nobody@example.org")
        self.assertEqual((verdict.code, verdict.enhanced), (550, "5.1.1"))
        verdict = await self.ask(validator, "full@example.org")
        self.assertEqual((verdict.code, verdict.enhanced), (552, "5.2.2"))
        self.assertIn("Quota exceeded", verdict.text)
        verdict = await self.ask(validator, "tempfull@example.org")
        self.assertEqual((verdict.code, verdict.enhanced), (452, "4.2.2"))
        self.assertEqual(server.commands[1:4], ["MAIL FROM:<>", "RCPT TO:<alice@example.org>", "RSET"])

    async def test_connectionReused(self) -> None:
        """
        Checks share one connection: LHLO once, RSET between checks.
        """
        server, validator = self.serve(lambda c: "250 2.1.5 OK")
        for _ in range(3):
            self.assertIsInstance(await self.ask(validator), Accept)
        self.assertEqual(len(server.connections), 1)
        self.assertEqual([c.split()[0] for c in server.commands].count("LHLO"), 1)
        self.assertEqual([c.split()[0] for c in server.commands].count("RSET"), 3)

    async def test_withoutPipelining(self) -> None:
        """
        A server that does not offer PIPELINING is sent one command at a
        time, and answers the same.
        """
        server, validator = self.serve(lambda c: "550 5.1.1 no", pipelining=False)
        verdict = await self.ask(validator)
        self.assertEqual((verdict.code, verdict.enhanced), (550, "5.1.1"))
        self.assertIsInstance(await self.ask(validator), Reject)
        self.assertEqual(len(server.connections), 1)

    async def test_concurrentChecks(self) -> None:
        """
        Checks asked at once take turns on the one connection.
        """
        server, validator = self.serve(lambda c: "250 2.1.5 OK")
        from twisted.internet.defer import gatherResults

        verdicts = await gatherResults([
            validator.validateRecipient(context(), parseAddress(f"u{i}@example.org")) for i in range(5)
        ])
        self.assertTrue(all(isinstance(v, Accept) for v in verdicts))
        self.assertEqual(len(server.connections), 1)

    async def test_closedWhileIdle(self) -> None:
        """
        A server that closes the connection after a check (an idle
        timeout) is connected to again for the next one.
        """
        server, validator = self.serve(lambda c: "250 2.1.5 OK")
        server.closeAfterCheck = True
        self.assertIsInstance(await self.ask(validator), Accept)
        self.assertIsInstance(await self.ask(validator), Accept)
        self.assertEqual(len(server.connections), 2)

    async def test_serverDown(self) -> None:
        """
        No server listening: C{451 4.3.0}.
        """
        port = reactor.listenTCP(0, Factory(), interface="127.0.0.1")
        number = port.getHost().port
        await port.stopListening()
        validator = LmtpValidator(f"tcp:127.0.0.1:{number}")
        verdict = await self.ask(validator)
        self.assertEqual((verdict.code, verdict.enhanced), (451, "4.3.0"))

    async def test_silentServer(self) -> None:
        """
        A server that never answers RCPT: C{451 4.3.0} within the bound,
        the connection dropped, and the next recipient asked on a new one.
        """
        answers = iter([None, "250 2.1.5 OK"])
        server, validator = self.serve(lambda c: next(answers))
        validator.timeout = 0.5
        started = time.monotonic()
        verdict = await self.ask(validator)
        self.assertLess(time.monotonic() - started, 3)
        self.assertEqual((verdict.code, verdict.enhanced), (451, "4.3.0"))
        self.assertIsInstance(await self.ask(validator), Accept)
        self.assertEqual(len(server.connections), 2)

    async def test_cancelledCheck(self) -> None:
        """
        A check the session gives up on (its own validator timeout) frees
        the connection's turn: the next check is answered, on a new
        connection since the old one's late replies could not be told
        from the new check's.
        """
        answers = iter([None, "250 2.1.5 OK"])
        server, validator = self.serve(lambda c: next(answers))
        d = validator.validateRecipient(context(), parseAddress("alice@example.org"))
        await deferLater(reactor, 0.2)
        d.cancel()
        self.failureResultOf(d)
        self.assertIsInstance(await self.ask(validator), Accept)
        self.assertEqual(len(server.connections), 2)

    def test_boundedByDefault(self) -> None:
        """
        Every check is bounded by 10 seconds unless told otherwise.
        """
        self.assertEqual(LmtpValidator().timeout, 10.0)
        self.assertEqual(lmtpFactory.makeValidator("tcp:127.0.0.1:24").timeout, 10.0)

    async def test_garbledReply(self) -> None:
        """
        A reply that is not a reply (a protocol error): C{451 4.3.0}, and
        a fresh connection next time.
        """
        answers = iter(["hello there", "250 2.1.5 OK"])
        server, validator = self.serve(lambda c: next(answers))
        verdict = await self.ask(validator)
        self.assertEqual((verdict.code, verdict.enhanced), (451, "4.3.0"))
        self.assertIsInstance(await self.ask(validator), Accept)
        self.assertEqual(len(server.connections), 2)

    async def test_unixSocket(self) -> None:
        """
        A UNIX-domain endpoint (Dovecot's C{/run/dovecot/lmtp}) works like
        a TCP one.
        """
        directory = tempfile.mkdtemp()
        self.addCleanup(os.rmdir, directory)
        path = os.path.join(directory, "lmtp")
        server = FakeLmtp(lambda c: "550 5.1.1 unix says no")
        port = reactor.listenUNIX(path, server)
        self.addCleanup(port.stopListening)
        self.addCleanup(dropConnections, server)
        validator = LmtpValidator(f"unix:{path}")
        self.addCleanup(validator.close)
        verdict = await self.ask(validator)
        self.assertEqual((verdict.code, verdict.text), (550, "unix says no"))

    async def test_domainBackendAsked(self) -> None:
        """
        Plain C{lmtp} asks the server of the recipient domain's
        C{--delivery DOMAIN=lmtp:ENDPOINT}.
        """
        server = FakeLmtp(lambda c: "550 5.1.1 no")
        port = reactor.listenTCP(0, server, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.addCleanup(dropConnections, server)
        validator = LmtpValidator()
        self.addCleanup(validator.close)
        config = Config(
            domains=("example.org", "example.com"),
            delivery=(("example.org", f"lmtp:tcp:127.0.0.1:{port.getHost().port}"),),
        )
        verdict = await validator.validateRecipient(context(config), parseAddress("x@example.org"))
        self.assertEqual(verdict.code, 550)
        self.assertIsNone(await validator.validateRecipient(context(config), parseAddress("x@example.com")))


class DovecotTests(TestCase):
    """
    The private Dovecot of L{tests.dovecot} itself, and the validator
    against it: the answers a real LMTP server gives at RCPT.
    """

    def setUp(self) -> None:
        """
        Start a private Dovecot, or skip saying why it cannot run.
        """
        missing = dovecotMissing()
        if missing:
            raise SkipTest(missing)
        self.dovecot = RunningDovecot.start(self.addCleanup)

    def test_harnessDeliversAndReads(self) -> None:
        """
        A message with two recipients, handed over LMTP on the TCP port and
        on the UNIX socket (Python's L{smtplib.LMTP}), is read back by
        each user over IMAP, with the C{Return-Path} Dovecot adds.
        """
        import smtplib

        body = b"Subject: harness\r\nMessage-ID: <h1@example.net>\r\n\r\nover TCP\r\n"
        client = smtplib.LMTP("127.0.0.1", self.dovecot.lmtpPort, timeout=15)
        refused = client.sendmail("sender@example.net", ["alice@example.org", "bob@example.org"], body)
        # smtplib reads one reply after the data; LMTP sends one per
        # recipient (RFC 2033 section 4.2): bob's is the second.
        self.assertEqual(client.getreply()[0], 250)
        client.quit()
        self.assertEqual(refused, {})
        client = smtplib.LMTP(self.dovecot.lmtpSocket, timeout=15)
        client.sendmail("sender@example.net", ["alice@example.org"], body.replace(b"TCP", b"UNIX"))
        client.quit()
        alice = self.dovecot.messages("alice@example.org")
        bob = self.dovecot.messages("bob@example.org")
        self.assertEqual(len(alice), 2)
        self.assertEqual(len(bob), 1)
        self.assertTrue(bob[0].startswith(b"Return-Path: <sender@example.net>"))
        self.assertIn(b"over TCP", bob[0])
        self.assertTrue(any(b"over UNIX" in m for m in alice))
        self.assertTrue(os.path.isdir(os.path.join(self.dovecot.maildirRoot, "example.org", "alice", "new")))

    def test_harnessJunkFolder(self) -> None:
        """
        The example configuration shows the Maildir++ folder C{.Junk} as
        the IMAP folder C{Junk}, auto-subscribed.
        """
        session = self.dovecot.imap("alice@example.org")
        try:
            _, folders = session.lsub()
        finally:
            session.logout()
        self.assertTrue(any(b'"Junk"' in f or f.endswith(b" Junk") for f in folders), folders)

    async def ask(self, recipient: str, endpoint: Optional[str] = None) -> object:
        """
        The verdict of a validator asking this Dovecot over C{endpoint}
        (its TCP LMTP port by default) about C{recipient}.
        """
        validator = LmtpValidator(endpoint or self.dovecot.lmtpTCP)
        self.addCleanup(validator.close)
        return await validator.validateRecipient(context(), parseAddress(recipient))

    async def test_knownUser(self) -> None:
        """
        A user of the passwd-file is accepted, over TCP and over the UNIX
        socket.
        """
        self.assertIsInstance(await self.ask("alice@example.org"), Accept)
        self.assertIsInstance(await self.ask("bob+tag@example.org", self.dovecot.lmtpUNIX), Accept)

    async def test_unknownUser(self) -> None:
        """
        An address Dovecot does not know is C{550 5.1.1}, with Dovecot's
        text.
        """
        verdict = await self.ask("nobody@example.org")
        self.assertEqual((verdict.code, verdict.enhanced), (550, "5.1.1"))
        self.assertIn("doesn't exist", verdict.text)

    async def test_removedUser(self) -> None:
        """
        A user removed from the passwd-file is refused once Dovecot has
        read the file again, on the same connection.
        """
        validator = LmtpValidator(self.dovecot.lmtpTCP)
        self.addCleanup(validator.close)
        self.assertIsInstance(await validator.validateRecipient(context(), parseAddress("bob@example.org")), Accept)
        self.dovecot.removeUser("bob@example.org")
        await deferLater(reactor, USERS_REREAD)
        verdict = await validator.validateRecipient(context(), parseAddress("bob@example.org"))
        self.assertEqual((verdict.code, verdict.enhanced), (550, "5.1.1"))

    async def test_overQuota(self) -> None:
        """
        A user over quota (Dovecot's quota plugin, checked at RCPT) is
        refused with Dovecot's C{552 5.2.2}; under quota, accepted.
        """
        self.assertIsInstance(await self.ask("carol@example.org"), Accept)
        self.dovecot.fileMessage("carol@example.org", b"Subject: big\r\n\r\n" + b"x" * 4000 + b"\r\n")
        verdict = await self.ask("carol@example.org")
        self.assertEqual((verdict.code, verdict.enhanced), (552, "5.2.2"))
        self.assertIn("Quota exceeded", verdict.text)

    async def test_dovecotStopped(self) -> None:
        """
        Dovecot stopped: C{451 4.3.0}, on a validator that had a
        connection open and on a new one.
        """
        validator = LmtpValidator(self.dovecot.lmtpTCP)
        self.addCleanup(validator.close)
        self.assertIsInstance(await validator.validateRecipient(context(), parseAddress("alice@example.org")), Accept)
        self.dovecot.stop()
        verdict = await validator.validateRecipient(context(), parseAddress("alice@example.org"))
        self.assertEqual((verdict.code, verdict.enhanced), (451, "4.3.0"))
        verdict = await self.ask("alice@example.org", self.dovecot.lmtpUNIX)
        self.assertEqual((verdict.code, verdict.enhanced), (451, "4.3.0"))


class LmtpValidatorOnTheWireTests(SynchronousTestCase):
    """
    The real C{twistd smtpmx --validator lmtp:ENDPOINT --validator any}
    asking a real private Dovecot: what the SMTP client hears at RCPT.
    """

    def test_dovecotDecidesAtRcpt(self) -> None:
        """
        A Dovecot user is accepted and its message delivered; an unknown
        address is C{550 5.1.1}, a user over quota C{552 5.2.2}, both in
        the SMTP dialogue; with Dovecot stopped, C{451 4.3.0}.  The log
        says C{by lmtp}.
        """
        import smtplib

        from tests.e2e import RunningServer
        from tests.helpers import message

        missing = dovecotMissing()
        if missing:
            raise SkipTest(missing)
        dovecot = RunningDovecot.start(self.addCleanup)
        dovecot.fileMessage("carol@example.org", b"Subject: big\r\n\r\n" + b"x" * 4000 + b"\r\n")
        server = RunningServer.start(
            self.addCleanup,
            ["--domain", "example.org", "--validator", f"lmtp:{dovecot.lmtpUNIX}", "--validator", "any"],
        )

        def rcpts(*recipients: str) -> list[tuple[int, str]]:
            with smtplib.SMTP(server.host, server.port, local_hostname="client.example", timeout=30) as c:
                c.ehlo()
                c.mail("sender@remote.example")
                answers = [(code, text.decode()) for code, text in (c.rcpt(r) for r in recipients)]
                if answers[0][0] == 250:
                    self.assertEqual(c.data(message(subject="wire", to=recipients[0]))[0], 250)
                return answers

        alice, nobody, carol = rcpts("alice@example.org", "nobody@example.org", "carol@example.org")
        self.assertEqual(alice[0], 250)
        self.assertEqual(nobody[0], 550)
        self.assertTrue(nobody[1].startswith("5.1.1"), nobody)
        self.assertEqual(carol[0], 552)
        self.assertTrue(carol[1].startswith("5.2.2"), carol)
        self.assertEqual(len(server.newMessages("example.org", "alice")), 1)
        self.assertIn("by lmtp", server.output())

        dovecot.stop()
        [(code, text)] = rcpts("alice@example.org")
        self.assertEqual((code, text[:5]), (451, "4.3.0"))
        self.assertNotIn("Traceback", server.log())
