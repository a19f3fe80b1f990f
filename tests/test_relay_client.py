"""
Tests for the relay client (L{smtpmx.relay.transaction} on L{smtpmx.relay.protocol}) against the recording
sink of L{tests.sink}, over real loopback connections.
"""

from __future__ import annotations

import os
import shutil
import tempfile

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IOpenSSLContextFactory
from twisted.internet.task import Clock
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

import dataclasses

import pytest
from zope.interface import implementer

from smtpmx.config import ConfigError, loadConfig

from smtpmx.relay.protocol import ClientProtocol, SessionError, parseEnhanced
from smtpmx.relay.tlspolicy import TLSPolicy
from smtpmx.relay.request import (
    DEFAULT_TIMEOUTS,
    DeliveryRequest,
    DeliveryResult,
    Disposition,
    RecipientResult,
)
from smtpmx.relay.transaction import deliver
from smtpmx.relay.nexthop import NextHop
from tests import certs
from tests.sink import Sink

MESSAGE = b"Subject: test\n\nHello.\n.leading dot\n..two\n.\nend\n"
SHORT = {"connect": 2, "greeting": 2, "command": 2, "tlsHandshake": 2, "dataBlock": 2, "finalDot": 2, "quit": 2}


def runBlocking(f, *args, **kwargs) -> Deferred:
    """
    Run C{f} in the reactor's thread pool, as the service does.
    """
    return deferToThreadPool(reactor, reactor.getThreadPool(), f, *args, **kwargs)


class _RelayTestMixin:
    """
    A temporary directory, a message file, and sinks stopped at the end.
    """

    def setUp(self) -> None:
        """
        Make the directory and the default message.
        """
        self.directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.directory, True)
        self.messageFile = self.writeMessage(MESSAGE)

    def writeMessage(self, data: bytes, name: str = "message") -> str:
        """
        Store a message as the queue does.
        """
        path = os.path.join(self.directory, name)
        with open(path, "wb") as f:
            f.write(data)
        return path

    def startSink(self, **kwargs) -> tuple[Sink, int]:
        """
        A listening sink, stopped at the end of the test.
        """
        sink = Sink(reactor, **kwargs)
        port = sink.listen()
        self.addCleanup(sink.stop)
        return sink, port

    def deliver(self, port: int, recipients=("rcpt@example.com",), *, name="localhost", sender="sender@example.org",
                messageFile=None, tlsMode="none", trustRoot=None, timeouts=SHORT) -> Deferred:
        """
        Deliver the message to the sink on C{port}.
        """
        messageFile = messageFile or self.messageFile
        request = DeliveryRequest(
            NextHop("127.0.0.1", port, name), "relay.test", sender, recipients,
            messageFile, os.path.getsize(messageFile), tlsMode, trustRoot, timeouts,
        )
        return deliver(request, reactor=reactor, runBlocking=runBlocking)


class DeliverTests(_RelayTestMixin, TestCase):
    """
    Tests for L{deliver} in clear.
    """

    async def test_threeRecipientsOneTransaction(self) -> None:
        """
        Recipients sharing the next hop get one transaction with one copy of
        the data, their forward-paths exactly as given, case kept.
        """
        sink, port = self.startSink()
        recipients = ["Alice@Example.COM", "bob@example.com", "CAROL.x@example.com"]
        result = await self.deliver(port, recipients)
        self.assertIsInstance(result, DeliveryResult)
        self.assertTrue(result.connected)
        self.assertEqual(list(result.recipients), recipients)
        for r in recipients:
            self.assertIs(result.recipients[r].disposition, Disposition.DELIVERED)
            self.assertEqual(result.recipients[r].code, 250)
        self.assertEqual(len(sink.transactions), 1)
        transaction = sink.transactions[0]
        self.assertEqual(transaction.recipients, recipients)
        self.assertEqual(transaction.mailFrom, "sender@example.org")
        self.assertEqual(transaction.heloName, "relay.test")
        self.assertEqual(transaction.data, MESSAGE)
        self.assertFalse(transaction.tls)
        self.assertIsNone(result.tls)
        self.assertEqual(result.remoteMta, "localhost")
        self.assertEqual(sink.sessions[0].commands[-1][0], "QUIT")

    @pytest.mark.rfc("5321", "4.5.5", "5321-4.5.5-3")
    async def test_nullSender(self) -> None:
        """
        The null reverse-path goes out as C{MAIL FROM:<>}.
        """
        sink, port = self.startSink()
        await self.deliver(port, sender="")
        self.assertTrue(sink.sessions[0].commands[1][0].startswith("MAIL FROM:<> "))

    @pytest.mark.rfc("5321", "4.2.1", "5321-4.2.1-1", "5321-4.2.1-2")
    @pytest.mark.rfc("2920", "3.1", "2920-3.1-1")
    async def test_perRecipientReplies(self) -> None:
        """
        Each recipient gets its own outcome: a 4xx is temporary, a 5xx
        permanent, and the others are still delivered.
        """
        sink, port = self.startSink(rcptReplies={
            "busy@example.com": "450 4.2.0 busy, try later",
            "gone@example.com": "550 5.1.1 no such user",
        })
        result = await self.deliver(port, ["ok@example.com", "busy@example.com", "gone@example.com"])
        self.assertIs(result.recipients["ok@example.com"].disposition, Disposition.DELIVERED)
        self.assertEqual(
            result.recipients["busy@example.com"], RecipientResult(450, "4.2.0", "4.2.0 busy, try later", Disposition.TEMPORARY)
        )
        self.assertEqual(
            result.recipients["gone@example.com"], RecipientResult(550, "5.1.1", "5.1.1 no such user", Disposition.PERMANENT)
        )
        self.assertEqual(sink.transactions[0].accepted, ["ok@example.com"])

    async def test_noRecipientAcceptedNoData(self) -> None:
        """
        When no recipient is accepted no message goes out: without
        PIPELINING DATA is never sent; with it, the DATA pipelined after
        the RCPTs is refused by the next hop (RFC 2920 section 3.1), and
        nothing is delivered.
        """
        for pipelining in (False, True):
            sink, port = self.startSink(rcptReplies={"gone@example.com": "550 5.1.1 no such user"},
                                        pipelining=pipelining)
            result = await self.deliver(port, ["gone@example.com"])
            self.assertIs(result.recipients["gone@example.com"].disposition, Disposition.PERMANENT)
            self.assertEqual("DATA" in [c for c, _ in sink.sessions[0].commands], pipelining)
            self.assertEqual(sink.transactions, [])

    @pytest.mark.rfc("2920", "3.1", "2920-3.1-1")
    async def test_dataStartedForNobody(self) -> None:
        """
        A next hop that answers the pipelined DATA with 354 although it
        accepted no recipient gets a lone end of data: an empty message for
        nobody, never the content.
        """
        sink, port = self.startSink(rcptReplies={"gone@example.com": "550 5.1.1 no such user"},
                                    replies={"DATA": "354 go ahead"})
        result = await self.deliver(port, ["gone@example.com"])
        self.assertIs(result.recipients["gone@example.com"].disposition, Disposition.PERMANENT)
        commands = [c for c, _ in sink.sessions[0].commands]
        # The sink, told to answer 354, records the end of data as a line.
        self.assertEqual(commands[commands.index("DATA") + 1:], [".", "QUIT"])

    @pytest.mark.rfc("5321", "4.2.1", "5321-4.2.1-1", "5321-4.2.1-2")
    @pytest.mark.rfc("2920", "3.1", "2920-3.1-1")
    async def test_mailRefused(self) -> None:
        """
        A 5xx to MAIL is a permanent failure for every recipient; a 4xx a
        temporary one.
        """
        sink, port = self.startSink(replies={"MAIL": "553 5.7.1 sender rejected"})
        result = await self.deliver(port, ["a@example.com", "b@example.com"])
        self.assertEqual({r.disposition for r in result.recipients.values()}, {Disposition.PERMANENT})
        self.assertEqual(result.recipients["a@example.com"].code, 553)
        sink, port = self.startSink(replies={"MAIL": "451 4.3.0 try later"})
        result = await self.deliver(port, ["a@example.com", "b@example.com"])
        self.assertEqual({r.disposition for r in result.recipients.values()}, {Disposition.TEMPORARY})

    @pytest.mark.rfc("5321", "4.2.1", "5321-4.2.1-2")
    @pytest.mark.rfc("2920", "3.1", "2920-3.1-1")
    async def test_dataRefused(self) -> None:
        """
        A 5xx to DATA is a permanent failure for the accepted recipients;
        one refused at RCPT keeps its own reply.
        """
        sink, port = self.startSink(
            replies={"DATA": "554 5.7.0 no"}, rcptReplies={"busy@example.com": "450 4.2.0 busy"}
        )
        result = await self.deliver(port, ["a@example.com", "busy@example.com"])
        self.assertEqual(result.recipients["a@example.com"].code, 554)
        self.assertIs(result.recipients["a@example.com"].disposition, Disposition.PERMANENT)
        self.assertEqual(result.recipients["busy@example.com"].code, 450)

    @pytest.mark.rfc("5321", "4.1.1.4", "5321-4.1.1.4-5")
    @pytest.mark.rfc("5321", "4.2.1", "5321-4.2.1-1")
    async def test_finalReply(self) -> None:
        """
        The reply to the end of data decides for every accepted recipient.
        """
        sink, port = self.startSink(finalReply="452 4.3.1 insufficient storage")
        result = await self.deliver(port, ["a@example.com", "b@example.com"])
        self.assertEqual(
            set(result.recipients.values()), {RecipientResult(452, "4.3.1", "4.3.1 insufficient storage", Disposition.TEMPORARY)}
        )
        self.assertEqual(sink.transactions[0].data, MESSAGE)

    @pytest.mark.rfc("5321", "3.2", "5321-3.2-2")
    @pytest.mark.rfc("5321", "4.1.1.1", "5321-4.1.1.1-2", "5321-4.1.1.1-3")
    async def test_heloFallback(self) -> None:
        """
        A server that refuses EHLO with a 5xx gets HELO, and the message
        without ESMTP parameters.
        """
        sink, port = self.startSink(replies={"EHLO": "502 5.5.2 what?"})
        result = await self.deliver(port)
        self.assertIs(result.recipients["rcpt@example.com"].disposition, Disposition.DELIVERED)
        commands = [c for c, _ in sink.sessions[0].commands]
        self.assertEqual(commands[:3], ["EHLO relay.test", "HELO relay.test", "MAIL FROM:<sender@example.org>"])
        self.assertEqual(sink.transactions[0].mailParameters, [])

    @pytest.mark.rfc("1870", "6")
    async def test_size(self) -> None:
        """
        C{SIZE=} is sent when the server offers SIZE, and only then.
        """
        sink, port = self.startSink()
        await self.deliver(port)
        self.assertIn(f"SIZE={len(MESSAGE)}", sink.transactions[0].mailParameters)
        sink, port = self.startSink(size=False)
        await self.deliver(port)
        self.assertFalse([p for p in sink.transactions[0].mailParameters if p.startswith("SIZE")])

    @pytest.mark.rfc("2920", "3.1", "2920-3.1-2")
    async def test_pipelining(self) -> None:
        """
        With PIPELINING, MAIL, every RCPT and DATA go out in one write
        (RFC 2920 section 3.1: DATA last in a group).
        """
        sink, port = self.startSink()
        await self.deliver(port, ["a@example.com", "b@example.com"])
        batches = sink.sessions[0].batches
        self.assertIn(
            ["MAIL FROM:<sender@example.org> SIZE=%d BODY=8BITMIME" % len(MESSAGE),
             "RCPT TO:<a@example.com>", "RCPT TO:<b@example.com>", "DATA"],
            batches,
        )
        self.assertEqual(len(sink.transactions), 1)

    @pytest.mark.rfc("5321", "4.3.1", "5321-4.3.1-1")
    async def test_noPipelining(self) -> None:
        """
        Without PIPELINING, each command waits for the reply to the one
        before.
        """
        sink, port = self.startSink(pipelining=False)
        result = await self.deliver(port, ["a@example.com", "b@example.com"])
        self.assertEqual(len(result.recipients), 2)
        for batch in sink.sessions[0].batches:
            self.assertEqual(len(batch), 1, batch)
        self.assertEqual(sink.transactions[0].recipients, ["a@example.com", "b@example.com"])

    @pytest.mark.rfc("5321", "4.5.2", "5321-4.5.2-1")
    @pytest.mark.rfc("5321", "4.1.1.4", "5321-4.1.1.4-6")
    async def test_dotsAtChunkBoundaries(self) -> None:
        """
        A large message with C{.} lines just before, at and after every
        64 KiB boundary arrives intact, byte for byte.
        """
        parts = []
        size = 0
        for boundary in range(65536, 6 * 65536, 65536):
            for offset in (boundary - 2, boundary - 1, boundary, boundary + 1):
                filler = b"y" * (offset - size - 1) + b"\n"
                parts.append(filler)
                parts.append(b".\n" if offset % 2 else b".dot\n")
                size += len(filler) + len(parts[-1])
        message = b"".join(parts) + b"x" * 3_000_000 + b"\n.\nlast line without newline"
        sink, port = self.startSink()
        result = await self.deliver(port, messageFile=self.writeMessage(message, "big"))
        self.assertIs(result.recipients["rcpt@example.com"].disposition, Disposition.DELIVERED)
        self.assertEqual(sink.transactions[0].data, message + b"\n")

    async def test_fileJobs(self) -> None:
        """
        The message file is read in the thread runner, one job per chunk
        of 64 KiB: a small message costs one job (open, read and close),
        a message of exactly two chunks three (the last finds the end),
        and each arrives whole.
        """
        sink, port = self.startSink()
        for size, jobs in ((100, 1), (2 * 65536, 3)):
            message = (b"z" * 99 + b"\n") * (size // 100) + b"q" * (size % 100)
            path = self.writeMessage(message, f"m{size}")
            calls = []

            def counting(f, *args, **kwargs):
                """
                Count the jobs that read the message file.
                """
                if getattr(f, "__name__", "") in ("read", "close"):
                    calls.append(f.__name__)
                return runBlocking(f, *args, **kwargs)

            request = DeliveryRequest(
                NextHop("127.0.0.1", port, "localhost"), "relay.test", "s@example.org", ["r@example.com"],
                path, size, "none", None, SHORT,
            )
            result = await deliver(request, reactor=reactor, runBlocking=counting)
            self.assertIs(result.recipients["r@example.com"].disposition, Disposition.DELIVERED)
            self.assertEqual(calls, ["read"] * jobs)
            self.assertEqual(sink.transactions[-1].data, message if message.endswith(b"\n") else message + b"\n")

    @pytest.mark.rfc("6531", "3.2")
    async def test_nonAsciiWithoutSMTPUTF8(self) -> None:
        """
        A non-ASCII address cannot go to a next hop that does not offer
        SMTPUTF8: a permanent failure (553 5.6.7) for every recipient, and
        no MAIL is sent.
        """
        sink, port = self.startSink()
        result = await self.deliver(port, ["jos\u00e9@example.com", "ascii@example.com"])
        self.assertTrue(result.connected)
        for r in result.recipients.values():
            self.assertEqual((r.code, r.enhanced, r.disposition), (553, "5.6.7", Disposition.PERMANENT))
        self.assertFalse([c for c, _ in sink.sessions[0].commands if c.startswith("MAIL")])

    async def test_duplicateRecipientsSentOnce(self) -> None:
        """
        A recipient given twice is sent one RCPT.
        """
        sink, port = self.startSink()
        result = await self.deliver(port, ["a@example.com", "a@example.com"])
        self.assertEqual(list(result.recipients), ["a@example.com"])
        self.assertEqual(sink.transactions[0].recipients, ["a@example.com"])

    async def test_connectionRefused(self) -> None:
        """
        A next hop that refuses connections is a temporary failure, with
        C{connected=False} so that the next one is tried.
        """
        sink, port = self.startSink()
        await sink.stopListening()
        result = await self.deliver(port, ["a@example.com"])
        self.assertFalse(result.connected)
        self.assertIn("connect", result.error)
        self.assertIs(result.recipients["a@example.com"].disposition, Disposition.TEMPORARY)

    async def test_greetingRefused(self) -> None:
        """
        A 554 greeting turns the session away: temporary, next hop.
        """
        sink, port = self.startSink(greeting="554 5.3.2 go away")
        result = await self.deliver(port)
        self.assertFalse(result.connected)
        self.assertIn("554", result.error)
        self.assertIs(result.recipients["rcpt@example.com"].disposition, Disposition.TEMPORARY)

    @pytest.mark.rfc("5321", "4.5.3.2", "5321-4.5.3.2-1")
    async def test_silentServer(self) -> None:
        """
        A server that never greets is a temporary failure within the
        greeting timeout.
        """
        sink, port = self.startSink(hang=["GREETING"])
        started = reactor.seconds()
        result = await self.deliver(port, timeouts={**SHORT, "greeting": 0.5})
        self.assertLess(reactor.seconds() - started, 5)
        self.assertFalse(result.connected)
        self.assertIn("timeout", result.error)

    @pytest.mark.rfc("5321", "4.5.3.2", "5321-4.5.3.2-1")
    async def test_rcptTimeout(self) -> None:
        """
        A RCPT that is never answered is a temporary failure for every
        recipient of the transaction.
        """
        sink, port = self.startSink(hang=["RCPT"])
        result = await self.deliver(port, ["a@example.com", "b@example.com"], timeouts={**SHORT, "command": 0.5})
        self.assertTrue(result.connected)
        for r in result.recipients.values():
            self.assertIs(r.disposition, Disposition.TEMPORARY)
            self.assertIn("timeout", r.text)

    @pytest.mark.rfc("5321", "4.5.3.2", "5321-4.5.3.2-1")
    async def test_finalDotTimeout(self) -> None:
        """
        An end of data that is never answered is a temporary failure
        within the final-dot timeout.
        """
        sink, port = self.startSink(hang=["."])
        started = reactor.seconds()
        result = await self.deliver(port, timeouts={**SHORT, "finalDot": 0.5})
        self.assertLess(reactor.seconds() - started, 5)
        self.assertIs(result.recipients["rcpt@example.com"].disposition, Disposition.TEMPORARY)
        self.assertIn("end of data", result.recipients["rcpt@example.com"].text)

    async def test_garbledReply(self) -> None:
        """
        A reply that is not SMTP is a temporary failure, not an exception.
        """
        sink, port = self.startSink(replies={"RCPT": "hello there\x00"})
        result = await self.deliver(port, ["a@example.com"])
        self.assertIs(result.recipients["a@example.com"].disposition, Disposition.TEMPORARY)
        self.assertIn("garbled", result.recipients["a@example.com"].text)

    async def test_garbledGreeting(self) -> None:
        """
        A garbled greeting means the next hop is tried.
        """
        sink, port = self.startSink(greeting="SSH-2.0-OpenSSH_9.0")
        result = await self.deliver(port)
        self.assertFalse(result.connected)

    async def test_unreadableMessage(self) -> None:
        """
        A message file that cannot be read is a temporary failure, and no
        truncated copy is delivered.
        """
        sink, port = self.startSink()
        result = await self.deliver(port, messageFile=self.writeMessage(b"x", "gone"), timeouts=SHORT)
        self.assertIs(result.recipients["rcpt@example.com"].disposition, Disposition.DELIVERED)
        os.remove(os.path.join(self.directory, "gone"))
        request = DeliveryRequest(
            NextHop("127.0.0.1", port, "localhost"), "relay.test", "", ["a@example.com"],
            os.path.join(self.directory, "gone"), 1, "none", None, SHORT,
        )
        result = await deliver(request, reactor=reactor, runBlocking=runBlocking)
        self.assertIs(result.recipients["a@example.com"].disposition, Disposition.TEMPORARY)
        self.assertEqual(len(sink.transactions), 1)


class TLSTests(_RelayTestMixin, TestCase):
    """
    The STARTTLS matrix: C{none}, C{may} and C{verify} against a good
    certificate, one from an unknown CA, one for another name and an
    expired one.
    """

    def setUp(self) -> None:
        """
        A CA and the certificates.
        """
        super().setUp()
        self.authority = certs.makeAuthority(self.directory)
        self.good = certs.makeServerCertificate(self.authority, self.directory)
        stranger = os.path.join(self.directory, "stranger")
        os.mkdir(stranger)
        self.unknownCA = certs.makeServerCertificate(certs.makeAuthority(stranger), stranger)
        self.wrongName = certs.makeServerCertificate(
            self.authority, self.directory, prefix="wrong", names=("other.example",), addresses=()
        )
        self.expired = certs.makeExpiredCertificate(self.authority, self.directory)

    async def deliverTLS(self, certificate, tlsMode: str) -> tuple[Sink, DeliveryResult]:
        """
        Deliver to a sink offering STARTTLS with C{certificate}.
        """
        sink, port = self.startSink(certificate=certificate)
        result = await self.deliver(port, tlsMode=tlsMode, trustRoot=self.authority.path)
        return sink, result

    @pytest.mark.rfc("3207", "4.1")
    @pytest.mark.rfc("3207", "4.2", "3207-4.2-2")
    async def test_verifyGood(self) -> None:
        """
        C{verify} with a certificate for the next hop's name from a trusted
        CA delivers over TLS, verified.
        """
        sink, result = await self.deliverTLS(self.good, "verify")
        self.assertIs(result.recipients["rcpt@example.com"].disposition, Disposition.DELIVERED)
        self.assertTrue(result.verified)
        self.assertTrue(result.tls.startswith("TLSv1."), result.tls)
        self.assertTrue(sink.transactions[0].tls)
        self.assertEqual(sink.transactions[0].data, MESSAGE)
        commands = [c for c, tls in sink.sessions[0].commands if not tls]
        self.assertEqual(commands, ["EHLO relay.test", "STARTTLS"])
        # What was learnt in clear is forgotten: EHLO again over TLS.
        self.assertEqual([c for c, tls in sink.sessions[0].commands if tls][0], "EHLO relay.test")

    @pytest.mark.rfc("3207", "4.1")
    @pytest.mark.rfc("3207", "6")
    async def test_verifyBad(self) -> None:
        """
        C{verify} defers delivery (temporary, next hop) for a certificate
        from an unknown CA, for another name, or expired, and never sends
        the envelope or the data in clear.
        """
        for certificate in (self.unknownCA, self.wrongName, self.expired):
            sink, result = await self.deliverTLS(certificate, "verify")
            self.assertFalse(result.connected, certificate)
            self.assertIn("TLS handshake failed", result.error)
            self.assertIs(result.recipients["rcpt@example.com"].disposition, Disposition.TEMPORARY)
            self.assertEqual(sink.transactions, [])
            commands = [c for session in sink.sessions for c, tls in session.commands]
            self.assertFalse([c for c in commands if c.startswith(("MAIL", "RCPT", "DATA"))], (certificate, commands))

    @pytest.mark.rfc("3207", "4.1")
    @pytest.mark.rfc("3207", "6")
    async def test_verifyWithoutStartTLS(self) -> None:
        """
        C{verify} against a server that does not offer STARTTLS defers, and
        sends nothing in clear.
        """
        sink, port = self.startSink()
        result = await self.deliver(port, tlsMode="verify", trustRoot=self.authority.path)
        self.assertFalse(result.connected)
        self.assertIn("STARTTLS", result.error)
        self.assertEqual(sink.transactions, [])

    @pytest.mark.rfc("3207", "4.1")
    async def test_mayDeliversWhatever(self) -> None:
        """
        C{may} delivers over TLS, unverified, whatever the certificate.
        """
        for certificate in (self.good, self.unknownCA, self.wrongName, self.expired):
            sink, result = await self.deliverTLS(certificate, "may")
            self.assertIs(result.recipients["rcpt@example.com"].disposition, Disposition.DELIVERED)
            self.assertFalse(result.verified)
            self.assertIsNotNone(result.tls)
            self.assertTrue(sink.transactions[0].tls)

    @pytest.mark.rfc("3207", "4.1")
    async def test_mayInClear(self) -> None:
        """
        C{may} against a server without STARTTLS delivers in clear.
        """
        sink, port = self.startSink()
        result = await self.deliver(port, tlsMode="may")
        self.assertIs(result.recipients["rcpt@example.com"].disposition, Disposition.DELIVERED)
        self.assertIsNone(result.tls)

    async def test_none(self) -> None:
        """
        C{none} never starts TLS, even when offered.
        """
        sink, result = await self.deliverTLS(self.good, "none")
        self.assertIs(result.recipients["rcpt@example.com"].disposition, Disposition.DELIVERED)
        self.assertIsNone(result.tls)
        self.assertNotIn("STARTTLS", [c for c, _ in sink.sessions[0].commands])
        self.assertFalse(sink.transactions[0].tls)

    @pytest.mark.rfc("3207", "4.1")
    async def test_mayFallsBackWhenHandshakeFails(self) -> None:
        """
        C{may}: when the TLS handshake fails, the message goes in clear on
        a new connection.
        """
        sink, port = self.startSink(certificate=self.good)
        sink.tlsOptions = _BrokenOptions()
        result = await self.deliver(port, tlsMode="may")
        self.assertIs(result.recipients["rcpt@example.com"].disposition, Disposition.DELIVERED)
        self.assertIsNone(result.tls)
        self.assertEqual(len(sink.sessions), 2)


@implementer(IOpenSSLContextFactory)
class _BrokenOptions:
    """
    Server TLS options whose context can do no handshake at all.
    """

    def getContext(self):
        """
        A context with no certificate: every handshake fails.
        """
        from OpenSSL import SSL

        return SSL.Context(SSL.TLS_METHOD)


class ParsingTests(SynchronousTestCase):
    """
    Tests for reply parsing.
    """

    @pytest.mark.rfc("2034", "4")
    def test_enhanced(self) -> None:
        """
        An enhanced code is split off only when its class matches the reply.
        """
        self.assertEqual(parseEnhanced(550, "5.1.1 no such user"), ("5.1.1", "no such user"))
        self.assertEqual(parseEnhanced(550, "4.1.1 odd"), (None, "4.1.1 odd"))
        self.assertEqual(parseEnhanced(250, "2.0.0"), ("2.0.0", ""))
        self.assertEqual(parseEnhanced(250, "2.0.0.1 no"), (None, "2.0.0.1 no"))

    def test_multiline(self) -> None:
        """
        A multi-line reply is one reply, its lines kept.
        """
        from twisted.internet.task import Clock
        from twisted.internet.testing import StringTransport

        protocol = ClientProtocol(Clock())
        protocol.makeConnection(StringTransport())
        replies = []
        protocol.expect(1, "EHLO").addCallback(replies.append)
        protocol.dataReceived(b"250-sink.test\r\n250-PIPELINING\r\n250 SIZE 10\r\n")
        self.assertEqual(replies[0].code, 250)
        self.assertEqual(replies[0].text.split("\n"), ["sink.test", "PIPELINING", "SIZE 10"])

    def test_garbage(self) -> None:
        """
        A garbled line fails the wait and closes the connection.
        """
        from twisted.internet.task import Clock
        from twisted.internet.testing import StringTransport

        transport = StringTransport()
        protocol = ClientProtocol(Clock())
        protocol.makeConnection(transport)
        d = protocol.expect(1, "EHLO")
        protocol.dataReceived(b"250-ok\r\n251 mixed\r\n")
        self.failureResultOf(d)
        self.assertTrue(transport.disconnecting or transport.disconnected)

    @pytest.mark.rfc("5321", "4.5.3.2", "5321-4.5.3.2-1")
    def test_timeout(self) -> None:
        """
        A reply that does not come in time fails the wait.
        """
        from twisted.internet.task import Clock
        from twisted.internet.testing import StringTransport

        clock = Clock()
        protocol = ClientProtocol(clock)
        protocol.makeConnection(StringTransport())
        d = protocol.expect(5, "MAIL FROM")
        clock.advance(4)
        self.assertNoResult(d)
        clock.advance(2)
        self.assertIn("timeout", str(self.failureResultOf(d).value))


class DeliveryRequestTests(SynchronousTestCase):
    """
    L{DeliveryRequest}: the one frozen value L{deliver} takes.
    """

    def request(self, **kwargs) -> DeliveryRequest:
        """
        A request with plain defaults, changed by C{kwargs}.
        """
        fields = dict(
            hop=NextHop("127.0.0.1", 25, "mx.example"), heloName="relay.test", sender="s@example.org",
            recipients=["a@example.com"], messageFile="/nonexistent", size=10,
        )
        fields.update(kwargs)
        return DeliveryRequest(**fields)

    def test_frozen(self) -> None:
        """
        A request cannot be changed, and its recipients are a tuple (a
        caller's list changing later does not change it).
        """
        recipients = ["a@example.com"]
        request = self.request(recipients=recipients)
        recipients.append("b@example.com")
        self.assertEqual(request.recipients, ("a@example.com",))
        with self.assertRaises(dataclasses.FrozenInstanceError):
            request.sender = "other@example.org"

    def test_protocol(self) -> None:
        """
        A request is SMTP unless it says C{"lmtp"} (docs/relay.rst); any
        other protocol is refused at once.  An LMTP hop is an endpoint
        string, labelled C{lmtp:ENDPOINT} in logs.
        """
        self.assertEqual(self.request().protocol, "smtp")
        hop = NextHop.lmtp("unix:/run/dovecot/lmtp")
        self.assertEqual(self.request(hop=hop, protocol="lmtp").protocol, "lmtp")
        self.assertEqual((hop.endpoint, hop.label), ("unix:/run/dovecot/lmtp", "lmtp:unix:/run/dovecot/lmtp"))
        self.assertEqual(NextHop("192.0.2.1", 25, "mx.example").label, "mx.example[192.0.2.1]:25")
        with self.assertRaises(ValueError):
            self.request(protocol="esmtp")

    @pytest.mark.rfc("5321", "4.5.3.2", "5321-4.5.3.2-2")
    @pytest.mark.rfc("5321", "4.5.3.2.1")
    @pytest.mark.rfc("5321", "4.5.3.2.2")
    @pytest.mark.rfc("5321", "4.5.3.2.3")
    @pytest.mark.rfc("5321", "4.5.3.2.4")
    @pytest.mark.rfc("5321", "4.5.3.2.5")
    @pytest.mark.rfc("5321", "4.5.3.2.6")
    def test_timeouts(self) -> None:
        """
        The timeouts given override the defaults, which are RFC 5321's
        minimums (5 minutes for a command, 10 for the end of data).
        """
        request = self.request(timeouts={"command": 2})
        self.assertEqual(request.timeouts["command"], 2)
        self.assertEqual(request.timeouts["finalDot"], 600)
        self.assertEqual(set(request.timeouts), set(DEFAULT_TIMEOUTS))
        self.assertEqual(
            (DEFAULT_TIMEOUTS["greeting"], DEFAULT_TIMEOUTS["command"], DEFAULT_TIMEOUTS["dataBlock"]),
            (300, 300, 180),
        )
        self.assertEqual(self.request().tlsPolicy, TLSPolicy.MAY)

    def test_unknownTLSPolicy(self) -> None:
        """
        A TLS mode that is not one of the policy's is a temporary failure
        of the next hop (never an exception, never a connection).
        """
        result = self.successResultOf(
            deliver(self.request(tlsPolicy="sometimes"), reactor=Clock(), runBlocking=None)
        )
        self.assertFalse(result.connected)
        self.assertIn("unknown TLS mode", result.error)
        self.assertIs(result.recipients["a@example.com"].disposition, Disposition.TEMPORARY)


class DispositionTests(SynchronousTestCase):
    """
    L{Disposition}: what a reply code means for a recipient.
    """

    @pytest.mark.rfc("5321", "4.2.1", "5321-4.2.1-1", "5321-4.2.1-2")
    def test_ofCode(self) -> None:
        """
        2xx is delivered, 4xx a temporary failure, 5xx a permanent one.
        """
        self.assertIs(Disposition.ofCode(250), Disposition.DELIVERED)
        self.assertIs(Disposition.ofCode(251), Disposition.DELIVERED)
        self.assertIs(Disposition.ofCode(421), Disposition.TEMPORARY)
        self.assertIs(Disposition.ofCode(451), Disposition.TEMPORARY)
        self.assertIs(Disposition.ofCode(550), Disposition.PERMANENT)
        self.assertIs(Disposition.ofCode(554), Disposition.PERMANENT)


class TLSPolicyTests(SynchronousTestCase):
    """
    L{TLSPolicy}: the modes of C{--relay-tls} and what each decides.
    """

    def test_values(self) -> None:
        """
        The policy's values are the modes C{--relay-tls} accepts, and a
        value gives its member.
        """
        self.assertEqual(tuple(p.value for p in TLSPolicy), ("none", "may", "verify"))
        for policy in TLSPolicy:
            self.assertEqual(loadConfig({}, {"relay-tls": policy.value.upper()}).relayTls, policy.value)
        self.assertRaises(ConfigError, loadConfig, {}, {"relay-tls": "sometimes"})
        self.assertIs(TLSPolicy("verify"), TLSPolicy.VERIFY)
        self.assertIs(TLSPolicy(TLSPolicy.MAY), TLSPolicy.MAY)

    @pytest.mark.rfc("3207", "4.1")
    def test_decisions(self) -> None:
        """
        C{none} never starts TLS; C{may} starts it, needs no verified
        certificate and falls back to clear; C{verify} requires it,
        verified, and never falls back.
        """
        decisions = {
            policy: (policy.wantsTLS, policy.requiresTLS, policy.verifiesCertificate, policy.retriesInClear)
            for policy in TLSPolicy
        }
        self.assertEqual(decisions, {
            TLSPolicy.NONE: (False, False, False, False),
            TLSPolicy.MAY: (True, False, False, True),
            TLSPolicy.VERIFY: (True, True, True, False),
        })


class ProtocolSurfaceTests(SynchronousTestCase):
    """
    The public surface of L{ClientProtocol} that the transaction and the
    pool use: in step, the error it failed with, closed, abort.
    """

    def setUp(self) -> None:
        """
        A protocol on a string transport and a clock.
        """
        self.clock = Clock()
        self.transport = StringTransport()
        self.protocol = ClientProtocol(self.clock)
        self.protocol.makeConnection(self.transport)

    def test_inStep(self) -> None:
        """
        A connected, quiet session is in step; one the next hop said
        something to unasked (a 421 while idle) is not.
        """
        self.assertTrue(self.protocol.inStep)
        self.assertIsNone(self.protocol.error)
        self.protocol.dataReceived(b"421 4.4.2 idle too long\r\n")
        self.assertFalse(self.protocol.inStep)

    def test_partialReplyNotInStep(self) -> None:
        """
        A session in the middle of a multi-line reply is not in step.
        """
        self.protocol.dataReceived(b"250-part\r\n")
        self.assertFalse(self.protocol.inStep)

    def test_errorSticks(self) -> None:
        """
        After a timeout the session has an error, every later wait fails
        with it, and it is no longer in step.
        """
        d = self.protocol.expect(1, "RSET")
        self.clock.advance(1)
        error = self.failureResultOf(d, SessionError).value
        self.assertIs(self.protocol.error, error)
        self.assertIs(self.failureResultOf(self.protocol.expect(1, "MAIL"), SessionError).value, error)
        self.assertFalse(self.protocol.inStep)

    def test_abort(self) -> None:
        """
        L{ClientProtocol.abort} drops the connection at once.
        """
        self.protocol.abort()
        self.assertTrue(self.transport.disconnected)

    def test_whenClosed(self) -> None:
        """
        L{ClientProtocol.whenClosed} fires once the connection is lost,
        and at once after that; the waits pending fail.
        """
        closed = self.protocol.whenClosed()
        waiting = self.protocol.expect(10, "DATA")
        self.assertNoResult(closed)
        self.protocol.connectionLost(None)
        self.successResultOf(closed)
        self.successResultOf(self.protocol.whenClosed())
        self.assertIn("connection closed", str(self.failureResultOf(waiting, SessionError).value))
        self.assertFalse(self.protocol.inStep)

    def test_tcpNoDelay(self) -> None:
        """
        Nagle's algorithm is turned off on connecting.
        """
        calls = []
        transport = StringTransport()
        transport.setTcpNoDelay = calls.append
        ClientProtocol(self.clock).makeConnection(transport)
        self.assertEqual(calls, [True])


class ConnectTests(SynchronousTestCase):
    """
    How L{deliver} reaches a next hop: an address is connected to
    directly, a route's host name through the resolver.
    """

    def deliver(self, host: str) -> tuple[MemoryReactorClock, Deferred]:
        """
        Start a delivery to C{host} on a memory reactor.
        """
        memory = MemoryReactorClock()
        request = DeliveryRequest(
            NextHop(host, 2525, "mx.example"), "relay.test", "s@example.org", ["a@example.com"],
            "/nonexistent", 10, "none", None, SHORT,
        )
        return memory, deliver(request, reactor=memory, runBlocking=runBlocking)

    def test_addressAtOnce(self) -> None:
        """
        An IPv4 or IPv6 address is connected to at once, without asking
        the resolver, and a refused connection is a result at once (not
        after the resolver endpoint's delay between addresses), so that a
        next hop that is down does not hold a connection slot.
        """
        for host in ("192.0.2.7", "2001:db8::7"):
            memory, d = self.deliver(host)
            [(connectedTo, port, factory, timeout, _)] = memory.tcpClients
            self.assertEqual((connectedTo, port, timeout), (host, 2525, SHORT["connect"]))
            factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))
            result = self.successResultOf(d)
            self.assertFalse(result.connected)
            self.assertIn("refused", result.error)

    def test_hostNameResolved(self) -> None:
        """
        A host name (a C{--route}'s) goes to the reactor's resolver first:
        the memory reactor's resolves every name to 127.0.0.1.
        """
        memory, d = self.deliver("smarthost.example")
        [(connectedTo, port, _, _, _)] = memory.tcpClients
        self.assertEqual((connectedTo, port), ("127.0.0.1", 2525))
        self.assertNoResult(d)
