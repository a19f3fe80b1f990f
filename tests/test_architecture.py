"""
The shape of the code base, checked: the rules of C{docs/architecture.rst}
that a reviewer would otherwise have to hold in their head.

Each test reads the source of C{smtpmx/} (never imports it), so a broken
rule is reported with the file and line that broke it.
"""

from __future__ import annotations

import ast
import os
import re
from typing import Iterator

from twisted.trial.unittest import SynchronousTestCase

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "smtpmx")

# No module grows past this many lines: past it, a module does more than one
# job (docs/architecture.rst).
MAX_MODULE_LINES = 700

# The layers of docs/architecture.rst, from the bottom: a module imports
# only modules of its own layer or of a layer below.  Every module must be
# placed here (a package's __init__ counts as its own module).
LAYERS = (
    (
        "values",
        (
            "smtpmx", "smtpmx.reply", "smtpmx.address", "smtpmx.envelope",
            "smtpmx.transactionlog",
            "smtpmx.headers", "smtpmx.body", "smtpmx.bounce", "smtpmx.interfaces",
            "smtpmx.options", "smtpmx.optionrules", "smtpmx.optiontypes", "smtpmx.config", "smtpmx.durable",
            "smtpmx.relay", "smtpmx.relay.stuffing", "smtpmx.relay.retry",
            "smtpmx.relay.tlspolicy", "smtpmx.relay.queueformat", "smtpmx.delivery",
            "smtpmx.backends", "smtpmx.auth", "smtpmx.auth.results",
            "smtpmx.auth.bodyhash",
        ),
    ),
    (
        "storage",
        (
            "smtpmx.threadrunner", "smtpmx.streaming", "smtpmx.delivery.maildir", "smtpmx.relay.queue",
            "smtpmx.relay.intake", "smtpmx.relay.groupcommit", "smtpmx.routing", "smtpmx.freespace",
        ),
    ),
    (
        "policy",
        (
            "smtpmx.validation", "smtpmx.filtering", "smtpmx.pluginlookup", "smtpmx.filterchain",
            "smtpmx.backendlookup",
            "smtpmx.filterstore", "smtpmx.access", "smtpmx.tls", "smtpmx.validators",
            "smtpmx.validators.mailbox", "smtpmx.validators.anylocal",
            "smtpmx.validators.aliases", "smtpmx.validators.policy", "smtpmx.validators.lmtp",
            # The client's line layer, shared by the relay and the lmtp
            # validator; it imports only values.
            "smtpmx.relay.protocol", "smtpmx.plugins",
            "smtpmx.plugins.builtin_validators", "smtpmx.plugins.builtin_filters",
            "smtpmx.filters", "smtpmx.filters.rspamd",
            # Sender authentication (docs/authentication.rst).
            "smtpmx.auth.dns", "smtpmx.auth.spf", "smtpmx.auth.dkim",
            "smtpmx.auth.dmarc", "smtpmx.auth.checker",
        ),
    ),
    ("dialogue", ("smtpmx.session", "smtpmx.replywriter", "smtpmx.server")),
    (
        "relay",
        (
            "smtpmx.relay.nexthop", "smtpmx.relay.pool",
            "smtpmx.relay.request", "smtpmx.relay.transaction", "smtpmx.relay.service",
            "smtpmx.relay.bouncing", "smtpmx.relay.backlog", "smtpmx.relay.queuefigures",
            # Word of new messages between the workers of --workers.
            "smtpmx.relay.wakeup",
            # The built-in delivery backends: lmtp uses the relay's values.
            "smtpmx.plugins.builtin_backends",
        ),
    ),
    # Watching the server at work: what it counts, serves and logs.
    ("operations", ("smtpmx.metrics", "smtpmx.webstatus", "smtpmx.jsonlog", "smtpmx.textlog")),
    (
        "entry",
        ("smtpmx.tap", "smtpmx.queuecli", "smtpmx.testing", "smtpmx.optiondocs", "smtpmx.reload",
         "smtpmx.services", "smtpmx.worker", "smtpmx.workers"),
    ),
)

# The SMTP dialogue and the value modules it is made of: they know nothing
# of files, queues or the relay, and reach storage only through
# smtpmx.interfaces.
DIALOGUE = (
    "smtpmx.session",
    "smtpmx.replywriter",
    "smtpmx.server",
    "smtpmx.body",
    "smtpmx.reply",
    "smtpmx.address",
    "smtpmx.validation",
    "smtpmx.access",
    "smtpmx.envelope",
    "smtpmx.transactionlog",
)

# What the dialogue may never import.
STORAGE_AND_RELAY = ("smtpmx.relay", "smtpmx.delivery", "smtpmx.durable", "smtpmx.streaming",
                     "smtpmx.routing", "smtpmx.tap", "smtpmx.services")


def layerOf(module: str) -> int:
    """
    The index in L{LAYERS} of the layer a module belongs to.

    @raise KeyError: the module is in no layer.
    """
    for index, (_, members) in enumerate(LAYERS):
        if module in members:
            return index
    raise KeyError(module)


def modules() -> Iterator[tuple[str, str]]:
    """
    Every module of the package.

    @return: pairs of (dotted module name, path of its source).
    """
    for directory, _, files in os.walk(PACKAGE):
        for name in sorted(files):
            if not name.endswith(".py"):
                continue
            path = os.path.join(directory, name)
            relative = os.path.relpath(path, ROOT)[: -len(".py")]
            dotted = relative.replace(os.sep, ".")
            if dotted.endswith(".__init__"):
                dotted = dotted[: -len(".__init__")]
            yield dotted, path


def parse(path: str) -> ast.Module:
    """
    The syntax tree of one source file.
    """
    with open(path, encoding="utf-8") as source:
        return ast.parse(source.read(), path)


def importedModules(module: str, tree: ast.Module) -> Iterator[tuple[str, int]]:
    """
    The modules a module imports, absolute, with the line of each import.

    @param module: the dotted name of the importing module, to resolve
        relative imports.
    """
    package = module.rsplit(".", 1)[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            yield base, node.lineno
            for alias in node.names:
                yield f"{base}.{alias.name}", node.lineno


def isPrivate(name: str) -> bool:
    """
    A name with one leading underscore: private to the module that defines it.
    """
    return name.startswith("_") and not name.startswith("__")


class ArchitectureTests(SynchronousTestCase):
    """
    The rules of C{docs/architecture.rst}, read from the source.
    """

    def test_oneDurableWritePrimitive(self) -> None:
        """
        Exactly one module creates, fsyncs, renames or links files for
        durability: every durable write in smtpmx goes through it.
        """
        pattern = re.compile(r"os\.(fsync|rename|replace|link)\b")
        users = []
        for module, path in modules():
            with open(path, encoding="utf-8") as source:
                if pattern.search(source.read()):
                    users.append(module)
        self.assertEqual(len(users), 1, f"durable writes in {users}")

    def test_noModuleTooLong(self) -> None:
        """
        No module of smtpmx is longer than 700 lines.
        """
        long = []
        for module, path in modules():
            with open(path, encoding="utf-8") as source:
                count = sum(1 for _ in source)
            if count > MAX_MODULE_LINES:
                long.append((module, count))
        self.assertEqual(long, [])

    def test_contractIsInTheRepository(self) -> None:
        """
        Code and README cite RFC sections or the project's own docs/, never a
        document outside the repository.
        """
        cited = []
        paths = [path for _, path in modules()] + [os.path.join(ROOT, "README.rst")]
        for path in paths:
            with open(path, encoding="utf-8") as source:
                for number, line in enumerate(source, 1):
                    if "SPEC" in line:
                        cited.append(f"{os.path.relpath(path, ROOT)}:{number}")
        self.assertEqual(cited, [])

    def test_noReachingIntoPrivates(self) -> None:
        """
        No module uses another module's private names: neither imports a
        C{_name} from elsewhere nor reads C{obj._name} unless that name is
        defined in the same module.  Private names of Twisted's classes count
        too: a subclass uses the public surface of its base.
        """
        offences = []
        for module, path in modules():
            tree = parse(path)
            defined = set()
            for node in ast.walk(tree):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    defined.add(node.name)
                elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                    defined.add(node.attr)
                elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                    defined.add(node.id)
                elif isinstance(node, ast.arg):
                    defined.add(node.arg)
            where = os.path.relpath(path, ROOT)
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom):
                    for alias in node.names:
                        if isPrivate(alias.name):
                            offences.append(f"{where}:{node.lineno} imports {alias.name}")
                elif isinstance(node, ast.Attribute) and isPrivate(node.attr):
                    if node.attr not in defined:
                        offences.append(f"{where}:{node.lineno} uses {ast.unparse(node)}")
        self.assertEqual(offences, [])

    def test_everyModuleHasALayer(self) -> None:
        """
        Every module is placed in a layer of docs/architecture.rst: a new
        module is placed there (and here) when it is written.
        """
        unplaced = []
        for module, _ in modules():
            try:
                layerOf(module)
            except KeyError:
                unplaced.append(module)
        self.assertEqual(unplaced, [])

    def test_importsGoDown(self) -> None:
        """
        A module imports only modules of its own layer or of a lower one:
        storage knows nothing of policy or SMTP, the dialogue nothing of the
        relay, and nothing below the entry points imports them.
        """
        offences = []
        names = {module for module, _ in modules()}
        for module, path in modules():
            try:
                mine = layerOf(module)
            except KeyError:
                continue
            for imported, line in importedModules(module, parse(path)):
                if imported not in names or imported == module:
                    continue
                try:
                    theirs = layerOf(imported)
                except KeyError:
                    continue
                if theirs > mine:
                    offences.append(
                        f"{module}:{line} ({LAYERS[mine][0]}) imports {imported} ({LAYERS[theirs][0]})"
                    )
        self.assertEqual(offences, [])

    def test_relayKnowsNoDialogue(self) -> None:
        """
        The relay never imports the SMTP server's session or protocol: the
        two meet only in the queue.
        """
        offences = []
        for module, path in modules():
            if not module.startswith("smtpmx.relay"):
                continue
            for imported, line in importedModules(module, parse(path)):
                if imported.startswith(("smtpmx.session", "smtpmx.server")):
                    offences.append(f"{module}:{line} imports {imported}")
        self.assertEqual(offences, [])

    def test_dialogueKnowsNoStorage(self) -> None:
        """
        The SMTP dialogue (session, protocol, parsing, policy) imports nothing
        of storage or the relay: it reaches storage through
        C{smtpmx.interfaces} only.
        """
        offences = []
        for module, path in modules():
            if module not in DIALOGUE:
                continue
            for imported, line in importedModules(module, parse(path)):
                if imported.startswith(STORAGE_AND_RELAY):
                    offences.append(f"{module}:{line} imports {imported}")
        self.assertEqual(offences, [])

    def test_onlyTheEntryPointTakesTheReactor(self) -> None:
        """
        Only the entry points -- twistd's (C{smtpmx.tap}), a worker
        process's (C{smtpmx.worker}) and the command-line tool's -- import
        the global reactor; everything else is given one.
        """
        offences = []
        for module, path in modules():
            if module in ("smtpmx.tap", "smtpmx.worker", "smtpmx.queuecli"):
                continue
            for imported, line in importedModules(module, parse(path)):
                if imported == "twisted.internet.reactor":
                    offences.append(f"{module}:{line}")
        self.assertEqual(offences, [])

    def test_noReactorLookedUpInSysModules(self) -> None:
        """
        Nor does any module find the reactor the back way, through
        C{sys.modules}: a filter or validator gets it from its context.
        """
        offences = []
        for module, path in modules():
            if module in ("smtpmx.tap", "smtpmx.queuecli"):
                continue
            with open(path, encoding="utf-8") as f:
                for number, text in enumerate(f, 1):
                    if "sys.modules" in text:
                        offences.append(f"{module}:{number}")
        self.assertEqual(offences, [])

    def test_nothingImportsTheEntryPoint(self) -> None:
        """
        No module of smtpmx imports the twistd glue: it is the top of the
        house, and only the dropin in C{twisted/plugins/} names it.
        """
        offences = []
        for module, path in modules():
            if module == "smtpmx.tap":
                continue
            for imported, line in importedModules(module, parse(path)):
                if imported == "smtpmx.tap" or imported.startswith("smtpmx.tap."):
                    offences.append(f"{module}:{line}")
        self.assertEqual(offences, [])
