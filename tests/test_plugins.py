"""
Tests for the validator plugin API: the built-ins are found as plugins, and
a third party's module in any C{smtpmx/plugins/} directory on C{sys.path}
is found too.
"""

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap

from twisted.plugin import getPlugins
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

import smtpmx.plugins
from smtpmx.address import Address
from smtpmx.config import Config
from smtpmx.interfaces import IRecipientValidator, IRecipientValidatorFactory
from smtpmx.testing import runAtOnce, validationContext
from smtpmx.validation import Accept, ValidationContext
from smtpmx.validators import findValidatorFactories
from smtpmx.validators.mailbox import MailboxValidator
from tests.denybob import SOURCE, writeDenyBob

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

class BuiltinPluginTests(SynchronousTestCase):
    """
    The built-in validators are plugins like any other.
    """

    def test_found(self):
        """
        C{getPlugins(IRecipientValidatorFactory, smtpmx.plugins)} finds
        C{mailbox}, C{any} and C{aliases}.
        """
        names = {p.name for p in getPlugins(IRecipientValidatorFactory, smtpmx.plugins)}
        self.assertTrue({"mailbox", "any", "aliases"} <= names, names)

    def test_interfaces(self):
        """
        Each built-in factory provides the factory interface, has a
        one-line description, and makes a validator.
        """
        for factory in findValidatorFactories():
            if factory.name not in ("mailbox", "any"):
                continue
            verifyObject(IRecipientValidatorFactory, factory)
            self.assertNotIn("\n", factory.description)
            verifyObject(IRecipientValidator, factory.makeValidator(None))

    def test_noArgument(self):
        """
        C{mailbox} and C{any} take no argument; C{aliases} needs one.
        """
        byName = {f.name: f for f in findValidatorFactories()}
        self.assertRaises(ValueError, byName["mailbox"].makeValidator, "x")
        self.assertRaises(ValueError, byName["any"].makeValidator, "x")
        self.assertRaises(ValueError, byName["aliases"].makeValidator, None)


class ThirdPartyPluginTests(SynchronousTestCase):
    """
    A third-party validator needs only a module in an C{smtpmx/plugins/}
    directory on C{sys.path}.
    """

    def test_found(self):
        """
        A module in another C{smtpmx/plugins/} directory (with no
        C{__init__.py}) on C{sys.path} is found next to the built-ins and
        usable by name.

        A fresh interpreter is used, so that this test's C{sys.path} and
        plugin caches never leak into other tests.
        """
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory, True)
        writeDenyBob(directory)
        script = textwrap.dedent("""\
            from smtpmx.address import Address
            from smtpmx.validators import findValidatorFactories, makeValidatorChain
            print(sorted(f.name for f in findValidatorFactories()))
            chain = makeValidatorChain(["denybob"])
            result = []
            chain.validate(None, Address("Bob", "example.org")).addBoth(result.append)
            print(result[0][0], result[0][1].code)
        """)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([ROOT, directory])
        output = subprocess.run(
            [sys.executable, "-c", script], env=env, capture_output=True,
            text=True, cwd=directory, timeout=60,
        )
        self.assertEqual(output.returncode, 0, output.stderr)
        lines = output.stdout.splitlines()
        self.assertEqual(lines[0], "['aliases', 'any', 'denybob', 'lmtp', 'mailbox', 'policy']")
        self.assertEqual(lines[1], "denybob 550")
        self.assertFalse(os.path.exists(os.path.join(directory, "smtpmx", "__init__.py")))


class ValidationContextTests(SynchronousTestCase):
    """
    Validators written against the README's API work unchanged with the
    frozen L{smtpmx.validation.ValidationContext} the server passes, built
    for tests by L{smtpmx.testing.validationContext}.
    """

    def test_denyBob(self):
        """
        The README's DenyBob, unchanged, gives its verdicts when asked with
        a context.
        """
        namespace: dict = {}
        exec(compile(SOURCE, "denybob.py", "exec"), namespace)
        validator = namespace["DenyBob"]()
        context = validationContext()
        self.assertEqual(validator.validateRecipient(context, Address("Bob", "example.org")).code, 550)
        self.assertIsNone(validator.validateRecipient(context, Address("alice", "example.org")))

    def test_builtinMailbox(self):
        """
        The built-in C{mailbox} validator reads C{config} and calls
        C{runBlocking} on the context.
        """
        root = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, root, True)
        os.makedirs(os.path.join(root, "example.org", "alice"))
        calls = []

        def runBlocking(f, *args):
            calls.append(f)
            return runAtOnce(f, *args)

        context = validationContext(
            Config(domains=("example.org",), maildirRoot=root), runBlocking=runBlocking
        )
        validator = MailboxValidator()
        accepted = self.successResultOf(validator.validateRecipient(context, Address("alice", "example.org")))
        self.assertIsInstance(accepted, Accept)
        self.assertIsNone(self.successResultOf(validator.validateRecipient(context, Address("carol", "example.org"))))
        self.assertEqual(len(calls), 2)

    def test_defaults(self):
        """
        L{validationContext} fills in a plain client, a default L{Config}
        and a C{runBlocking} that runs at once.
        """
        context = validationContext(reversePath=Address("a", "remote.example"))
        self.assertIsInstance(context, ValidationContext)
        self.assertEqual((context.clientHost, context.heloName), ("127.0.0.1", "client.example"))
        self.assertEqual(str(context.reversePath), "a@remote.example")
        self.assertEqual(context.config, Config())
        self.assertEqual(self.successResultOf(context.runBlocking(len, "ab")), 2)
