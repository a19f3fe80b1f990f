"""
Tests for the relay decision: smtpmx is never an open relay.
"""

from __future__ import annotations

from hypothesis import given, strategies as st
import pytest
from twisted.trial.unittest import SynchronousTestCase

from smtpmx.access import Access
from smtpmx.address import Address
from smtpmx.envelope import LmtpRecipient, LocalMailbox, RemoteAddress
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


LMTP = "unix:/run/dovecot/lmtp"
MIXED = Access(
    ["example.org", "files.example"],
    relayNetworks=["127.0.0.0/8"],
    delivery=(("example.org", "lmtp:" + LMTP), ("files.example", "maildir")),
)


class LmtpDomainTests(SynchronousTestCase):
    """
    L{Access.decide} and L{Access.postmaster} for a domain whose backend is
    C{lmtp:ENDPOINT} (docs/storage.rst): its recipients go to the LMTP
    server with the address as given; Maildir domains are unchanged.
    """

    def test_localToLmtp(self):
        """
        An accepted recipient of an LMTP domain goes to the LMTP server with
        its address exactly as the client gave it: case and delimiter tag
        kept, as the server interprets its own local parts.
        """
        address = Address("Bob+x", "Example.ORG")
        r, dest = MIXED.decide("198.51.100.1", address, Accept())
        self.assertEqual((r.code, dest), (250, [LmtpRecipient(address, LMTP)]))

    def test_maildirDomainUnchanged(self):
        """
        A domain named with C{maildir} beside an LMTP domain still gets
        Maildir destinations.
        """
        r, dest = MIXED.decide("198.51.100.1", Address("Bob+x", "files.example"), Accept())
        self.assertEqual((r.code, dest), (250, [LocalMailbox("files.example", "bob")]))

    def test_defaultBackend(self):
        """
        An entry without a domain is the backend of every domain not named.
        """
        access = Access(["example.org", "other.example"], delivery=((None, "lmtp:tcp:127.0.0.1:24"),))
        r, dest = access.decide("198.51.100.1", Address("amy", "other.example"), Accept())
        self.assertEqual(dest, [LmtpRecipient(Address("amy", "other.example"), "tcp:127.0.0.1:24")])

    def test_aliasAcrossBackends(self):
        """
        An alias's targets each go to their own domain's backend, and a
        remote one to the relay.
        """
        targets = [Address("a", "example.org"), Address("b", "files.example"), Address("c", "remote.example")]
        r, dest = MIXED.decide("198.51.100.1", Address("info", "files.example"), Accept(targets))
        self.assertEqual(
            dest,
            [
                LmtpRecipient(Address("a", "example.org"), LMTP),
                LocalMailbox("files.example", "b"),
                RemoteAddress(Address("c", "remote.example")),
            ],
        )

    def test_noVerdictUnknown(self):
        """
        A recipient of an LMTP domain no validator knows is still unknown:
        550 5.1.1.
        """
        r, dest = MIXED.decide("198.51.100.1", Address("bob", "example.org"), None)
        self.assertEqual((r.code, r.enhanced, dest), (550, "5.1.1", []))

    def test_controlCharacterRefused(self):
        """
        An address with a control character is never sent to the LMTP
        server: 550 5.1.3, as an unsafe Maildir name is.
        """
        r, dest = MIXED.decide("198.51.100.1", Address("bo\x01b", "example.org"), Accept())
        self.assertEqual((r.code, r.enhanced, dest), (550, "5.1.3", []))

    @pytest.mark.rfc("5321", "4.5.1", "5321-4.5.1-2")
    def test_postmasterToLmtp(self):
        """
        C{postmaster@} an LMTP domain goes to its LMTP server like any of
        its recipients, the address as given.
        """
        address = Address("PostMaster", "example.org")
        self.assertEqual(MIXED.postmaster(address), LmtpRecipient(address, LMTP))

    @pytest.mark.rfc("5321", "4.5.1", "5321-4.5.1-3")
    def test_barePostmasterToLmtp(self):
        """
        A bare C{postmaster} belongs to the first local domain; when that is
        an LMTP domain it is sent there as C{postmaster@domain}.
        """
        self.assertEqual(
            MIXED.postmaster(Address("postmaster", "")),
            LmtpRecipient(Address("postmaster", "example.org"), LMTP),
        )

    @pytest.mark.rfc("5321", "4.5.1", "5321-4.5.1-2", "5321-4.5.1-3")
    def test_postmasterMaildir(self):
        """
        C{postmaster@} a Maildir domain, and a bare C{postmaster} when the
        first domain is a Maildir one, still go to the postmaster Maildir.
        """
        self.assertEqual(MIXED.postmaster(Address("postmaster", "Files.Example")), LocalMailbox("files.example", "postmaster"))
        self.assertEqual(ACCESS.postmaster(Address("postmaster", "")), LocalMailbox("example.org", "postmaster"))

    def test_fromConfig(self):
        """
        L{Access.fromConfig} takes the backends from C{--delivery}.
        """
        from smtpmx.config import Config

        config = Config(domains=("example.org",), delivery=(("example.org", "lmtp:" + LMTP),))
        self.assertEqual(Access.fromConfig(config).lmtpEndpoint("EXAMPLE.org"), LMTP)


class TrustedClientTests(SynchronousTestCase):
    """
    L{Access.clientMayRelay} remembers its answers, within bounds.
    """

    def test_sameAnswerRemembered(self):
        """
        Asked again about the same address, it gives the same answer.
        """
        access = Access(["example.org"], [], ["192.0.2.0/24"])
        for _ in range(2):
            self.assertTrue(access.clientMayRelay("192.0.2.7"))
            self.assertFalse(access.clientMayRelay("198.51.100.1"))
            self.assertFalse(access.clientMayRelay("not an address"))

    def test_bounded(self):
        """
        However many clients ask, it remembers at most C{TRUSTED_CACHE} of
        them, and still answers rightly past that.
        """
        from smtpmx import access as module

        access = Access(["example.org"], [], ["10.0.0.0/8"])
        for n in range(module.TRUSTED_CACHE + 10):
            self.assertTrue(access.clientMayRelay(f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}"))
        self.assertLessEqual(len(access._trusted), module.TRUSTED_CACHE)
        self.assertFalse(access.clientMayRelay("192.0.2.1"))
