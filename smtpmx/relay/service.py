"""
The relay service: it takes messages from the durable queue to their next
hops, one transaction per (message, next hop) carrying every recipient
that shares it, retries on the schedule, and bounces what fails for good
(docs/relay.rst).

Recipients queued with C{via} a delivery backend (a local domain
delivered with C{--delivery NAME:ARG}, docs/plugins.rst) need no DNS: they
are grouped by backend and handed to its C{deliver} at once -- the
built-in C{lmtp:ENDPOINT} backend makes one LMTP transaction (RFC 2033)
through this service's C{deliver} and connection cache -- and their
results are recorded as a relay's are.

Connections are reused: the service owns a L{SessionPool} (the connection
cache, which also caps simultaneous transactions) that C{deliver} takes
idle sessions from and gives them back to; stopping the service closes
them.

All I/O goes through injected pieces: the queue's blocking methods run in
the thread runner, DNS through the resolver, SMTP through C{deliver}
(L{smtpmx.relay.transaction.deliver}).  Each attempt returns what it found
for each recipient (L{RecipientAttempt}) and the state of each recipient is
saved after every attempt, so a crash at any moment loses nothing and
delivers nothing twice that was recorded as done.

At most C{--relay-active-limit} messages are held in memory and attempted
at once; the others wait on disk and are taken in as attempts end
(L{smtpmx.relay.backlog.Backlog}), so that memory stays bounded whatever
the queue's length.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Callable, Mapping, Optional

from twisted.application.service import Service
from twisted.internet.defer import Deferred, gatherResults, maybeDeferred, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from smtpmx.access import Access
from smtpmx.backendlookup import CourierRequest, makeBackends
from smtpmx.config import Config
from smtpmx.relay.backlog import Backlog
from smtpmx.relay.bouncing import Bouncer
from smtpmx.relay.groupcommit import StateCommits
from smtpmx.relay.nexthop import NextHop, PermanentFailure, TemporaryFailure, resolveNextHops
from smtpmx.relay.pool import DownDestinations, SessionPool
from smtpmx.relay.queue import Queue, dueTime
from smtpmx.relay.queueformat import BOUNCED, DELIVERED, PENDING, QueuedMessage, QueuedRecipient
from smtpmx.relay.queuefigures import QueueFigures
from smtpmx.relay.retry import isExpired, nextAttemptDelay
from smtpmx.relay.request import (
    DeliveryRequest,
    DeliveryResult,
    Disposition,
    RecipientAttempt,
)

# How often the queue is looked at for due messages and flush requests,
# and how often it is counted for the metrics.
POLL_INTERVAL = 1.0
# IDs of messages found due but not taken in for lack of room, kept for
# the next look (per message of --relay-active-limit): the scans of a long
# backlog are spread over this many messages each.
CANDIDATES_PER_LIMIT = 4

# The word for a disposition in the log line of a recipient, as Postfix
# logs it.
_LOGGED_STATUS = {
    Disposition.DELIVERED: "sent",
    Disposition.PERMANENT: "bounced",
    Disposition.TEMPORARY: "deferred",
}


class RelayService(Service):
    """
    Drives delivery of the relay queue.

    @ivar inFlight: IDs of the messages being attempted now.
    @ivar pool: the connection cache given to C{deliver}.
    @ivar backends: delivery backends by specification (C{NAME:ARG});
        L{None} for C{maildir}.
    @ivar unusableBackends: specifications met in the queue that could not
        be made, with why.
    @ivar onAttempt: told of what every attempt found for each recipient
        (a L{RecipientAttempt}) as it is recorded, for L{smtpmx.metrics};
        L{None} for no one.
    """

    log = Logger()

    def __init__(
        self,
        config: Config,
        queue: Queue,
        runBlocking: Callable[..., Deferred],
        clock,
        resolver,
        deliver: Callable[..., Deferred[DeliveryResult]],
        newQueueId: Callable[[], str],
        reactor=None,
        backends: Optional[Mapping[str, object]] = None,
        recover: bool = True,
    ) -> None:
        """
        @param config: the configuration.
        @param queue: the relay queue.
        @param runBlocking: runs a blocking callable off the reactor thread.
        @param clock: the clock for the schedule (L{IReactorTime}).
        @param resolver: the DNS resolver for MX lookups.
        @param deliver: L{smtpmx.relay.transaction.deliver} or a fake: called
            with a L{DeliveryRequest} and C{reactor}, C{runBlocking} and
            C{pool} keywords, fires with a L{DeliveryResult}.
        @param newQueueId: makes the queue ID of a bounce.
        @param reactor: the reactor to connect with; the clock by default.
        @param backends: the delivery backends already made, by
            specification (L{smtpmx.backendlookup.configuredBackends});
            any other a queued recipient's C{via} names is made from the
            plugins on first use.
        @param recover: whether starting recovers the queue (L{Queue.recover}),
            which only the one process that starts first may do; with
            C{--workers} their parent has done it, and the relay worker only
            lists the queue, since the other workers may be writing to it.
        """
        self.config = config
        self.queue = queue
        self.runBlocking = runBlocking
        self.clock = clock
        self.resolver = resolver
        self.deliver = deliver
        self.newQueueId = newQueueId
        self.reactor = reactor if reactor is not None else clock
        self.backends: dict[str, object] = dict(backends or {})
        self.unusableBackends: dict[str, str] = {}
        self.pool = SessionPool(self.reactor)
        self.commits = StateCommits(queue, runBlocking)
        self.access = Access.fromConfig(config)
        self.bouncer = Bouncer(config, queue, runBlocking, clock, newQueueId, self.access, self.queued, self.log)
        self.messages: dict[str, QueuedMessage] = {}
        self.inFlight: set[str] = set()
        self.onAttempt: Optional[Callable[[RecipientAttempt], None]] = None
        self.activeLimit = config.relayActiveLimit
        self.figures = QueueFigures()
        self.backlog = Backlog(queue, runBlocking, clock, CANDIDATES_PER_LIMIT * self.activeLimit)
        self.down = DownDestinations(clock)
        self.recover = recover
        self._loop: Optional[LoopingCall] = None
        self._polling = False

    # Life cycle.

    def startService(self) -> None:
        """
        Recover the queue (or, without C{recover}, only count it), then
        poll it: the messages waiting are taken in from disk at the first
        poll, at most L{activeLimit} at a time.

        Recovery blocks, on purpose: it runs as the reactor starts, before
        any connection is accepted, and it must, since L{Queue.recover}
        removes unfinished files that would otherwise belong to messages
        being received.  It runs after twistd has dropped privileges, so
        the queue belongs to the user the server runs as.
        """
        Service.startService(self)
        if self.pool.closed:
            self.pool = SessionPool(self.reactor)
        self.figures.size = len(self.queue.recover()) if self.recover else len(self.queue.ids())
        self.backlog.noteDue(-math.inf)
        self.log.info("relay queue: {n} message(s) waiting", n=self.figures.size)
        self._loop = LoopingCall(self.poll)
        self._loop.clock = self.clock
        self._loop.start(POLL_INTERVAL, now=False)

    def stopService(self) -> Deferred:
        """
        Stop polling and close the idle cached connections; attempts under
        way finish on their own (their connections are then closed, not
        cached).

        @return: a L{Deferred} that fires once the idle connections are
            closed.
        """
        Service.stopService(self)
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        return self.pool.close()

    def queued(self, message: QueuedMessage) -> None:
        """
        A message was just committed to the queue: try it at once, unless
        L{activeLimit} messages are held already (it then waits on disk
        and is taken in when there is room, oldest due first).
        """
        self.figures.queued(message.created)
        if message.id in self.messages:
            return
        if len(self.messages) < self.activeLimit and dueTime(message) <= self.clock.seconds():
            self._hold(message)
            return
        self.backlog.noteDue(dueTime(message))

    def wake(self) -> None:
        """
        Messages may have been queued or changed on disk by someone else
        (another process): look at the queue now.
        """
        self.backlog.noteDue(-math.inf)
        self._lookAtDisk()

    def heardOf(self, messageId: str) -> None:
        """
        Someone else (another worker) queued C{messageId}: take it in from
        disk now, unless it is held.  It is read through the backlog, which
        drops what it read of a message whose attempt ended meanwhile, so
        that an older state is never attempted again.
        """
        if messageId in self.messages or messageId in self.inFlight:
            return
        self.backlog.hear(messageId)
        self._lookAtDisk()

    def queueStatistics(self) -> tuple[int, Optional[float]]:
        """
        How many messages the queue holds and when the oldest was queued
        (L{None} when none), for L{smtpmx.metrics} (L{QueueFigures}).
        """
        return self.figures.size, self.figures.oldest

    # Scheduling.

    def poll(self) -> Deferred:
        """
        Honour a flush request, retry what is held and due, and take in
        the messages due on disk for which there is room.
        """
        if self._polling:
            return succeed(None)
        self._polling = True
        return Deferred.fromCoroutine(self._poll())

    async def _poll(self) -> None:
        """
        The work of L{poll}; a failure is logged, never raised.
        """
        try:
            now = self.clock.seconds()
            if await self.runBlocking(self.queue.takeFlushRequest):
                self.log.info("relay queue flush requested")
                # smtpmx-queue flush made every pending recipient due on
                # disk; those held are made due here.
                for message in self.messages.values():
                    for r in message.pending():
                        r.nextAttempt = min(r.nextAttempt, now)
                self.backlog.flushed()
                self.down.destinations.clear()
            self.down.prune()
            for message in list(self.messages.values()):
                if message.id not in self.inFlight and dueTime(message) <= now:
                    self._attempt(message)
            self.backlog.tick(now)
            self._lookAtDisk()
            await self.figures.count(now, lambda: self.runBlocking(self.queue.statistics))
        except Exception:
            self.log.failure("relay queue poll failed")
        finally:
            self._polling = False

    def _lookAtDisk(self) -> None:
        """
        Take in the messages due on disk that there is room for
        (L{Backlog.look}), if some may be due.
        """
        d = self.backlog.look(self.activeLimit - len(self.messages), self.messages)
        if d is not None:
            d.addCallback(self._takeIn)

    def _takeIn(self, messages: list[QueuedMessage]) -> None:
        """
        Hold and attempt messages a look found due, but none held already
        and no more than there is room for.
        """
        for message in messages:
            if message.id in self.messages:
                continue
            if len(self.messages) >= self.activeLimit:
                self.backlog.noteDue(dueTime(message))
                break
            self._hold(message)
        if self.backlog.candidates:
            # Heard of meanwhile.
            self._lookAtDisk()

    def _hold(self, message: QueuedMessage) -> None:
        """
        Hold C{message} in memory and attempt it.
        """
        self.messages[message.id] = message
        self._attempt(message)

    def _release(self, message: QueuedMessage, stored: bool) -> None:
        """
        An attempt is over.  A message whose state is stored is no longer
        held: it waits on disk for its next attempt (or is gone); one
        whose state could not be stored stays held, to be attempted (and
        stored) again when due.  Then there may be room for messages due
        on disk.
        """
        if stored:
            self.messages.pop(message.id, None)
            self.backlog.settled(message.id)
            if message.pending():
                self.backlog.noteDue(dueTime(message))
        room = self.activeLimit - len(self.messages)
        if room >= max(1, self.activeLimit // 4) or not self.inFlight:
            self._lookAtDisk()

    # One attempt of one message.

    def _attempt(self, message: QueuedMessage) -> Deferred:
        """
        Attempt C{message} unless an attempt of it is already under way.
        """
        if message.id in self.inFlight:
            return succeed(None)
        self.inFlight.add(message.id)
        return Deferred.fromCoroutine(self._attemptInFlight(message))

    async def _attemptInFlight(self, message: QueuedMessage) -> None:
        """
        Attempt C{message}, which is in flight until done; a failure is
        logged, never raised.
        """
        stored = False
        try:
            stored = await self._attemptMessage(message)
        except Exception:
            self.log.failure("{id}: relay attempt failed", id=message.id)
        finally:
            self.inFlight.discard(message.id)
            self._release(message, stored)

    async def _attemptMessage(self, message: QueuedMessage) -> bool:
        """
        Attempt every due recipient of C{message}, one transaction per
        next hop (recipients of different domains whose next hops are the
        same share it; docs/relay.rst), bounce what expired or failed for
        good, then settle its state.

        Each lookup and each transaction returns what it found for its
        recipients; they are recorded here, as they come.
        """
        # The enhanced status of every recipient bounced in this attempt,
        # by address, for the bounce.
        bounced: dict[str, str] = {}

        def record(found: list[tuple[QueuedRecipient, RecipientAttempt]]) -> None:
            """
            Apply what a lookup or a transaction found, now.
            """
            now = self.clock.seconds()
            for r, attempt in found:
                status = self._record(r, attempt, now)
                if self.onAttempt is not None:
                    self.onAttempt(attempt)
                if status is not None:
                    bounced[r.address] = status

        now = self.clock.seconds()
        due = [r for r in message.pending() if r.nextAttempt <= now]
        if isExpired(message.created, now, self.config.maxQueueAge):
            record([
                (r, RecipientAttempt(Disposition.PERMANENT, r.lastReply or "message expired in the queue",
                                     "4.4.7", r.remoteMta, expired=True))
                for r in message.pending()
            ])
            due = []
        byDomain: dict[str, list[QueuedRecipient]] = defaultdict(list)
        groups: dict[tuple, tuple[list[NextHop], list[QueuedRecipient]]] = {}
        couriers: dict[str, list[QueuedRecipient]] = defaultdict(list)
        for r in due:
            if r.via is not None:
                # A delivery backend's recipients: one hand-over per backend.
                couriers[r.via].append(r)
            else:
                byDomain[r.address.rpartition("@")[2].lower()].append(r)

        async def lookUp(domain: str, recipients: list[QueuedRecipient]) -> Optional[list[NextHop]]:
            """
            The next hops of one domain, or L{None} once the failure to find
            them is recorded for its recipients.
            """
            found = await self._resolve(message, domain, recipients)
            if isinstance(found, RecipientAttempt):
                record([(r, found) for r in recipients])
                return None
            return found

        domains = list(byDomain.items())
        resolved = await _gather([lookUp(domain, rs) for domain, rs in domains])
        for hops, (domain, recipients) in zip(resolved, domains):
            if hops is None:
                continue
            key = tuple((h.host, h.port, h.name) for h in hops)
            groups.setdefault(key, (hops, []))[1].extend(recipients)

        async def transact(hops: list[NextHop], recipients: list[QueuedRecipient]) -> None:
            """
            One transaction for the recipients sharing C{hops}, recorded.
            """
            record(await self._tryHops(message, recipients, hops))

        async def carry(backend: str, recipients: list[QueuedRecipient]) -> None:
            """
            One hand-over to a delivery backend, recorded.
            """
            record(await self._handOver(message, recipients, backend))

        await _gather(
            [transact(hops, rs) for hops, rs in groups.values()]
            + [carry(backend, rs) for backend, rs in couriers.items()]
        )
        await self._settle(message, bounced)
        return True

    async def _resolve(
        self, message: QueuedMessage, domain: str, recipients: list[QueuedRecipient]
    ) -> list[NextHop] | RecipientAttempt:
        """
        The next hops of one domain, or, when they cannot be found, the
        failure to record for each of its recipients.
        """
        try:
            return await resolveNextHops(domain, self.config.routes, self.resolver, self.config.relayPort)
        except PermanentFailure as e:
            found = RecipientAttempt(Disposition.PERMANENT, f"554 5.4.4 {e}", "5.4.4")
        except TemporaryFailure as e:
            found = RecipientAttempt(Disposition.TEMPORARY, f"451 4.4.3 {e}", "4.4.3")
        except Exception:
            self.log.failure("{id}: resolving {domain} failed", id=message.id, domain=domain)
            found = RecipientAttempt(Disposition.TEMPORARY, "451 4.4.3 next hop lookup failed", "4.4.3")
        self.log.info("{id}: to={to} relay=none, {reply}", id=message.id, to=_paths(recipients), reply=found.reply)
        return found

    async def _tryHops(
        self, message: QueuedMessage, recipients: list[QueuedRecipient], hops: list[NextHop]
    ) -> list[tuple[QueuedRecipient, RecipientAttempt]]:
        """
        One transaction with the first next hop that can be reached, in
        order, within the connection caps.

        @return: what it found for each recipient.
        """
        lastError = None
        for hop in hops:
            started = self.clock.seconds()
            request = DeliveryRequest(
                hop=hop,
                heloName=self.config.hostname,
                sender=message.sender,
                recipients=tuple(r.address for r in recipients),
                messageFile=self.queue.messagePath(message.id),
                size=message.size,
                tlsPolicy=self.config.relayTls,
                trustRoot=self.config.caCerts,
            )
            result: DeliveryResult = await self._transact(request)
            delay = self.clock.seconds() - started
            if not result.connected:
                self._logUnreachable(message, hop.label, result, delay)
                lastError = result.error
                continue
            return self._found(message, recipients, hop.label, hop.name, result, delay)
        reply = f"451 4.4.1 {lastError or 'no next hop could be reached'}"
        return [(r, RecipientAttempt(Disposition.TEMPORARY, reply, "4.4.1")) for r in recipients]

    async def _handOver(
        self, message: QueuedMessage, recipients: list[QueuedRecipient], backend: str
    ) -> list[tuple[QueuedRecipient, RecipientAttempt]]:
        """
        Hand recipients to the delivery backend C{backend} (C{NAME:ARG}):
        what its C{deliver} says of each is recorded as a relay's reply
        is; a backend that cannot be made or fails is a temporary failure.

        @return: what it found for each recipient.
        """
        started = self.clock.seconds()
        try:
            courier = await self._courier(backend)
            found = await maybeDeferred(courier.deliver, CourierRequest(
                backend=backend,
                messageFile=self.queue.messagePath(message.id),
                size=message.size,
                sender=message.sender,
                recipients=tuple(r.address for r in recipients),
                heloName=self.config.hostname,
                reactor=self.reactor,
                runBlocking=self.runBlocking,
                transact=self._transact,
            ))
        except Exception as e:
            self.log.failure("{id}: delivery backend {backend} failed", id=message.id, backend=backend)
            found = DeliveryResult(connected=False, error=f"delivery backend failed: {e}")
        result = found if isinstance(found, DeliveryResult) else DeliveryResult(recipients=dict(found))
        delay = self.clock.seconds() - started
        if not result.connected:
            self._logUnreachable(message, backend, result, delay)
            reply = f"451 4.4.1 {result.error or 'delivery backend unreachable'}"
            return [(r, RecipientAttempt(Disposition.TEMPORARY, reply, "4.4.1")) for r in recipients]
        return self._found(message, recipients, backend, result.remoteMta or None, result, delay)

    async def _courier(self, backend: str):
        """
        The delivery backend of a specification, made from the plugins
        the first time one is asked for that is not configured (a queue
        written under another configuration).  Looking plugins up imports
        modules and reads the disk, so it runs in the thread pool, once per
        specification: one that cannot be made is remembered, and its
        recipients wait for their expiry rather than a scan per retry.

        @raise ValueError: it is C{maildir}, which is no courier, or it
            could not be made.
        """
        if backend in self.unusableBackends:
            raise ValueError(self.unusableBackends[backend])
        if backend not in self.backends:
            try:
                made = await self.runBlocking(makeBackends, [backend])
            except (LookupError, ValueError) as e:
                self.unusableBackends[backend] = f"cannot make backend {backend}: {e}"
                raise ValueError(self.unusableBackends[backend]) from None
            self.backends.update(made)
        courier = self.backends[backend]
        if courier is None:
            raise ValueError(f"{backend} is no courier")
        return courier

    def _transact(self, request: DeliveryRequest) -> Deferred[DeliveryResult]:
        """
        One SMTP or LMTP transaction with this service's C{deliver}, within
        its connection cache and caps: what a courier such as C{lmtp} uses.
        """
        hop = request.hop
        destination = (hop.host, hop.port) if hop.endpoint is None else (hop.endpoint, 0)
        return self.pool.limited(destination, self._deliverUnlessDown, destination, request)

    def _deliverUnlessDown(self, destination: tuple, request: DeliveryRequest) -> Deferred[DeliveryResult]:
        """
        The transaction, unless the destination could not be reached a
        moment ago (L{DownDestinations}): the attempts of other
        destinations get their turn within the limit on attempts.
        """
        why = self.down.why(destination)
        if why is not None:
            return succeed(DeliveryResult(connected=False, error=why, remoteMta=request.hop.name))
        d = self.deliver(request, reactor=self.reactor, runBlocking=self.runBlocking, pool=self.pool)
        return d.addCallback(self.down.noted, destination)

    def _logUnreachable(self, message: QueuedMessage, label: str, result: DeliveryResult, delay: float) -> None:
        """
        Log a next hop or backend that never took the message.
        """
        self.log.info(
            "{id}: relay={relay} unreachable ({why}), delay={delay:.1f}",
            id=message.id, relay=label,
            why=result.error or "connection failed", delay=delay,
        )

    def _found(
        self, message: QueuedMessage, recipients: list[QueuedRecipient], label: str,
        remoteMta: Optional[str], result: DeliveryResult, delay: float,
    ) -> list[tuple[QueuedRecipient, RecipientAttempt]]:
        """
        What a transaction or hand-over that took the message found for
        each recipient, each logged; a recipient without a result is a
        temporary failure.
        """
        found = []
        for r in recipients:
            rr = result.recipients.get(r.address)
            if rr is None:
                attempt = RecipientAttempt(
                    Disposition.TEMPORARY, "451 4.4.0 no reply for this recipient", "4.4.0", remoteMta
                )
            else:
                attempt = RecipientAttempt(rr.disposition, f"{rr.code} {rr.text}".strip(), rr.status, remoteMta)
            found.append((r, attempt))
            self.log.info(
                "{id}: to=<{to}> relay={relay} conn_use={use} delay={delay:.1f} tls={tls} "
                "verified={verified} status={status} ({reply})",
                id=message.id, to=r.address, relay=label,
                use=result.connectionUse, delay=delay, tls=result.tls or "none", verified=result.verified,
                status=_LOGGED_STATUS[attempt.disposition], reply=attempt.reply,
            )
        return found

    def _record(self, r: QueuedRecipient, attempt: RecipientAttempt, now: float) -> Optional[str]:
        """
        Apply what an attempt found to one recipient's in-memory state.

        @return: the enhanced status if the recipient is now bounced, else
            L{None}.
        """
        r.lastReply = attempt.reply
        r.remoteMta = attempt.remoteMta
        if attempt.disposition is Disposition.DELIVERED:
            r.state = DELIVERED
            r.attempts += 1
        elif attempt.disposition is Disposition.PERMANENT:
            r.state = BOUNCED
            if not attempt.expired:
                r.attempts += 1
            return attempt.status
        else:
            r.attempts += 1
            r.nextAttempt = now + nextAttemptDelay(r.attempts, self.config.retrySchedule)
        return None

    async def _settle(self, message: QueuedMessage, statuses: dict[str, str]) -> None:
        """
        Queue or file the bounce for recipients that failed for good, then
        record the state (L{_store}).  The bounce comes first: a crash in
        between may send it twice, but never loses it.

        @param statuses: the enhanced status of each recipient bounced in
            this attempt, by address.
        """
        newlyBounced = [r for r in message.recipients if r.address in statuses]
        if newlyBounced:
            try:
                await self.bouncer.bounce(message, newlyBounced, statuses)
            except Exception:
                # Never lose a bounce: the recipients stay pending, to be
                # tried (and, failing again, bounced) later.
                self.log.failure("{id}: cannot bounce; the recipients stay queued", id=message.id)
                now = self.clock.seconds()
                for r in newlyBounced:
                    r.state = PENDING
                    r.nextAttempt = now + nextAttemptDelay(max(r.attempts, 1), self.config.retrySchedule)
        await self._store(message)

    async def _store(self, message: QueuedMessage) -> None:
        """
        Record the state on disk: a message with a recipient still pending
        has its state saved; one that is done is removed at once (saving
        its final state first would be an fsync for nothing: a crash before
        the removal only means the last attempt is made again).  Either is
        durable before this returns, made together with the changes of
        other attempts ending meanwhile (L{StateCommits}).
        """
        if not message.pending():
            if await self.commits.remove(message.id):
                self.figures.left()
                self.log.info("{id}: removed from the relay queue", id=message.id)
            return
        if not await self.commits.save(message):
            # Deleted by the operator meanwhile.
            self.figures.left()

async def _gather(coroutines: list) -> list:
    """
    Run coroutines side by side; their results in order.  The first
    failure is raised once all are done (L{gatherResults} with
    C{consumeErrors}).  One coroutine alone (one domain, one next hop: the
    common case) is simply awaited.
    """
    if not coroutines:
        return []
    if len(coroutines) == 1:
        return [await coroutines[0]]
    return await gatherResults([Deferred.fromCoroutine(c) for c in coroutines], consumeErrors=True)


def _paths(recipients: list[QueuedRecipient]) -> str:
    """
    Recipients as paths, for a log line.
    """
    return ",".join(f"<{r.address}>" for r in recipients)
