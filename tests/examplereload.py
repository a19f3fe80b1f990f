"""
A third-party message filter that provides
L{smtpmx.interfaces.IReloadable}, as a module to drop into an
C{smtpmx/plugins/} directory: L{SOURCE} is docs/plugins.rst's example
(C{words:PATH}), which C{SIGHUP} makes read its file again.
"""

from __future__ import annotations

import os

SOURCE = '''\
from twisted.plugin import IPlugin
from zope.interface import implementer
from smtpmx.filtering import Accept, Reject
from smtpmx.interfaces import IMessageFilter, IMessageFilterFactory, IReloadable


def readWords(path):
    # Blocking: called at start-up and, on SIGHUP, in the thread pool.
    with open(path, "rb") as f:
        words = [line.strip() for line in f if line.strip()]
    if not words:
        raise ValueError(f"{path}: no word in it")
    return words


def containsAny(message, words):
    # Blocking: read the spooled message in chunks (called in a thread).
    keep = max(len(word) for word in words)
    with message.open() as f:
        tail = b""
        while chunk := f.read(65536):
            if any(word in tail + chunk for word in words):
                return True
            tail = (tail + chunk)[-keep:]
    return False


@implementer(IMessageFilter, IReloadable)
class WordsFilter:
    def __init__(self, path):
        self.path = path
        self.words = readWords(path)        # an error here stops start-up

    def reload(self, runBlocking):
        def use(words):
            self.words = words              # one assignment: the new list is whole

        return runBlocking(readWords, self.path).addCallback(use)

    def filterMessage(self, session, message):
        def decide(found):
            if found:
                return Reject(550, "5.7.1", "We do not want that here")
            return Accept()

        d = session.runBlocking(containsAny, message, self.words)
        return d.addCallback(decide)


@implementer(IPlugin, IMessageFilterFactory)
class WordsFilterFactory:
    name = "words"
    description = "words:PATH - refuses messages with a word listed in PATH."

    def makeFilter(self, argument):
        if not argument:
            raise ValueError("words needs a file: --filter words:PATH")
        return WordsFilter(argument)


words = WordsFilterFactory()
'''


def writeWordsFilter(root: str) -> str:
    """
    Write the C{words} filter into C{<root>/smtpmx/plugins/}, with no
    C{__init__.py}, the way a third party installs a plugin.

    @return: the C{smtpmx/plugins} directory.
    """
    plugins = os.path.join(root, "smtpmx", "plugins")
    os.makedirs(plugins, exist_ok=True)
    with open(os.path.join(plugins, "wordsfilter.py"), "w") as f:
        f.write(SOURCE)
    return plugins


def loadWordsFilter() -> dict:
    """
    The names the example defines, run from L{SOURCE} in this process.
    """
    names: dict = {}
    exec(compile(SOURCE, "wordsfilter.py", "exec"), names)
    return names
