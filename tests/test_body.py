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
        A header line longer than the limit stops the scan.
        """
        scanner = HeaderScanner(limit=10)
        scanner.feed(b"x" * 100)
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
