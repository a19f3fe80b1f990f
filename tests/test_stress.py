"""
Tests for stress (RFC 5321 section 4.5.3.2 lets a busy server shorten its
timeouts; Postfix calls it stress): while more than 80% of
C{--max-connections} are in use the idle limits drop to 10 seconds, a
connection that would pass the limit gets in by closing the session idle
the longest with C{421 4.7.0}, and the log says when stress starts and
ends.  In memory, on a fake clock.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from smtpmx.server import STRESS_IDLE_LIMIT
from tests.serverhelpers import Server


class Connections:
    """
    Several connections to one in-memory server, opened and ended as a
    test says.
    """

    def __init__(self, maxConnections: int = 5, **config) -> None:
        """
        @param config: L{Config} fields over the test defaults (a long
            command and data timeout).
        """
        config.setdefault("commandTimeout", 300.0)
        config.setdefault("dataTimeout", 600.0)
        config.setdefault("maxConnectionsPerIp", 1000)
        self.server = Server(maxConnections=maxConnections, **config)
        self.clock = self.server.clock
        self.factory = self.server.factory
        self.all = [(self.server.protocol, self.server.transport)]

    def open(self, count: int = 1) -> list:
        """
        Open C{count} more connections, one second apart.

        @return: their C{(protocol, transport)} pairs.
        """
        opened = []
        for _ in range(count):
            self.clock.advance(1)
            pair = self.server.connect()
            self.all.append(pair)
            opened.append(pair)
        return opened

    def endClosed(self) -> None:
        """
        End every connection the server has closed, as the reactor would
        once the last replies are sent.
        """
        for protocol, transport in self.all:
            if transport.disconnecting and not getattr(transport, "ended", False):
                transport.ended = True
                protocol.connectionLost(None)

    def stillOpen(self) -> list:
        """
        The connections not closed by the server.
        """
        return [(p, t) for p, t in self.all if not t.disconnecting]


def lastReply(transport) -> str:
    """
    The last reply line written to C{transport}.
    """
    return transport.value().decode().split("\r\n")[-2]


class StressStateTests(SynchronousTestCase):
    """
    Stress starts above 80% of C{--max-connections} and ends at or below
    it, once each, logged.
    """

    def test_startsAbove80Percent(self) -> None:
        """
        With a limit of 10, 8 connections (80%) are no stress; the ninth
        starts it, and the log says so once, with the counts and the new
        idle limit.
        """
        c = Connections(maxConnections=10)
        with capturedLogs() as events:
            c.open(7)
            self.assertFalse(c.factory.stressed)
            c.open(1)
        self.assertTrue(c.factory.stressed)
        stress = [formatEvent(e) for e in events if "stress" in formatEvent(e)]
        self.assertEqual(len(stress), 1, stress)
        self.assertIn("stress: 9 of 10 connections in use", stress[0])
        self.assertIn("idle limits drop to 10 s", stress[0])

    def test_endsAtOrBelow80Percent(self) -> None:
        """
        When connections end and 80% or less are in use, stress is over,
        and the log says so once, with the usual limits.
        """
        c = Connections(maxConnections=10)
        c.open(8)
        with capturedLogs() as events:
            protocol, transport = c.all[-1]
            transport.loseConnection()
            protocol.connectionLost(None)
            protocol, transport = c.all[-2]
            transport.loseConnection()
            protocol.connectionLost(None)
        self.assertFalse(c.factory.stressed)
        stress = [formatEvent(e) for e in events if "stress" in formatEvent(e)]
        self.assertEqual(len(stress), 1, stress)
        self.assertIn("stress over: 8 of 10 connections in use", stress[0])
        self.assertIn("300 s (commands) and 600 s (data)", stress[0])

    def test_refusedConnectionChangesNothing(self) -> None:
        """
        A connection refused for its address's limit is not counted and
        does not start stress.
        """
        c = Connections(maxConnections=2, maxConnectionsPerIp=1)
        [(_, transport)] = c.open(1)
        self.assertEqual(lastReply(transport)[:9], "421 4.7.0")
        self.assertIn("from your address", lastReply(transport))
        self.assertEqual(c.factory.connections, 1)
        self.assertFalse(c.factory.stressed)


class StressIdleLimitTests(SynchronousTestCase):
    """
    Under stress, a client may stay idle 10 seconds at most, between
    commands and inside DATA; the usual limits come back with the end of
    stress.
    """

    def test_idleSessionsClosedAfter10Seconds(self) -> None:
        """
        When stress starts, every idle session has 10 more seconds; then
        it gets 421 4.4.2 and is closed, although the command timeout is
        300 seconds.
        """
        c = Connections(maxConnections=5)
        c.open(4)
        self.assertTrue(c.factory.stressed)
        c.clock.advance(STRESS_IDLE_LIMIT - 0.5)
        self.assertEqual(len(c.stillOpen()), 5)
        c.clock.advance(1)
        self.assertEqual(c.stillOpen(), [])
        for _, transport in c.all:
            self.assertEqual(lastReply(transport)[:9], "421 4.4.2")

    def test_activeSessionKept(self) -> None:
        """
        A client that sends a command within every 10 seconds is not
        idle: it stays.
        """
        c = Connections(maxConnections=5)
        c.open(4)
        protocol, transport = c.all[0]
        for _ in range(5):
            c.clock.advance(STRESS_IDLE_LIMIT - 1)
            protocol.dataReceived(b"NOOP\r\n")
        self.assertFalse(transport.disconnecting)
        self.assertEqual(len(c.stillOpen()), 1)

    def test_newSessionUnderStress(self) -> None:
        """
        A session that starts under stress has 10 seconds from its
        greeting.
        """
        c = Connections(maxConnections=10)
        c.open(8)
        [(protocol, transport)] = c.open(1)
        self.assertTrue(c.factory.stressed)
        c.clock.advance(STRESS_IDLE_LIMIT + 0.1)
        self.assertEqual(lastReply(transport)[:9], "421 4.4.2")

    def test_dataUnderStress(self) -> None:
        """
        Inside DATA the idle limit is 10 seconds too; the message being
        received is thrown away.
        """
        c = Connections(maxConnections=5)
        protocol, transport = c.all[0]
        protocol.dataReceived(
            b"EHLO c.example\r\nMAIL FROM:<a@remote.example>\r\n"
            b"RCPT TO:<alice@example.org>\r\nDATA\r\npartial\r\n"
        )
        c.open(4)
        self.assertTrue(c.factory.stressed)
        c.clock.advance(STRESS_IDLE_LIMIT + 0.1)
        self.assertEqual(lastReply(transport)[:9], "421 4.4.2")
        self.assertTrue(c.server.store.started[0].aborted)

    def test_shorterLimitKept(self) -> None:
        """
        A command timeout already under 10 seconds stays as it is.
        """
        c = Connections(maxConnections=5, commandTimeout=3.0)
        c.open(4)
        c.clock.advance(3.1)
        self.assertEqual(c.stillOpen(), [])

    def test_usualLimitsBack(self) -> None:
        """
        When stress ends, the sessions left get the usual idle limit
        again: no longer closed after 10 seconds.
        """
        c = Connections(maxConnections=5)
        c.open(4)
        protocol, transport = c.all[-1]
        transport.loseConnection()
        protocol.connectionLost(None)
        self.assertFalse(c.factory.stressed)
        c.clock.advance(STRESS_IDLE_LIMIT * 5)
        self.assertEqual(len(c.stillOpen()), 4)
        c.clock.advance(300)
        self.assertEqual(c.stillOpen(), [])

    def test_sessionWaitingOnUsNotTimed(self) -> None:
        """
        A session waiting for a validator's verdict is not idle: stress
        does not start its timer.
        """
        c = Connections(maxConnections=5)
        c.server.validator.verdicts["alice@example.org"] = lambda: Deferred()
        protocol, transport = c.all[0]
        protocol.dataReceived(
            b"EHLO c.example\r\nMAIL FROM:<a@remote.example>\r\nRCPT TO:<alice@example.org>\r\n"
        )
        c.open(4)
        c.clock.advance(STRESS_IDLE_LIMIT + 0.1)
        self.assertFalse(transport.disconnecting)


class MakeRoomTests(SynchronousTestCase):
    """
    A connection that would pass C{--max-connections} gets in by closing
    the session idle the longest.
    """

    def test_longestIdleClosed(self) -> None:
        """
        With every slot taken, a new connection is greeted with 220; the
        session whose client has sent nothing for the longest gets
        421 4.7.0 and is closed; the others stay.
        """
        c = Connections(maxConnections=3)
        c.open(2)
        # The first client spoke last: the second is idle the longest.
        c.clock.advance(1)
        c.all[0][0].dataReceived(b"NOOP\r\n")
        with capturedLogs() as events:
            [(_, newcomer)] = c.open(1)
        self.assertEqual(lastReply(newcomer)[:3], "220")
        victim = c.all[1][1]
        self.assertEqual(lastReply(victim)[:9], "421 4.7.0")
        self.assertIn("closing idle session", lastReply(victim))
        self.assertTrue(victim.disconnecting)
        self.assertFalse(c.all[0][1].disconnecting)
        self.assertFalse(c.all[2][1].disconnecting)
        texts = [formatEvent(e) for e in events]
        self.assertTrue(
            any("closing the session of [127.0.0.1]:40000, idle 3 s, to make room" in t for t in texts),
            texts,
        )

    def test_slotCountedOnce(self) -> None:
        """
        The closed session's slot goes to the new connection at once and
        is not given back twice when that session's connection ends.
        """
        c = Connections(maxConnections=3)
        c.open(3)
        self.assertEqual(c.factory.connections, 3)
        c.endClosed()
        self.assertEqual(c.factory.connections, 3)
        self.assertEqual(c.factory.perHost["127.0.0.1"], 3)
        self.assertEqual(len(c.factory.sessions), 3)
        for protocol, transport in c.stillOpen():
            transport.loseConnection()
            protocol.connectionLost(None)
        self.assertEqual(c.factory.connections, 0)
        self.assertEqual(dict(c.factory.perHost), {})
        self.assertEqual(c.factory.sessions, set())

    def test_eachNewcomerClosesTheNextIdlest(self) -> None:
        """
        New connections close the idle sessions in order of idleness,
        oldest first, never one already closing.
        """
        c = Connections(maxConnections=3)
        c.open(2)
        c.open(3)
        closed = [i for i, (_, t) in enumerate(c.all) if t.disconnecting]
        self.assertEqual(closed, [0, 1, 2])
        self.assertEqual(len(c.stillOpen()), 3)

    def test_refusedWhenNoneIdle(self) -> None:
        """
        When every session waits on the server (none is idle), a new
        connection is refused with 421 4.7.0, as without stress.
        """
        c = Connections(maxConnections=2)
        c.server.validator.verdicts["alice@example.org"] = lambda: Deferred()
        c.open(1)
        for protocol, _ in c.all:
            protocol.dataReceived(
                b"EHLO c.example\r\nMAIL FROM:<a@remote.example>\r\nRCPT TO:<alice@example.org>\r\n"
            )
        [(_, transport)] = c.open(1)
        self.assertEqual(lastReply(transport)[:9], "421 4.7.0")
        self.assertIn("too many connections", lastReply(transport))
        self.assertEqual([t.disconnecting for _, t in c.all], [False, False, True])

    def test_messageUnderWayThrownAway(self) -> None:
        """
        A session closed to make room inside DATA leaves nothing stored:
        its message is thrown away when its connection ends.
        """
        c = Connections(maxConnections=1)
        protocol, transport = c.all[0]
        protocol.dataReceived(
            b"EHLO c.example\r\nMAIL FROM:<a@remote.example>\r\n"
            b"RCPT TO:<alice@example.org>\r\nDATA\r\npartial\r\n"
        )
        c.open(1)
        self.assertEqual(lastReply(transport)[:9], "421 4.7.0")
        c.endClosed()
        self.assertTrue(c.server.store.started[0].aborted)

    def test_closedSessionReadsNothingMore(self) -> None:
        """
        What the closed session's client sends afterwards is not acted on.
        """
        c = Connections(maxConnections=1)
        protocol, transport = c.all[0]
        c.open(1)
        transport.clear()
        protocol.dataReceived(b"EHLO c.example\r\nMAIL FROM:<a@remote.example>\r\n")
        self.assertEqual(transport.value(), b"")
