"""
The DNS lookups of sender authentication (docs/authentication.rst).

The checks (SPF, DKIM keys, DMARC records) are blocking library code run
in a thread pool of their own, so their lookups are blocking too: one
L{Resolver} per server process wraps a dnspython resolver aimed at
C{--dns-server} (else the servers of C{/etc/resolv.conf}) with a cache
that keeps each answer for its TTL, negative answers included (RFC 2308
section 5), so that a burst of mail from one domain costs one query.
Each check asks through its own L{Lookups}, which bounds every lookup by
the per-lookup timeout and by the check's deadline (C{--auth-timeout}).

Everything here may be called from many threads at once: dnspython's
resolver keeps each resolution's state apart and its cache has a lock.
"""

from __future__ import annotations

import threading
import time
from typing import Callable, Optional

import dns.exception
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.resolver

# How many answers the cache keeps at most (least recently used go first).
CACHE_SIZE = 10000


class TemporaryDNSError(Exception):
    """
    A lookup could not be answered now: a timeout, C{SERVFAIL}, no server
    to ask, or the message's time budget (C{--auth-timeout}) spent.  The
    method that needed it is C{temperror} (RFC 8601 section 2.7).
    """


class Resolver:
    """
    The server process's blocking DNS resolver for sender authentication:
    one dnspython resolver and its TTL cache, shared by every check and
    every thread.

    @ivar lookupTimeout: the most one lookup may take, in seconds.
    @ivar clock: the monotonic clock deadlines are read on.
    """

    def __init__(
        self,
        dnsServer: Optional[tuple[str, int]],
        lookupTimeout: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        resolvConf: str = "/etc/resolv.conf",
        cacheSize: int = CACHE_SIZE,
    ) -> None:
        """
        @param dnsServer: C{(address, port)} of the one server to ask
            (C{--dns-server}); L{None} for the servers named in
            C{resolvConf}, read at the first lookup (and again at the next
            one while it cannot be read: until then every lookup raises
            L{TemporaryDNSError}).
        @param lookupTimeout: see L{lookupTimeout}.
        @param clock: see L{clock}.
        @param resolvConf: the system's resolver configuration.
        @param cacheSize: how many answers the cache keeps at most.
        """
        self.lookupTimeout = lookupTimeout
        self.clock = clock
        self._cache = dns.resolver.LRUCache(cacheSize)
        self._resolvConf = resolvConf
        self._configureLock = threading.Lock()
        self._resolver: Optional[dns.resolver.Resolver] = None
        if dnsServer is not None:
            address, port = dnsServer
            resolver = self._newResolver()
            resolver.nameservers = [address]
            resolver.port = port
            self._resolver = resolver

    def _newResolver(self) -> dns.resolver.Resolver:
        """
        A dnspython resolver that asks nobody yet, with our cache.
        """
        resolver = dns.resolver.Resolver(configure=False)
        resolver.cache = self._cache
        resolver.use_search_by_default = False
        return resolver

    def _configured(self) -> dns.resolver.Resolver:
        """
        The dnspython resolver, configured from C{/etc/resolv.conf} on
        first use.

        @raise TemporaryDNSError: the file cannot be read or names no
            server.
        """
        resolver = self._resolver
        if resolver is not None:
            return resolver
        with self._configureLock:
            if self._resolver is None:
                resolver = self._newResolver()
                try:
                    resolver.read_resolv_conf(self._resolvConf)
                except (dns.resolver.NoResolverConfiguration, ValueError) as e:
                    raise TemporaryDNSError(f"no DNS server to ask ({self._resolvConf}: {e})") from e
                self._resolver = resolver
            return self._resolver

    def lookups(self, deadline: float) -> "Lookups":
        """
        The lookups of one check, all of them over by C{deadline}.

        @param deadline: a time on L{clock}.
        """
        return Lookups(self, deadline)


class Lookups:
    """
    One check's DNS lookups: each bounded by the resolver's per-lookup
    timeout and by the check's deadline, past which a lookup raises at
    once, cached answers included (the check is over).

    @ivar deadline: the check's deadline, on the resolver's clock.
    @ivar queries: how many lookups went to the network rather than being
        answered from the cache.
    """

    def __init__(self, resolver: Resolver, deadline: float) -> None:
        """
        @param resolver: the L{Resolver} to ask.
        @param deadline: see L{deadline}.
        """
        self._resolver = resolver
        self.deadline = deadline
        self.queries = 0
        self._lock = threading.Lock()

    def records(self, name: str, rdtype: str) -> list[dns.rdata.Rdata]:
        """
        The records of type C{rdtype} at C{name}, CNAMEs followed.

        @param name: a domain name, absolute whether or not it ends in a
            dot; a name that cannot exist (an empty label, a label over 63
            octets, bad IDNA) has no records (RFC 7208 section 4.3).
        @param rdtype: C{"A"}, C{"AAAA"}, C{"MX"}, C{"PTR"}, C{"TXT"}...
        @return: the records; empty for C{NXDOMAIN} or no data.
        @raise TemporaryDNSError: a timeout, C{SERVFAIL} or any other
            failure to get an answer, no server to ask, or the deadline
            passed.
        """
        remaining = self.deadline - self._resolver.clock()
        if remaining <= 0:
            raise TemporaryDNSError(f"{name}/{rdtype}: the time budget is spent")
        try:
            qname = dns.name.from_text(name.rstrip(".") + ".")
        except (dns.exception.DNSException, UnicodeError, ValueError):
            return []
        if qname == dns.name.root:
            return []
        kind = dns.rdatatype.from_text(rdtype)
        cache = self._resolver._cache
        answer = cache.get((qname, kind, dns.rdataclass.IN))
        if answer is None:
            negative = cache.get((qname, dns.rdatatype.ANY, dns.rdataclass.IN))
            if negative is not None and negative.response.rcode() == dns.rcode.NXDOMAIN:
                return []
            answer = self._ask(qname, kind, min(self._resolver.lookupTimeout, remaining))
            if answer is None:
                return []
        return list(answer.rrset) if answer.rrset is not None else []

    def _ask(self, qname: dns.name.Name, kind: dns.rdatatype.RdataType,
             lifetime: float) -> Optional[dns.resolver.Answer]:
        """
        Ask the server (the resolver caches what it hears).

        @return: the answer, L{None} for C{NXDOMAIN}.
        @raise TemporaryDNSError: see L{records}.
        """
        resolver = self._resolver._configured()
        with self._lock:
            self.queries += 1
        try:
            return resolver.resolve(qname, kind, search=False, lifetime=lifetime, raise_on_no_answer=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.YXDOMAIN):
            return None
        except dns.exception.Timeout as e:
            raise TemporaryDNSError(f"{qname}/{kind.name}: no answer in time") from e
        except dns.resolver.NoNameservers as e:
            raise TemporaryDNSError(f"{qname}/{kind.name}: {e}") from e
        except dns.exception.DNSException as e:
            raise TemporaryDNSError(f"{qname}/{kind.name}: {e}") from e

    def txt(self, name: str) -> list[bytes]:
        """
        The TXT records at C{name}, each record's strings joined into one
        (RFC 7208 section 3.3, RFC 6376 section 3.6.2.2, RFC 7489
        section 6.1).

        @return: one L{bytes} per record; empty for C{NXDOMAIN} or no data.
        @raise TemporaryDNSError: see L{records}.
        """
        return [b"".join(r.strings) for r in self.records(name, "TXT")]
