"""
A harness for end-to-end tests: the real C{twistd -n smtpmx} as a
subprocess, in a fresh temporary directory, talked to over loopback.

L{RunningServer} starts the server with L{tests.process.RunningProcess},
waits (bounded) for its C{smtpmx listening on 127.0.0.1:PORT} log line and
the relay's queue recovery line (the last step of start-up),
and stops it by PID in a cleanup.  L{runToExit} runs a server that is expected to refuse to start.
The small SMTP helpers here (L{ReplyReader}, L{rawDialog}) speak the
protocol over plain sockets, for the cases smtplib cannot express:
pipelining in one write, smuggling attempts, bytes sent after STARTTLS.

Nothing here ever binds or connects to anything but 127.0.0.0/8.
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from typing import Iterable, Optional, Sequence

from twisted.trial.unittest import SynchronousTestCase

from tests.helpers import waitUntil
from tests.process import (
    START_TIMEOUT,
    STOP_GRACE,
    ProcessDidNotStart,
    RunningProcess,
    logMatches,
    readLog,
    stopProcess,
)

__all__ = [
    "ROOT", "TWISTD", "LISTENING", "START_TIMEOUT", "makeTemporaryDirectory", "environment",
    "ServerDidNotStart", "freePort", "stopProcess", "RunningServer", "SharedProcessesTestCase", "runToExit",
    "ReplyReader", "rawDialog", "codes", "headerBlock", "portIsFree",
]

# The checkout this file belongs to, so the tests work from any checkout.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# twistd itself.  C{python -m twisted} is C{twist}, not C{twistd}: it knows
# neither C{-n} nor C{--pidfile}.
TWISTD = [
    sys.executable,
    "-c",
    "import sys; sys.argv[0] = 'twistd'; from twisted.scripts.twistd import run; run()",
]

LISTENING = re.compile(r"smtpmx listening on \[?([0-9A-Fa-f.:]+?)\]?:(\d+)")
# The relay service's start-up line: the queue is recovered.
RECOVERED = re.compile(r"relay queue: \d+ message\(s\) waiting")

def makeTemporaryDirectory(addCleanup, prefix: str = "smtpmx-e2e-") -> str:
    """
    A fresh directory, removed by a cleanup.

    @param addCleanup: a test case's C{addCleanup} (or C{addClassCleanup}).
    """
    path = tempfile.mkdtemp(prefix=prefix)
    addCleanup(shutil.rmtree, path, True)
    return path


def environment(pythonPath: Sequence[str] = ()) -> dict:
    """
    The environment for a server subprocess: ours, with the checkout (and
    C{pythonPath}, first) on C{PYTHONPATH} and unbuffered output.
    """
    env = dict(os.environ)
    paths = list(pythonPath) + [ROOT]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PYTHONUNBUFFERED"] = "1"
    return env


class ServerDidNotStart(ProcessDidNotStart):
    """
    The server exited, or said nothing about listening, in time.
    """


def freePort(host: str = "127.0.0.1") -> int:
    """
    A port free for both UDP and TCP on C{host} just now: for a sink or a
    DNS server to listen on, or for a next hop that is down.
    """
    for _ in range(50):
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            udp.bind((host, 0))
            port = udp.getsockname()[1]
            tcp = socket.socket()
            try:
                tcp.bind((host, port))
            except OSError:
                continue
            finally:
                tcp.close()
            return port
        finally:
            udp.close()
    raise OSError("no free port for the DNS server")


class RunningServer:
    """
    One C{twistd -n smtpmx} subprocess.

    @ivar dir: its working directory; C{./Maildir} and C{./queue} are there.
    @ivar port: the port it listens on, read from its log.
    @ivar process: the L{subprocess.Popen}.
    """

    def __init__(
        self,
        args: Sequence[str] = (),
        directory: Optional[str] = None,
        listen: bool = True,
        pythonPath: Sequence[str] = (),
        maildirRoot: str = "Maildir",
        environ: Optional[dict] = None,
    ) -> None:
        """
        @param args: smtpmx options.
        @param directory: the working directory; a new temporary one if
            L{None} (removed by L{stop}'s caller through L{start}).
        @param listen: add C{--listen tcp:0:interface=127.0.0.1} in front of
            C{args}; with L{False} the server uses its own default.
        @param pythonPath: directories put on C{PYTHONPATH} before the
            checkout, for third-party plugins.
        @param maildirRoot: where the Maildirs are, relative to C{dir}
            unless absolute, for L{maildir}.
        @param environ: variables added to its environment.
        """
        self.args = list(args)
        if listen:
            self.args[:0] = ["--listen", "tcp:0:interface=127.0.0.1"]
        self.dir = directory
        self.pythonPath = list(pythonPath)
        self.maildirRoot = maildirRoot
        self.environ = dict(environ or {})
        self.runner: Optional[RunningProcess] = None
        self.port: Optional[int] = None
        self.host = "127.0.0.1"
        self.runs = 0

    @classmethod
    def start(cls, addCleanup, args: Sequence[str] = (), **kw) -> "RunningServer":
        """
        Start a server in a new temporary directory; it is stopped and its
        directory removed by cleanups.

        @param addCleanup: a test's C{addCleanup}, a test class's
            C{addClassCleanup}, or anything called the same way.
        @param args: smtpmx options.
        @param kw: see L{__init__}.
        """
        if kw.get("directory") is None:
            kw["directory"] = makeTemporaryDirectory(addCleanup)
        server = cls(args, **kw)
        addCleanup(server.stop)
        server.launch()
        return server

    # Life.

    def logPaths(self, run: Optional[int] = None) -> tuple[str, str]:
        """
        Where run number C{run} (default: the current one) writes its
        stdout and stderr.
        """
        run = self.runs if run is None else run
        return (
            os.path.join(self.dir, f"twistd-{run}.out"),
            os.path.join(self.dir, f"twistd-{run}.err"),
        )

    def launch(self, timeout: float = START_TIMEOUT) -> None:
        """
        Run the server and wait until it says which port it listens on.

        @raise ServerDidNotStart: it exited first, or took too long; the
            message holds its output.
        """
        if self.dir is None:
            self.dir = tempfile.mkdtemp(prefix="smtpmx-e2e-")
        self.runs += 1
        listening = logMatches(LISTENING)
        recovered = logMatches(RECOVERED)

        def started(runner: RunningProcess) -> Optional[re.Match]:
            # Listening is logged as the ports are bound, before the
            # services start; the relay's line comes once the queue is
            # recovered (its directories made), the last step of start-up.
            match = listening(runner)
            return match if match is not None and recovered(runner) else None

        out, err = self.logPaths()
        self.runner = RunningProcess(
            TWISTD + ["-n", "--pidfile=", "smtpmx"] + self.args,
            out, cwd=self.dir, env={**environment(self.pythonPath), **self.environ}, name="smtpmx",
            stderrPath=err,
        )
        try:
            match = self.runner.launch(started, timeout)
        except ProcessDidNotStart as e:
            raise ServerDidNotStart(str(e), e.exited) from None
        self.host, self.port = match.group(1), int(match.group(2))

    def restart(self) -> None:
        """
        Start the server again in the same directory, after L{stop} or
        L{kill9}.
        """
        self.stop()
        self.launch()

    def stop(self, grace: float = STOP_GRACE) -> Optional[int]:
        """
        End the server by its PID: SIGTERM, then SIGKILL after C{grace}
        seconds.  Idempotent.

        @return: its exit status, or L{None} if it was never started.
        """
        if self.runner is None:
            return None
        return self.runner.stop(grace)

    def kill9(self) -> None:
        """
        Kill the server with SIGKILL, the way a power cut would, and reap it.
        """
        if self.runner is not None:
            self.runner.kill9()

    @property
    def process(self) -> Optional[subprocess.Popen]:
        """
        The L{subprocess.Popen} of the current run.
        """
        return self.runner.process if self.runner is not None else None

    @property
    def pid(self) -> int:
        """
        The server's process ID.
        """
        assert self.runner is not None, "never started"
        return self.runner.pid

    # What it said.

    def output(self) -> str:
        """
        What the current run wrote to stdout (twistd -n logs there).
        """
        return readLog(self.logPaths()[0])

    def errors(self) -> str:
        """
        What the current run wrote to stderr.
        """
        return readLog(self.logPaths()[1])

    def log(self) -> str:
        """
        Everything every run wrote, stdout and stderr.
        """
        texts = []
        for run in range(1, self.runs + 1):
            out, err = self.logPaths(run)
            texts.append(readLog(out) + readLog(err))
        return "".join(texts)

    def transactionLine(self, text: str, timeout: float = 10.0) -> str:
        """
        The last transaction log line (one with C{result=}) that mentions
        C{text}, waiting up to C{timeout} seconds for one.

        @raise AssertionError: none came.
        """

        def lines() -> list[str]:
            """
            The transaction lines with C{text}.
            """
            return [l for l in self.log().splitlines() if text in l and "result=" in l]

        waitUntil(lambda: bool(lines()), timeout=timeout)
        found = lines()
        if not found:
            raise AssertionError(f"no transaction log line mentions {text!r}")
        return found[-1]

    # What it stored.

    def maildir(self, domain: str, user: str) -> str:
        """
        The Maildir of C{user@domain}, laid out as C{docs/storage.rst}
        says: the domain and local part lower-cased.
        """
        return os.path.join(self.dir, self.maildirRoot, domain.lower(), user.lower())

    def newMessages(self, domain: str, user: str) -> list[bytes]:
        """
        The contents of the files in C{new/} of C{user@domain}'s Maildir, in
        name order (empty if there is no Maildir).
        """
        return [content for _, content in self.newFiles(domain, user)]

    def newFiles(self, domain: str, user: str) -> list[tuple[str, bytes]]:
        """
        The names and contents of the files in C{new/} of C{user@domain}'s
        Maildir, in name order.
        """
        new = os.path.join(self.maildir(domain, user), "new")
        try:
            names = sorted(os.listdir(new))
        except FileNotFoundError:
            return []
        result = []
        for name in names:
            with open(os.path.join(new, name), "rb") as f:
                result.append((name, f.read()))
        return result

    def tmpFiles(self, domain: str, user: str) -> list[str]:
        """
        The names in C{tmp/} of C{user@domain}'s Maildir.
        """
        try:
            return sorted(os.listdir(os.path.join(self.maildir(domain, user), "tmp")))
        except FileNotFoundError:
            return []

    def makeMaildir(self, domain: str, user: str) -> str:
        """
        Create C{user@domain}'s Maildir the way an operator would, so that
        the C{mailbox} validator accepts it.
        """
        path = self.maildir(domain, user)
        for sub in ("tmp", "new", "cur"):
            os.makedirs(os.path.join(path, sub), exist_ok=True)
        return path

    def waitForFiles(self, domain: str, user: str, count: int, timeout: float = 10.0) -> list[bytes]:
        """
        Wait until C{user@domain}'s C{new/} holds at least C{count} files,
        for deliveries acknowledged to a client we do not control.
        """
        waitUntil(lambda: len(self.newMessages(domain, user)) >= count, timeout)
        return self.newMessages(domain, user)

    def tree(self) -> set[str]:
        """
        Every path under L{dir}, relative to it, apart from our own logs.
        """
        found = set()
        for parent, dirs, files in os.walk(self.dir):
            for name in dirs + files:
                rel = os.path.relpath(os.path.join(parent, name), self.dir)
                if not rel.startswith("twistd-"):
                    found.add(rel)
        return found

    # Talking to it.

    def connect(self, timeout: float = 10.0, sourceAddress: Optional[tuple] = None) -> socket.socket:
        """
        A plain TCP connection to the server.
        """
        return socket.create_connection(
            (self.host, self.port), timeout=timeout, source_address=sourceAddress
        )


class SharedProcessesTestCase(SynchronousTestCase):
    """
    A test class whose processes (one smtpmx in L{server}, and whatever
    sinks or DNS servers it talks to) are started once, by
    L{startProcesses}, before its first test, and stopped by PID after its
    last; every test fails if the server logged a traceback while it ran.

    Tests sharing processes must not step on each other: each uses its own
    recipients and Message-IDs (L{tests.helpers.unique}).
    """

    server: RunningServer

    @classmethod
    def startProcesses(cls, addCleanup) -> None:
        """
        Start the class's processes; each registers its stop with
        C{addCleanup}.  Subclasses set at least C{cls.server}.
        """
        raise TypeError(f"{cls.__name__} does not say which processes it needs")

    @classmethod
    def setUpClass(cls) -> None:
        """
        Start the shared processes once for the class (pytest, unittest).
        """
        cls.logSeen = 0
        cls.startProcesses(cls.addClassCleanup)

    def setUp(self) -> None:
        """
        Under trial, which does not call C{setUpClass}, start the shared
        processes before the first test and stop them when the process
        exits.
        """
        if "server" not in type(self).__dict__:
            cleanups: list = []
            atexit.register(lambda: [f(*a) for f, a in reversed(cleanups)])
            type(self).logSeen = 0
            type(self).startProcesses(lambda f, *a: cleanups.append((f, a)))

    def tearDown(self) -> None:
        """
        Fail the test if the server logged a traceback while it ran.
        """
        cls = type(self)
        log = self.server.log()
        fresh, cls.logSeen = log[cls.logSeen :], len(log)
        self.assertNotIn("Traceback", fresh, "the server logged a traceback")


def runToExit(
    args: Sequence[str],
    directory: str,
    timeout: float = START_TIMEOUT,
    pythonPath: Sequence[str] = (),
) -> tuple[Optional[int], str]:
    """
    Run C{twistd -n smtpmx args} and wait for it to exit by itself, for
    start-ups that must fail (or commands like C{--list-validators}).

    @return: the exit status (L{None} if it was still running after
        C{timeout} seconds and had to be killed) and its output, stdout
        then stderr.
    """
    try:
        p = subprocess.run(
            TWISTD + ["-n", "--pidfile=", "smtpmx"] + list(args),
            cwd=directory,
            env=environment(pythonPath),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"") + (e.stderr or b"")
        return None, out.decode("utf-8", "replace")
    return p.returncode, (p.stdout + p.stderr).decode("utf-8", "replace")


class ReplyReader:
    """
    Reads SMTP replies from a socket: each a list of lines, the last one
    C{NNN text}.
    """

    def __init__(self, sock: socket.socket) -> None:
        """
        @param sock: a connected socket, plain or TLS.
        """
        self.sock = sock
        self.buffer = b""

    def line(self) -> bytes:
        """
        One CRLF-terminated line, without the CRLF.

        @raise EOFError: the server closed the connection first.
        """
        while b"\r\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError(f"connection closed; unread: {self.buffer!r}")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\r\n", 1)
        return line

    def reply(self) -> list[str]:
        """
        One whole reply, every line.
        """
        lines = []
        while True:
            line = self.line().decode("utf-8", "replace")
            lines.append(line)
            if len(line) < 4 or line[3] != "-":
                return lines

    def replies(self, count: int) -> list[str]:
        """
        The last lines of the next C{count} replies.
        """
        return [self.reply()[-1] for _ in range(count)]

    def nothingMore(self, wait: float) -> bytes:
        """
        Whatever else arrives within C{wait} seconds, with what is already
        buffered: C{b""} when the server stays silent.
        """
        data, self.buffer = self.buffer, b""
        old = self.sock.gettimeout()
        self.sock.settimeout(wait)
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        except (socket.timeout, TimeoutError):
            pass
        finally:
            self.sock.settimeout(old)
        return data


def rawDialog(server: RunningServer, data: bytes, count: int, timeout: float = 15.0) -> list[str]:
    """
    Connect, read the greeting, send C{data} in one write and return the
    last line of each of the next C{count} replies.
    """
    with server.connect(timeout) as sock:
        reader = ReplyReader(sock)
        greeting = reader.reply()[-1]
        if not greeting.startswith("220"):
            raise AssertionError(f"greeting: {greeting!r}")
        sock.sendall(data)
        return reader.replies(count)


def codes(lines: Iterable[str]) -> list[str]:
    """
    The code and enhanced code of each reply line: C{"250 2.1.5"}, or just
    C{"250"} for a reply without one.
    """
    result = []
    for line in lines:
        m = re.match(r"(\d{3})[ -](\d\.\d{1,3}\.\d{1,3})?", line)
        result.append(" ".join(g for g in m.groups() if g) if m else line)
    return result


def headerBlock(message: bytes) -> bytes:
    """
    The header section of a stored (LF) message.
    """
    return message.split(b"\n\n", 1)[0]


def portIsFree(port: int, host: str = "127.0.0.1") -> bool:
    """
    Whether nothing listens on C{host:port} now.
    """
    s = socket.socket()
    try:
        s.bind((host, port))
    except OSError:
        return False
    finally:
        s.close()
    return True
