"""
Tests for L{smtpmx.tls.serverTLSOptions}: a good certificate chain gives
TLS options, and every broken one stops start-up with one clear line.
"""

import datetime
import os
import shutil
import tempfile

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from twisted.internet.ssl import CertificateOptions
from twisted.trial.unittest import SynchronousTestCase

from smtpmx.config import ConfigError
from smtpmx.tls import certificateOf, expiryWarning, exportPEM, fromPEM, serverTLSOptions

NOW = datetime.datetime(2030, 6, 1, tzinfo=datetime.timezone.utc)
DAY = datetime.timedelta(days=1)


def makeKey():
    """
    A new private key (small and fast: P-256).
    """
    return ec.generate_private_key(ec.SECP256R1())


def makeCertificate(subject, key, issuer=None, issuerKey=None, notBefore=NOW - DAY,
                    notAfter=NOW + 30 * DAY, ca=False):
    """
    A certificate for C{subject}'s C{key}, signed by the issuer (itself
    when none is given).
    """
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    issuerName = issuer.subject if issuer is not None else name
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuerName)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(notBefore)
        .not_valid_after(notAfter)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(subject)]), critical=False
        )
    return builder.sign(issuerKey or key, hashes.SHA256())


def pem(*objects) -> bytes:
    """
    PEM of certificates and keys, concatenated.
    """
    out = b""
    for o in objects:
        if isinstance(o, x509.Certificate):
            out += o.public_bytes(serialization.Encoding.PEM)
        else:
            out += o.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
    return out


class ServerTLSOptionsTests(SynchronousTestCase):
    """
    Reading the STARTTLS certificate and key.
    """

    def setUp(self):
        """
        A CA, an intermediate and a server certificate, in a temporary
        directory.
        """
        self.dir = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.caKey = makeKey()
        self.ca = makeCertificate("Test CA", self.caKey, ca=True)
        self.interKey = makeKey()
        self.inter = makeCertificate("Test Intermediate", self.interKey,
                                     self.ca, self.caKey, ca=True)
        self.key = makeKey()
        self.cert = makeCertificate("mx.example.org", self.key, self.inter, self.interKey)

    def write(self, name, data: bytes) -> str:
        """
        Write a file in the temporary directory.
        """
        path = os.path.join(self.dir, name)
        with open(path, "wb") as f:
            f.write(data)
        return path

    def options(self, certPEM, keyPEM):
        """
        L{serverTLSOptions} of the given PEM data, as of L{NOW}.
        """
        return serverTLSOptions(
            self.write("cert.pem", certPEM), self.write("key.pem", keyPEM), now=lambda: NOW
        )

    def test_good(self):
        """
        A good certificate and key give TLS options with TLS 1.2 as the
        minimum, usable to make a server context.
        """
        options = self.options(pem(self.cert), pem(self.key))
        self.assertIsInstance(options, CertificateOptions)
        context = options.getContext()
        self.assertIsInstance(context, SSL.Context)
        self.assertEqual(options._options & SSL.OP_NO_TLSv1_1, SSL.OP_NO_TLSv1_1)

    def test_handedToWorkers(self):
        """
        The certificate chain and key, exported as the parent of
        C{--workers} hands them to its workers, make the same TLS options.
        """
        options = self.options(pem(self.cert, self.inter), pem(self.key))
        certData, keyData = exportPEM(options)
        again = fromPEM(certData, keyData, "cert.pem", "key.pem")
        self.assertEqual(certificateOf(again), self.cert)
        self.assertEqual(
            [c.to_cryptography() for c in again.extraCertChain], [self.inter]
        )
        self.assertEqual(
            again.privateKey.to_cryptography_key().private_numbers(), self.key.private_numbers()
        )
        self.assertIsInstance(again.getContext(), SSL.Context)

    def test_chain(self):
        """
        Intermediate certificates after the server's are sent along.
        """
        options = self.options(pem(self.cert, self.inter), pem(self.key))
        self.assertEqual(len(options.extraCertChain), 1)
        self.assertEqual(
            options.extraCertChain[0].to_cryptography().subject, self.inter.subject
        )

    def test_combinedFile(self):
        """
        The key may be in the same file as the certificate.
        """
        path = self.write("both.pem", pem(self.cert, self.key))
        serverTLSOptions(path, path, now=lambda: NOW)

    def test_mismatch(self):
        """
        A key that is not the certificate's is refused.
        """
        e = self.assertRaises(ConfigError, self.options, pem(self.cert), pem(makeKey()))
        self.assertIn("does not match", str(e))

    def test_expired(self):
        """
        An expired certificate is refused, with its date.
        """
        old = makeCertificate("mx.example.org", self.key, notBefore=NOW - 60 * DAY,
                              notAfter=NOW - DAY)
        e = self.assertRaises(ConfigError, self.options, pem(old), pem(self.key))
        self.assertIn("expired", str(e))

    def test_notYetValid(self):
        """
        A certificate that is not valid yet is refused.
        """
        future = makeCertificate("mx.example.org", self.key, notBefore=NOW + DAY,
                                 notAfter=NOW + 60 * DAY)
        e = self.assertRaises(ConfigError, self.options, pem(future), pem(self.key))
        self.assertIn("not valid before", str(e))

    def test_unreadable(self):
        """
        A missing file is refused, naming it.
        """
        missing = os.path.join(self.dir, "missing.pem")
        key = self.write("key.pem", pem(self.key))
        e = self.assertRaises(ConfigError, serverTLSOptions, missing, key)
        self.assertIn(missing, str(e))
        cert = self.write("cert.pem", pem(self.cert))
        e = self.assertRaises(ConfigError, serverTLSOptions, cert, missing)
        self.assertIn(missing, str(e))

    def test_notPEM(self):
        """
        Files that hold no PEM certificate or key are refused.
        """
        e = self.assertRaises(ConfigError, self.options, b"garbage", pem(self.key))
        self.assertIn("no PEM certificate", str(e))
        e = self.assertRaises(ConfigError, self.options, pem(self.cert), b"garbage")
        self.assertIn("no usable PEM private key", str(e))

    def test_encryptedKey(self):
        """
        An encrypted key is refused: nobody is there to type a passphrase.
        """
        encrypted = self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
        e = self.assertRaises(ConfigError, self.options, pem(self.cert), encrypted)
        self.assertIn("encrypted", str(e))

    def test_oneLine(self):
        """
        Every error is a single line.
        """
        e = self.assertRaises(ConfigError, self.options, pem(self.cert), pem(makeKey()))
        self.assertNotIn("\n", str(e))

    def test_expiredAcceptedWithoutValidityCheck(self):
        """
        At start-up an expired certificate (or one not valid yet) is used
        all the same (C{checkValidity=False}): an MX that does not start
        loses mail.  The other checks still hold.
        """
        old = makeCertificate("mx.example.org", self.key, notBefore=NOW - 60 * DAY,
                              notAfter=NOW - DAY)
        options = serverTLSOptions(
            self.write("old.pem", pem(old)), self.write("key.pem", pem(self.key)),
            now=lambda: NOW, checkValidity=False,
        )
        self.assertEqual(certificateOf(options).serial_number, old.serial_number)
        e = self.assertRaises(
            ConfigError, serverTLSOptions, self.write("old.pem", pem(old)),
            self.write("stray.key", pem(makeKey())), now=lambda: NOW, checkValidity=False,
        )
        self.assertIn("does not match", str(e))


class ExpiryWarningTests(SynchronousTestCase):
    """
    L{expiryWarning} tells of a certificate past its end, not valid yet,
    or within 14 days of its end.
    """

    def setUp(self):
        """
        A key to make certificates for.
        """
        self.key = makeKey()

    def certificate(self, notBefore, notAfter):
        """
        A certificate valid from C{notBefore} to C{notAfter}.
        """
        return makeCertificate("mx.example.org", self.key, notBefore=notBefore, notAfter=notAfter)

    def test_farFromItsEnd(self):
        """
        Nothing to say of a certificate with more than 14 days left.
        """
        cert = self.certificate(NOW - DAY, NOW + 15 * DAY)
        self.assertIsNone(expiryWarning(cert, "/etc/cert.pem", NOW))

    def test_within14Days(self):
        """
        14 days or less before its end: a warning naming the file, the
        days left and the date, telling what to do.
        """
        cert = self.certificate(NOW - DAY, NOW + 14 * DAY)
        warning = expiryWarning(cert, "/etc/cert.pem", NOW)
        self.assertIn("/etc/cert.pem expires in 14 days", warning)
        self.assertIn("2030-06-15", warning)
        self.assertIn("SIGHUP", warning)
        cert = self.certificate(NOW - DAY, NOW + DAY + datetime.timedelta(hours=1))
        self.assertIn("expires in 1 day,", expiryWarning(cert, "/etc/cert.pem", NOW))
        cert = self.certificate(NOW - DAY, NOW + datetime.timedelta(hours=3))
        self.assertIn("expires within a day", expiryWarning(cert, "/etc/cert.pem", NOW))

    def test_expired(self):
        """
        Past its end: a warning that it expired, and when.
        """
        cert = self.certificate(NOW - 60 * DAY, NOW - DAY)
        warning = expiryWarning(cert, "/etc/cert.pem", NOW)
        self.assertIn("/etc/cert.pem expired on 2030-05-31", warning)
        self.assertNotIn("\n", warning)

    def test_notYetValid(self):
        """
        Before its start: a warning that it is not valid yet.
        """
        cert = self.certificate(NOW + DAY, NOW + 60 * DAY)
        self.assertIn("not valid before 2030-06-02", expiryWarning(cert, "/etc/cert.pem", NOW))
