"""
The C{mailbox} validator: a local recipient is accepted when its Maildir
already exists, at C{<maildir-root>/<domain>/<name>} (C{docs/storage.rst}).
A domain delivered over LMTP has no Maildir here: the validator has no
opinion on its recipients.
"""

from __future__ import annotations

import os
from typing import Optional

from twisted.internet.defer import Deferred
from zope.interface import implementer

from smtpmx.address import Address, UnsafeMailbox
from smtpmx.delivery.maildir import mailboxPath
from smtpmx.envelope import LocalMailbox
from smtpmx.interfaces import IRecipientValidator
from smtpmx.validation import Accept, Reject
from smtpmx.validators import badMailbox, localMailbox


@implementer(IRecipientValidator)
class MailboxValidator:
    """
    Accepts a local recipient whose Maildir exists; has no opinion on the
    others, nor on the domains delivered over LMTP (so the chain ends in
    C{550 5.1.1} for them unless a later validator knows them).  The local part is
    matched case-insensitively with its delimiter tag stripped.
    """

    def validateRecipient(self, session, recipient: Address) -> Optional[Reject] | Deferred:
        """
        Look for the recipient's Maildir, in the thread pool: it is disk
        I/O.  The path is the Maildir store's own, checked to lie under
        the root before the file system is asked anything; a mailbox that
        would not is refused as C{550 5.1.3}.
        """
        name = localMailbox(session, recipient)
        if name is None or isinstance(name, Reject):
            return name
        mailbox = LocalMailbox(recipient.domain.lower(), name)
        try:
            path = mailboxPath(session.config.maildirRoot, mailbox)
        except UnsafeMailbox:
            return badMailbox()
        d = session.runBlocking(os.path.isdir, path)
        d.addCallback(lambda exists: Accept() if exists else None)
        return d
