"""
C{smtpmx-queue}: look at and manage the relay queue of a running or
stopped server (the queue's files are described in C{docs/storage.rst})::

    smtpmx-queue [--queue-dir DIR | --config PATH] list|show ID|flush|delete ID

It only reads files, rewrites state files atomically under the queue's
lock and removes messages the way the server does, so it never corrupts
the queue, whether the server runs or not.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Callable, Optional, TextIO

from smtpmx.backends import describeVia
from smtpmx.config import Config, ConfigError, loadConfig, readConfigFile
from smtpmx.relay.queue import Queue
from smtpmx.relay.queueformat import PENDING, CorruptMessage, QueuedMessage, isValidId

# The most of a message's header section that `show` reads.
MAX_HEADER_BYTES = 256 * 1024


class _Failed(Exception):
    """
    The command cannot do what was asked; the message goes to stderr and
    the exit status is 1.
    """


def _queueId(text: str) -> str:
    """
    An argparse type: a queue ID, letters and digits only.
    """
    if not isValidId(text):
        raise argparse.ArgumentTypeError(f"not a queue ID: {text!r} (letters and digits only)")
    return text


def makeParser() -> argparse.ArgumentParser:
    """
    The command line parser.
    """
    parser = argparse.ArgumentParser(
        prog="smtpmx-queue",
        description="Inspect and manage the relay queue of smtpmx.",
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--queue-dir",
        metavar="DIR",
        help=f"the queue directory (default: ./{Config.queueDir})",
    )
    where.add_argument(
        "--config", metavar="PATH", help="read queue-dir from this smtpmx TOML file"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("list", help="list every queued message")
    show = commands.add_parser("show", help="show one message, with its headers")
    show.add_argument("id", type=_queueId, metavar="ID")
    commands.add_parser("flush", help="retry every pending recipient now")
    delete = commands.add_parser("delete", help="remove one message from the queue")
    delete.add_argument("id", type=_queueId, metavar="ID")
    return parser


def queueDirectory(options: argparse.Namespace) -> str:
    """
    The queue directory the options name, found the way the server finds
    it: C{--queue-dir}, else the C{queue-dir} of the C{--config} file,
    else C{./queue}; relative to the current directory.

    @raise ConfigError: the configuration file is unusable.
    """
    if options.queue_dir is not None:
        return os.path.abspath(options.queue_dir)
    fileOptions = {}
    if options.config is not None:
        fileOptions = readConfigFile(options.config)
    # Only the queue directory: the rest of the file (TLS keys, say) need
    # not be readable by whoever runs this command.
    queueOnly = {k: v for k, v in fileOptions.items() if k == "queue-dir"}
    config = loadConfig(queueOnly, {}, configPath=options.config, getfqdn=lambda: "localhost")
    return config.queueDir


def _printable(text: str) -> str:
    """
    C{text} safe to show on a terminal: control characters (from a remote
    server's reply, say) escaped.
    """
    return "".join(c if c.isprintable() or c == "\t" else repr(c)[1:-1] for c in text)


def _count(n: int, noun: str) -> str:
    """
    C{n} and C{noun}, in the plural unless C{n} is 1.
    """
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def formatDuration(seconds: float) -> str:
    """
    A duration for people: C{45s}, C{12m05s}, C{3h04m}, C{2d03h}.
    """
    seconds = int(max(seconds, 0))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def formatMessage(message: QueuedMessage, now: float) -> list[str]:
    """
    The lines that describe one queued message: ID, age, size and sender,
    then each recipient with its state, where it goes when that is not
    the next hop of its domain (C{via lmtp ENDPOINT}: a local recipient
    handed to its delivery backend, docs/storage.rst), attempts, next attempt
    and last reply.
    """
    sender = f"<{message.sender}>"
    lines = [
        f"{message.id}  {message.size} bytes  queued {formatDuration(now - message.created)} ago"
        f"  from {_printable(sender)}"
    ]
    for r in message.recipients:
        parts = [f"  <{_printable(r.address)}>", r.state]
        if r.via is not None:
            parts.append(f"via {_printable(describeVia(r.via))}")
        parts.append(_count(r.attempts, "attempt"))
        if r.state == PENDING:
            due = r.nextAttempt - now
            parts.append("next attempt now" if due <= 0 else f"next attempt in {formatDuration(due)}")
        lines.append("  ".join(parts))
        if r.lastReply is not None:
            source = f" (from {_printable(r.remoteMta)})" if r.remoteMta else ""
            lines.append(f"      last reply: {_printable(r.lastReply)}{source}")
    return lines


def readHeaders(path: str, limit: int = MAX_HEADER_BYTES) -> str:
    """
    The header section of a message file: everything before the first
    empty line, at most C{limit} bytes, decoded as UTF-8 (bytes that are
    not are replaced).
    """
    with open(path, "rb") as f:
        data = f.read(limit)
    if data.startswith(b"\n"):
        return ""
    end = data.find(b"\n\n")
    headers = data if end < 0 else data[: end + 1]
    text = headers.decode("utf-8", errors="replace")
    return "\n".join(_printable(line) for line in text.splitlines())


def _list(queue: Queue, out: TextIO, err: TextIO, now: float) -> int:
    """
    C{list}: every message, oldest first.
    """
    messages = []
    for messageId in queue.ids():
        try:
            message = queue.load(messageId)
        except CorruptMessage as e:
            err.write(f"smtpmx-queue: {messageId}: unreadable queue entry: {e}\n")
            continue
        if message is not None:
            messages.append(message)
    if not messages:
        out.write("The queue is empty.\n")
        return 0
    messages.sort(key=lambda m: (m.created, m.id))
    for message in messages:
        out.write("\n".join(formatMessage(message, now)) + "\n\n")
    pending = sum(len(m.pending()) for m in messages)
    total = sum(m.size for m in messages)
    out.write(
        f"{_count(len(messages), 'message')}, {total} bytes,"
        f" {_count(pending, 'recipient')} pending.\n"
    )
    return 0


def _load(queue: Queue, messageId: str) -> QueuedMessage:
    """
    One message.

    @raise _Failed: it is not in the queue, or cannot be read.
    """
    try:
        message = queue.load(messageId)
    except CorruptMessage as e:
        raise _Failed(f"{messageId}: unreadable queue entry: {e}") from None
    if message is None:
        raise _Failed(f"{messageId}: no such message in the queue")
    return message


def _show(queue: Queue, messageId: str, out: TextIO, now: float) -> int:
    """
    C{show ID}: one message and its headers.
    """
    message = _load(queue, messageId)
    try:
        headers = readHeaders(queue.messagePath(messageId))
    except FileNotFoundError:
        raise _Failed(f"{messageId}: no such message in the queue") from None
    out.write("\n".join(formatMessage(message, now)) + "\n\n")
    out.write(headers + "\n")
    return 0


def _flush(queue: Queue, out: TextIO, err: TextIO, now: float) -> int:
    """
    C{flush}: every pending recipient is due now, and the running server
    is told so.
    """

    def due(message: QueuedMessage) -> None:
        """
        Make every pending recipient due now.
        """
        for recipient in message.pending():
            recipient.nextAttempt = now

    flushed = 0
    for messageId in sorted(queue.ids()):
        try:
            message = queue.update(messageId, due)
        except CorruptMessage as e:
            err.write(f"smtpmx-queue: {messageId}: unreadable queue entry: {e}\n")
            continue
        if message is not None and message.pending():
            flushed += 1
    queue.requestFlush()
    out.write(f"Flush requested: {_count(flushed, 'message')} with pending recipients.\n")
    return 0


def _delete(queue: Queue, messageId: str, out: TextIO) -> int:
    """
    C{delete ID}: take one message out of the queue, undelivered.
    """
    if not queue.remove(messageId):
        raise _Failed(f"{messageId}: no such message in the queue")
    out.write(f"{messageId}: deleted.\n")
    return 0


def main(
    argv: Optional[list[str]] = None,
    stdout: Optional[TextIO] = None,
    stderr: Optional[TextIO] = None,
    now: Callable[[], float] = time.time,
) -> int:
    """
    The C{smtpmx-queue} command.

    @param argv: the arguments, without the program name; L{None} for
        C{sys.argv[1:]}.
    @param stdout: where results go; L{None} for C{sys.stdout}.
    @param stderr: where errors go; L{None} for C{sys.stderr}.
    @param now: gives the current time.

    @return: the exit status: 0 for success, 1 when the command failed
        (an unknown ID, no queue there), 2 for a usage error.
    """
    out = sys.stdout if stdout is None else stdout
    err = sys.stderr if stderr is None else stderr
    parser = makeParser()
    saved = sys.stdout, sys.stderr
    try:
        # argparse prints usage and help to sys.stdout and sys.stderr.
        sys.stdout, sys.stderr = out, err
        options = parser.parse_args(argv)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 2
    finally:
        sys.stdout, sys.stderr = saved
    try:
        queue = Queue(queueDirectory(options))
        if not queue.exists():
            raise _Failed(f"no queue at {queue.path} (give --queue-dir or --config)")
        t = now()
        if options.command == "list":
            return _list(queue, out, err, t)
        if options.command == "show":
            return _show(queue, options.id, out, t)
        if options.command == "flush":
            return _flush(queue, out, err, t)
        return _delete(queue, options.id, out)
    except (_Failed, ConfigError) as e:
        err.write(f"smtpmx-queue: {e}\n")
        return 1
    except OSError as e:
        err.write(f"smtpmx-queue: {e.filename or ''}: {e.strerror or e}\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())
