"""
Tests for L{smtpmx.headers}: the headers put on top of every stored copy.
"""

import pytest
from hypothesis import given, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from smtpmx.address import Address
from smtpmx.headers import deliveredTo, received, returnPath


class ReturnPathTests(SynchronousTestCase):
    """
    Tests for L{returnPath}.
    """

    @pytest.mark.rfc("5321", "4.4", "5321-4.4-7")
    def test_sender(self) -> None:
        """
        The sender appears in literal angle brackets, on an LF-ended line.
        """
        self.assertEqual(
            returnPath(Address("Alice", "Example.COM")),
            b"Return-Path: <Alice@Example.COM>\n",
        )

    @pytest.mark.rfc("5321", "4.4", "5321-4.4-7")
    def test_nullPath(self) -> None:
        """
        A message with the null reverse-path (a bounce) gets C{<>}.
        """
        self.assertEqual(returnPath(None), b"Return-Path: <>\n")

    def test_utf8(self) -> None:
        """
        An internationalised sender (SMTPUTF8) is written in UTF-8.
        """
        self.assertEqual(
            returnPath(Address("jöran", "exämple.org")),
            "Return-Path: <jöran@exämple.org>\n".encode("utf-8"),
        )

    def test_noInjection(self) -> None:
        """
        A CR or LF in the address cannot start a header of its own.
        """
        self.assertEqual(
            returnPath(Address("a\r\nBcc: x", "b.example")),
            b"Return-Path: <aBcc: x@b.example>\n",
        )


class DeliveredToTests(SynchronousTestCase):
    """
    Tests for L{deliveredTo}.
    """

    @pytest.mark.rfc("5321", "2.4", "5321-2.4-1")
    def test_asGiven(self) -> None:
        """
        The recipient is written as the client gave it, case kept, without
        angle brackets.
        """
        self.assertEqual(
            deliveredTo(Address("Bob+Tag", "Example.org")),
            b"Delivered-To: Bob+Tag@Example.org\n",
        )

    def test_quoted(self) -> None:
        """
        A quoted local part keeps its quotes.
        """
        self.assertEqual(
            deliveredTo(Address('"john doe"', "example.org")),
            b'Delivered-To: "john doe"@example.org\n',
        )

    def test_noInjection(self) -> None:
        """
        A CR or LF in the recipient is dropped.
        """
        self.assertEqual(
            deliveredTo(Address("bob\n\rX-Evil: 1", "example.org")),
            b"Delivered-To: bobX-Evil: 1@example.org\n",
        )

    @given(st.text(min_size=1), st.text(min_size=1))
    def test_oneLine(self, localpart: str, domain: str) -> None:
        """
        Whatever the address, each header is exactly one LF-ended line with
        no CR in it.
        """
        for header in (
            deliveredTo(Address(localpart, domain)),
            returnPath(Address(localpart, domain)),
        ):
            self.assertTrue(header.endswith(b"\n"))
            self.assertEqual(header.count(b"\n"), 1)
            self.assertNotIn(b"\r", header)


class ReceivedTests(SynchronousTestCase):
    """
    Tests for L{received}, our trace header.
    """

    @pytest.mark.rfc("5321", "4.4", "5321-4.4-1")
    @pytest.mark.rfc("5321", "4.4", "5321-4.4-2")
    @pytest.mark.rfc("5321", "4.4", "5321-4.4-3")
    @pytest.mark.rfc("5321", "4.4", "5321-4.4-6")
    def test_fields(self):
        """
        The header names the HELO name, client address, our name, the
        protocol, the queue ID, the TLS session and the date.
        """

        text = received(
            "client.example", "192.0.2.1", "mx.example.org", "ESMTPS", "ID1", 0,
            tls="TLSv1.3 with cipher X", recipient=Address("Bob", "example.org"),
        ).decode()
        self.assertEqual(
            text,
            "Received: from client.example ([192.0.2.1])\n"
            "\t(using TLSv1.3 with cipher X)\n"
            "\tby mx.example.org (smtpmx) with ESMTPS id ID1\n"
            "\tfor <Bob@example.org>; Thu, 01 Jan 1970 00:00:00 +0000\n",
        )

    @pytest.mark.rfc("5321", "4.4", "5321-4.4-2")
    def test_injection(self):
        """
        A HELO name with CR/LF cannot start a new header; an IPv6 client
        is written as an IPv6 literal.
        """

        text = received("evil\r\nX-Injected: 1", "::1", "mx", "SMTP", "ID", 0).decode()
        self.assertNotIn("\nX-Injected", text)
        self.assertIn("([IPv6:::1])", text)
