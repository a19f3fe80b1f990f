"""
The DATA byte stream (RFC 5321 section 4.5.2 and 4.1.1.4).

L{DataReader} turns the raw bytes that follow C{354} into the message as it
is stored: dot-unstuffed, with LF line endings.  It works on whole chunks
with C{bytes.find} and one regular expression substitution, never a Python
call per line, and only C{<CRLF>.<CRLF>} ends the data: a bare LF or a bare
CR is normalised to a line ending inside the message and can never end it,
so nothing after it can be smuggled in as a command.
"""

from __future__ import annotations

import re
from typing import Callable, Optional

_END = b"\r\n.\r\n"
# What becomes LF in the message: a CRLF with the dot that may follow it
# (dot-unstuffing, RFC 5321 section 4.5.2), or a bare CR.  One pass of the
# regular expression engine costs half of three passes of bytes.replace.
_LINE_ENDING = re.compile(rb"\r\n\.?|\r")


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
        out = _LINE_ENDING.sub(b"\n", region)
        if self._first:
            # Drop the LF that stands for the CRLF we pretended to see.
            self._first = False
            out = out[1:]
        return out


# The start of a C{Received:} line, lower-cased (RFC 5321 section 4.4).
_RECEIVED = b"received:"
# The name of an C{Authentication-Results:} field, lower-cased (RFC 8601
# section 2.2).
_AUTH_RESULTS = b"authentication-results"
# What a header line may start with, in the order L{HeaderScanner} tells
# them apart.
_CONTINUATION, _RECEIVED_FIELD, _AUTH_FIELD, _OTHER_FIELD = range(4)
# What becomes of the bytes of the field being read.
_PASS, _HOLD, _DROP = range(3)


def _lineKind(head: bytes) -> Optional[int]:
    """
    What a header line starting with C{head} is (a continuation, a
    C{Received:} field, an C{Authentication-Results:} field or another
    one), or L{None} while C{head} is too short to tell.  An
    C{Authentication-Results} line is only a candidate: its name may go
    on, or be followed by white space before the colon; L{fieldValue}
    settles it once the field is whole.
    """
    if head[:1] in (b" ", b"\t"):
        return _CONTINUATION
    low = head.lower()
    if low.startswith(_RECEIVED):
        return _RECEIVED_FIELD
    if low.startswith(_AUTH_RESULTS):
        return _AUTH_FIELD
    if _RECEIVED.startswith(low) or _AUTH_RESULTS.startswith(low):
        return None
    return _OTHER_FIELD


def fieldValue(field: bytes) -> Optional[bytes]:
    """
    The value of a header field, as it is (what follows the colon, line
    folds and all), if its name is C{Authentication-Results} in any case,
    white space allowed before the colon (RFC 5322 section 4.5.3); else
    L{None}.
    """
    name, colon, value = field.partition(b":")
    if not colon or name.rstrip(b" \t").lower() != _AUTH_RESULTS:
        return None
    return value


class HeaderScanner:
    """
    Walks the header section of a message as it streams by: counts its
    C{Received:} fields, for the hop limit (RFC 5321 section 6.3), and,
    given C{forged}, removes the C{Authentication-Results:} fields that
    claim our verdicts (RFC 8601 section 5), so that nobody can forge them.

    L{feed} returns the bytes to store.  Memory stays bounded whatever the
    input: only the first bytes of each line are looked at, and only an
    C{Authentication-Results:} field is held back, until its end or
    C{limit} bytes, when its fate is decided on what was seen (its
    authserv-id comes first).

    @ivar received: the C{Received:} fields seen so far.
    @ivar done: whether the header section is over: the rest of the
        message is not looked at.
    """

    def __init__(self, limit: int = 1 << 20, forged: Optional[Callable[[bytes], bool]] = None) -> None:
        """
        @param limit: the most bytes of one field held back.
        @param forged: told the value of each C{Authentication-Results:}
            field (what follows its colon, line folds and all), says
            whether to remove it; without it nothing is removed.
        """
        self._limit = limit
        self._forged = forged
        # The start of the line being read while its kind is not known;
        # L{None} in the middle of a line.
        self._head: Optional[bytes] = b""
        self._mode = _PASS
        self._held: list[bytes] = []
        self._heldSize = 0
        self.received = 0
        self.done = False

    def feed(self, data: bytes) -> bytes:
        """
        Look at the next message bytes (LF line endings).

        @return: the bytes to store in their place: C{data}, but for
            what is held back or removed, and with what was held back
            before and is now let through.
        """
        if self.done:
            return data
        out: list[bytes] = []
        i, n = 0, len(data)
        while i < n:
            nl = data.find(b"\n", i)
            lineEnd = n if nl < 0 else nl + 1
            if self._head is None:
                self._emit(data[i:lineEnd], out)
            else:
                if not self._head and data[i] == 0x0A:
                    # The empty line: the header section is over.
                    self._closeField(out)
                    out.append(data[i:])
                    self._head = None
                    self.done = True
                    return b"".join(out)
                take = min(lineEnd, i + len(_AUTH_RESULTS) - len(self._head))
                head = self._head + data[i:take]
                kind = _lineKind(head)
                if kind is None:
                    # Not enough to tell yet: the chunk ends before the
                    # line says what it is.
                    self._head = head
                    i = take
                    continue
                self._head = None
                self._startLine(kind, out)
                self._emit(head, out)
                i = take
                if i < lineEnd:
                    self._emit(data[i:lineEnd], out)
            i = lineEnd
            if nl >= 0:
                self._head = b""
        return b"".join(out)

    def flush(self) -> bytes:
        """
        The message is over: the bytes still held back that are to be
        stored.
        """
        if self.done:
            return b""
        out: list[bytes] = []
        head, self._head = self._head, None
        if head:
            self._startLine(_lineKind(head), out)
            self._emit(head, out)
        self._closeField(out)
        self.done = True
        return b"".join(out)

    def _startLine(self, kind: Optional[int], out: list[bytes]) -> None:
        """
        A line of C{kind} begins: a new field ends the one before it.
        """
        if kind == _CONTINUATION:
            return
        self._closeField(out)
        if kind == _RECEIVED_FIELD:
            self.received += 1
        elif kind == _AUTH_FIELD and self._forged is not None:
            self._mode = _HOLD

    def _emit(self, data: bytes, out: list[bytes]) -> None:
        """
        Bytes of the current field: stored, held back or removed.
        """
        if self._mode == _PASS:
            out.append(data)
        elif self._mode == _HOLD:
            self._held.append(data)
            self._heldSize += len(data)
            if self._heldSize > self._limit:
                self._decide(out)

    def _closeField(self, out: list[bytes]) -> None:
        """
        The current field is whole: decide on it if it was held back.
        """
        if self._mode == _HOLD:
            self._decide(out)
        self._mode = _PASS

    def _decide(self, out: list[bytes]) -> None:
        """
        Store or remove the field held back; the rest of it, if it goes
        on, shares its fate (C{_mode} becomes L{_PASS} or L{_DROP}).
        """
        field = b"".join(self._held)
        self._held, self._heldSize = [], 0
        value = fieldValue(field)
        assert self._forged is not None
        if value is not None and self._forged(value):
            self._mode = _DROP
        else:
            self._mode = _PASS
            out.append(field)
