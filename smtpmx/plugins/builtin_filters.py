"""
The built-in message filters, shipped as plugins shaped exactly like
third-party ones (docs/plugins.rst): C{rspamd[:URL]}.

The factory itself lives with the filter, in L{smtpmx.filters.rspamd}.
"""

from __future__ import annotations

from twisted.plugin import IPlugin
from zope.interface import alsoProvides

try:
    from smtpmx.filters.rspamd import RspamdFilterFactory
except ModuleNotFoundError as e:  # pragma: no cover - until smtpmx.filters is there
    if e.name not in ("smtpmx.filters", "smtpmx.filters.rspamd"):
        raise
else:
    rspamd = RspamdFilterFactory()
    if not IPlugin.providedBy(rspamd):
        alsoProvides(rspamd, IPlugin)
