"""
End-to-end test of the setup README.rst recommends for a small domain
("Keeping spam out", and C{etc/smtpmx.toml}): the real C{twistd -n
smtpmx} with C{--filter rspamd:URL} and C{--validator policy:ENDPOINT}
before C{--validator mailbox}, against a REAL private rspamd
(L{tests.rspamd}) and a REAL private postgrey (L{tests.postgrey}), so
that what the README promises is what happens: greylisting first, then
rspamd's reject, its junk in the Maildir++ folder C{.Junk}, and its
header fields on every delivered copy.

The client at 127.0.0.1 is made untrusted with C{--relay-network
192.0.2.0/24}: filters judge only mail from outside the relay networks.
"""

from __future__ import annotations

import os
import smtplib
import time

import pytest
from twisted.trial.unittest import SynchronousTestCase

from tests import rspamd as harness
from tests.e2e import RunningServer, headerBlock, makeTemporaryDirectory
from tests.helpers import waitUntil
from tests.postgrey import RunningPostgrey, postgreyMissing

# Every blocking operation of a client is bounded by this.
TIMEOUT = 15

# postgrey's --delay in this test, in seconds.
DELAY = 2


def missing() -> str:
    """
    Why the recommended setup cannot be run here, or C{""}.
    """
    return harness.available() or postgreyMissing()


@pytest.mark.skipif(bool(missing()), reason=missing() or "-")
class RecommendedSetupTests(SynchronousTestCase):
    """
    README.rst's "Keeping spam out", played through.
    """

    def setUp(self) -> None:
        """
        Start a private rspamd and postgrey (stopped by PID in cleanups).
        """
        directory = makeTemporaryDirectory(self.addCleanup, "rspamd")
        self.rspamd = harness.RunningRspamd(directory)
        self.addCleanup(self.rspamd.stop)
        self.rspamd.start()
        self.postgrey = RunningPostgrey.start(self.addCleanup, delay=DELAY)

    def transaction(self, server: RunningServer, data: bytes) -> tuple[int, int]:
        """
        One transaction for alice@example.org from a remote sender.

        @return: the codes of the replies to RCPT and to the end of data
            (C{0} when RCPT was refused and no data was sent).
        """
        with smtplib.SMTP(server.host, server.port, local_hostname="mx.remote.example",
                          timeout=TIMEOUT) as c:
            c.ehlo()
            c.mail("sender@remote.example")
            rcpt, _ = c.rcpt("alice@example.org")
            if rcpt != 250:
                c.rset()
                return rcpt, 0
            code, _ = c.data(data)
            return rcpt, code

    def test_recommendedSetup(self) -> None:
        """
        A new sender is greylisted (C{450 4.7.1}) and accepted when it
        retries after postgrey's delay; then rspamd decides: ham goes to
        INBOX with C{X-Spam-Action}/C{X-Spam-Score}, GTUBE is refused
        C{550 5.7.1} and stored nowhere, rspamd's C{add header} pattern
        goes to C{.Junk/new/} with C{X-Spam: Yes}.
        """
        server = RunningServer.start(self.addCleanup, [
            "--domain", "example.org", "--relay-network", "192.0.2.0/24", "--auth-checks", "none",
            "--filter", f"rspamd:{self.rspamd.url}",
            "--validator", f"policy:{self.postgrey.endpoint}", "--validator", "mailbox",
        ])
        maildir = server.makeMaildir("example.org", "alice")

        self.assertEqual(self.transaction(server, harness.HAM), (450, 0))
        time.sleep(DELAY + 1)
        self.assertEqual(self.transaction(server, harness.HAM), (250, 250))
        [inbox] = server.waitForFiles("example.org", "alice", 1)
        head = headerBlock(inbox)
        self.assertIn(b"\nX-Spam-Action: no action\n", head)
        self.assertIn(b"\nX-Spam-Score: ", head)

        self.assertEqual(self.transaction(server, harness.spam(harness.GTUBE)), (250, 550))

        data = harness.spam(harness.GTUBE_ADD_HEADER)
        self.assertEqual(self.transaction(server, data), (250, 250))
        junk = os.path.join(maildir, ".Junk", "new")
        [name] = waitUntil(lambda: os.listdir(junk) if os.path.isdir(junk) else [])
        with open(os.path.join(junk, name), "rb") as f:
            junked = headerBlock(f.read())
        self.assertIn(b"\nX-Spam: Yes\n", junked)
        self.assertIn(b"\nX-Spam-Action: add header\n", junked)
        self.assertEqual(len(server.newMessages("example.org", "alice")), 1)
        self.assertIn("action=greylist", self.postgrey.log())
