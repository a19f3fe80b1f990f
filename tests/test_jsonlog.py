"""
Tests for L{smtpmx.jsonlog}: log events as JSON objects, among them the
real events of the in-memory server's transactions.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import sys
import tempfile

from twisted.logger import LogLevel, globalLogPublisher
from twisted.python.failure import Failure
from twisted.python.logfile import LogFile
from twisted.trial.unittest import SynchronousTestCase

from smtpmx.jsonlog import JSONLogObserver, eventFields, isoTime, transactionFields, twistdLogFile
from smtpmx.validation import Accept, Reject
from tests.serverhelpers import Server


def capturedEvents(test: SynchronousTestCase) -> list[dict]:
    """
    Every event logged from now until the end of C{test}.
    """
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    test.addCleanup(globalLogPublisher.removeObserver, events.append)
    return events


class EventTests(SynchronousTestCase):
    """
    L{eventFields}: the object of one event.
    """

    def test_plainEvent(self):
        """
        Every line has the time (ISO 8601, UTC), the level, the text and the
        logger.
        """
        fields = eventFields({
            "log_time": 1700000000.25, "log_level": LogLevel.warn, "log_namespace": "twisted.web",
            "log_format": "hello {who}", "who": "world",
        })
        self.assertEqual(
            fields,
            {"time": "2023-11-14T22:13:20.250000+00:00", "level": "warn", "text": "hello world",
             "logger": "twisted.web"},
        )

    def test_ownValues(self):
        """
        smtpmx's own lines carry the values they were logged with; a queue
        ID is C{queue_id}; the reserved keys are never replaced.
        """
        fields = eventFields({
            "log_time": 0.0, "log_level": LogLevel.info, "log_namespace": "smtpmx.relay.service.RelayService",
            "log_format": "{id}: to=<{to}> {text}", "id": "Q1", "to": "a@example.org", "text": "x",
            "delay": 1.5, "hop": object(),
        })
        self.assertEqual(fields["queue_id"], "Q1")
        self.assertEqual(fields["to"], "a@example.org")
        self.assertEqual(fields["delay"], 1.5)
        self.assertEqual(fields["text"], "Q1: to=<a@example.org> x")
        self.assertNotIn("hop", fields)

    def test_failure(self):
        """
        A failure's traceback is a field of its own.
        """
        try:
            1 / 0
        except ZeroDivisionError:
            failure = Failure()
        fields = eventFields({
            "log_time": 0.0, "log_level": LogLevel.critical, "log_namespace": "smtpmx.x",
            "log_format": "it broke", "log_failure": failure,
        })
        self.assertEqual(fields["text"], "it broke")
        self.assertIn("ZeroDivisionError", fields["traceback"])

    def test_noTime(self):
        """
        An event without a time has none.
        """
        self.assertIsNone(isoTime(None))
        self.assertEqual(eventFields({"log_format": "x"})["level"], "info")


class TransactionTests(SynchronousTestCase):
    """
    A transaction's line, from the real event of the in-memory server.
    """

    def test_transaction(self):
        """
        The transaction's line has its queue ID, client, sender, the
        recipients accepted (a list), size and result, and every verdict.
        """
        events = capturedEvents(self)
        server = Server(
            verdicts={"alice@example.org": Accept(), "bob@example.org": Accept(),
                      "carol@example.org": Reject(550, "5.1.1", "no such user")},
            clientHost="192.0.2.7",
        ).greeted()
        server.codes(
            "MAIL FROM:<sender@remote.example>\r\n"
            "RCPT TO:<alice@example.org>\r\n"
            "RCPT TO:<carol@example.org>\r\n"
            "RCPT TO:<Bob@example.org>\r\n"
            "DATA\r\n"
            "Subject: hi\r\n\r\nhello\r\n.\r\n"
        )
        [event] = [e for e in events if "transaction" in e]
        fields = eventFields(event)
        queueId = server.store.messages[0].envelope.queueId
        self.assertEqual(fields["queue_id"], queueId)
        self.assertEqual(fields["client"], "192.0.2.7")
        self.assertEqual(fields["helo"], "client.example")
        self.assertEqual(fields["from"], "sender@remote.example")
        self.assertEqual(fields["to"], ["alice@example.org", "Bob@example.org"])
        self.assertEqual(fields["size"], len(b"Subject: hi\n\nhello\n"))
        self.assertEqual(fields["result"], f"250 2.0.0 Ok: queued as {queueId}")
        self.assertEqual(fields["code"], 250)
        self.assertEqual(fields["level"], "info")
        self.assertEqual(fields["recipients"][1], {"to": "carol@example.org", "reply": "550 5.1.1 no such user", "by": "dict"})
        self.assertTrue(fields["text"].startswith(f"{queueId}: client=[192.0.2.7] helo=client.example"))
        self.assertNotIn("verdicts", fields)

    def test_nullSender(self):
        """
        The null reverse-path is C{""}.
        """
        events = capturedEvents(self)
        server = Server().greeted()
        server.codes("MAIL FROM:<>\r\nRCPT TO:<alice@example.org>\r\nDATA\r\nx\r\n.\r\n")
        [event] = [e for e in events if "transaction" in e]
        self.assertEqual(eventFields(event)["from"], "")


class AuthTests(SynchronousTestCase):
    """
    Sender authentication's verdicts, once a record carries them.
    """

    def test_auth(self):
        """
        A record with C{authResults} has them listed under C{auth}; one
        without has no C{auth}.
        """
        from smtpmx.auth.results import AuthResults, DkimResult, SpfResult
        from tests.test_metrics import record

        plain = record()
        self.assertNotIn("auth", transactionFields(plain))
        checked = record(authResults=AuthResults(
            spf=SpfResult("pass", mailfrom="remote.example"), dkim=(DkimResult("fail", "a.example", "s"),),
        ))
        self.assertEqual(
            transactionFields(checked)["auth"],
            [{"method": "spf", "result": "pass"}, {"method": "dkim", "result": "fail"}],
        )


class ObserverTests(SynchronousTestCase):
    """
    L{JSONLogObserver} and where it writes.
    """

    def test_oneLinePerEvent(self):
        """
        Each event is one line of JSON, even when its text has line breaks.
        """
        out = io.StringIO()
        observer = JSONLogObserver(out)
        observer({"log_time": 0.0, "log_format": "two\nlines é", "log_level": LogLevel.info})
        observer({"log_time": 1.0, "log_format": "{x}", "x": "y", "log_level": LogLevel.error})
        lines = out.getvalue().splitlines()
        self.assertEqual(len(lines), 2)
        self.assertEqual(json.loads(lines[0])["text"], "two\nlines é")
        self.assertEqual(json.loads(lines[1])["level"], "error")

    def test_whereTwistdWrites(self):
        """
        The lines go where twistd's would: stdout with C{--logfile=-} or
        C{--nodaemon} alone (or no twistd at all), else the log file
        (C{twistd.log} by default).
        """
        self.assertIs(twistdLogFile(None), sys.stdout)
        self.assertIs(twistdLogFile({"logfile": "-", "nodaemon": False}), sys.stdout)
        self.assertIs(twistdLogFile({"logfile": None, "nodaemon": True}), sys.stdout)
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory)
        path = os.path.join(directory, "smtpmx.log")
        logFile = twistdLogFile({"logfile": path, "nodaemon": True})
        self.addCleanup(logFile.close)
        self.assertIsInstance(logFile, LogFile)
        self.assertEqual(logFile.path, path)
        cwd = os.getcwd()
        os.chdir(directory)
        self.addCleanup(os.chdir, cwd)
        default = twistdLogFile({"logfile": None, "nodaemon": False})
        self.addCleanup(default.close)
        self.assertEqual(default.path, os.path.join(directory, "twistd.log"))
