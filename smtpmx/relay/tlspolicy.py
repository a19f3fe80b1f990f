"""
The relay client's TLS policy (C{--relay-tls}; docs/relay.rst): whether a
session with a next hop uses STARTTLS (RFC 3207), whether the next hop's
certificate must be verified, and what happens when TLS cannot be had.

L{TLSPolicy} is the one list of the modes: the configuration checks the
option against it and the relay client decides with it.  The module keeps
to the decisions and the TLS client options; the protocol does the
handshake and the transaction asks the policy at each turn.
"""

from __future__ import annotations

import enum
from typing import Callable, Optional

from twisted.internet.defer import Deferred
from twisted.internet.ssl import (
    Certificate,
    CertificateOptions,
    TLSVersion,
    optionsForClientTLS,
    platformTrust,
    trustRootFromCertificates,
)


class TLSPolicy(enum.Enum):
    """
    How the relay client uses TLS with a next hop.

    @cvar NONE: never STARTTLS, even when offered.
    @cvar MAY: opportunistic TLS: STARTTLS when offered, the certificate
        not checked; in clear when it is not offered, refused, or when the
        handshake fails (then on a new connection).
    @cvar VERIFY: STARTTLS required and the certificate must name the next
        hop and chain to a trusted root; otherwise the next hop is not
        used and nothing is sent in clear.
    """

    NONE = "none"
    MAY = "may"
    VERIFY = "verify"

    @property
    def wantsTLS(self) -> bool:
        """
        Whether STARTTLS is sent when the next hop offers it.
        """
        return self is not TLSPolicy.NONE

    @property
    def requiresTLS(self) -> bool:
        """
        Whether a session without TLS may carry no transaction: STARTTLS
        not offered or refused, or a failed handshake, make the next hop
        unusable.
        """
        return self is TLSPolicy.VERIFY

    @property
    def verifiesCertificate(self) -> bool:
        """
        Whether a session that did STARTTLS counts as verified (the
        certificate was checked during the handshake).
        """
        return self is TLSPolicy.VERIFY

    @property
    def retriesInClear(self) -> bool:
        """
        Whether a failed TLS handshake is followed by a new connection in
        clear, as Postfix does: a broken TLS stack at the next hop must not
        stop mail that may go in clear.
        """
        return self is TLSPolicy.MAY


def readCertificates(path: str) -> list[Certificate]:
    """
    Every certificate in a PEM file (blocking: run it in a thread).

    @raise ValueError: the file holds no certificate.
    """
    with open(path, "rb") as f:
        data = f.read()
    marker = b"-----BEGIN CERTIFICATE-----"
    blocks = [marker + part for part in data.split(marker)[1:]]
    certificates = [Certificate.loadPEM(block) for block in blocks]
    if not certificates:
        raise ValueError("no certificate in it")
    return certificates


async def clientTLSOptions(
    policy: TLSPolicy,
    hostName: str,
    trustRoot: Optional[str],
    runBlocking: Callable[..., Deferred],
):
    """
    The TLS client options for a session with a next hop: TLS 1.2 at
    least; for L{TLSPolicy.VERIFY} a certificate for C{hostName} from
    C{trustRoot} (or the system's roots), for L{TLSPolicy.MAY} any
    certificate.

    @param policy: the TLS policy.
    @param hostName: the name the next hop's certificate must carry.
    @param trustRoot: a PEM file of CA certificates, or L{None} for the
        system's.
    @param runBlocking: runs a blocking callable off the reactor thread.

    @return: the options (an C{IOpenSSLClientConnectionCreator} or
        L{CertificateOptions}), or L{None} for L{TLSPolicy.NONE}.
    @raise Exception: the CA certificates cannot be read.
    """
    if policy is TLSPolicy.VERIFY:
        if trustRoot is None:
            root = platformTrust()
        else:
            root = trustRootFromCertificates(await runBlocking(readCertificates, trustRoot))
        return optionsForClientTLS(
            hostName,
            trustRoot=root,
            extraCertificateOptions={"raiseMinimumTo": TLSVersion.TLSv1_2},
        )
    if policy is TLSPolicy.MAY:
        return CertificateOptions(verify=False, raiseMinimumTo=TLSVersion.TLSv1_2)
    return None
