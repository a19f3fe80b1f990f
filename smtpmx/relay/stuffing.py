"""
Dot-stuffing for the relay client (RFC 5321 section 4.5.2).

A queued message is stored with LF line endings (docs/storage.rst); on the
wire every line ends in CRLF, every line that starts with C{.} gets a second
one, and C{<CRLF>.<CRLF>} ends the data.  L{DotStuffer} does this over the
whole stream, so that a line that starts exactly at a chunk boundary is
stuffed like any other — the bug of stuffing each chunk on its own, as
C{twisted.mail.smtp}'s client does, cannot happen here.

It works on whole chunks with C{bytes.replace}, never a Python call per
line, so large messages cost little.
"""

from __future__ import annotations


class DotStuffer:
    """
    Turns a stored message, fed in chunks of any size, into the bytes sent
    after C{354}.

    An LF, a CRLF or a bare CR is one line ending and becomes CRLF, as
    L{smtpmx.body.DataReader} reads them.  A bare CR is never sent as it is:
    a next hop that took C{<CR>.<CRLF>} for the end of the data would let
    what follows be smuggled in as commands.

    @ivar _atLineStart: whether the next byte sent starts a line.
    @ivar _heldCR: whether the last chunk ended with a CR, held back until
        the next chunk says whether an LF follows it.
    """

    def __init__(self) -> None:
        """
        Start at the beginning of a message.
        """
        self._atLineStart = True
        self._heldCR = False

    def feed(self, chunk: bytes) -> bytes:
        """
        Stuff the next chunk of the message.

        @param chunk: the next bytes of the stored message.
        @return: the bytes to send for it (a trailing CR is held back
            until the next call tells whether an LF follows it).
        """
        if self._heldCR:
            chunk = b"\r" + chunk
            self._heldCR = False
        if chunk.endswith(b"\r"):
            chunk = chunk[:-1]
            self._heldCR = True
        if not chunk:
            return b""
        text = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        stuffed = text.replace(b"\n.", b"\n..")
        if self._atLineStart and stuffed[:1] == b".":
            stuffed = b"." + stuffed
        self._atLineStart = stuffed.endswith(b"\n")
        return stuffed.replace(b"\n", b"\r\n")

    def end(self) -> bytes:
        """
        Finish the message.

        @return: the last bytes to send: the line ending of a CR held back,
            or a CRLF if the message did not end with a line ending, then
            C{.CRLF}.
        """
        out = b"\r\n" if self._heldCR or not self._atLineStart else b""
        self._heldCR = False
        self._atLineStart = True
        return out + b".\r\n"
