"""
The DNS lookups of sender authentication (docs/authentication.rst).
"""

from __future__ import annotations


class TemporaryDNSError(Exception):
    """
    A lookup could not be answered now: a timeout, C{SERVFAIL}, no server
    to ask, or the message's time budget (C{--auth-timeout}) spent.  The
    method that needed it is C{temperror} (RFC 8601 section 2.7).
    """
