"""
The twistd dropin is found after a real C{pip install .} and after a real
C{pip install -e .}: each test installs the checkout into a scratch prefix
and asks twistd, run from elsewhere, for its plugins.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile

from twisted.trial.unittest import SynchronousTestCase

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Run twistd with the scratch prefix as a site directory (so its .pth files
# count, as in a real environment) and nothing of the checkout on sys.path.
TWISTD = """
import site, sys
before = list(sys.path)
site.addsitedir(sys.argv[1])
# The scratch install first, ahead of anything installed in this Python.
sys.path[:] = [p for p in sys.path if p not in before] + before
sys.argv = ["twistd"] + sys.argv[2:]
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


class InstallTests(SynchronousTestCase):
    """
    Installing smtpmx makes C{twistd smtpmx} work.
    """

    def install(self, *pipArgs: str) -> str:
        """
        pip-install the checkout into a scratch prefix, without touching
        the running environment.

        @return: the prefix's site-packages directory.
        """
        prefix = tempfile.mkdtemp(prefix="smtpmx-install-")
        self.addCleanup(shutil.rmtree, prefix, True)
        # A copy of the checkout, so the build leaves nothing in the tree.
        source = os.path.join(prefix, "src")
        shutil.copytree(
            ROOT,
            source,
            ignore=shutil.ignore_patterns(".git", "*.egg-info", "build", "__pycache__", "dropin.cache", ".hypothesis", ".pytest_cache", "Maildir", "queue"),
        )
        result = subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
             "--prefix", prefix, *pipArgs, source],
            capture_output=True, text=True, timeout=240,
        )
        if result.returncode != 0:
            self.fail(f"pip install failed:\n{result.stdout}\n{result.stderr}")
        purelib = sysconfig.get_path("purelib", vars={"base": prefix, "platbase": prefix})
        return purelib

    def twistd(self, sitePackages: str, *args: str) -> subprocess.CompletedProcess:
        """
        Run twistd from an empty directory with the installed smtpmx only.
        """
        cwd = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, cwd, True)
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        return subprocess.run(
            [sys.executable, "-c", TWISTD, sitePackages, *args],
            capture_output=True, text=True, timeout=60, cwd=cwd, env=env,
        )

    def check(self, sitePackages: str) -> None:
        """
        The installed copy is the one imported, its dropin is where twistd
        looks, twistd lists smtpmx, and its validators load.
        """
        prefix = os.path.realpath(os.path.dirname(os.path.dirname(os.path.dirname(sitePackages))))
        where = self.twistd(sitePackages, "--where").stdout.split()
        self.assertTrue(where[0].startswith(prefix + os.sep), where)
        self.assertTrue(any(w.startswith(prefix + os.sep) for w in where[1:]), where)
        self.assertTrue(os.path.exists(os.path.join(prefix, "bin", "smtpmx-queue")))
        result = self.twistd(sitePackages, "--help")
        self.assertIn("smtpmx", result.stdout)
        result = self.twistd(sitePackages, "smtpmx", "--list-validators")
        self.assertEqual(result.returncode, 0, result.stderr)
        for name in ["mailbox", "any", "aliases"]:
            self.assertIn(name, result.stdout)

    def test_install(self):
        """
        After C{pip install .} twistd finds the smtpmx plugin.
        """
        self.check(self.install())

    def test_editableInstall(self):
        """
        After a plain C{pip install -e .} twistd finds the smtpmx plugin too,
        although modern editable installs do not always put the project root
        on sys.path.
        """
        self.check(self.install("-e"))
