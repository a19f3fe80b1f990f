"""
The short version of the soak of C{bench/soak.py}: the real
C{twistd -n smtpmx} and the recording sink of L{tests.sink}, 360 messages
from 20 concurrent clients in three rounds, mixed local, relayed, refused
and TLS, the server's memory and descriptors read from C{/proc}.
C{python bench/soak.py} runs the long one (5000 messages, 40 clients).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from contextlib import ExitStack

import pytest
from twisted.trial.unittest import SynchronousTestCase

from tests.e2e import ROOT


def loadSoak():
    """
    C{bench/soak.py} as a module (C{bench/} is no package).
    """
    name = "smtpmx_bench_soak"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "bench", "soak.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc to read the server's RSS and descriptors")
class ShortSoakTests(SynchronousTestCase):
    """
    A few hundred messages through the real server.
    """

    def test_flatAndComplete(self) -> None:
        """
        360 messages from 20 clients, five to a connection, a quarter
        each local, relayed, refused and over TLS, in three rounds: every
        accepted message is filed or relayed exactly once, every refused
        one refused; the server's resident set after rounds two and three
        stays within 2 MB and 1% of what it was after round one, and once
        the relay's idle connections are closed it has no more than two
        descriptors open beyond those it had before the first message; no
        traceback is logged.  (About 12 s.)
        """
        soak = loadSoak()
        with ExitStack() as cleanups:
            result = soak.soak(messages=360, clients=20, rounds=3, cleanups=cleanups)
        summary = soak.summary(result)
        self.assertEqual(soak.problems(result), [], summary)
        self.assertEqual(
            dict(result.counts), {"local": 90, "relayed": 90, "refused": 90, "tls": 90}, summary
        )
        self.assertEqual(len(result.rounds), 3)
        self.assertGreater(max(s.fds for s in result.samples), result.start.fds, summary)
