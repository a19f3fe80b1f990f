"""
Tests for what is made of sender authentication's verdicts: the
C{Authentication-Results:} field (RFC 8601), read back with C{authres};
the disposition under C{--dmarc-policy}; the log line's text; and the
authserv-id of an incoming field, which decides whether it is removed.
"""

from __future__ import annotations

import itertools

import authres
import authres.core
from hypothesis import given, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from smtpmx.auth.results import (
    ArcResult,
    AuthResults,
    Disposition,
    DkimResult,
    DmarcPolicy,
    DmarcResult,
    SpfResult,
    authenticationResults,
    authservIdOf,
    decide,
    logText,
)

# RFC 8601 section 2.7: the result words.
WORDS = ("pass", "fail", "softfail", "neutral", "none", "temperror", "permerror")


def parse(value: str) -> authres.AuthenticationResultsHeader:
    """
    The field read back the way its users read it: C{authres}, core
    features, field name prepended.
    """
    return authres.AuthenticationResultsHeader.parse("Authentication-Results: " + value)


def summary(value: str) -> list[tuple]:
    """
    Each result of a field as C{(method, result, reason, properties)}, the
    properties as C{(ptype.property, value)} pairs, read with every
    feature of C{authres} (its dmarc and arc result classes too).
    """
    header = authres.all_features().parse("Authentication-Results: " + value)
    return [
        (
            result.method,
            result.result,
            result.reason,
            [(f"{p.type}.{p.name}", p.value) for p in result.properties],
        )
        for result in header.results
    ]


class AuthenticationResultsTests(SynchronousTestCase):
    """
    L{authenticationResults}.
    """

    def test_example(self):
        """
        Every method passing gives the field of the documentation, word for
        word: the authserv-id, then spf, dkim, dmarc and arc.
        """
        results = AuthResults(
            spf=SpfResult("pass", mailfrom="example.net"),
            dkim=(DkimResult("pass", "example.net", "sel"),),
            dmarc=DmarcResult("pass", "example.net"),
            arc=ArcResult("none"),
        )
        self.assertEqual(
            authenticationResults(results, "mx.example.org"),
            "mx.example.org; spf=pass smtp.mailfrom=example.net; "
            "dkim=pass header.d=example.net header.s=sel; "
            "dmarc=pass header.from=example.net; arc=none",
        )

    def test_everyResultWord(self):
        """
        Every RFC 8601 result word of every method reads back, with its
        properties, from a field on one line.
        """
        for word in WORDS:
            results = AuthResults(
                spf=SpfResult(word, mailfrom="example.net"),
                dkim=(DkimResult(word, "example.net", "sel"),),
                dmarc=DmarcResult(word, "example.net", "reject" if word == "fail" else None),
                arc=ArcResult(word),
            )
            value = authenticationResults(results, "mx.example.org")
            self.assertNotIn("\n", value)
            header = parse(value)
            self.assertEqual(header.authserv_id, "mx.example.org")
            self.assertEqual(
                summary(value),
                [
                    ("spf", word, None, [("smtp.mailfrom", "example.net")]),
                    ("dkim", word, None, [("header.d", "example.net"), ("header.s", "sel")]),
                    ("dmarc", word, None, [("header.from", "example.net")]),
                    ("arc", word, None, []),
                ],
                word,
            )

    def test_severalSignatures(self):
        """
        Each DKIM signature has its own C{dkim=} result, in signature order,
        a failure with its reason.
        """
        results = AuthResults(
            dkim=(
                DkimResult("pass", "example.net", "one"),
                DkimResult("fail", "example.org", "two", reason="body hash mismatch"),
                DkimResult("permerror", "example.com", "three", reason="key record missing"),
            ),
        )
        value = authenticationResults(results, "mx.example.org")
        self.assertEqual(
            summary(value),
            [
                ("dkim", "pass", None, [("header.d", "example.net"), ("header.s", "one")]),
                ("dkim", "fail", "body hash mismatch", [("header.d", "example.org"), ("header.s", "two")]),
                ("dkim", "permerror", "key record missing", [("header.d", "example.com"), ("header.s", "three")]),
            ],
        )

    def test_unsigned(self):
        """
        An unsigned message's DKIM result is a bare C{dkim=none}; an empty
        tuple of signatures counts as unsigned too.
        """
        for dkim in [(DkimResult("none"),), ()]:
            value = authenticationResults(AuthResults(dkim=dkim), "mx.example.org")
            self.assertEqual(value, "mx.example.org; dkim=none")
            self.assertEqual(summary(value), [("dkim", "none", None, [])])

    def test_onlyMethodsThatAreOn(self):
        """
        Only the methods that are on (not L{None}) appear, in the order
        spf, dkim, dmarc, arc; with none on, the field says C{none}.
        """
        every = {
            "spf": SpfResult("pass", mailfrom="example.net"),
            "dkim": (DkimResult("pass", "example.net", "sel"),),
            "dmarc": DmarcResult("pass", "example.net"),
            "arc": ArcResult("pass"),
        }
        for chosen in itertools.product([False, True], repeat=4):
            methods = [name for name, on in zip(every, chosen) if on]
            results = AuthResults(**{name: every[name] for name in methods})
            value = authenticationResults(results, "mx.example.org")
            self.assertEqual([method for method, *_ in summary(value)], methods)
        self.assertEqual(authenticationResults(AuthResults(), "mx.example.org"), "mx.example.org; none")

    def test_nullSender(self):
        """
        SPF for the null sender names the HELO name as C{smtp.helo}.
        """
        value = authenticationResults(AuthResults(spf=SpfResult("pass", helo="mail.example.net")), "mx.example.org")
        self.assertEqual(value, "mx.example.org; spf=pass smtp.helo=mail.example.net")

    def test_addressLiteral(self):
        """
        A HELO name that is no token (an address literal) is a quoted-string,
        which reads back, and so do the results after it.
        """
        results = AuthResults(spf=SpfResult("none", helo="[192.0.2.1]"), arc=ArcResult("none"))
        value = authenticationResults(results, "mx.example.org")
        self.assertEqual(value, 'mx.example.org; spf=none smtp.helo="[192.0.2.1]"; arc=none')
        self.assertEqual(
            summary(value), [("spf", "none", None, [("smtp.helo", "[192.0.2.1]")]), ("arc", "none", None, [])]
        )

    def test_oddSignatureNames(self):
        """
        A signature whose C{d=} is no token is written quoted, after its
        selector, so that both read back; when its selector is no token
        either, the selector is left out.  The field still reads back whole.
        """
        results = AuthResults(
            dkim=(
                DkimResult("permerror", "bad domain", "sel"),
                DkimResult("permerror", "bad domain", "bad selector"),
                DkimResult("pass", "example.net", "sel"),
            ),
        )
        value = authenticationResults(results, "mx.example.org")
        self.assertEqual(
            summary(value),
            [
                ("dkim", "permerror", None, [("header.s", "sel"), ("header.d", "bad domain")]),
                ("dkim", "permerror", None, [("header.d", "bad domain")]),
                ("dkim", "pass", None, [("header.d", "example.net"), ("header.s", "sel")]),
            ],
        )

    def test_internationalizedNames(self):
        """
        Internationalized domain names are written in A-labels, so that the
        field stays ASCII.
        """
        results = AuthResults(
            spf=SpfResult("pass", mailfrom="b\u00fccher.example"),
            dmarc=DmarcResult("pass", "B\u00fccher.example"),
        )
        self.assertEqual(
            authenticationResults(results, "mx.example.org"),
            "mx.example.org; spf=pass smtp.mailfrom=xn--bcher-kva.example; dmarc=pass header.from=xn--bcher-kva.example",
        )

    def test_reasonQuoted(self):
        """
        A reason with spaces, an C{@}, quotes, line breaks or non-ASCII text
        is a quoted-string of printable ASCII on the one line.
        """
        reason = 'no key for "sel"\r\n\tat user@example.net: \u00e9'
        value = authenticationResults(
            AuthResults(dkim=(DkimResult("fail", "example.net", "sel", reason=reason),)), "mx.example.org"
        )
        self.assertEqual(
            value,
            'mx.example.org; dkim=fail reason="no key for \\"sel\\" at user@example.net: ?" '
            "header.d=example.net header.s=sel",
        )
        self.assertEqual(
            summary(value)[0][:2] + (summary(value)[0][3],),
            ("dkim", "fail", [("header.d", "example.net"), ("header.s", "sel")]),
        )

    def test_dmarcFailure(self):
        """
        A DMARC failure names the policy applied in a comment, which readers
        skip.
        """
        value = authenticationResults(
            AuthResults(dmarc=DmarcResult("fail", "example.net", "quarantine")), "mx.example.org"
        )
        self.assertEqual(value, "mx.example.org; dmarc=fail (policy=quarantine) header.from=example.net")
        self.assertEqual(summary(value), [("dmarc", "fail", None, [("header.from", "example.net")])])

    def test_dmarcWithoutDomain(self):
        """
        A DMARC C{permerror} with no From domain has no C{header.from}.
        """
        value = authenticationResults(AuthResults(dmarc=DmarcResult("permerror")), "mx.example.org")
        self.assertEqual(value, "mx.example.org; dmarc=permerror")

    def test_authservIdLowerCase(self):
        """
        The authserv-id is written in lower case, and L{authservIdOf} finds
        it.
        """
        value = authenticationResults(AuthResults(arc=ArcResult("pass")), "MX.Example.ORG")
        self.assertEqual(value, "mx.example.org; arc=pass")
        self.assertEqual(authservIdOf(value.encode("ascii")), "mx.example.org")

    @given(
        st.lists(
            st.tuples(
                st.sampled_from(["spf", "dkim", "dmarc", "arc"]),
                st.sampled_from(WORDS),
                st.one_of(st.none(), st.text(max_size=20), st.from_regex(r"[a-z0-9-]{1,10}(\.[a-z]{2,5}){1,2}", fullmatch=True)),
                st.text(max_size=30),
            ),
            max_size=8,
        ),
        st.booleans(),
    )
    def test_alwaysReadsBack(self, entries, nullSender):
        """
        Whatever the results and whatever the names and reasons in them, the
        field is one line that C{authres} reads back with the same methods
        and result words, and our authserv-id.
        """
        spf = dkim = dmarc = arc = None
        for method, word, name, reason in entries:
            if method == "spf":
                spf = SpfResult(word, helo=name) if nullSender else SpfResult(word, mailfrom=name)
            elif method == "dkim":
                dkim = (dkim or ()) + (DkimResult(word, name, name, reason),)
            elif method == "dmarc":
                dmarc = DmarcResult(word, name, "reject")
            else:
                arc = ArcResult(word)
        results = AuthResults(spf, dkim, dmarc, arc)
        value = authenticationResults(results, "mx.example.org")
        self.assertNotIn("\n", value)
        expected = []
        if spf:
            expected.append(("spf", spf.result))
        expected.extend(("dkim", d.result) for d in dkim or ())
        if dmarc:
            expected.append(("dmarc", dmarc.result))
        if arc:
            expected.append(("arc", arc.result))
        self.assertEqual([(method, result) for method, result, *_ in summary(value)], expected)
        self.assertEqual(parse(value).authserv_id, "mx.example.org")


class DecideTests(SynchronousTestCase):
    """
    L{decide}.
    """

    def test_enforce(self):
        """
        Enforced, a DMARC failure asking for C{reject} is refused, one asking
        for C{quarantine} is junked, one asking for C{none} delivered.
        """
        for policy, disposition in [
            ("reject", Disposition.REJECT),
            ("quarantine", Disposition.JUNK),
            ("none", Disposition.DELIVER),
        ]:
            results = AuthResults(dmarc=DmarcResult("fail", "example.net", policy))
            self.assertEqual(decide(results, DmarcPolicy.ENFORCE), disposition)

    def test_tag(self):
        """
        With C{tag}, every message is delivered, a DMARC failure asking for
        C{reject} too.
        """
        for policy in ("reject", "quarantine", "none"):
            results = AuthResults(dmarc=DmarcResult("fail", "example.net", policy))
            self.assertEqual(decide(results, DmarcPolicy.TAG), Disposition.DELIVER)

    def test_otherResults(self):
        """
        Anything but a DMARC C{fail} is delivered: every other result word
        (C{temperror} too), DMARC off, and failures of the other methods.
        """
        for word in WORDS:
            if word == "fail":
                continue
            results = AuthResults(dmarc=DmarcResult(word, "example.net"))
            self.assertEqual(decide(results, DmarcPolicy.ENFORCE), Disposition.DELIVER)
        failing = AuthResults(
            spf=SpfResult("fail", mailfrom="example.net"),
            dkim=(DkimResult("fail", "example.net", "sel"),),
            arc=ArcResult("fail"),
        )
        self.assertEqual(decide(failing, DmarcPolicy.ENFORCE), Disposition.DELIVER)
        self.assertEqual(decide(AuthResults(), DmarcPolicy.ENFORCE), Disposition.DELIVER)


class LogTextTests(SynchronousTestCase):
    """
    L{logText}.
    """

    def test_every(self):
        """
        Every method on: DKIM's results comma-separated, DMARC's failure with
        its policy.
        """
        results = AuthResults(
            spf=SpfResult("pass", mailfrom="example.net"),
            dkim=(DkimResult("pass", "example.net", "a"), DkimResult("fail", "example.org", "b")),
            dmarc=DmarcResult("fail", "example.org", "reject"),
            arc=ArcResult("none"),
        )
        self.assertEqual(logText(results), "spf=pass dkim=pass,fail dmarc=fail(reject) arc=none")

    def test_someMethods(self):
        """
        Only the methods that are on appear; a DMARC result that is no
        failure has no policy; an unsigned message is C{dkim=none}.
        """
        self.assertEqual(
            logText(AuthResults(dkim=(DkimResult("none"),), dmarc=DmarcResult("pass", "example.net"))),
            "dkim=none dmarc=pass",
        )
        self.assertEqual(logText(AuthResults(dkim=())), "dkim=none")
        self.assertEqual(logText(AuthResults(spf=SpfResult("temperror", mailfrom="example.net"))), "spf=temperror")
        self.assertEqual(logText(AuthResults()), "")


# RFC 5322 section 3.2.2: a comment's content: text (";" too), escaped
# parentheses, white space and comments nested in it.
comments = st.recursive(
    st.lists(st.sampled_from(["a", "b.c", " ", ";", "\\(", "\\)", "\\\\", "\r\n "]), max_size=5).map(
        lambda parts: "(" + "".join(parts) + ")"
    ),
    lambda inner: st.tuples(st.text("ab ;", max_size=3), inner, st.text("ab ;", max_size=3)).map(
        lambda parts: "(" + "".join(parts) + ")"
    ),
    max_leaves=4,
)


class AuthservIdOfTests(SynchronousTestCase):
    """
    L{authservIdOf}.
    """

    def test_plain(self):
        """
        The first word of the value, lower-cased, up to C{;} or white space.
        """
        self.assertEqual(authservIdOf(b" MX.Example.ORG; spf=pass smtp.mailfrom=x.example"), "mx.example.org")
        self.assertEqual(authservIdOf(b"mx.example.org;spf=pass"), "mx.example.org")
        self.assertEqual(authservIdOf(b"mx.example.org 1; none"), "mx.example.org")
        self.assertEqual(authservIdOf(b"mx.example.org(comment); none"), "mx.example.org")
        self.assertEqual(authservIdOf(b"mx.example.org"), "mx.example.org")

    def test_comments(self):
        """
        Leading comments, nested ones and ones holding escaped parentheses,
        are skipped.
        """
        self.assertEqual(authservIdOf(b"(a comment) mx.example.org; none"), "mx.example.org")
        self.assertEqual(authservIdOf(b"(outer (inner) outer)mx.example.org; none"), "mx.example.org")
        self.assertEqual(authservIdOf(b"(one) (two \\) still two) mx.example.org; none"), "mx.example.org")
        self.assertEqual(authservIdOf(b"(other.example.org) mx.example.org; none"), "mx.example.org")

    def test_quoted(self):
        """
        A quoted-string authserv-id is unquoted, quoted-pairs undone.
        """
        self.assertEqual(authservIdOf(b'"MX.example.org"; none'), "mx.example.org")
        self.assertEqual(authservIdOf(b'(c) "mx.ex\\ample.org" 1; none'), "mx.example.org")
        self.assertEqual(authservIdOf(b'" mx.example.org "; none'), "mx.example.org")

    def test_folded(self):
        """
        Folding white space (CRLF or LF and a tab or space) before the id is
        skipped.
        """
        self.assertEqual(authservIdOf(b"\r\n\tmx.example.org;\r\n spf=pass"), "mx.example.org")
        self.assertEqual(authservIdOf(b"\n (c\n  c) mx.example.org;"), "mx.example.org")
        self.assertEqual(authservIdOf(b"\tmx.example.org\r\n"), "mx.example.org")

    def test_none(self):
        """
        A value with no id (empty, only white space and comments, starting
        with C{;}, an empty quoted-string) has none.
        """
        for value in [b"", b"  \r\n ", b"(only a comment)", b"; spf=pass", b'""; none', b"(c) ;"]:
            self.assertIsNone(authservIdOf(value), value)

    def test_unclosed(self):
        """
        When a comment or a quoted-string is never closed, the first word
        counts, without its parentheses and quotes.
        """
        self.assertEqual(authservIdOf(b'"mx.example.org; spf=pass'), "mx.example.org")
        self.assertEqual(authservIdOf(b"(mx.example.org; spf=pass"), "mx.example.org")
        self.assertEqual(authservIdOf(b"(c (mx.example.org) spf=pass"), "c")

    def test_notUtf8(self):
        """
        Bytes that are not UTF-8 do not stop it.
        """
        self.assertEqual(authservIdOf(b"\xff\xfe.example.org; none"), "\ufffd\ufffd.example.org")
        self.assertEqual(authservIdOf(b"(\xff) mx.example.org; none"), "mx.example.org")

    @given(st.binary(max_size=200))
    def test_neverRaises(self, value):
        """
        Any bytes give L{None} or a non-empty lower-case id that holds no
        C{;}, line break or tab.
        """
        found = authservIdOf(value)
        if found is not None:
            self.assertTrue(found)
            self.assertEqual(found, found.lower())
            for character in ";\r\n\t":
                self.assertNotIn(character, found)

    @given(
        st.from_regex(r"[A-Za-z0-9-]{1,10}(\.[A-Za-z0-9-]{1,10}){0,3}", fullmatch=True),
        st.lists(
            st.tuples(
                st.sampled_from(["", " ", "\t", "\r\n ", "\n\t"]),
                st.one_of(st.just(""), comments),
            ).map("".join),
            max_size=3,
        ),
        st.booleans(),
    )
    def test_sameAsAuthres(self, authservId, comments, quoted):
        """
        For a well-formed field, with any comments and folding before the id,
        it finds the id, as C{authres} does where it reads the field (it
        reads no quoted id, and stumbles on white space between two
        comments).
        """
        value = "".join(comments) + (f'"{authservId}"' if quoted else authservId) + "; spf=pass smtp.mailfrom=x.example"
        found = authservIdOf(value.encode("ascii"))
        self.assertEqual(found, authservId.lower())
        try:
            header = parse(value)
        except authres.core.SyntaxError:
            return
        self.assertEqual(header.authserv_id, found)
