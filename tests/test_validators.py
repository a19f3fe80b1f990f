"""
Tests for the built-in recipient validators: C{mailbox}, C{any} and
C{aliases:PATH}.
"""

import os
import shutil
import tempfile

import pytest
from hypothesis import given, strategies as st
from twisted.internet.defer import Deferred, succeed
from twisted.trial.unittest import SynchronousTestCase

from smtpmx.address import Address
from smtpmx.config import Config
from smtpmx.delivery.maildir import mailboxPath
from smtpmx.envelope import LocalMailbox
from smtpmx.validation import Accept, Reject
from smtpmx.validators.aliases import AliasesValidator, parseAliases
from smtpmx.validators.anylocal import AnyLocalValidator
from smtpmx.validators.mailbox import MailboxValidator


class FakeSession:
    """
    The session a validator sees; C{runBlocking} runs the function at once
    and records it.
    """

    def __init__(self, config: Config) -> None:
        self.config = config
        self.clientHost = "192.0.2.1"
        self.heloName = "client.example"
        self.reversePath = None
        self.blockingCalls = []
        self.blockingArguments = []

    def runBlocking(self, f, *args, **kwargs) -> Deferred:
        """
        Run C{f} now.
        """
        self.blockingCalls.append(f)
        self.blockingArguments.append(args)
        return succeed(f(*args, **kwargs))


def verdictOf(testCase, result):
    """
    The verdict, whether given at once or through a fired Deferred.
    """
    if isinstance(result, Deferred):
        return testCase.successResultOf(result)
    return result


class MaildirFixture:
    """
    A Maildir root in a temporary directory and a session using it.
    """

    def setUp(self):
        """
        Make the root, with C{example.org/alice} already there.
        """
        self.root = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.root, True)
        os.makedirs(os.path.join(self.root, "example.org", "alice", "new"))
        self.session = FakeSession(
            Config(domains=("example.org",), maildirRoot=self.root)
        )


class MailboxValidatorTests(MaildirFixture, SynchronousTestCase):
    """
    C{mailbox} accepts a local recipient whose Maildir exists.
    """

    def check(self, localpart, domain="example.org"):
        """
        The verdict on C{localpart@domain}.
        """
        return verdictOf(self, MailboxValidator().validateRecipient(
            self.session, Address(localpart, domain)))

    def test_existing(self):
        """
        A recipient whose Maildir exists is accepted, looked up in the
        thread pool.
        """
        self.assertIsInstance(self.check("alice"), Accept)
        self.assertEqual(len(self.session.blockingCalls), 1)

    def test_case(self):
        """
        The local part and the domain match whatever their case, and the
        delimiter tag is stripped.
        """
        self.assertIsInstance(self.check("Alice", "EXAMPLE.org"), Accept)
        self.assertIsInstance(self.check("alice+lists"), Accept)

    def test_missing(self):
        """
        A local recipient without a Maildir gets no opinion (the chain then
        refuses it).
        """
        self.assertIsNone(self.check("bob"))

    def test_remote(self):
        """
        A recipient of another domain gets no opinion, and no disk look-up.
        """
        self.assertIsNone(self.check("alice", "example.net"))
        self.assertEqual(self.session.blockingCalls, [])

    @pytest.mark.rfc("3463", "3")
    def test_unsafe(self):
        """
        A local part that cannot be a directory name is refused 550 5.1.3
        without touching the disk.
        """
        for localpart in ('"../etc"', ".hidden", '"a/b"'):
            verdict = self.check(localpart)
            self.assertIsInstance(verdict, Reject)
            self.assertEqual((verdict.code, verdict.enhanced), (550, "5.1.3"))
        self.assertEqual(self.session.blockingCalls, [])

    def test_fileIsNoMaildir(self):
        """
        A plain file where the Maildir would be is no Maildir.
        """
        open(os.path.join(self.root, "example.org", "carol"), "w").close()
        self.assertIsNone(self.check("carol"))

    def test_pathIsTheStores(self):
        """
        The directory looked for is the one the Maildir store delivers to,
        from the same checked function.
        """
        self.check("Alice+tag")
        self.assertEqual(
            self.session.blockingArguments,
            [(mailboxPath(self.root, LocalMailbox("example.org", "alice")),)],
        )

    @pytest.mark.rfc("3463", "3")
    def test_unsafeDomain(self):
        """
        A local domain that cannot be a directory under the root (an
        operator's mistake) makes its recipients refused 550 5.1.3, never
        looked up outside the root.
        """
        self.session.config = Config(domains=("example.org", ".."), maildirRoot=self.root)
        verdict = self.check("alice", "..")
        self.assertEqual((verdict.code, verdict.enhanced), (550, "5.1.3"))
        self.assertEqual(self.session.blockingCalls, [])

    @given(
        st.lists(
            st.sampled_from(["..", ".", "/", "\\", "\x00", "\x7f", "\n", " ", "a", "B", "+", "-", "\u00e9"]),
            min_size=1,
            max_size=12,
        ).map("".join)
    )
    def test_hostileNeverOutsideRoot(self, name):
        """
        Whatever the local part, the file system is asked only about a
        directory strictly under the domain's directory in the root; a
        local part that cannot name one is refused 550 5.1.3 unasked.
        """
        self.session.blockingCalls = []
        self.session.blockingArguments = []
        quoted = '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
        verdict = self.check(quoted)
        domain = os.path.join(self.root, "example.org")
        for (path,) in self.session.blockingArguments:
            self.assertEqual(os.path.dirname(path), domain)
            self.assertNotIn(os.path.basename(path), ("", ".", ".."))
        if not self.session.blockingArguments:
            self.assertEqual((verdict.code, verdict.enhanced), (550, "5.1.3"))


class AnyLocalValidatorTests(MaildirFixture, SynchronousTestCase):
    """
    C{any} accepts every local recipient.
    """

    def check(self, localpart, domain="example.org"):
        """
        The verdict on C{localpart@domain}.
        """
        return verdictOf(self, AnyLocalValidator().validateRecipient(
            self.session, Address(localpart, domain)))

    def test_local(self):
        """
        Any local recipient is accepted, with or without a Maildir.
        """
        self.assertIsInstance(self.check("nobody-yet"), Accept)
        self.assertIsInstance(self.check("Alice", "Example.Org"), Accept)

    def test_remote(self):
        """
        Another domain gets no opinion.
        """
        self.assertIsNone(self.check("alice", "example.net"))

    @pytest.mark.rfc("3463", "3")
    def test_unsafe(self):
        """
        An unsafe local part is refused 550 5.1.3.
        """
        verdict = self.check('"a\\\\b"')
        self.assertEqual((verdict.code, verdict.enhanced), (550, "5.1.3"))


class LmtpDomainTests(MaildirFixture, SynchronousTestCase):
    """
    C{mailbox} and C{any} have no opinion on a domain delivered over LMTP:
    its mailboxes live in the LMTP server, not under the Maildir root
    (docs/storage.rst).
    """

    def setUp(self):
        """
        C{example.org} over LMTP, C{files.example} in Maildirs, with a
        Maildir for alice in both (as a leftover from before the switch).
        """
        super().setUp()
        os.makedirs(os.path.join(self.root, "files.example", "alice", "new"))
        self.session = FakeSession(
            Config(
                domains=("example.org", "files.example"),
                maildirRoot=self.root,
                delivery=(("example.org", "lmtp:unix:/run/dovecot/lmtp"),),
            )
        )

    def verdicts(self, localpart, domain):
        """
        The verdicts of C{mailbox} and C{any} on C{localpart@domain}.
        """
        address = Address(localpart, domain)
        return [
            verdictOf(self, v.validateRecipient(self.session, address))
            for v in (MailboxValidator(), AnyLocalValidator())
        ]

    def test_noOpinionOnLmtpDomain(self):
        """
        A recipient of the LMTP domain gets no opinion from either, even
        when a Maildir with its name exists, and nothing is looked up.
        """
        self.assertEqual(self.verdicts("alice", "Example.ORG"), [None, None])
        self.assertEqual(self.verdicts("nobody", "example.org"), [None, None])
        self.assertEqual(self.session.blockingCalls, [])

    def test_maildirDomainUnchanged(self):
        """
        Beside it, a Maildir domain is judged as before.
        """
        mailbox, anyLocal = self.verdicts("alice", "files.example")
        self.assertIsInstance(mailbox, Accept)
        self.assertIsInstance(anyLocal, Accept)


ALIASES = """\
# The aliases of example.org.
info@example.org: alice@example.org, bob@elsewhere.example   # two targets
Sales@Example.org: <carol@example.org>

bob@example.org: robert@example.net
@example.org: postmaster@example.org
"""


class Clock:
    """
    A settable monotonic clock.
    """

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class AliasesValidatorTests(SynchronousTestCase):
    """
    C{aliases:PATH} rewrites the recipients listed in a file.
    """

    def setUp(self):
        """
        An aliases file in a temporary directory.
        """
        self.dir = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.path = os.path.join(self.dir, "aliases")
        self.writeAliases(ALIASES)
        self.clock = Clock()
        self.validator = AliasesValidator(self.path, now=self.clock)
        self.session = FakeSession(Config(domains=("example.org",)))

    def writeAliases(self, text, mtime=None):
        """
        Write the aliases file; give it a distinct modification time.
        """
        with open(self.path, "w") as f:
            f.write(text)
        if mtime is not None:
            os.utime(self.path, (mtime, mtime))

    def targets(self, address):
        """
        The addresses C{address} is rewritten to, or L{None}.
        """
        local, _, domain = address.rpartition("@")
        verdict = verdictOf(self, self.validator.validateRecipient(
            self.session, Address(local, domain)))
        if verdict is None:
            return None
        self.assertIsInstance(verdict, Accept)
        return [str(a) for a in verdict.deliverTo]

    def test_exact(self):
        """
        A listed address is accepted and rewritten to its targets.
        """
        self.assertEqual(self.targets("info@example.org"),
                         ["alice@example.org", "bob@elsewhere.example"])

    def test_case(self):
        """
        Keys match whatever the case on either side.
        """
        self.assertEqual(self.targets("INFO@EXAMPLE.ORG"),
                         ["alice@example.org", "bob@elsewhere.example"])
        self.assertEqual(self.targets("sales@example.org"), ["carol@example.org"])

    def test_delimiter(self):
        """
        A tagged address without its own entry matches the entry without
        the tag.
        """
        self.assertEqual(self.targets("bob+news@example.org"), ["robert@example.net"])

    def test_exactBeatsCatchAll(self):
        """
        An address's own entry wins over its domain's catch-all, which takes
        every other address of the domain.
        """
        self.assertEqual(self.targets("bob@example.org"), ["robert@example.net"])
        self.assertEqual(self.targets("anyone@example.org"), ["postmaster@example.org"])

    def test_noMatch(self):
        """
        An address of a domain the file does not mention gets no opinion.
        """
        self.assertIsNone(self.targets("info@example.net"))

    def test_reload(self):
        """
        A change to the file is seen at the first recipient more than a
        second later, the file being looked at in the thread pool.
        """
        self.writeAliases("info@example.org: dave@example.org\n", mtime=1)
        self.clock.now += 0.5
        self.assertEqual(self.targets("info@example.org"),
                         ["alice@example.org", "bob@elsewhere.example"])
        self.assertEqual(self.session.blockingCalls, [])
        self.clock.now += 1
        self.assertEqual(self.targets("info@example.org"), ["dave@example.org"])
        self.assertEqual(len(self.session.blockingCalls), 1)
        self.assertIsNone(self.targets("anyone@example.org"))

    def test_reloadFails(self):
        """
        A new version of the file that cannot be parsed is logged and the
        old table kept.
        """
        self.writeAliases("this line is broken\n", mtime=1)
        self.clock.now += 2
        self.assertEqual(self.targets("bob@example.org"), ["robert@example.net"])
        self.assertEqual(len(self.flushLoggedErrors()), 0)

    def test_removedFile(self):
        """
        A file that disappears leaves the old table in force.
        """
        os.remove(self.path)
        self.clock.now += 2
        self.assertEqual(self.targets("bob@example.org"), ["robert@example.net"])

    def test_unchanged(self):
        """
        An unchanged file is not read again.
        """
        table = self.validator.table
        self.clock.now += 2
        self.targets("bob@example.org")
        self.assertIs(self.validator.table, table)

    def test_unreadableAtStart(self):
        """
        A file that cannot be read stops start-up.
        """
        e = self.assertRaises(ValueError, AliasesValidator,
                              os.path.join(self.dir, "missing"))
        self.assertIn("missing", str(e))

    def test_malformedAtStart(self):
        """
        A malformed file stops start-up with the line number.
        """
        self.writeAliases("# fine\ninfo@example.org: alice@example.org\nbroken\n")
        e = self.assertRaises(ValueError, AliasesValidator, self.path)
        self.assertIn("line 3", str(e))


class ParseAliasesTests(SynchronousTestCase):
    """
    The aliases file format.
    """

    def assertBadLine(self, text, number):
        """
        Parsing C{text} fails naming line C{number}.
        """
        e = self.assertRaises(ValueError, parseAliases, text, "aliases")
        self.assertIn(f"aliases, line {number}:", str(e))

    def test_comments(self):
        """
        Comments and blank lines are ignored.
        """
        table = parseAliases("# a comment\n\n   \n  # indented\na@b.example: c@d.example # tail\n")
        self.assertEqual(list(table.exact), [("a", "b.example")])

    def test_errors(self):
        """
        Lines without a colon, targets or valid addresses are errors.
        """
        self.assertBadLine("a@b.example c@d.example\n", 1)
        self.assertBadLine("\na@b.example:\n", 2)
        self.assertBadLine("a@b.example: not an address\n", 1)
        self.assertBadLine("nodomain: c@d.example\n", 1)
        self.assertBadLine("@bad domain: c@d.example\n", 1)
        self.assertBadLine("a@b.example: c@d.example\nA@B.example: e@f.example\n", 2)

    def test_quoted(self):
        """
        A quoted local part may hold a colon or a comma.
        """
        table = parseAliases('"a:b"@example.org: "c,d"@example.org\n')
        self.assertEqual(
            [str(a) for a in table.exact[("a:b", "example.org")]], ['"c,d"@example.org']
        )
