"""
Installing smtpmx makes C{twistd smtpmx} work, and testing it never
changes the environment that runs the tests.

Each install test makes a virtual environment of its own (L{makeVenv}:
C{python -m venv --system-site-packages}, with the running interpreter's
site directories added so that Twisted, pip and setuptools come from it
and nothing is downloaded), installs a copy of the checkout into it with
that environment's own interpreter (C{DIR/bin/python -m pip install
--no-deps --no-build-isolation --no-index}), and asks twistd, run from
elsewhere, for its plugins.  pip run by the suite's own interpreter would
first uninstall smtpmx from the environment running the suite (even with
C{--prefix}), so that C{twistd -n smtpmx} answered C{Unknown command}
afterwards; L{EnvironmentTests} checks that this never happens again.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from typing import Optional

from twisted.trial.unittest import SynchronousTestCase

from tests.e2e import LISTENING
from tests.helpers import ENVIRONMENT_AT_START, cleanEnvironment, snapshot
from tests.process import RunningProcess, logMatches

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# How long one pip install, or one nested test run, may take.
INSTALL_TIMEOUT = 240

# What an installed twistd does: with C{--where}, print where smtpmx and
# its dropin are imported from; else run twistd with the arguments.  The
# environment's own interpreter runs it, so the environment's own
# site-packages come first on sys.path.
TWISTD = """
import sys
sys.argv = ["twistd"] + sys.argv[1:]
if sys.argv[1:] == ["--where"]:
    import os, smtpmx, twisted.plugins
    print(os.path.realpath(smtpmx.__file__))
    for d in twisted.plugins.__path__:
        if os.path.exists(os.path.join(d, "smtpmx_plugin.py")):
            print(os.path.realpath(d))
    raise SystemExit(0)
from twisted.scripts.twistd import run
run()
"""

def siteDirectories() -> list[str]:
    """
    The site directories of the running interpreter, in order: where its
    installed distributions (Twisted, pip, setuptools, pytest) are.
    """
    return [
        p for p in sys.path
        if os.path.basename(p) in ("site-packages", "dist-packages") and os.path.isdir(p)
    ]


def makeVenv(directory: str) -> str:
    """
    A new virtual environment in C{directory} whose dependencies come from
    the running interpreter: C{--system-site-packages}, plus a C{.pth}
    file naming the running interpreter's site directories (when the
    suite runs in a virtual environment, those are not the system's).
    Its own site-packages come first, so what is installed into it is
    what it imports.

    @return: the path of its interpreter.
    """
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", directory],
        check=True, capture_output=True, timeout=120, env=cleanEnvironment(),
    )
    python = os.path.join(directory, "bin", "python")
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        check=True, capture_output=True, text=True, timeout=60, env=cleanEnvironment(),
    ).stdout.strip()
    with open(os.path.join(purelib, "smtpmx-test-dependencies.pth"), "w") as f:
        f.write("".join(p + "\n" for p in siteDirectories() if p != purelib))
    return python


def copyCheckout(destination: str) -> str:
    """
    Copy the checkout to C{destination}, so that a build leaves nothing in
    the tree under test.

    @return: C{destination}.
    """
    shutil.copytree(
        ROOT,
        destination,
        ignore=shutil.ignore_patterns(
            ".git", "*.egg-info", "build", "__pycache__", "dropin.cache", ".hypothesis",
            ".pytest_cache", "Maildir", "queue", "_trial_temp",
        ),
    )
    return destination


def pipInstall(python: str, *arguments: str) -> subprocess.CompletedProcess:
    """
    C{python -m pip install --no-deps --no-build-isolation ARGUMENTS}: an
    install into C{python}'s own environment, with nothing downloaded.
    """
    return subprocess.run(
        [python, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", *arguments],
        capture_output=True, text=True, timeout=INSTALL_TIMEOUT, env=cleanEnvironment(),
    )


class ScratchEnvironment:
    """
    A fresh virtual environment and a copy of the checkout, side by side in
    one temporary directory.

    @ivar root: the directory holding both.
    @ivar python: the environment's interpreter.
    @ivar source: the copy of the checkout.
    """

    def __init__(self, testCase: SynchronousTestCase) -> None:
        """
        Make both; a cleanup of C{testCase} removes them.
        """
        self.testCase = testCase
        self.root = os.path.realpath(tempfile.mkdtemp(prefix="smtpmx-install-"))
        testCase.addCleanup(shutil.rmtree, self.root, True)
        self.python = makeVenv(os.path.join(self.root, "venv"))
        self.source = copyCheckout(os.path.join(self.root, "src"))

    def install(self, *pipArguments: str) -> None:
        """
        pip-install the copy of the checkout into the environment, as
        README's C{pip install .} does; fail the test if pip fails.
        """
        result = pipInstall(self.python, *pipArguments, self.source)
        if result.returncode != 0:
            self.testCase.fail(f"pip install failed:\n{result.stdout}\n{result.stderr}")

    def scratchDirectory(self) -> str:
        """
        A new empty directory, removed by a cleanup.
        """
        path = tempfile.mkdtemp(prefix="smtpmx-cwd-")
        self.testCase.addCleanup(shutil.rmtree, path, True)
        return path

    def twistd(self, *args: str) -> subprocess.CompletedProcess:
        """
        Run twistd with the environment's interpreter, from an empty
        directory, with nothing of the checkout on its path.
        """
        return subprocess.run(
            [self.python, "-c", TWISTD, *args],
            capture_output=True, text=True, timeout=60, cwd=self.scratchDirectory(),
            env=cleanEnvironment(),
        )

    def serverStarts(self) -> None:
        """
        README's run command, C{twistd -n smtpmx}, on a free loopback port,
        from an empty directory: it listens and greets a client; then it is
        stopped by its PID.
        """
        cwd = self.scratchDirectory()
        server = RunningProcess(
            [self.python, "-c", TWISTD, "-n", "--pidfile=", "smtpmx", "--listen", "tcp:0:interface=127.0.0.1"],
            os.path.join(cwd, "twistd.log"), cwd=cwd, env=cleanEnvironment(), name="twistd -n smtpmx",
        )
        self.testCase.addCleanup(server.stop)
        match = server.launch(logMatches(LISTENING))
        with socket.create_connection((match.group(1), int(match.group(2))), timeout=10) as sock:
            self.testCase.assertTrue(sock.recv(1024).startswith(b"220 "), server.log())
        server.stop()
        self.testCase.assertNotIn("Traceback", server.log())


class InstallTests(SynchronousTestCase):
    """
    Installing smtpmx into an environment makes C{twistd smtpmx} work there.
    """

    def check(self, scratch: ScratchEnvironment) -> None:
        """
        The installed copy is the one imported (not the checkout under
        test), its dropin is where twistd looks, the C{smtpmx-queue}
        script is installed, twistd lists smtpmx, and its validators load.
        """
        where = scratch.twistd("--where").stdout.split()
        self.assertTrue(where, "twistd --where printed nothing")
        inside = scratch.root + os.sep
        self.assertTrue(where[0].startswith(inside), where)
        self.assertTrue(any(w.startswith(inside) for w in where[1:]), where)
        self.assertTrue(os.path.exists(os.path.join(os.path.dirname(scratch.python), "smtpmx-queue")))
        result = scratch.twistd("--help")
        self.assertIn("smtpmx", result.stdout)
        result = scratch.twistd("smtpmx", "--list-validators")
        self.assertEqual(result.returncode, 0, result.stderr)
        for name in ["mailbox", "any", "aliases"]:
            self.assertIn(name, result.stdout)

    def test_install(self) -> None:
        """
        After C{pip install .} twistd finds the smtpmx plugin.
        """
        scratch = ScratchEnvironment(self)
        scratch.install()
        self.check(scratch)

    def test_editableInstall(self) -> None:
        """
        After a plain C{pip install -e .} twistd finds the smtpmx plugin too,
        although modern editable installs do not always put the project root
        on sys.path.
        """
        scratch = ScratchEnvironment(self)
        scratch.install("-e")
        self.check(scratch)


class EnvironmentTests(SynchronousTestCase):
    """
    The install tests leave every environment as they found it: the one
    running the suite, and a user's who installed smtpmx and then ran the
    tests.
    """

    def test_runningEnvironmentUnchanged(self) -> None:
        """
        The environment running the suite has exactly the distributions,
        and smtpmx exactly the installed files (or absence), it had when
        the suite started, whatever tests ran before this one.
        """
        before: Optional[dict] = ENVIRONMENT_AT_START.get(sys.executable)
        if before is None:
            raise self.skipTest("no snapshot was taken when the suite started (not run by pytest)")
        self.assertEqual(snapshot(sys.executable), before)

    def test_runTestRunAgain(self) -> None:
        """
        In one fresh environment: README's run command (install, then
        C{twistd -n smtpmx} listens), then the install tests run by that
        environment's interpreter from the checkout, as README's test
        command would (the whole suite would be too slow to nest), then
        the run command again: the server still starts, and smtpmx is
        installed exactly as before (the test the old C{pip install
        --prefix} run by the suite's own interpreter failed: it
        uninstalled smtpmx, and C{twistd} said C{Unknown command:
        smtpmx}).  The environment running the suite is unchanged too.
        """
        scratch = ScratchEnvironment(self)
        scratch.install()
        scratch.serverStarts()
        before = snapshot(scratch.python)
        self.assertIsNotNone(before["smtpmx"], "smtpmx is not installed in the fresh environment")

        result = subprocess.run(
            [scratch.python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "ignore",
             "tests/test_install.py::InstallTests::test_install"],
            capture_output=True, text=True, timeout=2 * INSTALL_TIMEOUT, cwd=scratch.source,
            env=cleanEnvironment(),
        )
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertIn("1 passed", result.stdout)

        self.assertEqual(snapshot(scratch.python), before)
        scratch.serverStarts()
        atStart = ENVIRONMENT_AT_START.get(sys.executable)
        if atStart is not None:
            self.assertEqual(snapshot(sys.executable), atStart)
