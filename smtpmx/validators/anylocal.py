"""
The C{any} validator: every recipient in a local domain filed in Maildirs
is accepted, and its Maildir is made on first delivery.  A domain delivered
over LMTP is not its business (its mailboxes live in the LMTP server): no
opinion.
"""

from __future__ import annotations

from typing import Optional

from zope.interface import implementer

from smtpmx.address import Address
from smtpmx.interfaces import IRecipientValidator
from smtpmx.validation import Accept, Reject
from smtpmx.validators import localMailbox


@implementer(IRecipientValidator)
class AnyLocalValidator:
    """
    Accepts every local recipient whose name is a safe Maildir name; has no
    opinion on other domains, nor on those delivered over LMTP.
    """

    def validateRecipient(self, session, recipient: Address) -> Optional[Accept | Reject]:
        """
        Accept a local recipient, refuse an unsafe one, pass on the rest.
        """
        name = localMailbox(session, recipient)
        if name is None or isinstance(name, Reject):
            return name
        return Accept()
