"""
The built-in recipient validators, and the lookup of validator plugins by
name for C{--validator NAME[:ARG]} (the pattern of L{twisted.cred.strcred}).

The built-ins are themselves plugins, in L{smtpmx.plugins.builtin_validators},
shaped exactly like third-party ones.
"""

from __future__ import annotations

from typing import Iterable, Optional

from twisted.plugin import getPlugins

from smtpmx.address import Address, UnsafeMailbox, mailboxName
from smtpmx.interfaces import IRecipientValidatorFactory
from smtpmx.validation import Reject, ValidatorChain


def badMailbox() -> Reject:
    """
    The refusal of a local part that cannot name a mailbox directory:
    C{550 5.1.3}, "bad destination mailbox address syntax" (RFC 3463
    section 3.2).
    """
    return Reject(550, "5.1.3", "Bad recipient address syntax")


class ValidatorNotFound(LookupError):
    """
    No validator plugin has the name asked for.
    """


class ValidatorLoadError(ValueError):
    """
    A validator plugin refused its argument or failed to make a validator.
    """


def findValidatorFactories() -> list:
    """
    Every validator factory plugin found, in name order.
    """
    import smtpmx.plugins

    factories = list(getPlugins(IRecipientValidatorFactory, smtpmx.plugins))
    return sorted(factories, key=lambda f: str(getattr(f, "name", "")))


def findValidatorFactory(name: str):
    """
    The validator factory plugin called C{name}.

    @raise ValidatorNotFound: there is none.
    """
    for factory in findValidatorFactories():
        if getattr(factory, "name", None) == name:
            return factory
    raise ValidatorNotFound(name)


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
    byName = {}
    for factory in factories:
        byName.setdefault(getattr(factory, "name", None), factory)
    chain = []
    for specification in specifications:
        name, colon, argument = specification.partition(":")
        factory = byName.get(name)
        if factory is None:
            raise ValidatorNotFound(name)
        try:
            validator = factory.makeValidator(argument if colon else None)
        except Exception as e:
            reason = " ".join(str(e).split()) or type(e).__name__
            raise ValidatorLoadError(
                f"validator {specification!r} failed to load: {reason}"
            ) from e
        chain.append((name, validator))
    return ValidatorChain(chain)


def localMailbox(session, recipient: Address) -> Optional[str | Reject]:
    """
    The Maildir name of a recipient in one of our domains.

    @return: L{None} when the recipient is not local, the mailbox name, or
        a C{550 5.1.3} L{Reject} when its local part cannot be a directory
        name.
    """
    config = session.config
    if not recipient.domain or recipient.domain.lower() not in config.domains:
        return None
    try:
        return mailboxName(recipient, config.recipientDelimiter)
    except UnsafeMailbox:
        return badMailbox()
