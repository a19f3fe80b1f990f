"""
Certificates for TLS tests, made on the spot with C{cryptography}: a CA,
server certificates it signs (valid, expired), and a key that matches
nothing.  EC P-256 keys, quick to generate.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from typing import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass
class Authority:
    """
    A certificate authority: its key, its certificate, and the PEM file of
    the certificate for clients to trust.
    """

    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate
    path: str


def _now() -> datetime.datetime:
    """
    The current time, in UTC.
    """
    return datetime.datetime.now(datetime.timezone.utc)


def newKey() -> ec.EllipticCurvePrivateKey:
    """
    A fresh private key.
    """
    return ec.generate_private_key(ec.SECP256R1())


def writeKey(key: ec.EllipticCurvePrivateKey, path: str) -> str:
    """
    Write C{key} unencrypted as PEM to C{path}.
    """
    with open(path, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    return path


def writeCertificate(certificate: x509.Certificate, path: str) -> str:
    """
    Write C{certificate} as PEM to C{path}.
    """
    with open(path, "wb") as f:
        f.write(certificate.public_bytes(serialization.Encoding.PEM))
    return path


def makeAuthority(directory: str, name: str = "smtpmx test CA") -> Authority:
    """
    A self-signed CA, its certificate written to C{directory/ca.pem}.
    """
    key = newKey()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = _now()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Authority(key, certificate, writeCertificate(certificate, os.path.join(directory, "ca.pem")))


def makeServerCertificate(
    authority: Authority,
    directory: str,
    prefix: str = "server",
    names: Sequence[str] = ("localhost",),
    addresses: Sequence[str] = ("127.0.0.1",),
    validDays: tuple[float, float] = (-1, 30),
) -> tuple[str, str]:
    """
    A server certificate signed by C{authority}, for C{names} and
    C{addresses}, valid from C{validDays[0]} to C{validDays[1]} days from
    now (both negative: expired).

    @return: the paths of the certificate and key PEM files,
        C{directory/prefix.pem} and C{directory/prefix.key}.
    """
    key = newKey()
    now = _now()
    alternatives = [x509.DNSName(n) for n in names] + [
        x509.IPAddress(ipaddress.ip_address(a)) for a in addresses
    ]
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(authority.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now + datetime.timedelta(days=validDays[0]))
        .not_valid_after(now + datetime.timedelta(days=validDays[1]))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(alternatives), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(authority.key.public_key()),
            critical=False,
        )
        .sign(authority.key, hashes.SHA256())
    )
    return (
        writeCertificate(certificate, os.path.join(directory, prefix + ".pem")),
        writeKey(key, os.path.join(directory, prefix + ".key")),
    )


def makeExpiredCertificate(authority: Authority, directory: str) -> tuple[str, str]:
    """
    A server certificate for C{localhost} that expired yesterday.
    """
    return makeServerCertificate(authority, directory, prefix="old", validDays=(-30, -1))


def makeStrayKey(directory: str) -> str:
    """
    A private key that belongs to no certificate, written to
    C{directory/stray.key}.
    """
    return writeKey(newKey(), os.path.join(directory, "stray.key"))
