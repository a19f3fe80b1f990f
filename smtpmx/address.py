"""
Addresses and the arguments of MAIL and RCPT (RFC 5321 section 4.1.2).

Parsing is lenient where real senders are sloppy and the lenience is
harmless (a space after the colon, a missing pair of angle brackets), and
strict where it matters: domains must be domains, and the local part that
names a Maildir must be a safe directory name.  Nothing here does I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional


class AddressError(ValueError):
    """
    A path or parameter that cannot be parsed; the reply is C{501}.
    """


class UnsafeMailbox(ValueError):
    """
    A local part that cannot be used as a Maildir directory name; the reply
    is C{550 5.1.3}.
    """


# RFC 5321 4.1.2: sub-domain = Let-dig [Ldh-str]; with SMTPUTF8 (RFC 6531)
# any non-ASCII character counts as a letter.
_SUBDOMAIN = r"(?:[A-Za-z0-9\u0080-\U0010ffff](?:[A-Za-z0-9\u0080-\U0010ffff-]*[A-Za-z0-9\u0080-\U0010ffff])?)"
_DOMAIN_RE = re.compile(rf"{_SUBDOMAIN}(?:\.{_SUBDOMAIN})*")
_IPV4_RE = re.compile(r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?:\.(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}")
_LITERAL_RE = re.compile(r"\[(?:IPv6:[0-9A-Fa-f:.]+|[0-9.]+|[A-Za-z0-9-]*[A-Za-z0-9]:[\x21-\x5a\x5e-\x7e]+)\]")
# Characters that can never appear unquoted in a local part we accept.
_LOCAL_FORBIDDEN = frozenset(' \t<>@",;:()[]')
# A source route: "@a,@b:" before the mailbox (RFC 5321 3.6.1, C.2).
_ROUTE_RE = re.compile(r"^@[^,:@<>]+(?:,\s*@[^,:@<>]+)*:")
_PARAM_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]*$")
# A control character (NUL to US, and DEL); in a mailbox name, a slash or
# a backslash as well.  One regular expression search, not a Python loop
# per character: every address of every message is checked.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_UNSAFE_IN_NAME = re.compile(r"[/\\\x00-\x1f\x7f]")


@dataclass(frozen=True)
class Address:
    """
    A mailbox: C{localpart@domain}.

    @ivar localpart: the local part exactly as sent, quotes included, case
        kept (RFC 5321 2.4: only the receiving host may interpret it).
    @ivar domain: the domain as sent, or C{""} for the bare C{postmaster}
        that RFC 5321 4.5.1 obliges us to accept.
    """

    localpart: str
    domain: str

    def __str__(self) -> str:
        if not self.domain:
            return self.localpart
        return f"{self.localpart}@{self.domain}"

    @property
    def path(self) -> str:
        """
        The address as a path, in angle brackets.
        """
        return f"<{self}>"

    @property
    def unquotedLocalpart(self) -> str:
        """
        The local part with quoting removed: C{"a\\"b"} becomes C{a"b}.
        """
        return unquoteLocalpart(self.localpart)

    def isASCII(self) -> bool:
        """
        Whether the address needs no SMTPUTF8.
        """
        return str(self).isascii()

    def hasControlCharacters(self) -> bool:
        """
        Whether the address holds a control character (NUL, DEL, ...): such
        an address may name no mailbox here and is never sent on.
        """
        return _CONTROL.search(str(self)) is not None

    def isPostmaster(self) -> bool:
        """
        Whether the local part is C{postmaster}, in any case (RFC 5321
        4.5.1).
        """
        return self.unquotedLocalpart.lower() == "postmaster"


def unquoteLocalpart(localpart: str) -> str:
    """
    Remove the quotes and quoted-pair backslashes of a quoted local part.
    """
    if len(localpart) >= 2 and localpart[0] == '"' and localpart[-1] == '"':
        return re.sub(r"\\(.)", r"\1", localpart[1:-1])
    return localpart


def _splitQuoted(text: str) -> tuple[str, str]:
    """
    Split C{"quoted"@rest} into the quoted local part and what follows it.
    """
    i = 1
    while i < len(text):
        c = text[i]
        if c == "\\":
            if i + 1 >= len(text):
                break
            i += 2
            continue
        if c == '"':
            return text[: i + 1], text[i + 1 :]
        if c in "\r\n":
            break
        i += 1
    raise AddressError("unterminated quoted local part")


def isValidDomain(domain: str) -> bool:
    """
    Whether C{domain} is a domain name or an address literal.
    """
    if domain.startswith("["):
        if not _LITERAL_RE.fullmatch(domain):
            return False
        inner = domain[1:-1]
        if inner[:1].isdigit() and not _IPV4_RE.fullmatch(inner):
            return False
        return True
    return len(domain) <= 255 and _DOMAIN_RE.fullmatch(domain) is not None


def parseAddress(text: str) -> Address:
    """
    Parse a mailbox, C{local@domain}, without angle brackets.

    @raise AddressError: it is not a mailbox.
    """
    if not text:
        raise AddressError("empty address")
    if text[0] == '"':
        localpart, rest = _splitQuoted(text)
        if not rest.startswith("@"):
            raise AddressError("expected @ after the quoted local part")
        domain = rest[1:]
    else:
        localpart, at, domain = text.rpartition("@")
        if not at:
            raise AddressError("the address has no domain")
        if not localpart:
            raise AddressError("the address has no local part")
        if any(c in _LOCAL_FORBIDDEN for c in localpart):
            raise AddressError("the local part has a character it may not have")
    if len(localpart) > 1024:
        raise AddressError("the local part is too long")
    if not isValidDomain(domain):
        raise AddressError("the domain is not valid")
    return Address(localpart, domain)


def parsePath(argument: str, allowNull: bool, allowPostmaster: bool = False) -> tuple[Optional[Address], str]:
    """
    Parse the path at the start of a MAIL or RCPT argument (after the
    colon).

    A source route is accepted and dropped (RFC 5321 3.6.1).  Angle brackets
    may be missing, as many senders leave them out.

    @param allowNull: whether C{<>} is acceptable (MAIL, not RCPT).
    @param allowPostmaster: whether a bare C{<postmaster>} without a domain
        is acceptable (RCPT, RFC 5321 4.5.1).

    @return: the address (L{None} for the null path) and the text after
        the path, which holds the ESMTP parameters.

    @raise AddressError: the path cannot be parsed.
    """
    text = argument.lstrip(" ")
    if text.startswith("<"):
        inner, rest = _splitBracketed(text)
    else:
        inner, _, rest = text.partition(" ")
        rest = " " + rest if rest else ""
    if rest and not rest.startswith(" "):
        raise AddressError("expected a space after the path")
    if inner == "":
        if text.startswith("<") and allowNull:
            return None, rest
        raise AddressError("an empty path is not allowed here")
    route = _ROUTE_RE.match(inner)
    if route:
        inner = inner[route.end() :]
    if allowPostmaster and "@" not in inner and unquoteLocalpart(inner).lower() == "postmaster":
        return Address(inner, ""), rest
    return parseAddress(inner), rest


def _splitBracketed(text: str) -> tuple[str, str]:
    """
    Split C{<path> rest} at the closing bracket, minding quoted strings.
    """
    i = 1
    quoted = False
    while i < len(text):
        c = text[i]
        if quoted:
            if c == "\\":
                i += 2
                continue
            if c == '"':
                quoted = False
        elif c == '"':
            quoted = True
        elif c == ">":
            return text[1:i], text[i + 1 :]
        i += 1
    raise AddressError("the path has no closing >")


def parseParameters(text: str) -> dict[str, Optional[str]]:
    """
    Parse ESMTP parameters, C{KEY=VALUE} or C{KEY}, separated by spaces.

    @return: a dict from upper-cased keyword to value (L{None} for none).

    @raise AddressError: a parameter is malformed or given twice.
    """
    params: dict[str, Optional[str]] = {}
    for word in text.split():
        key, eq, value = word.partition("=")
        if not _PARAM_KEY_RE.match(key) or (eq and not value):
            raise AddressError(f"malformed parameter {word!r}")
        key = key.upper()
        if key in params:
            raise AddressError(f"parameter {key} given twice")
        params[key] = value if eq else None
    return params


def mailboxName(address: Address, delimiter: str) -> str:
    """
    The Maildir directory name for a local recipient: the unquoted local
    part, lower-cased, with the delimiter and its tag stripped.

    @param delimiter: the recipient delimiter (C{"+"}), or C{""} for none.

    @raise UnsafeMailbox: the name cannot be a directory name; it would be
        empty, start with a dot, or hold C{/}, C{\\}, NUL or a control
        character.
    """
    name = address.unquotedLocalpart
    if delimiter:
        # Never strip the whole name: "+tag" is a mailbox called "+tag".
        index = name.find(delimiter)
        if index > 0:
            name = name[:index]
    name = name.lower()
    checkSafeName(name)
    return name


def checkSafeName(name: str) -> None:
    """
    Refuse a name that is unsafe as a single directory name.

    @raise UnsafeMailbox: it is not safe.
    """
    if not name:
        raise UnsafeMailbox("empty mailbox name")
    if name.startswith("."):
        raise UnsafeMailbox("mailbox name starts with a dot")
    if _UNSAFE_IN_NAME.search(name) is not None:
        raise UnsafeMailbox("mailbox name has an unsafe character")
    if len(name.encode("utf-8", "surrogateescape")) > 255:
        raise UnsafeMailbox("mailbox name too long")
