"""
Finding plugins by name, shared by the three plugin points: recipient
validators (C{--validator NAME[:ARG]}), message filters
(C{--filter NAME[:ARG]}) and delivery backends (C{--delivery
[DOMAIN=]NAME[:ARG]}).

All three follow the pattern of L{twisted.cred.strcred}: factories found with
C{getPlugins(interface, smtpmx.plugins)} (built-ins and any third-party
C{smtpmx/plugins/} directory on C{sys.path}), each with a C{name} and a
C{description}, and a specification C{NAME[:ARG]} that picks a factory by
name and hands it the argument (C{docs/plugins.rst}).
"""

from __future__ import annotations

from typing import Callable, Iterable, Optional, TypeVar

from twisted.plugin import getPlugins

T = TypeVar("T")


class PluginNotFound(LookupError):
    """
    No plugin has the name asked for; C{args[0]} is the name.
    """


class PluginLoadError(ValueError):
    """
    A plugin refused its argument or failed to make what it makes.
    """


def findFactories(interface) -> list:
    """
    Every factory plugin providing C{interface}, in name order.
    """
    import smtpmx.plugins

    factories = list(getPlugins(interface, smtpmx.plugins))
    return sorted(factories, key=lambda f: str(getattr(f, "name", "")))


def listing(factories: Iterable) -> str:
    """
    What C{--list-validators}, C{--list-filters} and C{--list-backends} print: one line per
    factory, its name then its description on one line.
    """
    lines = []
    for factory in factories:
        description = " ".join(str(getattr(factory, "description", "")).split())
        lines.append(f"{factory.name}  {description}\n")
    return "".join(lines)


def makeFromSpecifications(
    specifications: Iterable[str],
    factories: list,
    make: Callable[[object, Optional[str]], T],
    kind: str,
    notFound: type[PluginNotFound] = PluginNotFound,
    loadError: type[PluginLoadError] = PluginLoadError,
) -> list[tuple[str, T]]:
    """
    Make one plugin object per C{NAME[:ARG]} specification, in order.

    @param factories: the plugins to choose from; the first of a name wins.
    @param make: C{make(factory, argument)} makes the object; the argument
        is the text after the first C{:}, or L{None} when there is no C{:}.
    @param kind: what is made, for error messages (C{"validator"}).
    @param notFound: the L{PluginNotFound} subclass to raise.
    @param loadError: the L{PluginLoadError} subclass to raise.

    @return: pairs of (name, object made).

    @raise PluginNotFound: a name has no plugin.
    @raise PluginLoadError: a plugin failed to make its object; the
        message names the specification and says why.
    """
    byName: dict = {}
    for factory in factories:
        byName.setdefault(getattr(factory, "name", None), factory)
    made = []
    for specification in specifications:
        name, colon, argument = specification.partition(":")
        factory = byName.get(name)
        if factory is None:
            raise notFound(name)
        try:
            thing = make(factory, argument if colon else None)
        except Exception as e:
            reason = " ".join(str(e).split()) or type(e).__name__
            raise loadError(f"{kind} {specification!r} failed to load: {reason}") from e
        made.append((name, thing))
    return made
