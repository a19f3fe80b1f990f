"""
Third-party message filter plugins as modules to drop into an
C{smtpmx/plugins/} directory: L{SOURCE} is the README's and
docs/plugins.rst's example (C{keyword}), L{VERDICT_SOURCE} a filter the
end-to-end tests steer with its argument (C{verdict:KIND}).
"""

from __future__ import annotations

import os

SOURCE = '''\
from twisted.plugin import IPlugin
from zope.interface import implementer
from smtpmx.filtering import Accept, Reject
from smtpmx.interfaces import IMessageFilter, IMessageFilterFactory


def contains(message, word):
    # Blocking: read the spooled message in chunks (called in a thread).
    with message.open() as f:
        tail = b""
        while chunk := f.read(65536):
            if word in tail + chunk:
                return True
            tail = chunk[-len(word):]
    return False


@implementer(IMessageFilter)
class KeywordFilter:
    def __init__(self, word):
        self.word = word.encode("utf-8")

    def filterMessage(self, session, message):
        def decide(found):
            if found:
                return Reject(550, "5.7.1", "We do not want that here")
            return Accept([("X-Keyword-Checked", "yes")])

        d = session.runBlocking(contains, message, self.word)
        return d.addCallback(decide)


@implementer(IPlugin, IMessageFilterFactory)
class KeywordFilterFactory:
    name = "keyword"
    description = "keyword:WORD - refuses messages that contain WORD."

    def makeFilter(self, argument):
        if not argument:
            raise ValueError("keyword needs a word: --filter keyword:WORD")
        return KeywordFilter(argument)


keyword = KeywordFilterFactory()
'''

VERDICT_SOURCE = '''\
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.plugin import IPlugin
from zope.interface import implementer
from smtpmx.filtering import Accept, Junk, Reject
from smtpmx.interfaces import IMessageFilter, IMessageFilterFactory


@implementer(IMessageFilter)
class VerdictFilter:
    def __init__(self, kind):
        self.kind = kind

    def filterMessage(self, session, message):
        with message.open() as f:
            size = len(f.read())
        seen = [("X-Verdict-Size", f"{size}/{message.size}"),
                ("X-Verdict-Client", message.envelope.clientHost)]
        if self.kind == "accept":
            return Accept([("X-Verdict", "accept")] + seen)
        if self.kind == "junk":
            return Junk([("X-Spam", "Yes")] + seen)
        if self.kind == "reject":
            return Reject(554, "5.7.1", "Refused by the verdict filter, sorry")
        if self.kind == "later":
            return deferLater(reactor, 0.2, lambda: Accept([("X-Verdict", "later")] + seen))
        if self.kind == "hang":
            return deferLater(reactor, 3600, lambda: None)
        raise RuntimeError("the verdict filter broke, as asked")


@implementer(IPlugin, IMessageFilterFactory)
class VerdictFilterFactory:
    name = "verdict"
    description = "verdict:accept|junk|reject|later|hang|raise - for the tests."

    def makeFilter(self, argument):
        return VerdictFilter(argument or "accept")


verdict = VerdictFilterFactory()
'''


def writeExampleFilters(root: str) -> str:
    """
    Write the C{keyword} and C{verdict} filters into
    C{<root>/smtpmx/plugins/}, with no C{__init__.py}, the way a third
    party installs a plugin.

    @return: the C{smtpmx/plugins} directory.
    """
    plugins = os.path.join(root, "smtpmx", "plugins")
    os.makedirs(plugins, exist_ok=True)
    for name, source in (("keywordfilter.py", SOURCE), ("verdictfilter.py", VERDICT_SOURCE)):
        with open(os.path.join(plugins, name), "w") as f:
            f.write(source)
    return plugins
