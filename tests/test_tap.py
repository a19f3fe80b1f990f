"""
Tests for L{smtpmx.tap}: the command line of C{twistd smtpmx} and the
services it builds, inspected without running a reactor.
"""

import io
import os
import shutil
import sys
import tempfile

from twisted.application.service import IServiceCollection, MultiService
from twisted.internet.error import CannotListenError
from twisted.internet.testing import MemoryReactorClock as MemoryReactor
from twisted.logger import globalLogPublisher
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from smtpmx.freespace import FreeSpaceMonitor
from smtpmx.relay.service import RelayService
from smtpmx.reload import ReloadService
from smtpmx.services import ListenFailed, ListeningService, StartupFailed, buildService
from smtpmx.tap import Options, makeService
from smtpmx.validation import ValidatorChain
from tests import certs


class TempDirMixin:
    """
    A temporary directory per test, removed afterwards.
    """

    def makeDir(self) -> str:
        """
        Make the directory.
        """
        path = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, path, True)
        return path


def parse(*argv):
    """
    Parse C{argv} as the options after C{twistd smtpmx}.
    """
    options = Options()
    options.parseOptions(list(argv))
    return options


def buildFromArguments(test, reactor, *argv):
    """
    What C{twistd smtpmx} builds for C{argv}, on C{reactor}, with a
    Maildir root and a queue in a temporary directory removed after
    C{test}.

    @return: the options, the service and the server factory.
    """
    directory = tempfile.mkdtemp()
    test.addCleanup(shutil.rmtree, directory, True)
    options = parse("--maildir-root", os.path.join(directory, "Maildir"),
                    "--queue-dir", os.path.join(directory, "queue"), *argv)
    service = buildService(options.config, options.validators, options.tlsOptions,
                           reactor, options.filters)
    [listening] = [s for s in service if isinstance(s, ListeningService)]
    return options, service, listening.factory


class OptionsTests(TempDirMixin, SynchronousTestCase):
    """
    Parsing the options of C{twistd smtpmx}.
    """

    def test_defaults(self):
        """
        With no options there is a configuration, the C{mailbox} validator
        and no TLS.
        """
        options = parse()
        self.assertEqual(options.config.listen, ("tcp:2525:interface=127.0.0.1",))
        self.assertIsInstance(options.validators, ValidatorChain)
        self.assertEqual([n for n, _ in options.validators.validators], ["mailbox"])
        self.assertIsNone(options.tlsOptions)

    def test_repeatable(self):
        """
        Repeatable options collect every value, in order.
        """
        options = parse("--domain", "a.example", "--domain", "B.example",
                        "--listen", "tcp:0", "--listen", "tcp6:0",
                        "--validator", "any", "--validator", "mailbox",
                        "--relay-network", "10.0.0.0/8", "--route", "x.example=y.example:25")
        config = options.config
        self.assertEqual(config.domains, ("a.example", "b.example"))
        self.assertEqual(config.listen, ("tcp:0", "tcp6:0"))
        self.assertEqual([n for n, _ in options.validators.validators], ["any", "mailbox"])
        self.assertEqual(config.relayNetworks, ("10.0.0.0/8",))
        self.assertEqual(config.routes, (("x.example", "y.example", 25),))

    def test_single(self):
        """
        Single-valued options are converted and checked.
        """
        config = parse("--max-message-size", "1000", "--hostname", "mx.example",
                       "--retry-schedule", "5,10", "--recipient-delimiter", "-").config
        self.assertEqual(config.maxMessageSize, 1000)
        self.assertEqual(config.hostname, "mx.example")
        self.assertEqual(config.retrySchedule, (5, 10))
        self.assertEqual(config.recipientDelimiter, "-")

    def test_configFile(self):
        """
        C{--config} reads the TOML file; flags override it and a repeatable
        flag replaces its list.
        """
        path = os.path.join(self.makeDir(), "smtpmx.toml")
        with open(path, "w") as f:
            f.write('domain = ["a.example", "b.example"]\nmax-hops = 7\nhostname = "file.example"\n')
        config = parse("--config", path, "--domain", "c.example",
                       "--hostname", "flag.example").config
        self.assertEqual(config.domains, ("c.example",))
        self.assertEqual(config.maxHops, 7)
        self.assertEqual(config.hostname, "flag.example")

    def test_badValue(self):
        """
        A bad value is a usage error of one line naming the option.
        """
        e = self.assertRaises(usage.UsageError, parse, "--max-hops", "many")
        self.assertIn("--max-hops", str(e))
        self.assertNotIn("\n", str(e))

    def test_badConfigFile(self):
        """
        A configuration file that cannot be read is a usage error.
        """
        missing = os.path.join(self.makeDir(), "missing.toml")
        e = self.assertRaises(usage.UsageError, parse, "--config", missing)
        self.assertIn(missing, str(e))

    def test_unknownValidator(self):
        """
        An unknown validator name is a usage error naming it.
        """
        e = self.assertRaises(usage.UsageError, parse, "--validator", "nosuch")
        self.assertIn("'nosuch'", str(e))
        self.assertIn("--list-validators", str(e))

    def test_validatorFailsToLoad(self):
        """
        A validator whose factory refuses its argument is a usage error
        naming it and saying why.
        """
        missing = os.path.join(self.makeDir(), "aliases")
        e = self.assertRaises(usage.UsageError, parse, "--validator", "aliases:" + missing)
        self.assertIn("aliases:" + missing, str(e))
        self.assertIn("cannot read", str(e))
        self.assertNotIn("\n", str(e))

    def test_validatorArgument(self):
        """
        The text after the first colon is the validator's argument.
        """
        path = os.path.join(self.makeDir(), "aliases")
        with open(path, "w") as f:
            f.write("a@localhost: b@localhost\n")
        options = parse("--validator", "aliases:" + path)
        name, validator = options.validators.validators[0]
        self.assertEqual(name, "aliases")
        self.assertEqual(validator.path, path)

    def test_badTLS(self):
        """
        A TLS certificate that is no certificate is a usage error.
        """
        directory = self.makeDir()
        cert = os.path.join(directory, "cert.pem")
        with open(cert, "w") as f:
            f.write("nothing\n")
        e = self.assertRaises(usage.UsageError, parse, "--tls-certificate", cert,
                              "--tls-key", cert)
        self.assertIn(cert, str(e))

    def test_expiredTLS(self):
        """
        An expired certificate is no usage error: the server starts with
        it, and the reload service warns of it.
        """
        directory = self.makeDir()
        authority = certs.makeAuthority(directory)
        cert, key = certs.makeExpiredCertificate(authority, directory)
        options = parse("--tls-certificate", cert, "--tls-key", key)
        self.assertIsNotNone(options.tlsOptions)

    def test_listValidators(self):
        """
        C{--list-validators} prints each validator with its description,
        one a line, and exits with status 0.
        """
        out = io.StringIO()
        self.patch(sys, "stdout", out)
        e = self.assertRaises(SystemExit, parse, "--list-validators")
        self.assertEqual(e.code, 0)
        lines = out.getvalue().splitlines()
        names = [line.split("  ", 1)[0] for line in lines]
        self.assertTrue({"mailbox", "any", "aliases"} <= set(names), lines)
        for line in lines:
            self.assertTrue(line.split("  ", 1)[1].strip(), line)

    def test_help(self):
        """
        C{--help} lists every option (docs/options.rst), with the defaults.
        """
        text = str(Options())
        for option in ("config", "listen", "hostname", "domain", "maildir-root",
                       "validator", "recipient-delimiter", "relay-network",
                       "relay-domain", "route", "smarthost", "dns-server",
                       "relay-port", "queue-dir", "retry-schedule", "max-queue-age",
                       "max-message-size", "max-recipients", "max-connections",
                       "max-connections-per-ip", "command-timeout", "data-timeout",
                       "max-hops", "tls-certificate", "tls-key", "relay-tls",
                       "ca-certs", "list-validators"):
            self.assertIn(f"--{option}", text)
        self.assertIn("26214400", text)
        self.assertIn("tcp:2525:interface=127.0.0.1", text)


class FailingReactor(MemoryReactor):
    """
    A reactor where every port is taken.
    """

    def listenTCP(self, port, factory, backlog=50, interface=""):
        raise CannotListenError(interface, port, OSError(98, "Address already in use"))


class ServiceTests(TempDirMixin, SynchronousTestCase):
    """
    The services that C{twistd smtpmx} runs.
    """

    def build(self, *argv, reactor=None):
        """
        The service for C{argv}, on a memory reactor.
        """
        directory = self.makeDir()
        options = parse("--maildir-root", os.path.join(directory, "Maildir"),
                        "--queue-dir", os.path.join(directory, "queue"), *argv)
        self.reactor = reactor if reactor is not None else MemoryReactor()
        return buildService(options.config, options.validators, options.tlsOptions,
                            self.reactor)

    def test_oneServicePerEndpoint(self):
        """
        There is one listening service per C{--listen} endpoint, after the
        relay service (which recovers the queue before any connection),
        the free-space guard (which measures before any MAIL) and the
        reload service.
        """
        service = self.build("--listen", "tcp:2525:interface=127.0.0.1",
                             "--listen", "tcp6:2526:interface=\\:\\:")
        self.assertIsInstance(service, MultiService)
        IServiceCollection(service)
        relay, monitor, reloader, *children = list(service)
        self.assertIsInstance(relay, RelayService)
        self.assertIsInstance(monitor, FreeSpaceMonitor)
        self.assertIsInstance(reloader, ReloadService)
        self.assertEqual(len(children), 2)
        self.assertTrue(all(isinstance(c, ListeningService) for c in children))
        self.assertEqual([c.description for c in children],
                         ["tcp:2525:interface=127.0.0.1", "tcp6:2526:interface=\\:\\:"])
        self.assertEqual(self.reactor.tcpServers, [])

    def test_listensWhenPrivileged(self):
        """
        Ports are bound in C{privilegedStartService}, before twistd sheds
        root, and the log says where with the port really bound.
        """
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        service = self.build("--listen", "tcp:2525:interface=127.0.0.1")
        service.privilegedStartService()
        self.assertEqual(len(self.reactor.tcpServers), 1)
        port, factory, _, interface = self.reactor.tcpServers[0]
        self.assertEqual((port, interface), (2525, "127.0.0.1"))
        self.assertEqual(factory.config.listen, ("tcp:2525:interface=127.0.0.1",))
        service.startService()
        self.assertEqual(len(self.reactor.tcpServers), 1)
        messages = [e.get("log_format", "").format(**e) for e in events
                    if "log_format" in e]
        self.assertIn("smtpmx listening on 0.0.0.0:2525", messages)
        self.assertEqual(len([m for m in messages if "starting:" in m]), 1)
        service.stopService()

    def test_listenFailure(self):
        """
        A port that cannot be bound ends start-up with one line naming the
        endpoint and a non-zero exit status.
        """
        service = self.build("--listen", "tcp:25", reactor=FailingReactor())
        e = self.assertRaises(ListenFailed, service.privilegedStartService)
        self.assertIsInstance(e, SystemExit)
        self.assertIsInstance(e, Exception)
        self.assertIn("cannot listen on tcp:25", str(e))
        self.assertIn("Address already in use", str(e))
        self.assertNotIn("\n", str(e))

    def test_makeService(self):
        """
        The twistd entry point builds the same service on the global
        reactor, without starting it.
        """
        directory = self.makeDir()
        options = parse("--maildir-root", directory, "--queue-dir", directory)
        service = makeService(options)
        self.assertEqual(len(list(service)), 4)
        self.assertFalse(service.running)


class StorageCheckTests(TempDirMixin, SynchronousTestCase):
    """
    A Maildir root or queue directory that cannot be written stops
    start-up with one line, not a traceback or a server that fails later.
    """

    def start(self, *argv):
        options = parse(*argv)
        service = buildService(options.config, options.validators, options.tlsOptions, MemoryReactor())
        return service

    def test_maildirRootUnderAFile(self):
        """
        A Maildir root below a plain file is refused, naming the option.
        """
        directory = self.makeDir()
        path = os.path.join(directory, "file")
        open(path, "w").close()
        service = self.start("--maildir-root", os.path.join(path, "Maildir"), "--queue-dir", os.path.join(directory, "q"))
        e = self.assertRaises(StartupFailed, service.startService)
        self.assertIsInstance(e, SystemExit)
        self.assertEqual(str(e), f"--maildir-root {path}/Maildir: Not a directory")

    def test_queueDirIsAFile(self):
        """
        A queue directory that is a file is refused, naming the option.
        """
        directory = self.makeDir()
        path = os.path.join(directory, "queue")
        open(path, "w").close()
        service = self.start("--maildir-root", os.path.join(directory, "M"), "--queue-dir", path)
        e = self.assertRaises(StartupFailed, service.startService)
        self.assertIn("--queue-dir", str(e))
        self.assertNotIn("\n", str(e))

    def test_created(self):
        """
        Missing directories are created at start-up.
        """
        directory = self.makeDir()
        service = self.start("--maildir-root", os.path.join(directory, "a", "Maildir"), "--queue-dir", os.path.join(directory, "b", "queue"))
        service.startService()
        self.addCleanup(service.stopService)
        self.assertTrue(os.path.isdir(os.path.join(directory, "a", "Maildir")))
        self.assertTrue(os.path.isdir(os.path.join(directory, "b", "queue", "env")))
