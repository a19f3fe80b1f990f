"""
A real DNS server for end-to-end relay tests: Twisted's own
C{twistd -n dns --pyzone ZONEFILE}, as a subprocess on 127.0.0.1 and a
free port, serving a zone the test writes.

A I{pyzone} file is Python that binds C{zone} to a list of records made
with the C{Record_*} classes of L{twisted.names.dns}, minus the prefix
(L{twisted.names.authority.PySourceAuthority})::

    zone = [
        SOA("example.test", mname="ns.example.test", rname="root.example.test", ...),
        MX("mx.example.test", 10, "mx1.example.test"),
        A("mx1.example.test", "127.0.0.4"),
    ]

Names are absolute, without the trailing dot.  L{zoneSource} writes that
text from plain tuples; L{RunningDNS} runs the server, waits (bounded)
until it answers, and stops it by PID in a cleanup.
"""

from __future__ import annotations

import os
import random
import socket
import subprocess
import threading
from typing import Iterable, Optional

from tests.e2e import TWISTD, environment, freePort, makeTemporaryDirectory
from tests.process import START_TIMEOUT, STOP_GRACE, ProcessDidNotStart, RunningProcess


def zoneSource(origin: str, records: Iterable[tuple], negativeTtl: int = 1) -> str:
    """
    The text of a pyzone file for C{origin}: its SOA, then C{records}.

    @param records: tuples C{(TYPE, name, *arguments)} as the
        L{twisted.names.dns} C{Record_TYPE} class takes them after the
        name, for instance C{("MX", "mx.example.test", 10, "mx1.example.test")},
        C{("A", "mx1.example.test", "127.0.0.4")}; a null MX (RFC 7505) is
        C{("MX", "null.example.test", 0, "")}.  A record's TTL is one second
        unless the tuple ends with a dict of keyword arguments such as
        C{{"ttl": 300}}.  A C{TXT} record's arguments are its strings: a
        L{str} is encoded as UTF-8 and cut into strings of at most 255
        bytes (RFC 1035 section 3.3.14), so that C{("TXT", name,
        "v=spf1 -all")} or a long DKIM key is one record; L{bytes} are
        taken as one string each, as they are.
    @param negativeTtl: the SOA's TTL and C{minimum}: how long a resolver
        may cache the news that a name or a record does not exist
        (RFC 2308 section 5).
    """
    lines = [
        "zone = [",
        f"    SOA({origin!r}, mname={'ns.' + origin!r}, rname={'root.' + origin!r},"
        f" serial=1, refresh=60, retry=60, expire=60, minimum={negativeTtl}, ttl={negativeTtl}),",
    ]
    for record in records:
        kind, name, *arguments = record
        keywords = {"ttl": 1}
        if arguments and isinstance(arguments[-1], dict):
            keywords.update(arguments.pop())
        if kind == "TXT":
            arguments = [piece for a in arguments for piece in _characterStrings(a)]
        args = ", ".join(repr(a) for a in (name, *arguments))
        kwargs = ", ".join(f"{k}={v!r}" for k, v in keywords.items())
        lines.append(f"    {kind}({args}, {kwargs}),")
    lines.append("]")
    return "\n".join(lines) + "\n"


def _characterStrings(text) -> list[bytes]:
    """
    The C{<character-string>}s of a TXT record for one argument of
    L{zoneSource}: L{bytes} as they are, a L{str} as UTF-8 in pieces of
    at most 255 bytes (an empty L{str} is one empty string).
    """
    if isinstance(text, bytes):
        return [text]
    data = text.encode("utf-8")
    return [data[i:i + 255] for i in range(0, len(data), 255)] or [b""]


def query(host: str, port: int, name: str, kind: str = "MX", timeout: float = 1.0) -> Optional[list]:
    """
    Ask the server at C{host:port} one question over UDP.

    @return: the answer section's records as L{twisted.names.dns.RRHeader}s,
        or L{None} if no answer came in time.
    """
    from twisted.names import dns

    message = dns.Message(id=random.randrange(1, 65535), recDes=0)
    message.queries = [dns.Query(name, getattr(dns, kind), dns.IN)]
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(timeout)
    try:
        s.sendto(message.toStr(), (host, port))
        data, _ = s.recvfrom(65535)
    except (socket.timeout, TimeoutError, ConnectionRefusedError):
        return None
    finally:
        s.close()
    answer = dns.Message()
    answer.fromStr(data)
    return answer.answers


class RunningDNS:
    """
    One C{twistd -n dns --pyzone} subprocess on 127.0.0.1.

    @ivar host: C{"127.0.0.1"}.
    @ivar port: its UDP (and TCP) port.
    @ivar runner: its L{RunningProcess}.
    """

    host = "127.0.0.1"

    def __init__(self, directory: str, zoneText: str, probe: str) -> None:
        """
        @param directory: where the zone file and the log go.
        @param zoneText: the pyzone file's text (see L{zoneSource}).
        @param probe: a name in the zone, asked for (any type) until the
            server answers.
        """
        self.directory = directory
        self.zonePath = os.path.join(directory, "zone.py")
        with open(self.zonePath, "w") as f:
            f.write(zoneText)
        self.probe = probe
        self.port: Optional[int] = None
        self.runner = RunningProcess(
            TWISTD, os.path.join(directory, "twistd-dns.log"), cwd=directory, env=environment(),
            name="the DNS server",
        )

    @classmethod
    def start(cls, addCleanup, zoneText: str, probe: str) -> "RunningDNS":
        """
        Start a server in a new temporary directory; a cleanup stops it and
        removes the directory.

        @param addCleanup: a test's C{addCleanup} or a class's
            C{addClassCleanup}.
        """
        directory = makeTemporaryDirectory(addCleanup, prefix="smtpmx-dns-")
        server = cls(directory, zoneText, probe)
        addCleanup(server.stop)
        server.launch()
        return server

    @property
    def process(self) -> Optional[subprocess.Popen]:
        """
        The L{subprocess.Popen} of the current run.
        """
        return self.runner.process

    def log(self) -> str:
        """
        What the server wrote.
        """
        return self.runner.log()

    def answers(self, runner: RunningProcess) -> bool:
        """
        Whether the server answers a question about the probe name now: the
        readiness check for L{RunningProcess.launch}.
        """
        return query(self.host, self.port, self.probe, "ALL_RECORDS", 0.3) is not None

    def launch(self, timeout: float = START_TIMEOUT) -> None:
        """
        Run the server on a free port and wait until it answers; if it
        exits first (the port was most likely taken in between), try
        again on another port, three times in all.

        @raise ProcessDidNotStart: it did not answer in time, or would not
            start.
        """
        for attempt in range(3):
            self.port = freePort(self.host)
            self.runner.argv = TWISTD + [
                "-n", "--pidfile=", "dns", "--pyzone", self.zonePath,
                "--port", str(self.port), "--interface", self.host,
            ]
            try:
                self.runner.launch(self.answers, timeout)
                return
            except ProcessDidNotStart as e:
                if not e.exited or attempt == 2:
                    raise

    def stop(self, grace: float = STOP_GRACE) -> None:
        """
        End the server by its PID: SIGTERM, then SIGKILL.  Idempotent.
        """
        self.runner.stop(grace)


def silentServer(addCleanup, host: str = "127.0.0.1") -> tuple[str, int]:
    """
    A DNS server that never answers: a UDP socket bound on C{host} that
    nobody reads, so that questions sent to it are neither answered nor
    refused (no ICMP port unreachable) and every lookup runs into its
    timeout.  A cleanup closes it.

    @param addCleanup: a test's C{addCleanup} or a class's
        C{addClassCleanup}.
    @return: its C{(host, port)}.
    """
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    addCleanup(s.close)
    s.bind((host, 0))
    return host, s.getsockname()[1]


def failingServer(addCleanup, rcode: str = "SERVFAIL", host: str = "127.0.0.1") -> tuple[str, int]:
    """
    A DNS server that answers every question with the error C{rcode} (no
    records): a UDP socket on C{host} served by a thread.  A cleanup stops
    the thread and closes the socket.

    @param addCleanup: a test's C{addCleanup} or a class's
        C{addClassCleanup}.
    @param rcode: an RCODE's name, such as C{"SERVFAIL"} or C{"REFUSED"}.
    @return: its C{(host, port)}.
    """
    import dns.message
    import dns.rcode

    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((host, 0))
    s.settimeout(0.05)
    stop = threading.Event()

    def serve() -> None:
        """
        Answer until stopped.
        """
        while not stop.is_set():
            try:
                data, peer = s.recvfrom(65535)
            except (socket.timeout, TimeoutError):
                continue
            try:
                response = dns.message.make_response(dns.message.from_wire(data))
            except Exception:
                continue
            response.set_rcode(dns.rcode.from_text(rcode))
            s.sendto(response.to_wire(), peer)

    worker = threading.Thread(target=serve, daemon=True)

    def close() -> None:
        """
        Stop the thread, then close the socket.
        """
        stop.set()
        worker.join(5)
        s.close()

    addCleanup(close)
    worker.start()
    return host, s.getsockname()[1]
