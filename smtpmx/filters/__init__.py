"""
The code of the built-in message filters (C{docs/plugins.rst}); their
factories are the plugins of C{smtpmx.plugins.builtin_filters}.
"""
