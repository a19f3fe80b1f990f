"""
Tests for L{smtpmx.queuecli}, the C{smtpmx-queue} command.
"""

from __future__ import annotations

import io
import os
from typing import Optional

from twisted.trial.unittest import SynchronousTestCase

from smtpmx import queuecli
from smtpmx.relay.queue import Queue
from smtpmx.relay.queueformat import QueuedMessage, QueuedRecipient
from tests.test_maildir_store import makeDirectory

NOW = 1700000000.0
DATA = (
    b"Received: from client.example (client.example [192.0.2.1])\n"
    b"\tby mx.example.org with ESMTP id 0A1B2C\n"
    b"Subject: Quarterly report\n"
    b"From: Alice <alice@example.net>\n"
    b"\n"
    b"Secret body text\n"
)


BOUNCE = b"Subject: Undelivered Mail\n\nbounce\n"


class QueueCommandTests(SynchronousTestCase):
    """
    Tests for L{queuecli.main}.
    """

    def setUp(self) -> None:
        """
        A queue holding two messages: one with a recipient deferred and one
        delivered, and a bounce (null sender) due now.
        """
        self.directory = makeDirectory(self)
        self.queue = Queue(os.path.join(self.directory, "queue"))
        self.queue.recover()
        self.queue.add(
            QueuedMessage(
                id="0A1B2C",
                created=NOW - 3725,
                sender="Alice@Example.NET",
                size=0,
                clientHost="192.0.2.1",
                heloName="client.example",
                recipients=[
                    QueuedRecipient(
                        "Bob@Example.ORG",
                        attempts=2,
                        nextAttempt=NOW + 290,
                        lastReply="451 4.7.1 Greylisted\x1b[2J",
                        remoteMta="mx.example.org",
                    ),
                    QueuedRecipient(
                        "carol@example.com",
                        state="delivered",
                        attempts=1,
                        nextAttempt=NOW - 3725,
                        lastReply="250 2.0.0 Ok",
                        remoteMta="mx.example.com",
                    ),
                ],
            ),
            DATA,
        )
        self.queue.add(
            QueuedMessage(
                id="FFEE01",
                created=NOW - 30,
                sender="",
                size=0,
                clientHost="",
                heloName="",
                recipients=[QueuedRecipient("dave@example.net", nextAttempt=NOW - 30)],
            ),
            BOUNCE,
        )

    def runCommand(self, *argv: str, directory: Optional[str] = None) -> tuple[int, str, str]:
        """
        Run the command on the test queue.

        @return: the exit status, the output and the error output.
        """
        out, err = io.StringIO(), io.StringIO()
        if directory is None:
            directory = self.queue.path
        args = ["--queue-dir", directory, *argv] if directory else list(argv)
        status = queuecli.main(args, stdout=out, stderr=err, now=lambda: NOW)
        return status, out.getvalue(), err.getvalue()

    def test_list(self) -> None:
        """
        C{list} shows each message, oldest first, with its ID, size, age and
        sender, then each recipient with its state, attempts, next attempt
        and last reply, and a summary.
        """
        status, out, err = self.runCommand("list")
        self.assertEqual((status, err), (0, ""))
        self.assertEqual(
            out,
            f"0A1B2C  {len(DATA)} bytes  queued 1h02m ago  from <Alice@Example.NET>\n"
            "  <Bob@Example.ORG>  pending  2 attempts  next attempt in 4m50s\n"
            "      last reply: 451 4.7.1 Greylisted\\x1b[2J (from mx.example.org)\n"
            "  <carol@example.com>  delivered  1 attempt\n"
            "      last reply: 250 2.0.0 Ok (from mx.example.com)\n"
            "\n"
            f"FFEE01  {len(BOUNCE)} bytes  queued 30s ago  from <>\n"
            "  <dave@example.net>  pending  0 attempts  next attempt now\n"
            "\n"
            f"2 messages, {len(DATA) + len(BOUNCE)} bytes, 2 recipients pending.\n",
        )

    def test_listLmtp(self) -> None:
        """
        A local recipient waiting for its LMTP server says so: C{via lmtp
        ENDPOINT}, after its state; C{show} says the same.
        """
        self.queue.add(
            QueuedMessage(
                id="ABC123",
                created=NOW - 5,
                sender="alice@example.net",
                size=0,
                clientHost="192.0.2.1",
                heloName="client.example",
                recipients=[
                    QueuedRecipient(
                        "Bob+Lists@Example.ORG",
                        attempts=1,
                        nextAttempt=NOW + 55,
                        lastReply="connection refused",
                        via="lmtp:unix:/run/dovecot/lmtp",
                    ),
                ],
            ),
            BOUNCE,
        )
        line = "  <Bob+Lists@Example.ORG>  pending  via lmtp unix:/run/dovecot/lmtp  1 attempt  next attempt in 55s\n"
        status, out, err = self.runCommand("list")
        self.assertEqual((status, err), (0, ""))
        self.assertIn(f"ABC123  {len(BOUNCE)} bytes  queued 5s ago  from <alice@example.net>\n" + line, out)
        self.assertNotIn("via", out.replace(line, ""))
        status, out, err = self.runCommand("show", "ABC123")
        self.assertIn(line, out)

    def test_listEmpty(self) -> None:
        """
        C{list} on an empty queue says so.
        """
        self.queue.remove("0A1B2C")
        self.queue.remove("FFEE01")
        self.assertEqual(self.runCommand("list"), (0, "The queue is empty.\n", ""))

    def test_listCorrupt(self) -> None:
        """
        An entry that cannot be read is reported on stderr; the rest is
        listed and nothing is moved.
        """
        with open(self.queue.envelopePath("FFEE01"), "wb") as f:
            f.write(b"garbage")
        status, out, err = self.runCommand("list")
        self.assertEqual(status, 0)
        self.assertIn("0A1B2C", out)
        self.assertNotIn("FFEE01", out)
        self.assertIn("FFEE01: unreadable queue entry", err)
        self.assertEqual(sorted(self.queue.ids()), ["0A1B2C", "FFEE01"])

    def test_show(self) -> None:
        """
        C{show ID} shows the message as C{list} does, then its headers,
        never its body.
        """
        status, out, err = self.runCommand("show", "0A1B2C")
        self.assertEqual((status, err), (0, ""))
        self.assertTrue(out.startswith("0A1B2C  "))
        self.assertTrue(
            out.endswith(
                "\n\nReceived: from client.example (client.example [192.0.2.1])\n"
                "\tby mx.example.org with ESMTP id 0A1B2C\n"
                "Subject: Quarterly report\n"
                "From: Alice <alice@example.net>\n"
            )
        )
        self.assertNotIn("Secret", out)

    def test_showUnknown(self) -> None:
        """
        C{show} of an ID not in the queue fails with a message on stderr.
        """
        status, out, err = self.runCommand("show", "ABCDEF")
        self.assertEqual((status, out), (1, ""))
        self.assertEqual(err, "smtpmx-queue: ABCDEF: no such message in the queue\n")

    def test_badId(self) -> None:
        """
        An ID that is not letters and digits is refused before anything is
        touched, as a usage error.
        """
        for command in ("show", "delete"):
            for bad in ("../env/0A1B2C", "0A1B2C.msg", ""):
                status, out, err = self.runCommand(command, bad)
                self.assertEqual((status, out), (2, ""))
                self.assertIn("not a queue ID", err)
        self.assertEqual(sorted(self.queue.ids()), ["0A1B2C", "FFEE01"])

    def test_flush(self) -> None:
        """
        C{flush} makes every pending recipient due now and leaves the
        marker the running server looks for; delivered recipients are
        untouched.
        """
        status, out, err = self.runCommand("flush")
        self.assertEqual((status, err), (0, ""))
        self.assertEqual(out, "Flush requested: 2 messages with pending recipients.\n")
        message = self.queue.load("0A1B2C")
        self.assertEqual(message.recipients[0].nextAttempt, NOW)
        self.assertEqual(message.recipients[0].attempts, 2)
        self.assertEqual(message.recipients[1].nextAttempt, NOW - 3725)
        self.assertEqual(self.queue.load("FFEE01").recipients[0].nextAttempt, NOW)
        self.assertTrue(self.queue.takeFlushRequest())
        self.assertEqual(os.listdir(self.queue.temporaryDirectory), [])

    def test_delete(self) -> None:
        """
        C{delete ID} removes the message; deleting it again fails.
        """
        self.assertEqual(self.runCommand("delete", "0A1B2C"), (0, "0A1B2C: deleted.\n", ""))
        self.assertEqual(self.queue.ids(), ["FFEE01"])
        self.assertFalse(os.path.exists(self.queue.messagePath("0A1B2C")))
        status, out, err = self.runCommand("delete", "0A1B2C")
        self.assertEqual((status, out), (1, ""))
        self.assertIn("no such message", err)

    def test_noQueue(self) -> None:
        """
        A directory that holds no queue is reported, not created.
        """
        missing = os.path.join(self.directory, "nothing")
        status, out, err = self.runCommand("list", directory=missing)
        self.assertEqual((status, out), (1, ""))
        self.assertIn(f"no queue at {missing}", err)
        self.assertFalse(os.path.exists(missing))

    def test_config(self) -> None:
        """
        C{--config} takes the queue directory from the server's TOML file,
        whose other options (even unusable ones) are not checked.
        """
        path = os.path.join(self.directory, "smtpmx.toml")
        with open(path, "w") as f:
            f.write(f'queue-dir = "{self.queue.path}"\ntls-key = "/nonexistent/key.pem"\n')
        status, out, err = self.runCommand("--config", path, "list", directory="")
        self.assertEqual((status, err), (0, ""))
        self.assertIn("0A1B2C", out)

    def test_configDefault(self) -> None:
        """
        A configuration file without C{queue-dir} means C{./queue}, like
        the server.
        """
        path = os.path.join(self.directory, "smtpmx.toml")
        with open(path, "w") as f:
            f.write('hostname = "mx.example.org"\n')
        cwd = os.getcwd()
        os.chdir(self.directory)
        self.addCleanup(os.chdir, cwd)
        status, out, err = self.runCommand("--config", path, "list", directory="")
        self.assertEqual((status, err), (0, ""))
        self.assertIn("0A1B2C", out)

    def test_badConfig(self) -> None:
        """
        A configuration file that cannot be read is one line on stderr.
        """
        missing = os.path.join(self.directory, "missing.toml")
        status, out, err = self.runCommand("--config", missing, "list", directory="")
        self.assertEqual((status, out), (1, ""))
        self.assertTrue(err.startswith("smtpmx-queue: cannot read configuration file"))
        self.assertEqual(err.count("\n"), 1)

    def test_usage(self) -> None:
        """
        No command, an unknown one, or both C{--queue-dir} and C{--config}
        are usage errors.
        """
        for argv in ([], ["frobnicate"], ["--config", "x.toml", "list"]):
            status, out, err = self.runCommand(*argv)
            self.assertEqual(status, 2, argv)
            self.assertIn("usage: smtpmx-queue", err)

    def test_help(self) -> None:
        """
        C{--help} describes the commands and succeeds.
        """
        status, out, err = self.runCommand("--help", directory="")
        self.assertEqual(status, 0)
        for word in ("list", "show", "flush", "delete", "--queue-dir", "--config"):
            self.assertIn(word, out)


class FormatDurationTests(SynchronousTestCase):
    """
    Tests for L{queuecli.formatDuration}.
    """

    def test_units(self) -> None:
        """
        A duration is shown in its two largest units.
        """
        self.assertEqual(
            [queuecli.formatDuration(s) for s in (0, 45, 61, 3600, 3725, 86400 * 2 + 3 * 3600, -5)],
            ["0s", "45s", "1m01s", "1h00m", "1h02m", "2d03h", "0s"],
        )
