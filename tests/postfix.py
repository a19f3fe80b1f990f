"""
Postfix's C{smtp-sink} as a real next hop for tests and benchmarks: started
on a loopback address, stopped by PID.
"""

from __future__ import annotations

import os
import re
import subprocess
from typing import Callable, Optional, Sequence

from tests.process import RunningProcess, acceptsConnections

SMTP_SINK = "/usr/sbin/smtp-sink"


class SmtpSink:
    """
    A running C{smtp-sink -c}; its output holds its counters.

    @ivar port: the port it listens on.
    @ivar runner: its L{RunningProcess}.
    """

    def __init__(self, runner: RunningProcess, port: int) -> None:
        """
        @param runner: the process, started or not.
        @param port: the port it listens on.
        """
        self.runner = runner
        self.port = port

    @property
    def process(self) -> Optional[subprocess.Popen]:
        """
        The L{subprocess.Popen}.
        """
        return self.runner.process

    def stop(self) -> None:
        """
        SIGTERM, then SIGKILL; idempotent.
        """
        self.runner.stop()

    def output(self) -> str:
        """
        What it printed (with C{-c}: its counters).
        """
        return self.runner.output()

    def counters(self) -> tuple[int, int]:
        """
        Sessions that have ended (less the probe that saw it start) and
        messages taken, from its last counters line.
        """
        found = re.findall(r"sess=(\d+) quit=\d+ mesg=(\d+)", self.output())
        if not found:
            return 0, 0
        sessions, messages = found[-1]
        return int(sessions) - 1, int(messages)


def startSmtpSink(
    addCleanup: Callable,
    directory: str,
    host: str,
    port: int,
    extra: Sequence[str] = (),
    backlog: int = 100,
) -> SmtpSink:
    """
    Start C{smtp-sink -c [-u root] [extra] HOST:PORT BACKLOG}, register its
    stop with C{addCleanup}, and wait (10 s at most) until it accepts
    connections.

    @raise tests.process.ProcessDidNotStart: it did not start.
    """
    arguments = [SMTP_SINK, "-c"]
    if os.geteuid() == 0:
        arguments += ["-u", "root"]
    arguments += [*extra, f"{host}:{port}", str(backlog)]
    runner = RunningProcess(arguments, os.path.join(directory, "smtp-sink.out"), cwd=directory, name="smtp-sink")
    sink = SmtpSink(runner, port)
    addCleanup(sink.stop)
    runner.launch(acceptsConnections(host, port), timeout=10)
    return sink
