"""
The C{aliases:PATH} validator: recipients listed in an aliases file are
accepted and rewritten to the file's targets.

The file has one alias a line::

    # comment
    info@example.org: alice@example.org, bob@elsewhere.example
    @example.org: postmaster@example.org

C{local@domain: target, target} rewrites one address; C{@domain: target}
is the catch-all of a domain, used when no address of that domain matches.
Keys are matched case-insensitively, and a recipient with a delimiter tag
(C{bob+news@example.org}) that has no entry of its own matches the entry
without the tag (C{bob@example.org}).  Targets may be local or remote.

The file is read when the validator is made (an error stops start-up) and
read again when it changes: its modification time is checked at most once
a second, in the thread pool; a new version that cannot be read or parsed
is logged and the old table kept.  It is also read again, changed or not,
when the server is sent C{SIGHUP} (L{smtpmx.interfaces.IReloadable}).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from zope.interface import implementer

from smtpmx.address import Address, AddressError, isValidDomain, parseAddress
from smtpmx.interfaces import IRecipientValidator, IReloadable
from smtpmx.validation import Accept

# How often, at most, the file's modification time is looked at (seconds).
CHECK_INTERVAL = 1.0


@dataclass
class AliasTable:
    """
    A parsed aliases file.

    @ivar exact: targets by C{(local part, domain)}, both lower-cased, the
        local part unquoted.
    @ivar catchAll: targets by lower-cased domain.
    """

    exact: dict[tuple[str, str], list[Address]] = field(default_factory=dict)
    catchAll: dict[str, list[Address]] = field(default_factory=dict)

    def lookup(self, recipient: Address, delimiter: str) -> Optional[list[Address]]:
        """
        The targets of C{recipient}: its own entry, else the entry without
        its delimiter tag, else its domain's catch-all; L{None} if none.
        """
        domain = recipient.domain.lower()
        local = recipient.unquotedLocalpart.lower()
        targets = self.exact.get((local, domain))
        if targets is None and delimiter:
            index = local.find(delimiter)
            if index > 0:
                targets = self.exact.get((local[:index], domain))
        if targets is None:
            targets = self.catchAll.get(domain)
        return targets


def _splitOutsideQuotes(text: str, separator: str, limit: int = -1) -> list[str]:
    """
    Split C{text} at C{separator}, except inside double quotes.
    """
    parts: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for c in text:
        if escaped:
            escaped = False
        elif quoted and c == "\\":
            escaped = True
        elif c == '"':
            quoted = not quoted
        elif c == separator and not quoted and (limit < 0 or len(parts) < limit):
            parts.append("".join(current))
            current = []
            continue
        current.append(c)
    parts.append("".join(current))
    return parts


def _stripComment(line: str) -> str:
    """
    The line without a C{#} comment (one at the start of the line or after
    white space, outside quotes).
    """
    quoted = False
    previous = " "
    for i, c in enumerate(line):
        if c == '"':
            quoted = not quoted
        elif c == "#" and not quoted and previous.isspace():
            return line[:i]
        previous = c
    return line


def _parseTarget(text: str) -> Address:
    """
    One target address, with or without angle brackets.
    """
    text = text.strip()
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1].strip()
    return parseAddress(text)


def parseAliases(text: str, path: str = "aliases") -> AliasTable:
    """
    Parse the text of an aliases file.

    @param path: the file's name, for error messages.

    @raise ValueError: a line is malformed; the message gives the file and
        line number.
    """
    table = AliasTable()
    for number, raw in enumerate(text.splitlines(), 1):
        line = _stripComment(raw).strip()
        if not line:
            continue

        def error(why: str) -> ValueError:
            return ValueError(f"{path}, line {number}: {why}")

        parts = _splitOutsideQuotes(line, ":", 1)
        if len(parts) != 2:
            raise error("expected 'address: target, target'")
        key, targetText = parts[0].strip(), parts[1]
        targets: list[Address] = []
        for item in _splitOutsideQuotes(targetText, ","):
            if not item.strip():
                continue
            try:
                targets.append(_parseTarget(item))
            except AddressError as e:
                raise error(f"bad target {item.strip()!r}: {e}") from None
        if not targets:
            raise error(f"no target for {key!r}")
        if key.startswith("@"):
            domain = key[1:].lower()
            if not isValidDomain(domain):
                raise error(f"bad domain {key!r}")
            if domain in table.catchAll:
                raise error(f"{key!r} is given twice")
            table.catchAll[domain] = targets
        else:
            try:
                address = _parseTarget(key)
            except AddressError as e:
                raise error(f"bad address {key!r}: {e}") from None
            entry = (address.unquotedLocalpart.lower(), address.domain.lower())
            if entry in table.exact:
                raise error(f"{key!r} is given twice")
            table.exact[entry] = targets
    return table


def _signature(path: str) -> tuple[int, int, int]:
    """
    What tells one version of the file from another: modification time,
    size and inode.

    @raise OSError: the file cannot be looked at.
    """
    st = os.stat(path)
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def readAliases(path: str) -> tuple[tuple[int, int, int], AliasTable]:
    """
    Read and parse an aliases file (blocking).

    @return: the file's signature and its table.

    @raise ValueError: it cannot be read or parsed; the message says why.
    """
    try:
        signature = _signature(path)
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ValueError(f"cannot read {path}: {e.strerror or e}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    return signature, parseAliases(text, path)


@implementer(IRecipientValidator, IReloadable)
class AliasesValidator:
    """
    Accepts the recipients of an aliases file, rewritten to their targets;
    has no opinion on the others.

    @ivar table: the aliases in force.
    """

    log = Logger()

    def __init__(
        self,
        path: str,
        now: Callable[[], float] = time.monotonic,
        interval: float = CHECK_INTERVAL,
    ) -> None:
        """
        Read the file now.

        @param now: the clock that rate-limits the checks for a change.

        @raise ValueError: it cannot be read or parsed.
        """
        self.path = path
        self._now = now
        self._interval = interval
        self._signature, self.table = readAliases(path)
        self._lastCheck = now()
        self._checking = False

    def _reload(self, current: tuple[int, int, int]):
        """
        Read the file again if it changed (in the thread pool).

        @return: C{None} if it did not change, else C{(signature, table or
            None, error message or None)}.
        """
        try:
            signature = _signature(self.path)
        except OSError as e:
            return ("missing", None, f"cannot read {self.path}: {e.strerror or e}")
        if signature == current:
            return None
        try:
            signature, table = readAliases(self.path)
        except ValueError as e:
            return (signature, None, str(e))
        return (signature, table, None)

    def reload(self, runBlocking) -> Deferred:
        """
        Read the file again now, changed or not (L{IReloadable}, on
        C{SIGHUP}).

        @return: a L{Deferred} that fires once the new table is in force,
            or fails with L{ValueError} saying why the file cannot be
            used; the old table is kept then.
        """

        def done(result) -> None:
            signature, table, error = result
            # The change check must not report this version again.
            self._signature = signature
            self._lastCheck = self._now()
            if table is None:
                raise ValueError(error)
            self.table = table

        return runBlocking(self._reload, None).addCallback(done)

    def _reloaded(self, result) -> None:
        """
        Take the outcome of L{_reload} (in the reactor thread).
        """
        self._checking = False
        if result is None:
            return
        signature, table, error = result
        if signature == self._signature:
            return
        self._signature = signature
        if table is None:
            self.log.error(
                "aliases file not reloaded, keeping the old table: {error}",
                error=error,
            )
        else:
            self.table = table
            self.log.info(
                "aliases file {path} reloaded: {n} entries",
                path=self.path,
                n=len(table.exact) + len(table.catchAll),
            )

    def _failed(self, failure) -> None:
        """
        The check itself broke: log it and keep the table.
        """
        self._checking = False
        self.log.failure("cannot check the aliases file {path}", failure, path=self.path)

    def validateRecipient(self, session, recipient: Address) -> Optional[Accept] | Deferred:
        """
        Look the recipient up, after a check for a new version of the file
        if the last was more than a second ago.
        """
        now = self._now()
        if self._checking or now - self._lastCheck < self._interval:
            return self._decide(session, recipient)
        self._lastCheck = now
        self._checking = True
        d = session.runBlocking(self._reload, self._signature)
        d.addCallbacks(self._reloaded, self._failed)
        d.addCallback(lambda _: self._decide(session, recipient))
        return d

    def _decide(self, session, recipient: Address) -> Optional[Accept]:
        """
        The verdict from the table in force.
        """
        targets = self.table.lookup(recipient, session.config.recipientDelimiter)
        if targets is None:
            return None
        return Accept(deliverTo=list(targets))
