"""
Where smtpmx's CPU per message goes, in one command::

    python bench/cpu_per_message.py [--messages 2000] [--sessions 10] [--runs 3]

Starts the real C{twistd -n smtpmx --validator any} (one process, via
C{tests/e2e.py}), warms it up with 300 messages, then sends C{--messages}
of C{--size} bytes from C{--sessions} sessions with Postfix's
C{smtp-source} (one message per connection, to one mailbox) and reads from
C{/proc} the server's user and system CPU time and the context switches of
all its threads, per message.

It does so for two servers, in turn (C{--runs} rounds, medians):

  - C{threads}: smtpmx as it ships, its file work in threads
    (C{smtpmx/threadrunner.py}, one job per message);
  - C{inline}: the same server with that file work called on the reactor
    thread (C{runBlocking} replaced through a C{sitecustomize} module on
    its C{PYTHONPATH}).  It is not a way to run smtpmx, since a slow disk
    would stall every session; it prices what handing the file work to
    threads under CPython's GIL costs (C{bench/RESULTS.md}).

C{--strace} adds the system calls per message of one more run of each
(C{strace -c -f}; strace slows the server, so its run is not timed).
Every copy must land in C{new/}; any loss ends the run with status 1.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Optional, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests.e2e import RunningServer  # noqa: E402
from tests.proctree import TICKS, readStat  # noqa: E402

SMTP_SOURCE = "/usr/sbin/smtp-source"
STRACE = shutil.which("strace")
DOMAIN = "localhost"
MAILBOX = "profile"
WARM_UP = 300

# Loaded by the interpreter at start-up from the inline server's
# PYTHONPATH: the thread runner becomes a direct call.
INLINE = '''\
import smtpmx.services
from twisted.internet.defer import maybeDeferred


def threadRunner(reactor):
    return lambda f, *args, **kwargs: maybeDeferred(f, *args, **kwargs)


smtpmx.services.threadRunner = threadRunner
'''

VARIANTS = ("threads", "inline")


@dataclass(frozen=True)
class Counters:
    """
    A server's CPU time (seconds) and context switches, all threads, at one
    moment.
    """

    user: float
    system: float
    voluntary: int
    involuntary: int

    @classmethod
    def read(cls, pid: int) -> "Counters":
        """
        Read them from C{/proc/PID/stat} and C{/proc/PID/task/*/status}.
        """
        fields = readStat(pid)
        if fields is None:
            raise RuntimeError(f"the server (PID {pid}) is gone")
        switches = {"voluntary_ctxt_switches": 0, "nonvoluntary_ctxt_switches": 0}
        for task in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{task}/status") as f:
                    for line in f:
                        key, _, value = line.partition(":")
                        if key in switches:
                            switches[key] += int(value)
            except FileNotFoundError:
                # A thread that ended; its switches are lost, as in any count.
                continue
        # utime and stime: fields 14 and 15 of stat(5).
        return cls(
            int(fields[11]) / TICKS,
            int(fields[12]) / TICKS,
            switches["voluntary_ctxt_switches"],
            switches["nonvoluntary_ctxt_switches"],
        )


@dataclass(frozen=True)
class Run:
    """
    One timed run: per message, the server's CPU milliseconds and context
    switches, and the rate.
    """

    variant: str
    rate: float
    user: float
    system: float
    voluntary: float
    involuntary: float

    @property
    def cpu(self) -> float:
        return self.user + self.system


def send(port: int, messages: int, sessions: int, size: int) -> None:
    """
    Send C{messages} with C{smtp-source}, one per connection.

    @raise RuntimeError: it failed.
    """
    argv = [
        SMTP_SOURCE, "-l", str(size), "-m", str(messages), "-s", str(sessions), "-M", "client.profile.example",
        "-f", "profile@remote.example", "-t", f"{MAILBOX}@{DOMAIN}", f"127.0.0.1:{port}",
    ]
    done = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=600)
    if done.returncode != 0 or done.stderr.strip():
        raise RuntimeError(f"smtp-source: {done.stderr.strip() or done.returncode}")


def landed(server: RunningServer) -> int:
    """
    How many messages are in the mailbox's C{new/}.
    """
    try:
        return len(os.listdir(os.path.join(server.maildir(DOMAIN, MAILBOX), "new")))
    except FileNotFoundError:
        return 0


def start(cleanups: ExitStack, variant: str, directory: str) -> RunningServer:
    """
    Start a server of C{variant} with its files under C{directory}.
    """
    os.makedirs(directory)
    pythonPath = []
    if variant == "inline":
        patch = os.path.join(directory, "inline")
        os.makedirs(patch)
        with open(os.path.join(patch, "sitecustomize.py"), "w") as f:
            f.write(INLINE)
        pythonPath.append(patch)
    home = os.path.join(directory, "home")
    os.makedirs(home)
    return RunningServer.start(cleanups.callback, ["--validator", "any"], directory=home, pythonPath=pythonPath)


def timedRun(variant: str, messages: int, sessions: int, size: int, directory: str) -> Run:
    """
    One run of C{variant} on a new server with its files under
    C{directory}: warm up, then measure.

    @raise RuntimeError: a message did not land.
    """
    with ExitStack() as cleanups:
        server = start(cleanups, variant, directory)
        send(server.port, WARM_UP, sessions, size)
        before = Counters.read(server.pid)
        began = time.monotonic()
        send(server.port, messages, sessions, size)
        took = time.monotonic() - began
        after = Counters.read(server.pid)
        if landed(server) != WARM_UP + messages:
            raise RuntimeError(f"{variant}: {landed(server)} of {WARM_UP + messages} messages landed")
    return Run(
        variant,
        messages / took,
        (after.user - before.user) * 1000 / messages,
        (after.system - before.system) * 1000 / messages,
        (after.voluntary - before.voluntary) / messages,
        (after.involuntary - before.involuntary) / messages,
    )


def systemCalls(variant: str, messages: int, sessions: int, size: int, directory: str) -> list[tuple[str, float]]:
    """
    The system calls per message of C{variant}, by C{strace -c -f} attached
    to a warm server with its files under C{directory}: the most frequent
    first.
    """
    with ExitStack() as cleanups:
        server = start(cleanups, variant, directory)
        send(server.port, WARM_UP, sessions, size)
        output = os.path.join(directory, "strace.out")
        tracer = subprocess.Popen([STRACE, "-c", "-f", "-o", output, "-p", str(server.pid)],
                                  stderr=subprocess.DEVNULL)
        cleanups.callback(tracer.kill)
        time.sleep(1)
        send(server.port, messages, sessions, size)
        tracer.send_signal(signal.SIGINT)
        tracer.wait(timeout=30)
        calls = []
        with open(output) as f:
            for line in f:
                parts = line.split()
                # % time, seconds, usecs/call, calls, [errors,] syscall
                if len(parts) >= 5 and parts[3].isdigit() and parts[-1] != "total":
                    calls.append((parts[-1], int(parts[3]) / messages))
    return sorted(calls, key=lambda c: -c[1])


def report(runs: Sequence[Run], calls: dict[str, list[tuple[str, float]]], options: argparse.Namespace) -> str:
    """
    The Markdown report: each run, then the medians of each variant.
    """
    lines = [
        f"{options.messages} messages of {options.size} bytes from {options.sessions} sessions "
        f"(`smtp-source`, one message per connection), after {WARM_UP} to warm up; "
        "per message, the server's CPU (all threads) and context switches.",
        "",
        "| server | run | msg/s | user ms | system ms | CPU ms | voluntary switches | involuntary switches |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for variant in VARIANTS:
        mine = [r for r in runs if r.variant == variant]
        for number, r in enumerate(mine, 1):
            lines.append(f"| {variant} | {number} | {r.rate:,.0f} | {r.user:.2f} | {r.system:.2f} | {r.cpu:.2f} "
                         f"| {r.voluntary:.1f} | {r.involuntary:.1f} |")
        if mine:
            m = statistics.median
            lines.append(
                f"| **{variant}** | median | {m(r.rate for r in mine):,.0f} | {m(r.user for r in mine):.2f} "
                f"| {m(r.system for r in mine):.2f} | {m(r.cpu for r in mine):.2f} "
                f"| {m(r.voluntary for r in mine):.1f} | {m(r.involuntary for r in mine):.1f} |"
            )
    for variant, counted in calls.items():
        lines += ["", f"System calls per message, {variant}: "
                  + ", ".join(f"{name} {count:.1f}" for name, count in counted[:14])]
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--sessions", type=int, default=10)
    parser.add_argument("--size", type=int, default=5120)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--strace", action="store_true", help="count system calls per message too")
    options = parser.parse_args(argv)
    if not os.access(SMTP_SOURCE, os.X_OK):
        print(f"needs Postfix's smtp-source ({SMTP_SOURCE}, Debian's package postfix)", file=sys.stderr)
        return 2
    if options.strace and STRACE is None:
        print("--strace needs strace", file=sys.stderr)
        return 2
    runs = []
    # Every run's files stay until the end: on some file systems (ext4
    # without a journal) creating files costs more for a while after many
    # are deleted, which would weigh on the next run.
    top = tempfile.mkdtemp(prefix="smtpmx-cpu-")
    places = (os.path.join(top, str(n)) for n in range(2 * options.runs + 2))
    try:
        for number in range(options.runs):
            # Forward, then backward: neither variant always goes first.
            for variant in VARIANTS if number % 2 == 0 else reversed(VARIANTS):
                runs.append(timedRun(variant, options.messages, options.sessions, options.size, next(places)))
        calls = {v: systemCalls(v, options.messages, options.sessions, options.size, next(places))
                 for v in VARIANTS if options.strace}
    except RuntimeError as e:
        print(f"LOST OR FAILED: {e}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(top, ignore_errors=True)
    print(report(runs, calls, options))
    return 0


if __name__ == "__main__":
    sys.exit(main())
