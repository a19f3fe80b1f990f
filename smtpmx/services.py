"""
The server's twistd services and how they are built from a checked
configuration: listening on each endpoint, the whole server
(L{SMTPMXService}: start-up checks, the thread pool of sender
authentication, the log observer), and L{buildService}, which wires the
stores, the relay, sender authentication, the free-space guard, reloads
and the status site together.  The reactor is always passed in;
L{smtpmx.tap} gives the global one.
"""

from __future__ import annotations

import os
from typing import Callable, Mapping, Optional, Sequence, TypeVar

from twisted.application.service import MultiService, Service
from twisted.python.components import Componentized
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.threads import deferToThreadPool
from twisted.logger import ILogObserver, Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

import smtpmx
from smtpmx.config import Config, ConfigError, summarize
from smtpmx.pluginlookup import PluginLoadError, PluginNotFound
from smtpmx.durable import DIRECTORY_MODE, directoryModeFor, makeDirectories
from smtpmx.threadrunner import ThreadRunner
from smtpmx.validation import ValidatorChain

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
    @ivar label: who listens, in the log: C{smtpmx} (the SMTP server) or
        C{smtpmx metrics}.
    """

    log = Logger()

    def __init__(self, reactor, description: str, factory, label: str = "smtpmx") -> None:
        self._reactor = reactor
        self.description = description
        self.factory = factory
        self.label = label
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
        return f"{self.label} cannot listen on {self.description}: {_reason(failure)}"

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
            "{label} listening on {address}", label=self.label, address=_formatAddress(port.getHost())
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


class AdoptedListeningService(Service):
    """
    Accepts on a listening socket that another process bound: a worker of
    C{--workers} on its parent's (C{adoptStreamPort}).  Every worker
    accepts on the same sockets; the kernel gives each connection to one.

    @ivar port: the L{twisted.internet.interfaces.IListeningPort} once
        accepting.
    """

    log = Logger()

    def __init__(self, reactor, description: str, fileDescriptor: int, addressFamily: int,
                 factory, label: str = "smtpmx worker") -> None:
        """
        @param description: the endpoint the socket was bound for, for the
            log and the health check.
        @param fileDescriptor: the listening socket, non-blocking; closed
            once adopted (the port holds its own copy).
        @param addressFamily: its family (C{socket.AF_INET} or C{AF_INET6}).
        @param label: who accepts, in the log (C{smtpmx worker 2}).
        """
        self._reactor = reactor
        self.label = label
        self.description = description
        self.fileDescriptor: Optional[int] = fileDescriptor
        self.addressFamily = addressFamily
        self.factory = factory
        self.port = None

    def startService(self) -> None:
        """
        Accept on the socket.
        """
        super().startService()
        if self.fileDescriptor is None:
            raise RuntimeError(f"the socket of {self.description} is gone: a worker starts once")
        self.port = self._reactor.adoptStreamPort(self.fileDescriptor, self.addressFamily, self.factory)
        os.close(self.fileDescriptor)
        self.fileDescriptor = None
        self.log.info("{label} accepting on {address}", label=self.label,
                      address=_formatAddress(self.port.getHost()))

    def stopService(self) -> Optional[Deferred]:
        """
        Stop accepting (the socket stays open in the other processes).
        """
        super().stopService()
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
    The whole server: its listening services, the thread pool of sender
    authentication, and the start-up summary of the configuration in the
    log.

    @ivar threadPool: the thread pool of sender authentication's checks,
        or L{None}; started with the server, stopped once its services
        are.
    @ivar logObserver: the L{ILogObserver} twistd is to log with
        (C{--log-format json}), or L{None} for twistd's own.
    """

    log = Logger()

    def __init__(self, config: Config, threadPool: Optional[ThreadPool] = None,
                 announce: bool = True) -> None:
        """
        @param announce: whether starting logs the configuration (not a
            worker's: its parent has).
        """
        super().__init__()
        self.config = config
        self.threadPool = threadPool
        self.logObserver: Optional[ILogObserver] = None
        self._announced = not announce

    def setServiceParent(self, parent) -> None:
        """
        Join twistd's application; it logs with the application's
        L{ILogObserver} component, if any (C{twisted.application.app.AppLogger}),
        so C{logObserver} becomes that component.
        """
        if self.logObserver is not None and isinstance(parent, Componentized):
            parent.setComponent(ILogObserver, self.logObserver)
        super().setServiceParent(parent)

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
        if self.threadPool is not None:
            self.threadPool.start()
        super().startService()

    def stopService(self) -> Deferred:
        """
        Stop the services, then the thread pool (its threads end once the
        check each runs is over: the checks are bounded in time).
        """
        d = super().stopService()
        if self.threadPool is not None:
            pool = self.threadPool

            def stopPool(result):
                pool.stop()
                return result

            d.addBoth(stopPool)
        return d


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
    C{runBlocking(f, *args, **kwargs)}: runs C{f} in a thread and returns a
    L{Deferred} of its result (L{ThreadRunner}: its threads start on first
    use and stop when C{reactor} shuts down).
    """
    return ThreadRunner(reactor)


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


T = TypeVar("T")


def loadPlugins(make: Callable[[Sequence[str]], T], specifications: Sequence[str], kind: str) -> T:
    """
    Make the plugins named by C{specifications} with C{make}, turning a
    name not found or a plugin that fails to load into the one-line
    start-up error the user sees.

    @param kind: C{"validator"}, C{"filter"} or C{"backend"}, as the
        options name them.

    @raise ConfigError: a plugin is not found or cannot be made.
    """
    try:
        return make(specifications)
    except PluginNotFound as e:
        raise ConfigError(
            f"unknown {kind} {e.args[0]!r} (twistd smtpmx --list-{kind}s lists them)"
        ) from None
    except PluginLoadError as e:
        raise ConfigError(str(e)) from None


def configuredPlugins(config: Config) -> tuple[ValidatorChain, list, dict]:
    """
    The validator chain, the message filters (C{(name, filter)} pairs) and
    the delivery backends (by specification) that C{config} names.

    @raise ConfigError: a plugin is not found or cannot be made.
    """
    from smtpmx.backendlookup import configuredBackends
    from smtpmx.filterchain import makeFilters
    from smtpmx.validators import makeValidatorChain

    return (
        loadPlugins(makeValidatorChain, config.validators, "validator"),
        loadPlugins(makeFilters, config.filters, "filter"),
        loadPlugins(configuredBackends, config.delivery, "backend"),
    )


# Threads of sender authentication's pool: each runs the checks of one
# message or sender at a time, blocked on their lookups.
AUTH_THREADS = 10


def senderAuthentication(config: Config, reactor):
    """
    Sender authentication as C{--auth-checks} asks for it: a
    L{smtpmx.auth.checker.SenderAuthentication} whose checks run in a
    thread pool of their own (never the reactor's, whose threads the
    storage uses), their lookups going through one
    L{smtpmx.auth.dns.Resolver} aimed at C{--dns-server} (else the
    servers of C{/etc/resolv.conf}, read at the first lookup).

    @return: the L{SenderAuthentication} and its L{ThreadPool} (to be
        started and stopped with the server), or C{(None, None)} with
        C{--auth-checks none}.
    """
    from smtpmx.auth.checker import SenderAuthentication
    from smtpmx.auth.dns import Resolver
    from smtpmx.auth.results import Method

    if not config.authChecks:
        return None, None
    pool = ThreadPool(0, AUTH_THREADS, name="smtpmx-auth")

    def runInThread(f, *args, **kwargs) -> Deferred:
        return deferToThreadPool(reactor, pool, f, *args, **kwargs)

    authentication = SenderAuthentication(
        frozenset(Method(m) for m in config.authChecks),
        Resolver(config.dnsServer),
        runInThread,
        reactor,
        config.authTimeout,
    )
    return authentication, pool


def buildService(
    config: Config,
    validators: ValidatorChain,
    tlsOptions,
    reactor,
    filters: Sequence[tuple[str, object]] = (),
    backends: Optional[Mapping[str, object]] = None,
    handleSignals: bool = False,
    worker=None,
) -> SMTPMXService:
    """
    Build the server's services: the whole server in one process or, with
    C{worker}, one worker of C{--workers} (docs/workers.rst).

    @param reactor: the reactor to listen, time and run threads with.
    @param filters: the message filters, C{(name, filter)} pairs in order;
        with none, and no sender authentication (C{--auth-checks none}),
        messages go straight to the store.
    @param backends: the delivery backends of C{config.delivery}, by
        specification (L{smtpmx.backendlookup.makeBackends}); the relay
        service hands their queued recipients to them.
    @param handleSignals: whether C{SIGHUP} reloads (the real server's
        process; not a test's).
    @param worker: L{None} for the whole server; for a worker, its
        L{smtpmx.worker.WorkerSpec}: it accepts on the sockets its parent
        bound, runs the relay only if it is the relay worker (which lists
        the queue rather than recovering it, and hears of the messages
        the others queue), and serves no C{--metrics} (the parent does).
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
    authentication, authPool = senderAuthentication(config, reactor)
    if filters or authentication is not None:
        chain = FilterChain(filters, reactor, config.filterTimeout, config.filterFailure)
        # Spooled messages wait in the queue's tmp/, on the queue's disk;
        # what a crash leaves there is removed at the next start.
        store = FilteringStore(
            store, chain, Access.fromConfig(config), config, runBlocking,
            queue.temporaryDirectory, reactor=reactor, authentication=authentication,
        )
    metrics = None
    if config.metrics is not None:
        from smtpmx.metrics import Metrics

        metrics = Metrics.fromEnvironment()
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
        authentication=authentication,
        observer=metrics,
        lowOnSpace=monitor.isLow if monitor is not None else None,
    )
    service = SMTPMXService(config, authPool, announce=worker is None)
    relay = None
    if worker is None or worker.relay:
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
            recover=worker is None,
        )
        queueStore.onQueued = relay.queued
        # First, so that the queue is recovered before any connection is taken.
        relay.setName("relay")
        relay.setServiceParent(service)
    if worker is not None:
        addWorkerServices(service, worker, relay, queueStore, reactor)
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
    listeners: list = []
    if worker is None:
        for description in config.listen:
            listeners.append(ListeningService(reactor, description, factory))
    else:
        for description, fileDescriptor, family in worker.listeners:
            listeners.append(AdoptedListeningService(
                reactor, description, fileDescriptor, family, factory, f"smtpmx worker {worker.index}"
            ))
    for listening in listeners:
        listening.setName(f"listen {listening.description}")
        listening.setServiceParent(service)
    if metrics is not None:
        addStatusServices(service, metrics, relay, listeners, reactor, runBlocking, serve=worker is None)
    return service


def addWorkerServices(service: MultiService, worker, relay, queueStore, reactor) -> None:
    """
    What makes a worker of C{--workers} one of several: the relay worker
    hears of the messages the others queue; the others tell it
    (L{smtpmx.relay.wakeup}).
    """
    from smtpmx.relay.wakeup import QueueListener, QueueNotifier

    if relay is None:
        queueStore.onQueued = QueueNotifier(worker.notifyFD)
        return
    listener = QueueListener(relay, worker.notifyFD, reactor)
    # After the relay, whose list of the queue comes first.
    listener.setName("queue listener")
    listener.setServiceParent(service)


def addStatusServices(service: MultiService, metrics, relay, listeners: Sequence[ListeningService],
                      reactor, runBlocking: Callable[..., Deferred], serve: bool = True) -> None:
    """
    C{--metrics}: the relay's attempts counted, the queue sampled, the
    health checked, and C{/metrics} and C{/healthz} served
    (L{smtpmx.webstatus}).

    @param relay: the relay service, or L{None} in a worker without it.
    @param serve: whether this process serves them (not a worker: its
        parent serves every worker's figures).
    """
    from smtpmx.metrics import MetricsService
    from smtpmx.webstatus import HealthCheck, statusSite

    config = service.config
    if relay is not None:
        relay.onAttempt = metrics.relayAttempted
    health = HealthCheck(
        lambda: [s.description for s in listeners if s.port is None],
        [("--maildir-root", config.maildirRoot), ("--queue-dir", config.queueDir)],
        runBlocking,
        reactor,
    )
    sampler = MetricsService(metrics, relay, reactor, checkHealth=health.check)
    sampler.setName("metrics")
    sampler.setServiceParent(service)
    if not serve:
        return
    site = statusSite(metrics, health, runBlocking, beforeScrape=sampler.sample)
    status = ListeningService(reactor, config.metrics, site, label="smtpmx metrics")
    status.setName(f"metrics {config.metrics}")
    status.setServiceParent(service)


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
