"""
End to end, the real C{twistd -n smtpmx} with a third-party delivery
backend (docs/plugins.rst's C{spool:DIR}, L{tests.examplebackend}) dropped
into an C{smtpmx/plugins/} directory on C{PYTHONPATH}:
C{--delivery example.org=spool:DIR} queues that domain's mail before the
C{250} and the relay service hands it to the backend, whose replies per
recipient deliver, retry or bounce it.
"""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from tests.e2e import RunningServer, freePort, makeTemporaryDirectory, runToExit
from tests.examplebackend import writeExampleBackend
from tests.helpers import message, unique, waitUntil
from tests.test_relay_e2e import queueCommand, queueIdOf, queued, send


class SpoolBackendTests(SynchronousTestCase):
    """
    A server whose C{example.org} is delivered by the example C{spool}
    backend and whose C{files.example} is filed in Maildirs.
    """

    def setUp(self) -> None:
        """
        Write the plugin, make the spool directory, start the server with
        an hour's retry schedule and no reachable DNS (nothing leaves the
        host).
        """
        self.pluginRoot = makeTemporaryDirectory(self.addCleanup, "smtpmx-backend-")
        writeExampleBackend(self.pluginRoot)
        self.spool = os.path.join(self.pluginRoot, "spool")
        os.mkdir(self.spool)
        directory = makeTemporaryDirectory(self.addCleanup)
        with open(os.path.join(directory, "aliases"), "w") as f:
            for user in ("alice", "nobody", "later"):
                f.write(f"{user}@example.org: {user}@example.org\n")
        self.server = RunningServer.start(
            self.addCleanup,
            [
                "--domain", "example.org",
                "--domain", "files.example",
                "--delivery", f"example.org=spool:{self.spool}",
                "--validator", "aliases:aliases",
                "--validator", "any",
                "--retry-schedule", "3600",
                "--dns-server", f"127.0.0.1:{freePort()}",
            ],
            directory=directory,
            pythonPath=[self.pluginRoot],
        )

    def test_deliveredRetriedBounced(self) -> None:
        """
        The client gets C{250} once the message is queued; the backend
        files Alice's copy (with our C{Received}), its 550 for nobody
        bounces to the local sender's Maildir, its 451 for later keeps
        that recipient queued, shown C{via spool DIR}.
        """
        messageId = unique() + "@client.example"
        rcpts, reply = send(
            self.server, "sender@files.example",
            ["alice@example.org", "nobody@example.org", "later@example.org"],
            message(messageId=messageId),
        )
        self.assertEqual([code for code, _ in rcpts], [250, 250, 250])
        assert reply is not None
        queueId = queueIdOf(reply)

        alice = os.path.join(self.spool, "alice@example.org")

        def aliceCopy() -> bytes:
            """
            Alice's copy as written so far (the backend creates the file,
            then writes it: wait for the bytes, not the name).
            """
            try:
                with open(alice, "rb") as f:
                    return f.read()
            except FileNotFoundError:
                return b""

        waitUntil(lambda: messageId.encode() in aliceCopy(), 10)
        copy = aliceCopy()
        self.assertIn(messageId.encode(), copy)
        self.assertTrue(copy.startswith(b"Received: "), copy[:80])
        self.assertEqual(sorted(os.listdir(self.spool)), ["alice@example.org"])

        [bounce] = self.server.waitForFiles("files.example", "sender", 1)
        self.assertIn(b"nobody@example.org", bounce)
        self.assertIn(b"550 5.1.1 No such user here", bounce)
        self.assertNotIn(b"alice@example.org\n", bounce.split(b"\n\n", 1)[0])

        def listed() -> str:
            """
            C{smtpmx-queue list}, which must succeed.
            """
            result = queueCommand(self.server, "list")
            self.assertEqual(result.returncode, 0, result.stderr)
            return result.stdout

        waitUntil(lambda: "451 4.2.0" in listed(), 10)
        text = listed()
        self.assertIn(f"<later@example.org>  pending  via spool {self.spool}", text)
        self.assertNotIn("<alice@example.org>  pending", text)
        self.assertEqual(queued(self.server), [queueId])
        self.assertFalse(os.path.exists(os.path.join(self.server.dir, "Maildir", "example.org")))


class BackendStartupTests(SynchronousTestCase):
    """
    C{--list-backends} and the start-up errors of C{--delivery}.
    """

    def setUp(self) -> None:
        """
        Write the plugin into a temporary C{smtpmx/plugins/}.
        """
        self.pluginRoot = makeTemporaryDirectory(self.addCleanup, "smtpmx-backend-")
        writeExampleBackend(self.pluginRoot)

    def twistd(self, *args: str) -> tuple:
        """
        Run C{twistd smtpmx args} with the plugin to its exit.
        """
        return runToExit(list(args), self.pluginRoot, pythonPath=[self.pluginRoot])

    def test_listBackends(self) -> None:
        """
        C{--list-backends} lists the built-in and the third-party backends
        with their descriptions, and exits 0.
        """
        status, output = self.twistd("--list-backends")
        self.assertEqual(status, 0, output)
        self.assertRegex(output, r"(?m)^spool  spool:DIR - files a copy per recipient under DIR\.$")
        self.assertRegex(output, r"(?m)^lmtp  lmtp:ENDPOINT - ")
        self.assertRegex(output, r"(?m)^maildir  ")
        self.assertNotIn("Traceback", output)

    def test_unknownBackend(self) -> None:
        """
        An unknown backend name stops start-up with one line naming
        C{--list-backends}; so does an argument the plugin refuses.
        """
        status, output = self.twistd("--domain", "example.org", "--delivery", "example.org=pigeon:loft")
        self.assertNotEqual(status, 0)
        self.assertIn("unknown backend 'pigeon'", output)
        self.assertIn("--list-backends", output)
        status, output = self.twistd("--domain", "example.org", "--delivery", "example.org=spool:/no/such/dir")
        self.assertNotEqual(status, 0)
        self.assertIn("'spool:/no/such/dir' failed to load: spool needs a directory", output)
        self.assertNotIn("Traceback", output)
