"""
The one way the tests run another program: L{RunningProcess} starts a
subprocess in its own session with its output in a log file, waits
(bounded) until it is ready, and stops it by its PID (SIGTERM, then
SIGKILL, each bounded).

Every long-running helper process is one of these: the real
C{twistd -n smtpmx} (L{tests.e2e.RunningServer}), the recording sink
(L{tests.sink.RunningSink}), Twisted's DNS server
(L{tests.dnszone.RunningDNS}) and Postfix's C{smtp-sink}
(L{tests.postfix.startSmtpSink}).  What "ready" means is the caller's: a
line in the log (L{logMatches}), a port that accepts connections
(L{acceptsConnections}), a DNS answer.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
from typing import Callable, Mapping, Optional, Sequence

from tests.helpers import waitUntil

# How long a process may take to become ready, and to stop.
START_TIMEOUT = 20.0
STOP_GRACE = 5.0


class ProcessDidNotStart(Exception):
    """
    A process exited, or was not ready, in time; the message holds its
    output.

    @ivar exited: whether it exited by itself (rather than being stopped
        because it was not ready in time).
    """

    def __init__(self, message: str, exited: bool) -> None:
        """
        @param message: what happened, with the process's output.
        @param exited: see L{exited}.
        """
        super().__init__(message)
        self.exited = exited


def stopProcess(p: subprocess.Popen, grace: float = STOP_GRACE) -> int:
    """
    End a process started by a test, by its PID: SIGTERM, then SIGKILL
    after C{grace} seconds.  Idempotent.

    @return: its exit status.
    """
    if p.poll() is None:
        try:
            os.kill(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            p.wait(grace)
        except subprocess.TimeoutExpired:
            try:
                os.kill(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    return p.wait(grace)


def readLog(path: str) -> str:
    """
    The text of a log file, empty if it does not exist yet.
    """
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return ""


class RunningProcess:
    """
    One subprocess of a test, its stdout and stderr going to one log file.

    @ivar argv: the command line.
    @ivar logPath: where its output goes (appended to, run after run).
    @ivar process: the L{subprocess.Popen} of the current run, or L{None}
        before the first.
    """

    def __init__(
        self,
        argv: Sequence[str],
        logPath: str,
        cwd: Optional[str] = None,
        env: Optional[Mapping[str, str]] = None,
        name: Optional[str] = None,
        stderrPath: Optional[str] = None,
    ) -> None:
        """
        @param argv: the command line.
        @param logPath: the file its stdout (and stderr) goes to.
        @param cwd: its working directory.
        @param env: its environment; ours by default.
        @param name: what to call it in error messages; C{argv[0]} by
            default.
        @param stderrPath: a separate file for its stderr, if it should not
            share L{logPath}.
        """
        self.argv = list(argv)
        self.logPath = logPath
        self.stderrPath = stderrPath
        self.cwd = cwd
        self.env = dict(env) if env is not None else None
        self.name = name or os.path.basename(self.argv[0])
        self.process: Optional[subprocess.Popen] = None
        self.logStart = 0

    def launch(
        self, ready: Callable[["RunningProcess"], object], timeout: float = START_TIMEOUT,
    ) -> object:
        """
        Start the process and wait until C{ready(self)} returns something
        true.

        @param ready: asked every 50 ms whether the process is ready.
        @return: the true value C{ready} returned (a regular expression
            match, for instance).
        @raise ProcessDidNotStart: it exited first, or was not ready in
            C{timeout} seconds (then it is stopped).
        """
        self.logStart = len(readLog(self.logPath))
        stderr = open(self.stderrPath, "ab") if self.stderrPath else None
        with open(self.logPath, "ab") as out:
            try:
                self.process = subprocess.Popen(
                    self.argv,
                    cwd=self.cwd,
                    env=self.env,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=stderr if stderr is not None else subprocess.STDOUT,
                    start_new_session=True,
                )
            finally:
                if stderr is not None:
                    stderr.close()
        process = self.process
        found = waitUntil(lambda: ready(self) or process.poll() is not None, timeout)
        if found is True and process.poll() is not None:
            found = ready(self)
            if not found:
                raise ProcessDidNotStart(
                    f"{self.name} exited with status {process.returncode} before it was ready:\n"
                    + self.log(),
                    exited=True,
                )
        if not found:
            self.stop()
            raise ProcessDidNotStart(
                f"{self.name} was not ready within {timeout} s:\n" + self.log(), exited=False
            )
        return found

    def running(self) -> bool:
        """
        Whether the current run is still going.
        """
        return self.process is not None and self.process.poll() is None

    def stop(self, grace: float = STOP_GRACE) -> Optional[int]:
        """
        End the process by its PID: SIGTERM, then SIGKILL after C{grace}
        seconds.  Idempotent.

        @return: its exit status, or L{None} if it was never started.
        """
        if self.process is None:
            return None
        return stopProcess(self.process, grace)

    def kill9(self) -> None:
        """
        Kill the process with SIGKILL, the way a power cut would, and reap
        it.
        """
        p = self.process
        if p is None:
            return
        if p.poll() is None:
            try:
                os.kill(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        p.wait(STOP_GRACE)

    @property
    def pid(self) -> int:
        """
        The process ID of the current run.
        """
        assert self.process is not None, "never started"
        return self.process.pid

    def output(self) -> str:
        """
        What the current run has written to L{logPath} so far.
        """
        return readLog(self.logPath)[self.logStart :]

    def log(self) -> str:
        """
        Everything the process wrote, by every run: L{logPath}, then
        C{stderrPath} if separate.
        """
        return readLog(self.logPath) + (readLog(self.stderrPath) if self.stderrPath else "")



class MaildirPeer:
    """
    A mail server the benchmark and the tests run beside smtpmx (a private
    Postfix, chasquid, aiosmtpd), filing into Maildirs
    C{<maildirs>/<domain>/<user>/}: what every one of them answers.

    @ivar runner: its L{RunningProcess}.
    @ivar maildirs: the root of its Maildirs.
    @ivar domain: the domain it receives for.
    """

    runner: RunningProcess
    maildirs: str
    domain: str

    @property
    def pid(self) -> int:
        """
        Its (first) process ID; any other process of it is a child.
        """
        return self.runner.pid

    def stop(self) -> None:
        """
        SIGTERM, then SIGKILL; idempotent.
        """
        self.runner.stop()

    def maildir(self, user: str) -> str:
        """
        The Maildir of C{user@domain}.
        """
        return os.path.join(self.maildirs, self.domain, user)

def logMatches(pattern: str | re.Pattern) -> Callable[[RunningProcess], Optional[re.Match]]:
    """
    A readiness check for L{RunningProcess.launch}: the current run has
    written a line matching C{pattern} to its log.
    """
    compiled = re.compile(pattern)

    def ready(process: RunningProcess) -> Optional[re.Match]:
        """
        The first match of the pattern in this run's output, if any.
        """
        return compiled.search(process.output())

    return ready


def acceptsConnections(host: str, port: int) -> Callable[[RunningProcess], bool]:
    """
    A readiness check for L{RunningProcess.launch}: something accepts TCP
    connections on C{host:port}.
    """

    def ready(process: RunningProcess) -> bool:
        """
        Whether a connection succeeds now.
        """
        try:
            socket.create_connection((host, port), timeout=1).close()
        except OSError:
            return False
        return True

    return ready
