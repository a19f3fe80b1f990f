"""
The message body as DKIM hashes it (RFC 6376 sections 3.4.3, 3.4.4, 3.4.5
and 3.7), streamed: L{BodyHasher} reads the body once, in chunks cut
anywhere, through every (canonicalization, hash, C{l=}) its signatures ask
for, and keeps only a few bytes between chunks, so that no body is ever held
whole.  L{LineEndings} first reads the stored message's LF line endings as
CRLF.

Pure: no I/O.  The oracle is dkimpy's C{canonicalize_body}, whose results
these match byte for byte, quirks included (relaxed white space at the very
end of a body without a final CRLF is kept as one space).
"""

from __future__ import annotations

import hashlib
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Iterable, Optional

from dkim.canonicalization import CanonicalizationPolicy, InvalidCanonicalizationPolicyError
from dkim.crypto import HASH_ALGORITHMS

#: How many CRLFs held back at the end of a body are passed on at a time.
_RUN = 32 * 1024

_CRLF = b"\r\n"


class LineEndings:
    """
    Turns a byte stream's line endings into CRLF as it goes: each LF, or
    CRLF, becomes CRLF (a bare CR stays), a CR at the end of one chunk
    being held until the next shows whether an LF follows.  This is
    dkimpy's own reading of a message (lines split at C{\\r?\\n}).
    """

    def __init__(self) -> None:
        self._cr = False

    def feed(self, data: bytes) -> bytes:
        """
        @return: C{data} with CRLF line endings, less a final CR held back.
        """
        if self._cr:
            data = b"\r" + data
            self._cr = False
        if data.endswith(b"\r"):
            data = data[:-1]
            self._cr = True
        return data.replace(_CRLF, b"\n").replace(b"\n", _CRLF)

    def flush(self) -> bytes:
        """
        @return: the CR held back, at the end of the stream.
        """
        held, self._cr = self._cr, False
        return b"\r" if held else b""


@dataclass(frozen=True)
class BodyHashSpec:
    """
    One body hash a signature asks for (RFC 6376 section 3.7).

    @ivar canonicalization: the body canonicalization, C{"simple"} or
        C{"relaxed"} (RFC 6376 section 3.4).
    @ivar hash: the hash algorithm's C{hashlib} name, C{"sha256"} or
        C{"sha1"}.
    @ivar length: the C{l=} body length limit, or L{None} for the whole
        body.
    """

    canonicalization: str
    hash: str
    length: Optional[int] = None

    @classmethod
    def fromTags(cls, tags: dict[bytes, bytes], defaultCanonicalization: bytes = b"simple/simple") -> BodyHashSpec:
        """
        The body hash a signature's tags (C{c=}, C{a=}, C{l=}) ask for.

        @param defaultCanonicalization: the C{c=} that an absent tag means
            (C{simple/simple} for DKIM, C{relaxed/relaxed} for ARC).
        @raise ValueError: an unknown canonicalization or algorithm, or an
            C{l=} that is not a number.
        """
        try:
            policy = CanonicalizationPolicy.from_c_value(tags.get(b"c", defaultCanonicalization))
        except InvalidCanonicalizationPolicyError as e:
            raise ValueError(f"invalid c= value: {e}")
        algorithm = HASH_ALGORITHMS.get(tags.get(b"a", b""))
        if algorithm is None:
            raise ValueError("unknown signature algorithm")
        length = None
        if b"l" in tags:
            if not tags[b"l"].isdigit():
                raise ValueError("l= value is not a decimal integer")
            length = int(tags[b"l"])
        return cls(policy.body_algorithm.name.decode("ascii"), algorithm().name, length)


def _trailingLineEndings(data: bytes) -> int:
    """
    How many CRLFs end C{data}, counted in pairs from its end.
    """
    if not data.endswith(_CRLF):
        return 0
    tail = data[len(data.rstrip(b"\r\n")) :]
    # The CRLFs alternate CR, LF up to the end: they start after the last
    # doubled character of the tail, on a CR.
    start = max(tail.rfind(b"\r\r"), tail.rfind(b"\n\n")) + 1
    if tail[start : start + 1] == b"\n":
        start += 1
    return (len(tail) - start) // 2


class _BodySink:
    """
    Hands the canonical body to the hashes of one canonicalization, each
    cut at its C{l=} (RFC 6376 section 3.4.5).
    """

    def __init__(self, specs: Iterable[BodyHashSpec]) -> None:
        self._hashes = [(spec, hashlib.new(spec.hash), [spec.length]) for spec in specs]

    def write(self, data: bytes) -> None:
        """
        Hash the next bytes of the canonical body, as far as each length.
        """
        for _, hasher, left in self._hashes:
            if left[0] is None:
                hasher.update(data)
            elif left[0] > 0:
                hasher.update(data[: left[0]])
                left[0] = max(left[0] - len(data), 0)

    def digests(self) -> dict[BodyHashSpec, bytes]:
        """
        @return: each hash, by its L{BodyHashSpec}.
        """
        return {spec: hasher.digest() for spec, hasher, _ in self._hashes}


class _Canonicalizer(ABC):
    """
    One body canonicalization, streamed (RFC 6376 sections 3.4.3 and
    3.4.4): the line rules applied by L{_lines}, then the empty lines at
    the end of the body held back, since only the end of the body tells
    whether more text follows them.

    L{_lines} never passes on a CR whose LF may be in the next chunk, so a
    CRLF is never split between two of its outputs.
    """

    #: whether an empty body canonicalizes to nothing (relaxed) rather than
    #: to one CRLF (simple).
    emptyIsEmpty = False

    def __init__(self, sink: _BodySink) -> None:
        self._sink = sink
        self._pending = 0
        self._text = False

    def feed(self, data: bytes) -> None:
        """
        Canonicalize the next bytes of the body.
        """
        self._lineEndingsHeld(self._lines(data))

    def finish(self) -> None:
        """
        End the body: what was held back, then its last CRLF, if any.
        """
        self._lineEndingsHeld(self._flush())
        if self._text or not self.emptyIsEmpty:
            self._sink.write(_CRLF)

    def _lineEndingsHeld(self, data: bytes) -> None:
        """
        Pass on C{data} but the CRLFs at its end, which are kept as a count
        until text follows them.
        """
        if not data:
            return
        count = _trailingLineEndings(data)
        text = data[: len(data) - 2 * count]
        if text:
            while self._pending:
                run = min(self._pending, _RUN)
                self._sink.write(_CRLF * run)
                self._pending -= run
            self._sink.write(text)
            self._text = True
        self._pending += count

    @abstractmethod
    def _lines(self, data: bytes) -> bytes:
        """
        Apply the line rules to the next bytes of the body.

        @return: what can be passed on now; the rest is held back.
        """

    @abstractmethod
    def _flush(self) -> bytes:
        """
        @return: what L{_lines} held back, at the end of the body.
        """


class _Simple(_Canonicalizer):
    """
    The C{simple} body canonicalization (RFC 6376 section 3.4.3): the body
    as it is, less its empty lines at the end, an empty body being one
    CRLF.
    """

    def __init__(self, sink: _BodySink) -> None:
        super().__init__(sink)
        self._cr = b""

    def _lines(self, data: bytes) -> bytes:
        data = self._cr + data
        self._cr = b"\r" if data.endswith(b"\r") else b""
        return data[: len(data) - len(self._cr)]

    def _flush(self) -> bytes:
        held, self._cr = self._cr, b""
        return held


_WSP_RUN = re.compile(rb"[\t ]+")


class _Relaxed(_Canonicalizer):
    """
    The C{relaxed} body canonicalization (RFC 6376 section 3.4.4): white
    space at the end of each line removed, every other run of it one
    space, the empty lines at the end removed, an empty body empty.

    The text after the last CRLF of a chunk waits for the next chunk only
    as far as its trailing white space and CR: the white space is kept as
    one space (whatever follows, the run becomes one space or nothing), so
    that what waits is at most two bytes however long the line.
    """

    emptyIsEmpty = True

    def __init__(self, sink: _BodySink) -> None:
        super().__init__(sink)
        self._held = b""

    def _lines(self, data: bytes) -> bytes:
        data = self._held + data
        last = data.rfind(_CRLF)
        cut = last + 2 if last >= 0 else 0
        lines, rest = data[:cut], data[cut:]
        cr = rest.endswith(b"\r")
        if cr:
            rest = rest[:-1]
        text = rest.rstrip(b" \t")
        self._held = (b" " if len(text) < len(rest) else b"") + (b"\r" if cr else b"")
        if lines:
            # Runs made one space, then those before a CRLF dropped: the
            # same as the other way round, and linear, where a pattern for
            # white space before CRLF backtracks over every long run that
            # does not end a line.
            lines = _WSP_RUN.sub(b" ", lines).replace(b" \r\n", _CRLF)
        return lines + _WSP_RUN.sub(b" ", text)

    def _flush(self) -> bytes:
        held, self._held = self._held, b""
        return held


class BodyHasher:
    """
    Streams a message body (CRLF line endings) once through every body
    hash asked for (RFC 6376 section 3.7): each canonicalization runs once,
    whatever the number of hashes and lengths that read it, and nothing
    is kept but a few bytes between chunks.
    """

    def __init__(self, specs: Iterable[BodyHashSpec]) -> None:
        byCanonicalization: dict[str, list[BodyHashSpec]] = {}
        for spec in set(specs):
            byCanonicalization.setdefault(spec.canonicalization, []).append(spec)
        kinds = {"simple": _Simple, "relaxed": _Relaxed}
        self._sinks = []
        self._canonicalizers = []
        for name, group in byCanonicalization.items():
            sink = _BodySink(group)
            self._sinks.append(sink)
            self._canonicalizers.append(kinds[name](sink))

    def feed(self, data: bytes) -> None:
        """
        Hash the next bytes of the body, cut anywhere.
        """
        for canonicalizer in self._canonicalizers:
            canonicalizer.feed(data)

    def digests(self) -> dict[BodyHashSpec, bytes]:
        """
        End the body.

        @return: each body hash asked for, by its L{BodyHashSpec}.
        """
        result = {}
        for canonicalizer, sink in zip(self._canonicalizers, self._sinks):
            canonicalizer.finish()
            result.update(sink.digests())
        return result
