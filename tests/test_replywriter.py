"""
Tests for L{smtpmx.replywriter}: the replies to one batch of pipelined
input leave in one write (RFC 2920), and on a plain TCP connection a
reply goes straight to the socket unless the transport still holds
something, so that replies never overtake each other.
"""

from __future__ import annotations

import socket

from twisted.internet.protocol import Protocol
from twisted.internet.tcp import Connection
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.trial.unittest import SynchronousTestCase

from smtpmx.replywriter import ReplyWriter

from tests.serverhelpers import Server


def receiveAll(sock: socket.socket) -> bytes:
    """
    Everything that can be read from C{sock} now, without waiting.
    """
    chunks = []
    while True:
        try:
            chunk = sock.recv(1 << 20)
        except BlockingIOError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


class RealConnection:
    """
    A Twisted TCP transport over one end of a socket pair, with a memory
    reactor that records which descriptors it would watch.
    """

    def __init__(self, case: SynchronousTestCase, sendBuffer: int = 0) -> None:
        """
        @param sendBuffer: the socket's send buffer size, if not the
            default.
        """
        ours, self.peer = socket.socketpair()
        case.addCleanup(ours.close)
        case.addCleanup(self.peer.close)
        if sendBuffer:
            ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sendBuffer)
        ours.setblocking(False)
        self.peer.setblocking(False)
        self.reactor = MemoryReactor()
        self.transport = Connection(ours, Protocol(), self.reactor)
        # As a connection the reactor accepted is.
        self.transport.connected = True
        self.writer = ReplyWriter(self.transport)


class DirectWriteTests(SynchronousTestCase):
    """
    Replies on a real TCP transport.
    """

    def test_straightToTheSocket(self):
        """
        A reply on a transport that holds nothing is on the socket at once:
        the reactor is never asked to watch the socket for writing.
        """
        c = RealConnection(self)
        c.writer.send(b"250 2.0.0 Ok\r\n")
        self.assertEqual(receiveAll(c.peer), b"250 2.0.0 Ok\r\n")
        self.assertEqual(c.reactor.getWriters(), [])
        self.assertEqual(c.transport.dataBuffer, b"")

    def test_heldRepliesInOneWrite(self):
        """
        Replies sent while held go out together when flushed, and not
        before.
        """
        c = RealConnection(self)
        self.assertTrue(c.writer.hold())
        self.assertFalse(c.writer.hold())
        c.writer.send(b"250 2.1.0 Ok\r\n")
        c.writer.send(b"250 2.1.5 Ok\r\n")
        self.assertEqual(receiveAll(c.peer), b"")
        c.writer.flush()
        self.assertEqual(receiveAll(c.peer), b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n")

    def test_partialWriteKeepsOrder(self):
        """
        When the socket takes only part of a write (the client does not
        read), the rest waits in the transport, and every later reply waits
        behind it, even once the socket has room again: nothing overtakes.
        """
        c = RealConnection(self, sendBuffer=4096)
        big = b"".join(b"250-%06d\r\n" % i for i in range(100000))
        c.writer.send(big)
        self.assertEqual(c.reactor.getWriters(), [c.transport])
        received = [receiveAll(c.peer)]
        c.writer.send(b"250 2.0.0 last\r\n")
        while c.reactor.getWriters():
            c.transport.doWrite()
            received.append(receiveAll(c.peer))
        self.assertEqual(b"".join(received), big + b"250 2.0.0 last\r\n")

    def test_notOnceTLSStarted(self):
        """
        Once TLS has started on the transport, replies go through its
        C{write}, which encrypts them.
        """
        c = RealConnection(self)
        written = []
        c.transport.write = written.append
        c.transport.TLS = True
        c.writer.send(b"250 2.0.0 Ok\r\n")
        self.assertEqual(written, [b"250 2.0.0 Ok\r\n"])
        self.assertEqual(receiveAll(c.peer), b"")

    def test_otherTransports(self):
        """
        A transport that is not a TCP connection (a test's
        L{StringTransport}) gets every reply through its C{write}.
        """
        transport = StringTransport()
        writer = ReplyWriter(transport)
        writer.send(b"220 hello\r\n")
        self.assertEqual(transport.value(), b"220 hello\r\n")


class CoalescingTests(SynchronousTestCase):
    """
    The protocol answers a batch of pipelined commands in one write.
    """

    def writes(self, s: Server) -> list[bytes]:
        """
        Record the writes to C{s}'s transport from now on.
        """
        writes: list[bytes] = []
        original = s.transport.write

        def write(data: bytes) -> None:
            writes.append(data)
            original(data)

        s.transport.write = write
        return writes

    def test_pipelinedBatchOneWrite(self):
        """
        MAIL, RCPT and DATA pipelined in one packet (RFC 2920) get their
        three replies in one write, in order.
        """
        s = Server().greeted()
        writes = self.writes(s)
        s.send(
            "MAIL FROM:<sender@remote.example>\r\n"
            "RCPT TO:<alice@example.org>\r\n"
            "DATA\r\n"
        )
        self.assertEqual(
            writes, [b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n"]
        )

    def test_startTLSReplyBeforeSwitch(self):
        """
        The reply to STARTTLS is written before the transport switches to
        TLS, even when it is part of a batch: it must go in the clear.
        """
        s = Server(tlsOptions=object())
        s.output()
        events: list[object] = []
        original = s.transport.write
        s.transport.write = lambda data: (events.append(data), original(data))
        s.transport.startTLS = lambda options: events.append("startTLS")
        s.send("EHLO client.example\r\nSTARTTLS\r\n")
        self.assertEqual(events[-1], "startTLS")
        self.assertTrue(events[-2].endswith(b"220 2.0.0 Ready to start TLS\r\n"))

    def test_lateAnswerFlushed(self):
        """
        A reply decided later (the end of data, once stored) is written
        with the replies to the commands pipelined after it, in one write.
        """
        s = Server().greeted()
        s.send(
            "MAIL FROM:<sender@remote.example>\r\n"
            "RCPT TO:<alice@example.org>\r\n"
            "DATA\r\n"
        )
        s.store.hold = True
        writes = self.writes(s)
        s.send("Subject: x\r\n\r\nhi\r\n.\r\nNOOP\r\nNOOP\r\n")
        self.assertEqual(writes, [])
        s.store.release()
        self.assertEqual(len(writes), 1)
        self.assertTrue(writes[0].startswith(b"250 2.0.0 Ok: queued as "))
        self.assertTrue(writes[0].endswith(b"\r\n250 2.0.0 Ok\r\n250 2.0.0 Ok\r\n"))
