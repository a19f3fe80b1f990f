"""
The delivery backend plugin point (C{--delivery [DOMAIN=]NAME[:ARG]},
docs/plugins.rst): finding L{IDeliveryBackendFactory} plugins by name,
making the backends a configuration names, and the L{CourierRequest} a
courier backend is handed.

C{maildir} is the built-in synchronous store (its factory makes no
courier); every other backend is a courier from the durable queue, whose
recipients are queued with C{via} its specification and handed to its
C{deliver} by the relay service.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional

from smtpmx.backends import MAILDIR
from smtpmx.interfaces import IDeliveryBackendFactory
from smtpmx.pluginlookup import PluginLoadError, PluginNotFound, findFactories, makeFromSpecifications


class BackendNotFound(PluginNotFound):
    """
    No delivery backend plugin has the name asked for.
    """


class BackendLoadError(PluginLoadError):
    """
    A delivery backend plugin refused its argument.
    """


@dataclass(frozen=True)
class CourierRequest:
    """
    One queued message to hand to a courier backend for some recipients.

    @ivar backend: the backend's specification, C{NAME:ARG} (the
        recipients' C{via}).
    @ivar messageFile: the queued message: our C{Received} field, then the
        headers and body as received, LF line endings.
    @ivar size: its size in bytes.
    @ivar sender: the reverse-path without brackets; C{""} is C{<>}.
    @ivar recipients: the forward-paths without brackets, exactly as
        received.
    @ivar heloName: our host name.
    @ivar reactor: the reactor to connect or wait with.
    @ivar runBlocking: runs a blocking callable in the thread pool and
        returns a L{Deferred} of its result.
    @ivar transact: the relay's transaction runner: takes an
        L{smtpmx.relay.request.DeliveryRequest} and returns a L{Deferred}
        of its L{smtpmx.relay.request.DeliveryResult}, within the relay's
        connection cache and caps.  The built-in C{lmtp} backend speaks
        LMTP with it; other backends may ignore it.
    """

    backend: str
    messageFile: str
    size: int
    sender: str
    recipients: tuple[str, ...]
    heloName: str
    reactor: Any
    runBlocking: Callable[..., Any]
    transact: Optional[Callable[..., Any]] = None


def findBackendFactories() -> list:
    """
    Every delivery backend plugin installed, in name order.
    """
    return findFactories(IDeliveryBackendFactory)


def makeBackends(specifications: Iterable[str], factories: Optional[list] = None) -> dict[str, object]:
    """
    The backend of each C{NAME[:ARG]} specification.

    @param factories: the plugins to choose from; by default every plugin
        found by L{findBackendFactories}.

    @return: each specification to its backend; C{maildir} to L{None}.

    @raise BackendNotFound: a name has no plugin.
    @raise BackendLoadError: a plugin refused its argument.
    """
    specifications = list(dict.fromkeys(specifications))
    if not specifications:
        return {}
    if factories is None:
        factories = findBackendFactories()
    made = makeFromSpecifications(
        specifications,
        factories,
        lambda factory, argument: factory.makeBackend(argument),
        "delivery backend",
        BackendNotFound,
        BackendLoadError,
    )
    return {spec: backend for spec, (_, backend) in zip(specifications, made)}


def configuredBackends(delivery: Iterable[tuple[Optional[str], str]]) -> dict[str, object]:
    """
    The backends of C{--delivery}'s entries, C{maildir} always among them.
    """
    return makeBackends([MAILDIR, *(backend for _, backend in delivery)])
