"""
Tests for path and parameter parsing and safe Maildir names.
"""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from smtpmx.address import (
    Address,
    AddressError,
    UnsafeMailbox,
    mailboxName,
    parseAddress,
    parseParameters,
    parsePath,
)


class ParsePathTests(SynchronousTestCase):
    """
    L{parsePath} reads the path of MAIL and RCPT.
    """

    @pytest.mark.rfc("5321", "2.4", "5321-2.4-1")
    def test_simple(self):
        """
        A path in brackets gives its address, case kept, and the rest.
        """
        self.assertEqual(parsePath("<Bob@Example.ORG> SIZE=1", False), (Address("Bob", "Example.ORG"), " SIZE=1"))

    def test_null(self):
        """
        <> is the null path where allowed, an error elsewhere.
        """
        self.assertEqual(parsePath("<>", True), (None, ""))
        self.assertRaises(AddressError, parsePath, "<>", False)

    @pytest.mark.rfc("5321", "3.6.1")
    @pytest.mark.rfc("5321", "4.1.1.3", "5321-4.1.1.3-1")
    @pytest.mark.rfc("5321", "4.1.1.3", "5321-4.1.1.3-2")
    def test_sourceRoute(self):
        """
        A source route is dropped.
        """
        self.assertEqual(parsePath("<@a.example,@b.example:u@c.example>", False)[0], Address("u", "c.example"))

    @pytest.mark.rfc("5321", "4.1.2", "5321-4.1.2-1")
    def test_quoted(self):
        """
        A quoted local part is kept as sent; its unquoted form drops quotes.
        """
        address, _ = parsePath('<"john doe"@example.org>', False)
        self.assertEqual(address.localpart, '"john doe"')
        self.assertEqual(address.unquotedLocalpart, "john doe")

    def test_quotedWithBracket(self):
        """
        A > inside quotes does not end the path.
        """
        address, rest = parsePath('<"a>b"@example.org> X', False)
        self.assertEqual((address.localpart, rest), ('"a>b"', " X"))

    def test_noBrackets(self):
        """
        A path without brackets is accepted, as common senders need.
        """
        self.assertEqual(parsePath("u@example.org BODY=7BIT", True), (Address("u", "example.org"), " BODY=7BIT"))

    @pytest.mark.rfc("5321", "4.5.1", "5321-4.5.1-3")
    def test_postmaster(self):
        """
        A bare <postmaster> is accepted only where allowed (RCPT).
        """
        self.assertEqual(parsePath("<Postmaster>", False, True)[0], Address("Postmaster", ""))
        self.assertRaises(AddressError, parsePath, "<postmaster>", False)

    def test_literals(self):
        """
        Address literals are domains.
        """
        self.assertEqual(parseAddress("u@[192.0.2.1]").domain, "[192.0.2.1]")
        self.assertEqual(parseAddress("u@[IPv6:2001:db8::1]").domain, "[IPv6:2001:db8::1]")
        self.assertRaises(AddressError, parseAddress, "u@[999.1.1.1]")

    @pytest.mark.rfc("5321", "4.1.2", "5321-4.1.2-4")
    def test_bad(self):
        """
        Malformed paths raise L{AddressError}.
        """
        for bad in ["<a@b", "<a@>", "<@b.example>", "<a b@c.example>", "<a@-b.example>", "<a@b..example>", '<"a@b.example>', "<a@b.example>x"]:
            self.assertRaises(AddressError, parsePath, bad, True)

    @pytest.mark.rfc("6531", "3.3")
    def test_utf8(self):
        """
        UTF-8 local parts and domains parse, and say they are not ASCII.
        """
        address = parseAddress("jörg@bücher.example")
        self.assertFalse(address.isASCII())

    @given(
        st.from_regex(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]{1,20}(\.[A-Za-z0-9_-]{1,10}){0,2}", fullmatch=True),
        st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?(\.[a-z]{2,6}){1,3}", fullmatch=True),
    )
    def test_roundTrip(self, local, domain):
        """
        Any dot-atom address parses back to itself.
        """
        address, rest = parsePath(f"<{local}@{domain}>", False)
        self.assertEqual((str(address), rest), (f"{local}@{domain}", ""))
        self.assertEqual(parseAddress(str(address)), address)


class ParametersTests(SynchronousTestCase):
    """
    ESMTP parameters.
    """

    def test_parse(self):
        """
        Keywords are upper-cased; values are kept.
        """
        self.assertEqual(parseParameters(" size=10 smtputf8 Body=8bitMIME"), {"SIZE": "10", "SMTPUTF8": None, "BODY": "8bitMIME"})

    def test_bad(self):
        """
        Malformed or repeated parameters raise.
        """
        for bad in ["=1", "SIZE=", "SIZE=1 size=2", "A_B=1"]:
            self.assertRaises(AddressError, parseParameters, bad)


class MailboxNameTests(SynchronousTestCase):
    """
    Maildir directory names.
    """

    @pytest.mark.rfc("5321", "4.1.2", "5321-4.1.2-2")
    def test_lowerAndTag(self):
        """
        The name is lower-cased and the delimiter tag stripped.
        """
        self.assertEqual(mailboxName(Address("Bob+Lists", "x"), "+"), "bob")
        self.assertEqual(mailboxName(Address("Bob+Lists", "x"), ""), "bob+lists")
        self.assertEqual(mailboxName(Address("+tag", "x"), "+"), "+tag")

    def test_unsafe(self):
        """
        Names with a slash, backslash, control character, a leading dot or
        nothing at all are refused.
        """
        for local in ["a/b", '"a\\\\b"', "a\x01b", ".x", "..", '""', "a\x7f"]:
            self.assertRaises(UnsafeMailbox, mailboxName, Address(local, "x"), "+")


class CharacterChecksTests(SynchronousTestCase):
    """
    The control-character and safe-name checks match their definition,
    character by character, for any text.
    """

    @given(st.text(alphabet=st.characters(max_codepoint=0x200), max_size=30))
    def test_controlCharacters(self, text):
        """
        An address has a control character exactly when some character of
        it is below 0x20 or is DEL.
        """
        from smtpmx.address import Address

        expected = any(ord(c) < 0x20 or ord(c) == 0x7F for c in text + "@example.org")
        self.assertEqual(Address(text, "example.org").hasControlCharacters(), expected)

    @given(st.text(alphabet=st.characters(max_codepoint=0x200), min_size=1, max_size=30))
    def test_safeName(self, text):
        """
        A name that does not start with a dot is refused exactly when it
        holds a slash, a backslash or a control character.
        """
        from smtpmx.address import UnsafeMailbox, checkSafeName

        if text.startswith("."):
            return
        unsafe = any(c in "/\\" or ord(c) < 0x20 or ord(c) == 0x7F for c in text)
        if unsafe:
            self.assertRaises(UnsafeMailbox, checkSafeName, text)
        else:
            checkSafeName(text)
