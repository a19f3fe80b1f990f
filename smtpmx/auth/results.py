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
import re
from dataclasses import dataclass
from typing import Optional

import authres
import authres.arc
import authres.core
import authres.dmarc


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


# The field, the decision and the log line made from an AuthResults.

# RFC 2045 section 5.1: a token, which RFC 8601 section 2.2 takes for a
# property's value and a reason; what is not one is written as a
# quoted-string.
_TOKEN = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`{|}~-]+\Z")

# RFC 5322 section 3.2.4: what a quoted-string may hold without escaping
# (qtext, and white space).
_UNQUOTABLE = re.compile(r"[^\x20-\x7e]")


class _Value(authres.core.QuotableValue):
    """
    A reason or property value written as RFC 8601 section 2.2 says: a
    token as it is, anything else as a quoted-string.

    authres writes any value holding an C{@} bare, which breaks the field
    when the value also holds a space; this one quotes by the grammar
    alone.
    """

    def quote_if_needed(self) -> str:
        """
        The value as written in the field.
        """
        if _TOKEN.match(self):
            return str(self)
        return '"' + re.sub(r'(["\\])', r"\\\1", self) + '"'


def _printable(text: str) -> str:
    """
    Text that a quoted-string can carry: white space (tabs and line breaks
    too) becomes one space, any other character outside printable
    US-ASCII a C{?}.
    """
    return _UNQUOTABLE.sub("?", re.sub(r"\s+", " ", text))


def _asciiName(name: str) -> str:
    """
    An internationalized domain name in A-labels (RFC 5891), so that the
    field stays ASCII; a name that cannot be converted as it is.
    """
    if name.isascii():
        return name
    try:
        return name.encode("idna").decode("ascii")
    except UnicodeError:
        return name


def _properties(*properties: tuple[str, str, Optional[str]]) -> list[authres.core.AuthenticationResultProperty]:
    """
    The properties of one result (RFC 8601 section 2.3), in the order given
    but for a value that must be quoted, which goes last: authres reads a
    quoted value back only at the end of a result.  A second such value
    is left out (a domain or selector that is not a token is no name
    anyone could look up).

    @param properties: C{(ptype, property, value)}, each value a name
        (domain or selector); a L{None} or blank value is left out.
    """
    plain = []
    quoted = []
    for ptype, name, value in properties:
        text = _printable(_asciiName(value or "")).strip()
        if not text:
            continue
        prop = authres.core.AuthenticationResultProperty(ptype, name)
        prop.value = _Value(text)
        (plain if _TOKEN.match(prop.value) else quoted).append(prop)
    return plain + quoted[:1]


def _spfResult(spf: SpfResult) -> authres.core.AuthenticationResult:
    """
    The C{spf=} result: C{smtp.mailfrom} with the MAIL FROM domain, or
    C{smtp.helo} for the null sender (RFC 8601 section 2.7.2).
    """
    if spf.mailfrom is not None:
        properties = _properties(("smtp", "mailfrom", spf.mailfrom))
    else:
        properties = _properties(("smtp", "helo", spf.helo))
    return authres.core.SPFAuthenticationResult(result=spf.result, properties=properties)


def _dkimResult(dkim: DkimResult) -> authres.core.AuthenticationResult:
    """
    One C{dkim=} result (RFC 8601 section 2.7.1): C{header.d} and
    C{header.s} of the signature, and why it failed as C{reason=}.
    """
    result = authres.core.DKIMAuthenticationResult(
        result=dkim.result,
        properties=_properties(("header", "d", dkim.domain), ("header", "s", dkim.selector)),
    )
    reason = _printable(dkim.reason).strip()
    if reason:
        result.reason = _Value(reason)
    return result


def _dmarcResult(dmarc: DmarcResult) -> authres.core.AuthenticationResult:
    """
    The C{dmarc=} result (RFC 7489 section 11.2): C{header.from} with the
    domain evaluated; on a failure, a comment naming the policy applied.
    """
    return authres.dmarc.DMARCAuthenticationResult(
        result=dmarc.result,
        result_comment=f"policy={dmarc.policy}" if dmarc.result == "fail" and dmarc.policy else None,
        properties=_properties(("header", "from", dmarc.fromDomain)),
    )


def authenticationResults(results: AuthResults, authservId: str) -> str:
    """
    The value of our C{Authentication-Results:} field (RFC 8601 section
    2.2), on one line, without the field name: C{authservId}, then one
    result per method that is on, in the order spf, dkim (one per
    signature, C{none} when unsigned), dmarc, arc; C{none} when no method
    is on.  C{authres} reads it back.

    @param authservId: our host name (C{--hostname}); written in lower
        case.
    """
    found: list[authres.core.BaseAuthenticationResult] = []
    if results.spf is not None:
        found.append(_spfResult(results.spf))
    if results.dkim is not None:
        found.extend(_dkimResult(dkim) for dkim in results.dkim or (DkimResult("none"),))
    if results.dmarc is not None:
        found.append(_dmarcResult(results.dmarc))
    if results.arc is not None:
        found.append(authres.arc.ARCAuthenticationResult(result=results.arc.result))
    return authres.AuthenticationResultsHeader(authserv_id=authservId, results=found).header_value()


class Disposition(enum.Enum):
    """
    What becomes of a message after sender authentication (RFC 7489
    section 6.6.2): delivered as usual, filed in the Junk folder, or
    refused.
    """

    DELIVER = "deliver"
    JUNK = "junk"
    REJECT = "reject"


def decide(results: AuthResults, policy: DmarcPolicy) -> Disposition:
    """
    The disposition of a message (RFC 7489 section 6.6.2, 6.6.4): with
    L{DmarcPolicy.ENFORCE}, a DMARC C{fail} whose domain asks for
    C{reject} is refused and one that asks for C{quarantine} goes to the
    Junk folder; everything else, every result under L{DmarcPolicy.TAG}
    and every DMARC C{temperror} is delivered.
    """
    dmarc = results.dmarc
    if policy is DmarcPolicy.ENFORCE and dmarc is not None and dmarc.result == "fail":
        if dmarc.policy == "reject":
            return Disposition.REJECT
        if dmarc.policy == "quarantine":
            return Disposition.JUNK
    return Disposition.DELIVER


def logText(results: AuthResults) -> str:
    """
    The verdicts for the transaction's log line, one C{method=result} per
    method that is on: DKIM's results comma-separated in signature order,
    a DMARC failure with its policy in parentheses, e.g. C{spf=pass
    dkim=pass,fail dmarc=fail(reject) arc=none}.
    """
    words = []
    if results.spf is not None:
        words.append(f"spf={results.spf.result}")
    if results.dkim is not None:
        words.append("dkim=" + (",".join(dkim.result for dkim in results.dkim) or "none"))
    if results.dmarc is not None:
        dmarc = results.dmarc
        policy = f"({dmarc.policy})" if dmarc.result == "fail" and dmarc.policy else ""
        words.append(f"dmarc={dmarc.result}{policy}")
    if results.arc is not None:
        words.append(f"arc={results.arc.result}")
    return " ".join(words)


# RFC 5322 section 3.2.2: folding white space.
_FWS = " \t\r\n"


def _skipCfws(text: str, position: int) -> Optional[int]:
    """
    Where the CFWS (RFC 5322 section 3.2.2: white space, line folds and
    comments, comments nested and holding quoted-pairs) at C{position}
    ends; L{None} when a comment is never closed.
    """
    depth = 0
    while position < len(text):
        character = text[position]
        if depth and character == "\\":
            position += 2
            continue
        if character == "(":
            depth += 1
        elif depth and character == ")":
            depth -= 1
        elif not depth and character not in _FWS:
            return position
        position += 1
    return None if depth else position


def _quotedString(text: str, position: int) -> Optional[str]:
    """
    The content of the quoted-string that opens at C{position}, quoted-pairs
    undone (RFC 5322 section 3.2.4); L{None} when it is never closed.
    """
    content = []
    position += 1
    while position < len(text):
        character = text[position]
        if character == '"':
            return "".join(content)
        if character == "\\" and position + 1 < len(text):
            position += 1
            character = text[position]
        content.append(character)
        position += 1
    return None


def authservIdOf(value: bytes) -> Optional[str]:
    """
    The authserv-id of an C{Authentication-Results:} field (RFC 8601
    section 2.2), in lower case, to tell ours from others' (RFC 8601
    section 5); L{None} when the field has none.

    Leading comments (nested ones too) and folding white space are
    skipped and a quoted-string is unquoted; the id ends at white space, a
    comment or C{;}.  Lenient on purpose, since what it finds decides which
    fields are removed: when a comment or a quoted-string is never closed,
    the field's first word (without parentheses and quotes) counts.

    @param value: the field's raw value, line folds and all.
    """
    text = value.decode("utf-8", "replace")
    position = _skipCfws(text, 0)
    word: Optional[str] = None
    if position is not None:
        if text[position:position + 1] == '"':
            word = _quotedString(text, position)
        else:
            word = re.match(r'[^ \t\r\n;()"]*', text[position:]).group()
    if word is None:
        first = text.split(None, 1)[:1] or [""]
        word = first[0].split(";", 1)[0].strip('()"')
    word = word.strip(_FWS).lower()
    return word or None
