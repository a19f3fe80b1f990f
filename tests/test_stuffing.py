"""
Tests for L{smtpmx.relay.stuffing}: the message as the relay client sends
it after C{354}.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from smtpmx.body import DataReader
from smtpmx.relay.stuffing import DotStuffer

# Messages made mostly of the bytes that matter here.
_messages = st.binary(max_size=400) | st.lists(
    st.sampled_from([b".", b"\n", b"\r", b"\r\n", b"a", b"..", b"\n.", b"x\n"]), max_size=120
).map(b"".join)


def stuff(message: bytes, cuts: list[int] = ()) -> bytes:
    """
    Stuff C{message}, fed in the pieces that C{cuts} (offsets into it)
    delimit, and end it.
    """
    stuffer = DotStuffer()
    out = []
    start = 0
    for cut in sorted(set(cuts)):
        out.append(stuffer.feed(message[start:cut]))
        start = cut
    out.append(stuffer.feed(message[start:]))
    out.append(stuffer.end())
    return b"".join(out)


def unstuff(wire: bytes) -> bytes:
    """
    What our own server stores for C{wire}, the bytes that follow C{354}.
    """
    reader = DataReader()
    message, leftover = reader.feed(wire)
    assert reader.done and leftover == b"", (wire, leftover)
    return message


def normalised(message: bytes) -> bytes:
    """
    C{message} with every line ending LF and a final one added, as the
    next hop stores it.
    """
    text = message.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    if text and not text.endswith(b"\n"):
        text += b"\n"
    return text


class DotStufferTests(SynchronousTestCase):
    """
    Tests for L{DotStuffer}.
    """

    @pytest.mark.rfc("5321", "4.5.2", "5321-4.5.2-1")
    def test_simple(self) -> None:
        """
        LF line endings become CRLF, a leading dot is doubled, and the data
        ends with C{.CRLF}.
        """
        self.assertEqual(stuff(b"a\n.b\n..\nc\n"), b"a\r\n..b\r\n...\r\nc\r\n.\r\n")

    @pytest.mark.rfc("5321", "4.5.2", "5321-4.5.2-1")
    def test_firstLine(self) -> None:
        """
        A dot at the very start of the message is doubled too.
        """
        self.assertEqual(stuff(b".\n"), b"..\r\n.\r\n")

    @pytest.mark.rfc("5321", "4.1.1.4", "5321-4.1.1.4-5")
    def test_empty(self) -> None:
        """
        An empty message is just the end marker.
        """
        self.assertEqual(stuff(b""), b".\r\n")

    @pytest.mark.rfc("5321", "4.1.1.4", "5321-4.1.1.4-6")
    def test_noFinalNewline(self) -> None:
        """
        A message without a final line ending gets one before the end
        marker, so the marker is on a line of its own.
        """
        self.assertEqual(stuff(b"a\n.b"), b"a\r\n..b\r\n.\r\n")

    @pytest.mark.rfc("5321", "4.1.1.4", "5321-4.1.1.4-5")
    def test_crlfInput(self) -> None:
        """
        A CRLF in the input is one line ending, not two.
        """
        self.assertEqual(stuff(b"a\r\n.b\r\n"), b"a\r\n..b\r\n.\r\n")

    def test_crlfSplitAcrossChunks(self) -> None:
        """
        A CRLF split between two chunks is still one line ending, and a
        dot after it is still at the start of a line.
        """
        self.assertEqual(stuff(b"a\r\n.b\r", [2, 3]), b"a\r\n..b\r\n.\r\n")

    @pytest.mark.rfc("5321", "2.3.8", "5321-2.3.8-2")
    def test_bareCR(self) -> None:
        """
        A bare CR is sent as a line ending, never as it is, so that no next
        hop can read C{<CR>.<CRLF>} as the end of the data.
        """
        wire = stuff(b"a\r.\r\nb\n")
        self.assertEqual(wire, b"a\r\n..\r\nb\r\n.\r\n")
        self.assertNotIn(b"\r.\r", wire)

    @pytest.mark.rfc("5321", "4.5.2", "5321-4.5.2-1")
    def test_dotAtChunkBoundary(self) -> None:
        """
        A line starting with a dot exactly where a chunk starts is
        stuffed: the state is kept across chunks.
        """
        stuffer = DotStuffer()
        self.assertEqual(stuffer.feed(b"abc\n"), b"abc\r\n")
        self.assertEqual(stuffer.feed(b".def\n"), b"..def\r\n")
        self.assertEqual(stuffer.end(), b".\r\n")

    @pytest.mark.rfc("5321", "4.5.2", "5321-4.5.2-1")
    def test_dotLinesAroundRealChunkSizes(self) -> None:
        """
        A C{.} line at every offset around 16 KiB and 64 KiB, with the
        message read in chunks of those sizes, is stuffed and unstuffed
        back to the same message.
        """
        for size in (16384, 65536):
            for offset in range(size - 4, size + 4):
                message = b"x" * (offset - 1) + b"\n.\n..\n.x\nend\n"
                for chunk in (size, 8192, 4096):
                    cuts = list(range(chunk, len(message), chunk))
                    wire = stuff(message, cuts)
                    self.assertEqual(wire.count(b"\r\n.\r\n"), 1, (size, offset, chunk))
                    self.assertTrue(wire.endswith(b"\r\n.\r\n"))
                    self.assertEqual(unstuff(wire), message, (size, offset, chunk))

    @settings(max_examples=300, deadline=None)
    @given(_messages, st.lists(st.integers(min_value=0, max_value=400), max_size=12))
    def test_anyChunking(self, message: bytes, cuts: list[int]) -> None:
        """
        Whatever the chunk boundaries, the bytes sent are the same.
        """
        self.assertEqual(stuff(message, cuts), stuff(message))

    @pytest.mark.rfc("5321", "4.5.2", "5321-4.5.2-1")
    @pytest.mark.rfc("5321", "2.3.8", "5321-2.3.8-2")
    @settings(max_examples=300, deadline=None)
    @given(_messages, st.lists(st.integers(min_value=0, max_value=400), max_size=12))
    def test_roundTrip(self, message: bytes, cuts: list[int]) -> None:
        """
        The next hop's reader gives back the message (with its line
        endings made LF), and the end marker is found only at the end.
        """
        wire = stuff(message, cuts)
        self.assertEqual(unstuff(wire), normalised(message))
        self.assertEqual(wire.find(b"\r\n.\r\n"), len(wire) - 5 if wire != b".\r\n" else -1)

    @settings(max_examples=200, deadline=None)
    @given(st.binary(max_size=300).map(lambda b: b.replace(b"\r", b"")))
    def test_lfMessagesExact(self, message: bytes) -> None:
        """
        A stored message (LF only) that ends with a line ending comes back
        byte for byte.
        """
        if message and not message.endswith(b"\n"):
            message += b"\n"
        self.assertEqual(unstuff(stuff(message)), message)
