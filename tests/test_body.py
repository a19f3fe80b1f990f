"""
Tests for the DATA reader: termination, unstuffing, line endings, and the
same result whatever the chunk boundaries.
"""

from __future__ import annotations

from hypothesis import given, settings, strategies as st
import pytest
from twisted.trial.unittest import SynchronousTestCase

from smtpmx.body import DataReader, HeaderScanner


def readAll(data: bytes, cuts=()) -> tuple[bytes, bytes | None]:
    """
    Feed C{data} cut at the given offsets; return the message and what
    followed the end (None if the end was not seen).
    """
    reader = DataReader()
    out = []
    points = sorted(set(c for c in cuts if 0 < c < len(data)))
    pieces = [data[a:b] for a, b in zip([0] + points, points + [len(data)])]
    for i, piece in enumerate(pieces):
        body, leftover = reader.feed(piece)
        out.append(body)
        if leftover is not None:
            return b"".join(out), leftover + b"".join(pieces[i + 1 :])
    return b"".join(out), None


def dotStuff(message: bytes) -> bytes:
    """
    What an RFC 5321 client sends for C{message} (LF lines): CRLF endings,
    leading dots doubled, then the terminator.
    """
    lines = message.split(b"\n")
    assert lines[-1] == b""
    return b"".join((b"." + l if l.startswith(b".") else l) + b"\r\n" for l in lines[:-1]) + b".\r\n"


class DataReaderTests(SynchronousTestCase):
    """
    L{DataReader} reads exactly one message.
    """

    @pytest.mark.rfc("5321", "4.5.2", "5321-4.5.2-2")
    def test_empty(self):
        """
        A lone dot at once is an empty message.
        """
        self.assertEqual(readAll(b".\r\n"), (b"", b""))

    @pytest.mark.rfc("5321", "4.5.2", "5321-4.5.2-2")
    def test_unstuff(self):
        """
        One leading dot is removed from each line.
        """
        self.assertEqual(readAll(b"..a\r\n...\r\nb.\r\n.\r\n"), (b".a\n..\nb.\n", b""))

    @pytest.mark.rfc("2920", "3.2", "2920-3.2-1")
    def test_leftover(self):
        """
        What follows the terminator is handed back, untouched.
        """
        self.assertEqual(readAll(b"a\r\n.\r\nQUIT\r\n"), (b"a\n", b"QUIT\r\n"))

    @pytest.mark.rfc("5321", "2.3.8", "5321-2.3.8-1")
    @pytest.mark.rfc("5321", "4.1.1.4", "5321-4.1.1.4-1")
    def test_bareEndingsNeverEnd(self):
        """
        Bare LF or bare CR around a dot never end the data; they become LF.
        """
        for ending in [b"\n.\n", b"\r\n.\n", b"\n.\r\n", b"\r.\r", b"\r.\r\n", b"\r\n.\r"]:
            body, leftover = readAll(b"a" + ending + b"b\r\n")
            self.assertIsNone(leftover, ending)
            body, leftover = readAll(b"a" + ending + b"b\r\n.\r\n")
            self.assertEqual(leftover, b"", ending)
            self.assertNotIn(b"\r", body)

    def test_size(self):
        """
        The size counts the stored bytes.
        """
        reader = DataReader()
        reader.feed(b"abc\r\n..d\r\n.\r\n")
        self.assertEqual(reader.size, len(b"abc\n.d\n"))

    @settings(max_examples=300, deadline=None)
    @given(
        st.lists(st.sampled_from([b"a", b".", b"\r", b"\n", b"\r\n", b"x y", b".."]), max_size=30),
        st.lists(st.integers(min_value=1, max_value=200), max_size=10),
    )
    def test_chunkBoundaries(self, parts, cuts):
        """
        Any input read in any pieces gives the same message and leftover as
        read in one piece.
        """
        data = b"".join(parts) + b"\r\n.\r\nNEXT"
        self.assertEqual(readAll(data, cuts), readAll(data))

    @settings(max_examples=300, deadline=None)
    @given(
        st.lists(st.binary(max_size=20).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")), max_size=20),
        st.lists(st.integers(min_value=1, max_value=400), max_size=10),
    )
    @pytest.mark.rfc("5321", "4.5.2", "5321-4.5.2-2")
    def test_stuffingRoundTrip(self, lines, cuts):
        """
        A message dot-stuffed by a client comes out exactly as it went in.
        """
        message = b"".join(l + b"\n" for l in lines)
        self.assertEqual(readAll(dotStuff(message), cuts), (message, b""))


    @settings(max_examples=500, deadline=None)
    @given(st.lists(st.sampled_from([b"a", b".", b"\r", b"\n", b"\r\n", b"\r\n.", b".."]), max_size=40))
    def test_lineEndingsAsDefined(self, parts):
        """
        The message is what comes before the first CRLF.CRLF (the stream
        read as if after a CRLF) with every CRLF followed by a dot
        unstuffed, then every CRLF and every bare CR made LF: the
        definition, written as three plain replacements.
        """
        data = b"".join(parts) + b"\r\n.\r\nNEXT"
        stream = b"\r\n" + data
        end = stream.find(b"\r\n.\r\n")
        region = stream[: end + 2]
        expected = region.replace(b"\r\n.", b"\r\n").replace(b"\r\n", b"\n").replace(b"\r", b"\n")[1:]
        self.assertEqual(readAll(data), (expected, stream[end + 5 :]))


class HeaderScannerTests(SynchronousTestCase):
    """
    L{HeaderScanner} counts Received headers in the header section only.
    """

    def test_count(self):
        """
        Received headers are counted in any case, until the blank line.
        """
        scanner = HeaderScanner()
        for piece in [b"Received: a\nX: y\nRECEIVED: b\n", b"\nReceived: in body\n"]:
            scanner.feed(piece)
        self.assertEqual(scanner.received, 2)
        self.assertTrue(scanner.done)

    def test_splitHeader(self):
        """
        A header split across chunks is still counted.
        """
        scanner = HeaderScanner()
        scanner.feed(b"Rece")
        scanner.feed(b"ived: a\n\n")
        self.assertEqual(scanner.received, 1)

    def test_bounded(self):
        """
        A header line longer than the limit is passed on as it arrives,
        nothing of it held back, and the scan goes on after it: a field
        further down is still counted, or removed.
        """
        scanner = HeaderScanner(limit=30, forged=lambda value: True)
        self.assertEqual(scanner.feed(b"x" * 100), b"x" * 100)
        self.assertFalse(scanner.done)
        out = scanner.feed(b"\nAuthentication-Results: mx.example; spf=pass\nReceived: a\n\n")
        self.assertEqual(out, b"\nReceived: a\n\n")
        self.assertEqual(scanner.received, 1)
        self.assertTrue(scanner.done)


class HostileInputTests(SynchronousTestCase):
    """
    No input makes the reader hold more than a few bytes back.
    """

    def test_carriageReturnFlood(self):
        """
        A flood of bare CRs comes out as line endings as it arrives: the
        bytes held back stay bounded, so the size limit and memory bound
        apply to it like to any text.
        """
        reader = DataReader()
        total = 0
        for _ in range(64):
            body, leftover = reader.feed(b"\r" * 65536)
            self.assertIsNone(leftover)
            total += len(body)
            self.assertLessEqual(len(reader._carry), 6)
        self.assertGreater(total, 64 * 65536 - 8)
        self.assertEqual(reader.size, total)


def ours(value: bytes) -> bool:
    """
    Whether an C{Authentication-Results:} value names C{mx.example.org}
    (its first word, as far as these tests go).
    """
    return value.split(b";", 1)[0].strip().lower() == b"mx.example.org"


def scanned(data: bytes, cuts=(), forged=ours) -> tuple[bytes, int]:
    """
    The bytes a L{HeaderScanner} lets through for C{data} cut at C{cuts},
    and the C{Received:} fields it counted.
    """
    scanner = HeaderScanner(forged=forged)
    points = sorted(set(c for c in cuts if 0 < c < len(data)))
    pieces = [data[a:b] for a, b in zip([0] + points, points + [len(data)])]
    out = b"".join(scanner.feed(piece) for piece in pieces) + scanner.flush()
    return out, scanner.received


def removedByHand(data: bytes) -> tuple[bytes, int]:
    """
    What L{scanned} should give, the simple way: the header section (up
    to the first empty line) split into whole fields, those named
    C{Authentication-Results} whose value is L{ours} left out.
    """
    lines = [line + b"\n" for line in data.split(b"\n")]
    lines[-1] = lines[-1][:-1]
    if not lines[-1]:
        lines.pop()
    fields: list[list[bytes]] = []
    rest: list[bytes] = []
    for i, line in enumerate(lines):
        if line == b"\n":
            rest = lines[i:]
            break
        if fields and line[:1] in (b" ", b"\t"):
            fields[-1].append(line)
        else:
            fields.append([line])
    kept = []
    received = 0
    for field in fields:
        text = b"".join(field)
        received += text[:9].lower() == b"received:"
        name, colon, value = text.partition(b":")
        if not (colon and name.rstrip(b" \t").lower() == b"authentication-results" and ours(value)):
            kept.append(text)
    return b"".join(kept + rest), received


HEADER_LINES = st.sampled_from([
    b"Received: from a",
    b"RECEIVED: from b",
    b"Authentication-Results: mx.example.org; spf=pass",
    b"authentication-results : MX.Example.Org; dkim=fail",
    b"Authentication-Results:\n mx.example.org; arc=none",
    b"Authentication-Results: other.example; dkim=pass",
    b"Authentication-Results: mx.example.org.evil; spf=pass",
    b"Authentication-Resultsx: mx.example.org",
    b"Authentication",
    b" folded mx.example.org; spf=pass",
    b"\tAuthentication-Results: mx.example.org",
    b"Subject: hi",
    b"X: " + b"y" * 100,
])


class ForgedFieldTests(SynchronousTestCase):
    """
    L{HeaderScanner} removes the C{Authentication-Results:} fields that
    claim our authserv-id from the header section, and only those
    (RFC 8601 section 5), whatever the chunk boundaries.
    """

    MESSAGE = (
        b"Received: from a\n"
        b"Authentication-Results: mx.example.org; spf=pass\n\tsmtp.mailfrom=x\n"
        b"Authentication-Results: other.example; dkim=pass\n"
        b"authentication-results : MX.example.org;\n dkim=pass\n"
        b"Subject: hi\n"
        b"\n"
        b"Authentication-Results: mx.example.org; in the body\n"
    )
    KEPT = (
        b"Received: from a\n"
        b"Authentication-Results: other.example; dkim=pass\n"
        b"Subject: hi\n"
        b"\n"
        b"Authentication-Results: mx.example.org; in the body\n"
    )

    def test_removed(self) -> None:
        """
        Our fields go, folded lines and all; another authserv-id's field
        and the body stay.
        """
        self.assertEqual(scanned(self.MESSAGE), (self.KEPT, 1))

    def test_everyChunking(self) -> None:
        """
        Cut anywhere, or byte by byte, the message comes out the same.
        """
        for cut in range(len(self.MESSAGE) + 1):
            self.assertEqual(scanned(self.MESSAGE, [cut]), (self.KEPT, 1), cut)
        self.assertEqual(scanned(self.MESSAGE, range(len(self.MESSAGE))), (self.KEPT, 1))

    def test_lastField(self) -> None:
        """
        A forged field that ends the message (no body) is removed when
        the message ends.
        """
        data = b"Subject: x\nAuthentication-Results: mx.example.org; spf=pass\n"
        self.assertEqual(scanned(data), (b"Subject: x\n", 0))
        scanner = HeaderScanner(forged=ours)
        self.assertEqual(scanner.feed(data), b"Subject: x\n")
        self.assertEqual(scanner.flush(), b"")

    def test_notForgedHeldThenKept(self) -> None:
        """
        A field held back until its end is known is let through whole as
        soon as a line that is not its continuation starts.
        """
        scanner = HeaderScanner(forged=ours)
        self.assertEqual(scanner.feed(b"Authentication-Results: other; x\n"), b"")
        self.assertEqual(scanner.feed(b"\tfolded\n"), b"")
        self.assertEqual(scanner.feed(b"Subj"), b"Authentication-Results: other; x\n\tfolded\nSubj")
        self.assertEqual(scanner.feed(b"ect: y\n"), b"ect: y\n")

    def test_withoutForged(self) -> None:
        """
        Without C{forged}, nothing is removed nor held back.
        """
        scanner = HeaderScanner()
        self.assertEqual(scanner.feed(self.MESSAGE), self.MESSAGE)

    def test_longFieldDecidedEarly(self) -> None:
        """
        A field longer than the limit is decided on its start: a forged
        one loses the rest of its lines too, memory stays bounded.
        """
        scanner = HeaderScanner(limit=100, forged=ours)
        out = scanner.feed(b"Authentication-Results: mx.example.org; spf=pass\n")
        for _ in range(10):
            out += scanner.feed(b"\t" + b"x" * 50 + b"\n")
        out += scanner.feed(b"Subject: s\n\nbody\n")
        self.assertEqual(out, b"Subject: s\n\nbody\n")

    @given(
        st.lists(HEADER_LINES, max_size=12),
        st.booleans(),
        st.lists(st.integers(min_value=0, max_value=2000), max_size=8),
    )
    @settings(max_examples=300, deadline=None)
    def test_property(self, lines, withBody, cuts) -> None:
        """
        For any header lines and any chunk boundaries, the scanner lets
        through what the simple field-by-field reading keeps, and counts
        the same C{Received:} fields.
        """
        data = b"".join(line + b"\n" for line in lines)
        if withBody:
            data += b"\nAuthentication-Results: mx.example.org; body\nReceived: body\n"
        self.assertEqual(scanned(data, cuts), removedByHand(data))
