"""
The twistd plugin's tap: C{twistd smtpmx [options]} (SPEC section 2).

L{Options} parses the command line, reads the TOML file given with
C{--config}, checks everything and builds the validator chain, so that a
bad option stops start-up with one line.  L{makeService} is the entry
point, the one place that takes the global reactor; L{buildService} does
the work with the reactor passed in, for tests.
"""

from __future__ import annotations

import os
import sys
from typing import Callable, Optional

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.failure import Failure

import smtpmx
from smtpmx.config import (
    OPTIONS,
    REPEATABLE,
    Config,
    ConfigError,
    loadConfig,
    readConfigFile,
    summarize,
)
from smtpmx.validation import ValidatorChain
from smtpmx.validators import (
    ValidatorLoadError,
    ValidatorNotFound,
    findValidatorFactories,
    makeValidatorChain,
)

_DEFAULTS = Config()


def _help(text: str, default: object) -> str:
    """
    An option's help text with its default.
    """
    return f"{text} [default: {default}]"


class Options(usage.Options):
    """
    The command line of C{twistd smtpmx}.  Every option can also be set in
    the TOML file given with C{--config}; the command line wins.

    After parsing, C{config} is the checked L{Config}, C{validators} the
    L{ValidatorChain} and C{tlsOptions} the server's TLS context factory
    (or L{None}).
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

    optParameters = [
        ["config", None, None, "TOML configuration file (see etc/smtpmx.toml). [default: none]"],
        ["hostname", None, None, _help("Our name in the greeting, EHLO reply, Received header and bounces.", "the host's FQDN")],
        ["maildir-root", None, None, _help("Maildirs live at DIR/<domain>/<localpart>/.", _DEFAULTS.maildirRoot)],
        ["recipient-delimiter", None, None, _help("user+tag@domain is delivered to user's Maildir; '' for none.", _DEFAULTS.recipientDelimiter)],
        ["smarthost", None, None, _help("HOST:PORT, the same as --route '*=HOST:PORT'.", "none")],
        ["dns-server", None, None, _help("HOST:PORT of the resolver used for MX/A/AAAA lookups.", "the system's")],
        ["relay-port", None, None, _help("Port used when connecting to an MX host.", _DEFAULTS.relayPort)],
        ["queue-dir", None, None, _help("Directory of the durable relay queue.", _DEFAULTS.queueDir)],
        ["retry-schedule", None, None, _help("Seconds between relay attempts, comma-separated; the last repeats.", ",".join(map(str, _DEFAULTS.retrySchedule)))],
        ["max-queue-age", None, None, _help("Seconds after which an undelivered message is bounced.", _DEFAULTS.maxQueueAge)],
        ["max-message-size", None, None, _help("Bytes; advertised in SIZE and enforced.", _DEFAULTS.maxMessageSize)],
        ["max-recipients", None, None, _help("Recipients per transaction; more get 452 4.5.3.", _DEFAULTS.maxRecipients)],
        ["max-connections", None, None, _help("Simultaneous connections; past it 421 4.7.0.", _DEFAULTS.maxConnections)],
        ["max-connections-per-ip", None, None, _help("Simultaneous connections from one address.", _DEFAULTS.maxConnectionsPerIp)],
        ["command-timeout", None, None, _help("Seconds a client may stay idle between commands.", int(_DEFAULTS.commandTimeout))],
        ["data-timeout", None, None, _help("Seconds a client may stay idle while sending the message.", int(_DEFAULTS.dataTimeout))],
        ["max-hops", None, None, _help("More Received: headers than this is a mail loop (554 5.4.6).", _DEFAULTS.maxHops)],
        ["tls-certificate", None, None, _help("PEM certificate (chain) enabling STARTTLS; needs --tls-key.", "off")],
        ["tls-key", None, None, _help("PEM private key of --tls-certificate.", "off")],
        ["relay-tls", None, None, _help("Relay client TLS: none, may (opportunistic) or verify (required and verified).", _DEFAULTS.relayTls)],
        ["ca-certs", None, None, _help("PEM trust roots for --relay-tls verify.", "the system's")],
    ]

    def __init__(self) -> None:
        super().__init__()
        # The help of an opt_ method is its docstring, on one line.
        self.docs = {
            name: " ".join(doc.split()) if doc else doc
            for name, doc in self.docs.items()
        }
        self.repeated: dict[str, list[str]] = {name: [] for name in REPEATABLE}
        self.config: Optional[Config] = None
        self.validators: Optional[ValidatorChain] = None
        self.tlsOptions = None

    def _repeat(self, name: str, value: str) -> None:
        """
        Collect one more value of a repeatable option.
        """
        self.repeated[name].append(value)
        self[name] = list(self.repeated[name])

    def opt_listen(self, endpoint: str) -> None:
        """
        Twisted server endpoint to listen on (tcp:25, tcp6:25:interface=\\:\\:);
        repeatable. [default: tcp:2525:interface=127.0.0.1]
        """
        self._repeat("listen", endpoint)

    def opt_domain(self, domain: str) -> None:
        """
        A local domain; repeatable. [default: localhost]
        """
        self._repeat("domain", domain)

    def opt_validator(self, specification: str) -> None:
        """
        NAME[:ARG], a recipient validator, consulted in order; repeatable
        (--list-validators lists them). [default: mailbox]
        """
        self._repeat("validator", specification)

    def opt_relay_network(self, network: str) -> None:
        """
        CIDR of clients allowed to relay to any domain; repeatable.
        [default: 127.0.0.0/8, ::1/128]
        """
        self._repeat("relay-network", network)

    def opt_relay_domain(self, domain: str) -> None:
        """
        A domain relayed for any client (backup MX); repeatable.
        [default: none]
        """
        self._repeat("relay-domain", domain)

    def opt_route(self, route: str) -> None:
        """
        DOMAIN=HOST:PORT, a fixed next hop for a domain, no MX lookup; '*'
        matches every domain; repeatable. [default: none]
        """
        self._repeat("route", route)

    def opt_list_validators(self) -> None:
        """
        List every recipient validator found, with its description, and
        exit.
        """
        out = sys.stdout
        for factory in findValidatorFactories():
            description = " ".join(str(getattr(factory, "description", "")).split())
            out.write(f"{factory.name}  {description}\n")
        out.flush()
        raise SystemExit(0)

    def flagOptions(self) -> dict[str, object]:
        """
        The options given on the command line, by long name, for
        L{loadConfig}; repeatable ones as lists.
        """
        flags: dict[str, object] = {}
        for name in OPTIONS:
            if name in REPEATABLE:
                if self.repeated[name]:
                    flags[name] = list(self.repeated[name])
            elif self.get(name) is not None:
                flags[name] = self[name]
        return flags

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
            try:
                self.validators = makeValidatorChain(self.config.validators)
            except ValidatorNotFound as e:
                raise ConfigError(
                    f"unknown validator {e.args[0]!r}"
                    " (twistd smtpmx --list-validators lists them)"
                ) from None
            except ValidatorLoadError as e:
                raise ConfigError(str(e)) from None
            if self.config.tlsCertificate is not None:
                from smtpmx.tls import serverTLSOptions

                self.tlsOptions = serverTLSOptions(
                    self.config.tlsCertificate, self.config.tlsKey
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
        checkWritable("--maildir-root", self.config.maildirRoot)
        checkWritable("--queue-dir", self.config.queueDir)
        super().startService()


def checkWritable(option: str, path: str) -> None:
    """
    Make sure directory C{path} exists and can be written, at start-up
    (blocking is fine: nothing else runs yet).

    @raise StartupFailed: with one line naming the option and the problem.
    """
    try:
        os.makedirs(path, 0o700, exist_ok=True)
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
    config: Config, validators: ValidatorChain, tlsOptions, reactor
) -> SMTPMXService:
    """
    Build the server's services.

    @param reactor: the reactor to listen, time and run threads with.
    """
    from smtpmx.relay.transaction import deliver
    from smtpmx.relay.nexthop import makeResolver
    from smtpmx.relay.queue import Queue, QueueStore
    from smtpmx.relay.service import RelayService
    from smtpmx.routing import RoutingStore
    from smtpmx.server import SMTPServerFactory
    from smtpmx.store import MaildirStore

    runBlocking = threadRunner(reactor)
    queue = Queue(config.queueDir)
    queueStore = QueueStore(queue, runBlocking, reactor)
    store = RoutingStore(MaildirStore(config.maildirRoot, runBlocking), queueStore)
    factory = SMTPServerFactory(
        config,
        validators,
        store,
        reactor,
        runBlocking,
        tlsOptions=tlsOptions,
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
    )
    queueStore.onQueued = relay.queued
    service = SMTPMXService(config)
    # First, so that the queue is recovered before any connection is taken.
    relay.setName("relay")
    relay.setServiceParent(service)
    for description in config.listen:
        listening = ListeningService(reactor, description, factory)
        listening.setName(f"listen {description}")
        listening.setServiceParent(service)
    return service


def makeService(options: Options) -> SMTPMXService:
    """
    The twistd entry point: the server on the global reactor.
    """
    from twisted.internet import reactor

    return buildService(options.config, options.validators, options.tlsOptions, reactor)
