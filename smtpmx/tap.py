"""
The twistd plugin's tap: C{twistd smtpmx [options]}.

L{Options} parses the command line, reads the TOML file given with
C{--config}, checks everything and builds the validator chain, so that a
bad option stops start-up with one line.  Its options come from the table
in L{smtpmx.options} (docs/options.rst).  L{makeService} is the entry
point, the one place that takes the global reactor;
L{smtpmx.services.buildService} does the work with the reactor passed in,
for tests.
"""

from __future__ import annotations

import sys
from typing import Any, Callable, Optional

from twisted.python import usage

from smtpmx.config import Config, ConfigError, loadConfig, readConfigFile
from smtpmx.backendlookup import findBackendFactories
from smtpmx.filterchain import findFilterFactories
from smtpmx.options import OPTIONS, LogFormat, Option, plainText
from smtpmx.pluginlookup import listing
from smtpmx.validation import ValidatorChain
from smtpmx.services import SMTPMXService, buildService, configuredPlugins
from smtpmx.validators import findValidatorFactories


def helpText(option: Option) -> str:
    """
    An option's line in C{--help}: what it does, what its value looks
    like, whether it repeats, and its default.
    """
    shape = [option.metavar] if option.metavar else []
    if option.repeatable:
        shape.append("repeatable")
    if option.metavar or option.valueType is not None:
        shape.append(f"default: {plainText(option.showDefault())}")
    text = plainText(option.help)
    return f"{text} [{', '.join(shape)}]" if shape else text


def handlerName(option: Option) -> str:
    """
    The name of the C{opt_} method that handles C{option}.
    """
    return "opt_" + option.name.replace("-", "_")


def collector(option: Option) -> Callable[[Any, str], None]:
    """
    The C{opt_} method of a repeatable option: it collects every value
    given, in order.
    """

    def collect(self: TableOptions, value: str) -> None:
        """
        Collect one more value.
        """
        self.repeated[option.name].append(value)
        self[option.name] = list(self.repeated[option.name])

    collect.__name__ = handlerName(option)
    collect.__doc__ = helpText(option)
    return collect


class TableOptions(usage.Options):
    """
    A L{usage.Options} whose options come from a table of L{Option}s (the
    class attribute C{table}): a parameter for each option that takes one
    value, a flag for each boolean, an C{opt_} method collecting the values
    of each repeatable one.  An option of the command line alone that
    takes no value (C{--list-validators}) is an C{opt_} method that the
    subclass writes; its help text still comes from the table.

    @ivar repeated: the values of each repeatable option, in order.
    """

    table: tuple[Option, ...] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """
        Derive the parameters, flags and C{opt_} methods of a subclass
        from its C{table}.

        @raise TypeError: an action of the table has no C{opt_} method.
        """
        super().__init_subclass__(**kwargs)
        if "table" not in cls.__dict__:
            return
        cls.optParameters = [
            [o.name, None, None, helpText(o)]
            for o in cls.table
            if not o.isFlag and not o.repeatable
        ]
        cls.optFlags = [
            [o.name, None, helpText(o)]
            for o in cls.table
            if o.isFlag and o.valueType is not None
        ]
        for option in cls.table:
            if option.repeatable:
                setattr(cls, handlerName(option), collector(option))
            elif option.isFlag and option.valueType is None:
                if not callable(getattr(cls, handlerName(option), None)):
                    raise TypeError(f"{cls.__name__} needs {handlerName(option)}")

    def __init__(self) -> None:
        """
        Parse nothing yet; the help of every option is the table's.
        """
        super().__init__()
        for option in self.table:
            self.docs[option.name] = helpText(option)
        self.repeated: dict[str, list[str]] = {
            o.name: [] for o in self.table if o.repeatable
        }

    def flagOptions(self) -> dict[str, object]:
        """
        The options of the configuration given on the command line, by
        long name, for L{loadConfig}; repeatable ones as lists, booleans
        given as C{True}.
        """
        flags: dict[str, object] = {}
        for option in self.table:
            if option.commandLineOnly:
                continue
            if option.repeatable:
                if self.repeated[option.name]:
                    flags[option.name] = list(self.repeated[option.name])
            elif option.isFlag:
                if self[option.name]:
                    flags[option.name] = True
            elif self.get(option.name) is not None:
                flags[option.name] = self[option.name]
        return flags


class Options(TableOptions):
    """
    The command line of C{twistd smtpmx}: the options of
    L{smtpmx.options.OPTIONS}.  Every option but C{--config} and
    C{--list-validators} can also be set in the TOML file given with
    C{--config}; the command line wins.

    After parsing, C{config} is the checked L{Config}, C{validators} the
    L{ValidatorChain}, C{filters} the message filters as C{(name, filter)}
    pairs, C{backends} the delivery backends by specification and
    C{tlsOptions} the server's TLS context factory (or L{None}).
    """

    synopsis = "[options]"
    longdesc = (
        "smtpmx is a mail exchanger for a small domain: it receives mail over "
        "SMTP, files it into Maildirs for its own domains and relays mail for "
        "trusted clients. Every option may also be set in the TOML file given "
        "with --config (keys named like the options); an option given here "
        "overrides the file, and a repeatable option given here replaces the "
        "file's list."
    )
    table = OPTIONS

    def __init__(self) -> None:
        """
        No configuration until the options are parsed.
        """
        super().__init__()
        self.config: Optional[Config] = None
        self.validators: Optional[ValidatorChain] = None
        self.filters: list[tuple[str, object]] = []
        self.backends: dict[str, object] = {}
        self.tlsOptions = None

    def opt_list_validators(self) -> None:
        """
        List every recipient validator found, with its description, and
        exit.
        """
        sys.stdout.write(listing(findValidatorFactories()))
        sys.stdout.flush()
        raise SystemExit(0)

    def opt_list_filters(self) -> None:
        """
        List every message filter found, with its description, and exit.
        """
        sys.stdout.write(listing(findFilterFactories()))
        sys.stdout.flush()
        raise SystemExit(0)

    def opt_list_backends(self) -> None:
        """
        List every delivery backend found, with its description, and exit.
        """
        sys.stdout.write(listing(findBackendFactories()))
        sys.stdout.flush()
        raise SystemExit(0)

    def postOptions(self) -> None:
        """
        Load and check the configuration, find the validators and read
        the TLS certificate; any problem is a one-line usage error.
        """
        try:
            fileOptions = readConfigFile(self["config"]) if self["config"] else {}
            self.config = loadConfig(
                fileOptions, self.flagOptions(), configPath=self["config"]
            )
            self.validators, self.filters, self.backends = configuredPlugins(self.config)
            twistd = getattr(self, "parent", None)
            if self.config.logFormat == LogFormat.JSON.value and twistd is not None and twistd.get("syslog"):
                raise ConfigError("--log-format json: the JSON lines go to twistd's log file or stdout, not to syslog")
            if self.config.tlsCertificate is not None:
                from smtpmx.tls import serverTLSOptions

                # An expired certificate is only a warning
                # (smtpmx.reload logs it): an MX that does not start
                # loses mail.
                self.tlsOptions = serverTLSOptions(
                    self.config.tlsCertificate, self.config.tlsKey, checkValidity=False
                )
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None


def makeService(options: Options) -> SMTPMXService:
    """
    The twistd entry point: the server on the global reactor, in this
    process or, with C{--workers} above 1, in that many worker processes
    this one starts and watches (L{smtpmx.workers}).
    """
    from twisted.internet import reactor

    twistdOptions = getattr(options, "parent", None)
    if options.config.workers > 1:
        from smtpmx.workers import WorkersService, parentLog

        # The log is opened now, as twistd opens its own: before it
        # daemonizes.
        return WorkersService(
            options.config, options.tlsOptions, reactor,
            log=parentLog(twistdOptions, options.config.logFormat),
        )
    service = buildService(
        options.config, options.validators, options.tlsOptions, reactor, options.filters,
        options.backends, handleSignals=True,
    )
    twistdOptions = getattr(options, "parent", None)
    if options.config.logFormat == LogFormat.JSON.value:
        from smtpmx.jsonlog import JSONLogObserver, twistdLogFile

        # Opened now, as twistd opens its own: before it daemonizes.
        service.logObserver = JSONLogObserver(twistdLogFile(twistdOptions))
    else:
        from smtpmx.textlog import twistdTextObserver

        # twistd's own lines, their time stamps made once a second.
        service.logObserver = twistdTextObserver(twistdOptions, reactor.callFromThread)
    return service
