"""
Tests for the fail2ban filter and jail of C{etc/fail2ban/}, against the
log lines of a real C{twistd -n smtpmx} provoked by a client that keeps
failing: C{fail2ban-regex} must find exactly its failures, in both log
formats, and never an address a client wrote into the log; a private
C{fail2ban-server} running the jail (with fail2ban's C{dummy} action
instead of a firewall) must ban the client.

They skip without fail2ban (Debian package C{fail2ban}).
"""

from __future__ import annotations

import os
import shutil
import smtplib
import subprocess

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from tests.e2e import ROOT, RunningServer, makeTemporaryDirectory, rawDialog
from tests.helpers import message, unique, waitUntil
from tests.process import RunningProcess

FILTER = os.path.join(ROOT, "etc", "fail2ban", "filter.d", "smtpmx.conf")
JAIL = os.path.join(ROOT, "etc", "fail2ban", "jail.d", "smtpmx.conf")

# Every blocking operation of a client is bounded by this.
TIMEOUT = 15


def program(name: str) -> str:
    """
    The path of one of fail2ban's programs.

    @raise SkipTest: fail2ban is not installed.
    """
    path = shutil.which(name)
    if path is None:
        raise SkipTest(f"{name} is not installed (Debian package fail2ban)")
    return path


# A recipient whose quoted local part reads like another host's failure.
FORGED = '"[smtpmx.session.Session#info] NOQUEUE: reject: RCPT from [192.0.2.66]: 550 x"@localhost'
FORGED_CR = (
    b'"x\\\r2026-01-01T00:00:00+0000 [smtpmx.session.Session#info] NOQUEUE: reject: RCPT from'
    b' [192.0.2.67]: 550 x"@localhost'
)


def provoke(server: RunningServer) -> int:
    """
    Behave like a client worth banning, from 127.0.0.1, with a few things
    that must not count mixed in: three unknown recipients, a relay
    attempt, a message too big, a session of bad commands (each a
    failure); a recipient deferred with a 4xx and a message delivered
    (neither is); and recipients whose quoted local parts read like a
    failure of another host, after a carriage return too (which must not
    make that host match).

    @return: how many failures the filter must find.
    """
    server.makeMaildir("localhost", "alice")
    with smtplib.SMTP(server.host, server.port, local_hostname="client.example", timeout=TIMEOUT) as c:
        c.ehlo()
        c.mail("sender@remote.example")
        for user in ("nobody", "root", "admin"):
            assert c.rcpt(f"{user}@localhost")[0] == 550
        assert c.rcpt("someone@elsewhere.example")[0] == 554
        c.rset()
        # Delivered to alice; the transaction's line lists the verdict on
        # the other recipient, text a client chose, after the real client.
        refused = c.sendmail("sender@remote.example", [FORGED, "alice@localhost"], message(unique()))
        assert list(refused) == [FORGED], refused
        c.mail("sender@remote.example")
        assert c.rcpt("alice@localhost")[0] == 250
        assert c.rcpt("alice+again@localhost")[0] == 452
        assert c.data(b"x" * 3000)[0] == 552
    # A carriage return in a quoted pair (written raw in the text log)
    # does not start a line of its own for fail2ban.
    replies = rawDialog(
        server, b"EHLO client.example\r\nMAIL FROM:<>\r\nRCPT TO:<" + FORGED_CR + b">\r\nQUIT\r\n", 4
    )
    assert [r[:3] for r in replies] == ["250", "250", "550", "221"], replies
    with server.connect(TIMEOUT) as sock:
        sock.recv(1000)
        sock.sendall(b"BOGUS\r\n" * 25)
        waitUntil(lambda: not sock.recv(65536), TIMEOUT)
    waitUntil(lambda: "too many errors" in server.output(), TIMEOUT)
    # Six refused recipients (the relay attempt and the forged ones
    # included), the message too big, the bad commands.
    return 8


def startServer(addCleanup, *args: str) -> RunningServer:
    """
    A server that lets loopback clients relay nothing, with small limits.
    """
    return RunningServer.start(
        addCleanup,
        ["--relay-network", "10.255.255.0/24", "--max-message-size", "1000", "--max-recipients", "1", *args],
    )


class FilterTests(SynchronousTestCase):
    """
    C{etc/fail2ban/filter.d/smtpmx.conf} with C{fail2ban-regex}.
    """

    def matches(self, logPath: str) -> list[str]:
        """
        The address of every failure the filter finds in C{logPath}.
        """
        result = subprocess.run(
            [program("fail2ban-regex"), "--out", "ip", logPath, FILTER],
            capture_output=True, text=True, timeout=60,
        )
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        return result.stdout.split()

    def test_textLog(self):
        """
        In twistd's text log the filter finds every failure of the client,
        and nothing else.
        """
        program("fail2ban-regex")
        server = startServer(self.addCleanup)
        expected = provoke(server)
        self.assertEqual(self.matches(server.logPaths()[0]), ["127.0.0.1"] * expected)

    def test_jsonLog(self):
        """
        So it does in the JSON log.
        """
        program("fail2ban-regex")
        server = startServer(self.addCleanup, "--log-format", "json")
        expected = provoke(server)
        self.assertEqual(self.matches(server.logPaths()[0]), ["127.0.0.1"] * expected)


class JailTests(SynchronousTestCase):
    """
    C{etc/fail2ban/jail.d/smtpmx.conf} run by a private fail2ban server.
    """

    def configure(self, directory: str, logPath: str) -> str:
        """
        A fail2ban configuration directory: Debian's, with only our jail
        and filter, reading C{logPath} by polling (the shipped jail reads
        the journal), banning with the C{dummy} action into a file, its
        socket, PID file and log in C{directory}, its database in memory.
        """
        config = os.path.join(directory, "fail2ban")
        shutil.copytree("/etc/fail2ban", config, ignore=shutil.ignore_patterns("jail.d", "*.local"))
        os.mkdir(os.path.join(config, "jail.d"))
        shutil.copy(FILTER, os.path.join(config, "filter.d"))
        shutil.copy(JAIL, os.path.join(config, "jail.d"))
        with open(os.path.join(config, "fail2ban.local"), "w") as f:
            f.write(
                "[DEFAULT]\n"
                f"socket = {directory}/f2b.sock\n"
                f"pidfile = {directory}/f2b.pid\n"
                "dbfile = :memory:\n"
                f"logtarget = {directory}/f2b.log\n"
            )
        with open(os.path.join(config, "jail.d", "zz-test.local"), "w") as f:
            f.write(
                "[DEFAULT]\n"
                "ignoreself = false\n"
                "ignoreip =\n"
                "[smtpmx]\n"
                "backend = polling\n"
                f"logpath = {logPath}\n"
                f"action = dummy[target={directory}/banned]\n"
            )
        return config

    def client(self, config: str, *args: str) -> subprocess.CompletedProcess:
        """
        Run C{fail2ban-client} on the private configuration.
        """
        return subprocess.run(
            [program("fail2ban-client"), "-c", config, *args], capture_output=True, text=True, timeout=30,
        )

    def test_configuration(self):
        """
        fail2ban accepts the jail and the filter.
        """
        directory = makeTemporaryDirectory(self.addCleanup, "smtpmx-f2b-")
        log = os.path.join(directory, "smtpmx.log")
        open(log, "w").close()
        config = self.configure(directory, log)
        result = self.client(config, "-t")
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertIn("OK: configuration test is successful", result.stdout + result.stderr)

    def test_bans(self):
        """
        A client that keeps failing is banned by the jail.
        """
        program("fail2ban-client")
        server = program("fail2ban-server")
        smtpmx = startServer(self.addCleanup)
        directory = makeTemporaryDirectory(self.addCleanup, "smtpmx-f2b-")
        config = self.configure(directory, smtpmx.logPaths()[0])
        runner = RunningProcess(
            [server, "-f", "-x", "-c", config, "-s", f"{directory}/f2b.sock", "-p", f"{directory}/f2b.pid"],
            os.path.join(directory, "f2b.out"), name="fail2ban-server",
        )
        self.addCleanup(runner.stop)
        runner.launch(lambda _: self.client(config, "ping").returncode == 0)
        self.addCleanup(self.client, config, "stop")
        waitUntil(lambda: "smtpmx" in self.client(config, "status").stdout, TIMEOUT)
        provoke(smtpmx)
        banned = waitUntil(lambda: "127.0.0.1" in self.client(config, "status", "smtpmx").stdout, TIMEOUT)
        self.assertTrue(banned, self.client(config, "status", "smtpmx").stdout + runner.log())
        with open(os.path.join(directory, "banned")) as f:
            self.assertIn("+127.0.0.1", f.read())
        self.assertNotIn("192.0.2.66", self.client(config, "status", "smtpmx").stdout)
