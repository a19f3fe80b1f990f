"""
Bounces of the relay (docs/relay.rst): when recipients of a queued
message fail for good, the sender gets one delivery status notification
(RFC 3464, L{smtpmx.bounce.makeBounce}) for them, filed in the sender's
Maildir when the sender is local, else queued like any other message.
"""

from __future__ import annotations

from typing import Callable

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from smtpmx import headers
from smtpmx.access import Access
from smtpmx.address import AddressError, UnsafeMailbox, parseAddress
from smtpmx.bounce import BounceFailure, headersOf, makeBounce
from smtpmx.config import Config
from smtpmx.delivery.maildir import deliverBytes, mailboxPath
from smtpmx.envelope import CourierRecipient
from smtpmx.relay.queue import Queue
from smtpmx.relay.queueformat import QueuedMessage, QueuedRecipient

# Bytes of a message read to quote its headers in a bounce.
HEADER_READ_LIMIT = 64 * 1024


class Bouncer:
    """
    Makes the bounce of recipients that failed for good and files or
    queues it.
    """

    def __init__(
        self,
        config: Config,
        queue: Queue,
        runBlocking: Callable[..., Deferred],
        clock,
        newQueueId: Callable[[], str],
        access: Access,
        queued: Callable[[QueuedMessage], None],
        log: Logger,
    ) -> None:
        """
        @param config: the configuration (the host name, the Maildirs).
        @param queue: the relay queue, where a bounce to a remote sender
            goes.
        @param runBlocking: runs a blocking callable off the reactor thread.
        @param clock: gives the time of the report.
        @param newQueueId: makes the queue ID of a bounce.
        @param access: tells a local sender from a remote one.
        @param queued: told of a bounce just queued, to try it at once.
        @param log: the relay service's logger, which logs each bounce.
        """
        self.config = config
        self.queue = queue
        self.runBlocking = runBlocking
        self.clock = clock
        self.newQueueId = newQueueId
        self.access = access
        self.queued = queued
        self.log = log

    async def bounce(self, message: QueuedMessage, failed: list[QueuedRecipient], statuses: dict[str, str]) -> None:
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
        await self.send(message, bounceId, data)

    async def send(self, message: QueuedMessage, bounceId: str, data: bytes) -> None:
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


def _readHead(path: str) -> bytes:
    """
    The first bytes of a queued message, for its headers.  Blocks.
    """
    with open(path, "rb") as f:
        return f.read(HEADER_READ_LIMIT)
