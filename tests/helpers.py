"""
Small helpers shared by the test modules: unique tokens, a ready-made
RFC 5322 message, and the one way a test waits for something another
process does.

Every test that waits for a subprocess (a Maildir filling, a queue
emptying, a sink recording) uses L{waitUntil}: bounded, with a fixed
polling interval, returning the last answer so that the assertion after
it can print what was seen.  (Tests that must spin the reactor while they
wait cannot sleep, and do not use it.)
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import shutil
import subprocess
import tempfile
import time
import uuid
from types import ModuleType
from typing import Callable, Optional, TypeVar

T = TypeVar("T")

# How long a test waits, at most, for another process to do something.
WAIT_TIMEOUT = 15.0


def makeDirectory(case) -> str:
    """
    A fresh temporary directory, removed when the test C{case} ends.
    """
    path = tempfile.mkdtemp()
    case.addCleanup(shutil.rmtree, path, True)
    return path


def recordDirectorySyncs(case) -> list[str]:
    """
    Make the test C{case} record every directory that
    L{smtpmx.durable.fsyncDirectory} syncs (and still sync it), for the
    length of the test.

    @return: the list the paths are appended to, in order.
    """
    from smtpmx import durable

    synced: list[str] = []
    real = durable.fsyncDirectory

    def record(path: str) -> None:
        """
        Record the directory, then fsync it.
        """
        synced.append(path)
        real(path)

    case.patch(durable, "fsyncDirectory", record)
    return synced


def recordRemovals(case) -> list[tuple[str, str]]:
    """
    Make the test C{case} record, in order, every file that
    L{smtpmx.durable} removes (C{("unlink", its directory's name)}) and
    every directory it syncs (C{("fsync", its name)}), still doing both.

    @return: the list the events are appended to.
    """
    from smtpmx import durable

    events: list[tuple[str, str]] = []
    realUnlink = os.unlink
    realSync = durable.fsyncDirectory

    def unlink(path: str) -> None:
        """
        Record a removal.
        """
        events.append(("unlink", os.path.basename(os.path.dirname(path))))
        realUnlink(path)

    def sync(path: str) -> None:
        """
        Record a directory fsync.
        """
        events.append(("fsync", os.path.basename(path)))
        realSync(path)

    case.patch(durable.os, "unlink", unlink)
    case.patch(durable, "fsyncDirectory", sync)
    return events


def dropConnections(factory) -> None:
    """
    Close the server side of every connection a fake server's C{factory}
    keeps in its C{connections} list.
    """
    for connection in factory.connections:
        connection.transport.loseConnection()


def listenLoopback(case, factory) -> int:
    """
    Serve C{factory} (a fake server keeping its C{connections}) on a free
    port of 127.0.0.1 for the length of the test C{case}: its connections
    are dropped and the port closed at the end.

    @return: the port.
    """
    from twisted.internet import reactor

    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    case.addCleanup(port.stopListening)
    case.addCleanup(dropConnections, factory)
    return port.getHost().port


def recordFsyncs(case) -> list[tuple[str, int]]:
    """
    Make the test C{case} record every C{fsync} that L{smtpmx.durable}
    makes (and still make it), for the length of the test.

    @return: the list of C{("file" or "dir", inode)} pairs appended to,
        in order.
    """
    import stat

    from smtpmx import durable

    synced: list[tuple[str, int]] = []
    real = os.fsync

    def record(fd: int) -> None:
        """
        Record whether a file or a directory is fsynced, then fsync it.
        """
        info = os.fstat(fd)
        synced.append(("dir" if stat.S_ISDIR(info.st_mode) else "file", info.st_ino))
        real(fd)

    case.patch(durable.os, "fsync", record)
    return synced


def namesMadeInThreads(make: Callable[[], str], threads: int = 8, each: int = 2000) -> list[str]:
    """
    Names made by C{make} at the same moment in several threads, for
    tests that unique names never collide.
    """
    import threading

    names: list[str] = []
    lock = threading.Lock()

    def run() -> None:
        """
        Make names and collect them.
        """
        mine = [make() for _ in range(each)]
        with lock:
            names.extend(mine)

    workers = [threading.Thread(target=run) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return names


def unique(prefix: str = "m") -> str:
    """
    A short unique token, for local parts and Message-IDs, so that tests
    sharing one server never see each other's mail.

    @param prefix: put in front of ten hexadecimal digits.
    """
    return f"{prefix}{uuid.uuid4().hex[:10]}"


def message(
    subject: str = "test",
    body: bytes = b"Hello.\r\n",
    extra: bytes = b"",
    messageId: Optional[str] = None,
    sender: str = "sender@remote.example",
    to: str = "someone@example.org",
) -> bytes:
    """
    A small RFC 5322 message with CRLF line endings, as a client sends it.

    @param subject: its C{Subject:}.
    @param body: the body, after the empty line.
    @param extra: more header lines (each ending in CRLF) after the others.
    @param messageId: its C{Message-ID:} without the angle brackets;
        C{SUBJECT@remote.example} by default.
    @param sender: its C{From:}.
    @param to: its C{To:}.
    """
    if messageId is None:
        messageId = subject + "@remote.example"
    return (
        b"From: " + sender.encode() + b"\r\n"
        b"To: " + to.encode() + b"\r\n"
        b"Subject: " + subject.encode() + b"\r\n"
        b"Message-ID: <" + messageId.encode() + b">\r\n" + extra + b"\r\n" + body
    )


def waitUntil(
    predicate: Callable[[], T], timeout: float = WAIT_TIMEOUT, interval: float = 0.05,
    clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
) -> T:
    """
    Call C{predicate} until it returns something true or C{timeout} seconds
    pass, sleeping C{interval} seconds between calls.

    @param clock: the monotonic clock (for tests of this function).
    @param sleep: how to wait between calls (for tests of this function).
    @return: the last result of C{predicate}: true if the wait succeeded,
        false (whatever C{predicate} returned) when time ran out.
    """
    deadline = clock() + timeout
    while True:
        result = predicate()
        if result or clock() >= deadline:
            return result
        sleep(interval)


# What an interpreter says about its installed distributions: every
# distribution's name, version and location, and for smtpmx its version
# and every file it installed, with whether the file is still there.
SNAPSHOT = """
import importlib.metadata as metadata, json, os
distributions = sorted(
    [d.metadata["Name"].lower(), d.version, str(d.locate_file(""))] for d in metadata.distributions()
)
try:
    d = metadata.distribution("smtpmx")
except metadata.PackageNotFoundError:
    smtpmx = None
else:
    smtpmx = {
        "version": d.version,
        "location": str(d.locate_file("")),
        "files": sorted([str(f), os.path.exists(d.locate_file(f))] for f in d.files or []),
    }
print(json.dumps({"distributions": distributions, "smtpmx": smtpmx}))
"""

# The snapshot (L{snapshot}) of the interpreter running the suite, taken
# by C{conftest.py} before the first test, by interpreter path.
ENVIRONMENT_AT_START: dict[str, dict] = {}


def cleanEnvironment() -> dict:
    """
    Our environment without C{PYTHONPATH} (the end-to-end harness puts
    the checkout there) and without pip's network: an installed smtpmx
    must work on its own, and an install test needs nothing from an index.
    """
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PIP_NO_INDEX"] = "1"
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def snapshot(python: str) -> dict:
    """
    What C{python} has installed (see L{SNAPSHOT}), asked from an empty
    directory so that no checkout is on its path: two snapshots are equal
    when nothing was installed, upgraded or removed in between.
    """
    cwd = tempfile.mkdtemp(prefix="smtpmx-snapshot-")
    try:
        result = subprocess.run(
            [python, "-c", SNAPSHOT], capture_output=True, text=True, timeout=60, cwd=cwd,
            env=cleanEnvironment(), check=True,
        )
    finally:
        shutil.rmtree(cwd, True)
    return json.loads(result.stdout)


def loadBenchScript(fileName: str) -> ModuleType:
    """
    A script of C{bench/} (no package) as a module, loaded once, for the
    smoke tests that run it small.

    @param fileName: its file name, such as C{"compare.py"}.
    """
    name = "smtpmx_bench_" + fileName.removesuffix(".py")
    if name not in sys.modules:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        spec = importlib.util.spec_from_file_location(name, os.path.join(root, "bench", fileName))
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def assertShownIn(case, source: str, *documents: str) -> None:
    """
    Fail C{case} unless each of C{documents} (paths from the checkout's
    root) shows C{source} as an indented literal block, so that the code
    a document shows is the code the tests run.
    """
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    indented = "".join(("    " + line) if line.strip() else "\n" for line in source.splitlines(True))
    for name in documents:
        with open(os.path.join(root, name), encoding="utf-8") as f:
            case.assertIn(indented, f.read(), name)
