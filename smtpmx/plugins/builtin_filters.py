"""
The built-in message filters, shipped as plugins shaped exactly like
third-party ones (docs/plugins.rst): C{rspamd[:URL]}.

The factory itself lives with the filter, in L{smtpmx.filters.rspamd}.
"""

from smtpmx.filters.rspamd import RspamdFilterFactory

rspamd = RspamdFilterFactory()
