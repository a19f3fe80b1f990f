"""
Tests for the C{policy:ENDPOINT} validator (Postfix's SMTPD access policy
delegation protocol): the actions, the attributes sent, one connection
reused and remade, the bounded waits, against a fake policy server on a
loopback port, then against a real postgrey (L{tests.postgrey}).
"""

from __future__ import annotations

import dataclasses
import os
import smtplib
import tempfile
import time
from typing import Callable, Optional

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.internet.testing import MemoryReactorClock
from twisted.protocols.basic import LineOnlyReceiver
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from smtpmx.address import parseAddress
from smtpmx.plugins.builtin_validators import policy as policyFactory
from smtpmx.testing import validationContext
from smtpmx.validation import Accept, Reject, ValidationContext
from smtpmx.validators.policy import (
    PolicyValidator,
    encodeRequest,
    requestAttributes,
    verdictOf,
)
from tests.e2e import RunningServer, freePort
from tests.helpers import dropConnections, listenLoopback, message, unique
from tests.postgrey import RunningPostgrey, postgreyMissing
from tests.serverhelpers import Server

# postgrey's greylisting delay in these tests, in seconds.
DELAY = 2

# Every blocking operation of an SMTP client is bounded by this.
TIMEOUT = 15

# What Postfix sends at RCPT (SMTPD_POLICY_README), and nothing else.
ATTRIBUTES = {
    "request", "protocol_state", "protocol_name", "client_address", "client_name",
    "reverse_client_name", "helo_name", "sender", "recipient", "recipient_count",
    "queue_id", "instance", "size",
}


def context(**fields) -> ValidationContext:
    """
    A validation context for the tests, with the real reactor unless told
    otherwise.
    """
    base = validationContext(
        clientHost="192.0.2.7",
        heloName="client.example",
        reversePath=parseAddress("sender@example.net"),
    )
    fields.setdefault("reactor", reactor)
    return dataclasses.replace(base, **fields)


class VerdictTests(SynchronousTestCase):
    """
    The actions of Postfix's C{access(5)} map to verdicts as docs/plugins.rst
    says.
    """

    def assertRefused(self, action: str, code: int, enhanced: str, text: str) -> None:
        """
        C{action} is a refusal with that reply.
        """
        verdict = verdictOf(action)
        self.assertIsInstance(verdict, Reject)
        self.assertEqual((verdict.code, verdict.enhanced, verdict.text), (code, enhanced, text))

    def test_ok(self) -> None:
        """
        C{OK}, in any case, accepts the recipient.
        """
        self.assertIsInstance(verdictOf("OK"), Accept)
        self.assertIsInstance(verdictOf("ok"), Accept)

    def test_noOpinion(self) -> None:
        """
        C{DUNNO}, and actions smtpmx does not act on (postgrey's C{PREPEND}
        after the delay, C{WARN}, a 2xx code), are no opinion.
        """
        for action in ("DUNNO", "dunno", "PREPEND X-Greylist: delayed 3 seconds", "WARN hm",
                       "HOLD", "250 fine", ""):
            self.assertIsNone(verdictOf(action), action)

    def test_reject(self) -> None:
        """
        C{REJECT [text]} is C{550 5.7.1 text}; an enhanced code at the
        start of the text is taken.
        """
        self.assertRefused("REJECT Go away", 550, "5.7.1", "Go away")
        self.assertRefused("reject", 550, "5.7.1", "Access denied")
        self.assertRefused("REJECT 5.7.23 SPF fail", 550, "5.7.23", "SPF fail")

    def test_defer(self) -> None:
        """
        C{DEFER} and C{DEFER_IF_PERMIT [text]} are C{450 4.7.1 text}: what
        postgrey answers a greylisted triplet.
        """
        self.assertRefused("DEFER_IF_PERMIT Greylisted, see http://x/", 450, "4.7.1",
                           "Greylisted, see http://x/")
        self.assertRefused("DEFER", 450, "4.7.1", "Try again later")
        self.assertRefused("defer_if_permit", 450, "4.7.1", "Try again later")

    def test_code(self) -> None:
        """
        C{NNN text} is that reply; the enhanced code is the text's own when
        it begins with one of the reply's class (Dovecot's quota-status
        answers C{552 5.2.2 Mailbox is full}), else C{X.7.1}.
        """
        self.assertRefused("552 5.2.2 Mailbox is full", 552, "5.2.2", "Mailbox is full")
        self.assertRefused("450 4.2.2 Over quota", 450, "4.2.2", "Over quota")
        self.assertRefused("554 Go away", 554, "5.7.1", "Go away")
        self.assertRefused("550 4.1.1 Mixed up", 550, "5.7.1", "4.1.1 Mixed up")
        self.assertRefused("551", 551, "5.7.1", "Access denied")

    def test_421(self) -> None:
        """
        C{421}, which would end the session, is answered C{450}: a
        recipient's policy does not close the connection.
        """
        self.assertRefused("421 4.3.2 Busy", 450, "4.3.2", "Busy")


class RequestTests(SynchronousTestCase):
    """
    The request is the one Postfix sends at RCPT.
    """

    def test_attributes(self) -> None:
        """
        Every attribute Postfix sends at RCPT is there, with the client's
        address, HELO name, sender, recipient, MAIL's SIZE; client names
        are C{unknown} (postgrey answers C{DUNNO} without them).
        """
        attributes = requestAttributes(
            context(declaredSize=1234), parseAddress("Bob@example.org"), "1.2.3"
        )
        self.assertEqual(set(attributes), ATTRIBUTES)
        self.assertEqual(attributes["request"], "smtpd_access_policy")
        self.assertEqual(attributes["protocol_state"], "RCPT")
        self.assertEqual(attributes["protocol_name"], "ESMTP")
        self.assertEqual(attributes["client_address"], "192.0.2.7")
        self.assertEqual(attributes["client_name"], "unknown")
        self.assertEqual(attributes["reverse_client_name"], "unknown")
        self.assertEqual(attributes["helo_name"], "client.example")
        self.assertEqual(attributes["sender"], "sender@example.net")
        self.assertEqual(attributes["recipient"], "Bob@example.org")
        self.assertEqual(attributes["recipient_count"], "0")
        self.assertEqual(attributes["queue_id"], "")
        self.assertEqual(attributes["instance"], "1.2.3")
        self.assertEqual(attributes["size"], "1234")

    def test_nullSenderHeloNoSize(self) -> None:
        """
        The null reverse-path is an empty C{sender}; after HELO the
        protocol is C{SMTP}; without SIZE the size is C{0}.
        """
        attributes = requestAttributes(
            context(reversePath=None, esmtp=False), parseAddress("bob@example.org"), "1"
        )
        self.assertEqual(
            (attributes["sender"], attributes["protocol_name"], attributes["size"]),
            ("", "SMTP", "0"),
        )

    def test_encoding(self) -> None:
        """
        The request is C{name=value} lines and an empty line, in UTF-8; a
        value never carries a line break into the next attribute.
        """
        attributes = requestAttributes(
            context(heloName="evil\nrequest=x"), parseAddress("jösé@example.org"), "1"
        )
        wire = encodeRequest(attributes)
        self.assertTrue(wire.endswith(b"\n\n"))
        lines = wire.decode("utf-8").split("\n")[:-2]
        self.assertEqual(len(lines), len(ATTRIBUTES))
        self.assertIn("recipient=jösé@example.org", lines)
        self.assertIn("helo_name=evil request=x", lines)

    def test_sessionFillsTheContext(self) -> None:
        """
        The session gives validators whether the client said EHLO, MAIL's
        SIZE and its reactor, for C{protocol_name}, C{size} and the
        connection.
        """
        server = Server(verdicts={"bob@example.org": Accept()}).greeted()
        seen = []

        def record(session, recipient):
            seen.append(session)
            return Accept()

        server.validator.validateRecipient = record
        server.send("MAIL FROM:<a@example.net> SIZE=4321\r\nRCPT TO:<bob@example.org>\r\n")
        self.assertEqual(
            (seen[0].esmtp, seen[0].declaredSize, seen[0].reactor), (True, 4321, server.clock)
        )
        server.send("RSET\r\nHELO client.example\r\nMAIL FROM:<a@example.net>\r\n"
                    "RCPT TO:<bob@example.org>\r\n")
        self.assertEqual((seen[1].esmtp, seen[1].declaredSize), (False, None))


class FactoryTests(SynchronousTestCase):
    """
    C{--validator policy:ENDPOINT} checks its endpoint at start-up.
    """

    def test_endpoints(self) -> None:
        """
        TCP and UNIX endpoint strings make a validator; nothing connects
        yet.
        """
        for description in ("tcp:127.0.0.1:10023", "unix:/run/postgrey.sock",
                            "tcp:host=::1:port=10023"):
            validator = policyFactory.makeValidator(description)
            self.assertIsInstance(validator, PolicyValidator)
            self.assertEqual(validator.description, description)

    def test_bad(self) -> None:
        """
        No endpoint, an unknown endpoint type or a bad port stops
        start-up with a C{ValueError}.
        """
        for argument in (None, "", "bogus:x", "tcp:127.0.0.1:port"):
            self.assertRaises(ValueError, policyFactory.makeValidator, argument)

    def test_timeoutOnAClock(self) -> None:
        """
        A server that cannot be reached in time gives C{451 4.3.0} after
        10 seconds of the reactor's clock, not before, and the connection
        attempt is given up.
        """
        memory = MemoryReactorClock()
        validator = PolicyValidator("tcp:127.0.0.1:10023")
        d = validator.validateRecipient(context(reactor=memory), parseAddress("bob@example.org"))
        self.assertEqual(len(memory.tcpClients), 1)
        memory.advance(9.9)
        self.assertNoResult(d)
        memory.advance(0.2)
        verdict = self.successResultOf(d)
        self.assertEqual((verdict.code, verdict.enhanced), (451, "4.3.0"))
        self.assertTrue(memory.connectors[0].stoppedConnecting)


class FakePolicyServer(LineOnlyReceiver):
    """
    One connection to L{FakePolicy}: records each request and answers with
    the factory's next action.
    """

    delimiter = b"\n"

    def connectionMade(self) -> None:
        """
        Count the connection.
        """
        self.factory.connections.append(self)
        self.attributes: dict[str, str] = {}

    def lineReceived(self, line: bytes) -> None:
        """
        Collect a request; answer it at its empty line.
        """
        if line:
            name, _, value = line.decode("utf-8").partition("=")
            self.attributes[name] = value
            return
        request, self.attributes = self.attributes, {}
        self.factory.requests.append(request)
        action = self.factory.answer(request)
        if action is None:
            return
        self.transport.write(f"action={action}\n\n".encode("utf-8"))
        if self.factory.closeAfterReply:
            self.transport.loseConnection()


class FakePolicy(Factory):
    """
    A fake policy server: answers each request with C{answer(request)}
    (L{None}: stays silent).

    @ivar requests: every request received, as a dict.
    @ivar connections: every connection accepted.
    """

    protocol = FakePolicyServer

    def __init__(self, answer: Callable[[dict], Optional[str]]) -> None:
        self.answer = answer
        self.requests: list[dict[str, str]] = []
        self.connections: list[FakePolicyServer] = []
        self.closeAfterReply = False


class PolicyServerTests(TestCase):
    """
    The validator against a fake policy server on a loopback TCP port.
    """

    def serve(self, answer: Callable[[dict], Optional[str]]) -> tuple[FakePolicy, PolicyValidator]:
        """
        Start a fake server and a validator for it; both are stopped at
        the end of the test.
        """
        server = FakePolicy(answer)
        validator = PolicyValidator(f"tcp:127.0.0.1:{listenLoopback(self, server)}")
        self.addCleanup(validator.close)
        return server, validator

    async def ask(self, validator: PolicyValidator, recipient: str = "bob@example.org",
                  session: Optional[ValidationContext] = None):
        """
        The validator's verdict on one recipient.
        """
        return await validator.validateRecipient(session or context(), parseAddress(recipient))

    async def test_trustedClientNotAsked(self) -> None:
        """
        A client in C{--relay-network} (the defaults hold 127.0.0.0/8) is
        not asked about: the validator has no opinion and the server hears
        nothing, so our own users are never greylisted; others are asked.
        """
        server, validator = self.serve(lambda request: "OK")
        verdict = await self.ask(validator, session=context(clientHost="127.0.0.1"))
        self.assertIsNone(verdict)
        self.assertEqual(server.requests, [])
        verdict = await self.ask(validator, session=context(clientHost="192.0.2.7"))
        self.assertIsInstance(verdict, Accept)
        self.assertEqual(len(server.requests), 1)

    async def test_actions(self) -> None:
        """
        The server's actions decide: C{OK} accepts, C{DUNNO} has no
        opinion, C{REJECT text} is C{550 5.7.1 text}, C{DEFER_IF_PERMIT}
        is C{450 4.7.1}, C{NNN text} that reply.
        """
        actions = {
            "ok@example.org": "OK",
            "dunno@example.org": "DUNNO",
            "reject@example.org": "REJECT No such luck",
            "defer@example.org": "DEFER_IF_PERMIT Greylisted",
            "full@example.org": "552 5.2.2 Mailbox is full",
        }
        _, validator = self.serve(lambda r: actions[r["recipient"]])
        self.assertIsInstance(await self.ask(validator, "ok@example.org"), Accept)
        self.assertIsNone(await self.ask(validator, "dunno@example.org"))
        for recipient, reply in (
            ("reject@example.org", (550, "5.7.1", "No such luck")),
            ("defer@example.org", (450, "4.7.1", "Greylisted")),
            ("full@example.org", (552, "5.2.2", "Mailbox is full")),
        ):
            verdict = await self.ask(validator, recipient)
            self.assertEqual((verdict.code, verdict.enhanced, verdict.text), reply)

    async def test_attributesSent(self) -> None:
        """
        The server gets Postfix's RCPT attributes; every recipient of one
        transaction has the same C{instance}, the next transaction another.
        """
        server, validator = self.serve(lambda r: "DUNNO")
        first = context()
        await self.ask(validator, "a@example.org", first)
        await self.ask(validator, "b@example.org", first)
        await self.ask(validator, "c@example.org", context())
        self.assertEqual(set(server.requests[0]), ATTRIBUTES)
        self.assertEqual(
            [(r["recipient"], r["sender"], r["client_address"], r["helo_name"])
             for r in server.requests],
            [(f"{x}@example.org", "sender@example.net", "192.0.2.7", "client.example")
             for x in "abc"],
        )
        instances = [r["instance"] for r in server.requests]
        self.assertEqual(instances[0], instances[1])
        self.assertNotEqual(instances[1], instances[2])

    async def test_connectionReused(self) -> None:
        """
        Many recipients, asked at once, go over one connection, one
        request at a time, each getting its own answer.
        """
        server, validator = self.serve(lambda r: f"REJECT for {r['recipient']}")
        recipients = [f"u{i}@example.org" for i in range(20)]
        session = context()
        verdicts = await _gather(
            [validator.validateRecipient(session, parseAddress(r)) for r in recipients]
        )
        self.assertEqual([v.text for v in verdicts], [f"for {r}" for r in recipients])
        self.assertEqual(len(server.connections), 1)
        self.assertEqual(len(server.requests), 20)

    async def test_reconnect(self) -> None:
        """
        A server that closes the connection after each answer is
        reconnected to for the next recipient.
        """
        server, validator = self.serve(lambda r: "OK")
        server.closeAfterReply = True
        for _ in range(3):
            self.assertIsInstance(await self.ask(validator), Accept)
            await deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(len(server.connections), 3)

    async def test_closedJustBefore(self) -> None:
        """
        A connection the server closed just as the next request went out
        (before we saw it close) is remade once for that request, as
        Postfix retries it: the recipient gets the server's answer.
        """
        server, validator = self.serve(lambda r: "OK")
        server.closeAfterReply = True
        for _ in range(5):
            self.assertIsInstance(await self.ask(validator), Accept)
        self.assertEqual(len(server.requests), len(server.connections))

    async def test_closedWithoutAnswer(self) -> None:
        """
        A server that closes the connection instead of answering (as the
        protocol says it does on trouble) gives C{451 4.3.0} at once, and
        the next recipient gets a new connection.
        """
        answers = iter([None, "OK"])

        def answer(request):
            action = next(answers)
            if action is None:
                server.connections[-1].transport.loseConnection()
            return action

        server, validator = self.serve(answer)
        verdict = await self.ask(validator)
        self.assertEqual((verdict.code, verdict.enhanced), (451, "4.3.0"))
        self.assertIsInstance(await self.ask(validator), Accept)
        self.assertEqual(len(server.connections), 2)

    async def test_serverDown(self) -> None:
        """
        No server listening: C{451 4.3.0} for that recipient.
        """
        port = reactor.listenTCP(0, Factory(), interface="127.0.0.1")
        number = port.getHost().port
        await port.stopListening()
        validator = PolicyValidator(f"tcp:127.0.0.1:{number}")
        verdict = await self.ask(validator)
        self.assertEqual((verdict.code, verdict.enhanced), (451, "4.3.0"))
        self.assertIn("unavailable", verdict.text)

    async def test_silentServer(self) -> None:
        """
        A server that takes the request and never answers: C{451 4.3.0}
        within the bound, the connection dropped, and the next recipient
        asked afresh on a new one.
        """
        answers = iter([None, "OK"])
        server, validator = self.serve(lambda r: next(answers))
        validator.timeout = 0.5
        started = time.monotonic()
        verdict = await self.ask(validator)
        self.assertLess(time.monotonic() - started, 3)
        self.assertEqual((verdict.code, verdict.enhanced), (451, "4.3.0"))
        self.assertIsInstance(await self.ask(validator), Accept)
        self.assertEqual(len(server.connections), 2)

    async def test_unixSocket(self) -> None:
        """
        A UNIX-domain endpoint works like a TCP one.
        """
        directory = tempfile.mkdtemp()
        self.addCleanup(os.rmdir, directory)
        path = os.path.join(directory, "policy")
        server = FakePolicy(lambda r: "REJECT unix")
        port = reactor.listenUNIX(path, server)
        self.addCleanup(port.stopListening)
        self.addCleanup(dropConnections, server)
        validator = PolicyValidator(f"unix:{path}")
        self.addCleanup(validator.close)
        verdict = await self.ask(validator)
        self.assertEqual(verdict.text, "unix")


async def _gather(deferreds: list[Deferred]) -> list:
    """
    The results of several Deferreds, in order.
    """
    return [await d for d in deferreds]


class PostgreyTests(TestCase):
    """
    The validator against a real postgrey (L{tests.postgrey}), with a 2 s
    greylisting delay.
    """

    def setUp(self) -> None:
        """
        Start a private postgrey, or skip saying why not.
        """
        missing = postgreyMissing()
        if missing:
            raise SkipTest(missing)
        self.postgrey = RunningPostgrey.start(self.addCleanup, delay=DELAY)
        self.validator = PolicyValidator(self.postgrey.endpoint)
        self.addCleanup(self.validator.close)

    async def test_greylisting(self) -> None:
        """
        A first attempt is greylisted, C{450 4.7.1} with postgrey's text;
        a retry within the delay still is; a retry after the delay passes
        (postgrey's C{PREPEND} is no opinion: the next validator decides).
        """
        recipient = parseAddress(f"{unique('grey')}@example.org")
        first = await self.validator.validateRecipient(context(), recipient)
        self.assertEqual((first.code, first.enhanced), (450, "4.7.1"))
        self.assertIn("Greylisted", first.text)
        again = await self.validator.validateRecipient(context(), recipient)
        self.assertEqual(again.code, 450)
        await deferLater(reactor, DELAY + 1.2, lambda: None)
        passed = await self.validator.validateRecipient(context(), recipient)
        self.assertIsNone(passed)
        log = self.postgrey.log()
        self.assertIn("action=greylist, reason=new, client_name=unknown", log)
        self.assertIn("action=pass, reason=triplet found", log)
        self.assertEqual(self.validator.client().connections, 1)

    async def test_tripletsApart(self) -> None:
        """
        Another recipient, another sender, or another client is another
        triplet: greylisted on its own.
        """
        recipient = parseAddress(f"{unique('grey')}@example.org")
        await self.validator.validateRecipient(context(), recipient)
        await deferLater(reactor, DELAY + 1.2, lambda: None)
        self.assertIsNone(await self.validator.validateRecipient(context(), recipient))
        for session, to in (
            (context(), parseAddress(f"{unique('other')}@example.org")),
            (context(reversePath=parseAddress("else@example.net")), recipient),
            (context(clientHost="198.51.100.9"), recipient),
        ):
            verdict = await self.validator.validateRecipient(session, to)
            self.assertEqual((verdict.code, verdict.enhanced), (450, "4.7.1"))


class PostgreyEndToEndTests(SynchronousTestCase):
    """
    The real C{twistd smtpmx --validator policy:... --validator any} with
    a real postgrey: greylisted, then accepted and delivered.
    """

    def test_greylistedThenDelivered(self) -> None:
        """
        A sender's first attempt gets C{450 4.7.1} at RCPT (nothing stored);
        the same message retried after the delay is accepted and lands in
        the recipient's Maildir.
        """
        missing = postgreyMissing()
        if missing:
            raise SkipTest(missing)
        postgrey = RunningPostgrey.start(self.addCleanup, delay=DELAY)
        server = RunningServer.start(
            self.addCleanup,
            ["--domain", "example.org", "--relay-network", "192.0.2.0/24", "--auth-checks", "none",
             "--validator", f"policy:{postgrey.endpoint}", "--validator", "any"],
        )
        user = unique("grey")
        recipient = f"{user}@example.org"
        data = message(subject=user, to=recipient)

        def attempt():
            with smtplib.SMTP(server.host, server.port, local_hostname="client.example",
                              timeout=TIMEOUT) as c:
                c.ehlo()
                c.mail("sender@remote.example")
                code, text = c.rcpt(recipient)
                if code != 250:
                    c.rset()
                    return code, text.decode()
                return c.data(data)[0], ""

        code, text = attempt()
        self.assertEqual(code, 450)
        self.assertTrue(text.startswith("4.7.1 Greylisted"), text)
        self.assertEqual(server.newMessages("example.org", user), [])
        time.sleep(DELAY + 1.2)
        self.assertEqual(attempt()[0], 250)
        stored = server.newMessages("example.org", user)
        self.assertEqual(len(stored), 1)
        self.assertIn(f"Subject: {user}".encode(), stored[0])
        output = server.output()
        self.assertIn("NOQUEUE: reject: RCPT from [127.0.0.1]: 450 4.7.1 Greylisted", output)
        self.assertIn(f"<{recipient}> 250 2.1.5 by any", output)
        self.assertNotIn("Traceback", server.log())


class PolicyOnTheWireTests(TestCase):
    """
    The real C{twistd smtpmx --validator policy:... --validator any} asking
    a fake policy server: each action's reply is what the SMTP client
    hears at RCPT.
    """

    async def test_actionsOnTheWire(self) -> None:
        """
        C{OK} and C{DUNNO} end in C{250} (C{any} decides after C{DUNNO}),
        C{REJECT text} in C{550 5.7.1 text}, C{DEFER_IF_PERMIT text} in
        C{450 4.7.1 text}, C{NNN text} in that reply; all over one
        connection to the policy server; the message goes to the
        accepted recipients only.
        """
        actions = {
            "ok@example.org": "OK",
            "dunno@example.org": "DUNNO",
            "reject@example.org": "REJECT Not here",
            "defer@example.org": "DEFER_IF_PERMIT Come back later",
            "full@example.org": "552 5.2.2 Mailbox is full",
        }
        policy = FakePolicy(lambda r: actions[r["recipient"]])
        port = reactor.listenTCP(0, policy, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        server = RunningServer.start(
            self.addCleanup,
            ["--domain", "example.org", "--relay-network", "192.0.2.0/24", "--auth-checks", "none",
             "--validator", f"policy:tcp:127.0.0.1:{port.getHost().port}", "--validator", "any"],
        )

        def session() -> list[tuple[int, str]]:
            with smtplib.SMTP(server.host, server.port, local_hostname="client.example",
                              timeout=TIMEOUT) as c:
                c.ehlo()
                c.mail("sender@remote.example", ["SIZE=200"])
                replies = [c.rcpt(r) for r in actions]
                c.data(message(subject="wire", to="ok@example.org"))
                return [(code, text.decode()) for code, text in replies]

        replies = await deferToThread(session)
        self.assertEqual(
            replies,
            [
                (250, "2.1.5 Ok"),
                (250, "2.1.5 Ok"),
                (550, "5.7.1 Not here"),
                (450, "4.7.1 Come back later"),
                (552, "5.2.2 Mailbox is full"),
            ],
        )
        self.assertEqual(len(policy.connections), 1)
        self.assertEqual({r["size"] for r in policy.requests}, {"200"})
        self.assertEqual({r["protocol_name"] for r in policy.requests}, {"ESMTP"})
        self.assertEqual(len({r["instance"] for r in policy.requests}), 1)
        self.assertEqual(len(server.newMessages("example.org", "ok")), 1)
        self.assertEqual(len(server.newMessages("example.org", "dunno")), 1)
        self.assertEqual(server.newMessages("example.org", "reject"), [])
        self.assertIn("<reject@example.org> 550 5.7.1 by policy", server.output())
        self.assertIn("<ok@example.org> 250 2.1.5 by policy", server.output())

    async def test_serverDownOnTheWire(self) -> None:
        """
        No policy server listening: every recipient gets C{451 4.3.0}, the
        session goes on, and the log has no traceback.
        """
        number = freePort()
        server = RunningServer.start(
            self.addCleanup,
            ["--domain", "example.org", "--relay-network", "192.0.2.0/24", "--auth-checks", "none",
             "--validator", f"policy:tcp:127.0.0.1:{number}",
             "--validator", "any"],
        )

        def session() -> tuple[int, str]:
            with smtplib.SMTP(server.host, server.port, local_hostname="client.example",
                              timeout=TIMEOUT) as c:
                c.ehlo()
                c.mail("sender@remote.example")
                code, text = c.rcpt("bob@example.org")
                c.rset()
                return code, text.decode()

        code, text = await deferToThread(session)
        self.assertEqual((code, text[:5]), (451, "4.3.0"))
        self.assertIn("policy server", server.output())
        self.assertNotIn("Traceback", server.log())
