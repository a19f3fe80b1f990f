"""
A private postgrey (Debian's greylisting policy server) for tests: its
database in a temporary directory, listening on a free loopback port, in
the foreground, stopped by its PID.

postgrey's timing options, as its manual gives them:

  - C{--delay=N}: a triplet (client address, sender, recipient) seen for
    the first time is greylisted (C{DEFER_IF_PERMIT}) and keeps being so
    for N seconds; a retry after that passes (C{PREPEND X-Greylist: ...}).
  - C{--retry-window=N}: the first retry must come within N days (N
    hours with a trailing C{h}), else the triplet starts over.
  - C{--max-age=N}: a triplet not seen for N days is forgotten.

Tests keep C{--delay} at a couple of seconds and leave the other two at
their defaults (2 days, 35 days), which a test never reaches.

Run as root, postgrey switches to C{--user}/C{--group}, by default a
C{postgrey} user that could not write our temporary database: the
harness names the user and group running the tests.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
from typing import Callable

from tests.e2e import freePort, makeTemporaryDirectory
from tests.process import RunningProcess, acceptsConnections

POSTGREY = "/usr/sbin/postgrey"


def postgreyMissing() -> str:
    """
    Why postgrey cannot be run here, or C{""} when it can.
    """
    if not os.access(POSTGREY, os.X_OK) and shutil.which("postgrey") is None:
        return f"postgrey is not installed ({POSTGREY}; Debian's package postgrey)"
    return ""


class RunningPostgrey:
    """
    One private postgrey.

    @ivar port: the loopback port it listens on.
    @ivar endpoint: its Twisted client endpoint string, for
        C{--validator policy:ENDPOINT}.
    @ivar runner: its L{RunningProcess}.
    """

    def __init__(self, directory: str, delay: int = 2) -> None:
        """
        @param directory: where its database and log go.
        @param delay: its C{--delay}, in seconds.
        """
        self.port = freePort()
        self.endpoint = f"tcp:127.0.0.1:{self.port}"
        dbdir = os.path.join(directory, "db")
        os.mkdir(dbdir, 0o700)
        program = POSTGREY if os.access(POSTGREY, os.X_OK) else shutil.which("postgrey")
        self.runner = RunningProcess(
            [
                program,
                f"--inet=127.0.0.1:{self.port}",
                f"--dbdir={dbdir}",
                f"--delay={delay}",
                f"--pidfile={os.path.join(directory, 'postgrey.pid')}",
                f"--user={pwd.getpwuid(os.getuid()).pw_name}",
                f"--group={grp.getgrgid(os.getgid()).gr_name}",
            ],
            os.path.join(directory, "postgrey.log"),
            name="postgrey",
        )

    @classmethod
    def start(cls, addCleanup: Callable, delay: int = 2) -> "RunningPostgrey":
        """
        Start one in a new temporary directory, ready once it accepts
        connections; stopped by PID and its directory removed by cleanups.

        @param addCleanup: a test's C{addCleanup} (or a class's).
        """
        directory = makeTemporaryDirectory(addCleanup, prefix="smtpmx-postgrey-")
        postgrey = cls(directory, delay)
        addCleanup(postgrey.stop)
        postgrey.runner.launch(acceptsConnections("127.0.0.1", postgrey.port))
        return postgrey

    def stop(self) -> None:
        """
        SIGTERM, then SIGKILL, by PID; idempotent.
        """
        self.runner.stop()

    def log(self) -> str:
        """
        What it logged: one line per decision (C{action=greylist, ...},
        C{action=pass, ...}).
        """
        return self.runner.log()
