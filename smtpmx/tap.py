"""
The twistd plugin's tap: C{twistd smtpmx [options]}.

L{Options} parses the command line, reads the TOML file given with
C{--config}, checks everything and builds the validator chain, so that a
bad option stops start-up with one line.  Its options come from the table
in L{smtpmx.options} (docs/options.rst).  L{makeService} is the entry
point, the one place that takes the global reactor; L{buildService} does
the work with the reactor passed in, for tests.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Callable, Mapping, Optional, Sequence, TypeVar

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.failure import Failure

import smtpmx
from smtpmx.config import Config, ConfigError, loadConfig, readConfigFile, summarize
from smtpmx.durable import DIRECTORY_MODE, directoryModeFor, makeDirectories
from smtpmx.backendlookup import configuredBackends, findBackendFactories
from smtpmx.filterchain import findFilterFactories, makeFilters
from smtpmx.options import OPTIONS, Option, plainText
from smtpmx.pluginlookup import PluginLoadError, PluginNotFound, listing
from smtpmx.validation import ValidatorChain
from smtpmx.validators import findValidatorFactories, makeValidatorChain


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


T = TypeVar("T")


def loadPlugins(make: Callable[[Sequence[str]], T], specifications: Sequence[str], kind: str) -> T:
    """
    Make the plugins named by C{specifications} with C{make}, turning a
    name not found or a plugin that fails to load into the one-line
    start-up error the user sees.

    @param kind: C{"validator"}, C{"filter"} or C{"backend"}, as the
        options name them.
    """
    try:
        return make(specifications)
    except PluginNotFound as e:
        raise ConfigError(
            f"unknown {kind} {e.args[0]!r} (twistd smtpmx --list-{kind}s lists them)"
        ) from None
    except PluginLoadError as e:
        raise ConfigError(str(e)) from None


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
            self.validators = loadPlugins(makeValidatorChain, self.config.validators, "validator")
            self.filters = loadPlugins(makeFilters, self.config.filters, "filter")
            self.backends = loadPlugins(configuredBackends, self.config.delivery, "backend")
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


class StartupFailed(SystemExit, Exception):
    """
    The server cannot start: a port cannot be listened on, or a directory
    it must write cannot be.

    It is a L{SystemExit}, so that C{twistd -n} ends with its one-line
    message and status 1 rather than a traceback, and an L{Exception}, so
    that a daemonizing twistd reports it to the parent process and removes
    its PID file.
    """


class ListenFailed(StartupFailed):
    """
    An endpoint could not be listened on.
    """


class ListeningService(Service):
    """
    Listens on one endpoint, in C{privilegedStartService} so that port 25
    is bound before twistd gives up root (C{--uid}/C{--gid}).

    @ivar port: the L{twisted.internet.interfaces.IListeningPort} once
        listening.
    """

    log = Logger()

    def __init__(self, reactor, description: str, factory) -> None:
        self._reactor = reactor
        self.description = description
        self.factory = factory
        self.port = None
        self._started = False

    def privilegedStartService(self) -> None:
        """
        Listen now, while we may still bind a privileged port.
        """
        super().privilegedStartService()
        self._listen()

    def startService(self) -> None:
        """
        Start; listen now if L{privilegedStartService} was not called.
        """
        super().startService()
        self._listen()

    def _listen(self) -> None:
        """
        Listen on the endpoint; a failure that is known at once ends
        start-up with L{ListenFailed}.
        """
        if self._started:
            return
        self._started = True
        d = serverFromString(self._reactor, self.description).listen(self.factory)
        later = False
        result: list = []

        def atOnce(outcome):
            if later:
                return outcome
            result.append(outcome)
            return None

        d.addBoth(atOnce)
        if not result:
            # An endpoint that answers later: a failure can then only be
            # logged and the server stopped.
            later = True
            d.addCallbacks(self._listening, self._failedLater)
            return
        outcome = result[0]
        if isinstance(outcome, Failure):
            # Not logged here: twistd writes the message to the log (stderr)
            # on its way out; logging it too would say it twice.
            raise ListenFailed(self._failureMessage(outcome))
        self._listening(outcome)

    def _failureMessage(self, failure: Failure) -> str:
        """
        The one line that says we cannot listen, and why.
        """
        return f"smtpmx cannot listen on {self.description}: {_reason(failure)}"

    def _failedLater(self, failure: Failure) -> None:
        """
        An endpoint that answered asynchronously failed: log it and stop.
        """
        self.log.critical("{message}", message=self._failureMessage(failure))
        self._reactor.stop()

    def _listening(self, port) -> None:
        """
        Record the port and log where we listen, with the port really
        bound (so C{tcp:0} tells which one it got).
        """
        self.port = port
        self.log.info(
            "smtpmx listening on {address}", address=_formatAddress(port.getHost())
        )

    def stopService(self) -> Optional[Deferred]:
        """
        Stop listening.
        """
        super().stopService()
        self._started = False
        port, self.port = self.port, None
        if port is not None:
            return port.stopListening()
        return None


def _reason(failure: Failure) -> str:
    """
    A failure's message on one line.
    """
    return " ".join(str(failure.value).split()) or failure.type.__name__


def _formatAddress(address) -> str:
    """
    C{HOST:PORT} for an IP address (C{[HOST]:PORT} for IPv6), else
    whatever describes it.
    """
    host = getattr(address, "host", None)
    port = getattr(address, "port", None)
    if host is not None and port is not None:
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    name = getattr(address, "name", None)
    if name is not None:
        return f"unix:{name.decode() if isinstance(name, bytes) else name}"
    return str(address)


class SMTPMXService(MultiService):
    """
    The whole server: its listening services, and the start-up summary of
    the configuration in the log.
    """

    log = Logger()

    def __init__(self, config: Config) -> None:
        super().__init__()
        self.config = config

    _announced = False

    def _announce(self) -> None:
        """
        Log the configuration in one line, once, before listening.
        """
        if not self._announced:
            self._announced = True
            self.log.info(
                "smtpmx {version} starting: {summary}",
                version=smtpmx.__version__,
                summary=summarize(self.config),
            )

    def privilegedStartService(self) -> None:
        """
        Log the configuration, then listen (as root, if we are).
        """
        self._announce()
        super().privilegedStartService()

    def startService(self) -> None:
        """
        Log the configuration if not done yet, check that the Maildir root
        and the queue can be written (as the user twistd now runs as), then
        start.

        @raise StartupFailed: one of them cannot be.
        """
        self._announce()
        # A root made here is reachable by the group that may read the
        # mail (--maildir-mode); making it setgid is the operator's call.
        checkWritable(
            "--maildir-root", self.config.maildirRoot, directoryModeFor(self.config.maildirMode)
        )
        checkWritable("--queue-dir", self.config.queueDir)
        super().startService()


def checkWritable(option: str, path: str, mode: int = DIRECTORY_MODE) -> None:
    """
    Make sure directory C{path} exists and can be written, at start-up
    (blocking is fine: nothing else runs yet).  A directory made here
    gets C{mode} exactly, whatever the umask: C{0700}, or for the Maildir
    root the directory mode of C{--maildir-mode}.

    @raise StartupFailed: with one line naming the option and the problem.
    """
    try:
        makeDirectories([path], mode)
        if not os.path.isdir(path):
            raise NotADirectoryError(20, "Not a directory", path)
        if not os.access(path, os.W_OK | os.X_OK):
            raise PermissionError(13, "Permission denied", path)
    except OSError as e:
        raise StartupFailed(f"{option} {path}: {e.strerror or e}") from None


def threadRunner(reactor) -> Callable[..., Deferred]:
    """
    C{runBlocking(f, *args, **kwargs)}: runs C{f} in C{reactor}'s thread
    pool and returns a L{Deferred} of its result.  The pool is only
    fetched (and started) on first use.
    """

    def runBlocking(f, *args, **kwargs) -> Deferred:
        return deferToThreadPool(reactor, reactor.getThreadPool(), f, *args, **kwargs)

    return runBlocking


class _LazyResolver:
    """
    A resolver made on first use: Twisted's reads C{resolv.conf} and
    schedules re-reads as soon as it is made, which a server that never
    relays has no need of.
    """

    def __init__(self, make: Callable[[], object]) -> None:
        self._make = make
        self._resolver = None

    def __getattr__(self, name: str):
        if self._resolver is None:
            self._resolver = self._make()
        return getattr(self._resolver, name)


def buildService(
    config: Config,
    validators: ValidatorChain,
    tlsOptions,
    reactor,
    filters: Sequence[tuple[str, object]] = (),
    backends: Optional[Mapping[str, object]] = None,
    handleSignals: bool = False,
) -> SMTPMXService:
    """
    Build the server's services.

    @param reactor: the reactor to listen, time and run threads with.
    @param filters: the message filters, C{(name, filter)} pairs in order;
        with none, messages go straight to the store.
    @param backends: the delivery backends of C{config.delivery}, by
        specification (L{smtpmx.backendlookup.makeBackends}); the relay
        service hands their queued recipients to them.
    @param handleSignals: whether C{SIGHUP} reloads (the real server's
        process; not a test's).
    """
    from smtpmx.access import Access
    from smtpmx.delivery.maildir import MaildirStore
    from smtpmx.filterchain import FilterChain
    from smtpmx.filterstore import FilteringStore
    from smtpmx.freespace import FreeSpaceMonitor
    from smtpmx.reload import ReloadService
    from smtpmx.relay.transaction import deliver
    from smtpmx.relay.nexthop import makeResolver
    from smtpmx.relay.intake import QueueStore
    from smtpmx.relay.queue import Queue
    from smtpmx.relay.service import RelayService
    from smtpmx.routing import RoutingStore
    from smtpmx.server import SMTPServerFactory

    runBlocking = threadRunner(reactor)
    queue = Queue(config.queueDir)
    queueStore = QueueStore(queue, runBlocking, reactor)
    # Mail for LMTP domains (--delivery) is queued, then handed over by
    # the relay service, which hears of each message once it is committed.
    store = RoutingStore(
        MaildirStore(config.maildirRoot, runBlocking, mode=config.maildirMode), queueStore
    )
    if filters:
        chain = FilterChain(filters, reactor, config.filterTimeout, config.filterFailure)
        # Spooled messages wait in the queue's tmp/, on the queue's disk;
        # what a crash leaves there is removed at the next start.
        store = FilteringStore(
            store, chain, Access.fromConfig(config), config, runBlocking,
            queue.temporaryDirectory, reactor=reactor,
        )
    monitor = None
    if config.minFreeSpace:
        monitor = FreeSpaceMonitor(
            [("--maildir-root", config.maildirRoot), ("--queue-dir", config.queueDir)],
            config.minFreeSpace, runBlocking, reactor,
        )
    factory = SMTPServerFactory(
        config,
        validators,
        store,
        reactor,
        runBlocking,
        tlsOptions=tlsOptions,
        lowOnSpace=monitor.isLow if monitor is not None else None,
    )
    relay = RelayService(
        config,
        queue,
        runBlocking,
        reactor,
        _LazyResolver(lambda: makeResolver(config.dnsServer, reactor)),
        deliver,
        factory.newQueueId,
        reactor,
        backends=backends,
    )
    queueStore.onQueued = relay.queued
    service = SMTPMXService(config)
    # First, so that the queue is recovered before any connection is taken.
    relay.setName("relay")
    relay.setServiceParent(service)
    if monitor is not None:
        # Before listening: the first measure is made before any MAIL.
        monitor.setName("free space")
        monitor.setServiceParent(service)
    reloader = ReloadService(
        factory,
        pluginLabels("validator", config.validators, validators.validators)
        + pluginLabels("filter", config.filters, filters),
        runBlocking,
        reactor,
        (config.tlsCertificate, config.tlsKey) if tlsOptions is not None else None,
        handleSignal=handleSignals,
    )
    reloader.setName("reload")
    reloader.setServiceParent(service)
    for description in config.listen:
        listening = ListeningService(reactor, description, factory)
        listening.setName(f"listen {description}")
        listening.setServiceParent(service)
    return service


def pluginLabels(
    kind: str, specifications: Sequence[str], plugins: Sequence[tuple[str, object]]
) -> list[tuple[str, object]]:
    """
    Each plugin with how the log names it: its kind and its
    C{NAME[:ARG]} specification (its name alone when the specifications
    do not match the plugins one for one).
    """
    if len(specifications) != len(plugins):
        specifications = [name for name, _ in plugins]
    return [(f"{kind} {spec}", plugin) for spec, (_, plugin) in zip(specifications, plugins)]


def makeService(options: Options) -> SMTPMXService:
    """
    The twistd entry point: the server on the global reactor.
    """
    from twisted.internet import reactor

    return buildService(
        options.config, options.validators, options.tlsOptions, reactor, options.filters,
        options.backends, handleSignals=True,
    )
