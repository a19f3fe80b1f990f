"""
The DATA byte stream (RFC 5321 section 4.5.2 and 4.1.1.4).

L{DataReader} turns the raw bytes that follow C{354} into the message as it
is stored: dot-unstuffed, with LF line endings.  It works on whole chunks
with C{bytes.find} and C{bytes.replace}, never a Python call per line, and
only C{<CRLF>.<CRLF>} ends the data: a bare LF or a bare CR is normalised to
a line ending inside the message and can never end it, so nothing after it
can be smuggled in as a command.
"""

from __future__ import annotations

from typing import Optional

_END = b"\r\n.\r\n"


class DataReader:
    """
    Reads the DATA phase of one message, one chunk at a time.

    The stream is scanned as if preceded by CRLF, so a C{.} on the very
    first line is unstuffed and C{.CRLF} at once ends an empty message.

    @ivar size: message bytes received so far, after unstuffing.
    @ivar done: whether C{<CRLF>.<CRLF>} has been seen.
    """

    def __init__(self) -> None:
        self._carry = b"\r\n"
        self._first = True
        self.size = 0
        self.done = False

    def feed(self, data: bytes) -> tuple[bytes, Optional[bytes]]:
        """
        Read a chunk.

        @return: the message bytes this chunk completes (possibly empty),
            and L{None} while the data goes on, or, once the end is seen,
            the bytes that followed it (the next pipelined commands).
        """
        buf = self._carry + data
        end = buf.find(_END)
        if end >= 0:
            region = buf[: end + 2]
            leftover = buf[end + 5 :]
            self._carry = b""
            self.done = True
        else:
            # Keep back what could be the start of the terminator (four
            # bytes), and never split a CRLF, nor a CRLF from a "." after
            # it: the carry stays at most six bytes, whatever the input.
            cut = max(len(buf) - 4, 0)
            if cut > 0:
                if buf[cut - 1] == 0x0D and buf[cut] == 0x0A:
                    cut -= 1
                elif cut >= 2 and buf[cut] == 0x2E and buf[cut - 2 : cut] == b"\r\n":
                    cut -= 2
            region = buf[:cut]
            self._carry = buf[cut:]
            leftover = None
        out = self._translate(region)
        self.size += len(out)
        return out, leftover

    def _translate(self, region: bytes) -> bytes:
        """
        Unstuff leading dots and turn every line ending into LF.
        """
        if not region:
            return b""
        out = (
            region.replace(b"\r\n.", b"\r\n")
            .replace(b"\r\n", b"\n")
            .replace(b"\r", b"\n")
        )
        if self._first:
            # Drop the LF that stands for the CRLF we pretended to see.
            self._first = False
            out = out[1:]
        return out


class HeaderScanner:
    """
    Counts C{Received:} headers in the header section of a message as it
    streams by, for the hop limit (RFC 5321 section 6.3).

    Only the header section is looked at, and at most C{limit} bytes of it
    are kept, so memory stays bounded.
    """

    def __init__(self, limit: int = 1 << 20) -> None:
        self._pending = b""
        self._limit = limit
        self._atLineStart = True
        self.received = 0
        self.done = False

    def feed(self, data: bytes) -> None:
        """
        Look at the next message bytes (LF line endings).
        """
        if self.done:
            return
        buf = self._pending + data
        start = 0
        while True:
            nl = buf.find(b"\n", start)
            if nl < 0:
                break
            line = buf[start:nl]
            start = nl + 1
            if not line:
                self.done = True
                self._pending = b""
                return
            if line[:9].lower() == b"received:":
                self.received += 1
        self._pending = buf[start:]
        if len(self._pending) > self._limit:
            # A header line longer than any real one: stop counting.
            self.done = True
            self._pending = b""
