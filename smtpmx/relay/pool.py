"""
The relay client's connection cache (docs/relay.rst): SMTP sessions with
next hops that outlive one transaction, and the caps on connections.

A session is kept idle after a transaction that ran to the reply to its
data, and the next transaction for the same next hop takes it over after
an RSET (RFC 5321 section 4.1.1.5) instead of opening a connection, as
Postfix's connection cache does: a queue of messages for one destination
then costs a few connections instead of one each.  An idle session is
closed (QUIT, RFC 5321 section 4.1.1.10) after L{IDLE_TIMEOUT} seconds,
after L{MAX_TRANSACTIONS_PER_CONNECTION} transactions, and when the pool
is closed.

The pool also caps simultaneous transactions: L{MAX_CONNECTIONS} in all,
L{MAX_CONNECTIONS_PER_DESTINATION} to one destination (L{SessionPool.limited}).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Callable, Optional

from twisted.internet.defer import Deferred, DeferredList, DeferredSemaphore, succeed
from twisted.logger import Logger

from smtpmx.relay.protocol import ClientProtocol, SessionError

_log = Logger()

# How long an idle session is kept, in seconds (Postfix's
# smtp_connection_cache_time_limit is 2 s, its reuse time limit 300 s), how
# many transactions one connection carries at most
# (smtp_connection_reuse_count_limit), how many idle sessions are kept per
# next hop, and how long closing the pool waits for the reply to QUIT.
IDLE_TIMEOUT = 5.0
MAX_TRANSACTIONS_PER_CONNECTION = 100
MAX_IDLE_PER_DESTINATION = 10
CLOSE_QUIT_TIMEOUT = 5.0

# Simultaneous transactions in all, and to one destination (address and
# port).
MAX_CONNECTIONS = 50
MAX_CONNECTIONS_PER_DESTINATION = 10

# Seconds a destination that could not be reached is not tried again.
DOWN_TIME = 10.0


class PooledSession:
    """
    An SMTP session fit for transactions: the connection after the
    greeting, EHLO and STARTTLS, with what they established.

    @ivar key: the L{SessionPool} key it belongs under: sessions are shared
        only between transactions that would have set them up the same way.
    @ivar protocol: its L{ClientProtocol}.
    @ivar extensions: the extensions the next hop offered (after STARTTLS).
    @ivar tls: the TLS version and cipher, or L{None} in clear.
    @ivar verified: whether the certificate was verified.
    @ivar quitTimeout: seconds to wait for the reply to QUIT.
    @ivar transactions: transactions finished on it so far.
    @ivar timer: the idle timer while it waits in the pool.
    """

    def __init__(self, key: tuple, protocol: ClientProtocol, extensions: dict[str, str],
                 tls: Optional[str], verified: bool, quitTimeout: float) -> None:
        """
        A session that has carried no transaction yet; the arguments are
        the attributes of the same names.
        """
        self.key = key
        self.protocol = protocol
        self.extensions = extensions
        self.tls = tls
        self.verified = verified
        self.quitTimeout = quitTimeout
        self.transactions = 0
        self.timer = None


class SessionPool:
    """
    The connection cache of the relay client: idle SMTP sessions, by next
    hop, that a transaction takes over instead of opening a connection;
    and the caps on simultaneous transactions.

    A session is kept only after a transaction that ran to the reply to
    its data (and no C{421}), for C{idleTimeout} seconds and
    C{maxTransactions} transactions at most; then, on any error, and when
    the pool is closed, it is sent QUIT and closed.

    @ivar closed: whether L{close} was called; sessions given back after
        that are closed at once.
    """

    def __init__(
        self,
        reactor,
        idleTimeout: float = IDLE_TIMEOUT,
        maxTransactions: int = MAX_TRANSACTIONS_PER_CONNECTION,
        maxIdle: int = MAX_IDLE_PER_DESTINATION,
        maxConnections: int = MAX_CONNECTIONS,
        maxPerDestination: int = MAX_CONNECTIONS_PER_DESTINATION,
    ) -> None:
        """
        @param reactor: the clock for the idle timers (L{IReactorTime}).
        @param idleTimeout: seconds an idle session is kept.
        @param maxTransactions: transactions one connection carries at most.
        @param maxIdle: idle sessions kept for one next hop at most.
        @param maxConnections: simultaneous transactions in all.
        @param maxPerDestination: simultaneous transactions to one
            destination.
        """
        self._reactor = reactor
        self.idleTimeout = idleTimeout
        self.maxTransactions = maxTransactions
        self.maxIdle = maxIdle
        self.closed = False
        self._idle: dict[tuple, list[PooledSession]] = {}
        self._closing: set[Deferred] = set()
        self._all = DeferredSemaphore(maxConnections)
        self._perDestination: dict[tuple[str, int], DeferredSemaphore] = defaultdict(
            lambda: DeferredSemaphore(maxPerDestination)
        )

    # The caps.

    def limited(self, destination: tuple[str, int], f: Callable[..., Any], *args: Any, **kwargs: Any) -> Deferred:
        """
        Run C{f} (a transaction) within the caps: once a slot of
        C{destination} and one of the global slots are free.

        The destination's slot is taken first: waiting for a busy
        destination must not hold one of the global slots.

        @param destination: the next hop's address and port.
        @return: a L{Deferred} of C{f}'s result.
        """
        return self._perDestination[destination].run(self._all.run, f, *args, **kwargs)

    # Idle sessions.

    def idleCount(self, key: Optional[tuple] = None) -> int:
        """
        How many sessions wait in the pool, for C{key} or in all.
        """
        if key is not None:
            return len(self._idle.get(key, ()))
        return sum(map(len, self._idle.values()))

    def take(self, key: tuple) -> Optional[PooledSession]:
        """
        The most recently used idle session for C{key} that is still in
        step, out of the pool, or L{None}.  Dead ones met on the way are
        closed.
        """
        idle = self._idle.get(key)
        while idle:
            session = idle.pop()
            self._stopTimer(session)
            if session.protocol.inStep:
                if not idle:
                    del self._idle[key]
                return session
            self.discard(session)
        self._idle.pop(key, None)
        return None

    async def takeOver(self, key: tuple, timeout: float, label: str) -> Optional[PooledSession]:
        """
        An idle session for C{key} reset for a new transaction: taken out
        of the pool and sent RSET (L{reset}).  A session that is dead or
        does not answer RSET with 250 is closed and the next one tried.

        @param timeout: seconds to wait for the reply to RSET.
        @param label: the next hop, for the log.
        @return: the session, or L{None} when none would do.
        """
        while True:
            session = self.take(key)
            if session is None:
                return None
            if await self.reset(session, timeout, label):
                return session

    async def reset(self, session: PooledSession, timeout: float, label: str) -> bool:
        """
        Send RSET (RFC 5321 section 4.1.1.5) on a session taken out of the
        pool and wait for its reply; a session that is dead or does not
        answer 250 is closed (L{discard}).

        @param timeout: seconds to wait for the reply.
        @param label: the next hop, for the log.
        @return: whether the session is fit for a transaction.
        """
        protocol = session.protocol
        try:
            protocol.send("RSET")
            reply = await protocol.expect(timeout, "RSET")
        except SessionError as e:
            _log.debug("{hop}: cached session lost ({why}); not reused", hop=label, why=str(e))
            self.discard(session)
            return False
        if reply.code != 250:
            _log.debug("{hop}: RSET refused ({reply}); cached session not reused", hop=label, reply=str(reply))
            self.discard(session)
            return False
        return True

    def release(self, session: PooledSession, reusable: bool) -> None:
        """
        Give back a session after a transaction: kept idle if C{reusable}
        and within the limits, else sent QUIT and closed.  From its first
        release on, the pool forgets an idle session whose connection is
        lost.
        """
        if session.transactions == 0:
            session.protocol.whenClosed().addCallback(lambda _: self._forget(session))
        session.transactions += 1
        idle = self._idle.get(session.key, [])
        if (
            self.closed
            or not reusable
            or not session.protocol.inStep
            or session.transactions >= self.maxTransactions
            or len(idle) >= self.maxIdle
        ):
            self.discard(session)
            return
        session.timer = self._reactor.callLater(self.idleTimeout, self._expired, session)
        self._idle[session.key] = idle
        idle.append(session)

    def discard(self, session: PooledSession, quitTimeout: Optional[float] = None) -> Deferred[None]:
        """
        QUIT (if the connection is still in step) and close a session that
        is not in the pool; L{close} waits for it.

        @return: a L{Deferred} that fires once the connection is closed.
        """
        self._stopTimer(session)
        timeout = session.quitTimeout if quitTimeout is None else min(quitTimeout, session.quitTimeout)
        d = Deferred.fromCoroutine(quitAndClose(session.protocol, timeout))
        self._closing.add(d)

        def closed(result):
            """
            The connection is closed: L{close} need not wait for it.
            """
            self._closing.discard(d)
            return result

        d.addBoth(closed)
        return d

    def close(self) -> Deferred[None]:
        """
        Close every idle session (QUIT, then close) and keep none from now
        on.

        @return: a L{Deferred} that fires once every connection the pool
            was closing is closed.
        """
        self.closed = True
        idle, self._idle = self._idle, {}
        for sessions in idle.values():
            for session in sessions:
                self.discard(session, CLOSE_QUIT_TIMEOUT)
        if not self._closing:
            return succeed(None)
        return DeferredList(list(self._closing)).addCallback(lambda _: None)

    def _forget(self, session: PooledSession) -> None:
        """
        A connection closed: if it was idle, forget it.
        """
        idle = self._idle.get(session.key)
        if idle and session in idle:
            idle.remove(session)
            self._stopTimer(session)
            if not idle:
                del self._idle[session.key]

    def _expired(self, session: PooledSession) -> None:
        """
        A session was idle too long: out of the pool, QUIT and close.
        """
        session.timer = None
        idle = self._idle.get(session.key)
        if idle and session in idle:
            idle.remove(session)
            if not idle:
                del self._idle[session.key]
        self.discard(session)

    @staticmethod
    def _stopTimer(session: PooledSession) -> None:
        """
        Cancel a session's idle timer, if running.
        """
        if session.timer is not None and session.timer.active():
            session.timer.cancel()
        session.timer = None


async def quitAndClose(protocol: ClientProtocol, timeout: float) -> None:
    """
    Say QUIT on a connection still in step (no reply pending that nobody
    asked for), wait for the reply, and close it.
    """
    if protocol.inStep:
        protocol.send("QUIT")
        try:
            await protocol.expect(timeout, "QUIT")
        except SessionError:
            pass
    await protocol.close()



class DownDestinations:
    """
    The destinations that could not be reached a moment ago (refused,
    timed out, no greeting): for L{DOWN_TIME} seconds a transaction to one
    of them fails at once, with the same reason, without a connection.
    The transactions that waited for a connection slot behind those that
    found a next hop down (a connect timeout takes 30 s) then end at once
    rather than each waiting its own timeout.

    @ivar destinations: each destination found down, to until when and
        why.
    """

    def __init__(self, clock, downTime: float = DOWN_TIME) -> None:
        """
        @param clock: the clock (L{IReactorTime}).
        @param downTime: seconds a destination found down is not tried.
        """
        self.clock = clock
        self.downTime = downTime
        self.destinations: dict[tuple, tuple[float, str]] = {}

    def why(self, destination: tuple) -> Optional[str]:
        """
        Why C{destination} is not to be tried now, or L{None}.
        """
        down = self.destinations.get(destination)
        if down is None or down[0] <= self.clock.seconds():
            return None
        return down[1]

    def noted(self, result, destination: tuple):
        """
        Note a transaction's result (a L{smtpmx.relay.request.DeliveryResult}):
        a destination not reached is down, one reached is not.

        @return: C{result}.
        """
        if result.connected:
            self.destinations.pop(destination, None)
        else:
            self.destinations[destination] = (self.clock.seconds() + self.downTime, result.error or "unreachable")
        return result

    def prune(self) -> None:
        """
        Forget the destinations whose time is over.
        """
        now = self.clock.seconds()
        self.destinations = {k: v for k, v in self.destinations.items() if v[0] > now}
