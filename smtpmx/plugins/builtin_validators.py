"""
The built-in recipient validators, shipped as plugins shaped exactly like
third-party ones (docs/plugins.rst): C{mailbox}, C{any}, C{aliases:PATH},
C{policy:ENDPOINT} and C{lmtp[:ENDPOINT]}.
"""

from __future__ import annotations

import os
from typing import Optional

from twisted.plugin import IPlugin
from zope.interface import implementer

from smtpmx.interfaces import IRecipientValidatorFactory


def _noArgument(name: str, argument: Optional[str]) -> None:
    """
    Refuse an argument given to a validator that takes none.
    """
    if argument:
        raise ValueError(f"{name} takes no argument")


@implementer(IPlugin, IRecipientValidatorFactory)
class MailboxValidatorFactory:
    """
    Makes the C{mailbox} validator.
    """

    name = "mailbox"
    description = "Accepts a local recipient whose Maildir already exists."

    def makeValidator(self, argument: Optional[str]):
        """
        A L{smtpmx.validators.mailbox.MailboxValidator}; no argument.
        """
        from smtpmx.validators.mailbox import MailboxValidator

        _noArgument(self.name, argument)
        return MailboxValidator()


@implementer(IPlugin, IRecipientValidatorFactory)
class AnyLocalValidatorFactory:
    """
    Makes the C{any} validator.
    """

    name = "any"
    description = "Accepts every local recipient; its Maildir is created on first delivery."

    def makeValidator(self, argument: Optional[str]):
        """
        A L{smtpmx.validators.anylocal.AnyLocalValidator}; no argument.
        """
        from smtpmx.validators.anylocal import AnyLocalValidator

        _noArgument(self.name, argument)
        return AnyLocalValidator()


@implementer(IPlugin, IRecipientValidatorFactory)
class AliasesValidatorFactory:
    """
    Makes the C{aliases:PATH} validator.
    """

    name = "aliases"
    description = (
        "aliases:PATH - accepts the recipients listed in an aliases file"
        " ('local@domain: target, ...'; '@domain: target' is a catch-all),"
        " re-read when it changes."
    )

    def makeValidator(self, argument: Optional[str]):
        """
        An L{smtpmx.validators.aliases.AliasesValidator} for the file
        C{argument}, read now.

        @raise ValueError: no file given, or it cannot be read or parsed.
        """
        from smtpmx.validators.aliases import AliasesValidator

        if not argument:
            raise ValueError("aliases needs a file: --validator aliases:PATH")
        return AliasesValidator(os.path.abspath(argument))


@implementer(IPlugin, IRecipientValidatorFactory)
class PolicyValidatorFactory:
    """
    Makes the C{policy:ENDPOINT} validator.
    """

    name = "policy"
    description = (
        "policy:ENDPOINT - asks a Postfix SMTPD policy server (postgrey, policyd-spf,"
        " Dovecot quota-status) at each RCPT; ENDPOINT is a Twisted client endpoint"
        " such as tcp:127.0.0.1:10023 or unix:/run/postgrey.sock."
    )

    def makeValidator(self, argument: Optional[str]):
        """
        An L{smtpmx.validators.policy.PolicyValidator} for the endpoint
        C{argument}, checked now; it connects on first use.

        @raise ValueError: no endpoint given, or not an endpoint string.
        """
        from smtpmx.validators.policy import PolicyValidator, checkEndpoint

        checkEndpoint(argument or "")
        return PolicyValidator(argument)


@implementer(IPlugin, IRecipientValidatorFactory)
class LmtpValidatorFactory:
    """
    Makes the C{lmtp[:ENDPOINT]} validator.
    """

    name = "lmtp"
    description = (
        "lmtp[:ENDPOINT] - asks the LMTP server (Dovecot) at each RCPT whether it takes"
        " the local recipient: unknown users 550 5.1.1, over quota its 552/452, down"
        " 451 4.3.0; ENDPOINT defaults to the recipient domain's --delivery lmtp: backend."
    )

    def makeValidator(self, argument: Optional[str]):
        """
        An L{smtpmx.validators.lmtp.LmtpValidator} for the endpoint
        C{argument} (checked now) or, without one, each domain's LMTP
        backend; it connects on first use.

        @raise ValueError: C{argument} is not an endpoint string.
        """
        from smtpmx.validators.lmtp import LmtpValidator, checkEndpoint

        if argument:
            checkEndpoint(argument)
        return LmtpValidator(argument or None)


mailbox = MailboxValidatorFactory()
anyLocal = AnyLocalValidatorFactory()
aliases = AliasesValidatorFactory()
policy = PolicyValidatorFactory()
lmtp = LmtpValidatorFactory()
