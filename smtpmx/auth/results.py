"""
The verdicts of sender authentication, as values: one per method and
message, the words of RFC 8601 section 2.7 (C{pass}, C{fail},
C{softfail}, C{neutral}, C{none}, C{temperror}, C{permerror}).

They are made by the checks (L{smtpmx.auth.spf}, L{smtpmx.auth.dkim},
L{smtpmx.auth.dmarc}) and read by the store, the log line and the
C{Authentication-Results:} field.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Optional


class Method(enum.Enum):
    """
    A sender authentication method (C{--auth-checks}).
    """

    SPF = "spf"
    DKIM = "dkim"
    DMARC = "dmarc"
    ARC = "arc"


class DmarcPolicy(enum.Enum):
    """
    What a DMARC failure does (C{--dmarc-policy}).

    @cvar ENFORCE: the sender domain's policy is honoured: C{p=reject}
        refuses the message, C{p=quarantine} files it in the Junk folder.
    @cvar TAG: results are only recorded.
    """

    ENFORCE = "enforce"
    TAG = "tag"


@dataclass(frozen=True)
class SpfResult:
    """
    The SPF verdict on the client address (RFC 7208 section 2.6).

    @ivar result: an RFC 8601 result word.
    @ivar mailfrom: the MAIL FROM domain checked (RFC 7208 section 2.4),
        or L{None} for the null sender, whose HELO name was checked.
    @ivar helo: the HELO name, when it was the identity checked.
    """

    result: str
    mailfrom: Optional[str] = None
    helo: Optional[str] = None

    @property
    def domain(self) -> Optional[str]:
        """
        The domain SPF authenticated or not: the identity checked, for
        DMARC's alignment (RFC 7489 section 3.1.2).
        """
        return self.mailfrom if self.mailfrom is not None else self.helo


@dataclass(frozen=True)
class DkimResult:
    """
    The verdict on one C{DKIM-Signature:} field (RFC 6376 section 6.1),
    or C{none} for an unsigned message (no domain, no selector).

    @ivar domain: its C{d=}.
    @ivar selector: its C{s=}.
    @ivar reason: why it failed, for the field's C{reason=}; empty on a
        pass.
    """

    result: str
    domain: Optional[str] = None
    selector: Optional[str] = None
    reason: str = ""


@dataclass(frozen=True)
class DmarcResult:
    """
    The DMARC verdict on the C{From:} domain (RFC 7489 section 6.6).

    @ivar fromDomain: the RFC5322.From domain evaluated; L{None} when
        there is none to evaluate (a C{permerror}).
    @ivar policy: on a C{fail}, what the domain asks for, after C{sp=}
        and C{pct=} (C{none}, C{quarantine} or C{reject}); otherwise
        L{None}.
    """

    result: str
    fromDomain: Optional[str] = None
    policy: Optional[str] = None


@dataclass(frozen=True)
class ArcResult:
    """
    The verdict on the ARC chain (RFC 8617 section 5.2): C{pass}, C{fail},
    C{none} (no chain), or C{temperror}.
    """

    result: str


@dataclass(frozen=True)
class AuthResults:
    """
    Everything sender authentication found out about one message; a
    method that is off (C{--auth-checks}) is L{None}.

    @ivar dkim: one result per signature, in header order; a single
        C{none} result for an unsigned message.
    """

    spf: Optional[SpfResult] = None
    dkim: Optional[tuple[DkimResult, ...]] = None
    dmarc: Optional[DmarcResult] = None
    arc: Optional[ArcResult] = None
