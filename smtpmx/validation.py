"""
Verdicts of recipient validators, the context a validator is asked in, and
the chain that consults validators in order: the first verdict wins, L{None}
passes on, and a validator that raises yields a temporary failure for that
recipient only.  The plugin API is described in C{docs/plugins.rst}.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional, Sequence

from twisted.internet.defer import CancelledError, Deferred, maybeDeferred
from twisted.logger import Logger

from smtpmx.address import Address, parseAddress
from smtpmx.config import Config


@dataclass(frozen=True)
class ValidationContext:
    """
    What a validator knows of the transaction it is asked about: the
    C{session} argument of C{validateRecipient(session, recipient)}.

    It is a frozen snapshot taken when the transaction begins (MAIL), so a
    validator can neither change the session nor see it change under it
    while its verdict is pending.  L{smtpmx.testing.validationContext}
    builds one for a plugin's tests.

    @ivar clientHost: the client's IP address, as text.
    @ivar heloName: the name the client gave in EHLO or HELO.
    @ivar reversePath: the sender, or L{None} for the null path C{<>}.
    @ivar config: the server's L{Config}.
    @ivar runBlocking: C{runBlocking(f, *args, **kwargs)} runs a blocking
        function off the reactor thread and returns a L{Deferred} firing
        with its result; a validator that touches the disk or the network
        the blocking way must go through it.
    @ivar esmtp: whether the client greeted with EHLO (RFC 5321 section
        4.1.1.1) rather than HELO.
    @ivar declaredSize: the C{SIZE} parameter of MAIL (RFC 1870 section
        6), or L{None} when the client gave none.
    @ivar reactor: the server's reactor, for a validator that talks to a
        server of its own the non-blocking way (connects, times out); or
        L{None} when the context was built without one (a plugin's tests).
    """

    clientHost: str
    heloName: Optional[str]
    reversePath: Optional[Address]
    config: Config
    runBlocking: Callable[..., Deferred]
    esmtp: bool = True
    declaredSize: Optional[int] = None
    reactor: Any = None


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

    def validate(self, session: ValidationContext, recipient: Address) -> Deferred:
        """
        Ask each validator in turn.

        @param session: the context every validator is given.

        @return: a L{Deferred} firing with C{(name, verdict)}; C{(None,
            None)} when none had an opinion.  It fails with
            L{ValidatorError} when a validator broke.
        """
        return self._ask(session, recipient, 0)

    def _ask(self, session: ValidationContext, recipient: Address, index: int) -> Deferred:
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
