"""
The relay service: it takes messages from the durable queue to their next
hops, one transaction per (message, next hop) carrying every recipient
that shares it, retries on the schedule, and bounces what fails for good.

Connections are reused: the service owns a L{SessionPool} (the connection
cache) that C{deliver} takes idle sessions from and gives them back to;
stopping the service closes them.

All I/O goes through injected pieces: the queue's blocking methods run in
the thread runner, DNS through the resolver, SMTP through C{deliver}.  The
state of each recipient is saved after every attempt, so a crash at any
moment loses nothing and delivers nothing twice that was recorded as done.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Callable, Optional

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredSemaphore, gatherResults, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from smtpmx import headers
from smtpmx.access import Access
from smtpmx.address import AddressError, UnsafeMailbox, mailboxName, parseAddress
from smtpmx.bounce import BounceFailure, headersOf, makeBounce
from smtpmx.config import Config
from smtpmx.delivery.maildir import deliverBytes, mailboxPath
from smtpmx.envelope import LocalMailbox
from smtpmx.relay.client import SessionPool
from smtpmx.relay.nexthop import NextHop, PermanentFailure, TemporaryFailure, resolveNextHops
from smtpmx.relay.queue import BOUNCED, DELIVERED, PENDING, Queue, QueuedMessage, QueuedRecipient
from smtpmx.relay.retry import isExpired, nextAttemptDelay

# How often the queue is looked at for due messages and flush requests.
POLL_INTERVAL = 1.0
# Simultaneous transactions in all, and to one next hop.
GLOBAL_CONNECTIONS = 50
PER_DESTINATION_CONNECTIONS = 10
# Bytes of a message read to quote its headers in a bounce.
HEADER_READ_LIMIT = 64 * 1024


@dataclass
class _Outcome:
    """
    What became of one recipient in one attempt.
    """

    permanent: Optional[bool]  # None: delivered
    reply: str
    status: str = "4.0.0"
    remoteMta: Optional[str] = None


class RelayService(Service):
    """
    Drives delivery of the relay queue.

    @ivar inFlight: IDs of the messages being attempted now.
    @ivar pool: the connection cache given to C{deliver}.
    """

    log = Logger()

    def __init__(
        self,
        config: Config,
        queue: Queue,
        runBlocking: Callable[..., Deferred],
        clock,
        resolver,
        deliver: Callable[..., Deferred],
        newQueueId: Callable[[], str],
        reactor=None,
    ) -> None:
        self.config = config
        self.queue = queue
        self.runBlocking = runBlocking
        self.clock = clock
        self.resolver = resolver
        self.deliver = deliver
        self.newQueueId = newQueueId
        self.reactor = reactor if reactor is not None else clock
        self.pool = SessionPool(self.reactor)
        self.access = Access(config.domains, config.relayDomains, config.relayNetworks, config.recipientDelimiter)
        self.messages: dict[str, QueuedMessage] = {}
        self.inFlight: set[str] = set()
        self._global = DeferredSemaphore(GLOBAL_CONNECTIONS)
        self._perHop: dict[tuple[str, int], DeferredSemaphore] = defaultdict(
            lambda: DeferredSemaphore(PER_DESTINATION_CONNECTIONS)
        )
        # Status codes of recipients bounced in the attempt under way,
        # keyed by (message ID, address), for the bounce.
        self._bounced: dict[tuple[str, str], str] = {}
        self._loop: Optional[LoopingCall] = None
        self._polling = False
        self._flushStarted = 0.0

    # Life cycle.

    def startService(self) -> None:
        """
        Recover the queue, then poll it.

        Recovery blocks, on purpose: it runs as the reactor starts, before
        any connection is accepted, and it must, since L{Queue.recover}
        removes unfinished files that would otherwise belong to messages
        being received.  It runs after twistd has dropped privileges, so
        the queue belongs to the user the server runs as.
        """
        Service.startService(self)
        if self.pool.closed:
            self.pool = SessionPool(self.reactor)
        for message in self.queue.recover():
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
        d = self.runBlocking(self.queue.takeFlushRequest)

        def flushed(requested: bool) -> Optional[Deferred]:
            if requested:
                self.log.info("relay queue flush requested")
                self._flushStarted = self.clock.seconds()
                return self.runBlocking(self.queue.list).addCallback(self._reload)
            return None

        def due(_):
            now = self.clock.seconds()
            for message in list(self.messages.values()):
                if message.id in self.inFlight:
                    continue
                if any(r.nextAttempt <= now for r in message.pending()) or not message.pending():
                    self._attempt(message)

        def done(result):
            self._polling = False
            return result

        d.addCallback(flushed)
        d.addCallback(due)
        d.addErrback(lambda f: self.log.failure("relay queue poll failed", f))
        d.addBoth(done)
        return d

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
        d = self._attemptMessage(message)
        d.addErrback(lambda f: self.log.failure("{id}: relay attempt failed", f, id=message.id))
        d.addBoth(lambda _: self.inFlight.discard(message.id))
        return d

    def _attemptMessage(self, message: QueuedMessage) -> Deferred:
        """
        Attempt every due recipient of C{message}, bounce what expired, then settle its state.
        """
        now = self.clock.seconds()
        due = [r for r in message.pending() if r.nextAttempt <= now]
        if isExpired(message.created, now, self.config.maxQueueAge):
            for r in message.pending():
                self._record(message, r, _Outcome(True, r.lastReply or "message expired in the queue", "4.4.7", r.remoteMta), now, expire=True)
            due = []
        byDomain: dict[str, list[QueuedRecipient]] = defaultdict(list)
        for r in due:
            byDomain[r.address.rpartition("@")[2].lower()].append(r)
        lookups = [self._resolve(message, domain, rs) for domain, rs in byDomain.items()]
        d = gatherResults(lookups, consumeErrors=True) if lookups else succeed([])
        d.addCallback(lambda resolved: self._attemptHops(message, resolved))
        d.addCallback(lambda _: self._settle(message))
        return d

    def _attemptHops(self, message: QueuedMessage, resolved: list) -> Deferred:
        """
        One transaction per next hop: recipients of different domains whose
        next hops are the same share it (SPEC section 6).
        """
        groups: dict[tuple, tuple[list[NextHop], list[QueuedRecipient]]] = {}
        for item in resolved:
            if item is None:
                continue
            hops, recipients = item
            key = tuple((h.host, h.port, h.name) for h in hops)
            groups.setdefault(key, (hops, []))[1].extend(recipients)
        attempts = [self._tryHops(message, rs, hops, 0, None) for hops, rs in groups.values()]
        return gatherResults(attempts, consumeErrors=True) if attempts else succeed(None)

    def _resolve(self, message: QueuedMessage, domain: str, recipients: list[QueuedRecipient]) -> Deferred:
        """
        The next hops of one domain, with its recipients; L{None} after
        recording a failure to find them for every recipient.
        """
        d = resolveNextHops(domain, self.config.routes, self.resolver, self.config.relayPort)

        def unresolved(failure):
            now = self.clock.seconds()
            if failure.check(PermanentFailure):
                outcome = _Outcome(True, f"554 5.4.4 {failure.value}", "5.4.4")
            elif failure.check(TemporaryFailure):
                outcome = _Outcome(False, f"451 4.4.3 {failure.value}", "4.4.3")
            else:
                self.log.failure("{id}: resolving {domain} failed", failure, id=message.id, domain=domain)
                outcome = _Outcome(False, "451 4.4.3 next hop lookup failed", "4.4.3")
            self.log.info("{id}: to={to} relay=none, {reply}", id=message.id, to=_paths(recipients), reply=outcome.reply)
            for r in recipients:
                self._record(message, r, outcome, now)
            return None

        d.addCallbacks(lambda hops: (hops, recipients), unresolved)
        return d

    def _tryHops(self, message, recipients, hops, index, lastError) -> Deferred:
        """
        One transaction with C{hops[index]}; on a connection failure, the
        next hop.
        """
        now = self.clock.seconds()
        if index >= len(hops):
            reply = f"451 4.4.1 {lastError or 'no next hop could be reached'}"
            for r in recipients:
                self._record(message, r, _Outcome(False, reply, "4.4.1"), now)
            return succeed(None)
        hop = hops[index]
        started = self.clock.seconds()
        semaphore = self._perHop[(hop.host, hop.port)]

        def transact() -> Deferred:
            return self.deliver(
                self.reactor,
                hop,
                self.config.hostname,
                message.sender,
                [r.address for r in recipients],
                self.queue.messagePath(message.id),
                message.size,
                self.runBlocking,
                self.config.relayTls,
                self.config.caCerts,
                pool=self.pool,
            )

        # The per-destination slot first: waiting for a busy destination
        # must not hold one of the global slots.
        d = semaphore.run(self._global.run, transact)

        def done(result) -> Optional[Deferred]:
            delay = self.clock.seconds() - started
            if getattr(result, "connected", True) is False:
                self.log.info(
                    "{id}: relay={host}[{addr}]:{port} unreachable ({why}), delay={delay:.1f}",
                    id=message.id, host=hop.name, addr=hop.host, port=hop.port,
                    why=getattr(result, "error", "connection failed"), delay=delay,
                )
                return self._tryHops(message, recipients, hops, index + 1, getattr(result, "error", None))
            now = self.clock.seconds()
            for r in recipients:
                rr = result.recipients.get(r.address)
                if rr is None:
                    outcome = _Outcome(False, "451 4.4.0 no reply for this recipient", "4.4.0", hop.name)
                else:
                    outcome = _Outcome(rr.permanent, f"{rr.code} {rr.text}".strip(), _status(rr), hop.name)
                self._record(message, r, outcome, now)
                self.log.info(
                    "{id}: to=<{to}> relay={host}[{addr}]:{port} conn_use={use} delay={delay:.1f} tls={tls} "
                    "verified={verified} status={status} ({reply})",
                    id=message.id, to=r.address, host=hop.name, addr=hop.host, port=hop.port,
                    use=getattr(result, "connectionUse", 1),
                    delay=delay, tls=getattr(result, "tls", None) or "none",
                    verified=getattr(result, "verified", False),
                    status={None: "sent", True: "bounced", False: "deferred"}[outcome.permanent],
                    reply=outcome.reply,
                )
            return None

        d.addCallback(done)
        return d

    def _record(self, message, r: QueuedRecipient, outcome: _Outcome, now: float, expire: bool = False) -> None:
        """
        Apply one recipient's outcome to the in-memory state.
        """
        r.lastReply = outcome.reply
        r.remoteMta = outcome.remoteMta
        if outcome.permanent is None:
            r.state = DELIVERED
            r.attempts += 1
        elif outcome.permanent or expire:
            r.state = BOUNCED
            if not expire:
                r.attempts += 1
            self._bounced[(message.id, r.address)] = outcome.status
        else:
            r.attempts += 1
            r.nextAttempt = now + nextAttemptDelay(r.attempts, self.config.retrySchedule)

    def _settle(self, message: QueuedMessage) -> Deferred:
        """
        Queue or file the bounce for recipients that failed for good, then
        record the outcome (L{_store}).  The bounce comes first: a crash in
        between may send it twice, but never loses it.
        """
        statuses = {
            r.address: self._bounced.pop((message.id, r.address))
            for r in message.recipients
            if (message.id, r.address) in self._bounced
        }
        newlyBounced = [r for r in message.recipients if r.address in statuses]
        d = succeed(None)
        if newlyBounced:
            d.addCallback(lambda _: self._bounce(message, newlyBounced, statuses))

            def bounceFailed(failure):
                # Never lose a bounce: the recipients stay pending, to be
                # tried (and, failing again, bounced) later.
                self.log.failure("{id}: cannot bounce; the recipients stay queued", failure, id=message.id)
                now = self.clock.seconds()
                for r in newlyBounced:
                    r.state = PENDING
                    r.nextAttempt = now + nextAttemptDelay(max(r.attempts, 1), self.config.retrySchedule)

            d.addErrback(bounceFailed)
        d.addCallback(lambda _: self._store(message))
        return d

    def _store(self, message: QueuedMessage) -> Deferred:
        """
        Record the outcome on disk: a message with a recipient still pending
        has its state saved; one that is done is removed at once (saving
        its final state first would be an fsync for nothing: a crash before
        the removal only means the last attempt is made again).
        """
        if not message.pending():
            self.messages.pop(message.id, None)

            def removed(wasQueued: bool) -> None:
                if wasQueued:
                    self.log.info("{id}: removed from the relay queue", id=message.id)

            return self.runBlocking(self.queue.remove, message.id).addCallback(removed)

        def saved(stillQueued: bool) -> None:
            if not stillQueued:
                # Deleted by the operator meanwhile.
                self.messages.pop(message.id, None)

        return self.runBlocking(self.queue.save, message).addCallback(saved)

    # Bounces.

    def _bounce(self, message: QueuedMessage, failed: list[QueuedRecipient], statuses: dict[str, str]) -> Optional[Deferred]:
        """
        Tell the sender about recipients that failed for good; never for a
        message with the null reverse-path.

        @return: a L{Deferred} that fails if the bounce could not be made,
            filed or queued.
        """
        if not message.sender:
            self.log.info("{id}: not bouncing a message from <>", id=message.id)
            return None
        failures = [
            BounceFailure(r.address, statuses[r.address], r.remoteMta, r.lastReply)
            for r in failed
        ]
        d = self.runBlocking(_readHead, self.queue.messagePath(message.id))

        def made(head: bytes):
            bounceId = self.newQueueId()
            data = makeBounce(
                headersOf(head), failures, message.sender, self.config.hostname, message.id,
                self.clock.seconds(), arrival=message.created,
            )
            return self._sendBounce(message, bounceId, data)

        d.addCallback(made)
        return d

    def _sendBounce(self, message: QueuedMessage, bounceId: str, data: bytes) -> Deferred:
        """
        File the bounce in the sender's Maildir when it is local, else queue it for relay.
        """
        try:
            sender = parseAddress(message.sender)
        except AddressError:
            self.log.info("{id}: cannot bounce to unparsable <{sender}>", id=message.id, sender=message.sender)
            return succeed(None)
        if self.access.isLocal(sender.domain):
            try:
                mailbox = LocalMailbox(sender.domain.lower(), mailboxName(sender, self.config.recipientDelimiter))
                path = mailboxPath(self.config.maildirRoot, mailbox)
            except UnsafeMailbox:
                self.log.info("{id}: cannot bounce to unsafe <{sender}>", id=message.id, sender=message.sender)
                return succeed(None)
            filed = headers.returnPath(None) + headers.deliveredTo(sender) + data
            d = self.runBlocking(deliverBytes, path, filed)
            d.addCallback(lambda _: self.log.info(
                "{id}: bounce {bounce} filed locally for <{sender}>", id=message.id, bounce=bounceId, sender=message.sender))
            return d
        bounce = QueuedMessage(
            id=bounceId, created=self.clock.seconds(), sender="", size=len(data),
            clientHost="127.0.0.1", heloName=self.config.hostname,
            recipients=[QueuedRecipient(address=message.sender, nextAttempt=self.clock.seconds())],
        )
        d = self.runBlocking(self.queue.add, bounce, data)

        def queued(_):
            self.log.info("{id}: bounce {bounce} queued for <{sender}>", id=message.id, bounce=bounceId, sender=message.sender)
            self.queued(bounce)

        d.addCallback(queued)
        return d


def _readHead(path: str) -> bytes:
    """
    The first bytes of a queued message, for its headers.  Blocks.
    """
    with open(path, "rb") as f:
        return f.read(HEADER_READ_LIMIT)


def _paths(recipients) -> str:
    """
    Recipients as paths, for a log line.
    """
    return ",".join(f"<{r.address}>" for r in recipients)


def _status(result) -> str:
    """
    The enhanced status of a recipient result, or one made from its code.
    """
    enhanced = getattr(result, "enhanced", None)
    if enhanced:
        return enhanced
    return f"{str(result.code)[0]}.0.0"

