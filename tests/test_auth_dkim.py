"""
Tests for DKIM and ARC verification from the spool file
(L{smtpmx.auth.dkim}) and for the streamed body hashes it relies on
(L{smtpmx.auth.bodyhash}).

Messages are signed in the test with dkimpy (C{dkim.sign}, C{dkim.arc_sign})
with keys made once for the module, their key records served by a
dict-backed C{txt}; dkimpy's own whole-message verification and
C{canonicalize_body} are the oracles.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import io
import os
import re
import shutil
import tempfile
import time
from typing import Optional

import dkim
import nacl.encoding
import nacl.signing
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from dkim.canonicalization import Relaxed, Simple
from hypothesis import given, settings, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from smtpmx.auth.bodyhash import BodyHasher, BodyHashSpec, LineEndings
from smtpmx.auth.dkim import (
    HEADER_LIMIT,
    MAX_FIELD_SCAN,
    MAX_SIGNATURES,
    MessageAuth,
    parseHeaderSection,
    verifyMessage,
)
from smtpmx.auth.dns import TemporaryDNSError
from smtpmx.auth.results import ArcResult, DkimResult


@functools.lru_cache(maxsize=None)
def rsaKey() -> tuple[bytes, bytes]:
    """
    A 2048-bit RSA key, made once: the private key (PEM) and its key
    record.
    """
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private, b"v=DKIM1; k=rsa; p=" + base64.b64encode(public)


@functools.lru_cache(maxsize=None)
def ed25519Key() -> tuple[bytes, bytes]:
    """
    An ed25519 key (RFC 8463), made once: the private key as dkimpy takes
    it (base64 seed) and its key record.
    """
    key = nacl.signing.SigningKey.generate()
    private = key.encode(encoder=nacl.encoding.Base64Encoder)
    public = key.verify_key.encode(encoder=nacl.encoding.Base64Encoder)
    return private, b"v=DKIM1; k=ed25519; p=" + public


class Zone:
    """
    A dict-backed C{txt}: the TXT records a test publishes, by name.

    @ivar asked: every name looked up, in order.
    @ivar temporary: names whose lookup fails for now.
    """

    def __init__(self, records: Optional[dict[str, list[bytes]]] = None) -> None:
        self.records = dict(records or {})
        self.temporary: set[str] = set()
        self.asked: list[str] = []

    def __call__(self, name: str) -> list[bytes]:
        self.asked.append(name)
        if name in self.temporary:
            raise TemporaryDNSError(name)
        return list(self.records.get(name, []))

    def dnsfunc(self, name: bytes, timeout: float = 5) -> Optional[bytes]:
        """
        The same records as dkimpy's own lookup gives them, for its
        whole-message verification.
        """
        records = self.records.get(name.decode().rstrip("."), [])
        return records[0] if records else None


def zone() -> Zone:
    """
    The test zone: an RSA key at C{sel._domainkey.example.org}, an ed25519
    key at C{ed._domainkey.example.net}, the RSA key again for the ARC
    sealers C{arc1._domainkey.relay.example} and
    C{arc2._domainkey.forwarder.example}.
    """
    return Zone(
        {
            "sel._domainkey.example.org": [rsaKey()[1]],
            "ed._domainkey.example.net": [ed25519Key()[1]],
            "arc1._domainkey.relay.example": [rsaKey()[1]],
            "arc2._domainkey.forwarder.example": [rsaKey()[1]],
        }
    )


MESSAGE = (
    b"From: Alice <alice@example.org>\r\n"
    b"To: Bob <bob@example.com>\r\n"
    b"Subject: Lunch\r\n"
    b"  on Friday\r\n"
    b"Date: Mon, 1 Jan 2024 12:00:00 +0000\r\n"
    b"Message-ID: <1@example.org>\r\n"
    b"\r\n"
    b"Hello Bob,\r\n"
    b"\r\n"
    b"shall we  have lunch\t on Friday?   \r\n"
    b"\r\n"
    b"Alice\r\n"
)


def sign(
    message: bytes,
    key: str = "rsa",
    canonicalize: tuple[bytes, bytes] = (b"relaxed", b"relaxed"),
    length: bool = False,
    algorithm: Optional[bytes] = None,
) -> bytes:
    """
    C{message} (CRLF) with a DKIM signature on top: C{sel} at
    C{example.org} with the RSA key, or C{ed} at C{example.net} with the
    ed25519 key.
    """
    if key == "rsa":
        selector, domain, private = b"sel", b"example.org", rsaKey()[0]
        algorithm = algorithm or b"rsa-sha256"
    else:
        selector, domain, private = b"ed", b"example.net", ed25519Key()[0]
        algorithm = b"ed25519-sha256"
    field = dkim.sign(
        message, selector, domain, private, canonicalize=canonicalize, length=length,
        signature_algorithm=algorithm,
    )
    return field + message


def seal(message: bytes, instance: int) -> bytes:
    """
    C{message} (CRLF) with one more ARC set on top (RFC 8617 section 5.1):
    instance 1 by C{relay.example}, which read the message's
    C{Authentication-Results:}; instance 2 by C{forwarder.example}, which
    found the chain passing.
    """
    if instance == 1:
        srvId, selector, domain = b"relay.example", b"arc1", b"relay.example"
        results = b"Authentication-Results: relay.example; dkim=pass header.d=example.org\r\n"
    else:
        srvId, selector, domain = b"forwarder.example", b"arc2", b"forwarder.example"
        results = b"Authentication-Results: forwarder.example; arc=pass\r\n"
    message = results + message
    fields = dkim.arc_sign(message, selector, domain, rsaKey()[0], srvId)
    assert fields, "dkimpy did not seal the message"
    return b"".join(fields) + message


def stored(message: bytes) -> bytes:
    """
    C{message} as the spool holds it: LF line endings.
    """
    return message.replace(b"\r\n", b"\n")


def verify(message: bytes, txt: Optional[Zone] = None, **kwargs: bool) -> MessageAuth:
    """
    L{verifyMessage} on C{message} (CRLF) as stored, with the test zone.
    """
    return verifyMessage(txt if txt is not None else zone(), io.BytesIO(stored(message)), **kwargs)


def dkimpyVerdicts(message: bytes, txt: Zone) -> list[bool]:
    """
    dkimpy's own whole-message verdict on each signature of C{message}.
    """
    verdicts = []
    count = len([1 for line in message.split(b"\r\n") if line.lower().startswith(b"dkim-signature:")])
    for index in range(min(count, MAX_SIGNATURES)):
        try:
            verdicts.append(bool(dkim.DKIM(message).verify(idx=index, dnsfunc=txt.dnsfunc)))
        except dkim.DKIMException:
            verdicts.append(False)
    return verdicts


def dkimpyChain(message: bytes, txt: Zone) -> str:
    """
    dkimpy's own whole-message verdict on the ARC chain, as a result word.
    """
    status, _, _ = dkim.arc_verify(message, dnsfunc=txt.dnsfunc)
    return {dkim.CV_Pass: "pass", dkim.CV_None: "none"}.get(status, "fail")


class ShortReads:
    """
    A message file whose reads return fewer bytes than asked, in a
    given rhythm, as a pipe or a slow disk might: the chunk boundaries fall
    anywhere.
    """

    def __init__(self, data: bytes, sizes: list[int]) -> None:
        self._file = io.BytesIO(data)
        self._sizes = sizes
        self._next = 0

    def read(self, size: int = -1) -> bytes:
        step = self._sizes[self._next % len(self._sizes)]
        self._next += 1
        return self._file.read(min(size, step) if size >= 0 else step)


def canonicalBody(body: bytes, spec: BodyHashSpec) -> bytes:
    """
    dkimpy's own canonical body for C{spec}, cut at its length.
    """
    algorithm = Simple if spec.canonicalization == "simple" else Relaxed
    canonical = algorithm.canonicalize_body(body)
    return canonical if spec.length is None else canonical[: spec.length]


def hashInChunks(body: bytes, specs: list[BodyHashSpec], cuts: list[int]) -> dict[BodyHashSpec, bytes]:
    """
    L{BodyHasher}'s digests of C{body} fed in pieces cut at C{cuts}.
    """
    hasher = BodyHasher(specs)
    points = sorted(set(c for c in cuts if 0 < c < len(body)))
    for start, end in zip([0] + points, points + [len(body)]):
        hasher.feed(body[start:end])
    return hasher.digests()


#: Bodies rich in what canonicalization cares about: CR, LF, white space.
bodies = st.binary(max_size=300) | st.lists(
    st.sampled_from([b"\r\n", b"\r", b"\n", b" ", b"\t", b"a", b"b c", b"\r\n\r\n", b"  \r\n"]), max_size=60
).map(b"".join)

specs = st.builds(
    BodyHashSpec,
    st.sampled_from(["simple", "relaxed"]),
    st.sampled_from(["sha256", "sha1"]),
    st.none() | st.integers(min_value=0, max_value=400),
)


class BodyHasherTests(SynchronousTestCase):
    """
    L{BodyHasher} gives dkimpy's body hashes, however the body is cut.
    """

    @settings(max_examples=500, deadline=None)
    @given(bodies, st.lists(specs, min_size=1, max_size=4), st.lists(st.integers(0, 300), max_size=20))
    def test_sameAsDkimpy(self, body, wanted, cuts):
        """
        For any body, any chunking and any canonicalization, hash and
        C{l=}, the streamed hash is the hash of dkimpy's C{canonicalize_body}
        cut at C{l=}.
        """
        digests = hashInChunks(body, wanted, cuts)
        for spec in wanted:
            self.assertEqual(digests[spec], hashlib.new(spec.hash, canonicalBody(body, spec)).digest(), spec)

    def test_emptyBody(self):
        """
        An empty body is one CRLF in simple canonicalization and nothing in
        relaxed (RFC 6376 sections 3.4.3 and 3.4.4), as is a body of empty
        lines.
        """
        simple, relaxed = BodyHashSpec("simple", "sha256"), BodyHashSpec("relaxed", "sha256")
        for body in (b"", b"\r\n", b"\r\n\r\n\r\n", b"  \r\n\t\r\n"):
            digests = hashInChunks(body, [simple, relaxed], [1, 2, 3])
            self.assertEqual(digests[relaxed], hashlib.sha256(b"").digest(), body)
        for body in (b"", b"\r\n", b"\r\n\r\n\r\n"):
            digests = hashInChunks(body, [simple], [1, 2, 3])
            self.assertEqual(digests[simple], hashlib.sha256(b"\r\n").digest(), body)

    def test_trailingEmptyLinesAcrossChunks(self):
        """
        Empty lines at the end are dropped even when they span many chunks,
        a CRLF cut between its CR and its LF; empty lines followed by text
        are kept.
        """
        spec = BodyHashSpec("simple", "sha256")
        body = b"a\r\n" + b"\r\n" * 5000
        self.assertEqual(hashInChunks(body, [spec], list(range(1, len(body), 3)))[spec],
                         hashlib.sha256(b"a\r\n").digest())
        body = b"a\r\n" + b"\r\n" * 5000 + b"b\r\n"
        self.assertEqual(hashInChunks(body, [spec], list(range(1, len(body), 7)))[spec],
                         hashlib.sha256(body).digest())

    def test_longWhiteSpaceRun(self):
        """
        A line of a million spaces and tabs, fed in small chunks, is one
        space in relaxed canonicalization, or nothing at the end of a line.
        """
        spec = BodyHashSpec("relaxed", "sha256")
        run = b" \t" * 500_000
        for tail, canonical in ((b"x\r\n", b"a x\r\n"), (b"\r\n", b"a\r\n")):
            body = b"a" + run + tail
            self.assertEqual(hashInChunks(body, [spec], list(range(1, len(body), 4096)))[spec],
                             hashlib.sha256(canonical).digest())

    def test_longWhiteSpaceInOneChunk(self):
        """
        A chunk holding a long run of white space within a line is read in
        linear time: no pattern backtracks over the run (that took seconds
        for one 64 KiB chunk, minutes for a message of them).
        """
        spec = BodyHashSpec("relaxed", "sha256")
        body = (b"a" + b" " * 65536 + b"x\r\n") * 4
        started = time.monotonic()
        self.assertEqual(hashInChunks(body, [spec], [])[spec], hashlib.sha256(b"a x\r\n" * 4).digest())
        self.assertLess(time.monotonic() - started, 2)

    def test_length(self):
        """
        C{l=} hashes only that many bytes of the canonical body (RFC 6376
        section 3.4.5); a length past its end hashes all of it.
        """
        body = b"Hello  world\r\nmore\r\n"
        for length, canonical in ((5, b"Hello"), (0, b""), (1000, b"Hello world\r\nmore\r\n")):
            spec = BodyHashSpec("relaxed", "sha256", length)
            self.assertEqual(hashInChunks(body, [spec], [3, 9])[spec], hashlib.sha256(canonical).digest())

    def test_specFromTags(self):
        """
        A signature's C{c=}, C{a=} and C{l=} name its body hash; C{c=}
        defaults to simple (DKIM) or to what the caller says (ARC), a lone
        header canonicalization meaning a simple body.
        """
        self.assertEqual(BodyHashSpec.fromTags({b"a": b"rsa-sha256"}), BodyHashSpec("simple", "sha256"))
        self.assertEqual(
            BodyHashSpec.fromTags({b"a": b"ed25519-sha256", b"c": b"simple/relaxed", b"l": b"12"}),
            BodyHashSpec("relaxed", "sha256", 12),
        )
        self.assertEqual(BodyHashSpec.fromTags({b"a": b"rsa-sha1", b"c": b"relaxed"}), BodyHashSpec("simple", "sha1"))
        self.assertEqual(
            BodyHashSpec.fromTags({b"a": b"rsa-sha256"}, b"relaxed/relaxed"), BodyHashSpec("relaxed", "sha256")
        )
        for tags in ({b"a": b"rsa-md5"}, {b"a": b"rsa-sha256", b"c": b"loose"}, {b"a": b"rsa-sha256", b"l": b"x"}):
            self.assertRaises(ValueError, BodyHashSpec.fromTags, tags)


class LineEndingsTests(SynchronousTestCase):
    """
    L{LineEndings} reads a message's line endings as dkimpy does.
    """

    @settings(max_examples=300, deadline=None)
    @given(st.lists(st.sampled_from([b"\r", b"\n", b"\r\n", b"a", b" "]), max_size=40).map(b"".join),
           st.lists(st.integers(0, 40), max_size=10))
    def test_anyChunking(self, data, cuts):
        """
        Each LF or CRLF becomes CRLF and a bare CR stays, wherever the
        chunks are cut (dkimpy splits lines at C{\\r?\\n}).
        """
        endings = LineEndings()
        points = sorted(set(c for c in cuts if 0 < c < len(data)))
        out = b"".join(endings.feed(data[a:b]) for a, b in zip([0] + points, points + [len(data)]))
        self.assertEqual(out + endings.flush(), re.sub(rb"\r?\n", b"\r\n", data))


class ParseHeaderSectionTests(SynchronousTestCase):
    """
    L{parseHeaderSection} splits fields as dkimpy does.
    """

    @settings(max_examples=300, deadline=None)
    @given(st.lists(st.sampled_from([b"From: a@b", b"Subject:x", b" folded", b"\tmore", b"X-A :  y ",
                                     b"From mbox line", b"no colon here", b"Bad Name: v", b""]),
                    max_size=12))
    def test_sameAsDkimpy(self, lines):
        """
        Whenever dkimpy can parse a header section, the fields are its
        fields; whenever it cannot, the section is not whole.
        """
        lines = [line for line in lines if line]
        section = b"".join(line + b"\r\n" for line in lines)
        fields, whole = parseHeaderSection(section)
        try:
            expected, _ = dkim.rfc822_parse(section + b"\r\n")
        except (dkim.MessageFormatError, IndexError):
            self.assertFalse(whole)
        else:
            self.assertTrue(whole)
            self.assertEqual(list(fields), [tuple(field) for field in expected])

    def test_fields(self):
        """
        Each field is its name and its value as written after the colon,
        folding kept, every line ending in CRLF.
        """
        fields, whole = parseHeaderSection(b"Subject: Lunch\r\n  on Friday\r\nTo:bob\r\n")
        self.assertTrue(whole)
        self.assertEqual(fields, ((b"Subject", b" Lunch\r\n  on Friday\r\n"), (b"To", b"bob\r\n")))


class VerifyMessageTests(SynchronousTestCase):
    """
    L{verifyMessage} gives one verdict per DKIM signature (RFC 6376
    section 6), in the words of RFC 8601 section 2.7.1.
    """

    @pytest.mark.rfc("6376", "3.3")
    def test_passRsa(self):
        """
        A message signed with rsa-sha256 passes, named by its domain and
        selector; its key is looked up at C{selector._domainkey.domain}.
        """
        txt = zone()
        auth = verify(sign(MESSAGE), txt)
        self.assertEqual(auth.dkim, (DkimResult("pass", "example.org", "sel"),))
        self.assertEqual(txt.asked, ["sel._domainkey.example.org"])

    def test_passEd25519(self):
        """
        A message signed with ed25519-sha256 (RFC 8463) passes.
        """
        self.assertEqual(verify(sign(MESSAGE, key="ed")).dkim, (DkimResult("pass", "example.net", "ed"),))

    def test_canonicalizations(self):
        """
        Every combination of simple and relaxed canonicalization passes.
        """
        for header in (b"simple", b"relaxed"):
            for body in (b"simple", b"relaxed"):
                auth = verify(sign(MESSAGE, canonicalize=(header, body)))
                self.assertEqual([r.result for r in auth.dkim], ["pass"], (header, body))

    def test_relaxedSurvivesWhiteSpace(self):
        """
        Relaxed body canonicalization survives white space changed within
        and at the end of lines, and empty lines added at the end; simple
        survives only the empty lines.
        """
        for body, relaxedOnly in ((b"shall we have lunch on Friday?\r\n", True), (b"Alice\r\n\r\n\r\n", False)):
            for canonicalization in (b"simple", b"relaxed"):
                message = sign(MESSAGE, canonicalize=(b"relaxed", canonicalization))
                changed = message.replace(b"shall we  have lunch\t on Friday?   \r\n", body) if relaxedOnly \
                    else message.replace(b"Alice\r\n", body)
                expected = "fail" if relaxedOnly and canonicalization == b"simple" else "pass"
                self.assertEqual(verify(changed).dkim[0].result, expected, (body, canonicalization))

    def test_lfOnlyAndCrlf(self):
        """
        The stored message's LF line endings are read as CRLF; a file with
        CRLF line endings verifies the same.
        """
        message = sign(MESSAGE)
        for data in (stored(message), message):
            auth = verifyMessage(zone(), io.BytesIO(data))
            self.assertEqual([r.result for r in auth.dkim], ["pass"])

    def test_fileOnDisk(self):
        """
        The message is read from a file on disk, as the spool gives it.
        """
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory)
        path = os.path.join(directory, "message")
        with open(path, "wb") as f:
            f.write(stored(sign(MESSAGE)))
        with open(path, "rb") as f:
            self.assertEqual(verifyMessage(zone(), f).dkim[0].result, "pass")

    @pytest.mark.rfc("6376", "6.1.3", "6376-6.1.3-1")
    def test_bodyTampered(self):
        """
        A changed body fails: the body hash does not match.
        """
        message = sign(MESSAGE).replace(b"Friday?", b"Saturday?")
        self.assertEqual(verify(message).dkim, (DkimResult("fail", "example.org", "sel", "body hash mismatch"),))

    @pytest.mark.rfc("6376", "6.1.3", "6376-6.1.3-2")
    def test_headerTampered(self):
        """
        A changed signed header field fails: the signature does not verify.
        """
        message = sign(MESSAGE).replace(b"Subject: Lunch", b"Subject: Dinner")
        self.assertEqual(
            verify(message).dkim, (DkimResult("fail", "example.org", "sel", "signature did not verify"),)
        )

    @pytest.mark.rfc("8617", "5.2", "8617-5.2-1")
    def test_unsigned(self):
        """
        An unsigned message is C{none} for DKIM and for ARC, and no key is
        looked up.
        """
        txt = zone()
        auth = verify(MESSAGE, txt)
        self.assertEqual((auth.dkim, auth.arc), ((DkimResult("none"),), ArcResult("none")))
        self.assertEqual(txt.asked, [])

    def test_headers(self):
        """
        The header section's fields are given back, in order, with their
        values as written (CRLF line endings).
        """
        auth = verify(MESSAGE)
        self.assertEqual(auth.headers[0], (b"From", b" Alice <alice@example.org>\r\n"))
        self.assertEqual(auth.headers[2], (b"Subject", b" Lunch\r\n  on Friday\r\n"))
        self.assertEqual([name for name, _ in auth.headers], [b"From", b"To", b"Subject", b"Date", b"Message-ID"])

    @pytest.mark.rfc("6376", "6.1", "6376-6.1-1")
    def test_twoSignatures(self):
        """
        Each signature has its verdict, the topmost first.
        """
        message = sign(sign(MESSAGE), key="ed")
        self.assertEqual(
            verify(message).dkim,
            (DkimResult("pass", "example.net", "ed"), DkimResult("pass", "example.org", "sel")),
        )
        txt = zone()
        del txt.records["ed._domainkey.example.net"]
        self.assertEqual([r.result for r in verify(message, txt).dkim], ["permerror", "pass"])

    def test_atMostTenSignatures(self):
        """
        Only the ten topmost signatures are verified.
        """
        message = MESSAGE
        for _ in range(MAX_SIGNATURES + 2):
            message = sign(message)
        txt = zone()
        auth = verify(message, txt)
        self.assertEqual([r.result for r in auth.dkim], ["pass"] * MAX_SIGNATURES)
        self.assertEqual(len(txt.asked), MAX_SIGNATURES)

    @pytest.mark.rfc("6376", "6.1.2", "6376-6.1.2-1")
    def test_keyMissing(self):
        """
        A signature whose key record does not exist is a C{permerror}.
        """
        auth = verify(sign(MESSAGE), Zone())
        self.assertEqual(auth.dkim, (DkimResult("permerror", "example.org", "sel", "no key record"),))

    def test_keyMissingBeforeBody(self):
        """
        The key is looked up before the body hash is compared (RFC 6376
        section 6.1.2): no key and a changed body is a C{permerror}.
        """
        auth = verify(sign(MESSAGE).replace(b"Friday?", b"Saturday?"), Zone())
        self.assertEqual(auth.dkim[0].result, "permerror")

    @pytest.mark.rfc("6376", "6.1.2", "6376-6.1.2-2")
    def test_keyRevoked(self):
        """
        An empty C{p=} is a revoked key (RFC 6376 section 3.6.1): a
        C{permerror}.
        """
        txt = Zone({"sel._domainkey.example.org": [b"v=DKIM1; k=rsa; p="]})
        self.assertEqual(verify(sign(MESSAGE), txt).dkim[0], DkimResult("permerror", "example.org", "sel", "key revoked"))

    @pytest.mark.rfc("6376", "6.1.2", "6376-6.1.2-3")
    def test_keyUnusable(self):
        """
        A key record that cannot be read, or holds a key of another
        algorithm than the signature's (RFC 6376 section 3.6.1), is a
        C{permerror}.
        """
        for record in (b"v=DKIM1; k=rsa; p=bm90IGEga2V5", b"garbage"):
            txt = Zone({"sel._domainkey.example.org": [record]})
            result = verify(sign(MESSAGE), txt).dkim[0]
            self.assertEqual((result.result, result.reason), ("permerror", "unusable key record"), record)
        txt = Zone({"sel._domainkey.example.org": [ed25519Key()[1]], "ed._domainkey.example.net": [rsaKey()[1]]})
        for message in (sign(MESSAGE), sign(MESSAGE, key="ed")):
            result = verify(message, txt).dkim[0]
            self.assertEqual(
                (result.result, result.reason), ("permerror", "key type does not match the signature algorithm")
            )

    def test_temporaryFailure(self):
        """
        A key lookup that fails for now is a C{temperror}.
        """
        txt = zone()
        txt.temporary.add("sel._domainkey.example.org")
        self.assertEqual(verify(sign(MESSAGE), txt).dkim[0].result, "temperror")

    @pytest.mark.rfc("6376", "6.1.1", "6376-6.1.1-2")
    def test_malformedSignature(self):
        """
        A signature that cannot be read, lacks a required tag or has an
        unknown canonicalization is a C{permerror}; its domain is given
        when it can be read.
        """
        cases = [
            b"DKIM-Signature: v=1; a=rsa-sha256; d=example.org; s=sel; oops\r\n",
            b"DKIM-Signature: v=1; a=rsa-sha256; d=example.org; s=sel; h=from; bh=AAAA\r\n",
            b"DKIM-Signature: v=1; a=rsa-sha256; c=loose; d=example.org; s=sel; h=from; bh=AAAA; b=AAAA\r\n",
            b"DKIM-Signature: v=1; a=rsa-sha256; d=example.org; s=sel; h=from; bh=!!; b=AAAA\r\n",
            b"DKIM-Signature: v=1; a=rsa-sha256; d=example.org; i=example.org; s=sel; h=from; bh=AAAA; b=AAAA\r\n",
        ]
        for field in cases:
            result = verify(field + MESSAGE).dkim[0]
            self.assertEqual(result.result, "permerror", field)
            self.assertTrue(result.reason, field)
        self.assertEqual(verify(cases[1] + MESSAGE).dkim[0], DkimResult("permerror", "example.org", "sel", "missing b="))

    @pytest.mark.rfc("6376", "6.1.1", "6376-6.1.1-1")
    def test_fromNotSigned(self):
        """
        A signature that does not cover C{From:} is a C{permerror} (RFC
        6376 section 6.1.1).
        """
        message = sign(MESSAGE)
        signed = re.search(rb"h=([^;]*);", message).group(1)
        message = message.replace(signed, signed.replace(b"from", b"to"), 1)
        self.assertEqual(verify(message).dkim[0].reason, "From field not signed")

    def test_tooManyFieldsToScan(self):
        """
        A signature that would make dkimpy scan the header section once
        for each of thousands of names is a C{permerror}, found before its
        key is looked up.
        """
        names = b":".join(b"x-%d" % i for i in range(2000))
        field = b"DKIM-Signature: v=1; a=rsa-sha256; d=example.org; s=sel; h=from:" + names + b"; bh=AAAA; b=AAAA\r\n"
        padding = b"X-Pad: p\r\n" * (MAX_FIELD_SCAN // 2000)
        txt = zone()
        result = verify(padding + field + MESSAGE, txt).dkim[0]
        self.assertEqual((result.result, result.reason), ("permerror", "too many header fields to verify"))
        self.assertEqual(txt.asked, [])

    def test_rsaSha1(self):
        """
        An rsa-sha1 signature is not accepted (RFC 8301 section 3.1).
        """
        result = verify(sign(MESSAGE, algorithm=b"rsa-sha1")).dkim[0]
        self.assertEqual((result.result, result.reason), ("permerror", "rsa-sha1 not accepted"))

    def test_length(self):
        """
        With C{l=}, text added after the signed length still passes; a
        change within it fails.
        """
        message = sign(MESSAGE, length=True)
        self.assertEqual(verify(message + b"-- \r\nA footer\r\n").dkim[0].result, "pass")
        self.assertEqual(verify(message.replace(b"Alice\r\n", b"Alicia\r\n")).dkim[0].result, "fail")

    def test_largeBody(self):
        """
        A body of many chunks, white space and empty lines at its end
        spanning chunk boundaries, verifies in both canonicalizations.
        """
        body = b"".join(b"line %d \t with  text\r\n" % i for i in range(20000))
        body += b"end" + b" " * 70000 + b"\r\n" + b"\r\n" * 70000
        for canonicalization in (b"simple", b"relaxed"):
            message = sign(MESSAGE + body, canonicalize=(b"relaxed", canonicalization))
            self.assertEqual(verify(message).dkim[0].result, "pass", canonicalization)

    @settings(max_examples=40, deadline=None)
    @given(
        st.lists(st.sampled_from([b"text", b"  ", b"\t", b"\r\n", b"\r\n\r\n", b".", b"x y"]), max_size=40),
        st.sampled_from([b"simple", b"relaxed"]),
        st.lists(st.integers(1, 50), min_size=1, max_size=5),
    )
    def test_anyBodyAnyReads(self, parts, canonicalization, sizes):
        """
        Whatever the body and however the file's reads are cut, a signed
        message passes, as it does for dkimpy.
        """
        message = sign(MESSAGE + b"".join(parts) + b"\r\n", canonicalize=(b"relaxed", canonicalization))
        txt = zone()
        auth = verifyMessage(txt, ShortReads(stored(message), sizes))
        self.assertEqual([r.result for r in auth.dkim], ["pass"])
        self.assertEqual(dkimpyVerdicts(message, txt), [True])

    def test_headerSectionTooLong(self):
        """
        A header section over the bound cannot be verified: a
        C{permerror}, no fields given, the ARC chain failed.
        """
        padding = b"".join(b"X-Padding: %s\r\n" % (b"p" * 1000) for _ in range(HEADER_LIMIT // 1000 + 1))
        auth = verify(padding + sign(MESSAGE))
        self.assertEqual(auth, MessageAuth((), (DkimResult("permerror", reason="header section too long"),),
                                           ArcResult("fail")))

    def test_headerSectionAtTheBound(self):
        """
        A header section just within the bound is verified.
        """
        message = sign(MESSAGE)
        room = HEADER_LIMIT - message.index(b"\r\n\r\n") - 2 - len(b"X-Padding: \r\n")
        auth = verify(b"X-Padding: " + b"p" * room + b"\r\n" + message)
        self.assertEqual([r.result for r in auth.dkim], ["pass"])

    def test_headerSectionUnparseable(self):
        """
        A header section with a line that is not part of a field cannot be
        verified: each signature is a C{permerror}, but the fields that can
        be read are given.
        """
        message = sign(MESSAGE).replace(b"To: Bob", b"this is not a field\r\nTo: Bob")
        auth = verify(message)
        self.assertEqual(auth.dkim, (DkimResult("permerror", "example.org", "sel", "header section unparseable"),))
        self.assertIn((b"From", b" Alice <alice@example.org>\r\n"), auth.headers)
        self.assertEqual(auth.arc, ArcResult("fail"))

    def test_noBody(self):
        """
        A message with no body, or with no empty line after its header
        section, verifies.
        """
        headers = MESSAGE[: MESSAGE.index(b"\r\n\r\n") + 2]
        for message in (sign(headers + b"\r\n"), sign(headers)):
            self.assertEqual(verify(message).dkim[0].result, "pass")

    def test_unreadable(self):
        """
        A message file that cannot be read is a C{temperror}, and the
        error is logged.
        """
        class Broken:
            def read(self, size: int = -1) -> bytes:
                raise OSError("disk on fire")

        auth = verifyMessage(zone(), Broken())
        self.assertEqual((auth.dkim[0].result, auth.arc), ("temperror", ArcResult("temperror")))
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)

    def test_unreadableBody(self):
        """
        A body that cannot be read through is a C{temperror} for each
        signature; the fields read are given.
        """
        data = stored(sign(MESSAGE))

        class Failing:
            def __init__(self) -> None:
                self.file = io.BytesIO(data)

            def read(self, size: int = -1) -> bytes:
                if self.file.tell() > data.index(b"\n\n"):
                    raise OSError("disk on fire")
                return self.file.read(min(size, 200))

        auth = verifyMessage(zone(), Failing())
        self.assertEqual([(r.result, r.domain) for r in auth.dkim], [("temperror", "example.org")])
        self.assertEqual(auth.headers[1][0], b"From")
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)

    def test_neverRaises(self):
        """
        Whatever goes wrong, L{verifyMessage} gives verdicts
        (C{temperror}) and logs the error rather than raising.
        """
        class Wrong:
            def read(self, size: int = -1) -> str:
                return "not bytes"

        auth = verifyMessage(zone(), Wrong())
        self.assertEqual((auth.dkim[0].result, auth.arc), ("temperror", ArcResult("temperror")))
        self.assertEqual(len(self.flushLoggedErrors(TypeError)), 1)

    def test_lookupError(self):
        """
        A key lookup that fails otherwise than for now (a name DNS cannot
        ask for) is a C{permerror} that says so.
        """
        def txt(name: str) -> list[bytes]:
            raise ValueError("label too long")

        result = verify(sign(MESSAGE), txt).dkim[0]
        self.assertEqual((result.result, result.reason), ("permerror", "key lookup failed: label too long"))

    def test_methodsOff(self):
        """
        A method not asked for is L{None}; the fields are given all the
        same.
        """
        auth = verify(seal(sign(MESSAGE), 1), dkim=False, arc=False)
        self.assertEqual((auth.dkim, auth.arc), (None, None))
        self.assertEqual(auth.headers[-1][0], b"Message-ID")
        self.assertEqual(verify(sign(MESSAGE), arc=False).arc, None)
        self.assertEqual(verify(sign(MESSAGE), dkim=False).dkim, None)


class ArcTests(SynchronousTestCase):
    """
    L{verifyMessage} gives the verdict on the ARC chain (RFC 8617 section
    5.2).
    """

    @pytest.mark.rfc("8617", "5.2", "8617-5.2-3")
    def test_pass(self):
        """
        A message sealed once passes.
        """
        auth = verify(seal(sign(MESSAGE), 1))
        self.assertEqual((auth.arc, [r.result for r in auth.dkim]), (ArcResult("pass"), ["pass"]))

    def test_passTwoInstances(self):
        """
        A chain of two sets passes; only the latest ARC-Message-Signature
        is verified, so its older one's key is not looked up.
        """
        txt = zone()
        self.assertEqual(verify(seal(seal(MESSAGE, 1), 2), txt, dkim=False).arc, ArcResult("pass"))
        self.assertEqual(
            txt.asked,
            ["arc2._domainkey.forwarder.example", "arc2._domainkey.forwarder.example",
             "arc1._domainkey.relay.example"],
        )

    def test_bodyChanged(self):
        """
        A body changed after the latest seal fails the chain.
        """
        message = seal(MESSAGE, 1).replace(b"Friday?", b"Saturday?")
        self.assertEqual(verify(message).arc, ArcResult("fail"))

    @pytest.mark.rfc("8617", "5.2", "8617-5.2-2")
    def test_brokenChain(self):
        """
        A seal that no longer verifies, or a set missing, fails the chain.
        """
        message = seal(seal(MESSAGE, 1), 2)
        self.assertEqual(verify(message.replace(b"dkim=pass header.d=example.org", b"dkim=fail")).arc,
                         ArcResult("fail"))
        withoutSeal = re.sub(rb"ARC-Seal: i=1;.*?\r\n(?! )", b"", message, flags=re.S)
        self.assertNotEqual(withoutSeal, message)
        self.assertEqual(verify(withoutSeal).arc, ArcResult("fail"))

    def test_temporaryFailure(self):
        """
        A sealer's key that cannot be looked up for now is a C{temperror}.
        """
        txt = zone()
        txt.temporary.add("arc1._domainkey.relay.example")
        self.assertEqual(verify(seal(MESSAGE, 1), txt).arc, ArcResult("temperror"))

    def test_tooManyInstances(self):
        """
        A chain claiming more than fifty sets fails without a lookup.
        """
        txt = zone()
        message = b"ARC-Seal: i=51; a=rsa-sha256; cv=pass; d=x.example; s=s; b=AAAA\r\n" + MESSAGE
        self.assertEqual(verify(message, txt).arc, ArcResult("fail"))
        self.assertEqual(txt.asked, [])


class AgreementTests(SynchronousTestCase):
    """
    L{verifyMessage}, reading the stored file, agrees with dkimpy's own
    whole-message verification.
    """

    def messages(self) -> list[tuple[str, bytes]]:
        """
        Signed messages, some tampered with.
        """
        rsaRelaxed = sign(MESSAGE)
        rsaSimple = sign(MESSAGE, canonicalize=(b"simple", b"simple"))
        both = sign(sign(MESSAGE, canonicalize=(b"simple", b"relaxed")), key="ed")
        lengthed = sign(MESSAGE, length=True)
        sealed = seal(seal(sign(MESSAGE), 1), 2)
        return [
            ("rsa relaxed", rsaRelaxed),
            ("rsa simple", rsaSimple),
            ("two", both),
            ("two, body changed", both.replace(b"Friday?", b"Friday!")),
            ("two, white space", both.replace(b"lunch\t on", b"lunch on")),
            ("two, empty lines added", both + b"\r\n\r\n"),
            ("relaxed, refolded", rsaRelaxed.replace(b"Lunch\r\n  on", b"Lunch\r\n\ton")),
            ("simple, refolded", rsaSimple.replace(b"Lunch\r\n  on", b"Lunch\r\n\ton")),
            ("simple, empty lines added", rsaSimple + b"\r\n\r\n"),
            ("header changed", rsaRelaxed.replace(b"To: Bob", b"To: Eve")),
            ("From added", b"From: Mallory <m@example.org>\r\n" + rsaRelaxed),
            ("l=, appended", lengthed + b"appended\r\n"),
            ("l=, changed", lengthed.replace(b"Hello", b"Hallo")),
            ("sealed", sealed),
            ("sealed, body changed", sealed.replace(b"Alice\r\n", b"Eve\r\n")),
            ("sealed, header changed", sealed.replace(b"Subject: Lunch", b"Subject: Dinner")),
        ]

    def test_sameVerdicts(self):
        """
        Each signature passes exactly when dkimpy says it verifies, and the
        ARC verdict is dkimpy's.
        """
        for name, message in self.messages():
            txt = zone()
            auth = verify(message, txt)
            self.assertEqual([r.result == "pass" for r in auth.dkim], dkimpyVerdicts(message, txt), name)
            self.assertEqual(auth.arc.result, dkimpyChain(message, txt), name)

    @settings(max_examples=60, deadline=None)
    @given(
        st.lists(st.sampled_from([b"text", b"  ", b"\t", b"\r\n", b"\n", b"\r", b"\r\n\r\n", b"x y"]), max_size=30),
        st.sampled_from([b"simple", b"relaxed"]),
        st.sampled_from([b"simple", b"relaxed"]),
        st.booleans(),
        st.lists(st.sampled_from([b" ", b"\t", b"\r\n", b"more", b"\r\n\r\n"]), max_size=4),
    )
    def test_anyBodyAnyChange(self, parts, header, body, length, added):
        """
        For any body, canonicalization and C{l=}, and text added at the
        end of the body, the verdict is dkimpy's.
        """
        message = sign(MESSAGE + b"".join(parts), canonicalize=(header, body), length=length) + b"".join(added)
        txt = zone()
        expected = dkimpyVerdicts(message, txt)
        files = [message]
        lines = functools.partial(re.sub, rb"\r?\n", b"\r\n")
        if lines(stored(message)) == lines(message):
            # LF line endings cannot say "a bare CR, then a line ending".
            files.append(stored(message))
        for data in files:
            auth = verifyMessage(txt, io.BytesIO(data))
            self.assertEqual([r.result == "pass" for r in auth.dkim], expected)
