"""
Which delivery backend a local domain uses, from C{--delivery}'s entries:
C{maildir} or a courier's C{NAME:ARG} such as C{lmtp:ENDPOINT}
(docs/storage.rst, docs/plugins.rst).  Pure values, so that
the SMTP dialogue's policy (L{smtpmx.access}) may route a recipient by its
backend without knowing anything of storage; L{smtpmx.delivery} gives the
same names.
"""

from __future__ import annotations

from typing import Optional

MAILDIR = "maildir"
LMTP_PREFIX = "lmtp:"
# The Twisted client endpoint types that begin a queue entry's C{via}
# written before delivery backends were plugins: a bare LMTP endpoint.
_BARE_ENDPOINT_TYPES = ("tcp:", "unix:", "tcp6:", "tls:", "ssl:")


def backendFor(delivery: tuple[tuple[Optional[str], str], ...], domain: str) -> str:
    """
    The backend of a local domain, from C{--delivery}'s entries: the entry
    naming the domain, else the entry without a domain, else C{maildir}.

    @param delivery: the checked entries, C{(domain or None, backend)}.
    @param domain: a local domain, lower-cased.

    @return: C{"maildir"} or a courier's C{"NAME:ARG"}.
    """
    default = MAILDIR
    for named, backend in delivery:
        if named == domain:
            return backend
        if named is None:
            default = backend
    return default


def lmtpEndpoint(backend: str) -> Optional[str]:
    """
    The LMTP server's endpoint of a backend, or L{None} for C{maildir}.
    """
    if backend.startswith(LMTP_PREFIX):
        return backend[len(LMTP_PREFIX):]
    return None


def viaBackend(via: str) -> str:
    """
    The backend specification of a queued recipient's C{via}: as written
    (C{NAME:ARG}), except that a bare LMTP endpoint, as queues written
    before delivery backends were plugins hold (C{unix:/run/dovecot/lmtp}),
    is C{lmtp:} that endpoint.
    """
    if via.startswith(_BARE_ENDPOINT_TYPES):
        return LMTP_PREFIX + via
    return via


def describeVia(via: str) -> str:
    """
    A queued recipient's backend for people: C{lmtp unix:/run/dovecot/lmtp},
    the name then the argument, as log lines and C{smtpmx-queue} show it.
    """
    name, _, argument = viaBackend(via).partition(":")
    return f"{name} {argument}" if argument else name
