"""
DKIM (RFC 6376) and ARC (RFC 8617) verification of a message read from its
spool file (docs/authentication.rst).

The message is never held whole: its header section (at most
L{HEADER_LIMIT} bytes) is read, then the body is streamed once through
every body hash its signatures ask for (RFC 6376 sections 3.4.3, 3.4.4 and
3.7), by L{smtpmx.auth.bodyhash.BodyHasher}.  dkimpy verifies everything
else (the key record, the header hash, the signature, the ARC chain) on the
header section alone: its C{DKIM} and C{ARC} classes are subclassed here to
override only the public C{verify_sig}, which compares the streamed body
hash with the signature's C{bh=} and hands dkimpy the signature without
C{bh=}, so that dkimpy skips its own body check (its header hash reads the
raw signature field, which still holds C{bh=}).

The stored message has LF line endings; they are read as CRLF, as dkimpy
reads them (L{smtpmx.auth.bodyhash.LineEndings}).
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
from dataclasses import dataclass
from typing import IO, Callable, Optional

from dkim import ARC, DKIM, DKIMException, KeyFormatError, MessageFormatError, ValidationError
from dkim import CV_None, CV_Pass
from dkim.util import InvalidTagValueList, parse_tag_value
from twisted.logger import Logger

from smtpmx.auth.bodyhash import BodyHasher, BodyHashSpec, LineEndings
from smtpmx.auth.dns import TemporaryDNSError
from smtpmx.auth.results import ArcResult, DkimResult

_log = Logger()

#: dkimpy's own log: its debug and error lines are of no use here (every
#: verdict is reported in the result), so they go nowhere.
_dkimpyLog = logging.getLogger("smtpmx.auth.dkim.dkimpy")
_dkimpyLog.addHandler(logging.NullHandler())
_dkimpyLog.propagate = False

#: The most header section read, in bytes (CRLF line endings); a longer one
#: cannot be verified (C{permerror}).
HEADER_LIMIT = 1 << 20

#: How much of the message file is read at a time.
CHUNK_SIZE = 64 * 1024

#: At most this many C{DKIM-Signature:} fields are verified, the topmost
#: first; the others are ignored (RFC 6376 section 6.1 lets a verifier
#: limit the signatures it verifies).
MAX_SIGNATURES = 10

#: The most work dkimpy is let do to find the signed fields (RFC 6376
#: section 5.4.2): it scans the header section once per distinct name in
#: C{h=}, so a signature naming thousands of fields of a header section of
#: thousands would take minutes.  (Distinct names in C{h=}) x (fields in
#: the header section) above this is a C{permerror}.
MAX_FIELD_SCAN = 1_000_000

#: The highest ARC instance number (RFC 8617 section 4.2.1); a chain that
#: claims more fails without being looked at further.
MAX_ARC_INSTANCE = 50

_CRLF = b"\r\n"

_FIELD_NAME = re.compile(rb"([\x21-\x7e]+?):")


def parseHeaderSection(section: bytes) -> tuple[tuple[tuple[bytes, bytes], ...], bool]:
    """
    Split a header section (CRLF line endings, without the empty line that
    ends it) into its fields (RFC 5322 section 2.2) as dkimpy does: each
    C{(name, value)} with the value as written after the colon, folding
    kept, every line ending in CRLF; an mbox C{From } line is skipped.

    @return: the fields, and whether every line was part of one.
    """
    fields: list[tuple[bytes, list[bytes]]] = []
    whole = True
    lines = section.split(_CRLF)
    if lines[-1] == b"":
        lines.pop()
    for line in lines:
        if line[:1] in (b" ", b"\t"):
            if fields:
                fields[-1][1].append(line + _CRLF)
            else:
                whole = False
            continue
        match = _FIELD_NAME.match(line)
        if match is not None:
            fields.append((match.group(1), [line[match.end() :] + _CRLF]))
        elif not line.startswith(b"From "):
            whole = False
    return tuple((name, b"".join(value)) for name, value in fields), whole


class _HeaderTooLong(Exception):
    """
    The header section is longer than L{HEADER_LIMIT}.
    """


def _readHeaderSection(message: IO[bytes], lineEndings: LineEndings) -> tuple[bytes, bytes]:
    """
    Read the header section of C{message}, up to the empty line that ends
    it (RFC 5322 section 2.1) or the end of the file.

    @return: the header section (CRLF line endings, without the empty
        line) and the bytes of the body already read.
    @raise _HeaderTooLong: it is over L{HEADER_LIMIT}.
    """
    buf = b""
    searched = 0
    while True:
        if buf.startswith(_CRLF):
            return b"", buf[2:]
        end = buf.find(b"\r\n\r\n", max(searched - 3, 0))
        if end >= 0:
            if end + 2 > HEADER_LIMIT:
                raise _HeaderTooLong()
            return buf[: end + 2], buf[end + 4 :]
        if len(buf) > HEADER_LIMIT + 4:
            raise _HeaderTooLong()
        searched = len(buf)
        data = message.read(CHUNK_SIZE)
        if not data:
            buf += lineEndings.flush()
            if len(buf) > HEADER_LIMIT:
                raise _HeaderTooLong()
            return buf, b""
        buf += lineEndings.feed(data)


class _BodyHashMismatch(ValidationError):
    """
    The streamed body hash is not the signature's C{bh=} (RFC 6376
    section 6.1.3).
    """


class _KeyUnusable(KeyFormatError):
    """
    No key record, or none that can be used (RFC 6376 section 6.1.2).
    """


class _NotAccepted(ValidationError):
    """
    A signature this verifier does not accept, whatever its validity.
    """


class _NotVerified(DKIMException):
    """
    An ARC-Message-Signature older than the latest, which RFC 8617 section
    5.2 does not ask to verify.
    """


class _KeyRecords:
    """
    The key lookup handed to dkimpy (its C{dnsfunc}): the TXT record of
    C{selector._domainkey.domain} through the check's C{txt}, the last
    answer remembered to say why a key could not be used.
    """

    def __init__(self, txt: Callable[[str], list[bytes]]) -> None:
        self._txt = txt
        self._problem = "no key record"

    def __call__(self, name: bytes, timeout: float = 5) -> Optional[bytes]:
        """
        The key record named C{name}: the first TXT record, as dkimpy's own
        lookup takes it (RFC 6376 section 3.6.2.2 leaves several
        undefined), or L{None} for none.

        @raise TemporaryDNSError: the lookup failed for now.
        """
        self._problem = "no key record"
        try:
            host = name.decode("utf-8")
        except UnicodeDecodeError:
            return None
        if host.endswith("."):
            host = host[:-1]
        try:
            records = self._txt(host)
        except TemporaryDNSError:
            raise
        except Exception as e:
            self._problem = _reasonText(f"key lookup failed: {e}")
            return None
        if not records:
            return None
        record = records[0]
        try:
            revoked = parse_tag_value(record).get(b"p") == b""
        except InvalidTagValueList:
            revoked = False
        self._problem = "key revoked" if revoked else "unusable key record"
        return record

    def problem(self) -> str:
        """
        Why the last key looked up cannot be used.
        """
        return self._problem


class _StreamedBody:
    """
    dkimpy's C{verify_sig} with the body hash already computed: compared
    here, and taken out of the signature that dkimpy then checks.  The key
    is looked up first, as in RFC 6376 section 6.1.2, so that a missing key
    is told apart from a changed body.

    @ivar bodyHashes: the streamed body hashes.
    @ivar keyRecords: the key lookup, which knows why a key was unusable.
    """

    defaultCanonicalization = b"simple/simple"
    bodyHashes: dict[BodyHashSpec, bytes]
    keyRecords: _KeyRecords

    def verify_sig(self, sig, include_headers, sig_header, dnsfunc):  # type: ignore[no-untyped-def]
        """
        Verify one signature field as dkimpy does, the body hash excepted,
        which is compared with the streamed one after the key is found.

        @raise _BodyHashMismatch: the signature is otherwise good or bad,
            but the body hash differs.
        @raise _KeyUnusable: no key record, or none that can be used.
        @raise TemporaryDNSError: the key could not be looked up for now.
        """
        if len(set(include_headers)) * len(self.headers) > MAX_FIELD_SCAN:  # type: ignore[attr-defined]
            raise _NotAccepted("too many header fields to verify")
        if b"bh" not in sig:
            return super().verify_sig(sig, include_headers, sig_header, dnsfunc)  # type: ignore[misc]
        try:
            spec = BodyHashSpec.fromTags(sig, self.defaultCanonicalization)
            expected = base64.b64decode(re.sub(rb"\s+", b"", sig[b"bh"]), validate=True)
        except (ValueError, binascii.Error) as e:
            raise MessageFormatError(str(e))
        actual = self.bodyHashes.get(spec)
        if actual is None:
            raise _NotVerified("body hash not computed")
        withoutBodyHash = {tag: value for tag, value in sig.items() if tag != b"bh"}
        self.pk = self.ktag = None
        try:
            valid = super().verify_sig(withoutBodyHash, include_headers, sig_header, dnsfunc)  # type: ignore[misc]
        except Exception:
            self._keyTypeMatches(sig)
            raise
        if not valid and self.pk is None:
            raise _KeyUnusable(self.keyRecords.problem())
        self._keyTypeMatches(sig)
        if actual != expected:
            raise _BodyHashMismatch("body hash mismatch")
        return valid

    def _keyTypeMatches(self, sig: dict[bytes, bytes]) -> None:
        """
        Check that the key found is of the signature's algorithm (RFC 6376
        section 3.6.1, C{k=}), which dkimpy does not.

        @raise _KeyUnusable: it is not.
        """
        ktag = self.ktag  # type: ignore[attr-defined]
        if ktag is not None and sig.get(b"a", b"").split(b"-")[0] != ktag:
            raise _KeyUnusable("key type does not match the signature algorithm")


class _StreamedDKIM(_StreamedBody, DKIM):
    """
    dkimpy's DKIM verifier, with the body hash streamed, and two checks it
    leaves out: a signature must cover C{From:} (RFC 6376 section 6.1.1),
    and C{rsa-sha1} is not accepted (RFC 8301 section 3.1).
    """

    def verify_sig(self, sig, include_headers, sig_header, dnsfunc):  # type: ignore[no-untyped-def]
        """
        Refuse what this verifier does not accept, then verify.
        """
        if b"from" not in include_headers:
            raise _NotAccepted("From field not signed")
        if sig.get(b"a") == b"rsa-sha1":
            raise _NotAccepted("rsa-sha1 not accepted")
        return super().verify_sig(sig, include_headers, sig_header, dnsfunc)


class _StreamedARC(_StreamedBody, ARC):
    """
    dkimpy's ARC verifier, with the body hash streamed for the latest
    ARC-Message-Signature only: RFC 8617 section 5.2 verifies that one, and
    dkimpy's verdict reads no other.

    @ivar latestInstance: the highest instance number of the chain.
    """

    defaultCanonicalization = b"relaxed/relaxed"
    latestInstance = 0

    def verify_sig(self, sig, include_headers, sig_header, dnsfunc):  # type: ignore[no-untyped-def]
        """
        Verify a seal, or the latest ARC-Message-Signature; an older one is
        left unverified (invalid to dkimpy, which does not read it).
        """
        if b"bh" in sig and _instanceOf(sig) != self.latestInstance:
            raise _NotVerified("not the latest ARC-Message-Signature")
        return super().verify_sig(sig, include_headers, sig_header, dnsfunc)


def _instanceOf(tags: dict[bytes, bytes]) -> Optional[int]:
    """
    The ARC instance number C{i=} of a field's tags, if it is a number.
    """
    value = tags.get(b"i", b"")
    return int(value) if value.isdigit() else None


def _reasonText(text: str) -> str:
    """
    A failure's reason as a short line of printable ASCII, for the
    field's C{reason=} (RFC 8601 section 2.3): dkimpy's C{b'...'} reprs
    unwrapped, white space folded, at most 100 characters.
    """
    text = re.sub(r"b'([^']*)'", r"\1", text)
    text = "".join(c if " " <= c <= "~" else " " for c in text)
    text = " ".join(text.split())
    return text if len(text) <= 100 else text[:97] + "..."


@dataclass(frozen=True)
class MessageAuth:
    """
    What L{verifyMessage} found in a message.

    @ivar headers: the header section's fields, C{(name, value)} in order,
        the value as written after the colon with CRLF line endings (see
        L{parseHeaderSection}); empty when the header section is over
        L{HEADER_LIMIT}.
    @ivar dkim: one verdict per C{DKIM-Signature:} field verified, top
        first; C{(DkimResult("none"),)} for an unsigned message; L{None}
        when DKIM was not asked for.
    @ivar arc: the verdict on the ARC chain; L{None} when ARC was not asked
        for.
    """

    headers: tuple[tuple[bytes, bytes], ...]
    dkim: Optional[tuple[DkimResult, ...]]
    arc: Optional[ArcResult]


def _signatureNames(tags: Optional[dict[bytes, bytes]]) -> tuple[Optional[str], Optional[str]]:
    """
    A signature's C{d=} and C{s=}, as text, when it has them.
    """
    if tags is None:
        return None, None
    domain, selector = tags.get(b"d"), tags.get(b"s")
    return (
        domain.decode("utf-8", "replace") if domain else None,
        selector.decode("utf-8", "replace") if selector else None,
    )


def _tagsOf(value: bytes) -> Optional[dict[bytes, bytes]]:
    """
    A signature field's tags (RFC 6376 section 3.2), or L{None} when it
    has none that can be read.
    """
    try:
        return parse_tag_value(value)
    except InvalidTagValueList:
        return None


def _unverifiable(
    signatures: list[Optional[dict[bytes, bytes]]], result: str, reason: str
) -> tuple[DkimResult, ...]:
    """
    The same verdict for every signature, or for the message when none can
    be seen, when the message itself cannot be verified.
    """
    if not signatures:
        return (DkimResult(result, reason=reason),)
    return tuple(DkimResult(result, *_signatureNames(tags), reason=reason) for tags in signatures)


def _verifySignature(
    index: int,
    tags: Optional[dict[bytes, bytes]],
    headers: list[tuple[bytes, bytes]],
    bodyHashes: dict[BodyHashSpec, bytes],
    keyRecords: _KeyRecords,
) -> DkimResult:
    """
    The verdict on the C{index}th C{DKIM-Signature:} field (RFC 6376
    section 6.1), in the words of RFC 8601 section 2.7.1.
    """
    domain, selector = _signatureNames(tags)
    verifier = _StreamedDKIM(logger=_dkimpyLog)
    verifier.headers, verifier.body = headers, b""
    verifier.bodyHashes, verifier.keyRecords = bodyHashes, keyRecords
    try:
        valid = verifier.verify(idx=index, dnsfunc=keyRecords)
    except TemporaryDNSError:
        return DkimResult("temperror", domain, selector, "key lookup failed for now")
    except _BodyHashMismatch:
        return DkimResult("fail", domain, selector, "body hash mismatch")
    except (_KeyUnusable, ValidationError) as e:
        # dkimpy's ValidationError says what is wrong: "missing b=",
        # "x= value is past", ...
        return DkimResult("permerror", domain, selector, _reasonText(str(e)))
    except KeyFormatError as e:
        return DkimResult("permerror", domain, selector, _reasonText(f"unusable key: {e}"))
    except DKIMException as e:
        return DkimResult("permerror", domain, selector, _reasonText(f"malformed signature: {e}"))
    except Exception as e:
        # dkimpy has a few unguarded corners (e.g. an i= without "@").
        return DkimResult("permerror", domain, selector, f"malformed signature ({type(e).__name__})")
    if valid:
        return DkimResult("pass", domain, selector)
    return DkimResult("fail", domain, selector, "signature did not verify")


def _verifyChain(verifier: _StreamedARC, keyRecords: _KeyRecords) -> ArcResult:
    """
    The verdict on the ARC chain (RFC 8617 section 5.2).
    """
    try:
        status, _, _ = verifier.verify(dnsfunc=keyRecords)
    except TemporaryDNSError:
        return ArcResult("temperror")
    except Exception:
        # dkimpy has a few unguarded corners (e.g. an ARC-Message-Signature
        # whose i= does not follow a space): the chain cannot be validated.
        return ArcResult("fail")
    if status == CV_Pass:
        return ArcResult("pass")
    if status == CV_None:
        return ArcResult("none")
    return ArcResult("fail")


def _latestSealSpec(verifier: _StreamedARC) -> tuple[int, Optional[BodyHashSpec]]:
    """
    The chain's highest instance number and the body hash its latest
    ARC-Message-Signature asks for (none when there is not exactly one
    that can be read: the chain fails without it).
    """
    if not any(name.lower() in ARC.ARC_HEADERS for name, _ in verifier.headers):
        return 0, None  # no chain: dkimpy need not canonicalize every field to see it
    latest, fields = verifier.sorted_arc_headers()
    if latest == 0 or latest > MAX_ARC_INSTANCE:
        return latest, None
    signatures = [
        value for instance, (name, value) in fields
        if instance == latest and name.lower() == b"arc-message-signature"
    ]
    if len(signatures) != 1:
        return latest, None
    tags = _tagsOf(signatures[0])
    try:
        return latest, BodyHashSpec.fromTags(tags or {}, _StreamedARC.defaultCanonicalization)
    except ValueError:
        return latest, None


def _unreadable(
    fields: tuple[tuple[bytes, bytes], ...],
    signatures: list[Optional[dict[bytes, bytes]]],
    dkim: bool,
    arc: bool,
) -> MessageAuth:
    """
    The verdicts on a message that could not be read through: C{temperror}
    (RFC 8601 section 2.7.1).
    """
    return MessageAuth(
        fields,
        _unverifiable(signatures, "temperror", "message unreadable") if dkim else None,
        ArcResult("temperror") if arc else None,
    )


def verifyMessage(
    txt: Callable[[str], list[bytes]], message: IO[bytes], dkim: bool = True, arc: bool = True
) -> MessageAuth:
    """
    Verify a message's DKIM signatures (RFC 6376 section 6) and ARC chain
    (RFC 8617 section 5.2), reading it from C{message} once: the header
    section whole, the body streamed.  Blocking (run it in a thread);
    never raises.

    A signature's verdict is C{pass}; C{fail} (its signature or its body
    hash does not verify); C{permerror} (a malformed signature, a key
    record missing, revoked, unusable or of another algorithm, C{From:}
    not signed, C{rsa-sha1}, a header section over L{HEADER_LIMIT} or with
    lines that are not fields); C{temperror} (its key could not be looked
    up for now, or the file could not be read).  The chain's is C{none},
    C{pass}, C{fail} or C{temperror}.  At most L{MAX_SIGNATURES}
    signatures are verified.

    @param txt: the TXT records of a name (each record's strings joined);
        it raises L{TemporaryDNSError} for a temporary failure.
    @param message: the message file (LF line endings), at its start.
    @param dkim: whether to verify DKIM signatures.
    @param arc: whether to verify the ARC chain.
    """
    try:
        return _verifyMessage(txt, message, dkim, arc)
    except Exception:
        # Not expected: every fault of the message is a verdict.
        _log.failure("DKIM and ARC verification failed")
        return _unreadable((), [], dkim, arc)


def _verifyMessage(txt: Callable[[str], list[bytes]], message: IO[bytes], dkim: bool, arc: bool) -> MessageAuth:
    """
    L{verifyMessage}, which may raise.
    """
    lineEndings = LineEndings()
    try:
        section, bodyStart = _readHeaderSection(message, lineEndings)
    except _HeaderTooLong:
        return MessageAuth(
            (),
            _unverifiable([], "permerror", "header section too long") if dkim else None,
            ArcResult("fail") if arc else None,
        )
    except OSError:
        _log.failure("The message could not be read for DKIM and ARC")
        return _unreadable((), [], dkim, arc)
    fields, whole = parseHeaderSection(section)
    headers = list(fields)
    signatures = [_tagsOf(value) for name, value in headers if name.lower() == b"dkim-signature"]
    signatures = signatures[:MAX_SIGNATURES]
    if not whole:
        return MessageAuth(
            fields,
            _unverifiable(signatures, "permerror", "header section unparseable") if dkim else None,
            ArcResult("fail") if arc else None,
        )

    specs = set()
    if dkim:
        for tags in signatures:
            try:
                specs.add(BodyHashSpec.fromTags(tags or {}))
            except ValueError:
                pass  # dkimpy finds the same fault: a permerror
    chain = None
    if arc:
        chain = _StreamedARC(logger=_dkimpyLog)
        chain.headers, chain.body = headers, b""
        chain.latestInstance, sealSpec = _latestSealSpec(chain)
        if sealSpec is not None:
            specs.add(sealSpec)

    bodyHashes: dict[BodyHashSpec, bytes] = {}
    if specs:
        hasher = BodyHasher(specs)
        hasher.feed(bodyStart)
        try:
            while data := message.read(CHUNK_SIZE):
                hasher.feed(lineEndings.feed(data))
        except OSError:
            _log.failure("The message could not be read for DKIM and ARC")
            return _unreadable(fields, signatures, dkim, arc)
        hasher.feed(lineEndings.flush())
        bodyHashes = hasher.digests()

    keyRecords = _KeyRecords(txt)
    dkimResults = None
    if dkim:
        dkimResults = tuple(
            _verifySignature(index, tags, headers, bodyHashes, keyRecords) for index, tags in enumerate(signatures)
        ) or (DkimResult("none"),)
    arcResult = None
    if chain is not None:
        chain.bodyHashes, chain.keyRecords = bodyHashes, keyRecords
        if chain.latestInstance == 0:
            arcResult = ArcResult("none")
        elif chain.latestInstance > MAX_ARC_INSTANCE:
            arcResult = ArcResult("fail")
        else:
            arcResult = _verifyChain(chain, keyRecords)
    return MessageAuth(fields, dkimResults, arcResult)
