"""
SPF (RFC 7208): is the client host allowed to send mail for the MAIL
FROM domain, or for the HELO name when the reverse-path is null?

The evaluation is pyspf's (C{spf.query(...).check()}); its DNS goes
through the check's L{Lookups}, so that it uses our resolver, our TTL
cache and our time budget.  pyspf does every lookup through one module
global, C{spf.DNSLookup}: importing this module replaces it, once, with
a hook that serves the calling thread's L{Lookups} (a
L{threading.local}), set by L{checkSpf} for the length of one check.
Many checks may thus run at once in many threads.  A thread that calls
pyspf outside L{checkSpf} gets pyspf's own lookup, as before.
"""

from __future__ import annotations

import contextlib
import ipaddress
import threading
from typing import Iterator, Optional

import spf
from twisted.logger import Logger

from smtpmx.auth.dns import Lookups, TemporaryDNSError
from smtpmx.auth.results import SpfResult

# The result words of RFC 7208 section 2.6, which are RFC 8601's.
RESULTS = frozenset({"pass", "fail", "softfail", "neutral", "none", "temperror", "permerror"})

_log = Logger()

_current = threading.local()


def _pyspfValue(rdtype: str, record) -> object:
    """
    One record as pyspf's C{DNSLookup} gives it: an address as text, an
    MX as C{(preference, host)}, a PTR as its host, a TXT as its strings.
    """
    if rdtype in ("A", "AAAA"):
        return record.address
    if rdtype == "MX":
        return (record.preference, record.exchange.to_text(omit_final_dot=True))
    if rdtype == "PTR":
        return record.target.to_text(omit_final_dot=True)
    return record.strings


def _pyspfLookup(name: str, qtype: str, strict=True, timeout=None) -> list:
    """
    pyspf's C{DNSLookup}, served by the calling thread's L{Lookups}: a
    list of C{((name, qtype), value)}.  pyspf's own per-lookup timeout is
    not used (the L{Lookups} bound every lookup).

    @raise spf.TempError: a L{TemporaryDNSError}, which pyspf makes
        C{temperror}.
    """
    lookups = getattr(_current, "lookups", None)
    if lookups is None:
        return _pyspfOwnLookup(name, qtype, strict, timeout)
    try:
        records = lookups.records(name, qtype)
    except TemporaryDNSError as e:
        raise spf.TempError(f"DNS {e}") from e
    return [((name, qtype), _pyspfValue(qtype, record)) for record in records]


# pyspf's own lookup, kept for threads outside a check (and found again
# on the hook should this module be imported anew).
_pyspfOwnLookup = getattr(spf.DNSLookup, "pyspfOwn", spf.DNSLookup)
_pyspfLookup.pyspfOwn = _pyspfOwnLookup
spf.DNSLookup = _pyspfLookup


@contextlib.contextmanager
def _usingLookups(lookups: Lookups) -> Iterator[None]:
    """
    Serve pyspf's lookups in this thread from C{lookups} for the length of
    the block.
    """
    previous = getattr(_current, "lookups", None)
    _current.lookups = lookups
    try:
        yield
    finally:
        _current.lookups = previous


def _checkable(domain: str) -> bool:
    """
    Whether C{domain} can have an SPF record: a multi-label domain name
    with no empty label and none over 63 octets (RFC 7208 section 4.3);
    an address literal cannot.
    """
    labels = domain.split(".")
    return (
        len(labels) >= 2
        and not domain.startswith("[")
        and all(0 < len(label.encode("utf-8")) <= 63 for label in labels)
    )


def checkSpf(lookups: Lookups, clientHost: str, sender: Optional[str], heloName: str) -> SpfResult:
    """
    Evaluate SPF for a client, RFC 7208 section 4 (C{check_host()}): for
    the MAIL FROM domain, or, for the null reverse-path, for
    C{postmaster@} the HELO name (section 2.4).  Blocking; never raises.

    A domain that is not a multi-label domain name (an address literal
    HELO, say) gives C{none} without asking (section 4.3); so does a
    client host that is not an IP address (nothing to authorize).  A
    L{TemporaryDNSError} (timeout, C{SERVFAIL}, the budget spent) gives
    C{temperror}; anything unexpected in pyspf is logged and also gives
    C{temperror}.

    @param lookups: the lookups of this check.
    @param clientHost: the client's IP address, IPv4 or IPv6.
    @param sender: the MAIL FROM address as text (C{local@domain}), or
        L{None} for C{<>}.
    @param heloName: the name the client gave in HELO/EHLO.
    @return: the result, with the domain checked (lower case, no final
        dot) as C{mailfrom}, or the HELO name as C{helo} for C{<>}.
    """
    if sender is None:
        local, domain = "postmaster", heloName
    else:
        local, at, domain = sender.rpartition("@")
        if not at:
            local, domain = "postmaster", sender
        local = local or "postmaster"
    domain = domain.rstrip(".").lower()
    try:
        ipaddress.ip_address(clientHost)
    except ValueError:
        return _result("none", sender, domain)
    if not _checkable(domain):
        return _result("none", sender, domain)
    try:
        with _usingLookups(lookups):
            query = spf.query(clientHost, "" if sender is None else f"{local}@{domain}", heloName)
            # pyspf splits the sender at its first "@"; a quoted local
            # part may hold one, so the parts are ours (RFC 7208 section 4.1).
            query.l, query.o, query.d = local, domain, domain
            result = query.check()[0]
    except Exception:
        _log.failure("SPF check for {client} from {domain} failed", client=clientHost, domain=domain)
        return _result("temperror", sender, domain)
    return _result(result if result in RESULTS else "permerror", sender, domain)


def _result(result: str, sender: Optional[str], domain: str) -> SpfResult:
    """
    The L{SpfResult} for the identity checked: the MAIL FROM domain, or
    the HELO name for C{<>}.
    """
    if sender is None:
        return SpfResult(result, helo=domain)
    return SpfResult(result, mailfrom=domain)
