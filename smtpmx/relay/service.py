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
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Callable, Mapping, Optional

from twisted.application.service import Service
from twisted.internet.defer import Deferred, gatherResults, maybeDeferred, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from smtpmx import headers
from smtpmx.access import Access
from smtpmx.address import AddressError, UnsafeMailbox, parseAddress
from smtpmx.backendlookup import CourierRequest, makeBackends
from smtpmx.bounce import BounceFailure, headersOf, makeBounce
from smtpmx.config import Config
from smtpmx.delivery.maildir import deliverBytes, mailboxPath
from smtpmx.envelope import CourierRecipient
from smtpmx.relay.nexthop import NextHop, PermanentFailure, TemporaryFailure, resolveNextHops
from smtpmx.relay.pool import SessionPool
from smtpmx.relay.queue import Queue
from smtpmx.relay.queueformat import BOUNCED, DELIVERED, PENDING, QueuedMessage, QueuedRecipient
from smtpmx.relay.retry import isExpired, nextAttemptDelay
from smtpmx.relay.request import DeliveryRequest, DeliveryResult, Disposition, RecipientResult

# How often the queue is looked at for due messages and flush requests.
POLL_INTERVAL = 1.0
# Bytes of a message read to quote its headers in a bounce.
HEADER_READ_LIMIT = 64 * 1024

# The word for a disposition in the log line of a recipient, as Postfix
# logs it.
_LOGGED_STATUS = {
    Disposition.DELIVERED: "sent",
    Disposition.PERMANENT: "bounced",
    Disposition.TEMPORARY: "deferred",
}


@dataclass(frozen=True)
class RecipientAttempt:
    """
    What one attempt found for one queued recipient: what its queue state
    records.

    @ivar disposition: delivered, or a temporary or permanent failure.
    @ivar reply: the reply, code first, as the queue and a bounce quote it.
    @ivar status: the enhanced status code (RFC 3463) for a bounce.
    @ivar remoteMta: the next hop that answered, if one did.
    @ivar expired: the recipient was given up because the message is too
        old in the queue (a permanent failure that was no attempt).
    """

    disposition: Disposition
    reply: str
    status: str = "4.0.0"
    remoteMta: Optional[str] = None
    expired: bool = False


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
        self.access = Access.fromConfig(config)
        self.messages: dict[str, QueuedMessage] = {}
        self.inFlight: set[str] = set()
        self.onAttempt: Optional[Callable[[RecipientAttempt], None]] = None
        self.recover = recover
        self._loop: Optional[LoopingCall] = None
        self._polling = False
        self._flushStarted = 0.0

    # Life cycle.

    def startService(self) -> None:
        """
        Recover the queue (or, without C{recover}, list it), then poll it.

        Recovery blocks, on purpose: it runs as the reactor starts, before
        any connection is accepted, and it must, since L{Queue.recover}
        removes unfinished files that would otherwise belong to messages
        being received.  It runs after twistd has dropped privileges, so
        the queue belongs to the user the server runs as.
        """
        Service.startService(self)
        if self.pool.closed:
            self.pool = SessionPool(self.reactor)
        for message in self.queue.recover() if self.recover else self.queue.list():
            self.messages[message.id] = message
        self.log.info("relay queue: {n} message(s) waiting", n=len(self.messages))
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
        A message was just committed to the queue: try it at once.
        """
        self.messages[message.id] = message
        self._attempt(message)

    # Scheduling.

    def poll(self) -> Deferred:
        """
        Honour a flush request, then attempt every message that is due.
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
            if await self.runBlocking(self.queue.takeFlushRequest):
                self.log.info("relay queue flush requested")
                self._flushStarted = self.clock.seconds()
                self._reload(await self.runBlocking(self.queue.list))
            now = self.clock.seconds()
            for message in list(self.messages.values()):
                if message.id in self.inFlight:
                    continue
                if any(r.nextAttempt <= now for r in message.pending()) or not message.pending():
                    self._attempt(message)
        except Exception:
            self.log.failure("relay queue poll failed")
        finally:
            self._polling = False

    def _reload(self, messages: list[QueuedMessage]) -> None:
        """
        After a flush: take the state on disk (C{smtpmx-queue flush} made
        every pending recipient due; the operator may have deleted
        messages), keeping messages in flight or queued since the read.
        """
        onDisk = {m.id: m for m in messages}
        for messageId in list(self.messages):
            if messageId not in onDisk and messageId not in self.inFlight:
                # Deleted, unless queued after the listing was read.
                if self.messages[messageId].created < self._flushStarted:
                    del self.messages[messageId]
        for messageId, message in onDisk.items():
            if messageId not in self.inFlight:
                self.messages[messageId] = message

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
        try:
            await self._attemptMessage(message)
        except Exception:
            self.log.failure("{id}: relay attempt failed", id=message.id)
        finally:
            self.inFlight.discard(message.id)

    async def _attemptMessage(self, message: QueuedMessage) -> None:
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
        return self.pool.limited(
            destination, self.deliver, request,
            reactor=self.reactor, runBlocking=self.runBlocking, pool=self.pool,
        )

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
                attempt = RecipientAttempt(rr.disposition, f"{rr.code} {rr.text}".strip(), _status(rr), remoteMta)
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
                await self._bounce(message, newlyBounced, statuses)
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
        the removal only means the last attempt is made again).
        """
        if not message.pending():
            self.messages.pop(message.id, None)
            if await self.runBlocking(self.queue.remove, message.id):
                self.log.info("{id}: removed from the relay queue", id=message.id)
            return
        if not await self.runBlocking(self.queue.save, message):
            # Deleted by the operator meanwhile.
            self.messages.pop(message.id, None)

    # Bounces.

    async def _bounce(self, message: QueuedMessage, failed: list[QueuedRecipient], statuses: dict[str, str]) -> None:
        """
        Tell the sender about recipients that failed for good (an RFC 3464
        report); never for a message with the null reverse-path (RFC 5321
        section 4.5.5).

        @raise Exception: the bounce could not be made, filed or queued.
        """
        if not message.sender:
            self.log.info("{id}: not bouncing a message from <>", id=message.id)
            return
        failures = [
            BounceFailure(r.address, statuses[r.address], r.remoteMta, r.lastReply)
            for r in failed
        ]
        head = await self.runBlocking(_readHead, self.queue.messagePath(message.id))
        bounceId = self.newQueueId()
        data = makeBounce(
            headersOf(head), failures, message.sender, self.config.hostname, message.id,
            self.clock.seconds(), arrival=message.created,
        )
        await self._sendBounce(message, bounceId, data)

    async def _sendBounce(self, message: QueuedMessage, bounceId: str, data: bytes) -> None:
        """
        File the bounce in the sender's Maildir when it is local, else queue
        it: for relay, or for the delivery backend of the sender's domain.
        """
        try:
            sender = parseAddress(message.sender)
        except AddressError:
            self.log.info("{id}: cannot bounce to unparsable <{sender}>", id=message.id, sender=message.sender)
            return
        via = None
        if self.access.isLocal(sender.domain):
            try:
                destination = self.access.localDestination(sender)
                if isinstance(destination, CourierRecipient):
                    via = destination.backend
                else:
                    path = mailboxPath(self.config.maildirRoot, destination)
            except UnsafeMailbox:
                self.log.info("{id}: cannot bounce to unsafe <{sender}>", id=message.id, sender=message.sender)
                return
        if via is None and self.access.isLocal(sender.domain):
            filed = headers.returnPath(None) + headers.deliveredTo(sender) + data
            await self.runBlocking(deliverBytes, path, filed, mode=self.config.maildirMode)
            self.log.info(
                "{id}: bounce {bounce} filed locally for <{sender}>", id=message.id, bounce=bounceId,
                sender=message.sender,
            )
            return
        bounce = QueuedMessage(
            id=bounceId, created=self.clock.seconds(), sender="", size=len(data),
            clientHost="127.0.0.1", heloName=self.config.hostname,
            recipients=[QueuedRecipient(address=message.sender, nextAttempt=self.clock.seconds(), via=via)],
        )
        await self.runBlocking(self.queue.add, bounce, data)
        self.log.info("{id}: bounce {bounce} queued for <{sender}>", id=message.id, bounce=bounceId, sender=message.sender)
        self.queued(bounce)


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


def _readHead(path: str) -> bytes:
    """
    The first bytes of a queued message, for its headers.  Blocks.
    """
    with open(path, "rb") as f:
        return f.read(HEADER_READ_LIMIT)


def _paths(recipients: list[QueuedRecipient]) -> str:
    """
    Recipients as paths, for a log line.
    """
    return ",".join(f"<{r.address}>" for r in recipients)


def _status(result: RecipientResult) -> str:
    """
    The enhanced status of a recipient result, or one made from its code.
    """
    if result.enhanced:
        return result.enhanced
    return f"{str(result.code)[0]}.0.0"
