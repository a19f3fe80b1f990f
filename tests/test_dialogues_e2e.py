"""
The scripted dialogues of L{tests.dialogues}, played over a raw socket on a
real C{twistd smtpmx}: the same scripts that tests/test_session.py and
tests/test_server.py run in memory, so the two harnesses cannot drift.
"""

from __future__ import annotations

from typing import Iterator

import pytest

from tests import dialogues
from tests.e2e import ReplyReader, RunningServer

TIMEOUT = 15.0


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[RunningServer]:
    """
    One server for every dialogue, configured as L{dialogues.OPTIONS} says.
    """
    cleanups: list = []

    def addCleanup(f, *args):
        cleanups.append((f, args))

    try:
        yield RunningServer.start(addCleanup, dialogues.OPTIONS)
    finally:
        for f, args in reversed(cleanups):
            f(*args)


def closedByServer(reader: ReplyReader) -> bool:
    """
    Whether the server closes the connection without another byte.
    """
    try:
        return reader.nothingMore(TIMEOUT) == b"" and not reader.sock.recv(1)
    except ConnectionResetError:
        return True


@pytest.mark.parametrize("dialogue", dialogues.parameters())
def test_dialogue(server: RunningServer, dialogue: dialogues.Dialogue) -> None:
    """
    Each step is sent in one write; the last line of each reply has the
    code the dialogue expects; the server closes the connection exactly
    when the dialogue says; and the server logs no traceback.
    """
    logged = len(server.log())
    with server.connect(TIMEOUT) as sock:
        reader = ReplyReader(sock)
        greeting = reader.reply()[-1]
        assert greeting.startswith("220 mx.example.org"), greeting
        for step, (data, expected) in enumerate(dialogue.exchanges()):
            sock.sendall(data)
            dialogues.check(dialogue, step, expected, reader.replies(len(expected)))
        if dialogue.closes:
            assert closedByServer(reader)
        else:
            sock.sendall(b"NOOP\r\n")
            assert reader.reply()[-1].startswith("250")
    assert "Traceback" not in server.log()[logged:]

