"""
The third-party validator example of the README and docs/plugins.rst,
DenyBob, as a module to drop into an C{smtpmx/plugins/} directory: one copy
for every test that needs a plugin from outside the project.
"""

from __future__ import annotations

import os

SOURCE = '''\
from twisted.plugin import IPlugin
from zope.interface import implementer
from smtpmx.interfaces import IRecipientValidator, IRecipientValidatorFactory
from smtpmx.validation import Accept, Reject


@implementer(IRecipientValidator)
class DenyBob:
    def validateRecipient(self, session, recipient):
        if recipient.localpart.lower() == "bob":
            return Reject(550, "5.7.1", "bob is on holiday")
        return None


@implementer(IPlugin, IRecipientValidatorFactory)
class DenyBobFactory:
    name = "denybob"
    description = "Rejects bob."

    def makeValidator(self, argument):
        return DenyBob()


denybob = DenyBobFactory()
'''


def writeDenyBob(root: str) -> str:
    """
    Write DenyBob as C{<root>/smtpmx/plugins/denybob.py}, with no
    C{__init__.py}, the way a third party installs a validator.

    @return: the C{smtpmx/plugins} directory.
    """
    plugins = os.path.join(root, "smtpmx", "plugins")
    os.makedirs(plugins, exist_ok=True)
    with open(os.path.join(plugins, "denybob.py"), "w") as f:
        f.write(SOURCE)
    return plugins
