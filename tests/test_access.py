"""
Tests for the relay decision: smtpmx is never an open relay.
"""

from __future__ import annotations

from hypothesis import given, strategies as st
import pytest
from twisted.trial.unittest import SynchronousTestCase

from smtpmx.access import Access
from smtpmx.address import Address
from smtpmx.envelope import LocalMailbox, RemoteAddress
from smtpmx.validation import Accept, Reject

ACCESS = Access(["example.org"], ["backup.example"], ["127.0.0.0/8", "::1/128", "192.0.2.0/24"])


class AccessTests(SynchronousTestCase):
    """
    L{Access.decide}.
    """

    def test_local(self):
        """
        An accepted local recipient goes to its Maildir.
        """
        r, dest = ACCESS.decide("198.51.100.1", Address("Bob+x", "Example.ORG"), Accept())
        self.assertEqual((r.code, dest), (250, [LocalMailbox("example.org", "bob")]))

    def test_localNoVerdict(self):
        """
        A local recipient no validator knows is unknown: 550 5.1.1.
        """
        r, _ = ACCESS.decide("198.51.100.1", Address("bob", "example.org"), None)
        self.assertEqual((r.code, r.enhanced), (550, "5.1.1"))

    def test_relayFromTrusted(self):
        """
        A trusted client may relay; an IPv4-mapped address counts.
        """
        for host in ["127.0.0.1", "::1", "::ffff:192.0.2.7"]:
            r, dest = ACCESS.decide(host, Address("x", "remote.example"), None)
            self.assertEqual((r.code, dest), (250, [RemoteAddress(Address("x", "remote.example"))]))

    @pytest.mark.rfc("5321", "3.6.2")
    def test_relayDomain(self):
        """
        A relay domain is accepted from anyone.
        """
        r, _ = ACCESS.decide("198.51.100.1", Address("x", "Backup.Example"), None)
        self.assertEqual(r.code, 250)

    def test_aliasToRemote(self):
        """
        A local alias may point outside; that is not an open relay.
        """
        r, dest = ACCESS.decide("198.51.100.1", Address("info", "example.org"), Accept([Address("x", "remote.example")]))
        self.assertEqual((r.code, dest), (250, [RemoteAddress(Address("x", "remote.example"))]))

    def test_reject(self):
        """
        A Reject verdict is the reply.
        """
        r, dest = ACCESS.decide("127.0.0.1", Address("x", "example.org"), Reject(450, "4.2.1", "busy"))
        self.assertEqual((r.code, r.enhanced, r.text, dest), (450, "4.2.1", "busy", []))

    @given(
        st.sampled_from(["198.51.100.1", "10.0.0.1", "2001:db8::1", "::ffff:198.51.100.1", "garbage"]),
        st.sampled_from(["remote.example", "EXAMPLE.ORG.evil", "example.org.", "[127.0.0.1]"]),
        st.sampled_from(
            [None, Accept(), Accept(["x@remote.example"]), Accept(["a@example.org"]), Reject(550, "5.1.1", "no")]
        ),
    )
    @pytest.mark.rfc("5321", "3.6.2")
    def test_neverOpenRelay(self, host, domain, verdict):
        """
        For any untrusted client, non-local domain and verdict, nothing is
        accepted.
        """
        r, dest = ACCESS.decide(host, Address("victim", domain), verdict)
        self.assertNotEqual(r.code, 250)
        self.assertEqual(dest, [])
