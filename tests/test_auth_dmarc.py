"""
Tests for DMARC (RFC 7489): organizational domains from the public suffix
list, record discovery, alignment, policies and sampling, and the From
field's domains, with the DNS played by a dictionary.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

from hypothesis import given, strategies as st
import pytest
from twisted.trial.unittest import SynchronousTestCase

from smtpmx.auth.dmarc import MAX_FROM_DOMAINS, checkDmarc, organizationalDomain
from smtpmx.auth.dns import TemporaryDNSError
from smtpmx.auth.results import DkimResult, DmarcResult, SpfResult


class Zone:
    """
    A C{txt} lookup served from a dictionary of names to records, which
    writes down every name asked for.

    @ivar records: name → TXT records (text); a name mapped to an
        exception instance raises it.
    @ivar asked: the names looked up, in order.
    """

    def __init__(self, records: dict) -> None:
        self.records = records
        self.asked: list[str] = []

    def txt(self, name: str) -> list[bytes]:
        """
        The records of C{name}, C{[]} for a name not in the zone.
        """
        self.asked.append(name)
        found = self.records.get(name, [])
        if isinstance(found, Exception):
            raise found
        return [record.encode("utf-8") for record in found]


def neverAsked() -> float:
    """
    A random source for tests where sampling must not happen.
    """
    raise AssertionError("random asked")


def fixed(value: float) -> Callable[[], float]:
    """
    A random source that always gives C{value}.
    """
    return lambda: value


def check(
    records: dict,
    fromValue: Optional[str] = "Alice <alice@example.net>",
    spf: Optional[SpfResult] = None,
    dkim: Sequence[DkimResult] = (),
    random: Callable[[], float] = neverAsked,
    headers: Optional[list[tuple[bytes, bytes]]] = None,
) -> tuple[DmarcResult, list[str]]:
    """
    L{checkDmarc} on a message with one C{From:} field.

    @return: the verdict and the names looked up.
    """
    zone = Zone(records)
    if headers is None:
        headers = [(b"Subject", b" hello")]
        if fromValue is not None:
            headers.insert(0, (b"From", b" " + fromValue.encode("utf-8")))
    return checkDmarc(zone.txt, headers, spf, dkim, random), zone.asked


REJECT = {"_dmarc.example.net": ["v=DMARC1; p=reject"]}


class OrganizationalDomainTests(SynchronousTestCase):
    """
    L{organizationalDomain} (RFC 7489 section 3.2).
    """

    def test_publicSuffix(self):
        """
        A name's organizational domain is its public suffix and one label
        more, whatever the length of the suffix.
        """
        self.assertEqual(organizationalDomain("mail.example.com"), "example.com")
        self.assertEqual(organizationalDomain("a.b.c.example.com"), "example.com")
        self.assertEqual(organizationalDomain("example.com"), "example.com")
        self.assertEqual(organizationalDomain("mail.example.co.uk"), "example.co.uk")

    def test_unlistedTopLevelDomain(self):
        """
        Under a top-level domain the list does not have, such as C{.test},
        the last two labels are the organizational domain.
        """
        self.assertEqual(organizationalDomain("a.b.example.test"), "example.test")
        self.assertEqual(organizationalDomain("example.test"), "example.test")

    def test_publicSuffixItself(self):
        """
        A public suffix is its own organizational domain.
        """
        self.assertEqual(organizationalDomain("com"), "com")
        self.assertEqual(organizationalDomain("co.uk"), "co.uk")
        self.assertEqual(organizationalDomain("test"), "test")

    def test_privateSection(self):
        """
        The list's private section counts: each site under C{github.io} is
        an organization of its own.
        """
        self.assertEqual(organizationalDomain("www.alice.github.io"), "alice.github.io")

    def test_normalized(self):
        """
        Case and a final dot do not matter; the answer is in lower case.
        """
        self.assertEqual(organizationalDomain("Mail.Example.COM."), "example.com")

    def test_internationalized(self):
        """
        An internationalized name in A-labels is placed like any other.
        """
        self.assertEqual(organizationalDomain("mail.xn--bcher-kva.example"), "xn--bcher-kva.example")


class RecordDiscoveryTests(SynchronousTestCase):
    """
    Finding the policy record, RFC 7489 section 6.6.3.
    """

    @pytest.mark.rfc("7489", "6.6.3", "7489-6.6.3-1", "7489-6.6.3-2", "7489-6.6.3-3")
    def test_noRecord(self):
        """
        A From domain that publishes no record has DMARC C{none}; the
        organizational domain is asked after the domain itself.
        """
        verdict, asked = check({}, "a@mail.example.net")
        self.assertEqual(verdict, DmarcResult("none", "mail.example.net"))
        self.assertEqual(asked, ["_dmarc.mail.example.net", "_dmarc.example.net"])

    def test_organizationalDomainAskedOnce(self):
        """
        When the From domain is its own organizational domain, one lookup is
        made.
        """
        verdict, asked = check({})
        self.assertEqual(verdict, DmarcResult("none", "example.net"))
        self.assertEqual(asked, ["_dmarc.example.net"])

    @pytest.mark.rfc("7489", "6.6.3", "7489-6.6.3-5")
    def test_twoRecords(self):
        """
        Two DMARC records at the From domain are no policy (C{none}), and the
        organizational domain is not asked.
        """
        records = {
            "_dmarc.mail.example.net": ["v=DMARC1; p=reject", "v=DMARC1; p=none"],
            "_dmarc.example.net": ["v=DMARC1; p=reject"],
        }
        verdict, asked = check(records, "a@mail.example.net")
        self.assertEqual(verdict, DmarcResult("none", "mail.example.net"))
        self.assertEqual(asked, ["_dmarc.mail.example.net"])

    def test_twoRecordsAtOrganizationalDomain(self):
        """
        Two DMARC records at the organizational domain are no policy either.
        """
        records = {"_dmarc.example.net": ["v=DMARC1; p=reject", "v=DMARC1; p=reject"]}
        verdict, _ = check(records, "a@mail.example.net")
        self.assertEqual(verdict, DmarcResult("none", "mail.example.net"))

    @pytest.mark.rfc("7489", "6.6.3", "7489-6.6.3-4")
    def test_otherRecordsDiscarded(self):
        """
        TXT records that do not start with C{v=DMARC1} (exactly, though
        spaces around C{=} are allowed) are not counted.
        """
        records = {
            "_dmarc.example.net": [
                "v=spf1 -all",
                "p=reject; v=DMARC1",
                "v=dmarc1; p=reject",
                "v=DMARC10; p=reject",
                "v = DMARC1 ; p=quarantine",
            ]
        }
        verdict, _ = check(records)
        self.assertEqual(verdict, DmarcResult("fail", "example.net", "quarantine"))

    def test_onlyOtherRecords(self):
        """
        When the From domain has only records of other kinds, the
        organizational domain's record counts.
        """
        records = {
            "_dmarc.mail.example.net": ["v=spf1 -all"],
            "_dmarc.example.net": ["v=DMARC1; p=reject"],
        }
        verdict, _ = check(records, "a@mail.example.net")
        self.assertEqual(verdict, DmarcResult("fail", "mail.example.net", "reject"))

    def test_invalidPolicy(self):
        """
        A record without a valid C{p=} (or with an invalid C{sp=}) that names
        no valid report address is a C{permerror}.
        """
        for record in ["v=DMARC1", "v=DMARC1; p=bounce", "v=DMARC1; p=reject; sp=drop", "v=DMARC1; p=nothing; rua=nothing"]:
            verdict, _ = check({"_dmarc.example.net": [record]})
            self.assertEqual(verdict, DmarcResult("permerror", "example.net"), record)

    @pytest.mark.rfc("7489", "6.6.3", "7489-6.6.3-6")
    def test_invalidPolicyWithReports(self):
        """
        A record without a valid C{p=} that names a valid report address is
        taken as C{p=none} (RFC 7489 section 6.6.3 step 6).
        """
        for record in [
            "v=DMARC1; rua=mailto:dmarc@example.net",
            "v=DMARC1; p=bogus; rua=junk, mailto:dmarc@example.net!10m",
            "v=DMARC1; p=reject; sp=bogus; rua=https://report.example/dmarc",
        ]:
            verdict, _ = check({"_dmarc.example.net": [record]})
            self.assertEqual(verdict, DmarcResult("fail", "example.net", "none"), record)

    @pytest.mark.rfc("7489", "6.3", "7489-6.3-2")
    def test_tagsLeniently(self):
        """
        Tag names and policy words are case-insensitive; unknown tags,
        white space and a final C{;} are ignored; the first of a repeated
        tag counts.
        """
        records = {"_dmarc.example.net": ["v=DMARC1;  P = Quarantine ; fo=1; x-new=1; p=reject;"]}
        verdict, _ = check(records)
        self.assertEqual(verdict, DmarcResult("fail", "example.net", "quarantine"))

    def test_recordNotUtf8(self):
        """
        A record with bytes that are not UTF-8 is still read.
        """
        zone = Zone({})
        zone.txt = lambda name: [b"v=DMARC1; p=reject; x=\xff"] if name == "_dmarc.example.net" else []
        verdict = checkDmarc(zone.txt, [(b"From", b"a@example.net")], None, (), neverAsked)
        self.assertEqual(verdict, DmarcResult("fail", "example.net", "reject"))


class TemporaryErrorTests(SynchronousTestCase):
    """
    A lookup that fails for now makes DMARC C{temperror}.
    """

    def test_fromDomain(self):
        """
        The From domain's lookup failing gives C{temperror}, without asking
        the organizational domain.
        """
        verdict, asked = check({"_dmarc.mail.example.net": TemporaryDNSError("timeout")}, "a@mail.example.net")
        self.assertEqual(verdict, DmarcResult("temperror", "mail.example.net"))
        self.assertEqual(asked, ["_dmarc.mail.example.net"])

    def test_organizationalDomain(self):
        """
        The organizational domain's lookup failing gives C{temperror} too.
        """
        verdict, _ = check({"_dmarc.example.net": TemporaryDNSError("SERVFAIL")}, "a@mail.example.net")
        self.assertEqual(verdict, DmarcResult("temperror", "mail.example.net"))

    def test_neverRaises(self):
        """
        Any other exception of the lookup is logged and the verdict is
        C{temperror}: the check never raises.
        """
        verdict, _ = check({"_dmarc.example.net": RuntimeError("bug")})
        self.assertEqual(verdict, DmarcResult("temperror"))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class AlignmentTests(SynchronousTestCase):
    """
    Identifier alignment, RFC 7489 section 3.1: a pass counts only for a
    domain aligned with the From domain.
    """

    @pytest.mark.rfc("7489", "3.1.2")
    def test_spfRelaxed(self):
        """
        By default an SPF pass for a domain of the same organization aligns.
        """
        for domain in ["example.net", "bounces.example.net", "a.b.Example.NET."]:
            verdict, _ = check(REJECT, spf=SpfResult("pass", mailfrom=domain))
            self.assertEqual(verdict, DmarcResult("pass", "example.net"), domain)

    @pytest.mark.rfc("7489", "3.1.2")
    def test_spfStrict(self):
        """
        With C{aspf=s} only the very From domain aligns.
        """
        records = {"_dmarc.example.net": ["v=DMARC1; p=reject; aspf=s"]}
        verdict, _ = check(records, spf=SpfResult("pass", mailfrom="bounces.example.net"))
        self.assertEqual(verdict, DmarcResult("fail", "example.net", "reject"))
        verdict, _ = check(records, spf=SpfResult("pass", mailfrom="EXAMPLE.net"))
        self.assertEqual(verdict, DmarcResult("pass", "example.net"))

    def test_spfNotAligned(self):
        """
        An SPF pass for another organization's domain does not count.
        """
        for domain in ["example.org", "example.net.example.org", "notexample.net"]:
            verdict, _ = check(REJECT, spf=SpfResult("pass", mailfrom=domain))
            self.assertEqual(verdict, DmarcResult("fail", "example.net", "reject"), domain)

    def test_spfNotPassing(self):
        """
        An aligned SPF result other than C{pass} does not count.
        """
        for word in ["fail", "softfail", "neutral", "none", "temperror", "permerror"]:
            verdict, _ = check(REJECT, spf=SpfResult(word, mailfrom="example.net"))
            self.assertEqual(verdict, DmarcResult("fail", "example.net", "reject"), word)

    def test_spfNullSender(self):
        """
        For the null sender the HELO name SPF checked is the identity that
        aligns (RFC 7208 section 2.4).
        """
        verdict, _ = check(REJECT, spf=SpfResult("pass", helo="mail.example.net"))
        self.assertEqual(verdict, DmarcResult("pass", "example.net"))

    def test_spfAddressLiteral(self):
        """
        An SPF identity that is no domain (an address literal) aligns with
        nothing.
        """
        verdict, _ = check(REJECT, spf=SpfResult("pass", helo="[192.0.2.1]"))
        self.assertEqual(verdict, DmarcResult("fail", "example.net", "reject"))

    @pytest.mark.rfc("7489", "3.1.1")
    def test_dkimRelaxed(self):
        """
        By default a passing signature of a domain of the same organization
        aligns.
        """
        for domain in ["example.net", "mail.example.net"]:
            verdict, _ = check(REJECT, "a@news.example.net", dkim=[DkimResult("pass", domain, "sel")])
            self.assertEqual(verdict, DmarcResult("pass", "news.example.net"), domain)

    @pytest.mark.rfc("7489", "3.1.1")
    def test_dkimStrict(self):
        """
        With C{adkim=s} only a signature of the very From domain aligns.
        """
        records = {"_dmarc.example.net": ["v=DMARC1; p=quarantine; adkim=s"]}
        verdict, _ = check(records, dkim=[DkimResult("pass", "mail.example.net", "sel")])
        self.assertEqual(verdict, DmarcResult("fail", "example.net", "quarantine"))
        verdict, _ = check(records, dkim=[DkimResult("pass", "example.net", "sel")])
        self.assertEqual(verdict, DmarcResult("pass", "example.net"))

    def test_strictModesApart(self):
        """
        C{aspf=} and C{adkim=} are separate: strict SPF leaves DKIM relaxed.
        """
        records = {"_dmarc.example.net": ["v=DMARC1; p=reject; aspf=s"]}
        verdict, _ = check(records, dkim=[DkimResult("pass", "mail.example.net", "sel")])
        self.assertEqual(verdict, DmarcResult("pass", "example.net"))

    def test_invalidModes(self):
        """
        An invalid C{adkim=} or C{aspf=} is relaxed, the default.
        """
        records = {"_dmarc.example.net": ["v=DMARC1; p=reject; adkim=x; aspf=strict"]}
        verdict, _ = check(
            records,
            spf=SpfResult("pass", mailfrom="b.example.net"),
            dkim=[DkimResult("pass", "m.example.net", "s")],
        )
        self.assertEqual(verdict, DmarcResult("pass", "example.net"))

    def test_anyAlignedSignature(self):
        """
        Among several signatures, one passing and aligned is enough; failing
        aligned ones and passing unaligned ones are not.
        """
        signatures = [
            DkimResult("fail", "example.net", "a", reason="body hash mismatch"),
            DkimResult("pass", "example.org", "b"),
        ]
        verdict, _ = check(REJECT, dkim=signatures)
        self.assertEqual(verdict, DmarcResult("fail", "example.net", "reject"))
        verdict, _ = check(REJECT, dkim=signatures + [DkimResult("pass", "example.net", "c")])
        self.assertEqual(verdict, DmarcResult("pass", "example.net"))

    def test_unsigned(self):
        """
        An unsigned message (one C{none} result without a domain) passes
        only by SPF.
        """
        verdict, _ = check(REJECT, dkim=[DkimResult("none")])
        self.assertEqual(verdict, DmarcResult("fail", "example.net", "reject"))
        verdict, _ = check(REJECT, spf=SpfResult("pass", mailfrom="example.net"), dkim=[DkimResult("none")])
        self.assertEqual(verdict, DmarcResult("pass", "example.net"))

    def test_unlistedTopLevelDomain(self):
        """
        Under C{.test}, a subdomain of the From domain's two last labels
        aligns in relaxed mode.
        """
        records = {"_dmarc.example.test": ["v=DMARC1; p=reject"]}
        verdict, _ = check(records, "a@example.test", spf=SpfResult("pass", mailfrom="bounce.example.test"))
        self.assertEqual(verdict, DmarcResult("pass", "example.test"))
        verdict, _ = check(records, "a@example.test", spf=SpfResult("pass", mailfrom="other.test"))
        self.assertEqual(verdict, DmarcResult("fail", "example.test", "reject"))


class PolicyTests(SynchronousTestCase):
    """
    The policy a failing message is under, RFC 7489 section 6.3, 6.6.4.
    """

    def test_policies(self):
        """
        A failing message is under the C{p=} of its domain's record.
        """
        for policy in ["none", "quarantine", "reject"]:
            verdict, _ = check({"_dmarc.example.net": [f"v=DMARC1; p={policy}"]})
            self.assertEqual(verdict, DmarcResult("fail", "example.net", policy))

    @pytest.mark.rfc("7489", "6.6.3", "7489-6.6.3-2")
    def test_subdomainPolicy(self):
        """
        A subdomain without a record of its own is under the organizational
        domain's C{sp=}; the organizational domain itself under its C{p=}.
        """
        records = {"_dmarc.example.net": ["v=DMARC1; p=none; sp=reject"]}
        verdict, asked = check(records, "a@mail.example.net")
        self.assertEqual(verdict, DmarcResult("fail", "mail.example.net", "reject"))
        self.assertEqual(asked, ["_dmarc.mail.example.net", "_dmarc.example.net"])
        verdict, _ = check(records, "a@example.net")
        self.assertEqual(verdict, DmarcResult("fail", "example.net", "none"))

    @pytest.mark.rfc("7489", "6.3", "7489-6.3-1")
    def test_subdomainWithoutSp(self):
        """
        Without C{sp=}, a subdomain is under C{p=}.
        """
        verdict, _ = check({"_dmarc.example.net": ["v=DMARC1; p=quarantine"]}, "a@deep.mail.example.net")
        self.assertEqual(verdict, DmarcResult("fail", "deep.mail.example.net", "quarantine"))

    def test_subdomainOwnRecord(self):
        """
        A subdomain with a record of its own is under that record's C{p=};
        its C{sp=} is for its own subdomains only.
        """
        records = {
            "_dmarc.mail.example.net": ["v=DMARC1; p=quarantine; sp=reject"],
            "_dmarc.example.net": ["v=DMARC1; p=reject"],
        }
        verdict, _ = check(records, "a@mail.example.net")
        self.assertEqual(verdict, DmarcResult("fail", "mail.example.net", "quarantine"))

    def test_subdomainUnderUnlistedTopLevelDomain(self):
        """
        Under C{.test}, the record of the last two labels is the
        organizational domain's.
        """
        records = {"_dmarc.example.test": ["v=DMARC1; p=none; sp=quarantine"]}
        verdict, asked = check(records, "a@a.b.example.test")
        self.assertEqual(verdict, DmarcResult("fail", "a.b.example.test", "quarantine"))
        self.assertEqual(asked, ["_dmarc.a.b.example.test", "_dmarc.example.test"])

    def test_passHasNoPolicy(self):
        """
        A passing message has no policy.
        """
        verdict, _ = check(REJECT, spf=SpfResult("pass", mailfrom="example.net"))
        self.assertIsNone(verdict.policy)

    @pytest.mark.rfc("7489", "6.6.4", "7489-6.6.4-1", "7489-6.6.4-4")
    def test_percentSampled(self):
        """
        With C{pct=50}, a random number under one half applies the policy;
        otherwise the next less strict one applies: C{quarantine} for
        C{reject}, C{none} for C{quarantine}.
        """
        for policy, lower in [("reject", "quarantine"), ("quarantine", "none")]:
            records = {"_dmarc.example.net": [f"v=DMARC1; p={policy}; pct=50"]}
            verdict, _ = check(records, random=fixed(0.49))
            self.assertEqual(verdict, DmarcResult("fail", "example.net", policy))
            verdict, _ = check(records, random=fixed(0.5))
            self.assertEqual(verdict, DmarcResult("fail", "example.net", lower))

    def test_percentBounds(self):
        """
        C{pct=100} (the default), C{pct=0}, and C{p=none} decide without a
        random number; an invalid C{pct=} is 100.
        """
        for record, policy in [
            ("v=DMARC1; p=reject; pct=100", "reject"),
            ("v=DMARC1; p=reject", "reject"),
            ("v=DMARC1; p=reject; pct=0", "quarantine"),
            ("v=DMARC1; p=quarantine; pct=0", "none"),
            ("v=DMARC1; p=none; pct=10", "none"),
            ("v=DMARC1; p=reject; pct=101", "reject"),
            ("v=DMARC1; p=reject; pct=-5", "reject"),
            ("v=DMARC1; p=reject; pct=half", "reject"),
        ]:
            verdict, _ = check({"_dmarc.example.net": [record]})
            self.assertEqual(verdict, DmarcResult("fail", "example.net", policy), record)

    def test_percentOfSubdomainPolicy(self):
        """
        C{pct=} samples the C{sp=} policy as it does C{p=}.
        """
        records = {"_dmarc.example.net": ["v=DMARC1; p=none; sp=reject; pct=20"]}
        verdict, _ = check(records, "a@mail.example.net", random=fixed(0.9))
        self.assertEqual(verdict, DmarcResult("fail", "mail.example.net", "quarantine"))


class FromFieldTests(SynchronousTestCase):
    """
    The RFC5322.From domain, RFC 7489 section 6.6.1.
    """

    def test_noFrom(self):
        """
        A message without a C{From:} field is a C{permerror}, with no lookup.
        """
        verdict, asked = check(REJECT, None)
        self.assertEqual(verdict, DmarcResult("permerror"))
        self.assertEqual(asked, [])

    def test_noDomain(self):
        """
        A C{From:} without an address with a usable domain is a
        C{permerror}: empty, a group without members, a bare local part,
        an address literal, a name that is no domain.
        """
        for value in ["", "undisclosed-recipients:;", "alice", "<>", "alice@[192.0.2.1]", "alice@exa_mple..net"]:
            verdict, asked = check(REJECT, value)
            self.assertEqual(verdict, DmarcResult("permerror"), value)
            self.assertEqual(asked, [], value)

    def test_fieldName(self):
        """
        The field is found whatever the case of its name; other fields whose
        names start alike are not it.
        """
        headers = [(b"Resent-From", b" a@example.org"), (b"FROM", b" a@example.net"), (b"From-X", b" a@example.com")]
        verdict, asked = check(REJECT, headers=headers)
        self.assertEqual(verdict, DmarcResult("fail", "example.net", "reject"))
        self.assertEqual(asked, ["_dmarc.example.net"])

    def test_folded(self):
        """
        A folded field (CRLF or LF line ends) is unfolded, a display name with
        non-ASCII or invalid UTF-8 bytes and comments do not matter.
        """
        for value in [
            b" Alice\r\n <alice@Example.NET>",
            b"\n\t=?utf-8?q?Alice?=\n <alice@example.net> (home)\n",
            b" \xc3\xa9lo\xff <alice@example.net>",
        ]:
            verdict = checkDmarc(Zone(REJECT).txt, [(b"From", value)], None, (), neverAsked)
            self.assertEqual(verdict, DmarcResult("fail", "example.net", "reject"), value)

    def test_internationalized(self):
        """
        An internationalized From domain is looked up, and reported, in
        A-labels.
        """
        records = {"_dmarc.xn--bcher-kva.example": ["v=DMARC1; p=reject"]}
        verdict, asked = check(records, "alice@B\u00fccher.example")
        self.assertEqual(verdict, DmarcResult("fail", "xn--bcher-kva.example", "reject"))
        self.assertEqual(asked, ["_dmarc.xn--bcher-kva.example"])

    def test_severalDomainsOneFails(self):
        """
        Of several From addresses, one failing domain fails the message; it
        is reported with the failing domain.
        """
        records = {"_dmarc.example.net": ["v=DMARC1; p=reject"], "_dmarc.example.org": ["v=DMARC1; p=reject"]}
        verdict, asked = check(
            records, "a@example.org, b@example.net", spf=SpfResult("pass", mailfrom="example.org")
        )
        self.assertEqual(verdict, DmarcResult("fail", "example.net", "reject"))
        self.assertEqual(asked, ["_dmarc.example.org", "_dmarc.example.net"])

    @pytest.mark.rfc("7489", "6.6.1")
    def test_severalFailingDomains(self):
        """
        When several domains fail, the first failing one is reported, under
        the strictest of their policies.
        """
        records = {
            "_dmarc.example.com": ["v=DMARC1; p=none"],
            "_dmarc.example.net": ["v=DMARC1; p=quarantine"],
            "_dmarc.example.org": ["v=DMARC1; p=reject"],
        }
        verdict, _ = check(
            records,
            "a@example.com, b@example.net, c@example.org",
            dkim=[DkimResult("pass", "example.com", "s")],
        )
        self.assertEqual(verdict, DmarcResult("fail", "example.net", "reject"))

    def test_severalFields(self):
        """
        Several C{From:} fields count as several addresses.
        """
        headers = [(b"From", b" a@example.org"), (b"Subject", b" x"), (b"From", b" b@example.net")]
        verdict, _ = check(REJECT, headers=headers)
        self.assertEqual(verdict, DmarcResult("fail", "example.net", "reject"))

    def test_severalDomainsNoneFails(self):
        """
        When no domain fails, the least good result counts, reported with the
        first domain that has it.
        """
        records = {"_dmarc.example.net": ["v=DMARC1; p=reject"]}
        spf = SpfResult("pass", mailfrom="example.net")
        verdict, _ = check(records, "a@example.net, b@example.org", spf=spf)
        self.assertEqual(verdict, DmarcResult("none", "example.org"))
        records["_dmarc.example.com"] = TemporaryDNSError("timeout")
        verdict, _ = check(records, "a@example.net, b@example.org, c@example.com", spf=spf)
        self.assertEqual(verdict, DmarcResult("temperror", "example.com"))
        verdict, _ = check(records, "a@example.net, b@Example.NET", spf=spf)
        self.assertEqual(verdict, DmarcResult("pass", "example.net"))

    def test_failureOutweighsTemporaryError(self):
        """
        A failing domain fails the message even when another one's lookup
        failed for now.
        """
        records = {"_dmarc.example.org": TemporaryDNSError("timeout"), "_dmarc.example.net": ["v=DMARC1; p=reject"]}
        verdict, _ = check(records, "a@example.org, b@example.net")
        self.assertEqual(verdict, DmarcResult("fail", "example.net", "reject"))

    def test_sameDomainOnce(self):
        """
        A domain named by several addresses, in any case, is looked up once.
        """
        verdict, asked = check(REJECT, "a@example.net, B <b@EXAMPLE.NET.>, c@example.net")
        self.assertEqual(verdict, DmarcResult("fail", "example.net", "reject"))
        self.assertEqual(asked, ["_dmarc.example.net"])

    def test_addressesWithoutDomainSkipped(self):
        """
        Addresses without a usable domain beside one with a domain are
        skipped.
        """
        verdict, _ = check(REJECT, "alice, b@[192.0.2.1], c@example.net")
        self.assertEqual(verdict, DmarcResult("fail", "example.net", "reject"))

    def test_tooManyDomains(self):
        """
        More distinct domains than L{MAX_FROM_DOMAINS} are a C{permerror},
        with no lookup at all.
        """
        many = ", ".join(f"a@d{number}.example" for number in range(MAX_FROM_DOMAINS + 1))
        verdict, asked = check({}, many)
        self.assertEqual(verdict, DmarcResult("permerror", "d0.example"))
        self.assertEqual(asked, [])
        exactly = ", ".join(f"a@d{number}.example" for number in range(MAX_FROM_DOMAINS))
        verdict, asked = check({}, exactly)
        self.assertEqual(verdict, DmarcResult("none", "d0.example"))
        self.assertEqual(len(asked), MAX_FROM_DOMAINS)

    @given(
        st.lists(st.tuples(st.sampled_from([b"From", b"from", b"To", b"Subject"]), st.binary(max_size=80)), max_size=4),
        st.lists(st.text(max_size=60), max_size=3),
        st.floats(min_value=0, max_value=1, exclude_max=True),
    )
    def test_neverRaises(self, headers, records, number):
        """
        Whatever the header fields and whatever the records published, the
        verdict is one of DMARC's result words, with a policy exactly when it
        fails.
        """
        zone = Zone({"_dmarc.example.net": ["v=DMARC1; " + record for record in records]})
        verdict = checkDmarc(
            zone.txt, headers + [(b"From", b"x@example.net")], SpfResult("none", mailfrom="x.example"), (), fixed(number)
        )
        self.assertIn(verdict.result, ("pass", "fail", "none", "temperror", "permerror"))
        self.assertEqual(verdict.policy is not None, verdict.result == "fail")
        if verdict.policy is not None:
            self.assertIn(verdict.policy, ("none", "quarantine", "reject"))
