"""
The configuration: defaults, the TOML file and the command line merged into
one frozen L{Config}, checked once at start-up.

The options, their defaults and their checks are declared once, in
L{smtpmx.options}; docs/options.rst is their reference.
"""

from __future__ import annotations

import os
import socket
import tomllib
from typing import Any, Callable, Mapping, Optional

from smtpmx.optionrules import RULES, Given
from smtpmx.options import FILE_OPTIONS, Option, configType, fileKeys
from smtpmx.optiontypes import ConfigError, LoadContext, asList, hostPort

__all__ = ["Config", "ConfigError", "loadConfig", "readConfigFile", "summarize"]

Config = configType(FILE_OPTIONS)
Config.__module__ = __name__
Config.__doc__ = """
    Every option, checked and normalised: domains lower-cased, paths
    absolute, C{routes} as C{(domain or "*", host, port)}, C{dnsServer} as
    C{(ip, port)} or L{None}.  Its fields and their defaults are those of
    L{smtpmx.options.SECTIONS} (docs/options.rst).
    """


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
    keys = fileKeys()
    options: dict[str, Any] = {}
    for key, value in data.items():
        option = keys.get(key.replace("_", "-").lower())
        if option is None:
            raise ConfigError(f"unknown key {key!r} in configuration file {path}")
        if option.name in options:
            raise ConfigError(
                f"option {option.name!r} is given twice in configuration file {path}"
            )
        fromTable = option.valueType.fromTable if option.valueType else None
        if isinstance(value, dict) and fromTable is not None:
            value = fromTable(value)
        options[option.name] = value
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
    context = LoadContext(os.getcwd() if cwd is None else cwd, getfqdn)
    where = f" in {configPath}" if configPath else " in the configuration file"
    known = {option.name for option in FILE_OPTIONS}
    given: dict[str, Given] = {}
    for layer, source in ((fileOptions, "file"), (flagOptions, "flag")):
        for name, value in layer.items():
            if name not in known:
                raise ConfigError(f"unknown option {name!r}")
            label = f"--{name}" if source == "flag" else f"{name!r}{where}"
            given[name] = Given(value, label, source)
    values = {
        option.name: checkOption(option, given.get(option.name), context)
        for option in FILE_OPTIONS
    }
    for rule in RULES:
        rule(values, given)
    return Config(
        **{o.field: values[o.name] for o in FILE_OPTIONS if o.field is not None}
    )


def checkOption(option: Option, given: Optional[Given], context: LoadContext) -> Any:
    """
    One option's checked value: the value given, or else its default.

    @raise ConfigError: the value given is unusable.
    """
    valueType = option.valueType
    assert valueType is not None, option.name
    if given is None:
        if option.defaultFrom is not None:
            return option.defaultFrom(context)
        if valueType.resolvesDefault:
            return valueType.parse(option.default, option.flag, context)
        return option.default
    value, label, _ = given
    if not option.repeatable:
        return valueType.parse(value, label, context)
    items = [valueType.parse(item, label, context) for item in asList(value, label)]
    if option.unique:
        items = list(dict.fromkeys(items))
    if option.atLeastOne and not items:
        raise ConfigError(f"{label}: at least one {option.atLeastOne} is needed")
    return tuple(items)


def summarize(config: Config) -> str:
    """
    The configuration in one line, for the start-up log.
    """
    routes = ",".join(f"{d}={hostPort(h, p)}" for d, h, p in config.routes) or "mx"
    return (
        f"hostname={config.hostname} domains={','.join(config.domains)} "
        f"listen={' '.join(config.listen)} "
        f"validators={','.join(config.validators) or '-'} "
        f"filters={','.join(config.filters) or '-'} "
        f"maildir-root={config.maildirRoot} maildir-mode=0{config.maildirMode:o} "
        f"delivery={','.join(f'{d}={b}' if d else b for d, b in config.delivery) or 'maildir'} "
        f"queue-dir={config.queueDir} "
        f"relay-networks={','.join(config.relayNetworks) or '-'} "
        f"relay-domains={','.join(config.relayDomains) or '-'} routes={routes} "
        f"max-message-size={config.maxMessageSize} "
        f"auth-checks={','.join(config.authChecks) or 'none'} "
        f"dmarc-policy={config.dmarcPolicy} "
        f"tls={'on' if config.tlsCertificate else 'off'} relay-tls={config.relayTls}"
        + (f" workers={config.workers}" if config.workers > 1 else "")
    )
