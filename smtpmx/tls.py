"""
TLS for the server's STARTTLS (RFC 3207): the certificate and key are read
and checked at start-up, so that a wrong file stops start-up with one
clear line instead of failing every handshake later, and again on
C{SIGHUP} (L{smtpmx.reload}).

A certificate that is out of its validity period does not stop start-up
(an MX that does not start loses mail, and senders that use opportunistic
TLS deliver anyway): L{expiryWarning} says so, as it says when the end is
near.
"""

from __future__ import annotations

import datetime
from typing import Callable, Optional

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from OpenSSL.crypto import X509, PKey
from twisted.internet.ssl import CertificateOptions, TLSVersion

from smtpmx.config import ConfigError

# A certificate whose end is nearer than this is warned about.
EXPIRY_WARNING = datetime.timedelta(days=14)


def _readFile(path: str, what: str) -> bytes:
    """
    The bytes of C{path}.

    @raise ConfigError: it cannot be read.
    """
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ConfigError(f"cannot read the TLS {what} {path}: {e.strerror or e}") from None


def _publicBytes(key) -> bytes:
    """
    A public key in a form that compares equal for equal keys.
    """
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def loadCertificateChain(
    certPath: str,
    keyPath: str,
    now: Optional[Callable[[], datetime.datetime]] = None,
    checkValidity: bool = True,
):
    """
    Read and check a certificate chain and its private key.

    @param certPath: a PEM file holding the server's certificate first,
        then any intermediate certificates.
    @param keyPath: a PEM file holding the certificate's private key (not
        encrypted); it may be the same file as C{certPath}.
    @param now: gives the current time (UTC), for the validity check.
    @param checkValidity: whether a certificate that is not valid now
        (expired, or not yet valid) is refused.

    @return: the certificates (a L{list} of L{x509.Certificate}, the
        server's first) and the private key.

    @raise ConfigError: a file is unreadable or not PEM, the key does not
        belong to the certificate, or (with C{checkValidity}) the
        certificate is not valid now.
    """
    certData = _readFile(certPath, "certificate")
    keyData = _readFile(keyPath, "key")
    return parseCertificateChain(certData, keyData, certPath, keyPath, now, checkValidity)


def parseCertificateChain(
    certData: bytes,
    keyData: bytes,
    certPath: str,
    keyPath: str,
    now: Optional[Callable[[], datetime.datetime]] = None,
    checkValidity: bool = True,
):
    """
    Check a certificate chain and its private key, given as PEM bytes.

    @param certPath: where the certificates were read, for messages.
    @param keyPath: where the key was read, for messages.

    @return: see L{loadCertificateChain}.

    @raise ConfigError: see L{loadCertificateChain}.
    """
    if now is None:
        now = lambda: datetime.datetime.now(datetime.timezone.utc)  # noqa: E731
    try:
        certificates = x509.load_pem_x509_certificates(certData)
    except ValueError:
        raise ConfigError(
            f"the TLS certificate {certPath} holds no PEM certificate"
        ) from None
    try:
        key = serialization.load_pem_private_key(keyData, password=None)
    except TypeError:
        raise ConfigError(
            f"the TLS key {keyPath} is encrypted; give an unencrypted key"
        ) from None
    except (ValueError, UnsupportedAlgorithm) as e:
        raise ConfigError(
            f"the TLS key {keyPath} holds no usable PEM private key"
            f" ({' '.join(str(e).split()) or type(e).__name__})"
        ) from None
    leaf = certificates[0]
    if _publicBytes(leaf.public_key()) != _publicBytes(key.public_key()):
        raise ConfigError(
            f"the TLS key {keyPath} does not match the certificate {certPath}"
        )
    if not checkValidity:
        return certificates, key
    current = now()
    if current < leaf.not_valid_before_utc:
        raise ConfigError(
            f"the TLS certificate {certPath} is not valid before"
            f" {leaf.not_valid_before_utc:%Y-%m-%d %H:%M:%S} UTC"
        )
    if current > leaf.not_valid_after_utc:
        raise ConfigError(
            f"the TLS certificate {certPath} expired on"
            f" {leaf.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC"
        )
    return certificates, key


def serverTLSOptions(
    certPath: str,
    keyPath: str,
    now: Optional[Callable[[], datetime.datetime]] = None,
    checkValidity: bool = True,
) -> CertificateOptions:
    """
    The context factory for the server's STARTTLS: TLS 1.2 or newer, with
    the intermediate certificates of C{certPath} sent along.

    @param certPath: PEM certificate chain, the server's certificate first.
    @param keyPath: PEM private key of that certificate.
    @param now: gives the current time (UTC), for the validity check.
    @param checkValidity: whether a certificate that is not valid now is
        refused (at start-up it is not: L{expiryWarning} tells of it).

    @raise ConfigError: see L{loadCertificateChain}.
    """
    certificates, key = loadCertificateChain(certPath, keyPath, now, checkValidity)
    return contextFactory(certificates, key, certPath)


def contextFactory(certificates: list, key, certPath: str) -> CertificateOptions:
    """
    The server's context factory for a checked chain (L{parseCertificateChain}).

    @param certPath: where the certificates were read, for messages.

    @raise ConfigError: OpenSSL cannot use them.
    """
    try:
        return CertificateOptions(
            privateKey=PKey.from_cryptography_key(key),
            certificate=X509.from_cryptography(certificates[0]),
            extraCertChain=[X509.from_cryptography(c) for c in certificates[1:]],
            raiseMinimumTo=TLSVersion.TLSv1_2,
        )
    except Exception as e:
        raise ConfigError(
            f"cannot use the TLS certificate {certPath}:"
            f" {' '.join(str(e).split()) or type(e).__name__}"
        ) from None


def certificateOf(options: CertificateOptions) -> x509.Certificate:
    """
    The server's certificate of TLS options made by L{serverTLSOptions}.
    """
    return options.certificate.to_cryptography()


def describe(certificate: x509.Certificate) -> str:
    """
    A certificate in a few words for the log: its subject and the end of
    its validity.
    """
    return (
        f"{certificate.subject.rfc4514_string() or 'no subject'},"
        f" valid until {certificate.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC"
    )


def expiryWarning(
    certificate: x509.Certificate,
    path: str,
    now: datetime.datetime,
    within: datetime.timedelta = EXPIRY_WARNING,
) -> Optional[str]:
    """
    What to warn about a certificate in force: that it expired, is not
    valid yet, or expires within C{within}; L{None} when all is well.

    @param path: the certificate's file, to name it.
    @param now: the current time (UTC).
    """
    end = certificate.not_valid_after_utc
    start = certificate.not_valid_before_utc
    if now > end:
        return (
            f"the TLS certificate {path} expired on {end:%Y-%m-%d %H:%M:%S} UTC:"
            " clients that check it refuse it; renew it and send smtpmx SIGHUP"
        )
    if now < start:
        return (
            f"the TLS certificate {path} is not valid before"
            f" {start:%Y-%m-%d %H:%M:%S} UTC (is the clock right?)"
        )
    left = end - now
    if left <= within:
        days = left.days
        when = "within a day" if days == 0 else f"in {days} day{'s' if days != 1 else ''}"
        return (
            f"the TLS certificate {path} expires {when}, on {end:%Y-%m-%d %H:%M:%S} UTC:"
            " renew it and send smtpmx SIGHUP"
        )
    return None


def exportPEM(options: CertificateOptions) -> tuple[bytes, bytes]:
    """
    The certificate chain (the server's certificate first) and the
    private key of a context factory, as PEM: what the parent of
    C{--workers} hands its workers, which may no longer be able to read
    a key only root can read (L{fromPEM}).
    """
    chain = [options.certificate, *(options.extraCertChain or [])]
    certData = b"".join(
        c.to_cryptography().public_bytes(serialization.Encoding.PEM) for c in chain
    )
    keyData = options.privateKey.to_cryptography_key().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return certData, keyData


def fromPEM(certData: bytes, keyData: bytes, certPath: str, keyPath: str) -> CertificateOptions:
    """
    The server's context factory from what L{exportPEM} gave, its
    validity not checked (it was when it was read).

    @param certPath: where the certificates were read, for messages.
    @param keyPath: where the key was read, for messages.
    """
    certificates, key = parseCertificateChain(certData, keyData, certPath, keyPath, checkValidity=False)
    return contextFactory(certificates, key, certPath)
