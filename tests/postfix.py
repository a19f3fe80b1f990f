"""
Postfix's C{smtp-sink} as a real next hop for tests and benchmarks: started
on a loopback address, stopped by PID.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import time
from typing import Callable, Sequence

from tests.e2e import stopProcess

SMTP_SINK = "/usr/sbin/smtp-sink"


class SmtpSink:
    """
    A running C{smtp-sink -c}; its output holds its counters.

    @ivar port: the port it listens on.
    """

    def __init__(self, process: subprocess.Popen, outputPath: str, port: int) -> None:
        self.process = process
        self.outputPath = outputPath
        self.port = port

    def stop(self) -> None:
        """
        SIGTERM, then SIGKILL; idempotent.
        """
        stopProcess(self.process)

    def output(self) -> str:
        """
        What it printed (with C{-c}: its counters).
        """
        with open(self.outputPath, "rb") as f:
            return f.read().decode("utf-8", "replace")

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

    @raise RuntimeError: it did not start.
    """
    outputPath = os.path.join(directory, "smtp-sink.out")
    arguments = [SMTP_SINK, "-c"]
    if os.geteuid() == 0:
        arguments += ["-u", "root"]
    arguments += [*extra, f"{host}:{port}", str(backlog)]
    with open(outputPath, "wb") as out:
        process = subprocess.Popen(
            arguments, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True, cwd=directory,
        )
    sink = SmtpSink(process, outputPath, port)
    addCleanup(sink.stop)
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection((host, port), timeout=1).close()
            return sink
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError("smtp-sink did not start: " + sink.output())
            time.sleep(0.05)
