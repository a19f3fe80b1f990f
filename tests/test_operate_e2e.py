"""
End-to-end tests of running smtpmx day to day, against the real
C{twistd -n smtpmx}: C{SIGHUP} swaps the TLS certificate under a TLS
client and re-reads an aliases file, an expired certificate is a warning
and not a refusal to start, the free-space guard answers MAIL C{452 4.3.1}
while the relay goes on delivering, and under stress a real sender gets
in within seconds while idle connections hold every slot.
"""

from __future__ import annotations

import os
import shutil
import signal
import smtplib
import ssl
import time

from cryptography import x509
from twisted.trial.unittest import SynchronousTestCase

from tests import certs
from tests.e2e import (
    ReplyReader,
    RunningServer,
    freePort,
    makeTemporaryDirectory,
)
from tests.examplereload import writeWordsFilter
from tests.helpers import message, unique, waitUntil
from tests.sink import RunningSink

TIMEOUT = 15.0


def startTLS(server: RunningServer, context: ssl.SSLContext) -> tuple[ssl.SSLSocket, ReplyReader]:
    """
    A new session that says EHLO and starts TLS.

    @return: the TLS socket (the caller closes it) and a reader of its
        replies.
    """
    sock = server.connect(TIMEOUT)
    reader = ReplyReader(sock)
    assert reader.reply()[-1].startswith("220")
    sock.sendall(b"EHLO client.example\r\n")
    assert any("STARTTLS" in line for line in reader.reply())
    sock.sendall(b"STARTTLS\r\n")
    assert reader.reply()[-1].startswith("220 2.0.0")
    tls = context.wrap_socket(sock, server_hostname="localhost")
    return tls, ReplyReader(tls)


def peerSerial(tls: ssl.SSLSocket) -> int:
    """
    The serial number of the certificate the server showed.
    """
    return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True)).serial_number


def fileSerial(path: str) -> int:
    """
    The serial number of the certificate in a PEM file.
    """
    with open(path, "rb") as f:
        return x509.load_pem_x509_certificate(f.read()).serial_number


def waitForLog(server: RunningServer, text: str, count: int = 1, timeout: float = TIMEOUT) -> str:
    """
    Wait (bounded) until the server's log holds C{text} C{count} times.

    @return: the log.
    """
    ok = waitUntil(lambda: server.log().count(text) >= count, timeout)
    log = server.log()
    assert ok, f"{text!r} not logged {count} times:\n{log[-3000:]}"
    return log


class ReloadTests(SynchronousTestCase):
    """
    C{kill -HUP} makes a running server read its certificate and its
    aliases file again, without dropping a connection.
    """

    def setUp(self) -> None:
        """
        A server with STARTTLS from a certificate signed by a test CA and
        an aliases file.
        """
        self.dir = makeTemporaryDirectory(self.addCleanup, prefix="smtpmx-hup-")
        self.authority = certs.makeAuthority(self.dir)
        self.certPath, self.keyPath = certs.makeServerCertificate(self.authority, self.dir)
        self.aliases = os.path.join(self.dir, "aliases")
        with open(self.aliases, "w") as f:
            f.write("info@localhost: postmaster@localhost\n")
        self.server = RunningServer.start(self.addCleanup, [
            "--tls-certificate", self.certPath, "--tls-key", self.keyPath,
            "--validator", f"aliases:{self.aliases}", "--validator", "mailbox",
        ])
        self.context = ssl.create_default_context(cafile=self.authority.path)

    def renew(self) -> int:
        """
        Put a new certificate and key into the same files, as a renewal
        does.

        @return: the new certificate's serial number.
        """
        other = os.path.join(self.dir, "renewed")
        os.mkdir(other)
        cert, key = certs.makeServerCertificate(self.authority, other)
        shutil.copy(key, self.keyPath)
        shutil.copy(cert, self.certPath)
        return fileSerial(self.certPath)

    def hangUp(self, expect: str, count: int = 1) -> str:
        """
        Send the server SIGHUP and wait until it logs C{expect}.
        """
        os.kill(self.server.pid, signal.SIGHUP)
        return waitForLog(self.server, expect, count)

    def test_certificateSwapped(self) -> None:
        """
        After SIGHUP a new TLS session gets the renewed certificate, while
        a session that started TLS before it goes on with the old one; a
        broken certificate file then is refused in one error line, the
        renewed certificate stays in force and the server keeps running.
        """
        old = fileSerial(self.certPath)
        before, beforeReader = startTLS(self.server, self.context)
        self.addCleanup(before.close)
        self.assertEqual(peerSerial(before), old)

        new = self.renew()
        self.hangUp("reloaded the TLS certificate")
        after, _ = startTLS(self.server, self.context)
        self.addCleanup(after.close)
        self.assertEqual(peerSerial(after), new)
        self.assertNotEqual(new, old)

        before.sendall(b"EHLO client.example\r\nNOOP\r\n")
        self.assertTrue(beforeReader.reply()[-1].startswith("250"))
        self.assertEqual(beforeReader.reply()[-1], "250 2.0.0 Ok")

        with open(self.certPath, "wb") as f:
            f.write(b"-----BEGIN CERTIFICATE-----\ntruncated\n")
        log = self.hangUp("reload done", count=2)
        refusals = [line for line in log.splitlines() if "not reloaded" in line]
        self.assertEqual(len(refusals), 1, refusals)
        self.assertIn("TLS certificate not reloaded, the one in force is kept", refusals[0])
        self.assertIn("holds no PEM certificate", refusals[0])
        third, _ = startTLS(self.server, self.context)
        self.addCleanup(third.close)
        self.assertEqual(peerSerial(third), new)
        self.assertIsNone(self.server.process.poll())
        self.assertNotIn("Traceback", self.server.log())

    def test_aliasesReread(self) -> None:
        """
        SIGHUP re-reads the aliases file even when a rewrite left its
        size and modification time as they were (which the server's own
        change check cannot see).
        """
        stat = os.stat(self.aliases)
        with open(self.aliases, "r+") as f:
            f.write("news@localhost: postmaster@localhost\n")
        os.utime(self.aliases, ns=(stat.st_atime_ns, stat.st_mtime_ns))

        def rcpt(address: str) -> int:
            with smtplib.SMTP(self.server.host, self.server.port, timeout=TIMEOUT) as c:
                c.ehlo("client.example")
                c.mail("someone@remote.example")
                return c.rcpt(address)[0]

        time.sleep(1.1)
        self.assertEqual(rcpt("info@localhost"), 250)
        self.assertEqual(rcpt("news@localhost"), 550)
        self.hangUp(f"reloaded validator aliases:{self.aliases}")
        self.assertEqual(rcpt("news@localhost"), 250)
        self.assertEqual(rcpt("info@localhost"), 550)


class FilterReloadTests(SynchronousTestCase):
    """
    C{kill -HUP} makes a third-party filter that provides C{IReloadable}
    (docs/plugins.rst's C{words:PATH}) read its file again.
    """

    def test_wordsReread(self) -> None:
        """
        After SIGHUP the filter refuses the new file's word and no longer
        the old one's; a file it cannot use is refused in one error line
        naming the filter, and the words in force stay.
        """
        root = makeTemporaryDirectory(self.addCleanup, prefix="smtpmx-words-")
        writeWordsFilter(root)
        words = os.path.join(root, "words")
        with open(words, "w") as f:
            f.write("viagra\n")
        server = RunningServer.start(
            self.addCleanup,
            ["--relay-network", "192.0.2.0/24", "--validator", "any", "--filter", f"words:{words}"],
            pythonPath=[root],
        )

        def send(body: str) -> int:
            with smtplib.SMTP(server.host, server.port, timeout=TIMEOUT) as c:
                c.ehlo("client.example")
                c.mail("sender@remote.example")
                c.rcpt("alice@localhost")
                return c.data(f"Subject: offer\r\n\r\n{body}\r\n".encode())[0]

        self.assertEqual(send("cheap viagra"), 550)
        self.assertEqual(send("online casino"), 250)
        with open(words, "w") as f:
            f.write("casino\n")
        os.kill(server.pid, signal.SIGHUP)
        waitForLog(server, f"reloaded filter words:{words}")
        self.assertEqual(send("cheap viagra"), 250)
        self.assertEqual(send("online casino"), 550)

        with open(words, "w") as f:
            f.write("\n")
        os.kill(server.pid, signal.SIGHUP)
        log = waitForLog(server, "reload done", count=2)
        [line] = [line for line in log.splitlines() if "not reloaded" in line]
        self.assertIn(f"filter words:{words} not reloaded, it keeps its old files", line)
        self.assertIn("no word in it", line)
        self.assertEqual(send("online casino"), 550)
        self.assertNotIn("Traceback", server.log())


class ExpiredCertificateTests(SynchronousTestCase):
    """
    An expired certificate does not keep the server from starting.
    """

    def test_startsWithAWarning(self) -> None:
        """
        With an expired certificate the server starts, logs a warning
        naming the file and the date, and still offers STARTTLS (a sender
        using opportunistic TLS delivers anyway).
        """
        directory = makeTemporaryDirectory(self.addCleanup, prefix="smtpmx-old-")
        authority = certs.makeAuthority(directory)
        certificate, key = certs.makeExpiredCertificate(authority, directory)
        server = RunningServer.start(
            self.addCleanup, ["--tls-certificate", certificate, "--tls-key", key]
        )
        log = waitForLog(server, f"the TLS certificate {certificate} expired on")
        [line] = [line for line in log.splitlines() if "expired on" in line]
        self.assertIn("warn", line.lower())
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        tls, reader = startTLS(server, context)
        self.addCleanup(tls.close)
        self.assertEqual(peerSerial(tls), fileSerial(certificate))
        tls.sendall(b"EHLO client.example\r\n")
        self.assertTrue(reader.reply()[-1].startswith("250"))


class FreeSpaceTests(SynchronousTestCase):
    """
    C{--min-free-space} above the disk's free space: MAIL gets
    C{452 4.3.1}, while mail already queued is still relayed.
    """

    def test_mailRefusedRelayGoesOn(self) -> None:
        """
        A message queued while the next hop is down is delivered once it
        is back, after a restart with C{--min-free-space} above what the
        disk has; meanwhile every MAIL is answered 452 4.3.1 and the log
        says why.
        """
        directory = makeTemporaryDirectory(self.addCleanup, prefix="smtpmx-sink-")
        port = freePort("127.0.0.3")
        route = ["--route", f"remote.example=127.0.0.3:{port}", "--retry-schedule", "1"]
        server = RunningServer.start(self.addCleanup, route + ["--min-free-space", "0"])
        messageId = unique() + "@client.example"
        with smtplib.SMTP(server.host, server.port, timeout=TIMEOUT) as c:
            c.ehlo("client.example")
            self.assertEqual(c.mail("someone@client.example")[0], 250)
            self.assertEqual(c.rcpt("user@remote.example")[0], 250)
            self.assertEqual(c.data(message(messageId=messageId))[0], 250)

        server.stop()
        st = os.statvfs(server.dir)
        server.args = route + ["--min-free-space", str(st.f_bavail * st.f_frsize * 4 + 1)]
        server.launch()
        log = waitForLog(server, "free space low")
        self.assertIn("MAIL gets 452 4.3.1", log)
        with smtplib.SMTP(server.host, server.port, timeout=TIMEOUT) as c:
            c.ehlo("client.example")
            code, text = c.mail("someone@client.example")
            self.assertEqual(code, 452)
            self.assertTrue(text.startswith(b"4.3.1"), text)
            self.assertEqual(c.noop()[0], 250)

        sink = RunningSink.start(self.addCleanup, directory, "127.0.0.3", port)
        delivered = waitUntil(lambda: [t for t in sink.transactions() if messageId.encode() in t.data], 30)
        self.assertTrue(delivered, server.log()[-3000:])
        self.assertNotIn("Traceback", server.log())


class StressTests(SynchronousTestCase):
    """
    Idle connections that hold every slot of C{--max-connections} do not
    keep a real sender out.
    """

    def test_senderGetsIn(self) -> None:
        """
        With ten idle connections holding all ten slots (a 300 s command
        timeout), a real sender is greeted and delivers within seconds;
        the connection idle the longest got 421 4.7.0.  About ten seconds
        into stress, idle connections are closed with 421 4.4.2 until no
        more than 80% of the slots are taken, and the log says when
        stress started and when it ended.
        """
        server = RunningServer.start(self.addCleanup, ["--max-connections", "10"])
        idle = []
        for _ in range(10):
            sock = server.connect(TIMEOUT)
            self.addCleanup(sock.close)
            reader = ReplyReader(sock)
            self.assertTrue(reader.reply()[-1].startswith("220"))
            idle.append((sock, reader))
        waitForLog(server, "stress: 9 of 10 connections in use")
        started = time.monotonic()
        messageId = unique() + "@client.example"
        with smtplib.SMTP(server.host, server.port, timeout=TIMEOUT) as c:
            c.ehlo("client.example")
            c.sendmail("someone@remote.example", ["postmaster@localhost"], message(messageId=messageId))
        self.assertLess(time.monotonic() - started, 5.0)
        self.assertTrue(any(messageId.encode() in m for m in server.newMessages("localhost", "postmaster")))
        first, reader = idle[0]
        self.assertTrue(reader.reply()[-1].startswith("421 4.7.0"))
        self.assertIn("to make room", server.log())

        waitForLog(server, "stress over", timeout=STRESS_WAIT)
        self.assertLess(time.monotonic() - started, STRESS_WAIT)
        timedOut = []
        for sock, reader in idle[1:]:
            sent = reader.nothingMore(0.2)
            if sent:
                self.assertTrue(sent.startswith(b"421 4.4.2"), sent)
                timedOut.append(sock)
        self.assertGreaterEqual(len(timedOut), 1)
        self.assertLessEqual(len(idle) - 1 - len(timedOut), 8)
        self.assertNotIn("Traceback", server.log())


# The idle limit under stress is 10 s: stress must be over well before
# the 300 s command timeout.
STRESS_WAIT = 30.0
