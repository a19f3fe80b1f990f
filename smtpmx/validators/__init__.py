"""
The built-in recipient validators, and the lookup of validator plugins by
name for C{--validator NAME[:ARG]} (the pattern of L{twisted.cred.strcred}).

The built-ins are themselves plugins, in L{smtpmx.plugins.builtin_validators},
shaped exactly like third-party ones.
"""

from __future__ import annotations

from typing import Iterable, Optional

from smtpmx.address import Address, UnsafeMailbox, mailboxName
from smtpmx.backends import MAILDIR, backendFor
from smtpmx.interfaces import IRecipientValidatorFactory
from smtpmx.pluginlookup import (
    PluginLoadError,
    PluginNotFound,
    findFactories,
    makeFromSpecifications,
)
from smtpmx.validation import Reject, ValidatorChain


def badMailbox() -> Reject:
    """
    The refusal of a local part that cannot name a mailbox directory:
    C{550 5.1.3}, "bad destination mailbox address syntax" (RFC 3463
    section 3.2).
    """
    return Reject(550, "5.1.3", "Bad recipient address syntax")


class ValidatorNotFound(PluginNotFound):
    """
    No validator plugin has the name asked for.
    """


class ValidatorLoadError(PluginLoadError):
    """
    A validator plugin refused its argument or failed to make a validator.
    """


def findValidatorFactories() -> list:
    """
    Every validator factory plugin found, in name order.
    """
    return findFactories(IRecipientValidatorFactory)


def makeValidatorChain(
    specifications: Iterable[str], factories: Optional[list] = None
) -> ValidatorChain:
    """
    Build the validator chain from C{NAME[:ARG]} specifications, in order.

    @param factories: the plugins to choose from; by default every plugin
        found by L{findValidatorFactories}.

    @raise ValidatorNotFound: a name has no plugin.
    @raise ValidatorLoadError: a plugin failed to make its validator; the
        message names the validator and says why.
    """
    if factories is None:
        factories = findValidatorFactories()
    return ValidatorChain(
        makeFromSpecifications(
            specifications,
            factories,
            lambda factory, argument: factory.makeValidator(argument),
            "validator",
            ValidatorNotFound,
            ValidatorLoadError,
        )
    )


def localMailbox(session, recipient: Address) -> Optional[str | Reject]:
    """
    The Maildir name of a recipient in one of our domains whose mail is
    filed in Maildirs.  A domain delivered by a courier backend (C{--delivery
    DOMAIN=lmtp:ENDPOINT} or another plugin) keeps no Maildir here, so the Maildir validators
    (C{mailbox}, C{any}) have no opinion on it: the C{lmtp} validator or
    C{aliases} speaks for it (docs/storage.rst).

    @return: L{None} when the recipient is not local or its domain is
        delivered by a courier backend, the mailbox name, or a C{550 5.1.3} L{Reject} when its
        local part cannot be a directory name.
    """
    config = session.config
    if not recipient.domain or recipient.domain.lower() not in config.domains:
        return None
    if backendFor(config.delivery, recipient.domain.lower()) != MAILDIR:
        return None
    try:
        return mailboxName(recipient, config.recipientDelimiter)
    except UnsafeMailbox:
        return badMailbox()
