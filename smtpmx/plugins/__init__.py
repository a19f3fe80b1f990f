"""
The plugin package of smtpmx: recipient validator, message filter and
delivery backend factories (L{smtpmx.interfaces.IRecipientValidatorFactory},
L{smtpmx.interfaces.IMessageFilterFactory},
L{smtpmx.interfaces.IDeliveryBackendFactory}) are found here with
C{twisted.plugin.getPlugins(INTERFACE, smtpmx.plugins)}.

Like C{twisted/plugins}, any C{smtpmx/plugins/} directory elsewhere on
C{sys.path} is searched too; it needs no C{__init__.py}.
"""

from twisted.plugin import pluginPackagePaths

__path__.extend(pluginPackagePaths(__name__))  # type: ignore[name-defined]
__all__: list[str] = []
