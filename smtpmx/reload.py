"""
Reloading without a restart, and the watch on the certificate's end.

C{SIGHUP} (C{kill -HUP PID}) makes the running server read again what it
read at start-up: the STARTTLS certificate and key, checked first (a pair
that is unreadable, mismatched or not valid now is logged in one line and
the pair in force is kept), and the files of every validator and message
filter that provides L{IReloadable}.  No connection is dropped: a session
keeps the TLS it has, and every STARTTLS from then on uses the new
certificate.

The certificate in force is looked at when the server starts and once a
day: past its end, or within 14 days of it, a warning goes to the log.
"""

from __future__ import annotations

import datetime
import signal
from typing import Callable, Optional, Sequence

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from smtpmx.interfaces import IReloadable
from smtpmx.optiontypes import oneLine
from smtpmx.tls import certificateOf, describe, expiryWarning, serverTLSOptions

# Seconds between two looks at the certificate's end.
DAY = 86400.0


def utcNow() -> datetime.datetime:
    """
    The current time, in UTC.
    """
    return datetime.datetime.now(datetime.timezone.utc)


class ReloadService(Service):
    """
    Reloads on C{SIGHUP}, and warns of the certificate's end.

    @ivar factory: holds the TLS options in force (C{tlsOptions}), which a
        reload replaces.
    """

    log = Logger()

    def __init__(
        self,
        factory,
        plugins: Sequence[tuple[str, object]],
        runBlocking: Callable[..., Deferred],
        reactor,
        certificatePaths: Optional[tuple[str, str]] = None,
        now: Callable[[], datetime.datetime] = utcNow,
        handleSignal: bool = False,
    ) -> None:
        """
        @param factory: the SMTP server factory; its C{tlsOptions} are the
            certificate in force.
        @param plugins: C{(label, plugin)} pairs, every validator and
            filter (C{"validator aliases:/etc/smtpmx/aliases"}); those
            providing L{IReloadable} are reloaded.
        @param runBlocking: runs a blocking function in the thread pool.
        @param reactor: the clock of the daily look, and what the signal
            handler hands the reload to (C{callFromThread}).
        @param certificatePaths: the certificate and key files, or L{None}
            without TLS.
        @param now: the current time (UTC).
        @param handleSignal: whether to handle C{SIGHUP} while running
            (only the real server does; tests call L{reload}).
        """
        self.factory = factory
        self.plugins = list(plugins)
        self._runBlocking = runBlocking
        self._reactor = reactor
        self._certificatePaths = certificatePaths
        self._now = now
        self._handleSignal = handleSignal
        self._previousHandler = None
        self._daily: Optional[LoopingCall] = None
        self._reloading: Optional[Deferred] = None
        self._again = False

    # Life.

    def startService(self) -> None:
        """
        Look at the certificate now and every day after, and handle
        C{SIGHUP}.
        """
        super().startService()
        if self._certificatePaths is not None:
            self.checkExpiry()
            self._daily = LoopingCall(self.checkExpiry)
            self._daily.clock = self._reactor
            self._daily.start(DAY, now=False)
        if self._handleSignal:
            self._previousHandler = signal.signal(signal.SIGHUP, self._hangUp)

    def stopService(self) -> None:
        """
        Stop the daily look and give C{SIGHUP} back.
        """
        super().stopService()
        if self._daily is not None and self._daily.running:
            self._daily.stop()
        self._daily = None
        if self._handleSignal and self._previousHandler is not None:
            signal.signal(signal.SIGHUP, self._previousHandler)
            self._previousHandler = None

    def _hangUp(self, number: int, frame) -> None:
        """
        The signal handler: the reload runs in the reactor, soon (a signal
        handler may interrupt the reactor anywhere, so it only queues it).
        """
        self._reactor.callFromThread(self.reload)

    # The certificate's end.

    def checkExpiry(self) -> None:
        """
        Warn in the log when the certificate in force has expired, is not
        valid yet, or expires within 14 days.
        """
        options = self.factory.tlsOptions
        if options is None or self._certificatePaths is None:
            return
        warning = expiryWarning(certificateOf(options), self._certificatePaths[0], self._now())
        if warning is not None:
            self.log.warn("{warning}", warning=warning)

    # Reloading.

    def reload(self) -> Deferred:
        """
        Read the certificate and the plugins' files again.  A reload asked
        for while one runs follows it.

        @return: a L{Deferred} that fires with L{None} when done; it
            never fails.
        """
        if self._reloading is not None:
            self._again = True
            return self._reloading
        self._reloading = d = self._reloadAll()

        def finished(_) -> Optional[Deferred]:
            self._reloading = None
            if self._again:
                self._again = False
                return self.reload()
            return None

        return d.addCallback(finished)

    def _reloadAll(self) -> Deferred:
        """
        One reload of everything there is to reload.
        """
        reloadable = [(label, p) for label, p in self.plugins if IReloadable.providedBy(p)]
        certificate = self._certificatePaths is not None and self.factory.tlsOptions is not None
        self.log.info(
            "SIGHUP: reloading {what}",
            what=", ".join(
                (["the TLS certificate"] if certificate else [])
                + [label for label, _ in reloadable]
            ) or "nothing (no TLS certificate, no plugin with files to read again)",
        )
        steps = [self._reloadCertificate()] if certificate else []
        steps += [self._reloadPlugin(label, plugin) for label, plugin in reloadable]

        def done(results) -> None:
            kept = sum(1 for ok, _ in results if not ok)
            self.log.info(
                "reload done: {ok} reloaded, {kept} kept as they were",
                ok=len(results) - kept, kept=kept,
            )

        return DeferredList(steps, consumeErrors=True).addCallback(done)

    def _reloadCertificate(self) -> Deferred:
        """
        Read and check the certificate and key in the thread pool; put
        them in force if they are good, else keep the pair in force.
        """
        certPath, keyPath = self._certificatePaths

        def installed(options) -> None:
            self.factory.tlsOptions = options
            self.log.info(
                "reloaded the TLS certificate {path}: {certificate}",
                path=certPath, certificate=describe(certificateOf(options)),
            )
            self.checkExpiry()

        def failed(failure: Failure) -> Failure:
            self.log.error(
                "TLS certificate not reloaded, the one in force is kept: {why}",
                why=oneLine(failure.value),
            )
            return failure

        d = self._runBlocking(serverTLSOptions, certPath, keyPath, self._now)
        return d.addCallbacks(installed, failed)

    def _reloadPlugin(self, label: str, plugin) -> Deferred:
        """
        Ask one plugin to read its files again.
        """

        def failed(failure: Failure) -> Failure:
            self.log.error(
                "{label} not reloaded, it keeps its old files: {why}",
                label=label, why=oneLine(failure.value),
            )
            return failure

        d = maybeDeferred(plugin.reload, self._runBlocking)
        d.addCallbacks(lambda _: self.log.info("reloaded {label}", label=label), failed)
        return d
