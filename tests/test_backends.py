"""
Tests for the choice of local delivery backend: C{--delivery},
C{--maildir-mode}, L{smtpmx.delivery.backendFor} and the queue's record of
an LMTP recipient.
"""

from twisted.trial.unittest import SynchronousTestCase

from smtpmx.config import ConfigError, loadConfig
from smtpmx.delivery import backendFor, lmtpEndpoint
from smtpmx.relay.queueformat import QueuedMessage, QueuedRecipient, decodeMessage, encodeMessage


def load(**flags):
    """
    A configuration from command-line flags alone.
    """
    return loadConfig({}, {name.replace("_", "-"): value for name, value in flags.items()})


class DeliveryOptionTests(SynchronousTestCase):
    """
    C{--delivery [DOMAIN=]BACKEND}.
    """

    def test_default(self):
        """
        Without the option every local domain is delivered to Maildirs.
        """
        config = load()
        self.assertEqual(config.delivery, ())
        self.assertEqual(backendFor(config.delivery, "localhost"), "maildir")

    def test_perDomain(self):
        """
        An entry naming a domain sets that domain's backend; the entry
        without a domain sets the others'; a domain named nowhere, with no
        such entry, uses Maildirs.
        """
        config = load(
            domain=["a.example", "b.example", "c.example"],
            delivery=["a.example=lmtp:unix:/run/dovecot/lmtp", "b.example=maildir"],
        )
        self.assertEqual(backendFor(config.delivery, "a.example"), "lmtp:unix:/run/dovecot/lmtp")
        self.assertEqual(backendFor(config.delivery, "b.example"), "maildir")
        self.assertEqual(backendFor(config.delivery, "c.example"), "maildir")
        config = load(domain=["a.example", "b.example"],
                      delivery=["lmtp:tcp:127.0.0.1:24", "b.example=maildir"])
        self.assertEqual(backendFor(config.delivery, "a.example"), "lmtp:tcp:127.0.0.1:24")
        self.assertEqual(backendFor(config.delivery, "b.example"), "maildir")

    def test_endpointMayHoldEquals(self):
        """
        A Twisted endpoint with keyword arguments (C{host=...}) is not taken
        for a domain.
        """
        config = load(delivery=["lmtp:tcp:host=127.0.0.1:port=24"])
        self.assertEqual(config.delivery, ((None, "lmtp:tcp:host=127.0.0.1:port=24"),))

    def test_lmtpEndpoint(self):
        """
        The endpoint of an LMTP backend; none for Maildirs.
        """
        self.assertEqual(lmtpEndpoint("lmtp:unix:/run/dovecot/lmtp"), "unix:/run/dovecot/lmtp")
        self.assertIsNone(lmtpEndpoint("maildir"))

    def test_bad(self):
        """
        A backend that is no plugin name, a domain given twice or two
        entries without a domain, and a domain that is not local each stop
        start-up with one line naming the option (an argument a backend
        refuses is the plugin's to say, when it is made:
        tests/test_backend_plugins.py).
        """
        for entries in (
            ["pigeon:"],
            ["9lives"],
            ["lmtp:"],
            ["maildir", "lmtp:tcp:127.0.0.1:24"],
            ["localhost=maildir", "localhost=lmtp:tcp:127.0.0.1:24"],
            ["elsewhere.example=maildir"],
        ):
            with self.assertRaises(ConfigError) as caught:
                load(delivery=entries)
            self.assertTrue(str(caught.exception).startswith("--delivery:"), str(caught.exception))


class MaildirModeOptionTests(SynchronousTestCase):
    """
    C{--maildir-mode MODE}.
    """

    def test_values(self):
        """
        The default is C{0600}; group-readable modes are accepted, in octal.
        """
        self.assertEqual(load().maildirMode, 0o600)
        self.assertEqual(load(maildir_mode="0660").maildirMode, 0o660)
        self.assertEqual(load(maildir_mode="640").maildirMode, 0o640)

    def test_bad(self):
        """
        A mode that is not octal, lets others write, has execute bits or
        denies the owner is refused.
        """
        for mode in ("rw", "0666", "0700", "0400", "0602"):
            self.assertRaises(ConfigError, load, maildir_mode=mode)


class QueuedViaTests(SynchronousTestCase):
    """
    A queued recipient delivered over LMTP records its server.
    """

    def test_roundTrip(self):
        """
        C{via} survives the env file; a relayed recipient has none and its
        entry is written as before.
        """
        message = QueuedMessage(
            id="0A1B2C3D4E", created=1.0, sender="", size=10, clientHost="192.0.2.1",
            heloName="client.example",
            recipients=[
                QueuedRecipient("alice@example.org", via="unix:/run/dovecot/lmtp"),
                QueuedRecipient("bob@example.net"),
            ],
        )
        data = encodeMessage(message)
        self.assertEqual(data.count(b'"via"'), 1)
        decoded = decodeMessage(data, "0A1B2C3D4E")
        self.assertEqual([r.via for r in decoded.recipients], ["unix:/run/dovecot/lmtp", None])
