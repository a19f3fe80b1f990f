"""
Shared pytest set-up.

  - The project root is importable whatever the current directory.
  - The C{rfc} marker (C{@pytest.mark.rfc("5321", "4.5.3.1.4")}: the
    test checks that RFC section) is known even where C{setup.cfg} is not
    read.
  - Before the first test of C{tests/test_install.py} runs, what the
    running interpreter has installed is written down
    (L{tests.helpers.ENVIRONMENT_AT_START}), so that a test can check
    that the suite left it as it was.
"""

from __future__ import annotations

import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from tests import helpers  # noqa: E402


def pytest_configure(config: pytest.Config) -> None:
    """
    Register the C{rfc} marker unless C{setup.cfg} already does.
    """
    if not any(line.split(":")[0].split("(")[0].strip() == "rfc" for line in config.getini("markers")):
        config.addinivalue_line(
            "markers", 'rfc(number, section): the test checks that section of that RFC, e.g. rfc("5321", "4.5.2")'
        )


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list) -> None:
    """
    Write down what the running interpreter has installed, before any
    test runs, when the install tests are among those collected.
    """
    if any(os.path.basename(str(item.fspath)) == "test_install.py" for item in items):
        helpers.ENVIRONMENT_AT_START[sys.executable] = helpers.snapshot(sys.executable)
