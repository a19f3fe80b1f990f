"""
A private rspamd for tests and benchmarks: C{rspamd -f -i -c CONF} with
its own configuration, database, PID file and log in a temporary
directory, one normal worker on a free loopback port, no controller, no
redis, no DNS (a nameserver that does not exist, so nothing leaves the
machine), stopped by its PID.

The configuration enables rspamd's test patterns: GTUBE gives C{reject},
and its C{Y}/C{Z}/C{A} variants give C{add header}, C{rewrite subject} and
C{no action}.  Its public-suffix list is a few lines (compiling rspamd's
full list takes seconds at every start); a domain under another TLD counts
as having no public suffix.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import urllib.request
from typing import Optional

from twisted.internet.threads import deferToThread
from zope.interface import implementer

from smtpmx.address import parseAddress
from smtpmx.config import Config
from smtpmx.envelope import Envelope, LocalMailbox, Recipient
from smtpmx.interfaces import IFilterableMessage
from smtpmx.testing import validationContext
from smtpmx.validation import ValidationContext

from tests.e2e import freePort
from tests.process import RunningProcess

RSPAMD = shutil.which("rspamd") or "/usr/bin/rspamd"

# GTUBE (rspamd: reject) and rspamd's test variants of it.
GTUBE = b"XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
GTUBE_ADD_HEADER = b"Y" + GTUBE[1:]
GTUBE_REWRITE_SUBJECT = b"Z" + GTUBE[1:]

CONFIG = """\
options {{
  pidfile = "{dir}/rspamd.pid";
  dbdir = "{dir}";
  tempdir = "{dir}";
  filters = "";
  enable_test_patterns = true;
  url_tld = "{dir}/tld.dat";
  control_socket = "";
  dns {{ nameserver = ["127.0.0.1:{deadPort}"]; timeout = 0.2s; retransmits = 1; }}
}}
logging {{ type = "file"; filename = "{dir}/rspamd.log"; level = "info"; }}
actions {{ reject = 15; add_header = 6; greylist = 4; }}
worker "normal" {{ bind_socket = "127.0.0.1:{port}"; count = 1; }}
"""

PUBLIC_SUFFIXES = "com\norg\nnet\nexample\ntest\n"

HAM = (
    b"From: Alice <alice@example.org>\nTo: bob@example.com\nSubject: lunch\n"
    b"Message-ID: <1@example.org>\n\nShall we have lunch on Friday?\n"
)


def spam(pattern: bytes) -> bytes:
    """
    A small message whose body carries one of rspamd's test patterns.
    """
    return (
        b"From: Mallory <m@example.net>\nTo: bob@example.com\nSubject: offer\n\n"
        + pattern + b"\n"
    )


@implementer(IFilterableMessage)
class FileMessage:
    """
    A spooled message as a filter sees it: a file on disk, opened anew by
    each L{open}; the files opened are kept to check they get closed.
    """

    def __init__(self, data: bytes, envelope: Optional[Envelope] = None) -> None:
        """
        @param data: the message as received.
        @param envelope: its envelope; a small default one if L{None}.
        """
        directory = tempfile.mkdtemp(prefix="rspamd-msg")
        self.directory = directory
        self.path = os.path.join(directory, "spool")
        with open(self.path, "wb") as f:
            f.write(data)
        self.size = len(data)
        self.envelope = envelope or makeEnvelope()
        self.opened: list = []

    def open(self):
        """
        The spooled file, for reading.
        """
        f = open(self.path, "rb")
        self.opened.append(f)
        return f

    def remove(self) -> None:
        """
        Remove the spool.
        """
        shutil.rmtree(self.directory, ignore_errors=True)


def makeEnvelope(reversePath: Optional[str] = "alice@example.org") -> Envelope:
    """
    An envelope from 192.0.2.7 to two local recipients.
    """
    return Envelope(
        queueId="4XyZ12AbQ",
        clientHost="192.0.2.7",
        heloName="mail.example.org",
        reversePath=parseAddress(reversePath) if reversePath else None,
        recipients=[
            Recipient(parseAddress("bob@example.com"), LocalMailbox("example.com", "bob")),
            Recipient(parseAddress("carol@example.com"), LocalMailbox("example.com", "carol")),
        ],
    )


def threadContext() -> ValidationContext:
    """
    The context a filter gets in the server: reads go to the reactor's
    thread pool, connections are made with the (real) reactor.
    """
    from twisted.internet import reactor

    return validationContext(
        config=Config(hostname="mx.example.com"), runBlocking=deferToThread,
        reactor=reactor,
    )


def available() -> Optional[str]:
    """
    L{None} when rspamd can run here, else why not (the skip reason).
    """
    if not os.access(RSPAMD, os.X_OK):
        return f"rspamd is not installed ({RSPAMD})"
    return None


def pong(url: str) -> bool:
    """
    Whether the rspamd worker at C{url} answers C{/ping}.
    """
    try:
        with urllib.request.urlopen(url + "/ping", timeout=1) as reply:
            return reply.read().strip() == b"pong"
    except OSError:
        return False


class RunningRspamd:
    """
    A private rspamd.

    @ivar directory: where its configuration, database and log are.
    @ivar port: its normal worker's port on 127.0.0.1.
    @ivar url: the worker's address, for C{--filter rspamd:URL}.
    @ivar runner: the L{RunningProcess}.
    """

    def __init__(self, directory: str) -> None:
        """
        @param directory: an empty directory of the test's (short path).
        """
        self.directory = directory
        self.port = freePort()
        self.url = f"http://127.0.0.1:{self.port}"
        self.configPath = os.path.join(directory, "rspamd.conf")
        self.logPath = os.path.join(directory, "rspamd.log")
        with open(os.path.join(directory, "tld.dat"), "w") as f:
            f.write(PUBLIC_SUFFIXES)
        with open(self.configPath, "w") as f:
            f.write(CONFIG.format(dir=directory, port=self.port, deadPort=freePort()))
        self.runner = RunningProcess(
            [RSPAMD, "-f", "-i", "-c", self.configPath],
            os.path.join(directory, "stdout.log"),
            name="rspamd",
        )

    def start(self) -> "RunningRspamd":
        """
        Start it and wait until its worker answers C{/ping}.

        @raise tests.process.ProcessDidNotStart: it did not, in time.
        """
        self.runner.launch(lambda _: pong(self.url))
        return self

    def stop(self) -> None:
        """
        Stop it by its PID (bounded).
        """
        self.runner.stop()

    def log(self) -> str:
        """
        rspamd's log so far.
        """
        try:
            with open(self.logPath, encoding="utf-8", errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def mark(self) -> int:
        """
        Where the log ends now, for L{clientPorts} to look only after it.
        """
        return len(self.log())

    def clientPorts(self, since: int = 0) -> list[int]:
        """
        The client port of every request rspamd logged after C{since} (a
        L{mark}), in order: one port per TCP connection, so a repeated port
        means a reused connection.
        """
        return [
            int(port)
            for port in re.findall(
                r"accepted connection from 127\.0\.0\.1 port (\d+)", self.log()[since:]
            )
        ]
