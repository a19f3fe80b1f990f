"""
The kinds of value an option takes: each L{ValueType} parses and checks
one value, from the command line (a string) or the TOML file (a string,
number, boolean or list), and says in words what it accepts.

Every problem is a L{ConfigError} of one line that starts with the
option's label (C{--max-hops} or C{'max-hops' in /etc/smtpmx/smtpmx.toml}),
so that twistd can show it to the operator as it is.  The options
themselves are declared in L{smtpmx.options}; docs/options.rst describes
them.
"""

from __future__ import annotations

import enum
import ipaddress
import os
import re
from dataclasses import dataclass
from typing import Any, Callable, Optional

from smtpmx.address import isValidDomain


class ConfigError(Exception):
    """
    A configuration value is unusable; the message is one line naming the
    option and the problem, fit to be shown to the operator as it is.
    """


@dataclass(frozen=True)
class LoadContext:
    """
    What loading needs besides the values: where relative paths start and
    how to find the default host name.

    @ivar cwd: the directory relative paths are resolved against.
    @ivar getfqdn: gives the host's fully qualified name.
    """

    cwd: str
    getfqdn: Callable[[], str]


Parser = Callable[[Any, str, LoadContext], Any]


@dataclass(frozen=True)
class ValueType:
    """
    One kind of option value.

    @ivar description: what it accepts, in words, for docs/options.rst
        (C{"positive integer"}).
    @ivar parse: C{parse(value, label, context)}: the checked, normalised
        value, or L{ConfigError}.  A repeatable option parses each item.
    @ivar pythonType: the type of the checked value, the annotation of its
        L{smtpmx.config.Config} field.
    @ivar show: a checked value written as an operator writes it on the
        command line, for defaults in C{--help} and the docs.
    @ivar resolvesDefault: whether the default goes through L{parse} too
        (a relative path is made absolute against the current directory).
    @ivar fromTable: for a repeatable option, turns a TOML table into the
        list of items it stands for (C{[route]} C{"a.example" = "h:25"}).
    """

    description: str
    parse: Parser
    pythonType: Any = str
    show: Callable[[Any], str] = str
    resolvesDefault: bool = False
    fromTable: Optional[Callable[[dict], list]] = None


def checked(check: Callable[[Any, str], Any]) -> Parser:
    """
    A parser from a check that needs no L{LoadContext}.
    """
    return lambda value, label, context: check(value, label)


# The checks, one per kind of value.


def checkString(value: Any, label: str) -> str:
    """
    The value, which must be a string.
    """
    if not isinstance(value, str):
        raise ConfigError(f"{label}: expected a string, not {value!r}")
    return value


def asList(value: Any, label: str) -> list[str]:
    """
    A repeatable option's value as a list of strings; a single string is
    a list of one.
    """
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)):
        return [checkString(v, label) for v in value]
    raise ConfigError(f"{label}: expected a string or a list of strings, not {value!r}")


def absolutePath(path: str, cwd: str, label: str) -> str:
    """
    C{path} made absolute, relative paths being taken from C{cwd}.
    """
    if not path:
        raise ConfigError(f"{label}: a path is needed")
    return os.path.normpath(os.path.join(cwd, os.path.expanduser(path)))


def oneLine(e: BaseException) -> str:
    """
    An exception's message on one line.
    """
    text = " ".join(str(e).split())
    return text or type(e).__name__


def checkEndpoint(value: Any, label: str) -> str:
    """
    Check that C{value} is a server endpoint string, without listening.
    """
    from twisted.internet.endpoints import serverFromString
    from twisted.internet.testing import MemoryReactor

    description = checkString(value, label)
    try:
        serverFromString(MemoryReactor(), description)
    except Exception as e:
        raise ConfigError(
            f"{label}: {description!r} is not a server endpoint: {oneLine(e)}"
        ) from None
    return description


def checkHostname(value: Any, label: str) -> str:
    """
    A host name for the greeting: a domain name.
    """
    name = checkString(value, label).strip()
    if not name or name.startswith("[") or not isValidDomain(name):
        raise ConfigError(f"{label}: {value!r} is not a valid host name")
    return name


def checkDomain(value: Any, label: str) -> str:
    """
    A mail domain, lower-cased.
    """
    domain = checkString(value, label).strip().rstrip(".").lower()
    if not domain or not isValidDomain(domain):
        raise ConfigError(f"{label}: {value!r} is not a valid domain")
    return domain


def checkPluginSpecification(kind: str) -> Callable[[Any, str], str]:
    """
    The check of a C{NAME[:ARG]} plugin specification naming a C{kind}
    (C{"validator"}, C{"filter"}).
    """

    def check(value: Any, label: str) -> str:
        """
        A C{NAME[:ARG]} specification with a name.
        """
        value = checkString(value, label)
        name = value.partition(":")[0].strip()
        if not name:
            raise ConfigError(f"{label}: {value!r} names no {kind} (NAME[:ARG])")
        return value.strip()

    return check


checkValidator = checkPluginSpecification("validator")
checkFilter = checkPluginSpecification("filter")


def checkDelimiter(value: Any, label: str) -> str:
    """
    The recipient delimiter: one character, or empty for none.
    """
    value = checkString(value, label)
    if (
        len(value) > 1
        or value in ("@", '"')
        or (value and (value.isspace() or not value.isprintable()))
    ):
        raise ConfigError(f"{label}: must be a single character or empty, not {value!r}")
    return value


def checkNetwork(value: Any, label: str) -> str:
    """
    A network in CIDR notation; host bits are allowed and cleared.
    """
    try:
        return str(ipaddress.ip_network(checkString(value, label).strip(), strict=False))
    except ValueError:
        raise ConfigError(f"{label}: {value!r} is not a network (CIDR)") from None


def isIPv4(text: str) -> bool:
    """
    Whether C{text} is an IPv4 address.
    """
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True


def checkHostPort(value: str, label: str, defaultPort: Optional[int]) -> tuple[str, int]:
    """
    Split C{HOST:PORT} (C{[IPv6]:PORT}); the port may be left out when
    C{defaultPort} is given.
    """
    text = value.strip()
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket:
            raise ConfigError(f"{label}: {value!r} has no closing ']'")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ConfigError(f"{label}: {host!r} is not an IPv6 address") from None
        if rest and not rest.startswith(":"):
            raise ConfigError(f"{label}: expected HOST:PORT, not {value!r}")
        port: Optional[str] = rest[1:] if rest else None
    elif text.count(":") > 1:
        raise ConfigError(f"{label}: write an IPv6 address in brackets, [{text}]:PORT")
    else:
        host, colon, port = text.partition(":")
        if not colon:
            port = None
        if not host or not (isValidDomain(host) or isIPv4(host)):
            raise ConfigError(f"{label}: {host!r} is not a valid host in {value!r}")
    if port is None:
        if defaultPort is None:
            raise ConfigError(f"{label}: expected HOST:PORT, not {value!r}")
        return host.lower(), defaultPort
    return host.lower(), checkPort(port, label)


def hostPort(host: str, port: int) -> str:
    """
    C{host:port}, with an IPv6 address in brackets.
    """
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def checkNextHop(value: Any, label: str) -> tuple[str, int]:
    """
    A next hop, C{HOST:PORT}.
    """
    return checkHostPort(checkString(value, label), label, None)


def checkRoute(value: Any, label: str) -> tuple[str, str, int]:
    """
    A C{DOMAIN=HOST:PORT} route; C{*} stands for every domain.
    """
    domain, eq, hop = checkString(value, label).partition("=")
    if not eq:
        raise ConfigError(f"{label}: expected DOMAIN=HOST:PORT, not {value!r}")
    domain = domain.strip()
    if domain != "*":
        domain = checkDomain(domain, label)
    host, port = checkHostPort(hop, label, None)
    return domain, host, port


def checkDelivery(value: Any, label: str) -> tuple[Optional[str], str]:
    """
    A C{[DOMAIN=]NAME[:ARG]} delivery entry, for one domain or, without
    C{DOMAIN=}, for every domain not named elsewhere: a delivery backend
    plugin's name and argument (docs/plugins.rst), such as C{maildir} or
    C{lmtp:ENDPOINT} (a Twisted client endpoint, C{unix:/run/dovecot/lmtp}
    or C{tcp:127.0.0.1:24}).  Whether a plugin has the name, and takes the
    argument, is checked when the backends are made, at start-up.

    @return: C{(domain or None, backend)}.
    """
    text = checkString(value, label).strip()
    domain: Optional[str] = None
    head, eq, rest = text.partition("=")
    # A domain has no colon; a backend's argument may hold an "=".
    if eq and ":" not in head:
        domain, text = checkDomain(head.strip(), label), rest.strip()
    name, colon, argument = text.partition(":")
    if not _BACKEND_NAME_RE.fullmatch(name) or (colon and not argument):
        raise ConfigError(f"{label}: expected [DOMAIN=]NAME[:ARG] such as maildir or lmtp:ENDPOINT, not {value!r}")
    return domain, text


# A delivery backend plugin's name.
_BACKEND_NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_.-]*")


def checkMode(value: Any, label: str) -> int:
    """
    An octal file mode for Maildir files (C{0600}, C{0660}, C{0640}): read
    and write for the owner at least, nothing for others to write or run.
    """
    text = str(value).strip() if not isinstance(value, int) or isinstance(value, bool) else oct(value)
    try:
        mode = int(text, 8)
    except ValueError:
        raise ConfigError(f"{label}: expected an octal mode such as 0600 or 0660, not {value!r}") from None
    if mode & ~0o666 or mode & 0o600 != 0o600 or mode & 0o002:
        raise ConfigError(
            f"{label}: {value!r} must give the owner read and write, and no one"
            " execute bits or write access for others (0600, 0640, 0660)"
        )
    return mode


def showMode(mode: int) -> str:
    """
    A file mode as it is written in the options: C{0660}.
    """
    return f"0{mode:o}"


def checkDNSServer(value: Any, label: str) -> tuple[str, int]:
    """
    The resolver's address, C{IP[:PORT]} (port 53 if left out).
    """
    host, port = checkHostPort(checkString(value, label), label, 53)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(
            f"{label}: the DNS server must be an IP address, not {host!r}"
        ) from None
    return host, port


def checkPositiveInt(value: Any, label: str) -> int:
    """
    A whole number greater than zero.
    """
    number: Optional[int] = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and value.strip().isdigit():
        number = int(value.strip())
    if number is None or number <= 0:
        raise ConfigError(f"{label}: must be a positive integer, not {value!r}")
    return number


def checkBytes(value: Any, label: str) -> int:
    """
    A number of bytes: a whole number, zero or more.
    """
    number: Optional[int] = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and value.strip().isdigit():
        number = int(value.strip())
    if number is None or number < 0:
        raise ConfigError(f"{label}: must be a number of bytes (0 or more), not {value!r}")
    return number


def checkPositiveNumber(value: Any, label: str) -> float:
    """
    A number of seconds greater than zero.
    """
    number: Optional[float] = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            number = None
    if number is None or not (0 < number < float("inf")):
        raise ConfigError(f"{label}: must be a positive number, not {value!r}")
    return number


def checkPort(value: Any, label: str) -> int:
    """
    A TCP port number.
    """
    port = checkPositiveInt(value, label)
    if port > 65535:
        raise ConfigError(f"{label}: {port} is not a port number (1-65535)")
    return port


def checkSchedule(value: Any, label: str) -> tuple[int, ...]:
    """
    The retry schedule: positive numbers of seconds, as a list or as
    comma-separated text.
    """
    if isinstance(value, str):
        items: list[Any] = [v.strip() for v in value.split(",")]
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        raise ConfigError(f"{label}: expected comma-separated seconds, not {value!r}")
    if not items:
        raise ConfigError(f"{label}: at least one delay is needed")
    return tuple(checkPositiveInt(v, label) for v in items)


# The sender authentication methods, in the order they are shown
# (C{--auth-checks}, docs/authentication.rst).
AUTH_METHODS = ("spf", "dkim", "dmarc", "arc")


def checkAuthChecks(value: Any, label: str) -> tuple[str, ...]:
    """
    The sender authentication methods to run: a comma-separated subset of
    L{AUTH_METHODS} (a list in the file), in any case and order, or
    C{none} for no check at all.

    @return: the methods named, in the order of L{AUTH_METHODS}; empty
        for C{none}.
    """
    if isinstance(value, str):
        items = [v.strip().lower() for v in value.split(",")]
    elif isinstance(value, (list, tuple)):
        items = [checkString(v, label).strip().lower() for v in value]
    else:
        raise ConfigError(f"{label}: expected a comma-separated list such as spf,dkim, not {value!r}")
    if items == ["none"] or items == []:
        return ()
    for item in items:
        if item not in AUTH_METHODS:
            raise ConfigError(
                f"{label}: {item!r} is not one of {', '.join(AUTH_METHODS)} (or none alone)"
            )
    return tuple(m for m in AUTH_METHODS if m in items)


# The words a boolean may be written as, besides TOML's true and false:
# those its default is shown with (C{on}, C{off}).
_BOOLEAN_WORDS = {"true": True, "on": True, "false": False, "off": False}


def checkBoolean(value: Any, label: str) -> bool:
    """
    On or off: C{true}/C{false} in the file (or the text C{on}/C{off}, as
    the docs show a default); a flag given on the command line is on.
    """
    if isinstance(value, str) and value.strip().lower() in _BOOLEAN_WORDS:
        return _BOOLEAN_WORDS[value.strip().lower()]
    if not isinstance(value, bool):
        raise ConfigError(f"{label}: expected true or false, not {value!r}")
    return value


def checkReadable(path: str, label: str) -> None:
    """
    Check that C{path} is a file we can read.
    """
    try:
        with open(path, "rb") as f:
            f.read(1)
    except IsADirectoryError:
        raise ConfigError(f"{label}: {path} is a directory, not a file") from None
    except OSError as e:
        raise ConfigError(f"{label}: cannot read {path}: {e.strerror or e}") from None


def parseDirectory(value: Any, label: str, context: LoadContext) -> str:
    """
    A directory, made absolute; it is created at start-up if missing.
    """
    return absolutePath(checkString(value, label), context.cwd, label)


def parseReadableFile(value: Any, label: str, context: LoadContext) -> Optional[str]:
    """
    A file that must be readable now, made absolute; empty means none.
    """
    if value is None or value == "":
        return None
    path = absolutePath(checkString(value, label), context.cwd, label)
    checkReadable(path, label)
    return path


def showPath(path: str) -> str:
    """
    A path as written: a relative one with C{./} in front, so that it
    reads as relative to the current directory.
    """
    return path if os.path.isabs(path) or path.startswith(".") else f"./{path}"


def showNumber(number: float) -> str:
    """
    A number without a useless C{.0}.
    """
    return f"{number:g}"


def choice(values: type[enum.Enum]) -> ValueType:
    """
    One of the values of an L{enum.Enum} (whose values are strings), in
    any case.  The option stores the value, a string.
    """
    names = [member.value for member in values]

    def parse(value: Any, label: str, context: LoadContext) -> str:
        """
        The value, lower-cased, if it is one of C{names}.
        """
        mode = checkString(value, label).strip().lower()
        if mode not in names:
            raise ConfigError(f"{label}: must be one of {', '.join(names)}, not {value!r}")
        return mode

    return ValueType(f"one of {', '.join(names)}", parse)


def routesFromTable(table: dict) -> list:
    """
    C{[route]} written as a TOML table, C{"example.com" = "mx.example.net:25"},
    as the list of C{DOMAIN=HOST:PORT} routes it stands for.
    """
    return [f"{domain}={hop}" for domain, hop in table.items()]


ENDPOINT = ValueType("Twisted server endpoint string", checked(checkEndpoint))
HOSTNAME = ValueType("host name", checked(checkHostname))
DOMAIN = ValueType("domain", checked(checkDomain))
DIRECTORY = ValueType("directory", parseDirectory, show=showPath, resolvesDefault=True)
READABLE_FILE = ValueType("path of a readable file", parseReadableFile, Optional[str])
VALIDATOR = ValueType("validator NAME[:ARG]", checked(checkValidator))
FILTER = ValueType("filter NAME[:ARG]", checked(checkFilter))
DELIMITER = ValueType("one character, or empty", checked(checkDelimiter))
NETWORK = ValueType("network (CIDR)", checked(checkNetwork))
NEXT_HOP = ValueType("HOST:PORT", checked(checkNextHop), tuple[str, int])
ROUTE = ValueType(
    "DOMAIN=HOST:PORT",
    checked(checkRoute),
    tuple[str, str, int],
    show=lambda route: f"{route[0]}={hostPort(route[1], route[2])}",
    fromTable=routesFromTable,
)
DNS_SERVER = ValueType(
    "IP address, with :PORT if not 53",
    checked(checkDNSServer),
    Optional[tuple[str, int]],
    show=lambda address: hostPort(*address),
)
DELIVERY = ValueType(
    "[DOMAIN=]NAME[:ARG], such as maildir or lmtp:ENDPOINT",
    checked(checkDelivery),
    tuple[Optional[str], str],
    show=lambda entry: f"{entry[0]}={entry[1]}" if entry[0] else entry[1],
)
MODE = ValueType("octal file mode", checked(checkMode), int, showMode)
PORT = ValueType("TCP port (1-65535)", checked(checkPort), int)
POSITIVE_INT = ValueType("positive integer", checked(checkPositiveInt), int)
BYTES = ValueType("number of bytes (0 or more)", checked(checkBytes), int)
SECONDS = ValueType("positive number of seconds", checked(checkPositiveNumber), float, showNumber)
SCHEDULE = ValueType(
    "positive integers (seconds), a list or comma-separated",
    checked(checkSchedule),
    tuple[int, ...],
    show=lambda delays: ",".join(map(str, delays)),
)
# An option of this type takes no value on the command line (its metavar
# is empty): C{--name} alone turns it on.
BOOLEAN = ValueType(
    "true or false", checked(checkBoolean), bool, show=lambda on: "on" if on else "off"
)
AUTH_CHECKS = ValueType(
    "comma-separated subset of spf, dkim, dmarc, arc; or none",
    checked(checkAuthChecks),
    tuple[str, ...],
    show=lambda methods: ",".join(methods) or "none",
)
