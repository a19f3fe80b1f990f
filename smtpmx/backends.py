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


def describeVia(via: str) -> str:
    """
    A queued recipient's backend for people: C{lmtp unix:/run/dovecot/lmtp},
    the name then the argument, as log lines and C{smtpmx-queue} show it.
    """
    name, _, argument = via.partition(":")
    return f"{name} {argument}" if argument else name
