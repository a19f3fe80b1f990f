"""
Verdicts of recipient validators, and the chain that consults them in
order: the first verdict wins, L{None} passes on, and a validator that
raises yields a temporary failure for that recipient only.
"""

from __future__ import annotations

from typing import Iterable, Optional, Sequence

from twisted.internet.defer import CancelledError, Deferred, maybeDeferred
from twisted.logger import Logger

from smtpmx.address import Address, parseAddress


class Accept:
    """
    The recipient is accepted.

    @ivar deliverTo: L{None} to deliver to the recipient itself, or the
        list of L{Address} values it is rewritten to (aliases).
    """

    def __init__(self, deliverTo: Optional[Iterable[Address | str]] = None) -> None:
        if deliverTo is None:
            self.deliverTo = None
        else:
            self.deliverTo = [
                a if isinstance(a, Address) else parseAddress(a) for a in deliverTo
            ]
            if not self.deliverTo:
                raise ValueError("Accept(deliverTo=...) needs at least one address")

    def __repr__(self) -> str:
        return f"Accept(deliverTo={self.deliverTo!r})"


class Reject:
    """
    The recipient is refused with a 4xx (try later) or 5xx (never) reply.
    """

    def __init__(self, code: int, enhanced: str, text: str) -> None:
        if not (400 <= int(code) <= 599):
            raise ValueError(f"a rejection needs a 4xx or 5xx code, not {code!r}")
        if str(enhanced)[:1] != str(code)[:1]:
            raise ValueError(
                f"enhanced code {enhanced!r} does not match reply code {code}"
            )
        self.code = int(code)
        self.enhanced = str(enhanced)
        # A validator's text goes on the wire: no line breaks in it.
        self.text = " ".join(str(text).split()) or "Recipient rejected"

    def __repr__(self) -> str:
        return f"Reject({self.code}, {self.enhanced!r}, {self.text!r})"


class ValidatorError(Exception):
    """
    A validator raised, failed its Deferred or returned something that is
    not a verdict.
    """


class ValidatorChain:
    """
    Consults validators in order until one gives a verdict.

    @ivar validators: pairs of (name, validator), the name being what the
        log says decided.
    """

    log = Logger()

    def __init__(self, validators: Sequence[tuple[str, object]]) -> None:
        self.validators = list(validators)

    def validate(self, session, recipient: Address) -> Deferred:
        """
        Ask each validator in turn.

        @return: a L{Deferred} firing with C{(name, verdict)}; C{(None,
            None)} when none had an opinion.  It fails with
            L{ValidatorError} when a validator broke.
        """
        return self._ask(session, recipient, 0)

    def _ask(self, session, recipient: Address, index: int) -> Deferred:
        """
        Ask validator C{index}, and the next ones while none has an opinion.
        """
        if index >= len(self.validators):
            return _succeed((None, None))
        name, validator = self.validators[index]

        def decided(verdict):
            if verdict is None:
                return self._ask(session, recipient, index + 1)
            if not isinstance(verdict, (Accept, Reject)):
                self.log.error(
                    "validator {name!r} returned {verdict!r} for {recipient}, not a verdict",
                    name=name,
                    verdict=verdict,
                    recipient=str(recipient),
                )
                raise ValidatorError(
                    f"validator {name!r} returned {verdict!r}, not a verdict"
                )
            return (name, verdict)

        def broke(failure):
            if failure.check(ValidatorError, CancelledError):
                # Cancelled: the caller gave up waiting, and says so.
                return failure
            self.log.failure(
                "validator {name!r} failed on {recipient}",
                failure,
                name=name,
                recipient=str(recipient),
            )
            raise ValidatorError(f"validator {name!r} failed")

        d = maybeDeferred(validator.validateRecipient, session, recipient)
        d.addCallback(decided)
        d.addErrback(broke)
        return d


def _succeed(result) -> Deferred:
    """
    A Deferred that has already fired with C{result}.
    """
    d: Deferred = Deferred()
    d.callback(result)
    return d
