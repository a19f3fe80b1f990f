"""
The world of the sender authentication tests (and of
C{bench/auth_bench.py}): signing keys made once per run, a DNS zone
publishing the SPF, DKIM and DMARC records of a few test domains (served
by L{tests.dnszone.RunningDNS}), and messages signed and sealed with
dkimpy as those domains' servers would.

Every domain lives under the unlisted TLD C{.test}, whose organizational
domains are the last two labels.  The client the records are about is
127.0.0.1: the SPF records authorize it or not.
"""

from __future__ import annotations

import base64
import functools
from dataclasses import dataclass

import dkim

from tests.dnszone import RunningDNS, zoneSource

# The HELO name of the test client.
CLIENT_HELO = "client.helo.test"
# The header fields every test signature covers.
SIGNED = [b"from", b"to", b"subject", b"message-id", b"date"]


@dataclass(frozen=True)
class Keys:
    """
    The signing keys of the test domains, made once per test run.

    @ivar rsaPem: a 2048-bit RSA private key, PEM (PKCS#1).
    @ivar rsaRecord: its DKIM key record (RFC 6376 section 3.6.1).
    @ivar edSeed: an Ed25519 private key, base64 (as dkimpy takes it).
    @ivar edRecord: its DKIM key record (RFC 8463 section 4).
    """

    rsaPem: bytes
    rsaRecord: bytes
    edSeed: bytes
    edRecord: bytes


@functools.cache
def keys() -> Keys:
    """
    Make the test keys (once: a 2048-bit RSA key takes a moment).
    """
    import nacl.signing
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    public = private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    ed = nacl.signing.SigningKey.generate()
    return Keys(
        rsaPem=pem,
        rsaRecord=b"v=DKIM1; k=rsa; p=" + base64.b64encode(public),
        edSeed=base64.b64encode(bytes(ed)),
        edRecord=b"v=DKIM1; k=ed25519; p=" + base64.b64encode(bytes(ed.verify_key)),
    )


def zoneRecords(ttl: int = 1) -> list[tuple]:
    """
    The records of the test zone: SPF policies, DKIM keys and DMARC
    policies of the test domains (see each domain's comment).  A key
    record, longer than 255 bytes, is one TXT record of several strings
    (L{tests.dnszone.zoneSource} cuts it; RFC 6376 section 3.6.2.2 joins
    them).

    @param ttl: every record's TTL in seconds.
    """
    k = keys()
    rsa, ed = k.rsaRecord.decode(), k.edRecord.decode()
    here = "v=spf1 ip4:127.0.0.1 -all"
    elsewhere = "ip4:192.0.2.1"
    records = [
        # The domain of the tests: its mail comes from 127.0.0.1, signed by
        # either key, and it asks for forgeries to be rejected.
        ("TXT", "example.test", here),
        ("TXT", "rsa._domainkey.example.test", rsa),
        ("TXT", "ed._domainkey.example.test", ed),
        ("TXT", "revoked._domainkey.example.test", "v=DKIM1; k=rsa; p="),
        ("TXT", "_dmarc.example.test", "v=DMARC1; p=reject"),
        # SPF results, for MAIL FROM domains without DMARC records.
        ("TXT", "fail.test", f"v=spf1 {elsewhere} -all"),
        ("TXT", "softfail.test", f"v=spf1 {elsewhere} ~all"),
        ("TXT", "neutral.test", f"v=spf1 {elsewhere} ?all"),
        ("TXT", "twice.test", here),
        ("TXT", "twice.test", f"v=spf1 {elsewhere} -all"),
        ("TXT", "badsyntax.test", "v=spf1 ip4:127.0.0.1 frobnicate -all"),
        # none.test has no record at all (NXDOMAIN).
        # The HELO name of the client, checked for the null sender; the
        # domain wants its bounces authenticated.
        ("TXT", CLIENT_HELO, here),
        ("TXT", "_dmarc.helo.test", "v=DMARC1; p=reject"),
        # Policies for failures.
        ("TXT", "_dmarc.quarantine.test", "v=DMARC1; p=quarantine"),
        ("TXT", "_dmarc.monitor.test", "v=DMARC1; p=none"),
        ("TXT", "_dmarc.sampled.test", "v=DMARC1; p=reject; pct=0"),
        # A subdomain policy found through the organizational domain.
        ("TXT", "_dmarc.org.test", "v=DMARC1; p=none; sp=reject"),
        ("TXT", "org.test", here),
        ("TXT", "rsa._domainkey.org.test", rsa),
        # Strict alignment for both identifiers.
        ("TXT", "_dmarc.strict.test", "v=DMARC1; p=quarantine; adkim=s; aspf=s"),
        ("TXT", "strict.test", here),
        ("TXT", "rsa._domainkey.strict.test", rsa),
        # A forwarder that seals what it forwards (ARC).
        ("TXT", "forwarder.test", here),
        ("TXT", "arc._domainkey.forwarder.test", rsa),
    ]
    return [record + ({"ttl": ttl},) for record in records]


def startDNS(addCleanup, ttl: int = 1) -> RunningDNS:
    """
    Start the loopback DNS server of the test zone.

    @param ttl: every record's TTL, and the negative TTL, in seconds.
    """
    zone = zoneSource("test", zoneRecords(ttl), negativeTtl=ttl)
    return RunningDNS.start(addCleanup, zone, "example.test")


def dkimSigned(
    data: bytes, domain: str, selector: str, algorithm: str = "rsa",
    canonicalize: tuple[bytes, bytes] = (b"relaxed", b"relaxed"),
) -> bytes:
    """
    C{data} with a C{DKIM-Signature:} field of C{domain} on top, made by
    dkimpy with the test key C{algorithm} (C{"rsa"}: rsa-sha256,
    C{"ed"}: ed25519-sha256).
    """
    k = keys()
    key, name = (k.rsaPem, b"rsa-sha256") if algorithm == "rsa" else (k.edSeed, b"ed25519-sha256")
    field = dkim.sign(
        data, selector.encode(), domain.encode(), key, signature_algorithm=name,
        canonicalize=canonicalize, include_headers=SIGNED,
    )
    return field + data


def arcSealed(data: bytes) -> bytes:
    """
    C{data} as C{forwarder.test} forwards it: with its own
    C{Authentication-Results:} field and an ARC set (RFC 8617 section 4)
    sealed with the test RSA key, on top.
    """
    results = (
        b"Authentication-Results: forwarder.test; spf=pass smtp.mailfrom=example.test;"
        b" dkim=pass header.d=example.test\r\n"
    )
    data = results + data
    arcSet = dkim.arc_sign(
        data, b"arc", b"forwarder.test", keys().rsaPem, b"forwarder.test",
        include_headers=SIGNED,
    )
    return b"".join(arcSet) + data
