"""
Tests for reply values: the wire format, and that every standard reply
carries a valid enhanced status code (RFC 3463, RFC 2034).
"""

from __future__ import annotations

import re

import pytest
from twisted.trial.unittest import SynchronousTestCase

from smtpmx import reply
from smtpmx.reply import Reply


class ReplyTests(SynchronousTestCase):
    """
    L{Reply}.
    """

    def test_format(self):
        """
        A one-line reply is code, enhanced code and text, ended by CRLF.
        """
        self.assertEqual(Reply(250, "2.1.0", "Ok").format(), b"250 2.1.0 Ok\r\n")

    def test_multiline(self):
        """
        Each line but the last of a multi-line reply has a dash.
        """
        self.assertEqual(Reply(214, "2.0.0", "a\nb").format(), b"214-2.0.0 a\r\n214 2.0.0 b\r\n")

    def test_textIsPrintableASCII(self):
        """
        A reply whose text holds control characters or anything but ASCII
        (an echo of what a client sent, a validator's or a filter's text)
        goes out with them escaped: a bare CR, a NUL or raw UTF-8 never
        reaches the client.
        """
        r = Reply(501, "5.5.4", "Syntax: '\xa1' \x00 \r\tx \u2028\nnext é")
        self.assertEqual(
            r.format(),
            b"501-5.5.4 Syntax: '\\xa1' \\x00 \\r\\tx \\u2028\r\n501 5.5.4 next \\xe9\r\n",
        )

    @pytest.mark.rfc("3463", "2", "3463-2-1")
    @pytest.mark.rfc("2034", "3")
    def test_everyStandardReplyHasEnhancedCode(self):
        """
        Every 2xx, 4xx and 5xx reply in the table has an enhanced code whose
        class matches its code; 354 has none.
        """
        pattern = re.compile(r"^[245]\.\d{1,3}\.\d{1,3}$")
        replies = [v for v in vars(reply).values() if isinstance(v, Reply)]
        replies += [
            reply.syntaxError("x"),
            reply.queued("ID"),
            reply.connectionRefused("mx.example", "too many connections"),
            reply.timedOut("mx.example"),
            reply.tooManyErrors("mx.example"),
            reply.makingRoom("mx.example"),
        ]
        self.assertGreater(len(replies), 20)
        for r in replies:
            if r.code == 354:
                self.assertIsNone(r.enhanced)
                continue
            self.assertRegex(r.enhanced, pattern)
            self.assertEqual(r.enhanced[0], str(r.code)[0], r)

    @pytest.mark.rfc("2034", "3")
    @pytest.mark.rfc("5321", "4.1.1.1", "5321-4.1.1.1-1")
    def test_greetings(self):
        """
        The greeting and the EHLO/HELO answers carry no enhanced code;
        EHLO lists one extension per line after our name.
        """
        self.assertEqual(reply.greeting("mx.example").format(), b"220 mx.example ESMTP smtpmx\r\n")
        self.assertEqual(
            reply.ehlo("mx.example", ["PIPELINING", "HELP"]).format(),
            b"250-mx.example\r\n250-PIPELINING\r\n250 HELP\r\n",
        )
        self.assertEqual(reply.helo("mx.example").format(), b"250 mx.example\r\n")

    @pytest.mark.rfc("5321", "3.8", "5321-3.8-2")
    def test_closingReplies(self):
        """
        The replies sent before the server closes are 421 and name our host.
        """
        for r in [
            reply.connectionRefused("mx.example", "too many connections"),
            reply.timedOut("mx.example"),
            reply.tooManyErrors("mx.example"),
            reply.makingRoom("mx.example"),
        ]:
            self.assertEqual(r.code, 421)
            self.assertTrue(r.text.startswith("mx.example Error: "), r)


class WireFormTests(SynchronousTestCase):
    """
    A reply's wire form is made once and kept, without changing what the
    reply is.
    """

    def test_madeOnce(self):
        """
        Formatting again gives the very same bytes; the value still equals,
        and hashes like, a reply never formatted.
        """
        r = Reply(250, "2.1.0", "Ok")
        first = r.format()
        self.assertIs(r.format(), first)
        self.assertEqual(first, b"250 2.1.0 Ok\r\n")
        fresh = Reply(250, "2.1.0", "Ok")
        self.assertEqual(r, fresh)
        self.assertEqual(hash(r), hash(fresh))
        self.assertEqual(repr(r), repr(fresh))

    def test_greetingAndEhloShared(self):
        """
        The greeting and the EHLO answer for the same name and extensions
        are one value each, whatever sequence the extensions come in.
        """
        self.assertIs(reply.greeting("mx.example.org"), reply.greeting("mx.example.org"))
        self.assertIs(reply.ehlo("mx.example.org", ["A", "B"]), reply.ehlo("mx.example.org", ("A", "B")))
        self.assertEqual(reply.ehlo("mx.example.org", ["A", "B"]).format(), b"250-mx.example.org\r\n250-A\r\n250 B\r\n")
