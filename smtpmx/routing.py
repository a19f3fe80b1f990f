"""
The message store the server uses: local recipients go to the Maildirs;
remote ones, and those of domains delivered by a courier backend such as LMTP
(L{smtpmx.envelope.CourierRecipient}, handed to its backend from the
queue), to the relay queue; and a message for both is stored in both, all
or nothing, before the one C{250} reply to its DATA (RFC 5321 section 6.1;
C{docs/storage.rst}).
"""

from __future__ import annotations

import dataclasses
from typing import Optional

from twisted.internet.defer import Deferred, gatherResults
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from smtpmx.envelope import Envelope, LocalMailbox
from smtpmx.interfaces import IIncomingMessage, IMessageStore, ITwoPhaseMessage


@implementer(IIncomingMessage)
class _SplitMessage:
    """
    A message with local and remote recipients: each body chunk goes to
    both parts, and completing it files both or neither.
    """

    _log = Logger()

    def __init__(self, local: ITwoPhaseMessage, remote: ITwoPhaseMessage, queueId: str) -> None:
        """
        @param local: the Maildir part, whose C{rollback()} undoes a
            successful C{finish()}.
        @param remote: the queue part, completed in two phases:
            C{prepare()}, C{commit()}, C{rollback()}.
        @param queueId: for the log.
        """
        self._local = local
        self._remote = remote
        self._queueId = queueId

    def write(self, data: bytes) -> Optional[Deferred[None]]:
        """
        Give body bytes to both parts.

        @return: L{None}, or a L{Deferred} that fires once neither part
            asks the writer to wait any more.
        """
        waits = [d for d in (self._local.write(data), self._remote.write(data)) if d is not None]
        if not waits:
            return None
        if len(waits) == 1:
            return waits[0]
        return gatherResults(waits, consumeErrors=True).addBoth(lambda ignored: None)

    def finish(self) -> Deferred[None]:
        """
        Store the message in both places: the queue's part is prepared
        (written and fsynced, not yet queued), the Maildir part finished,
        then the queue's part committed.  If any step fails, what either
        part stored is removed before the result fails.

        @return: a L{Deferred} that fires with L{None} once the message is
            stored for every recipient, or fails with nothing left behind.
        """
        result: Deferred[None] = Deferred()

        def fail(failure: Failure, *rollbacks: Deferred[None]) -> None:
            """
            Fail once every part is cleaned up.
            """
            gatherResults(list(rollbacks)).addBoth(lambda ignored: result.errback(failure))

        def prepared(ignored: object) -> None:
            """
            The queue's part is ready: file the local copies.
            """
            self._local.finish().addCallbacks(delivered, localFailed)

        def remoteFailed(failure: Failure) -> None:
            """
            The queue's part could not be written (it removed its files).
            """
            self._local.abort()
            fail(failure)

        def delivered(ignored: object) -> None:
            """
            The local copies are in place: queue the rest.
            """
            self._remote.commit().addCallbacks(result.callback, committedFailed)

        def localFailed(failure: Failure) -> None:
            """
            The local copies failed (and are removed): drop the queue's part.
            """
            fail(failure, self._remote.rollback())

        def committedFailed(failure: Failure) -> None:
            """
            The queue's part could not be committed (it removed its
            files): remove the local copies already filed.
            """
            self._log.warn("{id}: queueing failed, removing the local copies", id=self._queueId)
            fail(failure, self._local.rollback())

        self._remote.prepare().addCallbacks(prepared, remoteFailed)
        return result

    def abort(self) -> None:
        """
        Give up on both parts.
        """
        try:
            self._local.abort()
        finally:
            self._remote.abort()


@implementer(IMessageStore)
class RoutingStore:
    """
    Sends each recipient of a message where it belongs: a L{LocalMailbox}
    to the Maildir store; a remote address, and an L{smtpmx.envelope.CourierRecipient} (which
    the relay service hands to its delivery backend), to the relay queue.  The
    C{250} to DATA thus waits for the queue copy to be committed, as
    Postfix queues before its LMTP delivery (docs/storage.rst).  A message
    with recipients of one kind only is simply handed to that store.
    """

    def __init__(self, maildir: IMessageStore, queue: IMessageStore) -> None:
        """
        @param maildir: the store for local recipients, such as
            L{smtpmx.delivery.maildir.MaildirStore}; its messages provide
            L{ITwoPhaseMessage}.
        @param queue: the store for remote and LMTP recipients, such as
            L{smtpmx.relay.intake.QueueStore}; its messages provide
            L{ITwoPhaseMessage}.
        """
        self._maildir = maildir
        self._queue = queue

    def receive(self, envelope: Envelope) -> IIncomingMessage:
        """
        Begin storing a message for every recipient of C{envelope}.

        @raise ValueError: a store refuses its recipients (an unsafe
            mailbox, no recipient at all); nothing is left behind.
        """
        local = [r for r in envelope.recipients if isinstance(r.destination, LocalMailbox)]
        remote = [r for r in envelope.recipients if not isinstance(r.destination, LocalMailbox)]
        if not remote:
            return self._maildir.receive(envelope)
        if not local:
            return self._queue.receive(envelope)
        localMessage = self._maildir.receive(dataclasses.replace(envelope, recipients=local))
        try:
            remoteMessage = self._queue.receive(dataclasses.replace(envelope, recipients=remote))
        except BaseException:
            localMessage.abort()
            raise
        return _SplitMessage(localMessage, remoteMessage, envelope.queueId)
