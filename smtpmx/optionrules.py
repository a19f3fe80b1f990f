"""
The checks that span several options of L{smtpmx.options}: each rule sees
every value once each option has been checked on its own, and may refuse
the combination (L{ConfigError}) or complete one value from another (a
C{--smarthost} is the route for C{*}).  L{smtpmx.config.loadConfig}
applies L{RULES} in order; docs/options.rst describes each check with its
options.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple, Optional

from smtpmx.optiontypes import ConfigError


# Rules: checks that span several options, applied after each option is
# checked on its own.


class Given(NamedTuple):
    """
    An option's value as given, before checking.

    @ivar label: how errors name it: C{--name}, or C{'name' in FILE}.
    @ivar source: C{"file"} or C{"flag"}.
    """

    value: Any
    label: str
    source: str


Rule = Callable[[dict[str, Any], Mapping[str, Given]], None]


def smarthostIsStarRoute(values: dict[str, Any], given: Mapping[str, Given]) -> None:
    """
    C{--smarthost} is the route for C{*}: on the command line it replaces
    the file's; both in one place is a mistake.
    """
    if values["smarthost"] is None:
        return
    host, port = values["smarthost"]
    routes = list(values["route"])
    if any(domain == "*" for domain, _, _ in routes):
        if given["smarthost"].source == given["route"].source:
            raise ConfigError(
                f"{given['smarthost'].label}: a route for '*' is also given;"
                " use one or the other"
            )
        if given["smarthost"].source == "flag":
            routes = [r for r in routes if r[0] != "*"]
            routes.append(("*", host, port))
    else:
        routes.append(("*", host, port))
    values["route"] = tuple(routes)


def oneRoutePerDomain(values: dict[str, Any], given: Mapping[str, Given]) -> None:
    """
    A domain has at most one route.
    """
    seen: set[str] = set()
    for domain, _, _ in values["route"]:
        if domain in seen:
            label = given["route"].label if "route" in given else "--route"
            raise ConfigError(f"{label}: more than one route for {domain!r}")
        seen.add(domain)


def certificateWithKey(values: dict[str, Any], given: Mapping[str, Given]) -> None:
    """
    The STARTTLS certificate and key are given together, or neither.
    """
    if (values["tls-certificate"] is None) != (values["tls-key"] is None):
        raise ConfigError(
            "--tls-certificate and --tls-key must be given together (or neither)"
        )


def oneBackendPerDomain(values: dict[str, Any], given: Mapping[str, Given]) -> None:
    """
    A domain has at most one delivery backend, and there is at most one
    entry without a domain; a named domain is a local domain.
    """
    seen: set[Optional[str]] = set()
    label = given["delivery"].label if "delivery" in given else "--delivery"
    for domain, _ in values["delivery"]:
        if domain in seen:
            which = repr(domain) if domain else "the domains not named"
            raise ConfigError(f"{label}: more than one backend for {which}")
        if domain is not None and domain not in values["domain"]:
            raise ConfigError(f"{label}: {domain!r} is not a local domain (--domain)")
        seen.add(domain)


def spfRejectNeedsSpf(values: dict[str, Any], given: Mapping[str, Given]) -> None:
    """
    C{--spf-reject} acts on SPF's verdict: SPF must be among the checks.
    """
    if values["spf-reject"] and "spf" not in values["auth-checks"]:
        raise ConfigError("--spf-reject needs spf in --auth-checks")


# More worker processes than this is a mistake, not a configuration.
MAX_WORKERS = 64


def workersShareTCP(values: dict[str, Any], given: Mapping[str, Given]) -> None:
    """
    At most L{MAX_WORKERS} workers, and above 1 they accept on TCP
    sockets their parent bound (C{tcp:} or C{tcp6:}, adopted as they are).
    """
    if values["workers"] > MAX_WORKERS:
        raise ConfigError(f"{given['workers'].label}: at most {MAX_WORKERS}")
    for description in values["listen"] if values["workers"] > 1 else ():
        if description.split(":", 1)[0].strip().lower() not in ("tcp", "tcp6"):
            raise ConfigError(f"--listen {description!r}: with --workers above 1, use tcp: or tcp6:")


RULES: tuple[Rule, ...] = (
    smarthostIsStarRoute, oneRoutePerDomain, certificateWithKey, oneBackendPerDomain,
    spfRejectNeedsSpf, workersShareTCP,
)
