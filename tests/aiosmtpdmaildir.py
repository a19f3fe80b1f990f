"""
aiosmtpd (the asyncio SMTP server from PyPI) filing each message into
Maildirs with the standard library's C{mailbox.Maildir}: a peer for
C{bench/compare.py}, built the way its documentation suggests, with the
durability smtpmx has.

Each accepted message is written, in a thread of the event loop's
default executor (so that the loop keeps serving the other sessions),
once for every recipient, to C{ROOT/DOMAIN/USER/} (lower-cased; made on
first use): C{mailbox.Maildir.add} writes the file in C{tmp/}, fsyncs it
and links it into C{new/}; then C{new/} itself is fsynced.  The C{250}
goes out only once every copy is durable; a failure gives C{451}.
Recipients whose local part is not a plain name (C{[A-Za-z0-9._+-]},
no leading dot) are refused at RCPT.

Run as a subprocess::

    python -m tests.aiosmtpdmaildir --host 127.0.0.1 --port PORT --root DIR

It prints C{listening on HOST:PORT} once it listens; SIGTERM ends it.
L{startAiosmtpd} runs it with L{tests.process.RunningProcess}.
"""

from __future__ import annotations

import argparse
import asyncio
import mailbox
import os
import re
import signal
import sys
import threading
from typing import Callable, Optional, Sequence

from tests.e2e import environment
from tests.process import MaildirPeer, RunningProcess, logMatches

PLAIN_LOCAL_PART = re.compile(r"[A-Za-z0-9_+-][A-Za-z0-9._+-]{0,63}\Z")
PLAIN_DOMAIN = re.compile(r"[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*\Z")


def aiosmtpdMissing() -> str:
    """
    Why the aiosmtpd peer cannot be run by this interpreter, or C{""}.
    """
    try:
        import aiosmtpd
    except ImportError:
        return "aiosmtpd is not installed (pip install aiosmtpd; setup.cfg's test extra)"
    del aiosmtpd
    return ""


def aiosmtpdVersion() -> str:
    """
    The installed aiosmtpd's version.
    """
    from importlib.metadata import version

    return version("aiosmtpd")


def fsyncDirectory(path: str) -> None:
    """
    fsync a directory, so that a name just linked into it is durable.
    """
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class MaildirHandler:
    """
    The aiosmtpd handler: RCPT checks the address is a plain one, DATA
    files the message for every recipient before it answers.

    @ivar root: the root of the Maildirs.
    """

    def __init__(self, root: str) -> None:
        """
        @param root: the root of the Maildirs, C{ROOT/DOMAIN/USER/}.
        """
        self.root = root
        self.mailboxes: dict[str, mailbox.Maildir] = {}
        # Two threads must not make the same Maildir at once.
        self.making = threading.Lock()

    def maildirPath(self, address: str) -> Optional[str]:
        """
        The Maildir of C{address}, or L{None} if it is not a plain
        C{user@domain}.
        """
        user, at, domain = address.rpartition("@")
        if not at or not PLAIN_LOCAL_PART.match(user) or not PLAIN_DOMAIN.match(domain):
            return None
        return os.path.join(self.root, domain.lower(), user.lower())

    async def handle_RCPT(self, server, session, envelope, address: str, options: list) -> str:
        """
        Accept a plain address, refuse anything else.
        """
        if self.maildirPath(address) is None:
            return "550 5.1.3 Bad recipient address syntax"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    def deliver(self, recipients: Sequence[str], content: bytes) -> None:
        """
        File C{content} (its lines ended with LF, as Maildir readers
        expect) for each recipient, each copy fsynced (file, then
        C{new/}).  Runs in an executor thread.
        """
        content = content.replace(b"\r\n", b"\n")
        for address in recipients:
            path = self.maildirPath(address)
            box = self.mailboxes.get(path)
            if box is None:
                with self.making:
                    box = self.mailboxes.get(path)
                    if box is None:
                        os.makedirs(os.path.dirname(path), exist_ok=True)
                        box = self.mailboxes[path] = mailbox.Maildir(path, factory=None, create=True)
            box.add(content)
            fsyncDirectory(os.path.join(path, "new"))

    async def handle_DATA(self, server, session, envelope) -> str:
        """
        Answer C{250} once every copy is durable.
        """
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(None, self.deliver, list(envelope.rcpt_tos), envelope.content)
        except (OSError, mailbox.Error) as e:
            print(f"delivery failed: {e!r}", file=sys.stderr, flush=True)
            return "451 4.3.0 Could not store the message"
        return "250 2.0.0 OK"


async def serve(host: str, port: int, root: str, hostname: str, dataSizeLimit: Optional[int] = None) -> None:
    """
    Serve until SIGTERM.
    """
    from aiosmtpd.smtp import SMTP

    handler = MaildirHandler(root)
    loop = asyncio.get_running_loop()
    limit = {} if dataSizeLimit is None else {"data_size_limit": dataSizeLimit}
    server = await loop.create_server(lambda: SMTP(handler, hostname=hostname, **limit), host, port)
    bound = server.sockets[0].getsockname()
    print(f"listening on {bound[0]}:{bound[1]}", flush=True)
    stopped = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stopped.set)
    await stopped.wait()
    server.close()
    await server.wait_closed()


def main(argv: Optional[Sequence[str]] = None) -> int:
    """
    The command line.
    """
    parser = argparse.ArgumentParser(prog="python -m tests.aiosmtpdmaildir", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--root", required=True, help="the root of the Maildirs")
    parser.add_argument("--hostname", default="mx.bench.example")
    parser.add_argument("--data-size-limit", type=int, default=None,
                        help="largest message in bytes (default aiosmtpd's, 33554432)")
    options = parser.parse_args(argv)
    asyncio.run(serve(options.host, options.port, options.root, options.hostname, options.data_size_limit))
    return 0


class AiosmtpdServer(MaildirPeer):
    """
    The aiosmtpd peer, running.

    @ivar maildirs: the root of its Maildirs.
    @ivar port: its port.
    @ivar runner: its L{RunningProcess}.
    """

    def __init__(self, runner: RunningProcess, maildirs: str, domain: str) -> None:
        """
        @param runner: the process.
        @param maildirs: the root of its Maildirs.
        @param domain: the domain L{maildir} looks under.
        """
        self.runner = runner
        self.maildirs = maildirs
        self.domain = domain
        self.port = 0

    def output(self) -> str:
        """
        What it printed.
        """
        return self.runner.log()


def startAiosmtpd(addCleanup: Callable, directory: str, host: str, domain: str, timeout: float = 20,
                  dataSizeLimit: Optional[int] = None) -> AiosmtpdServer:
    """
    Start the aiosmtpd peer on a free port of C{host}, its Maildirs under
    C{directory/Maildir}, register its stop with C{addCleanup}, and wait
    until it listens.

    @param dataSizeLimit: the largest message in bytes; L{None} keeps
        aiosmtpd's default (33554432).
    @raise tests.process.ProcessDidNotStart: it did not start.
    """
    maildirs = os.path.join(directory, "Maildir")
    os.makedirs(maildirs, exist_ok=True)
    runner = RunningProcess(
        [sys.executable, "-m", "tests.aiosmtpdmaildir", "--host", host, "--port", "0", "--root", maildirs]
        + ([] if dataSizeLimit is None else ["--data-size-limit", str(dataSizeLimit)]),
        os.path.join(directory, "aiosmtpd.out"), cwd=directory, env=environment(), name="aiosmtpd",
    )
    server = AiosmtpdServer(runner, maildirs, domain)
    addCleanup(server.stop)
    match = runner.launch(logMatches(r"listening on [0-9.]+:(\d+)"), timeout)
    server.port = int(match.group(1))
    return server


if __name__ == "__main__":
    sys.exit(main())
