"""
The replies of one SMTP connection on their way to its transport, for
L{smtpmx.server}.

Two things make them cheap.  The replies to one batch of input (the
commands a client pipelined in one packet, RFC 2920) are gathered and
written together, in one C{send}.  And on a plain TCP connection whose
transport holds nothing unsent, a reply is sent to the socket at once:
Twisted's C{write} would buffer it, ask the reactor to watch the socket
for writing, send it on the next turn of the loop and stop watching
again, two C{epoll_ctl} calls and a turn of the loop for every reply.
As soon as the socket takes less than a whole write (the client does
not read), or TLS has started, every later reply goes through the
transport's own C{write}, in order behind what it holds, with its flow
control (the transport pauses the protocol when its buffer is full).
"""

from __future__ import annotations

from typing import Optional

from twisted.internet.interfaces import ITransport
from twisted.internet.tcp import Connection


class ReplyWriter:
    """
    Writes the replies of one connection to its transport, gathered while
    L{hold} is in force.
    """

    def __init__(self, transport: ITransport) -> None:
        """
        @param transport: the connection's transport; a plain TCP one
            (L{twisted.internet.tcp.Connection}) is written to directly
            while it holds nothing unsent.
        """
        self._transport = transport
        self._held: Optional[list[bytes]] = None
        # Whether everything written so far went straight to the socket,
        # so that the transport holds nothing that a direct send would
        # overtake.
        self._direct = isinstance(transport, Connection)

    def send(self, data: bytes) -> None:
        """
        Write C{data}, or keep it for L{flush} while held.
        """
        if self._held is not None:
            self._held.append(data)
        else:
            self._write(data)

    def hold(self) -> bool:
        """
        Gather the replies sent from now on until L{flush}.

        @return: whether this call began the gathering (only the caller
            that began it flushes; the others are nested in it).
        """
        if self._held is not None:
            return False
        self._held = []
        return True

    def flush(self) -> None:
        """
        Write everything gathered, in one write, and stop gathering.
        """
        held, self._held = self._held, None
        if held:
            self._write(held[0] if len(held) == 1 else b"".join(held))

    def _write(self, data: bytes) -> None:
        """
        Send C{data} to the socket now if that is safe and it takes all of
        it; otherwise, and from then on, hand it to the transport.
        """
        transport = self._transport
        if self._direct:
            if getattr(transport, "TLS", True) or not transport.connected or transport.disconnecting:
                self._direct = False
            else:
                sent = transport.writeSomeData(data)
                if isinstance(sent, int) and sent == len(data):
                    return
                self._direct = False
                if isinstance(sent, int) and sent > 0:
                    data = data[sent:]
        transport.write(data)
