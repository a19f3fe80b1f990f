"""
Local delivery backends: where a message for one of our own domains is
filed.  C{maildir} files it under C{--maildir-root}
(L{smtpmx.delivery.maildir}); C{lmtp:ENDPOINT} hands it to an LMTP server
through the queue (docs/storage.rst).  The choice of a domain's backend is
L{smtpmx.backends}' (a value module the SMTP dialogue may use), given here
too.
"""

from __future__ import annotations

from smtpmx.backends import LMTP_PREFIX, MAILDIR, backendFor, lmtpEndpoint

__all__ = ["LMTP_PREFIX", "MAILDIR", "backendFor", "lmtpEndpoint"]
