"""
Tests for L{smtpmx.options}, the one table of options, and for what is
derived from it: the L{Config} type, C{--help}, and the documentation
written by L{smtpmx.optiondocs} (docs/options.rst, README.rst's tables,
C{etc/smtpmx.toml}), which must never drift from the table.
"""

import dataclasses
import io
import os
import re
import shutil
import sys
import tempfile
import tomllib

from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from smtpmx import optiondocs
from smtpmx.config import Config, ConfigError, checkOption, loadConfig
from smtpmx.optionrules import Given
from smtpmx.options import (
    FILE_OPTIONS,
    OPTIONS,
    Option,
    Section,
    configType,
    fileKeys,
    optionNamed,
    plainText,
)
from smtpmx.optiontypes import BOOLEAN, POSITIVE_INT, LoadContext
from smtpmx.relay.tlspolicy import TLSPolicy
from smtpmx.tap import Options, TableOptions

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONTEXT = LoadContext("/srv", lambda: "mx.example.org")


def read(*path: str) -> str:
    """
    The text of a file of the checkout.
    """
    with open(os.path.join(ROOT, *path), encoding="utf-8") as f:
        return f.read()


def load(fileOptions=None, flagOptions=None):
    """
    L{loadConfig} from C{/srv} with a fixed host name.
    """
    return loadConfig(fileOptions or {}, flagOptions or {}, cwd="/srv",
                      getfqdn=lambda: "mx.example.org")


def flat(text: str) -> str:
    """
    C{text} without white space, so that wrapped lines (broken after a
    space or a hyphen) compare like one.
    """
    return "".join(text.split())


class TableTests(SynchronousTestCase):
    """
    The table itself is consistent.
    """

    def test_unique(self):
        """
        No two options share a name, a TOML key or a configuration field.
        """
        names = [o.name for o in OPTIONS]
        self.assertEqual(len(names), len(set(names)))
        keys = [k for o in FILE_OPTIONS for k in (o.name, *o.fileAliases)]
        self.assertEqual(len(keys), len(set(keys)))
        self.assertEqual(set(keys), set(fileKeys()))
        fields = [o.field for o in OPTIONS if o.field is not None]
        self.assertEqual(len(fields), len(set(fields)))

    def test_described(self):
        """
        Every option says what it does in a sentence, and every option of
        the file has a kind of value.
        """
        for option in OPTIONS:
            self.assertTrue(option.help.endswith("."), option.name)
            self.assertNotIn("SPEC", option.help + option.details, option.name)
        for option in FILE_OPTIONS:
            self.assertIsNotNone(option.valueType, option.name)

    def test_defaultsRoundTrip(self):
        """
        Every default, written as the docs and C{--help} show it and given
        back as a flag, is accepted and gives the default itself: the
        defaults shown are values the server takes.
        """
        for option in FILE_OPTIONS:
            if option.default is None or option.defaultText is not None:
                continue
            show = option.valueType.show
            if option.repeatable:
                written = [show(v) for v in option.default]
            else:
                written = show(option.default)
            checked = checkOption(option, Given(written, option.flag, "flag"), CONTEXT)
            expected = checkOption(option, None, CONTEXT)
            self.assertEqual(checked, expected, option.name)

    def test_optionNamed(self):
        """
        An option is found by its name; an unknown name is a L{KeyError}.
        """
        self.assertEqual(optionNamed("max-hops").field, "maxHops")
        self.assertRaises(KeyError, optionNamed, "max-hop")

    def test_relayTlsChoices(self):
        """
        The relay TLS modes are the values of L{TLSPolicy}, and the
        default is L{TLSPolicy.MAY}.
        """
        option = optionNamed("relay-tls")
        self.assertEqual(TLSPolicy(Config().relayTls), TLSPolicy.MAY)
        for policy in TLSPolicy:
            self.assertEqual(load({}, {"relay-tls": policy.value}).relayTls, policy.value)
        self.assertIn("none, may, verify", option.valueType.description)
        e = self.assertRaises(ConfigError, load, {}, {"relay-tls": "sometimes"})
        self.assertIn("must be one of none, may, verify", str(e))


class ConfigTypeTests(SynchronousTestCase):
    """
    L{Config} is derived from the table.
    """

    def test_fields(self):
        """
        L{Config} has exactly the fields of the table, in its order, with
        its defaults, and is frozen.
        """
        fields = dataclasses.fields(Config)
        table = [o for o in FILE_OPTIONS if o.field is not None]
        self.assertEqual([f.name for f in fields], [o.field for o in table])
        self.assertEqual([f.default for f in fields], [o.default for o in table])
        self.assertRaises(dataclasses.FrozenInstanceError, setattr, Config(), "maxHops", 1)
        self.assertEqual(Config.__module__, "smtpmx.config")

    def test_loadedDefaults(self):
        """
        Loaded without options, every field has the table's default, but
        for the paths (made absolute) and the host name (the host's).
        """
        config = load()
        for option in FILE_OPTIONS:
            if option.field is None:
                continue
            value = getattr(config, option.field)
            if option.name in ("maildir-root", "queue-dir"):
                self.assertEqual(value, "/srv/" + option.default)
            elif option.name == "hostname":
                self.assertEqual(value, "mx.example.org")
            else:
                self.assertEqual(value, option.default, option.name)


class HelpTests(SynchronousTestCase):
    """
    C{twistd smtpmx --help} shows every option of the table with its
    default.
    """

    def test_everyOption(self):
        """
        Each option is in C{--help}, with its help text and its default.
        """
        text = flat(str(Options()))
        for option in OPTIONS:
            self.assertIn(f"--{option.name}", text)
            self.assertIn(flat(plainText(option.help)), text)
            if option.valueType is not None or option.metavar:
                self.assertIn(flat(f"default: {plainText(option.showDefault())}"), text)


# A made-up section, as a later issue adds one: a boolean flag and a value.
LATER = Section("Later", "Options a later issue adds.", (
    Option("spf-reject", "", "Refuse an SPF fail.", BOOLEAN, "spfReject", False),
    Option("auth-timeout", "SECONDS", "Time budget of the lookups.", POSITIVE_INT,
           "authTimeout", 10),
))


class LaterOptions(TableOptions):
    """
    The command line of the made-up table.
    """

    table = LATER.options


class OnePlaceTests(SynchronousTestCase):
    """
    An option added to the table alone is a flag, a key, a field and a
    documented entry; nothing else needs to change.
    """

    def test_commandLine(self):
        """
        A boolean option is a flag without value, a valued one a
        parameter; both reach L{loadConfig} by their names.
        """
        options = LaterOptions()
        options.parseOptions(["--spf-reject", "--auth-timeout", "5"])
        self.assertEqual(options.flagOptions(), {"spf-reject": True, "auth-timeout": "5"})
        options = LaterOptions()
        options.parseOptions([])
        self.assertEqual(options.flagOptions(), {})
        self.assertIn("--spf-reject", str(options))

    def test_configType(self):
        """
        The fields of the configuration type come from the table.
        """
        kind = configType(LATER.options)
        self.assertEqual(kind(), kind(spfReject=False, authTimeout=10))

    def test_checks(self):
        """
        The values are checked by the option's type, with one-line errors.
        """
        spf, timeout = LATER.options
        self.assertIs(checkOption(spf, Given(True, "--spf-reject", "flag"), CONTEXT), True)
        self.assertIs(checkOption(spf, None, CONTEXT), False)
        e = self.assertRaises(ConfigError, checkOption, spf,
                              Given("yes", "'spf-reject' in f.toml", "file"), CONTEXT)
        self.assertEqual(str(e), "'spf-reject' in f.toml: expected true or false, not 'yes'")
        self.assertEqual(checkOption(timeout, Given("5", "--auth-timeout", "flag"), CONTEXT), 5)

    def test_documented(self):
        """
        The docs, the README tables and the example file list it.
        """
        self.assertIn("``--spf-reject``", optiondocs.optionsReference((LATER,)))
        self.assertIn("``--auth-timeout SECONDS``", optiondocs.readmeTables((LATER,)))
        example = optiondocs.exampleFile((LATER,), {})
        self.assertIn("# spf-reject = false\n", example)
        self.assertIn("# auth-timeout = 10\n", example)

    def test_actionNeedsMethod(self):
        """
        An action of the table (an option without value that the command
        line handles itself) must have its C{opt_} method.
        """
        action = Option("list-filters", "", "List the filters.", None, commandLineOnly=True)

        def define():
            """
            Define a command line whose table has an action without its
            method.
            """

            class Broken(TableOptions):
                table = (action,)

        self.assertRaises(TypeError, define)


class DriftTests(SynchronousTestCase):
    """
    docs/options.rst, README.rst's option tables and C{etc/smtpmx.toml}
    say what the table says; when one drifts,
    C{python -m smtpmx.optiondocs --write} brings it back.
    """

    def test_generated(self):
        """
        The three files are what the table gives today.
        """
        self.assertEqual(optiondocs.driftedFiles(ROOT), [],
                         "out of date: run python -m smtpmx.optiondocs --write")

    def test_checkCommand(self):
        """
        C{python -m smtpmx.optiondocs --check} agrees, and says which file
        drifted when one did.
        """
        self.assertEqual(optiondocs.main(["--check", "--root", ROOT]), 0)

    def test_exampleFileDefaults(self):
        """
        Every key of the file is in C{etc/smtpmx.toml} with its default
        commented out, and those defaults, uncommented, load as the
        defaults.
        """
        text = read("etc", "smtpmx.toml")
        defaults = {}
        for option in FILE_OPTIONS:
            match = re.search(rf"^# {re.escape(option.name)} = (.*)$", text, re.M)
            self.assertIsNotNone(match, option.name)
            value = tomllib.loads(f"v = {match.group(1)}")["v"]
            if isinstance(value, str) and value.startswith("<"):
                self.assertEqual(value, f"<{option.showDefault()}>")
            else:
                defaults[option.name] = value
        self.assertEqual(load(defaults), load())

    def test_exampleNotes(self):
        """
        A note of the example is a comment right above the value it
        explains, so that the reader of C{etc/smtpmx.toml} learns why it
        is set; a value without a note, and a note without a value, stand
        alone.
        """
        example = optiondocs.exampleFile(
            (LATER,), {"spf-reject": True}, {"spf-reject": "Why: SPF.", "auth-timeout": "Never."}
        )
        self.assertIn("# spf-reject = false\n# Why: SPF.\nspf-reject = true\n", example)
        self.assertNotIn("Never.", example)
        self.assertNotIn("# Why", optiondocs.exampleFile((LATER,), {"spf-reject": True}))

    def test_recommendedSetup(self):
        """
        The shipped example is a small domain's recommended setup
        (README.rst, "Keeping spam out"): the rspamd filter, and postgrey
        asked before the validators that know the mailboxes, since the
        first verdict wins.
        """
        path = os.path.join(ROOT, "etc", "smtpmx.toml")
        with open(path, "rb") as f:
            example = tomllib.load(f)
        self.assertEqual(example["filter"], ["rspamd"])
        self.assertEqual(example["validator"][0], "policy:tcp:127.0.0.1:10023")
        self.assertEqual(example["validator"][-1], "mailbox")
        self.assertIn("IMAP folder Junk", read("etc", "smtpmx.toml"))

    def test_referenceEntries(self):
        """
        docs/options.rst has an entry for every option, with its TOML key
        and its default.
        """
        text = read("docs", "options.rst")
        for option in OPTIONS:
            term = f"``--{option.name}{' ' + option.metavar if option.metavar else ''}``"
            self.assertIn(f"\n{term}\n", text)
            entry = text.split(f"\n{term}\n", 1)[1].split("\n\n``--", 1)[0]
            if not option.commandLineOnly:
                self.assertIn(f":TOML key: ``{option.name}``", entry)
            if option.valueType is not None:
                self.assertIn(f":Default: {optiondocs.defaultInProse(option)}", entry)
        self.assertNotIn("SPEC", text)

    def test_readmeRows(self):
        """
        README.rst's tables have a row for every option with its default,
        and cite no file outside the repository.
        """
        text = read("README.rst")
        block = text[text.index(optiondocs.README_START):text.index(optiondocs.README_END)]
        for option in OPTIONS:
            self.assertIn(f"* - ``--{option.name}", block)
        self.assertIn("``26214400``", block)
        self.assertNotIn("SPEC", block)

    def test_writeRepairs(self):
        """
        C{--write} puts back a file that drifted (a default edited by
        hand), and C{--check} then passes.
        """
        root = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, root, True)
        os.makedirs(os.path.join(root, "etc"))
        shutil.copy(os.path.join(ROOT, "README.rst"), root)
        with open(os.path.join(root, "etc", "smtpmx.toml"), "w") as f:
            f.write(read("etc", "smtpmx.toml").replace("# max-hops = 50", "# max-hops = 40"))
        stderr = io.StringIO()
        self.patch(sys, "stderr", stderr)
        self.assertEqual(optiondocs.main(["--check", "--root", root]), 1)
        self.assertIn("smtpmx.toml", stderr.getvalue())
        self.assertIn("options.rst", stderr.getvalue())
        self.patch(sys, "stdout", io.StringIO())
        self.assertEqual(optiondocs.main(["--write", "--root", root]), 0)
        self.assertEqual(optiondocs.main(["--check", "--root", root]), 0)


class ParsingTests(SynchronousTestCase):
    """
    Twisted's option parser, driven by the table.
    """

    def test_unknownFlag(self):
        """
        A flag that is no option is a usage error.
        """
        self.assertRaises(usage.UsageError, Options().parseOptions, ["--no-such-option", "5"])
