"""
End to end, the real C{twistd -n smtpmx}: mail for a domain delivered over
LMTP (C{--delivery DOMAIN=lmtp:ENDPOINT}) is queued durably before the
C{250}, so an LMTP server that is down costs the client nothing: the
message waits in the queue, marked C{via} the LMTP server, and nothing is
filed under the Maildir root.  A Maildir domain beside it is filed as
before, with C{--maildir-mode} (docs/storage.rst).
"""

from __future__ import annotations

import os
import stat

from twisted.trial.unittest import SynchronousTestCase

from tests.e2e import RunningServer, freePort, makeTemporaryDirectory
from tests.helpers import message, unique, waitUntil
from tests.test_relay_e2e import queueCommand, queueIdOf, queued, send

HOSTNAME = "mx.smtpmx.test"


class LmtpDomainDownTests(SynchronousTestCase):
    """
    A server whose C{example.org} goes to an LMTP server that is not
    listening, and whose C{files.example} is filed in Maildirs.
    """

    def setUp(self) -> None:
        """
        Start the server: the LMTP endpoint is a free loopback port with
        nothing behind it, the retry schedule an hour (so the message stays
        put), and the resolver a loopback port with nothing behind it
        (nothing leaves the host).
        """
        self.lmtpPort = freePort()
        server = RunningServer(
            [
                "--hostname", HOSTNAME,
                "--domain", "example.org",
                "--domain", "files.example",
                "--delivery", f"example.org=lmtp:tcp:127.0.0.1:{self.lmtpPort}",
                "--maildir-mode", "0660",
                "--validator", "aliases:aliases",
                "--validator", "any",
                "--retry-schedule", "3600",
                "--dns-server", f"127.0.0.1:{freePort()}",
            ],
            directory=makeTemporaryDirectory(self.addCleanup),
        )
        assert server.dir is not None
        with open(os.path.join(server.dir, "aliases"), "w") as f:
            f.write("dora@example.org: dora@example.org\n")
        self.addCleanup(server.stop)
        server.launch()
        self.server = server

    def test_queuedWhileLmtpDown(self) -> None:
        """
        With the LMTP server down the client still gets C{250} for its
        message to an LMTP domain (the queue copy is durable); the message
        waits in the queue for each recipient, C{via} the LMTP endpoint,
        with the postmaster's address as the client gave it;
        C{smtpmx-queue list} shows it; nothing of it is filed under the
        Maildir root, while the Maildir domain's copy is there, mode 0660
        (its directories, and the root smtpmx made, 0770).
        """
        endpoint = f"tcp:127.0.0.1:{self.lmtpPort}"
        messageId = unique() + "@client.example"
        rcpts, reply = send(
            self.server,
            "someone@client.example",
            ["Dora@Example.ORG", "PostMaster@example.org", "erin@files.example"],
            message(messageId=messageId),
        )
        self.assertEqual([code for code, _ in rcpts], [250, 250, 250])
        assert reply is not None
        queueId = queueIdOf(reply)
        self.assertEqual(queued(self.server), [queueId])

        def listed() -> str:
            """
            The output of C{smtpmx-queue list}, which must succeed.
            """
            result = queueCommand(self.server, "list")
            self.assertEqual(result.returncode, 0, result.stderr)
            return result.stdout

        text = listed()
        self.assertIn(queueId, text)
        self.assertIn(f"<dora@example.org>  pending  via lmtp {endpoint}", text)
        self.assertIn(f"<PostMaster@example.org>  pending  via lmtp {endpoint}", text)
        self.assertNotIn("files.example", text)

        # Only the Maildir domain has anything under the root, group
        # readable and writable for a Dovecot in the group.
        root = os.path.join(self.server.dir, "Maildir")
        self.assertEqual(sorted(os.listdir(root)), ["files.example"])
        [(name, content)] = self.server.newFiles("files.example", "erin")
        self.assertIn(messageId.encode(), content)
        path = os.path.join(self.server.maildir("files.example", "erin"), "new", name)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o660)
        self.assertEqual(stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode), 0o770)
        self.assertEqual(stat.S_IMODE(os.stat(root).st_mode), 0o770)

        # The first attempt finds nothing listening: the message stays.
        waitUntil(lambda: listed().count("1 attempt") == 2, 10)
        self.assertEqual(queued(self.server), [queueId])
        self.assertEqual(sorted(os.listdir(root)), ["files.example"])
        self.assertNotIn("Traceback", self.server.log())
