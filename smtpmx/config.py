"""
The configuration: defaults, the TOML file and the command line merged into
one frozen L{Config}, checked once at start-up.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import tomllib
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Optional

from smtpmx.address import isValidDomain
from smtpmx.relay.tlspolicy import TLSPolicy


@dataclass(frozen=True)
class Config:
    """
    Every option of SPEC section 2, checked and normalised.
    """

    listen: tuple[str, ...] = ("tcp:2525:interface=127.0.0.1",)
    hostname: str = "localhost"
    domains: tuple[str, ...] = ("localhost",)  # lower-cased
    maildirRoot: str = "Maildir"  # absolute after loading
    validators: tuple[str, ...] = ("mailbox",)
    recipientDelimiter: str = "+"  # "" for none
    relayNetworks: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    relayDomains: tuple[str, ...] = ()  # lower-cased
    routes: tuple[tuple[str, str, int], ...] = ()  # (domain or "*", host, port)
    dnsServer: Optional[tuple[str, int]] = None
    relayPort: int = 25
    queueDir: str = "queue"  # absolute after loading
    retrySchedule: tuple[int, ...] = (60, 300, 900, 1800, 3600)
    maxQueueAge: int = 432000
    maxMessageSize: int = 26214400
    maxRecipients: int = 100
    maxConnections: int = 500
    maxConnectionsPerIp: int = 20
    commandTimeout: float = 300.0
    dataTimeout: float = 600.0
    maxHops: int = 50
    tlsCertificate: Optional[str] = None
    tlsKey: Optional[str] = None
    relayTls: str = "may"
    caCerts: Optional[str] = None


# Loading: defaults <- the TOML file <- the command line.

class ConfigError(Exception):
    """
    A configuration value is unusable; the message is one line naming the
    option and the problem, fit to be shown to the operator as it is.
    """


# Every option, by its long flag name, with the L{Config} field it sets.
# A TOML file uses the same names as keys (C{max-message-size = 1000}).
OPTIONS: dict[str, str] = {
    "listen": "listen",
    "hostname": "hostname",
    "domain": "domains",
    "maildir-root": "maildirRoot",
    "validator": "validators",
    "recipient-delimiter": "recipientDelimiter",
    "relay-network": "relayNetworks",
    "relay-domain": "relayDomains",
    "route": "routes",
    "smarthost": "routes",
    "dns-server": "dnsServer",
    "relay-port": "relayPort",
    "queue-dir": "queueDir",
    "retry-schedule": "retrySchedule",
    "max-queue-age": "maxQueueAge",
    "max-message-size": "maxMessageSize",
    "max-recipients": "maxRecipients",
    "max-connections": "maxConnections",
    "max-connections-per-ip": "maxConnectionsPerIp",
    "command-timeout": "commandTimeout",
    "data-timeout": "dataTimeout",
    "max-hops": "maxHops",
    "tls-certificate": "tlsCertificate",
    "tls-key": "tlsKey",
    "relay-tls": "relayTls",
    "ca-certs": "caCerts",
}

# The options that may be given more than once; each forms a list.
REPEATABLE = frozenset(
    {"listen", "domain", "validator", "relay-network", "relay-domain", "route"}
)

# Other spellings accepted as keys of the TOML file.
_FILE_ALIASES = {
    "listens": "listen",
    "domains": "domain",
    "validators": "validator",
    "relay-networks": "relay-network",
    "relay-domains": "relay-domain",
    "routes": "route",
}

RELAY_TLS_MODES = tuple(policy.value for policy in TLSPolicy)


def readConfigFile(path: str) -> dict[str, Any]:
    """
    Read a TOML configuration file.

    Keys are the long option names (C{max-message-size}); C{_} may stand
    for C{-} and the plural of a repeatable option (C{domains}) for its
    singular.

    @return: the options it sets, by their canonical long names.

    @raise ConfigError: the file cannot be read, is not TOML, or has a key
        that is not an option.
    """
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ConfigError(
            f"cannot read configuration file {path}: {e.strerror or e}"
        ) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"configuration file {path} is not valid TOML: {e}") from None
    options: dict[str, Any] = {}
    for key, value in data.items():
        name = key.replace("_", "-").lower()
        name = _FILE_ALIASES.get(name, name)
        if name not in OPTIONS:
            raise ConfigError(f"unknown key {key!r} in configuration file {path}")
        if name in options:
            raise ConfigError(
                f"option {name!r} is given twice in configuration file {path}"
            )
        if name == "route" and isinstance(value, dict):
            # [route] table: "example.com" = "mx.example.net:25"
            value = [f"{domain}={hop}" for domain, hop in value.items()]
        options[name] = value
    return options


def loadConfig(
    fileOptions: Mapping[str, Any],
    flagOptions: Mapping[str, Any],
    *,
    configPath: Optional[str] = None,
    cwd: Optional[str] = None,
    getfqdn: Callable[[], str] = socket.getfqdn,
) -> Config:
    """
    Merge the defaults, the configuration file and the command line into
    one checked L{Config}.

    A value from the command line overrides the file's; a repeatable option
    given on the command line forms the whole list, replacing the file's
    list and the default.

    @param fileOptions: options from L{readConfigFile}.
    @param flagOptions: options given on the command line, by long name,
        without those not given; repeatable ones are lists of strings.
    @param configPath: the file's path, for error messages.
    @param cwd: the directory relative paths are resolved against; the
        current directory by default.
    @param getfqdn: gives the default hostname.

    @raise ConfigError: a value is unusable.
    """
    if cwd is None:
        cwd = os.getcwd()
    where = f" in {configPath}" if configPath else " in the configuration file"
    values: dict[str, tuple[Any, str]] = {}
    sources: dict[str, str] = {}
    for layer, source in ((fileOptions, "file"), (flagOptions, "flag")):
        for name, value in layer.items():
            if name not in OPTIONS:
                raise ConfigError(f"unknown option {name!r}")
            label = f"--{name}" if source == "flag" else f"{name!r}{where}"
            values[name] = (value, label)
            sources[name] = source

    def get(name: str, default: Any = None) -> tuple[Any, str]:
        return values.get(name, (default, f"--{name}"))

    kwargs: dict[str, Any] = {}
    if "listen" in values:
        kwargs["listen"] = tuple(_checkEndpoint(v, values["listen"][1])
                                 for v in _asList(*values["listen"]))
        if not kwargs["listen"]:
            raise ConfigError(f"{values['listen'][1]}: at least one endpoint is needed")
    if "hostname" in values:
        value, label = values["hostname"]
        kwargs["hostname"] = _checkHostname(value, label)
    else:
        kwargs["hostname"] = getfqdn()
    if "domain" in values:
        value, label = values["domain"]
        kwargs["domains"] = _unique(_checkDomain(d, label) for d in _asList(value, label))
        if not kwargs["domains"]:
            raise ConfigError(f"{label}: at least one local domain is needed")
    value, label = get("maildir-root", Config.maildirRoot)
    kwargs["maildirRoot"] = _absolute(_checkString(value, label), cwd, label)
    value, label = get("queue-dir", Config.queueDir)
    kwargs["queueDir"] = _absolute(_checkString(value, label), cwd, label)
    if "validator" in values:
        value, label = values["validator"]
        kwargs["validators"] = tuple(_checkValidator(v, label) for v in _asList(value, label))
    if "recipient-delimiter" in values:
        value, label = values["recipient-delimiter"]
        kwargs["recipientDelimiter"] = _checkDelimiter(value, label)
    if "relay-network" in values:
        value, label = values["relay-network"]
        kwargs["relayNetworks"] = _unique(_checkNetwork(v, label) for v in _asList(value, label))
    if "relay-domain" in values:
        value, label = values["relay-domain"]
        kwargs["relayDomains"] = _unique(_checkDomain(d, label) for d in _asList(value, label))
    routes: list[tuple[str, str, int]] = []
    if "route" in values:
        value, label = values["route"]
        for item in _asList(value, label):
            routes.append(_checkRoute(item, label))
    if "smarthost" in values:
        value, label = values["smarthost"]
        host, port = _checkHostPort(_checkString(value, label), label, None)
        if any(domain == "*" for domain, _, _ in routes):
            # The smarthost is the route for "*": the command line beats
            # the file, and both in one place is a mistake.
            if sources["smarthost"] == sources["route"]:
                raise ConfigError(
                    f"{label}: a route for '*' is also given; use one or the other"
                )
            if sources["smarthost"] == "flag":
                routes = [r for r in routes if r[0] != "*"]
                routes.append(("*", host, port))
        else:
            routes.append(("*", host, port))
    seen: set[str] = set()
    for domain, _, _ in routes:
        if domain in seen:
            raise ConfigError(f"{get('route')[1]}: more than one route for {domain!r}")
        seen.add(domain)
    if routes:
        kwargs["routes"] = tuple(routes)
    if "dns-server" in values:
        value, label = values["dns-server"]
        host, port = _checkHostPort(_checkString(value, label), label, 53)
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ConfigError(
                f"{label}: the DNS server must be an IP address, not {host!r}"
            ) from None
        kwargs["dnsServer"] = (host, port)
    if "relay-port" in values:
        value, label = values["relay-port"]
        kwargs["relayPort"] = _checkPort(value, label)
    if "retry-schedule" in values:
        value, label = values["retry-schedule"]
        kwargs["retrySchedule"] = _checkSchedule(value, label)
    for name in (
        "max-queue-age",
        "max-message-size",
        "max-recipients",
        "max-connections",
        "max-connections-per-ip",
        "max-hops",
    ):
        if name in values:
            kwargs[OPTIONS[name]] = _checkPositiveInt(*values[name])
    for name in ("command-timeout", "data-timeout"):
        if name in values:
            kwargs[OPTIONS[name]] = _checkPositiveNumber(*values[name])
    for name in ("tls-certificate", "tls-key", "ca-certs"):
        value, label = get(name)
        if value is not None and value != "":
            path = _absolute(_checkString(value, label), cwd, label)
            _checkReadable(path, label)
            kwargs[OPTIONS[name]] = path
    if ("tlsCertificate" in kwargs) != ("tlsKey" in kwargs):
        raise ConfigError(
            "--tls-certificate and --tls-key must be given together (or neither)"
        )
    if "relay-tls" in values:
        value, label = values["relay-tls"]
        mode = _checkString(value, label).strip().lower()
        if mode not in RELAY_TLS_MODES:
            raise ConfigError(
                f"{label}: must be one of none, may, verify, not {value!r}"
            )
        kwargs["relayTls"] = mode
    return Config(**kwargs)


def summarize(config: Config) -> str:
    """
    The configuration in one line, for the start-up log.
    """
    routes = ",".join(f"{d}={_hostPort(h, p)}" for d, h, p in config.routes) or "mx"
    return (
        f"hostname={config.hostname} domains={','.join(config.domains)} "
        f"listen={' '.join(config.listen)} "
        f"validators={','.join(config.validators) or '-'} "
        f"maildir-root={config.maildirRoot} queue-dir={config.queueDir} "
        f"relay-networks={','.join(config.relayNetworks) or '-'} "
        f"relay-domains={','.join(config.relayDomains) or '-'} routes={routes} "
        f"max-message-size={config.maxMessageSize} "
        f"tls={'on' if config.tlsCertificate else 'off'} relay-tls={config.relayTls}"
    )


def _hostPort(host: str, port: int) -> str:
    """
    C{host:port}, with an IPv6 address in brackets.
    """
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _asList(value: Any, label: str) -> list[str]:
    """
    A repeatable option's value as a list of strings; a single string is
    a list of one.
    """
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)):
        return [_checkString(v, label) for v in value]
    raise ConfigError(f"{label}: expected a string or a list of strings, not {value!r}")


def _unique(items: Iterable[str]) -> tuple[str, ...]:
    """
    The items in order, without repeats.
    """
    return tuple(dict.fromkeys(items))


def _checkString(value: Any, label: str) -> str:
    """
    The value, which must be a string.
    """
    if not isinstance(value, str):
        raise ConfigError(f"{label}: expected a string, not {value!r}")
    return value


def _absolute(path: str, cwd: str, label: str) -> str:
    """
    C{path} made absolute, relative paths being taken from C{cwd}.
    """
    if not path:
        raise ConfigError(f"{label}: a path is needed")
    return os.path.normpath(os.path.join(cwd, os.path.expanduser(path)))


def _checkEndpoint(description: str, label: str) -> str:
    """
    Check that C{description} is a server endpoint string, without
    listening.
    """
    from twisted.internet.endpoints import serverFromString
    from twisted.internet.testing import MemoryReactor

    try:
        serverFromString(MemoryReactor(), description)
    except Exception as e:
        raise ConfigError(
            f"{label}: {description!r} is not a server endpoint: {_oneLine(e)}"
        ) from None
    return description


def _oneLine(e: BaseException) -> str:
    """
    An exception's message on one line.
    """
    text = " ".join(str(e).split())
    return text or type(e).__name__


def _checkHostname(value: Any, label: str) -> str:
    """
    A host name for the greeting: a domain name.
    """
    name = _checkString(value, label).strip()
    if not name or name.startswith("[") or not isValidDomain(name):
        raise ConfigError(f"{label}: {value!r} is not a valid host name")
    return name


def _checkDomain(value: str, label: str) -> str:
    """
    A mail domain, lower-cased.
    """
    domain = value.strip().rstrip(".").lower()
    if not domain or not isValidDomain(domain):
        raise ConfigError(f"{label}: {value!r} is not a valid domain")
    return domain


def _checkValidator(value: str, label: str) -> str:
    """
    A C{NAME[:ARG]} validator specification.
    """
    name = value.partition(":")[0].strip()
    if not name:
        raise ConfigError(f"{label}: {value!r} names no validator (NAME[:ARG])")
    return value.strip()


def _checkDelimiter(value: Any, label: str) -> str:
    """
    The recipient delimiter: one character, or empty for none.
    """
    value = _checkString(value, label)
    if len(value) > 1 or value in ("@", '"') or (value and (value.isspace() or not value.isprintable())):
        raise ConfigError(
            f"{label}: must be a single character or empty, not {value!r}"
        )
    return value


def _checkNetwork(value: str, label: str) -> str:
    """
    A network in CIDR notation; host bits are allowed and cleared.
    """
    try:
        return str(ipaddress.ip_network(value.strip(), strict=False))
    except ValueError:
        raise ConfigError(f"{label}: {value!r} is not a network (CIDR)") from None


def _checkHostPort(value: str, label: str, defaultPort: Optional[int]) -> tuple[str, int]:
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
        port = rest[1:] if rest else None
    elif text.count(":") > 1:
        raise ConfigError(f"{label}: write an IPv6 address in brackets, [{text}]:PORT")
    else:
        host, colon, port = text.partition(":")
        if not colon:
            port = None
        if not host or not (isValidDomain(host) or _isIPv4(host)):
            raise ConfigError(f"{label}: {host!r} is not a valid host in {value!r}")
    if port is None:
        if defaultPort is None:
            raise ConfigError(f"{label}: expected HOST:PORT, not {value!r}")
        return host.lower(), defaultPort
    return host.lower(), _checkPort(port, label)


def _isIPv4(text: str) -> bool:
    """
    Whether C{text} is an IPv4 address.
    """
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True


def _checkRoute(value: str, label: str) -> tuple[str, str, int]:
    """
    A C{DOMAIN=HOST:PORT} route; C{*} stands for every domain.
    """
    domain, eq, hop = value.partition("=")
    if not eq:
        raise ConfigError(f"{label}: expected DOMAIN=HOST:PORT, not {value!r}")
    domain = domain.strip()
    if domain != "*":
        domain = _checkDomain(domain, label)
    host, port = _checkHostPort(hop, label, None)
    return domain, host, port


def _checkPositiveInt(value: Any, label: str) -> int:
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


def _checkPositiveNumber(value: Any, label: str) -> float:
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


def _checkPort(value: Any, label: str) -> int:
    """
    A TCP port number.
    """
    port = _checkPositiveInt(value, label)
    if port > 65535:
        raise ConfigError(f"{label}: {port} is not a port number (1-65535)")
    return port


def _checkSchedule(value: Any, label: str) -> tuple[int, ...]:
    """
    The retry schedule: positive numbers of seconds, as a list or as
    comma-separated text.
    """
    if isinstance(value, str):
        items: list[Any] = [v.strip() for v in value.split(",")]
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        raise ConfigError(
            f"{label}: expected comma-separated seconds, not {value!r}"
        )
    if not items:
        raise ConfigError(f"{label}: at least one delay is needed")
    return tuple(_checkPositiveInt(v, label) for v in items)


def _checkReadable(path: str, label: str) -> None:
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
