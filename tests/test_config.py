"""
Tests for L{smtpmx.config}: defaults, the TOML file, the command line over
the file, and a one-line L{ConfigError} for every kind of bad value.
"""

import os
import shutil
import tempfile

from twisted.trial.unittest import SynchronousTestCase

from smtpmx.config import Config, ConfigError, loadConfig, readConfigFile, summarize

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load(fileOptions=None, flagOptions=None, **kw):
    """
    L{loadConfig} from C{/srv} with a fixed host name.
    """
    kw.setdefault("cwd", "/srv")
    kw.setdefault("getfqdn", lambda: "mx.example.org")
    return loadConfig(fileOptions or {}, flagOptions or {}, **kw)


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

    def writeFile(self, name: str, content: str | bytes) -> str:
        """
        Write a file in a new temporary directory and return its path.
        """
        path = os.path.join(self.makeDir(), name)
        with open(path, "wb") as f:
            f.write(content.encode() if isinstance(content, str) else content)
        return path


class DefaultsTests(SynchronousTestCase):
    """
    With no options at all the server runs on its embedded default
    (docs/options.rst), one a newcomer can try at once.
    """

    def test_defaults(self):
        """
        Without options smtpmx listens on 127.0.0.1:2525 for the domain
        localhost, with Maildirs in ./Maildir and the queue in ./queue, and
        names itself after the host's FQDN.
        """
        config = load()
        self.assertEqual(config.listen, ("tcp:2525:interface=127.0.0.1",))
        self.assertEqual(config.domains, ("localhost",))
        self.assertEqual(config.maildirRoot, "/srv/Maildir")
        self.assertEqual(config.queueDir, "/srv/queue")
        self.assertEqual(config.hostname, "mx.example.org")
        self.assertEqual(config.validators, ("mailbox",))
        self.assertEqual(config.recipientDelimiter, "+")
        self.assertEqual(config.relayNetworks, ("127.0.0.0/8", "::1/128"))
        self.assertEqual(config.retrySchedule, (60, 300, 900, 1800, 3600))
        self.assertEqual(config.maxMessageSize, 26214400)
        self.assertEqual(config.relayTls, "may")
        self.assertEqual(config.routes, ())
        self.assertIsNone(config.tlsCertificate)

    def test_fieldDefaultsKept(self):
        """
        Apart from the paths made absolute and the host name, the defaults
        are those of the L{Config} dataclass itself.
        """
        config = load()
        plain = Config()
        for name in ("maxRecipients", "maxConnections", "maxConnectionsPerIp",
                     "commandTimeout", "dataTimeout", "maxHops", "relayPort",
                     "maxQueueAge", "relayDomains", "dnsServer"):
            self.assertEqual(getattr(config, name), getattr(plain, name), name)

    def test_summary(self):
        """
        The start-up summary is a single line naming the essentials.
        """
        line = summarize(load())
        self.assertNotIn("\n", line)
        self.assertIn("domains=localhost", line)
        self.assertIn("listen=tcp:2525:interface=127.0.0.1", line)
        self.assertIn(" maildir-mode=0600 delivery=maildir ", line)


class FileTests(TempDirMixin, SynchronousTestCase):
    """
    The TOML file given with C{--config}.
    """

    def test_file(self):
        """
        Keys named like the long options set the options.
        """
        path = self.writeFile("smtpmx.toml", """
hostname = "mx.example.org"
domain = ["Example.ORG", "example.net"]
max-message-size = 1000
retry-schedule = [10, 20]
relay-tls = "verify"
route = ["example.com=relay.example.com:2525"]
dns-server = "192.0.2.53"
command-timeout = 2.5
""")
        config = load(readConfigFile(path), configPath=path)
        self.assertEqual(config.domains, ("example.org", "example.net"))
        self.assertEqual(config.maxMessageSize, 1000)
        self.assertEqual(config.retrySchedule, (10, 20))
        self.assertEqual(config.relayTls, "verify")
        self.assertEqual(config.routes, (("example.com", "relay.example.com", 2525),))
        self.assertEqual(config.dnsServer, ("192.0.2.53", 53))
        self.assertEqual(config.commandTimeout, 2.5)

    def test_spellings(self):
        """
        A key may use C{_} for C{-}, and a repeatable option its plural.
        """
        path = self.writeFile("smtpmx.toml", """
max_message_size = 1000
domains = "example.org"
relay_networks = ["10.0.0.0/8"]
""")
        config = load(readConfigFile(path))
        self.assertEqual(config.maxMessageSize, 1000)
        self.assertEqual(config.domains, ("example.org",))
        self.assertEqual(config.relayNetworks, ("10.0.0.0/8",))

    def test_routeTable(self):
        """
        Routes may be written as a TOML table of domain to next hop.
        """
        path = self.writeFile("smtpmx.toml", '[route]\n"example.com" = "[2001:db8::1]:25"\n')
        config = load(readConfigFile(path))
        self.assertEqual(config.routes, (("example.com", "2001:db8::1", 25),))

    def test_unknownKey(self):
        """
        A key that is no option is an error naming the key.
        """
        path = self.writeFile("smtpmx.toml", "max-mesage-size = 10\n")
        e = self.assertRaises(ConfigError, readConfigFile, path)
        self.assertIn("max-mesage-size", str(e))

    def test_twice(self):
        """
        The same option under two spellings is an error.
        """
        path = self.writeFile("smtpmx.toml", 'domain = "a.example"\ndomains = ["b.example"]\n')
        self.assertRaises(ConfigError, readConfigFile, path)

    def test_notTOML(self):
        """
        A file that is not TOML gives an error naming the file.
        """
        path = self.writeFile("smtpmx.toml", "this is not = = toml\n")
        e = self.assertRaises(ConfigError, readConfigFile, path)
        self.assertIn(path, str(e))

    def test_unreadable(self):
        """
        A missing file gives an error naming it.
        """
        path = os.path.join(self.makeDir(), "missing.toml")
        e = self.assertRaises(ConfigError, readConfigFile, path)
        self.assertIn(path, str(e))

    def test_badValueNamesFile(self):
        """
        A bad value in the file names the key and the file.
        """
        path = self.writeFile("smtpmx.toml", "max-hops = -1\n")
        e = self.assertRaises(ConfigError, load, readConfigFile(path), configPath=path)
        self.assertIn("max-hops", str(e))
        self.assertIn(path, str(e))

    def test_exampleFile(self):
        """
        The example configuration in C{etc/} loads.
        """
        path = os.path.join(ROOT, "etc", "smtpmx.toml")
        config = load(readConfigFile(path), configPath=path)
        self.assertEqual(config.domains, ("example.org",))
        self.assertIn("tcp6:25:interface=\\:\\:", config.listen)


class PrecedenceTests(SynchronousTestCase):
    """
    Defaults, then the file, then the command line.
    """

    def test_flagOverridesFile(self):
        """
        A flag given on the command line wins over the same key in the
        file.
        """
        config = load({"max-message-size": 1000}, {"max-message-size": "2000"})
        self.assertEqual(config.maxMessageSize, 2000)

    def test_fileKeptWithoutFlag(self):
        """
        A key of the file that no flag overrides stays.
        """
        config = load({"max-message-size": 1000, "hostname": "a.example"},
                      {"hostname": "b.example"})
        self.assertEqual(config.maxMessageSize, 1000)
        self.assertEqual(config.hostname, "b.example")

    def test_repeatableReplaces(self):
        """
        A repeatable option given on the command line forms the whole
        list, replacing the file's list.
        """
        config = load({"domain": ["a.example", "b.example"]}, {"domain": ["c.example"]})
        self.assertEqual(config.domains, ("c.example",))

    def test_repeatableReplacesDefault(self):
        """
        A relay network given on the command line replaces the default
        networks.
        """
        config = load({}, {"relay-network": ["10.0.0.0/8"]})
        self.assertEqual(config.relayNetworks, ("10.0.0.0/8",))

    def test_smarthost(self):
        """
        C{--smarthost HOST:PORT} is the route for C{*}.
        """
        config = load({}, {"smarthost": "relay.example:587", "route": ["a.example=b.example:25"]})
        self.assertEqual(
            config.routes, (("a.example", "b.example", 25), ("*", "relay.example", 587))
        )

    def test_smarthostFlagOverFileRoute(self):
        """
        A smarthost given on the command line replaces the file's C{*}
        route.
        """
        config = load({"route": ["*=old.example:25"]}, {"smarthost": "new.example:25"})
        self.assertEqual(config.routes, (("*", "new.example", 25),))

    def test_smarthostAndStarRoute(self):
        """
        A smarthost and a C{*} route in the same place contradict.
        """
        self.assertRaises(
            ConfigError, load, {}, {"smarthost": "a.example:25", "route": ["*=b.example:25"]}
        )

    def test_relativePaths(self):
        """
        Relative Maildir and queue directories are made absolute against
        the current directory.
        """
        config = load({}, {"maildir-root": "mail", "queue-dir": "../q"})
        self.assertEqual(config.maildirRoot, "/srv/mail")
        self.assertEqual(config.queueDir, "/q")

    def test_emptyDelimiter(self):
        """
        An empty recipient delimiter turns tag stripping off.
        """
        self.assertEqual(load({}, {"recipient-delimiter": ""}).recipientDelimiter, "")

    def test_relayTlsCase(self):
        """
        The relay TLS mode is read case-insensitively.
        """
        self.assertEqual(load({}, {"relay-tls": "VERIFY"}).relayTls, "verify")


class BadValueTests(TempDirMixin, SynchronousTestCase):
    """
    Every kind of bad value stops start-up with a one-line L{ConfigError}
    naming the option.
    """

    def assertBad(self, flags, option):
        """
        Loading C{flags} fails with one line naming C{option}.
        """
        e = self.assertRaises(ConfigError, load, {}, flags)
        self.assertIn(option, str(e))
        self.assertNotIn("\n", str(e))
        return e

    def test_endpoint(self):
        """
        An endpoint string Twisted cannot parse is refused.
        """
        self.assertBad({"listen": ["tcp:notaport"]}, "--listen")
        self.assertBad({"listen": ["bogus:25"]}, "--listen")

    def test_domain(self):
        """
        A domain that is not a domain is refused.
        """
        self.assertBad({"domain": ["not a domain"]}, "--domain")
        self.assertBad({"relay-domain": ["-bad.example"]}, "--relay-domain")
        self.assertBad({"domain": []}, "--domain")

    def test_hostname(self):
        """
        A host name with spaces is refused.
        """
        self.assertBad({"hostname": "mx example"}, "--hostname")

    def test_network(self):
        """
        A relay network that is no CIDR is refused.
        """
        self.assertBad({"relay-network": ["10.0.0.0/33"]}, "--relay-network")
        self.assertBad({"relay-network": ["everyone"]}, "--relay-network")

    def test_route(self):
        """
        Routes must be C{DOMAIN=HOST:PORT} with a valid port.
        """
        self.assertBad({"route": ["example.com"]}, "--route")
        self.assertBad({"route": ["example.com=host"]}, "--route")
        self.assertBad({"route": ["example.com=host:0"]}, "--route")
        self.assertBad({"route": ["example.com=host:70000"]}, "--route")
        self.assertBad({"route": ["bad domain=host:25"]}, "--route")
        self.assertBad({"route": ["a.example=h:25", "A.example=i:25"]}, "--route")
        self.assertBad({"smarthost": "relay.example"}, "--smarthost")

    def test_dnsServer(self):
        """
        The DNS server must be an IP address with an optional port.
        """
        self.assertBad({"dns-server": "ns.example:53"}, "--dns-server")
        self.assertBad({"dns-server": "192.0.2.1:x"}, "--dns-server")
        self.assertEqual(load({}, {"dns-server": "[::1]:5353"}).dnsServer, ("::1", 5353))

    def test_positiveIntegers(self):
        """
        Sizes, counts and ages must be positive integers.
        """
        for name in ("max-message-size", "max-recipients", "max-connections",
                     "max-connections-per-ip", "max-hops", "max-queue-age", "relay-port"):
            for value in ("0", "-5", "ten", "1.5"):
                self.assertBad({name: value}, "--" + name)
        self.assertRaises(ConfigError, load, {"max-hops": True}, {})

    def test_timeouts(self):
        """
        Timeouts must be positive numbers.
        """
        self.assertBad({"command-timeout": "0"}, "--command-timeout")
        self.assertBad({"data-timeout": "soon"}, "--data-timeout")

    def test_retrySchedule(self):
        """
        The retry schedule is a list of positive integers.
        """
        self.assertBad({"retry-schedule": "60,,300"}, "--retry-schedule")
        self.assertBad({"retry-schedule": "60,-1"}, "--retry-schedule")
        self.assertRaises(ConfigError, load, {"retry-schedule": []}, {})

    def test_relayTls(self):
        """
        The relay TLS mode is one of none, may, verify.
        """
        self.assertBad({"relay-tls": "always"}, "--relay-tls")

    def test_delimiter(self):
        """
        The recipient delimiter is a single character.
        """
        self.assertBad({"recipient-delimiter": "++"}, "--recipient-delimiter")
        self.assertBad({"recipient-delimiter": "@"}, "--recipient-delimiter")

    def test_validator(self):
        """
        A validator without a name is refused.
        """
        self.assertBad({"validator": [":arg"]}, "--validator")

    def test_tlsPair(self):
        """
        A certificate without a key (or the reverse) is refused.
        """
        cert = self.writeFile("cert.pem", "x")
        e = self.assertRaises(ConfigError, load, {}, {"tls-certificate": cert})
        self.assertIn("--tls-key", str(e))

    def test_unreadableFiles(self):
        """
        TLS and CA files that cannot be read are refused, naming the file.
        """
        missing = os.path.join(self.makeDir(), "missing.pem")
        e = self.assertBad({"ca-certs": missing}, "--ca-certs")
        self.assertIn(missing, str(e))
        self.assertBad({"tls-certificate": self.makeDir(), "tls-key": missing},
                       "--tls-certificate")

    def test_wrongType(self):
        """
        A file value of the wrong type is refused.
        """
        self.assertRaises(ConfigError, load, {"domain": [1]}, {})
        self.assertRaises(ConfigError, load, {"hostname": 5}, {})
