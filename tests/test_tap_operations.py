"""
Tests for what L{smtpmx.tap} builds for C{--metrics} and
C{--log-format}, inspected without running a reactor (the real twistd
runs them in C{tests/test_metrics_e2e.py}).
"""

from __future__ import annotations

import os
import shutil
import tempfile

from twisted.application.service import Application
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import ILogObserver
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from smtpmx.jsonlog import JSONLogObserver
from smtpmx.metrics import Metrics, MetricsService
from smtpmx.relay.service import RelayService
from smtpmx.server import NoObserver
from smtpmx.services import ListeningService, buildService
from smtpmx.tap import Options, makeService
from smtpmx.webstatus import QuietSite


class OperationsTests(SynchronousTestCase):
    """
    C{--metrics} and C{--log-format}.
    """

    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.dir)

    def parse(self, *argv: str, parent=None) -> Options:
        """
        Parse C{argv} after storage options of a temporary directory.
        """
        options = Options()
        if parent is not None:
            options.parent = parent
        options.parseOptions(
            ["--maildir-root", os.path.join(self.dir, "Maildir"), "--queue-dir", os.path.join(self.dir, "queue"),
             *argv]
        )
        return options

    def build(self, *argv: str):
        """
        The service for C{argv}, on a memory reactor.
        """
        options = self.parse(*argv)
        return buildService(options.config, options.validators, options.tlsOptions, MemoryReactorClock())

    def test_defaults(self):
        """
        By default there are no metrics and the log is text.
        """
        options = self.parse()
        self.assertIsNone(options.config.metrics)
        self.assertEqual(options.config.logFormat, "text")
        service = self.build()
        self.assertEqual(
            [s.name for s in service],
            ["relay", "free space", "reload", "listen tcp:2525:interface=127.0.0.1"],
        )
        listening = service.getServiceNamed("listen tcp:2525:interface=127.0.0.1")
        self.assertIsInstance(listening.factory.observer, NoObserver)
        self.assertIsNone(service.getServiceNamed("relay").onAttempt)

    def test_metrics(self):
        """
        C{--metrics ENDPOINT}: the server and the relay count into one
        L{Metrics}, the queue is sampled, and the status site listens on
        the endpoint, after the SMTP listeners.
        """
        service = self.build("--metrics", "tcp:9100:interface=127.0.0.1")
        self.assertEqual(
            [s.name for s in service],
            [
                "relay", "free space", "reload", "listen tcp:2525:interface=127.0.0.1",
                "metrics", "metrics tcp:9100:interface=127.0.0.1",
            ],
        )
        relay: RelayService = service.getServiceNamed("relay")
        smtp: ListeningService = service.getServiceNamed("listen tcp:2525:interface=127.0.0.1")
        sampler: MetricsService = service.getServiceNamed("metrics")
        status: ListeningService = service.getServiceNamed("metrics tcp:9100:interface=127.0.0.1")
        self.assertIsInstance(smtp.factory.observer, Metrics)
        self.assertIs(sampler.metrics, smtp.factory.observer)
        self.assertIs(sampler.relay, relay)
        self.assertEqual(relay.onAttempt, sampler.metrics.relayAttempted)
        self.assertIsInstance(status.factory, QuietSite)
        self.assertEqual(status.label, "smtpmx metrics")

    def test_badMetricsEndpoint(self):
        """
        A C{--metrics} value that is not a server endpoint stops start-up.
        """
        e = self.assertRaises(usage.UsageError, self.parse, "--metrics", "nonsense:1")
        self.assertIn("--metrics", str(e))

    def test_badLogFormat(self):
        """
        C{--log-format} is C{text} or C{json}.
        """
        e = self.assertRaises(usage.UsageError, self.parse, "--log-format", "xml")
        self.assertIn("must be one of text, json", str(e))

    def test_jsonNotToSyslog(self):
        """
        JSON lines are not sent to syslog: twistd's C{--syslog} with
        C{--log-format json} stops start-up.
        """
        e = self.assertRaises(
            usage.UsageError, self.parse, "--log-format", "json", parent={"syslog": True, "logfile": None}
        )
        self.assertIn("--log-format json", str(e))

    def test_jsonObserverIsTheApplications(self):
        """
        With C{--log-format json} the service gives twistd's application
        the JSON observer as its L{ILogObserver}, which twistd then logs
        with; without, it gives none.
        """
        options = self.parse("--log-format", "json", parent={"syslog": False, "logfile": "-", "nodaemon": True})
        service = makeService(options)
        self.assertIsInstance(service.logObserver, JSONLogObserver)
        application = Application("smtpmx")
        service.setServiceParent(application)
        self.assertIs(ILogObserver(application), service.logObserver)
        text = makeService(self.parse())
        self.assertIsNone(text.logObserver)
        other = Application("smtpmx")
        text.setServiceParent(other)
        self.assertIsNone(ILogObserver(other, None))

    def test_textObserverUnderTwistd(self):
        """
        Under twistd, C{--log-format text} gives the application the text
        observer of L{smtpmx.textlog} (twistd's lines, for less CPU); with
        C{--syslog} it gives none, and twistd logs to syslog itself.
        """
        from twisted.logger import FileLogObserver

        options = self.parse(parent={"syslog": False, "logfile": None, "nodaemon": True})
        self.assertIsInstance(makeService(options).logObserver, FileLogObserver)
        syslog = self.parse(parent={"syslog": True, "logfile": None, "nodaemon": True})
        self.assertIsNone(makeService(syslog).logObserver)

    def test_jsonToTheLogFile(self):
        """
        With twistd's C{--logfile PATH}, the JSON lines go to that file.
        """
        path = os.path.join(self.dir, "smtpmx.log")
        options = self.parse("--log-format", "json", parent={"syslog": False, "logfile": path, "nodaemon": False})
        observer = makeService(options).logObserver
        self.addCleanup(observer.outFile.close)
        observer({"log_format": "hello", "log_time": 0.0})
        with open(path) as f:
            self.assertIn('"text": "hello"', f.read())
