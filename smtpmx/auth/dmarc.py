"""
DMARC (RFC 7489): the verdict on the domain of a message's C{From:} field,
from the SPF and DKIM results and the policy record the domain publishes
(docs/authentication.rst).

L{checkDmarc} is blocking (it runs in the checks' thread pool) and pure
but for its C{txt} lookups.  The organizational domain comes from the
public suffix list, loaded once per process.

Decisions where RFC 7489 leaves a choice (section 6.6.1):

  - A message without a C{From:} field, or whose C{From:} holds no address
    with a domain, is a C{permerror}; it is delivered.
  - Several addresses (in one C{From:} field or several): each distinct
    domain is evaluated and the message fails if any fails, under the
    strictest policy of those that fail, reported with the first failing
    domain; otherwise it has the least good result of all (C{temperror},
    then C{permerror}, C{none}, C{pass}), reported with the first domain
    that has it.  More than L{MAX_FROM_DOMAINS} distinct domains are a
    C{permerror}, so that one message cannot ask for unbounded lookups.
  - A record whose C{p=} or C{sp=} is not valid and that names no valid
    report address (section 6.6.3 step 6) is a C{permerror}.
"""

from __future__ import annotations

import email.utils
import random as randomModule
import re
from dataclasses import dataclass
from typing import Callable, Iterator, Optional, Sequence

from publicsuffixlist import PublicSuffixList
from twisted.logger import Logger

from smtpmx.auth.dns import TemporaryDNSError
from smtpmx.auth.results import DkimResult, DmarcResult, SpfResult

_log = Logger()

# The public suffix list that ships with publicsuffixlist, ICANN and
# private sections both, read once: parsing it takes tens of milliseconds.
_publicSuffixes = PublicSuffixList()

# How many distinct From: domains one message may ask to be evaluated.
MAX_FROM_DOMAINS = 10

# RFC 7489 section 6.3: the policies a domain may ask for, from the least
# strict; section 6.6.4 steps down this list for a message not sampled.
_POLICIES = ("none", "quarantine", "reject")

# RFC 7489 section 6.4: a record starts with the version tag, whose value
# matches exactly.
_VERSION = re.compile(r"[ \t]*[vV][ \t]*=[ \t]*DMARC1[ \t]*(;|\Z)")

# RFC 7489 section 6.4: a DMARC URI is a URI (RFC 3986 section 3: a
# scheme and a colon) with an optional "!" size limit.
_REPORT_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:[^\s!,]+(![0-9]+[kmgtKMGT]?)?\Z")

# RFC 1035 section 2.3.4, RFC 2181 section 11: a host name's labels, in
# the lower-case ASCII form domains are compared in (underscores allowed,
# as DNS allows them).
_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?\Z")


def _domain(text: str) -> Optional[str]:
    """
    A domain in the form it is looked up and compared in: lower case,
    without a final dot, internationalized labels as A-labels (RFC 5891);
    L{None} when C{text} is no domain name (an address literal, a label
    over 63 octets, a name over 253).
    """
    name = text.strip().rstrip(".").lower()
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError:
            return None
    if not name or len(name) > 253:
        return None
    if not all(_LABEL.match(label) for label in name.split(".")):
        return None
    return name


def organizationalDomain(domain: str) -> str:
    """
    The organizational domain of C{domain} (RFC 7489 section 3.2): its
    public suffix and one label more, from the public suffix list, in
    lower case.  A name under a top-level domain the list does not have
    (such as C{.test}) has its last two labels; a public suffix, or a name
    the list cannot place, is its own organizational domain.
    """
    name = domain.strip().rstrip(".").lower()
    found = _publicSuffixes.privatesuffix(name)
    return found if found is not None else name


@dataclass(frozen=True)
class _Record:
    """
    What a DMARC policy record asks for (RFC 7489 section 6.3).

    @ivar policy: C{p=}, for the domain the record was found at.
    @ivar subdomainPolicy: C{sp=}, else C{p=}, for its subdomains.
    @ivar strictDkim: C{adkim=s}.
    @ivar strictSpf: C{aspf=s}.
    @ivar percent: C{pct=}, 0 to 100.
    """

    policy: str
    subdomainPolicy: str
    strictDkim: bool = False
    strictSpf: bool = False
    percent: int = 100


def _tags(record: str) -> dict[str, str]:
    """
    The tags of a record (RFC 7489 section 6.4: C{name=value} separated by
    C{;} and white space), names in lower case; the first of a repeated
    tag counts.
    """
    tags: dict[str, str] = {}
    for part in record.split(";"):
        name, equals, value = part.partition("=")
        if equals:
            tags.setdefault(name.strip().lower(), value.strip())
    return tags


def _parseRecord(record: str) -> Optional[_Record]:
    """
    What a record (one starting with C{v=DMARC1}) asks for, RFC 7489
    section 6.3: unknown tags and invalid C{adkim=}, C{aspf=} and C{pct=}
    values are ignored (their defaults apply).  An invalid or missing
    C{p=}, or an invalid C{sp=}, makes the record ask for C{none} when
    it names a valid C{rua=} address, and otherwise makes it unusable
    (section 6.6.3 step 6).

    @return: L{None} when the record is unusable.
    """
    tags = _tags(record)
    policy = tags.get("p", "").lower()
    subdomainPolicy = tags.get("sp", policy).lower()
    if policy not in _POLICIES or subdomainPolicy not in _POLICIES:
        reports = tags.get("rua", "").split(",")
        if any(_REPORT_URI.match(uri.strip()) for uri in reports):
            return _Record("none", "none")
        return None
    percent = tags.get("pct", "100")
    return _Record(
        policy,
        subdomainPolicy,
        strictDkim=tags.get("adkim", "r").lower() == "s",
        strictSpf=tags.get("aspf", "r").lower() == "s",
        percent=int(percent) if re.fullmatch(r"[0-9]{1,3}", percent) and int(percent) <= 100 else 100,
    )


def _records(txt: Callable[[str], list[bytes]], domain: str) -> list[str]:
    """
    The DMARC records published for C{domain}: its C{_dmarc} TXT records
    that start with C{v=DMARC1}, the others discarded (RFC 7489 section
    6.6.3 steps 1-2, 4).

    @raise TemporaryDNSError: the lookup failed for now.
    """
    name = "_dmarc." + domain
    if len(name) > 253:
        return []
    found = (record.decode("utf-8", "replace") for record in txt(name))
    return [record for record in found if _VERSION.match(record)]


def _aligned(fromDomain: str, identifier: Optional[str], strict: bool) -> bool:
    """
    Whether an authenticated domain is aligned with the From domain (RFC
    7489 section 3.1): the same name in strict mode, the same
    organizational domain in relaxed mode.
    """
    domain = _domain(identifier or "")
    if domain is None:
        return False
    if strict:
        return domain == fromDomain
    return organizationalDomain(domain) == organizationalDomain(fromDomain)


def _sampled(policy: str, percent: int, random: Callable[[], float]) -> str:
    """
    The policy applied to a failing message (RFC 7489 section 6.6.4): the
    one asked for with probability C{percent}/100, else the next less
    strict one (C{reject} becomes C{quarantine}, C{quarantine} becomes
    C{none}).  C{random} is asked only when the outcome is in doubt.
    """
    if policy == "none" or percent >= 100:
        return policy
    if percent > 0 and random() < percent / 100:
        return policy
    return _POLICIES[_POLICIES.index(policy) - 1]


def _evaluate(
    txt: Callable[[str], list[bytes]],
    fromDomain: str,
    spf: Optional[SpfResult],
    dkim: Sequence[DkimResult],
    random: Callable[[], float],
) -> DmarcResult:
    """
    The DMARC verdict on one From domain (RFC 7489 section 6.6.2, 6.6.3):
    its record is looked up at C{_dmarc.<domain>}, else at the
    organizational domain's (whose C{sp=} then applies); exactly one is
    needed.  The message passes when a passing DKIM signature or a
    passing SPF check has an aligned domain (section 4.2), and otherwise
    fails under the policy the record asks for, sampled with C{pct=}.

    @raise TemporaryDNSError: a lookup failed for now.
    """
    records = _records(txt, fromDomain)
    subdomain = False
    if not records:
        organizational = organizationalDomain(fromDomain)
        if organizational != fromDomain:
            records = _records(txt, organizational)
            subdomain = True
    if len(records) != 1:
        return DmarcResult("none", fromDomain)
    record = _parseRecord(records[0])
    if record is None:
        return DmarcResult("permerror", fromDomain)
    if any(
        signature.result == "pass" and _aligned(fromDomain, signature.domain, record.strictDkim)
        for signature in dkim
    ):
        return DmarcResult("pass", fromDomain)
    if spf is not None and spf.result == "pass" and _aligned(fromDomain, spf.domain, record.strictSpf):
        return DmarcResult("pass", fromDomain)
    policy = record.subdomainPolicy if subdomain else record.policy
    return DmarcResult("fail", fromDomain, _sampled(policy, record.percent, random))


def _unfold(value: bytes) -> str:
    """
    A raw header field value as text: line folds removed (RFC 5322
    section 2.2.3), UTF-8 (RFC 6532) with anything else replaced.
    """
    return re.sub(r"\r?\n(?=[ \t])", "", value.decode("utf-8", "replace")).strip()


def _fromDomains(headers: Sequence[tuple[bytes, bytes]]) -> Iterator[Optional[str]]:
    """
    The domain of each address in the message's C{From:} fields (RFC 7489
    section 6.6.1), in order, L{None} for an address without a usable
    domain.
    """
    values = [_unfold(value) for name, value in headers if name.strip().lower() == b"from"]
    for _, address in email.utils.getaddresses(values):
        _, at, domain = address.rpartition("@")
        yield _domain(domain) if at else None


# The result words of a From domain, from the one that decides first: any
# failure fails the message; otherwise the least good result counts.
_PRECEDENCE = ("fail", "temperror", "permerror", "none", "pass")


def checkDmarc(
    txt: Callable[[str], list[bytes]],
    headers: Sequence[tuple[bytes, bytes]],
    spf: Optional[SpfResult],
    dkim: Sequence[DkimResult],
    random: Callable[[], float] = randomModule.random,
) -> DmarcResult:
    """
    The DMARC verdict on a message (RFC 7489 section 6.6): blocking, never
    raises.

    @param txt: looks up the TXT records of a name (each record's strings
        joined); raises L{TemporaryDNSError} for a temporary failure, which
        makes the verdict C{temperror}.
    @param headers: the message's header fields, C{(name, raw value)}, in
        order.
    @param spf: the SPF result for the MAIL FROM domain (the HELO name for
        the null sender), or L{None} when there is none.
    @param dkim: one result per DKIM signature.
    @param random: a uniform random number in [0, 1), for C{pct=}.
    """
    try:
        domains: list[str] = []
        for domain in _fromDomains(headers):
            if domain is not None and domain not in domains:
                domains.append(domain)
        if not domains:
            return DmarcResult("permerror")
        if len(domains) > MAX_FROM_DOMAINS:
            return DmarcResult("permerror", domains[0])
        verdicts = []
        for domain in domains:
            try:
                verdicts.append(_evaluate(txt, domain, spf, dkim, random))
            except TemporaryDNSError:
                verdicts.append(DmarcResult("temperror", domain))
        first = min(verdicts, key=lambda verdict: _PRECEDENCE.index(verdict.result))
        if first.result != "fail":
            return first
        policy = max((v.policy for v in verdicts if v.result == "fail"), key=_POLICIES.index)
        return DmarcResult("fail", first.fromDomain, policy)
    except Exception:
        _log.failure("DMARC check failed")
        return DmarcResult("temperror")
