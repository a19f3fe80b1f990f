"""
Tests for the relay client's connection cache, L{SessionPool}: against the
recording sink of L{tests.sink} over real loopback connections, and with a
L{Clock} and a string transport for the idle timer.
"""

from __future__ import annotations

import os

from twisted.internet import reactor
import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase

from smtpmx.relay.pool import PooledSession, SessionPool
from smtpmx.relay.protocol import ClientProtocol
from smtpmx.relay.request import DeliveryRequest, DeliveryResult, Disposition
from smtpmx.relay.transaction import deliver
from smtpmx.relay.nexthop import NextHop
from tests import certs
from tests.test_relay_client import MESSAGE, SHORT, _RelayTestMixin, runBlocking


async def waitFor(predicate, timeout: float = 5.0) -> None:
    """
    Spin the reactor until C{predicate()} holds (for what the other end
    of a connection sees a moment later).
    """
    waited = 0.0
    while not predicate():
        if waited >= timeout:
            raise AssertionError("condition not met in time")
        await deferLater(reactor, 0.01, lambda: None)
        waited += 0.01


class PooledDeliverTests(_RelayTestMixin, TestCase):
    """
    L{deliver} with a L{SessionPool}: one connection for transactions in a
    row to one next hop, and a fresh one, unseen by the caller, whenever
    the cached one will not do.
    """

    def makePool(self, **kwargs) -> SessionPool:
        """
        A pool on the real reactor, closed at the end of the test (before
        the sinks stop).
        """
        pool = SessionPool(reactor, **kwargs)
        self.addCleanup(pool.close)
        return pool

    def deliverPooled(self, pool: SessionPool, port: int, recipients=("rcpt@example.com",), *, name="localhost",
                      tlsMode="none", trustRoot=None, timeouts=SHORT) -> Deferred:
        """
        Deliver the message to the sink on C{port} through C{pool}.
        """
        request = DeliveryRequest(
            NextHop("127.0.0.1", port, name), "relay.test", "sender@example.org", recipients,
            self.messageFile, os.path.getsize(self.messageFile), tlsMode, trustRoot, timeouts,
        )
        return deliver(request, reactor=reactor, runBlocking=runBlocking, pool=pool)

    def assertDelivered(self, result: DeliveryResult, recipient: str = "rcpt@example.com") -> None:
        """
        The transaction reached the next hop and delivered to C{recipient}.
        """
        self.assertTrue(result.connected)
        self.assertIs(result.recipients[recipient].disposition, Disposition.DELIVERED, result.recipients[recipient])

    @pytest.mark.rfc("5321", "4.1.4", "5321-4.1.4-6", "5321-4.1.4-9")
    async def test_twoTransactionsOneConnection(self) -> None:
        """
        Two transactions in a row to the same next hop share one
        connection, with RSET between them and no QUIT until the pool is
        closed; closing it leaves no connection open.
        """
        sink, port = self.startSink()
        pool = self.makePool()
        first = await self.deliverPooled(pool, port, ["a@example.com"])
        second = await self.deliverPooled(pool, port, ["b@example.com"])
        self.assertDelivered(first, "a@example.com")
        self.assertDelivered(second, "b@example.com")
        self.assertEqual((first.connectionUse, second.connectionUse), (1, 2))
        self.assertEqual(len(sink.sessions), 1)
        self.assertEqual([t.recipients for t in sink.transactions], [["a@example.com"], ["b@example.com"]])
        self.assertEqual([t.data for t in sink.transactions], [MESSAGE, MESSAGE])
        verbs = [c.split(" ")[0] for c, _ in sink.sessions[0].commands]
        self.assertEqual(verbs, ["EHLO", "MAIL", "RCPT", "DATA", "RSET", "MAIL", "RCPT", "DATA"])
        self.assertEqual(pool.idleCount(), 1)

        await pool.close()
        await waitFor(lambda: sink.openConnections() == 0)
        self.assertEqual(sink.sessions[0].commands[-1][0], "QUIT")
        self.assertEqual(pool.idleCount(), 0)

    async def test_idleTimeout(self) -> None:
        """
        A session idle longer than the pool keeps it is sent QUIT and
        closed; the next transaction opens a new connection.
        """
        sink, port = self.startSink()
        pool = self.makePool(idleTimeout=0.1)
        self.assertDelivered(await self.deliverPooled(pool, port))
        await waitFor(lambda: sink.openConnections() == 0)
        self.assertEqual(pool.idleCount(), 0)
        self.assertEqual(sink.sessions[0].commands[-1][0], "QUIT")
        result = await self.deliverPooled(pool, port)
        self.assertDelivered(result)
        self.assertEqual(result.connectionUse, 1)
        self.assertEqual(len(sink.sessions), 2)

    async def test_droppedWhileIdle(self) -> None:
        """
        When the next hop drops an idle connection, the next transaction
        goes over a fresh one.
        """
        sink, port = self.startSink()
        pool = self.makePool()
        self.assertDelivered(await self.deliverPooled(pool, port))
        sink.dropConnections()
        await waitFor(lambda: pool.idleCount() == 0)
        self.assertDelivered(await self.deliverPooled(pool, port))
        self.assertEqual(len(sink.sessions), 2)
        self.assertEqual(len(sink.transactions), 2)

    async def test_droppedOnRset(self) -> None:
        """
        A cached connection that dies when it is taken over (the next hop
        closed it just then) is replaced by a fresh one: the caller sees a
        delivery, not a failure.
        """
        sink, port = self.startSink(drop=["RSET"])
        pool = self.makePool()
        self.assertDelivered(await self.deliverPooled(pool, port))
        self.assertDelivered(await self.deliverPooled(pool, port))
        self.assertEqual(len(sink.sessions), 2)
        self.assertEqual([c.split()[0] for c, _ in sink.sessions[0].commands][-4:], ["RSET", "MAIL", "RCPT", "DATA"])
        self.assertEqual(len(sink.transactions), 2)

    @pytest.mark.rfc("5321", "3.8", "5321-3.8-3")
    async def test_lostBeforeDataTriedAfresh(self) -> None:
        """
        A cached connection lost after RSET but before DATA (so nothing
        can have been delivered) is replaced by a fresh one once; the
        fresh connection's failure is what the caller sees.
        """
        sink, port = self.startSink()
        pool = self.makePool()
        self.assertDelivered(await self.deliverPooled(pool, port))
        sink.drop = {"MAIL"}
        result = await self.deliverPooled(pool, port)
        self.assertTrue(result.connected)
        self.assertEqual(result.connectionUse, 1)
        self.assertIs(result.recipients["rcpt@example.com"].disposition, Disposition.TEMPORARY)
        self.assertEqual(len(sink.sessions), 2)
        self.assertEqual(pool.idleCount(), 0)

    @pytest.mark.rfc("5321", "4.1.4", "5321-4.1.4-9")
    async def test_rsetRefused(self) -> None:
        """
        A cached session whose RSET is not answered 250 is closed and the
        transaction goes over a fresh connection: with QUIT when the RSET
        went alone; when MAIL, RCPT and DATA were pipelined after it, the
        connection is closed before any data (a QUIT would be data there).
        """
        for pipelining in (True, False):
            sink, port = self.startSink(replies={"RSET": "502 5.5.2 no RSET here"}, pipelining=pipelining)
            pool = self.makePool()
            self.assertDelivered(await self.deliverPooled(pool, port))
            self.assertDelivered(await self.deliverPooled(pool, port))
            self.assertEqual(len(sink.sessions), 2)
            commands = [c.split()[0] for c, _ in sink.sessions[0].commands]
            tail = commands[commands.index("RSET"):]
            if pipelining:
                self.assertEqual(tail, ["RSET", "MAIL", "RCPT", "DATA"])
            else:
                self.assertEqual(tail, ["RSET", "QUIT"])
            self.assertEqual(len(sink.transactions), 2)

    @pytest.mark.rfc("2920", "3.1", "2920-3.1-2")
    async def test_rsetPipelined(self) -> None:
        """
        A cached session of a next hop that offers PIPELINING is reset in
        the same write as MAIL and RCPT (no round trip of its own); one
        that does not is sent RSET alone and its reply awaited first.
        """
        for pipelining, batch in ((True, [["RSET", "MAIL", "RCPT", "DATA"]]), (False, [["RSET"], ["MAIL"]])):
            sink, port = self.startSink(pipelining=pipelining)
            pool = self.makePool()
            self.assertDelivered(await self.deliverPooled(pool, port))
            self.assertDelivered(await self.deliverPooled(pool, port))
            [session] = sink.sessions
            first = next(i for i, b in enumerate(session.batches) if b[0] == "RSET")
            batches = [[c.split()[0] for c in b] for b in session.batches]
            self.assertEqual(batches[first:first + len(batch)], batch)
            self.assertEqual(len(sink.transactions), 2)

    @pytest.mark.rfc("5321", "4.5.3.2", "5321-4.5.3.2-1")
    async def test_rsetTimeout(self) -> None:
        """
        A cached session that does not answer RSET in time is dropped and
        the transaction goes over a fresh connection.
        """
        sink, port = self.startSink(hang=["RSET"])
        pool = self.makePool()
        self.assertDelivered(await self.deliverPooled(pool, port))
        result = await self.deliverPooled(pool, port, timeouts={**SHORT, "command": 0.3})
        self.assertDelivered(result)
        self.assertEqual(len(sink.sessions), 2)

    async def test_maxTransactions(self) -> None:
        """
        A connection carries at most C{maxTransactions} transactions, then
        is sent QUIT.
        """
        sink, port = self.startSink()
        pool = self.makePool(maxTransactions=2)
        for _ in range(3):
            self.assertDelivered(await self.deliverPooled(pool, port))
        self.assertEqual(len(sink.sessions), 2)
        self.assertEqual(sink.sessions[0].commands[-1][0], "QUIT")
        self.assertEqual(len([c for c, _ in sink.sessions[0].commands if c.startswith("MAIL")]), 2)

    async def test_notReusedAfterTimeout(self) -> None:
        """
        A session whose transaction timed out is never cached.
        """
        sink, port = self.startSink(hang=["."])
        pool = self.makePool()
        result = await self.deliverPooled(pool, port, timeouts={**SHORT, "finalDot": 0.3})
        self.assertIs(result.recipients["rcpt@example.com"].disposition, Disposition.TEMPORARY)
        self.assertEqual(pool.idleCount(), 0)
        sink.hang = set()
        self.assertDelivered(await self.deliverPooled(pool, port))
        self.assertEqual(len(sink.sessions), 2)

    async def test_notReusedAfter421(self) -> None:
        """
        After a C{421} (the next hop is closing the connection) the session
        is not cached.
        """
        sink, port = self.startSink(rcptReplies={"busy@example.com": "421 4.3.2 closing"})
        pool = self.makePool()
        result = await self.deliverPooled(pool, port, ["busy@example.com"])
        self.assertEqual(result.recipients["busy@example.com"].code, 421)
        self.assertEqual(pool.idleCount(), 0)

    async def test_refusedTransactionNotCached(self) -> None:
        """
        Only a transaction that got to the reply to its data leaves its
        session cached: one whose every recipient was refused is ended
        with QUIT, and the next transaction (a retry, say) has a new
        connection.
        """
        sink, port = self.startSink(rcptReplies={"busy@example.com": "451 4.3.0 try later"})
        pool = self.makePool()
        result = await self.deliverPooled(pool, port, ["busy@example.com"])
        self.assertIs(result.recipients["busy@example.com"].disposition, Disposition.TEMPORARY)
        self.assertEqual(pool.idleCount(), 0)
        self.assertDelivered(await self.deliverPooled(pool, port))
        self.assertEqual(len(sink.sessions), 2)
        self.assertEqual(sink.sessions[0].commands[-1][0], "QUIT")

    async def test_partlyRefusedTransactionCached(self) -> None:
        """
        A transaction with some recipients refused and the message taken
        for the others leaves its session cached.
        """
        sink, port = self.startSink(rcptReplies={"gone@example.com": "550 5.1.1 no such user"})
        pool = self.makePool()
        result = await self.deliverPooled(pool, port, ["gone@example.com", "a@example.com"])
        self.assertIs(result.recipients["gone@example.com"].disposition, Disposition.PERMANENT)
        self.assertDelivered(result, "a@example.com")
        self.assertDelivered(await self.deliverPooled(pool, port))
        self.assertEqual(len(sink.sessions), 1)

    async def test_otherNextHopNotShared(self) -> None:
        """
        A session is only reused for the same next hop (name and TLS mode
        included).
        """
        sink, port = self.startSink()
        pool = self.makePool()
        self.assertDelivered(await self.deliverPooled(pool, port))
        self.assertDelivered(await self.deliverPooled(pool, port, name="other.example"))
        self.assertDelivered(await self.deliverPooled(pool, port, tlsMode="may"))
        self.assertEqual(len(sink.sessions), 3)
        self.assertEqual(pool.idleCount(), 3)

    async def test_releasedAfterClose(self) -> None:
        """
        A transaction that ends after the pool was closed (the service
        stopping) closes its connection instead of caching it.
        """
        sink, port = self.startSink()
        pool = self.makePool()
        pending = self.deliverPooled(pool, port)
        await pool.close()
        self.assertDelivered(await pending)
        await pool.close()
        await waitFor(lambda: sink.openConnections() == 0)
        self.assertEqual(pool.idleCount(), 0)
        self.assertEqual(sink.sessions[0].commands[-1][0], "QUIT")

    @pytest.mark.rfc("3207", "4.1")
    async def test_verifiedSessionReused(self) -> None:
        """
        A cached C{verify} session is still TLS and verified: the second
        transaction goes over the same TLS connection, nothing in clear.
        """
        authority = certs.makeAuthority(self.directory)
        good = certs.makeServerCertificate(authority, self.directory)
        sink, port = self.startSink(certificate=good)
        pool = self.makePool()
        results = []
        for _ in range(2):
            results.append(await self.deliverPooled(pool, port, tlsMode="verify", trustRoot=authority.path))
        for result in results:
            self.assertDelivered(result)
            self.assertTrue(result.verified)
            self.assertIsNotNone(result.tls)
        self.assertEqual(len(sink.sessions), 1)
        self.assertTrue(all(t.tls for t in sink.transactions))
        self.assertEqual([c for c, tls in sink.sessions[0].commands if not tls], ["EHLO relay.test", "STARTTLS"])


class SessionPoolClockTests(SynchronousTestCase):
    """
    L{SessionPool}'s timers and closing, with a L{Clock} and a string
    transport.
    """

    def setUp(self) -> None:
        """
        A clock, a pool on it, and a connected client protocol.
        """
        self.clock = Clock()
        self.pool = SessionPool(self.clock, idleTimeout=5.0)
        self.protocol = ClientProtocol(self.clock)
        self.transport = StringTransport()
        self.protocol.makeConnection(self.transport)
        self.session = PooledSession(("h", 25, "h", "none", "me", None), self.protocol, {}, None, False, 30.0)

    def closeConnection(self) -> None:
        """
        Finish closing the string transport, as the reactor would.
        """
        self.assertTrue(self.transport.disconnecting)
        self.protocol.connectionLost(None)

    @pytest.mark.rfc("5321", "4.1.1.10", "5321-4.1.1.10-3")
    @pytest.mark.rfc("5321", "4.1.4", "5321-4.1.4-9")
    def test_idleTimerQuits(self) -> None:
        """
        Once the idle timeout passes, the session is sent QUIT, closed
        after the reply, and no timer is left.
        """
        self.pool.release(self.session, True)
        self.assertEqual(self.pool.idleCount(), 1)
        self.clock.advance(4.9)
        self.assertEqual(self.transport.value(), b"")
        self.clock.advance(0.1)
        self.assertEqual(self.transport.value(), b"QUIT\r\n")
        self.assertEqual(self.pool.idleCount(), 0)
        self.protocol.dataReceived(b"221 2.0.0 Bye\r\n")
        self.closeConnection()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_takeCancelsTimer(self) -> None:
        """
        Taking a session stops its idle timer.
        """
        self.pool.release(self.session, True)
        self.assertIs(self.pool.take(self.session.key), self.session)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertIsNone(self.pool.take(self.session.key))

    def test_unsolicitedReplyWhileIdle(self) -> None:
        """
        A session to which the next hop said something while idle (a
        C{421} on its way out) is not handed out.
        """
        self.pool.release(self.session, True)
        self.protocol.dataReceived(b"421 4.4.2 idle too long\r\n")
        self.assertIsNone(self.pool.take(self.session.key))
        self.assertEqual(self.pool.idleCount(), 0)

    @pytest.mark.rfc("5321", "4.1.1.10", "5321-4.1.1.10-3")
    @pytest.mark.rfc("5321", "4.1.4", "5321-4.1.4-9")
    def test_closeQuitsIdle(self) -> None:
        """
        Closing the pool sends QUIT to idle sessions and fires once they
        are closed; no timer is left.
        """
        self.pool.release(self.session, True)
        d = self.pool.close()
        self.assertEqual(self.transport.value(), b"QUIT\r\n")
        self.assertNoResult(d)
        self.protocol.dataReceived(b"221 2.0.0 Bye\r\n")
        self.closeConnection()
        self.successResultOf(d)
        self.assertEqual(self.pool.idleCount(), 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_closeWithNothingIdle(self) -> None:
        """
        Closing an empty pool is done at once.
        """
        self.successResultOf(self.pool.close())
        self.assertTrue(self.pool.closed)

    def test_lostWhileIdle(self) -> None:
        """
        A connection lost while idle leaves the pool at once.
        """
        self.pool.release(self.session, True)
        self.protocol.connectionLost(None)
        self.assertEqual(self.pool.idleCount(), 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_notReusable(self) -> None:
        """
        A session given back as not reusable is closed, not kept.
        """
        self.pool.release(self.session, False)
        self.assertEqual(self.pool.idleCount(), 0)
        self.assertEqual(self.transport.value(), b"QUIT\r\n")
        self.protocol.dataReceived(b"221 2.0.0 Bye\r\n")
        self.closeConnection()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_unsolicitedReplyTakenWithTimer(self) -> None:
        """
        A session taken out dead on the way is closed, and its idle timer
        stopped.
        """
        self.pool.release(self.session, True)
        self.protocol.dataReceived(b"421 4.4.2 bye\r\n")
        self.assertIsNone(self.pool.take(self.session.key))
        # QUIT is not sent on a session out of step; it is just closed.
        self.assertEqual(self.transport.value(), b"")
        self.closeConnection()
        self.assertEqual(self.clock.getDelayedCalls(), [])


class SessionPoolLimitTests(SynchronousTestCase):
    """
    L{SessionPool.limited}: the caps on simultaneous transactions, in all
    and to one destination.
    """

    def setUp(self) -> None:
        """
        A pool with small caps and a record of the transactions running.
        """
        self.pool = SessionPool(Clock(), maxConnections=3, maxPerDestination=2)
        self.running: list[tuple[str, Deferred]] = []

    def start(self, destination: tuple[str, int]) -> Deferred:
        """
        Start a transaction to C{destination} that runs until its
        L{Deferred} in C{self.running} is fired.
        """

        def transaction(name: str) -> Deferred:
            """
            A transaction that runs until told to end.
            """
            d = Deferred()
            self.running.append((name, d))
            return d

        return self.pool.limited(destination, transaction, destination[0])

    def finish(self, name: str) -> None:
        """
        End the oldest running transaction to C{name}.
        """
        for entry in self.running:
            if entry[0] == name:
                self.running.remove(entry)
                entry[1].callback(None)
                return
        raise AssertionError(f"nothing running for {name}")

    def test_perDestination(self) -> None:
        """
        At most C{maxPerDestination} transactions run to one destination;
        the next starts when one ends.
        """
        results = [self.start(("a", 25)) for _ in range(3)]
        self.assertEqual([name for name, _ in self.running], ["a", "a"])
        self.finish("a")
        self.successResultOf(results[0])
        self.assertEqual([name for name, _ in self.running], ["a", "a"])

    def test_global(self) -> None:
        """
        At most C{maxConnections} run in all; a destination waiting for a
        busy destination holds no global slot.
        """
        for destination in [("a", 25)] * 3 + [("b", 25), ("c", 25), ("d", 25)]:
            self.start(destination)
        self.assertEqual(sorted(name for name, _ in self.running), ["a", "a", "b"])
        self.finish("b")
        self.assertEqual(sorted(name for name, _ in self.running), ["a", "a", "c"])
        self.finish("a")
        self.assertEqual(sorted(name for name, _ in self.running), ["a", "c", "d"])

    def test_defaults(self) -> None:
        """
        By default 10 transactions run to one destination and 50 in all.
        """
        pool = SessionPool(Clock())
        self.pool = pool
        for n in range(12):
            self.start(("a", 25))
        self.assertEqual(len(self.running), 10)
        for n in range(60):
            self.start((f"h{n}", 25))
        self.assertEqual(len(self.running), 50)
