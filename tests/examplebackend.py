"""
A third-party delivery backend plugin as a module to drop into an
C{smtpmx/plugins/} directory: L{SOURCE} is docs/plugins.rst's example
(C{spool:DIR}, a courier that files each recipient's copy under C{DIR}
and refuses the local part C{nobody}), used by the tests of the delivery
backend plugin point.
"""

from __future__ import annotations

import os

SOURCE = '''\
import os
from twisted.plugin import IPlugin
from zope.interface import implementer
from smtpmx.interfaces import IDeliveryBackend, IDeliveryBackendFactory
from smtpmx.relay.request import resultOf
from smtpmx.reply import Reply


def fileCopies(messageFile, directory, recipients):
    # Blocking (run in a thread): one copy per recipient, by address.
    with open(messageFile, "rb") as f:
        data = f.read()
    results = {}
    for address in recipients:
        local = address.partition("@")[0].lower()
        if local == "nobody":
            results[address] = resultOf(Reply(550, "5.1.1", "No such user here"))
        elif local == "later":
            results[address] = resultOf(Reply(451, "4.2.0", "Try again later"))
        else:
            with open(os.path.join(directory, address.lower()), "ab") as f:
                f.write(data)
            results[address] = resultOf(Reply(250, "2.0.0", "Spooled"))
    return results


@implementer(IDeliveryBackend)
class SpoolBackend:
    def __init__(self, directory):
        self.directory = directory

    def deliver(self, request):
        return request.runBlocking(
            fileCopies, request.messageFile, self.directory, request.recipients
        )


@implementer(IPlugin, IDeliveryBackendFactory)
class SpoolBackendFactory:
    name = "spool"
    description = "spool:DIR - files a copy per recipient under DIR."

    def makeBackend(self, argument):
        if not argument or not os.path.isdir(argument):
            raise ValueError("spool needs a directory: --delivery spool:DIR")
        return SpoolBackend(os.path.abspath(argument))


spool = SpoolBackendFactory()
'''


def writeExampleBackend(root: str) -> str:
    """
    Write the C{spool} backend into C{<root>/smtpmx/plugins/}, with no
    C{__init__.py}, the way a third party installs a plugin.

    @return: the C{smtpmx/plugins} directory.
    """
    plugins = os.path.join(root, "smtpmx", "plugins")
    os.makedirs(plugins, exist_ok=True)
    with open(os.path.join(plugins, "spoolbackend.py"), "w") as f:
        f.write(SOURCE)
    return plugins


def loadExampleBackend() -> dict:
    """
    The names the example module defines, run in-process (for unit tests
    that need the factory without a plugin directory).
    """
    names: dict = {}
    exec(compile(SOURCE, "spoolbackend.py", "exec"), names)
    return names
