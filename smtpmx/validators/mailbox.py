"""
The C{mailbox} validator: a local recipient is accepted when its Maildir
already exists, at C{<maildir-root>/<domain>/<name>}.
"""

from __future__ import annotations

import os
from typing import Optional

from twisted.internet.defer import Deferred
from zope.interface import implementer

from smtpmx.address import Address
from smtpmx.interfaces import IRecipientValidator
from smtpmx.validation import Accept, Reject
from smtpmx.validators import localMailbox


@implementer(IRecipientValidator)
class MailboxValidator:
    """
    Accepts a local recipient whose Maildir exists; has no opinion on the
    others (so the chain ends in C{550 5.1.1} for them).  The local part is
    matched case-insensitively with its delimiter tag stripped.
    """

    def validateRecipient(self, session, recipient: Address) -> Optional[Reject] | Deferred:
        """
        Look for the recipient's Maildir, in the thread pool: it is disk
        I/O.
        """
        name = localMailbox(session, recipient)
        if name is None or isinstance(name, Reject):
            return name
        path = os.path.join(
            session.config.maildirRoot, recipient.domain.lower(), name
        )
        d = session.runBlocking(os.path.isdir, path)
        d.addCallback(lambda exists: Accept() if exists else None)
        return d
