"""
A recording SMTP sink for end-to-end relay tests: a next hop that accepts
mail and writes down exactly what it was given.

Run it as a subprocess::

    python tests/smtpsink.py --host 127.0.0.3 --port 0 --record FILE \\
        [--reply-rcpt ADDR=CODE_TEXT ...] [--reply-data CODE_TEXT] \\
        [--fail-first N] [--connections FILE]

It prints C{listening on HOST:PORT} (flushed) once it listens, and appends
one JSON line per completed transaction to C{FILE}, fsynced before the
reply to the end of the data goes out, so that a test that has seen a
C{250} from it can read the record::

    {"helo": ..., "mail_from": ..., "rcpts": [...], "data": ...,
     "data_base64": ..., "tls": false, "connection": N, "peer": ...}

C{rcpts} are the accepted forward-paths exactly as received (case kept);
C{rcpts_refused} those refused.  C{data} is the message after
dot-unstuffing, CRLF kept, decoded as UTF-8 with replacement;
C{data_base64} holds the exact bytes.

It speaks EHLO (PIPELINING, SIZE, 8BITMIME), HELO, MAIL, RCPT, DATA, RSET,
NOOP and QUIT.  C{--reply-rcpt ADDR=CODE_TEXT} gives the reply to
C{RCPT TO:<ADDR>} (address compared case-insensitively), for instance
C{bad@remote.example=550 5.1.1 no such user}; C{--reply-data CODE_TEXT}
the reply to the end of the data (a non-2xx reply records nothing);
C{--fail-first N} answers C{451 4.3.0 try later} to every RCPT of the
first N transactions (a transaction is counted at its first RCPT).  With
C{--connections FILE} the number of connections accepted so far is
rewritten into FILE after each one.

Only the standard library is used.  SIGTERM and SIGINT end it at once.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import re
import signal
import sys
from typing import Optional

# RFC 5321 section 4.5.3.1.4: a command line is at most 512 octets; be
# lenient, but bounded.
MAX_LINE = 64 * 1024
MAX_SIZE = 50 * 1024 * 1024

_PATH = re.compile(r"^\s*<(.*)>(\s+.*)?$", re.S)


class Sink:
    """
    What every connection shares: the options, the counters and the
    record file.
    """

    def __init__(self, options: argparse.Namespace) -> None:
        """
        @param options: the parsed command line.
        """
        self.options = options
        self.rcptReplies: dict[str, str] = {}
        for item in options.reply_rcpt:
            address, _, reply = item.partition("=")
            self.rcptReplies[address.lower()] = reply.strip()
        self.failFirst = options.fail_first
        self.transactions = 0
        self.connections = 0

    def record(self, entry: dict) -> None:
        """
        Append one transaction to the record file, durably.
        """
        line = (json.dumps(entry, sort_keys=True) + "\n").encode("utf-8")
        fd = os.open(self.options.record, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)

    def connected(self) -> int:
        """
        Count one more connection, and write the count down if asked to.

        @return: the connection's number, from 1.
        """
        self.connections += 1
        if self.options.connections:
            tmp = self.options.connections + ".tmp"
            with open(tmp, "w") as f:
                f.write(f"{self.connections}\n")
            os.replace(tmp, self.options.connections)
        return self.connections


def _path(argument: str, keyword: str) -> Optional[str]:
    """
    The path in C{FROM:<path> params} or C{TO:<path> params}, or L{None}
    when the argument is malformed.
    """
    if not argument[: len(keyword)].upper() == keyword:
        return None
    m = _PATH.match(argument[len(keyword):])
    if m is None:
        return None
    return m.group(1)


async def session(sink: Sink, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """
    One SMTP session.
    """
    number = sink.connected()
    peer = writer.get_extra_info("peername")
    host = sink.options.name

    async def reply(*lines: str) -> None:
        """
        Send a reply (several lines make a multi-line reply).
        """
        code = lines[-1][:3]
        out = []
        for line in lines[:-1]:
            out.append(f"{code}-{line[4:]}\r\n")
        out.append(lines[-1] + "\r\n")
        writer.write("".join(out).encode("utf-8"))
        await writer.drain()

    helo: Optional[str] = None
    sender: Optional[str] = None
    rcpts: list[str] = []
    refused: list[str] = []
    counted = False
    failing = False

    def reset() -> None:
        """
        Forget the current transaction.
        """
        nonlocal sender, rcpts, refused, counted, failing
        sender, rcpts, refused, counted, failing = None, [], [], False, False

    try:
        await reply(f"220 {host} ESMTP smtpsink")
        while True:
            try:
                raw = await reader.readuntil(b"\n")
            except asyncio.IncompleteReadError:
                return
            except asyncio.LimitOverrunError:
                await reply("500 5.5.2 line too long")
                return
            line = raw.rstrip(b"\r\n").decode("utf-8", "replace")
            verb, _, argument = line.partition(" ")
            verb = verb.upper()
            if verb == "EHLO":
                helo = argument.strip()
                reset()
                await reply(
                    f"250-{host} hello {helo}",
                    "250-PIPELINING",
                    f"250-SIZE {MAX_SIZE}",
                    "250 8BITMIME",
                )
            elif verb == "HELO":
                helo = argument.strip()
                reset()
                await reply(f"250 {host}")
            elif verb == "MAIL":
                path = _path(argument, "FROM:")
                if helo is None:
                    await reply("503 5.5.1 send HELO first")
                elif sender is not None:
                    await reply("503 5.5.1 nested MAIL")
                elif path is None:
                    await reply("501 5.5.4 syntax: MAIL FROM:<path>")
                else:
                    sender = path
                    await reply("250 2.1.0 ok")
            elif verb == "RCPT":
                path = _path(argument, "TO:")
                if sender is None:
                    await reply("503 5.5.1 need MAIL first")
                    continue
                if path is None:
                    await reply("501 5.5.4 syntax: RCPT TO:<path>")
                    continue
                if not counted:
                    counted = True
                    sink.transactions += 1
                    failing = sink.transactions <= sink.failFirst
                if failing:
                    refused.append(path)
                    await reply("451 4.3.0 try later")
                    continue
                special = sink.rcptReplies.get(path.lower())
                if special is not None and not special.startswith("2"):
                    refused.append(path)
                    await reply(special)
                else:
                    rcpts.append(path)
                    await reply(special or "250 2.1.5 ok")
            elif verb == "DATA":
                if sender is None:
                    await reply("503 5.5.1 need MAIL first")
                    continue
                if not rcpts:
                    await reply("554 5.5.1 no valid recipients")
                    continue
                await reply("354 end data with <CR><LF>.<CR><LF>")
                chunks = []
                size = 0
                lineStart = True
                while True:
                    try:
                        raw = await reader.readuntil(b"\n")
                    except asyncio.IncompleteReadError:
                        return
                    except asyncio.LimitOverrunError as e:
                        # A line longer than the buffer: take what there
                        # is; the rest of the line follows.
                        raw = await reader.readexactly(e.consumed)
                    atStart, lineStart = lineStart, raw.endswith(b"\n")
                    if atStart and raw in (b".\r\n", b".\n"):
                        break
                    if atStart and raw.startswith(b"."):
                        raw = raw[1:]
                    size += len(raw)
                    if size <= MAX_SIZE:
                        chunks.append(raw)
                data = b"".join(chunks)
                if size > MAX_SIZE:
                    await reply("552 5.3.4 message too big")
                elif sink.options.reply_data and not sink.options.reply_data.startswith("2"):
                    await reply(sink.options.reply_data)
                else:
                    sink.record(
                        {
                            "helo": helo,
                            "mail_from": sender,
                            "rcpts": rcpts,
                            "rcpts_refused": refused,
                            "data": data.decode("utf-8", "replace"),
                            "data_base64": base64.b64encode(data).decode("ascii"),
                            "tls": False,
                            "connection": number,
                            "peer": f"{peer[0]}:{peer[1]}" if peer else None,
                        }
                    )
                    await reply(sink.options.reply_data or "250 2.0.0 ok: recorded")
                reset()
            elif verb == "RSET":
                reset()
                await reply("250 2.0.0 ok")
            elif verb == "NOOP":
                await reply("250 2.0.0 ok")
            elif verb == "QUIT":
                await reply(f"221 2.0.0 {host} bye")
                return
            else:
                await reply("500 5.5.2 unknown command")
    except (ConnectionError, OSError):
        return
    finally:
        try:
            writer.close()
        except Exception:
            pass


async def serve(options: argparse.Namespace) -> None:
    """
    Listen, announce the port, and serve until a signal arrives.
    """
    sink = Sink(options)
    server = await asyncio.start_server(
        lambda r, w: session(sink, r, w),
        options.host,
        options.port,
        limit=MAX_LINE,
        reuse_address=True,
    )
    host, port = server.sockets[0].getsockname()[:2]
    sys.stdout.write(f"listening on {host}:{port}\n")
    sys.stdout.flush()
    stop = asyncio.get_running_loop().create_future()
    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(
            signum, lambda: stop.done() or stop.set_result(None)
        )
    async with server:
        await stop


def main(argv: Optional[list[str]] = None) -> int:
    """
    The command line.
    """
    parser = argparse.ArgumentParser(description="A recording SMTP sink.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--record", required=True, metavar="FILE")
    parser.add_argument("--name", default="sink.example", help="our name in replies")
    parser.add_argument("--reply-rcpt", action="append", default=[], metavar="ADDR=CODE_TEXT")
    parser.add_argument("--reply-data", default=None, metavar="CODE_TEXT")
    parser.add_argument("--fail-first", type=int, default=0, metavar="N")
    parser.add_argument("--connections", default=None, metavar="FILE")
    options = parser.parse_args(argv)
    if not options.host.startswith("127."):
        parser.error("only loopback (127.0.0.0/8) addresses")
    asyncio.run(serve(options))
    return 0


if __name__ == "__main__":
    sys.exit(main())


# The test side: run the sink above as a subprocess.

_SCRIPT = os.path.abspath(__file__)
_LISTENING = re.compile(r"listening on ([0-9.]+):(\d+)")


class RunningSink:
    """
    The sink as a subprocess, for tests: started, its port read, stopped by
    PID.

    @ivar host: the address it listens on.
    @ivar port: its port.
    @ivar recordPath: the record file.
    """

    def __init__(self, directory: str, host: str = "127.0.0.3", port: int = 0,
                 arguments: tuple = ()) -> None:
        """
        @param directory: where the record file and the log go.
        @param host: a loopback address to listen on.
        @param port: the port; 0 for a free one.
        @param arguments: more command line arguments (C{--fail-first 1}...).
        """
        self.directory = directory
        self.host = host
        self.port = port
        self.arguments = list(arguments)
        self.recordPath = os.path.join(directory, f"sink-{host}.jsonl")
        self.connectionsPath = os.path.join(directory, f"sink-{host}.connections")
        self.process = None

    @classmethod
    def start(cls, addCleanup, directory: str, host: str = "127.0.0.3", port: int = 0,
              arguments: tuple = ()) -> "RunningSink":
        """
        Start a sink; a cleanup stops it.
        """
        sink = cls(directory, host, port, arguments)
        addCleanup(sink.stop)
        sink.launch()
        return sink

    def launch(self, timeout: float = 15.0) -> None:
        """
        Run it and wait until it listens (on L{port} again after a
        L{stop}).
        """
        import subprocess
        import time

        logPath = os.path.join(self.directory, f"sink-{self.host}.log")
        deadline = time.monotonic() + timeout
        while True:
            log = open(logPath, "wb")
            with log:
                self.process = subprocess.Popen(
                    [sys.executable, _SCRIPT, "--host", self.host, "--port", str(self.port),
                     "--record", self.recordPath, "--connections", self.connectionsPath]
                    + self.arguments,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=log,
                    start_new_session=True,
                )
            line = self.process.stdout.readline().decode("utf-8", "replace")
            m = _LISTENING.search(line)
            if m is not None:
                self.port = int(m.group(2))
                return
            self.process.wait()
            # A port given again after a stop may linger a moment.
            if time.monotonic() > deadline:
                with open(logPath, "rb") as f:
                    raise RuntimeError("the sink did not start: " + f.read().decode("utf-8", "replace"))
            time.sleep(0.1)

    def stop(self, grace: float = 5.0) -> None:
        """
        SIGTERM by PID, then SIGKILL; idempotent.
        """
        from tests.e2e import stopProcess

        p = self.process
        if p is None:
            return
        stopProcess(p, grace)
        if p.stdout is not None:
            p.stdout.close()

    def transactions(self) -> list[dict]:
        """
        Every transaction recorded so far (by every run of this sink).
        """
        try:
            with open(self.recordPath, "rb") as f:
                return [json.loads(line) for line in f if line.strip()]
        except FileNotFoundError:
            return []

    def connections(self) -> int:
        """
        How many connections the current run accepted.
        """
        try:
            with open(self.connectionsPath) as f:
                return int(f.read().strip() or 0)
        except FileNotFoundError:
            return 0

    def waitFor(self, count: int, timeout: float = 10.0, interval: float = 0.05) -> list[dict]:
        """
        Wait (bounded) until at least C{count} transactions are recorded.
        """
        import time

        deadline = time.monotonic() + timeout
        while True:
            found = self.transactions()
            if len(found) >= count or time.monotonic() > deadline:
                return found
            time.sleep(interval)
