"""
The plugin package of smtpmx: recipient validator factories
(L{smtpmx.interfaces.IRecipientValidatorFactory}) are found here with
C{twisted.plugin.getPlugins(IRecipientValidatorFactory, smtpmx.plugins)}.

Like C{twisted/plugins}, any C{smtpmx/plugins/} directory elsewhere on
C{sys.path} is searched too; it needs no C{__init__.py}.
"""

from twisted.plugin import pluginPackagePaths

__path__.extend(pluginPackagePaths(__name__))  # type: ignore[name-defined]
__all__: list[str] = []
