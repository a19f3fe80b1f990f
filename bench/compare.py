"""
smtpmx side by side with its peers, on the same machine, the same load and
the same file system, in one command::

    python bench/compare.py [--messages 2000] [--size 5120] [--runs 3]
        [--peers smtpmx,smtpmx-w2,postfix,aiosmtpd,chasquid,smtp-sink] [--no-install]
        [--no-relay] [--smtpmx-args ARGS] [--output FILE]

It finds (or, as root, installs: Debian's C{postfix}, C{chasquid} and
C{maildrop}; aiosmtpd from PyPI) and starts, each on its own loopback
port, each filing into Maildirs under one temporary directory:

  - smtpmx (C{twistd -n smtpmx --validator any}; the client is in the
    default relay network, so trusted), twice: C{--workers 1} (the
    ratios are to this one) and C{--workers 2} (C{smtpmx-w2});
  - a private Postfix delivering through C{virtual(8)} (L{tests.postfix});
  - aiosmtpd with C{mailbox.Maildir}, file and directory fsynced
    (L{tests.aiosmtpdmaildir});
  - chasquid with maildrop (L{tests.chasquid});
  - Postfix's C{smtp-sink}, which discards: the ceiling of the protocol
    and of the client.

Then, in rounds (the servers in turn, forward in one round and backward
in the next, so that load from elsewhere on the machine falls on every
server alike), it sends each server the same loads with
Postfix's C{smtp-source}, one message per connection: N messages of
SIZE bytes from 10 sessions, from 1 session, and from 10 sessions with 5
recipients each.  For each run it waits until every copy has landed (a
file in C{new/} of each recipient's Maildir; for the sink its counter) and
reports loudly any that did not; it measures the server's processes from
C{/proc} (L{tests.proctree}): CPU time (including children reaped in the
meantime), and the peak of their summed resident and proportional set
sizes, sampled every 0.2 s.  Then the memory load, once per server: 10
clients at once send one 30 MiB message each; the memory idle just
before it and at its peak (sampled every 0.1 s), and whether every copy
landed.

It prints one Markdown report: the machine (CPUs, CPU model, kernel, file
system, load average), a table with, per server and load, the medians of
the runs of messages per second (C{250}s over the time C{smtp-source}
took), the ratio to smtpmx, messages per second until the last copy
landed, server CPU milliseconds per message, and the peak memory; a
table of the memory load (after warm-up, idle, peak, peak ÷ idle); each
server's durability; the disk's rate of create + write + fsync of the file
+ fsync of the directory, from 1 and from 10 threads; and the relay's
drain rate from C{bench/relay_bench.py --queued}.  It exits 1 if any
message was lost or any server could not be measured.

Every process is started and stopped by PID through L{tests.process};
every wait is bounded.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests.aiosmtpdmaildir import aiosmtpdMissing, aiosmtpdVersion, startAiosmtpd  # noqa: E402
from tests.chasquid import Chasquid, chasquidMissing  # noqa: E402
from tests.e2e import RunningServer, freePort  # noqa: E402
from tests.postfix import SMTP_SINK, PrivatePostfix, privatePostfixMissing, startSmtpSink  # noqa: E402
from tests.proctree import Memory, cpuSeconds, descendants, loadAverage, memory  # noqa: E402

SMTP_SOURCE = "/usr/sbin/smtp-source"
HOST = "127.0.0.1"
MiB = 1048576
DOMAIN = "localhost"
SENDER = "bench@remote.example"
PEERS = ("smtpmx", "smtpmx-w2", "postfix", "aiosmtpd", "chasquid", "smtp-sink")

# smtpmx's rows: the peer key and the server's --workers.  The ratios are
# to the first.
WORKERS = {"smtpmx": 1, "smtpmx-w2": 2}

# What each server promises before its 250, as read from its code and
# seen with strace (see bench/RESULTS.md).
DURABILITY = {
    "smtpmx": "file fsync + directory fsync before the 250",
    "smtpmx-w2": "the same: file fsync + directory fsync before the 250",
    "postfix": "queue file fsync before the 250 (no directory fsync); virtual(8) fsyncs each Maildir file",
    "aiosmtpd": "file fsync (mailbox.Maildir) + new/ fsync before the 250",
    "chasquid": "queue file written, not fsynced, before the 250; maildrop fsyncs each Maildir file",
    "smtp-sink": "none: discards",
}


@dataclass(frozen=True)
class Load:
    """
    One load: C{smtp-source -s SESSIONS -r RECIPIENTS}, one message per
    connection.
    """

    name: str
    sessions: int
    recipients: int


LOADS = (
    Load("10 sessions", 10, 1),
    Load("1 session", 1, 1),
    Load("10 sessions, 5 rcpt", 10, 5),
)


def recipientsOf(base: str, count: int) -> list[str]:
    """
    The local parts C{smtp-source -t BASE@... -r COUNT} sends to: C{BASE},
    then C{2BASE} to C{COUNTBASE}.
    """
    return [base] + [f"{n}{base}" for n in range(2, count + 1)]


def countFiles(directory: str) -> int:
    """
    How many entries C{directory} holds (0 if it does not exist).
    """
    try:
        return len(os.listdir(directory))
    except FileNotFoundError:
        return 0


@dataclass
class Peer:
    """
    One running server under test.

    @ivar key: one of L{PEERS}.
    @ivar name: what the table calls it, with its version.
    @ivar pid: the process at the root of its tree.
    @ivar port: its SMTP port on L{HOST}.
    @ivar landed: how many copies have landed for these local parts.
    @ivar perRecipient: whether each recipient gets a copy (a Maildir
        file); the sink counts messages.
    @ivar notes: how it was set up, for the report.
    @ivar check: what went wrong inside it, read from its log at the end.
    """

    key: str
    name: str
    pid: int
    port: int
    landed: Callable[[Sequence[str]], int]
    perRecipient: bool = True
    notes: str = ""
    check: Callable[[], list[str]] = lambda: []

    def expected(self, messages: int, load: Load) -> int:
        """
        How many copies land when every message is accepted.
        """
        return messages * (load.recipients if self.perRecipient else 1)


def command(argv: Sequence[str]) -> str:
    """
    The first line of what C{argv} prints, or C{""}.
    """
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return (p.stdout + p.stderr).strip().splitlines()[0] if (p.stdout + p.stderr).strip() else ""


def maildirCounter(maildir: Callable[[str], str]) -> Callable[[Sequence[str]], int]:
    """
    A L{Peer.landed} for a server whose Maildir for a local part is
    C{maildir(user)}.
    """
    return lambda users: sum(countFiles(os.path.join(maildir(user), "new")) for user in users)


def startPeer(key: str, cleanups: ExitStack, directory: str, users: Sequence[str], smtpmxArgs: Sequence[str],
              maxSize: int) -> Peer:
    """
    Start the server C{key} with its Maildirs under C{directory/key},
    taking messages of up to C{maxSize} bytes (the sink takes any).

    @raise tests.process.ProcessDidNotStart: it did not start.
    """
    add = cleanups.callback
    home = os.path.join(directory, key)
    os.makedirs(home)
    os.chmod(home, 0o755)
    if key in WORKERS:
        import smtpmx

        args = ["--validator", "any", "--max-message-size", str(maxSize), *smtpmxArgs, "--workers", str(WORKERS[key])]
        server = RunningServer.start(add, args, directory=home)
        return Peer(
            key, f"smtpmx {smtpmx.__version__} --workers {WORKERS[key]}", server.pid, server.port,
            maildirCounter(lambda user: server.maildir(DOMAIN, user)),
            notes=" ".join(["twistd -n smtpmx", *args])
            + "; the client (127.0.0.1) is in the default relay network: no per-client checks"
            + ("; the memory is summed over the parent and its workers" if WORKERS[key] > 1 else ""),
            check=lambda: [f"{n} traceback(s) in its log" for n in [server.log().count("Traceback")] if n],
        )
    if key == "postfix":
        instance = PrivatePostfix.start(add, home, HOST, freePort(HOST), DOMAIN, users, messageSizeLimit=maxSize)
        version = command(["/usr/sbin/postconf", "-d", "-h", "mail_version"])
        return Peer(
            key, f"Postfix {version} (virtual)", instance.pid, instance.port, maildirCounter(instance.maildir),
            notes="private instance (own main.cf, master.cf, queue), master -d; smtpd -> cleanup -> qmgr -> "
            "virtual(8) to Maildir; users in a texthash table; otherwise Postfix's defaults, but for the size limit "
            "(below)",
            check=lambda: re.findall(r".*(?:fatal|panic):.*", instance.output())[:5],
        )
    if key == "aiosmtpd":
        server = startAiosmtpd(add, home, HOST, DOMAIN, dataSizeLimit=maxSize)
        return Peer(
            key, f"aiosmtpd {aiosmtpdVersion()} + mailbox.Maildir", server.pid, server.port,
            maildirCounter(server.maildir),
            notes="asyncio server; DATA handler files every copy in the loop's default executor (threads), "
            "250 when all are durable",
            check=lambda: [line for line in server.output().splitlines() if "failed" in line or "Traceback" in line][:5],
        )
    if key == "chasquid":
        instance = Chasquid.start(add, home, HOST, freePort(HOST), DOMAIN, users, maxDataSizeMB=-(-maxSize // MiB))
        version = command(["/usr/bin/chasquid", "-version"]).replace("chasquid", "").strip()
        version = re.split(r"[ (]", version)[0] if version else ""
        return Peer(
            key, f"chasquid {version} + maildrop", instance.pid, instance.port, maildirCounter(instance.maildir),
            notes="private config dir; queues, then runs maildrop (its default MDA) once per recipient; "
            "users in its user db; its SPF lookups fail at once (its own resolv.conf names no server)",
        )
    if key == "smtp-sink":
        sink = startSmtpSink(add, home, HOST, freePort(HOST), backlog=256)
        return Peer(
            key, "Postfix smtp-sink (discards)", sink.runner.pid, sink.port,
            lambda users: sink.counters()[1], perRecipient=False,
            notes="smtp-sink -c: accepts and discards; the ceiling of the protocol and of smtp-source",
        )
    raise ValueError(key)


def missing(key: str) -> str:
    """
    Why the server C{key} cannot be run here, or C{""}.
    """
    if key == "postfix":
        return privatePostfixMissing()
    if key == "aiosmtpd":
        return aiosmtpdMissing()
    if key == "chasquid":
        return chasquidMissing()
    if key == "smtp-sink" and not os.access(SMTP_SINK, os.X_OK):
        return f"{SMTP_SINK} is not installed (Debian's package postfix)"
    return ""


# What to install for each peer: Debian packages, PyPI distributions.
DEBIAN = {"postfix": ["postfix"], "smtp-sink": ["postfix"], "chasquid": ["chasquid", "maildrop"]}
PYPI = {"aiosmtpd": ["aiosmtpd"]}


def install(keys: Iterable[str], say: Callable[[str], None]) -> None:
    """
    Install what the peers C{keys} need and lack: Debian packages with
    C{apt-get} (as root; a policy-rc.d that forbids starting services is
    in place meanwhile, so that no system daemon is left running), PyPI
    ones with this interpreter's pip.
    """
    keys = [k for k in keys if missing(k)]
    if not os.access(SMTP_SOURCE, os.X_OK):
        keys.append("postfix")
    packages = sorted({p for k in keys for p in DEBIAN.get(k, ())})
    if packages and os.geteuid() == 0 and shutil.which("apt-get"):
        say(f"installing {' '.join(packages)} (apt-get)")
        policy = "/usr/sbin/policy-rc.d"
        ours = not os.path.exists(policy)
        if ours:
            with open(policy, "w") as f:
                f.write("#!/bin/sh\nexit 101\n")
            os.chmod(policy, 0o755)
        try:
            env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
            subprocess.run(["debconf-set-selections"], input="postfix postfix/main_mailer_type select Local only\n",
                           text=True, env=env, check=False, timeout=60)
            if subprocess.run(["apt-get", "install", "-y", "-qq", *packages], env=env, timeout=900,
                              stdout=subprocess.DEVNULL).returncode != 0:
                subprocess.run(["apt-get", "update", "-qq"], env=env, timeout=900, check=False)
                subprocess.run(["apt-get", "install", "-y", "-qq", *packages], env=env, timeout=900,
                               stdout=subprocess.DEVNULL, check=False)
        finally:
            if ours:
                os.remove(policy)
    distributions = sorted({p for k in keys for p in PYPI.get(k, ())})
    if distributions:
        say(f"installing {' '.join(distributions)} (pip)")
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", *distributions], timeout=900, check=False)


class Sampler:
    """
    Samples the memory of a server's processes in a thread, keeping the
    peaks.
    """

    def __init__(self, root: int, interval: float = 0.2) -> None:
        """
        @param root: the PID at the root of the server's tree.
        """
        self.root = root
        self.interval = interval
        self.peak = Memory(0, 0, 0)
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def sample(self) -> None:
        """
        Read the memory now and keep each peak.
        """
        now = memory(descendants(self.root))
        self.peak = Memory(
            max(self.peak.rss, now.rss), max(self.peak.pss, now.pss), max(self.peak.processes, now.processes)
        )

    def run(self) -> None:
        """
        Sample until stopped.
        """
        while not self.stopped.wait(self.interval):
            self.sample()

    def __enter__(self) -> "Sampler":
        """
        Take a first sample and start sampling.
        """
        self.sample()
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        """
        Stop sampling, and take a last sample.
        """
        self.stopped.set()
        self.thread.join(10)
        self.sample()


@dataclass
class Run:
    """
    What one run of one load against one server gave.
    """

    peer: str
    load: Load
    messages: int
    accepted: int
    refusedCopies: int
    expected: int
    landed: int
    seconds: float
    landedSeconds: float
    cpu: float
    peak: Memory
    loadAverage: float
    problems: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        """
        Messages accepted per second, as the client saw them.
        """
        return self.accepted / self.seconds if self.seconds else 0.0

    @property
    def landedRate(self) -> float:
        """
        Messages per second until the last copy landed.
        """
        return self.accepted / self.landedSeconds if self.landedSeconds else 0.0

    @property
    def cpuPerMessage(self) -> float:
        """
        Server CPU milliseconds per accepted message.
        """
        return 1000 * self.cpu / self.accepted if self.accepted else 0.0


def refusals(stderr: str, recipients: int) -> tuple[int, int, list[str]]:
    """
    Read C{smtp-source -A}'s complaints.

    @return: messages refused as a whole, recipients refused one by one,
        and any other complaint (a failure to connect, a fatal error).
    """
    messages = copies = 0
    other = []
    for line in stderr.splitlines():
        if "recipient rejected" in line:
            copies += 1
        elif "rejected" in line:
            messages += 1
        elif line.strip():
            other.append(line.strip())
    return messages, copies + messages * recipients, other


def runLoad(peer: Peer, load: Load, base: str, messages: int, size: int, stall: float, interval: float = 0.2) -> Run:
    """
    One run: C{smtp-source} sends C{messages} to C{base@DOMAIN} (and its
    numbered siblings), then wait until every copy has landed, or nothing
    has moved for C{stall} seconds; the memory is sampled every
    C{interval} seconds.
    """
    users = recipientsOf(base, load.recipients)
    before = peer.landed(users)
    averageBefore = loadAverage()
    cpuBefore = cpuSeconds(descendants(peer.pid))
    argv = [
        SMTP_SOURCE, "-A", "-l", str(size), "-m", str(messages), "-s", str(load.sessions),
        "-r", str(load.recipients), "-M", "client.bench.example", "-f", SENDER, "-t", f"{base}@{DOMAIN}",
        f"{HOST}:{peer.port}",
    ]
    problems = []
    with Sampler(peer.pid, interval) as sampler:
        began = time.monotonic()
        try:
            source = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                    timeout=max(300.0, messages * 0.1))
            stderr = source.stderr
            if source.returncode:
                problems.append(f"smtp-source exited with status {source.returncode}")
        except subprocess.TimeoutExpired as e:
            stderr = e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
            problems.append("smtp-source timed out")
        sent = time.monotonic()
        refusedMessages, refusedCopies, other = refusals(stderr, load.recipients)
        problems.extend(other[:5])
        expected = peer.expected(messages, load)
        landed, moved = peer.landed(users) - before, time.monotonic()
        while landed < expected - refusedCopies and time.monotonic() - moved < stall:
            time.sleep(0.05)
            now = peer.landed(users) - before
            if now != landed:
                landed, moved = now, time.monotonic()
        done = time.monotonic()
        cpu = cpuSeconds(descendants(peer.pid)) - cpuBefore
    # Late copies beyond the expected count would be duplicates.
    time.sleep(0.1)
    landed = peer.landed(users) - before
    accepted = messages - refusedMessages
    if landed < expected - refusedCopies:
        problems.append(f"LOST: {expected - refusedCopies - landed} of {expected - refusedCopies} accepted copies never landed")
    elif landed > expected - refusedCopies:
        problems.append(f"DUPLICATES: {landed - (expected - refusedCopies)} copies more than accepted")
    return Run(
        peer.key, load, messages, accepted, refusedCopies, expected, landed, sent - began, done - began, cpu,
        sampler.peak, averageBefore, problems,
    )


@dataclass
class MemoryRun:
    """
    The memory load on one server: its memory once warmed up, just
    before the load (idle), and the run (whose C{peak} is the peak during
    it).
    """

    started: Memory
    idle: Memory
    run: Run

    def ratios(self) -> str:
        """
        The peak over the idle memory: RSS, and for several processes PSS.
        """
        rss = self.run.peak.rss / self.idle.rss if self.idle.rss else 0.0
        if max(self.idle.processes, self.run.peak.processes) <= 1:
            return f"{rss:.2f}"
        pss = self.run.peak.pss / self.idle.pss if self.idle.pss else 0.0
        return f"{rss:.2f} RSS, {pss:.2f} PSS"


def memoryLoad(peer: Peer, load: Load, size: int, stall: float, started: Memory, settle: float = 1.0) -> MemoryRun:
    """
    The memory load: after C{settle} seconds without mail, the server's
    idle memory; then C{load.sessions} clients (C{smtp-source -s}) send one
    message of C{size} bytes each at once, to C{mem@DOMAIN}, the memory
    sampled every 0.1 s, and every copy awaited.  A refused message is a
    problem here: the load did not happen.
    """
    time.sleep(settle)
    idle = memory(descendants(peer.pid))
    run = runLoad(peer, load, "mem", load.sessions, size, stall, interval=0.1)
    if run.refusedCopies:
        run.problems.append(f"REFUSED: {run.refusedCopies} of {run.expected} copies (too large?)")
    return MemoryRun(started, idle, run)


def fsyncRate(directory: str, threads: int, operations: int, size: int = 5120) -> float:
    """
    The disk's rate of durable file creations: each creates a file in
    C{directory}, writes C{size} bytes, fsyncs it, and fsyncs the
    directory; C{operations} of them spread over C{threads} threads.

    @return: operations per second.
    """
    data = b"x" * size
    work = os.path.join(directory, f"fsync-{threads}")
    os.makedirs(work)
    per = max(1, operations // threads)

    def worker(n: int) -> None:
        """
        One thread's share.
        """
        for i in range(per):
            fd = os.open(os.path.join(work, f"{n}.{i}"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            dfd = os.open(work, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)

    workers = [threading.Thread(target=worker, args=(n,)) for n in range(threads)]
    began = time.monotonic()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    elapsed = time.monotonic() - began
    shutil.rmtree(work, True)
    return per * threads / elapsed


def relayRun(messages: int) -> tuple[Optional[float], str]:
    """
    C{bench/relay_bench.py --queued --messages N}: a queue of N drained
    into Postfix's C{smtp-sink}.

    @return: messages per second of the drain (L{None} if it failed) and
        what the next hop saw (or why it failed).
    """
    try:
        p = subprocess.run(
            [sys.executable, os.path.join(ROOT, "bench", "relay_bench.py"), "--queued", "--messages", str(messages)],
            capture_output=True, text=True, timeout=900, cwd=ROOT,
        )
    except subprocess.TimeoutExpired:
        return None, "timed out"
    rate = re.search(r"drained after flush:\s+[\d.]+ s, (\d+) msg/s", p.stdout)
    saw = re.search(r"smtp-sink saw:\s+(.*)", p.stdout)
    left = re.search(r"left in queue:\s+(\d+)", p.stdout)
    if p.returncode or not rate:
        return None, (p.stdout + p.stderr).strip()[-500:]
    detail = saw.group(1) if saw else ""
    if left and left.group(1) != "0":
        detail += f"; {left.group(1)} LEFT IN THE QUEUE"
    return float(rate.group(1)), detail


def fileSystem(path: str) -> str:
    """
    The type and mount point of the file system holding C{path}.
    """
    path = os.path.realpath(path)
    best, found = "", "unknown"
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                left, _, right = line.partition(" - ")
                mountPoint = left.split()[4]
                inside = path == mountPoint or path.startswith(mountPoint.rstrip("/") + "/")
                if inside and len(mountPoint) >= len(best):
                    best, found = mountPoint, f"{right.split()[0]} on {right.split()[1]}, mounted at {mountPoint}"
    except OSError:
        pass
    return found


def cpuModel() -> str:
    """
    The CPU's model name.
    """
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def mebibytes(n: int) -> str:
    """
    C{n} bytes in MiB.
    """
    return f"{n / 1048576:.0f} MiB"


def memoryCell(peak: Memory) -> str:
    """
    A peak memory for the table: RSS alone for one process; RSS, PSS and
    the number of processes for several.
    """
    if peak.processes <= 1:
        return mebibytes(peak.rss)
    return f"{mebibytes(peak.rss)} RSS, {mebibytes(peak.pss)} PSS, {peak.processes} procs"


def median(values: Iterable[float]) -> float:
    """
    The median (0 for none).
    """
    values = list(values)
    return statistics.median(values) if values else 0.0


def report(peers: Sequence[Peer], runs: Sequence[Run], skipped: dict[str, str], fsync: dict[int, list[float]],
           relay: list[tuple[Optional[float], str]], options, fileSystemName: str, loads: Sequence[Load],
           averages: tuple[float, float], memoryRuns: Optional[dict[str, MemoryRun]] = None) -> str:
    """
    The Markdown report.
    """
    memoryRuns = memoryRuns or {}
    lines = []
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines.append(f"Run of `python bench/compare.py` on {now}: {options.messages} messages of {options.size} bytes "
                 f"per run, Postfix's `smtp-source`, one message per connection, median of {options.runs} runs "
                 "taken in rounds.")
    lines.append("")
    lines.append(f"Machine: {os.cpu_count()} CPUs ({cpuModel()}), Linux {platform.release()}, "
                 f"file system {fileSystemName}, Python {platform.python_version()}. "
                 f"Load average (1 min) {averages[0]:.2f} at the start, {averages[1]:.2f} at the end"
                 " (other work on the machine counts: see the last column).")
    lines.append("")
    if "smtpmx" in {p.key for p in peers}:
        lines.append("× smtpmx is the ratio of msg/s to smtpmx with `--workers 1`.")
        lines.append("")
    lines.append("| server | load | msg/s | × smtpmx | landed msg/s | server CPU ms/msg | peak memory | load avg |")
    lines.append("| --- | --- | ---: | ---: | ---: | ---: | --- | ---: |")
    names = {p.key: p.name for p in peers}
    for load in loads:
        base = [r.rate for r in runs if r.peer == "smtpmx" and r.load == load]
        for peer in peers:
            mine = [r for r in runs if r.peer == peer.key and r.load == load]
            if not mine:
                continue
            rate = median(r.rate for r in mine)
            ratio = f"{rate / median(base):.2f}" if base and median(base) else "—"
            peak = max((r.peak for r in mine), key=lambda m: (m.rss, m.pss))
            flag = " ⚠" if any(r.problems or r.refusedCopies for r in mine) else ""
            lines.append(
                f"| {names[peer.key]}{flag} | {load.name} | {rate:,.0f} | {ratio} | "
                f"{median(r.landedRate for r in mine):,.0f} | {median(r.cpuPerMessage for r in mine):.2f} | "
                f"{memoryCell(peak)} | {median(r.loadAverage for r in mine):.2f} |"
            )
    if memoryRuns:
        lines.append("")
        lines.append(f"Memory: {options.memory_clients} clients at once each send one message of "
                     f"{options.memory_size:,} bytes (`smtp-source -l {options.memory_size} -m "
                     f"{options.memory_clients} -s {options.memory_clients}`), once per server, after the runs "
                     "above. Idle is the memory after 1 s without mail, just before the load; peak the highest "
                     "sample (every 0.1 s) during it; RSS summed over the server's processes, and PSS too for "
                     "several.")
        lines.append("")
        lines.append("| server | after warm-up | idle before the load | peak during the load | peak ÷ idle "
                     "| landed | seconds until landed |")
        lines.append("| --- | --- | --- | --- | ---: | ---: | ---: |")
        for peer in peers:
            m = memoryRuns.get(peer.key)
            if m is None:
                continue
            flag = " ⚠" if m.run.problems or m.run.refusedCopies else ""
            lines.append(
                f"| {names[peer.key]}{flag} | {memoryCell(m.started)} | {memoryCell(m.idle)} | "
                f"{memoryCell(m.run.peak)} | {m.ratios()} | {m.run.landed}/{m.run.expected} | "
                f"{m.run.landedSeconds:.1f} |"
            )
    lines.append("")
    lines.append("| server | durability before the 250 | set-up |")
    lines.append("| --- | --- | --- |")
    for peer in peers:
        lines.append(f"| {names[peer.key]} | {DURABILITY[peer.key]} | {peer.notes} |")
    for key, why in skipped.items():
        lines.append(f"| {key} | not measured | {why} |")
    lines.append("")
    lines.append(f"Every server takes messages of up to {options.max_size:,} bytes (smtpmx's `--max-message-size`, "
                 "Postfix's `message_size_limit`, aiosmtpd's `data_size_limit`, chasquid's `max_data_size_mb`), "
                 "for the memory load.")
    if fsync:
        lines.append("")
        cells = ", ".join(f"{median(rates):,.0f}/s ({threads} thread{'s' if threads > 1 else ''})"
                          for threads, rates in sorted(fsync.items()))
        lines.append(f"The disk (same file system): create + write {options.size} bytes + fsync file + fsync "
                     f"directory: {cells}, median of {options.runs}.")
    if relay:
        rates = [r for r, _ in relay if r is not None]
        lines.append("")
        if rates:
            lines.append(f"Relay (`bench/relay_bench.py --queued --messages {options.relay_messages}`): a queue of "
                         f"{options.relay_messages} drained into `smtp-sink` at {median(rates):,.0f} msg/s "
                         f"(median of {len(rates)}; runs: {', '.join(f'{r:,.0f}' for r in rates)}; "
                         f"the next hop saw {relay[-1][1]}).")
        for rate, detail in relay:
            if rate is None:
                lines.append(f"Relay run FAILED: {detail}")
    runs = [*runs, *(m.run for m in memoryRuns.values())]
    refused = [r for r in runs if r.refusedCopies]
    if refused:
        lines.append("")
        lines.append("Refused (a 4xx or 5xx reply, counted out of msg/s; not a loss):")
        for r in refused:
            lines.append(f"- {names[r.peer]}, {r.load.name}: {r.refusedCopies} of {r.expected} copies "
                         f"({r.messages - r.accepted} messages refused whole)")
    problems = [(r, p) for r in runs for p in r.problems]
    if problems:
        lines.append("")
        lines.append("Problems:")
        for r, p in problems:
            lines.append(f"- {names[r.peer]}, {r.load.name}: {p}")
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    """
    Run everything and print the report.

    @return: 0, or 1 if a message was lost, a run had a problem, or a
        server could not be started.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=2000, help="messages per run (default 2000)")
    parser.add_argument("--size", type=int, default=5120, help="message body size in bytes (default 5120)")
    parser.add_argument("--runs", type=int, default=3, help="runs of each load on each server; medians are reported")
    parser.add_argument("--peers", default=",".join(PEERS), help=f"which servers (default {','.join(PEERS)})")
    parser.add_argument("--loads", default="", help="which loads, by number (1-3), comma-separated (default all)")
    parser.add_argument("--no-install", action="store_true", help="skip missing peers instead of installing them")
    parser.add_argument("--no-relay", action="store_true", help="skip the relay run")
    parser.add_argument("--relay-messages", type=int, default=1000)
    parser.add_argument("--fsync-operations", type=int, default=2000)
    parser.add_argument("--stall", type=float, default=60.0,
                        help="give up waiting for copies to land after this many seconds without progress")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory load")
    parser.add_argument("--memory-clients", type=int, default=10,
                        help="the memory load: clients at once, one message each (default 10)")
    parser.add_argument("--memory-size", type=int, default=31457280,
                        help="the memory load: bytes per message (default 31457280, 30 MiB)")
    parser.add_argument("--smtpmx-args", default="",
                        help="more options for both smtpmx rows, e.g. '--relay-active-limit 20' (not --workers: "
                        "the peers smtpmx and smtpmx-w2 are --workers 1 and 2)")
    parser.add_argument("--directory", default=None, help="where the Maildirs go (default: a new temporary directory)")
    parser.add_argument("--output", default=None, help="also write the report to this file")
    options = parser.parse_args(argv)
    # Room for the memory load's messages and the headers added on the way.
    options.max_size = max(48 * MiB, options.memory_size + 16 * MiB)

    def say(text: str) -> None:
        """
        Progress, on stderr.
        """
        print(text, file=sys.stderr, flush=True)

    if any(a == "--workers" or a.startswith("--workers=") for a in shlex.split(options.smtpmx_args)):
        parser.error("--smtpmx-args cannot set --workers: the peers smtpmx and smtpmx-w2 are --workers 1 and 2")
    keys = [k.strip() for k in options.peers.split(",") if k.strip()]
    for k in keys:
        if k not in PEERS:
            parser.error(f"unknown peer {k!r}: choose among {', '.join(PEERS)}")
    loads = [LOADS[int(n) - 1] for n in options.loads.split(",") if n.strip()] if options.loads else list(LOADS)
    if not options.no_install:
        install(keys, say)
    if not os.access(SMTP_SOURCE, os.X_OK):
        say(f"{SMTP_SOURCE} is not installed (Debian's package postfix): nothing to send with")
        return 1
    skipped = {k: missing(k) for k in keys if missing(k)}
    for k, why in skipped.items():
        say(f"skipping {k}: {why}")
    keys = [k for k in keys if k not in skipped]
    # One base name per load and round; the peers that check recipients
    # must know them all in advance.
    bases = {(n, load): f"u{n}x{i}" for n in range(options.runs) for i, load in enumerate(loads)}
    users = ["warm", "mem"] + [u for (n, load), base in bases.items() for u in recipientsOf(base, load.recipients)]
    failed = False

    with ExitStack() as cleanups:
        directory = options.directory or tempfile.mkdtemp(prefix="smtpmx-compare-")
        if not options.directory:
            cleanups.callback(shutil.rmtree, directory, True)
        os.makedirs(directory, exist_ok=True)
        os.chmod(directory, 0o755)
        averageAtStart = loadAverage()
        peers = []
        for k in keys:
            say(f"starting {k}")
            try:
                peers.append(startPeer(k, cleanups, directory, users, shlex.split(options.smtpmx_args),
                                       options.max_size))
            except Exception as e:  # noqa: BLE001 -- reported, and the others still run
                skipped[k] = f"did not start: {str(e)[:300]}"
                say(f"{k} did not start: {e}")
                failed = True
        warm = Load("warm-up", 5, 1)
        for peer in peers:
            run = runLoad(peer, warm, "warm", min(50, options.messages), options.size, options.stall)
            if run.problems:
                say(f"warm-up of {peer.key}: {'; '.join(run.problems)}")
        time.sleep(1.0)
        warmed = {peer.key: memory(descendants(peer.pid)) for peer in peers}
        runs: list[Run] = []
        for n in range(options.runs):
            for load in loads:
                # Forward in one round, backward in the next: a load on
                # the machine that rises or falls over a round weighs on
                # every server alike.
                for peer in (peers if n % 2 == 0 else peers[::-1]):
                    run = runLoad(peer, load, bases[(n, load)], options.messages, options.size, options.stall)
                    runs.append(run)
                    say(f"round {n + 1}/{options.runs}, {load.name}, {peer.key}: {run.rate:,.0f} msg/s, "
                        f"{run.cpuPerMessage:.2f} ms CPU/msg, {run.landed}/{run.expected} landed, "
                        f"{run.refusedCopies} refused, load {run.loadAverage:.2f}"
                        + (f" -- {'; '.join(run.problems)}" if run.problems else ""))
        memoryRuns: dict[str, MemoryRun] = {}
        if not options.no_memory:
            big = Load(f"{options.memory_clients} × {mebibytes(options.memory_size)}", options.memory_clients, 1)
            for peer in peers:
                m = memoryRuns[peer.key] = memoryLoad(peer, big, options.memory_size, options.stall, warmed[peer.key])
                say(f"memory, {peer.key}: idle {memoryCell(m.idle)}, peak {memoryCell(m.run.peak)} "
                    f"({m.ratios()}), {m.run.landed}/{m.run.expected} landed"
                    + (f" -- {'; '.join(m.run.problems)}" if m.run.problems else ""))
        for peer in peers:
            for problem in peer.check():
                say(f"{peer.key}: {problem}")
                failed = True
        fsync: dict[int, list[float]] = {}
        if options.fsync_operations:
            for n in range(options.runs):
                for threads in (1, 10):
                    fsync.setdefault(threads, []).append(fsyncRate(directory, threads, options.fsync_operations,
                                                                   options.size))
            say("fsync: " + ", ".join(f"{t} thread(s) {median(r):,.0f}/s" for t, r in fsync.items()))
        machine = fileSystem(directory)
        cleanups.close()
        relay = []
        if not options.no_relay:
            for n in range(options.runs):
                relay.append(relayRun(options.relay_messages))
                say(f"relay run {n + 1}/{options.runs}: {relay[-1][0] or 'failed'} msg/s")
        text = report(peers, runs, skipped, fsync, relay, options, machine, loads, (averageAtStart, loadAverage()),
                      memoryRuns)
    print(text, end="")
    if options.output:
        with open(options.output, "w") as f:
            f.write(text)
    everyRun = [*runs, *(m.run for m in memoryRuns.values())]
    if any(r.problems for r in everyRun) or any(rate is None for rate, _ in relay):
        failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
