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
import sys
import time
from typing import Iterable, Optional

from tests.e2e import environment, freePort, makeTemporaryDirectory, stopProcess

TWISTD = [
    sys.executable,
    "-c",
    "import sys; sys.argv[0] = 'twistd'; from twisted.scripts.twistd import run; run()",
]

START_TIMEOUT = 20.0


def zoneSource(origin: str, records: Iterable[tuple]) -> str:
    """
    The text of a pyzone file for C{origin}: its SOA, then C{records}.

    @param records: tuples C{(TYPE, name, *arguments)} as the
        L{twisted.names.dns} C{Record_TYPE} class takes them after the
        name, for instance C{("MX", "mx.example.test", 10, "mx1.example.test")},
        C{("A", "mx1.example.test", "127.0.0.4")}; a null MX (RFC 7505) is
        C{("MX", "null.example.test", 0, "")}.
    """
    lines = [
        "zone = [",
        f"    SOA({origin!r}, mname={'ns.' + origin!r}, rname={'root.' + origin!r},"
        " serial=1, refresh=60, retry=60, expire=60, minimum=1, ttl=1),",
    ]
    for record in records:
        kind, name, *arguments = record
        args = ", ".join(repr(a) for a in (name, *arguments))
        lines.append(f"    {kind}({args}, ttl=1),")
    lines.append("]")
    return "\n".join(lines) + "\n"


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
    @ivar process: the L{subprocess.Popen}.
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
        self.process: Optional[subprocess.Popen] = None
        self.port: Optional[int] = None

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

    def log(self) -> str:
        """
        What the server wrote.
        """
        try:
            with open(os.path.join(self.directory, "twistd-dns.log"), "rb") as f:
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def launch(self, timeout: float = START_TIMEOUT) -> None:
        """
        Run the server on a free port and wait until it answers.

        @raise RuntimeError: it exited, or did not answer in time.
        """
        for attempt in range(3):
            self.port = freePort(self.host)
            with open(os.path.join(self.directory, "twistd-dns.log"), "ab") as log:
                self.process = subprocess.Popen(
                    TWISTD
                    + ["-n", "--pidfile=", "dns", "--pyzone", self.zonePath,
                       "--port", str(self.port), "--interface", self.host],
                    cwd=self.directory,
                    env=environment(),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            deadline = time.monotonic() + timeout
            while self.process.poll() is None and time.monotonic() < deadline:
                if query(self.host, self.port, self.probe, "ALL_RECORDS", 0.3) is not None:
                    return
                time.sleep(0.05)
            if self.process.poll() is None:
                self.stop()
                raise RuntimeError(f"the DNS server did not answer within {timeout} s:\n" + self.log())
            # It exited: most likely the port was taken in between; again.
        raise RuntimeError("the DNS server would not start:\n" + self.log())

    def stop(self, grace: float = 5.0) -> None:
        """
        End the server by its PID: SIGTERM, then SIGKILL.  Idempotent.
        """
        if self.process is not None:
            stopProcess(self.process, grace)
