"""
End-to-end tests of sender authentication (C{docs/authentication.rst}):
the real C{twistd -n smtpmx} checking SPF, DKIM, DMARC and ARC against a
real DNS server on loopback (Twisted's own, L{tests.dnszone.RunningDNS}),
with messages signed in the test with dkimpy (the zone, the keys and the
signing are L{tests.authzone}'s), talked to with smtplib.

Every server trusts C{127.0.0.2} only (C{--relay-network}), so a client
connecting from 127.0.0.1 is untrusted and checked, and one bound to
127.0.0.2 is trusted and not checked.  Each verdict is read back from the
stored file with C{authres}, the way a mail client or a later filter
would read it.
"""

from __future__ import annotations

import os
import smtplib
import time
from typing import Optional, Sequence, Union

import authres
import pytest

from tests.authzone import CLIENT_HELO, arcSealed, dkimSigned, startDNS
from tests.dnszone import failingServer, silentServer
from tests.e2e import RunningServer, SharedProcessesTestCase, codes, freePort, headerBlock, rawDialog
from tests.helpers import message, unique

# Every blocking operation of a client is bounded by this.
TIMEOUT = 15
# Our --hostname, the authserv-id of the field we add.
HOSTNAME = "mx.local.test"
# The one trusted source address; 127.0.0.1 is untrusted.
TRUSTED_SOURCE = "127.0.0.2"
BASE = ["--hostname", HOSTNAME, "--validator", "any", "--relay-network", f"{TRUSTED_SOURCE}/32"]
DATE = b"Date: Tue, 01 Dec 2026 10:00:00 +0000\r\n"
# The properties of a result that the tests compare (RFC 8601 section 2.3).
SHOWN = ("smtp.mailfrom", "smtp.helo", "header.d", "header.s", "header.from")


def signedMessage(user: str, sender: str = "alice@example.test", body: bytes = b"Hello.\r\n",
                  extra: bytes = b"") -> bytes:
    """
    A message from C{sender} about C{user} (its C{Subject:} and
    C{Message-ID:}), unsigned, with the C{Date:} the signatures cover.
    """
    return message(user, body=body, extra=DATE + extra, sender=sender,
                   messageId=f"{user}@example.test")


def send(
    server: RunningServer, data: bytes, to: Union[str, Sequence[str]], mailFrom: str,
    helo: str = CLIENT_HELO, source: Optional[str] = None,
) -> tuple[int, str]:
    """
    One transaction with smtplib from C{source} (127.0.0.1 unless given):
    MAIL and RCPT must be accepted.

    @return: the (code, text) of the reply to the end of the data.
    """
    recipients = [to] if isinstance(to, str) else list(to)
    sourceAddress = (source, 0) if source else None
    with smtplib.SMTP(server.host, server.port, local_hostname=helo, timeout=TIMEOUT,
                      source_address=sourceAddress) as c:
        c.ehlo()
        code, text = c.mail(mailFrom)
        if code != 250:
            raise AssertionError(f"MAIL FROM:<{mailFrom}>: {code} {text!r}")
        for recipient in recipients:
            code, text = c.rcpt(recipient)
            if code != 250:
                raise AssertionError(f"RCPT TO:<{recipient}>: {code} {text!r}")
        code, text = c.data(data)
        return code, text.decode("utf-8", "replace")


def headerFields(stored: bytes) -> list[tuple[str, str]]:
    """
    The header fields of a stored (LF) message, in order, each value
    unfolded.
    """
    fields = []
    for line in headerBlock(stored).decode("utf-8", "replace").split("\n"):
        if line[:1] in (" ", "\t") and fields:
            name, value = fields[-1]
            fields[-1] = (name, value + line)
        else:
            name, _, value = line.partition(":")
            fields.append((name, value.strip()))
    return fields


def parsedResults(stored: bytes) -> list[authres.AuthenticationResultsHeader]:
    """
    Every C{Authentication-Results:} field of a stored message, parsed by
    authres, in order.
    """
    return [
        authres.AuthenticationResultsHeader.parse(f"Authentication-Results: {value}")
        for name, value in headerFields(stored) if name.lower() == "authentication-results"
    ]


def ours(stored: bytes) -> list[authres.AuthenticationResultsHeader]:
    """
    The C{Authentication-Results:} fields of a stored message whose
    authserv-id is our hostname.
    """
    return [h for h in parsedResults(stored) if h.authserv_id.lower() == HOSTNAME]


def verdicts(stored: bytes) -> list[str]:
    """
    The results of the one C{Authentication-Results:} field we added,
    read back with authres: C{"method=result"} and the properties the
    tests compare (L{SHOWN}), in order.

    @raise AssertionError: there is not exactly one field of ours.
    """
    fields = ours(stored)
    if len(fields) != 1:
        raise AssertionError(f"{len(fields)} Authentication-Results fields of {HOSTNAME}:\n"
                             + headerBlock(stored).decode("utf-8", "replace"))
    found = []
    for r in fields[0].results:
        shown = {f"{p.type}.{p.name}": p.value for p in r.properties}
        found.append(" ".join([f"{r.method}={r.result}"]
                              + [f"{name}={shown[name]}" for name in SHOWN if name in shown]))
    return found


def reasons(stored: bytes, method: str) -> list[str]:
    """
    The C{reason=} of each result of C{method} in our field, lower-cased
    (empty when it has none).
    """
    [field] = ours(stored)
    return [(r.reason or "").lower() for r in field.results if r.method == method]


def filesUnder(directory: str) -> set[str]:
    """
    Every file below C{directory} (none if it does not exist).
    """
    return {os.path.join(parent, name)
            for parent, _, names in os.walk(directory) for name in names}


def junkMessages(server: RunningServer, user: str, domain: str = "localhost") -> list[bytes]:
    """
    The messages in C{user@domain}'s Maildir++ C{.Junk/new/}.
    """
    found = []
    for path in sorted(filesUnder(os.path.join(server.maildir(domain, user), ".Junk", "new"))):
        with open(path, "rb") as f:
            found.append(f.read())
    return found


def storedFiles(server: RunningServer) -> set[str]:
    """
    Every file of every Maildir and of the relay queue's messages and
    envelopes: what "nothing stored" compares.
    """
    return (filesUnder(os.path.join(server.dir, "Maildir"))
            | filesUnder(os.path.join(server.dir, "queue", "msg"))
            | filesUnder(os.path.join(server.dir, "queue", "env")))


class ServersTestCase(SharedProcessesTestCase):
    """
    A test class sharing one DNS server and one or more smtpmx servers;
    every test fails if any of them logged a traceback while it ran.

    @cvar servers: every server of the class (L{server} among them).
    """

    servers: list[RunningServer]

    @classmethod
    def startServer(cls, addCleanup, *args: str, dns: Optional[tuple[str, int]] = None) -> RunningServer:
        """
        Start a server with L{BASE}, C{args}, and a DNS server for its
        lookups, and count it among L{servers}.

        @param dns: the DNS server's C{(host, port)}; by default the
            class's C{dns}, a L{RunningDNS}.
        """
        host, port = dns or (cls.dns.host, cls.dns.port)
        server = RunningServer.start(addCleanup, BASE + ["--dns-server", f"{host}:{port}"] + list(args))
        cls.__dict__.get("servers") or setattr(cls, "servers", [])
        cls.servers.append(server)
        return server

    def tearDown(self) -> None:
        """
        Fail the test if any server logged a traceback while it ran.
        """
        cls = type(self)
        seen = cls.__dict__.get("seen") or {}
        cls.seen = seen
        for server in cls.servers:
            log = server.log()
            fresh = log[seen.get(id(server), 0):]
            seen[id(server)] = len(log)
            self.assertNotIn("Traceback", fresh, f"the server on port {server.port} logged a traceback")


class AuthenticationTests(ServersTestCase):
    """
    One DNS server and one server with every check on and DMARC enforced
    (the defaults), for the whole class.
    """

    @classmethod
    def startProcesses(cls, addCleanup) -> None:
        """
        Start the DNS server, then the server asking it; mail for
        C{relayed.test} (for which we are backup MX) waits in the queue
        for a next hop that is down.
        """
        cls.dns = startDNS(addCleanup)
        cls.server = cls.startServer(
            addCleanup, "--relay-domain", "relayed.test",
            "--route", f"relayed.test=127.0.0.1:{freePort()}",
        )

    def deliver(self, data: bytes, mailFrom: str, user: Optional[str] = None, **kw) -> bytes:
        """
        Send C{data} to C{user@localhost} and return the one message
        stored in its INBOX.
        """
        user = user or unique("u-")
        code, text = send(self.server, data, f"{user}@localhost", mailFrom, **kw)
        self.assertEqual(code, 250, text)
        [found] = self.server.newMessages("localhost", user)
        return found

    # SPF.

    @pytest.mark.rfc("7208", "2.4", "7208-2.4-1")
    @pytest.mark.rfc("7208", "9.1")
    @pytest.mark.rfc("8601", "4")
    def test_spfPass(self):
        """
        A message whose MAIL FROM domain authorizes the client's address
        gets C{spf=pass smtp.mailfrom=DOMAIN} in one
        C{Authentication-Results:} field of our hostname, with the other
        methods' verdicts (an unsigned message, DMARC passing by SPF).
        """
        user = unique("spfpass-")
        stored = self.deliver(signedMessage(user), "alice@example.test", user)
        self.assertEqual(verdicts(stored), [
            "spf=pass smtp.mailfrom=example.test",
            "dkim=none",
            "dmarc=pass header.from=example.test",
            "arc=none",
        ])

    @pytest.mark.rfc("7208", "2.4", "7208-2.4-1")
    def test_spfFail(self):
        """
        A MAIL FROM domain whose record ends in C{-all} without the
        client's address: C{spf=fail}; the message is still delivered
        (without C{--spf-reject}, and without a DMARC policy).
        """
        stored = self.deliver(signedMessage(unique("spffail-"), "bob@fail.test"), "bob@fail.test")
        self.assertEqual(verdicts(stored)[0], "spf=fail smtp.mailfrom=fail.test")

    @pytest.mark.rfc("7208", "2.4", "7208-2.4-1")
    def test_spfSoftfail(self):
        """
        A record ending in C{~all}: C{spf=softfail}.
        """
        stored = self.deliver(signedMessage(unique("soft-"), "bob@softfail.test"), "bob@softfail.test")
        self.assertEqual(verdicts(stored)[0], "spf=softfail smtp.mailfrom=softfail.test")

    @pytest.mark.rfc("7208", "2.4", "7208-2.4-1")
    def test_spfNeutral(self):
        """
        A record ending in C{?all}: C{spf=neutral}.
        """
        stored = self.deliver(signedMessage(unique("neutral-"), "bob@neutral.test"), "bob@neutral.test")
        self.assertEqual(verdicts(stored)[0], "spf=neutral smtp.mailfrom=neutral.test")

    @pytest.mark.rfc("7208", "4.5")
    @pytest.mark.rfc("7489", "6.6.3", "7489-6.6.3-3")
    def test_spfNone(self):
        """
        A MAIL FROM domain with no SPF record (it does not exist):
        C{spf=none}; without a DMARC record, C{dmarc=none} and the message
        is delivered.
        """
        stored = self.deliver(signedMessage(unique("none-"), "bob@none.test"), "bob@none.test")
        self.assertEqual(verdicts(stored), [
            "spf=none smtp.mailfrom=none.test",
            "dkim=none",
            "dmarc=none header.from=none.test",
            "arc=none",
        ])

    @pytest.mark.rfc("7208", "4.5")
    def test_spfPermerrorTwoRecords(self):
        """
        A domain publishing two SPF records: C{spf=permerror}.
        """
        stored = self.deliver(signedMessage(unique("twice-"), "bob@twice.test"), "bob@twice.test")
        self.assertEqual(verdicts(stored)[0], "spf=permerror smtp.mailfrom=twice.test")

    @pytest.mark.rfc("7208", "4.6")
    def test_spfPermerrorSyntax(self):
        """
        A record with an unknown mechanism: C{spf=permerror}.
        """
        stored = self.deliver(signedMessage(unique("syntax-"), "bob@badsyntax.test"),
                              "bob@badsyntax.test")
        self.assertEqual(verdicts(stored)[0], "spf=permerror smtp.mailfrom=badsyntax.test")

    @pytest.mark.rfc("7208", "2.4", "7208-2.4-2")
    def test_nullSender(self):
        """
        For the null reverse-path C{<>} (a bounce), SPF checks the HELO
        name (C{postmaster@HELO}) and says so: C{spf=pass
        smtp.helo=NAME}; DMARC aligns the HELO domain with the C{From:}
        domain, so a bounce from the HELO's organization passes.
        """
        data = signedMessage(unique("bounce-"), "MAILER-DAEMON@helo.test")
        stored = self.deliver(data, "")
        self.assertEqual(verdicts(stored), [
            f"spf=pass smtp.helo={CLIENT_HELO}",
            "dkim=none",
            "dmarc=pass header.from=helo.test",
            "arc=none",
        ])

    # DKIM.

    @pytest.mark.rfc("6376", "3.3")
    def test_dkimPassRsa(self):
        """
        An rsa-sha256 signature (relaxed/relaxed) whose 2048-bit key is
        published in two TXT strings: C{dkim=pass header.d=DOMAIN
        header.s=SELECTOR}; DMARC passes by it even though the MAIL FROM
        domain is another one's.
        """
        user = unique("rsa-")
        data = dkimSigned(signedMessage(user), "example.test", "rsa")
        stored = self.deliver(data, "list@none.test", user)
        self.assertEqual(verdicts(stored), [
            "spf=none smtp.mailfrom=none.test",
            "dkim=pass header.d=example.test header.s=rsa",
            "dmarc=pass header.from=example.test",
            "arc=none",
        ])

    def test_dkimPassEd25519(self):
        """
        An ed25519-sha256 signature (RFC 8463, simple/simple):
        C{dkim=pass}.
        """
        data = dkimSigned(signedMessage(unique("ed-")), "example.test", "ed", "ed",
                          canonicalize=(b"simple", b"simple"))
        stored = self.deliver(data, "list@none.test")
        self.assertEqual(verdicts(stored)[1], "dkim=pass header.d=example.test header.s=ed")
        self.assertEqual(verdicts(stored)[2], "dmarc=pass header.from=example.test")

    def test_dkimBigBody(self):
        """
        A body of about 300 KiB (spooled, read back in chunks) with lines
        that start with a dot (dot-stuffed on the wire), trailing white
        space, 8-bit text and empty lines at its end verifies under both
        signatures: simple/simple and relaxed/relaxed.
        """
        user = unique("big-")
        lines = [b".a line that starts with a dot", b"trailing white space \t ",
                 "8-bit: Grüße aus Zürich".encode(), b"", b"x" * 900]
        body = b"\r\n".join(lines * 1000) + b"\r\n\r\n\r\n"
        data = dkimSigned(signedMessage(user, body=body), "example.test", "ed", "ed",
                          canonicalize=(b"simple", b"simple"))
        data = dkimSigned(data, "example.test", "rsa")
        stored = self.deliver(data, "list@none.test", user)
        self.assertGreater(len(stored), 300_000)
        self.assertEqual(verdicts(stored)[1:4], [
            "dkim=pass header.d=example.test header.s=rsa",
            "dkim=pass header.d=example.test header.s=ed",
            "dmarc=pass header.from=example.test",
        ])

    @pytest.mark.rfc("6376", "6.1.3", "6376-6.1.3-1")
    @pytest.mark.rfc("6376", "6.1", "6376-6.1-2")
    def test_dkimBodyTampered(self):
        """
        A body changed after signing: C{dkim=fail} with the reason; like
        an unsigned message whose SPF passes aligned, it is delivered to
        INBOX (DMARC passes by SPF).
        """
        user = unique("body-")
        data = dkimSigned(signedMessage(user), "example.test", "rsa")
        data = data.replace(b"Hello.", b"Hello, changed.")
        stored = self.deliver(data, "alice@example.test", user)
        self.assertEqual(verdicts(stored), [
            "spf=pass smtp.mailfrom=example.test",
            "dkim=fail header.d=example.test header.s=rsa",
            "dmarc=pass header.from=example.test",
            "arc=none",
        ])
        self.assertIn("body hash", reasons(stored, "dkim")[0])

    @pytest.mark.rfc("6376", "6.1.3", "6376-6.1.3-2")
    def test_dkimHeaderTampered(self):
        """
        A signed header field changed after signing: C{dkim=fail}.
        """
        user = unique("header-")
        data = dkimSigned(signedMessage(user), "example.test", "rsa")
        data = data.replace(f"Subject: {user}".encode(), b"Subject: changed")
        stored = self.deliver(data, "alice@example.test", user)
        self.assertEqual(verdicts(stored)[1], "dkim=fail header.d=example.test header.s=rsa")

    @pytest.mark.rfc("6376", "6.1", "6376-6.1-1")
    def test_twoSignatures(self):
        """
        Two signatures, an ed25519 one of C{example.test} and an rsa one
        of C{org.test} on top, get one C{dkim=} result each, in header
        order; either would do for DMARC.
        """
        user = unique("two-")
        data = dkimSigned(signedMessage(user), "example.test", "ed", "ed")
        data = dkimSigned(data, "org.test", "rsa")
        stored = self.deliver(data, "list@none.test", user)
        self.assertEqual(verdicts(stored)[1:3], [
            "dkim=pass header.d=org.test header.s=rsa",
            "dkim=pass header.d=example.test header.s=ed",
        ])
        self.assertEqual(verdicts(stored)[3], "dmarc=pass header.from=example.test")

    @pytest.mark.rfc("6376", "6.1.2", "6376-6.1.2-1")
    def test_dkimKeyMissing(self):
        """
        A signature whose selector has no key record: C{dkim=permerror}.
        """
        data = dkimSigned(signedMessage(unique("nokey-")), "example.test", "missing")
        stored = self.deliver(data, "alice@example.test")
        self.assertEqual(verdicts(stored)[1], "dkim=permerror header.d=example.test header.s=missing")

    @pytest.mark.rfc("6376", "6.1.2", "6376-6.1.2-2")
    def test_dkimKeyRevoked(self):
        """
        A signature whose key record has an empty C{p=} (revoked):
        C{dkim=permerror}.
        """
        data = dkimSigned(signedMessage(unique("revoked-")), "example.test", "revoked")
        stored = self.deliver(data, "alice@example.test")
        self.assertEqual(verdicts(stored)[1], "dkim=permerror header.d=example.test header.s=revoked")

    # DMARC.

    @pytest.mark.rfc("7489", "3.1.2")
    @pytest.mark.rfc("7489", "6.6.3", "7489-6.6.3-1")
    def test_dmarcPassBySpf(self):
        """
        An unsigned message whose MAIL FROM domain passes SPF and is the
        C{From:} domain passes DMARC, and the transaction's log line says
        so.
        """
        user = unique("dmarcspf-")
        stored = self.deliver(signedMessage(user), "alice@example.test", user)
        self.assertEqual(verdicts(stored)[2], "dmarc=pass header.from=example.test")
        self.assertIn(" auth=[spf=pass dkim=none dmarc=pass arc=none] ",
                      self.server.transactionLine(user))

    @pytest.mark.rfc("7489", "3.1.1")
    def test_dmarcPassByDkimRelaxed(self):
        """
        A message from a subdomain (C{mail.org.test}) signed by its
        organizational domain (C{d=org.test}) passes DMARC by relaxed
        DKIM alignment, the default, although its subdomain policy is
        C{reject} and SPF is not aligned.
        """
        user = unique("relaxed-")
        data = dkimSigned(signedMessage(user, "alice@mail.org.test"), "org.test", "rsa")
        stored = self.deliver(data, "list@none.test", user)
        self.assertEqual(verdicts(stored)[1:3], [
            "dkim=pass header.d=org.test header.s=rsa",
            "dmarc=pass header.from=mail.org.test",
        ])

    @pytest.mark.rfc("7489", "3.1.1")
    @pytest.mark.rfc("7489", "3.1.2")
    def test_dmarcStrictAlignment(self):
        """
        With C{adkim=s; aspf=s}, a message from C{mail.strict.test}
        signed by C{strict.test} and sent from C{strict.test} (both
        passing) fails DMARC: strict alignment needs the very same name.
        Its policy, C{quarantine}, files it in the Junk folder.
        """
        user = unique("strict-")
        data = dkimSigned(signedMessage(user, "alice@mail.strict.test"), "strict.test", "rsa")
        code, text = send(self.server, data, f"{user}@localhost", "bounces@strict.test")
        self.assertEqual(code, 250, text)
        [stored] = junkMessages(self.server, user)
        self.assertEqual(verdicts(stored)[:3], [
            "spf=pass smtp.mailfrom=strict.test",
            "dkim=pass header.d=strict.test header.s=rsa",
            "dmarc=fail header.from=mail.strict.test",
        ])

    @pytest.mark.rfc("7489", "6.6.4", "7489-6.6.4-3")
    def test_dmarcRejectRefused(self):
        """
        A forgery of C{example.test} (C{p=reject}): unsigned, sent from
        another domain, is refused after the data with C{550 5.7.1};
        nothing is stored in any Maildir, Junk folder or the queue, and the
        log line gives the verdicts.
        """
        user = unique("forged-")
        before = storedFiles(self.server)
        code, text = send(self.server, signedMessage(user), f"{user}@localhost", "bob@none.test")
        self.assertEqual(code, 550, text)
        self.assertTrue(text.startswith("5.7.1 "), text)
        self.assertIn("dmarc", text.lower())
        self.assertEqual(storedFiles(self.server), before)
        line = self.server.transactionLine(user)
        self.assertIn(" auth=[spf=none dkim=none dmarc=fail(reject) arc=none] ", line)
        self.assertIn("result=550 5.7.1", line)

    @pytest.mark.rfc("7489", "6.6.4", "7489-6.6.4-3")
    def test_dmarcRejectRefusedForEveryRecipient(self):
        """
        The same forgery addressed to a local mailbox and to a domain we
        relay for is refused whole: neither the Maildir nor the queue gets
        a copy.
        """
        user = unique("forged2-")
        before = storedFiles(self.server)
        code, text = send(self.server, signedMessage(user),
                          [f"{user}@localhost", f"{user}@relayed.test"], "bob@none.test")
        self.assertEqual(code, 550, text)
        self.assertEqual(storedFiles(self.server), before)

    @pytest.mark.rfc("7489", "6.6.4", "7489-6.6.4-2")
    def test_dmarcQuarantineJunk(self):
        """
        A forgery of a domain asking for C{p=quarantine} is delivered to
        the recipient's Junk folder (C{.Junk/new/}), not INBOX, with
        C{dmarc=fail}.
        """
        user = unique("quarantine-")
        code, text = send(self.server, signedMessage(user, "alice@quarantine.test"),
                          f"{user}@localhost", "bob@none.test")
        self.assertEqual(code, 250, text)
        self.assertEqual(self.server.newMessages("localhost", user), [])
        [stored] = junkMessages(self.server, user)
        self.assertEqual(verdicts(stored)[2], "dmarc=fail header.from=quarantine.test")
        self.assertIn("dmarc=fail(quarantine)", self.server.transactionLine(user))

    @pytest.mark.rfc("7489", "6.7")
    def test_dmarcNoneDelivered(self):
        """
        A forgery of a domain asking for C{p=none} is delivered to INBOX,
        its failure recorded.
        """
        user = unique("monitor-")
        stored = self.deliver(signedMessage(user, "alice@monitor.test"), "bob@none.test", user)
        self.assertEqual(verdicts(stored)[2], "dmarc=fail header.from=monitor.test")
        self.assertEqual(junkMessages(self.server, user), [])

    @pytest.mark.rfc("7489", "6.6.3", "7489-6.6.3-2")
    def test_subdomainPolicy(self):
        """
        A forgery from C{mail.org.test}, which publishes no DMARC record,
        follows the C{sp=reject} of its organizational domain's record
        (C{_dmarc.org.test}, whose own C{p=} is C{none}): refused.
        """
        user = unique("sub-")
        before = storedFiles(self.server)
        code, text = send(self.server, signedMessage(user, "alice@mail.org.test"),
                          f"{user}@localhost", "bob@none.test")
        self.assertEqual(code, 550, text)
        self.assertTrue(text.startswith("5.7.1 "), text)
        self.assertEqual(storedFiles(self.server), before)

    def test_organizationalDomainOwnPolicy(self):
        """
        The organizational domain's own forgery follows its C{p=none}:
        delivered, C{dmarc=fail}.
        """
        stored = self.deliver(signedMessage(unique("orgown-"), "alice@org.test"), "bob@none.test")
        self.assertEqual(verdicts(stored)[2], "dmarc=fail header.from=org.test")

    @pytest.mark.rfc("7489", "6.3", "7489-6.3-1")
    def test_subdomainWithoutSp(self):
        """
        Without C{sp=}, a subdomain follows the organizational domain's
        C{p=}: a forgery from C{news.example.test} is refused like one
        from C{example.test}.
        """
        user = unique("news-")
        code, text = send(self.server, signedMessage(user, "alice@news.example.test"),
                          f"{user}@localhost", "bob@none.test")
        self.assertEqual(code, 550, text)

    @pytest.mark.rfc("7489", "6.6.4", "7489-6.6.4-1", "7489-6.6.4-4")
    def test_pctZero(self):
        """
        C{p=reject; pct=0}: the policy applies to no message, so a failing
        one is treated as C{quarantine}, the next lower policy: delivered
        to the Junk folder, not refused.
        """
        user = unique("pct-")
        code, text = send(self.server, signedMessage(user, "alice@sampled.test"),
                          f"{user}@localhost", "bob@none.test")
        self.assertEqual(code, 250, text)
        [stored] = junkMessages(self.server, user)
        self.assertEqual(verdicts(stored)[2], "dmarc=fail header.from=sampled.test")

    @pytest.mark.rfc("7489", "6.6.1")
    def test_severalFromDomains(self):
        """
        A C{From:} with addresses in two domains is checked for each; both
        fail here, and the stricter policy (C{example.test}'s C{reject},
        not C{monitor.test}'s C{none}) decides: refused.
        """
        user = unique("twofrom-")
        data = signedMessage(user, "alice@monitor.test, bob@example.test")
        code, text = send(self.server, data, f"{user}@localhost", "bob@none.test")
        self.assertEqual(code, 550, text)

    def test_severalFromDomainsOneFails(self):
        """
        When one of two C{From:} domains fails (C{monitor.test}, C{p=none})
        and the other passes (C{example.test}, aligned with SPF), the
        message fails DMARC with the failing domain's policy: delivered to
        INBOX with C{dmarc=fail header.from=monitor.test}.
        """
        user = unique("onefails-")
        data = signedMessage(user, "alice@example.test, carol@monitor.test")
        stored = self.deliver(data, "alice@example.test", user)
        self.assertEqual(verdicts(stored)[2], "dmarc=fail header.from=monitor.test")

    def test_noFrom(self):
        """
        A message without C{From:} cannot be evaluated: C{dmarc=permerror},
        and it is delivered.
        """
        user = unique("nofrom-")
        data = (b"To: someone@example.org\r\nSubject: " + user.encode() + b"\r\n" + DATE
                + b"\r\nHello.\r\n")
        stored = self.deliver(data, "alice@example.test", user)
        self.assertEqual(verdicts(stored)[2], "dmarc=permerror")

    # ARC.

    @pytest.mark.rfc("8617", "5.2", "8617-5.2-3")
    def test_arcPass(self):
        """
        A message signed by C{example.test} and forwarded by
        C{forwarder.test}, which sealed it with an ARC set: C{arc=pass};
        the forwarder's own C{Authentication-Results:} is kept, below ours.
        """
        user = unique("arc-")
        data = arcSealed(dkimSigned(signedMessage(user), "example.test", "rsa"))
        stored = self.deliver(data, "list@forwarder.test", user)
        self.assertEqual(verdicts(stored), [
            "spf=pass smtp.mailfrom=forwarder.test",
            "dkim=pass header.d=example.test header.s=rsa",
            "dmarc=pass header.from=example.test",
            "arc=pass",
        ])
        ids = [h.authserv_id.lower() for h in parsedResults(stored)]
        self.assertEqual(ids, [HOSTNAME, "forwarder.test"])

    @pytest.mark.rfc("8617", "5.2", "8617-5.2-2")
    def test_arcBrokenChain(self):
        """
        The same message whose ARC-Authentication-Results was changed
        after sealing (the seal no longer verifies): C{arc=fail}, while
        the DKIM signature, which does not cover it, still passes.
        """
        user = unique("arcbroken-")
        data = arcSealed(dkimSigned(signedMessage(user), "example.test", "rsa"))
        changed = data.replace(b"i=1; forwarder.test;", b"i=1; forwarder.test; x=y;", 1)
        self.assertNotEqual(changed, data)
        stored = self.deliver(changed, "list@forwarder.test", user)
        results = verdicts(stored)
        self.assertEqual(results[1], "dkim=pass header.d=example.test header.s=rsa")
        self.assertEqual(results[3], "arc=fail")

    @pytest.mark.rfc("8617", "5.2", "8617-5.2-1")
    def test_arcNone(self):
        """
        A message without ARC sets: C{arc=none}.
        """
        stored = self.deliver(signedMessage(unique("noarc-")), "alice@example.test")
        self.assertEqual(verdicts(stored)[3], "arc=none")

    # The field.

    @pytest.mark.rfc("8601", "2.1")
    @pytest.mark.rfc("6376", "6.2")
    def test_fieldUnderReceived(self):
        """
        Our field comes directly under our C{Received:} field, above the
        message's own fields: its C{DKIM-Signature:} and a foreign
        C{Authentication-Results:}.
        """
        user = unique("order-")
        foreign = b"Authentication-Results: other.test; spf=pass smtp.mailfrom=example.test\r\n"
        data = dkimSigned(foreign + signedMessage(user), "example.test", "rsa")
        stored = self.deliver(data, "alice@example.test", user)
        names = [name.lower() for name, _ in headerFields(stored)]
        received = names.index("received")
        self.assertEqual(names[received + 1], "authentication-results")
        self.assertIn(f"by {HOSTNAME}", headerFields(stored)[received][1])
        self.assertEqual(ours(stored)[0].authserv_id.lower(), HOSTNAME)
        self.assertLess(received + 1, names.index("dkim-signature"))
        self.assertEqual(names.count("authentication-results"), 2)

    @pytest.mark.rfc("8601", "5")
    def test_forgedFieldRemoved(self):
        """
        Incoming C{Authentication-Results:} fields claiming our hostname
        (in any case, after a comment) are removed; one of another
        authserv-id is kept; ours, with the real verdicts, is the only
        one of our name.
        """
        user = unique("forgedfield-")
        forged = (
            f"Authentication-Results: {HOSTNAME}; dmarc=pass header.from=example.test\r\n"
            f"Authentication-Results: (trust me) {HOSTNAME.upper()};\r\n"
            f"  dkim=pass header.d=example.test\r\n"
            "Authentication-Results: other.test; spf=pass smtp.mailfrom=example.test\r\n"
        ).encode()
        # (From monitor.test, p=none: the forged verdict would not save a
        # forgery of example.test from refusal.)
        data = signedMessage(user, "alice@monitor.test", extra=forged)
        stored = self.deliver(data, "bob@none.test", user)
        self.assertEqual(verdicts(stored)[2], "dmarc=fail header.from=monitor.test")
        ids = [h.authserv_id.lower() for h in parsedResults(stored)]
        self.assertEqual(ids, [HOSTNAME, "other.test"])
        self.assertNotIn(b"trust me", stored)

    def test_relayedCopy(self):
        """
        The copy queued for a remote recipient (a domain we relay for)
        carries the same field as the local copy.
        """
        user = unique("relay-")
        before = filesUnder(os.path.join(self.server.dir, "queue", "msg"))
        code, text = send(self.server, signedMessage(user), [f"{user}@localhost", f"{user}@relayed.test"],
                          "alice@example.test")
        self.assertEqual(code, 250, text)
        [local] = self.server.newMessages("localhost", user)
        [path] = filesUnder(os.path.join(self.server.dir, "queue", "msg")) - before
        with open(path, "rb") as f:
            queued = f.read()
        self.assertEqual(verdicts(queued), verdicts(local))
        self.assertEqual(verdicts(queued)[0], "spf=pass smtp.mailfrom=example.test")

    def test_quarantineRelayedCopy(self):
        """
        A C{p=quarantine} failure for a local and a remote recipient: the
        local copy goes to the Junk folder, the remote one to the queue as
        usual, both with the same field.
        """
        user = unique("qrelay-")
        before = filesUnder(os.path.join(self.server.dir, "queue", "msg"))
        code, text = send(self.server, signedMessage(user, "alice@quarantine.test"),
                          [f"{user}@localhost", f"{user}@relayed.test"], "bob@none.test")
        self.assertEqual(code, 250, text)
        [local] = junkMessages(self.server, user)
        self.assertEqual(self.server.newMessages("localhost", user), [])
        [path] = filesUnder(os.path.join(self.server.dir, "queue", "msg")) - before
        with open(path, "rb") as f:
            queued = f.read()
        self.assertEqual(verdicts(queued), verdicts(local))
        self.assertEqual(verdicts(local)[2], "dmarc=fail header.from=quarantine.test")

    @pytest.mark.rfc("8601", "5")
    def test_trustedUnchecked(self):
        """
        A trusted client (inside C{--relay-network}) is not checked: even
        a forgery of C{example.test} is delivered to INBOX, with no field
        of ours and no verdicts in the log line; a forged field of our
        name is removed all the same, a foreign one kept.
        """
        user = unique("trusted-")
        extra = (
            f"Authentication-Results: {HOSTNAME}; dmarc=pass header.from=example.test\r\n"
            "Authentication-Results: other.test; spf=pass smtp.mailfrom=example.test\r\n"
        ).encode()
        stored = self.deliver(signedMessage(user, extra=extra), "bob@none.test", user,
                              source=TRUSTED_SOURCE)
        self.assertEqual([h.authserv_id for h in parsedResults(stored)], ["other.test"])
        self.assertNotIn(" auth=", self.server.transactionLine(user))


class AuthenticationOptionsTests(ServersTestCase):
    """
    One DNS server and four servers, each with one option of sender
    authentication changed: C{--dmarc-policy tag}, C{--auth-checks
    spf,dmarc}, C{--auth-checks none} and C{--spf-reject}.
    """

    @classmethod
    def startProcesses(cls, addCleanup) -> None:
        """
        Start the DNS server, then the four servers asking it.
        """
        cls.dns = startDNS(addCleanup)
        cls.tag = cls.server = cls.startServer(addCleanup, "--dmarc-policy", "tag")
        cls.subset = cls.startServer(addCleanup, "--auth-checks", "spf,dmarc")
        cls.unchecked = cls.startServer(addCleanup, "--auth-checks", "none")
        cls.spfReject = cls.startServer(addCleanup, "--spf-reject")

    def deliver(self, server: RunningServer, data: bytes, mailFrom: str, **kw) -> bytes:
        """
        Send C{data} to a new mailbox of C{server} and return the one
        message stored in its INBOX.
        """
        user = unique("u-")
        code, text = send(server, data, f"{user}@localhost", mailFrom, **kw)
        self.assertEqual(code, 250, text)
        [found] = server.newMessages("localhost", user)
        return found

    def mailReplies(self, server: RunningServer, senders: Sequence[str],
                    source: Optional[str] = None) -> list[tuple[int, str]]:
        """
        The replies to C{MAIL FROM} for each of C{senders}, in one session
        (C{RSET} after each accepted one).
        """
        replies = []
        sourceAddress = (source, 0) if source else None
        with smtplib.SMTP(server.host, server.port, local_hostname=CLIENT_HELO, timeout=TIMEOUT,
                          source_address=sourceAddress) as c:
            c.ehlo()
            for sender in senders:
                code, text = c.mail(sender)
                replies.append((code, text.decode("utf-8", "replace")))
                if code == 250:
                    c.rset()
        return replies

    @pytest.mark.rfc("7489", "6.7")
    def test_tagDelivers(self):
        """
        With C{--dmarc-policy tag}, a forgery of a C{p=reject} domain is
        delivered to INBOX and one of a C{p=quarantine} domain too: the
        failures are only recorded.
        """
        for sender in ("alice@example.test", "alice@quarantine.test"):
            user = unique("tag-")
            code, text = send(self.tag, signedMessage(user, sender), f"{user}@localhost",
                              "bob@none.test")
            self.assertEqual(code, 250, text)
            [stored] = self.tag.newMessages("localhost", user)
            domain = sender.split("@")[1]
            self.assertEqual(verdicts(stored)[2], f"dmarc=fail header.from={domain}")
            self.assertEqual(junkMessages(self.tag, user), [])

    def test_subsetOnlyEnabledMethods(self):
        """
        With C{--auth-checks spf,dmarc}, the field has only C{spf=} and
        C{dmarc=}; DMARC still evaluates the DKIM signature it needs, so a
        message signed by its C{From:} domain passes.
        """
        data = dkimSigned(signedMessage(unique("subset-")), "example.test", "rsa")
        stored = self.deliver(self.subset, data, "list@none.test")
        self.assertEqual(verdicts(stored), [
            "spf=none smtp.mailfrom=none.test",
            "dmarc=pass header.from=example.test",
        ])

    def test_subsetStillEnforces(self):
        """
        With C{--auth-checks spf,dmarc}, a forgery of a C{p=reject}
        domain is still refused.
        """
        user = unique("subsetforged-")
        code, text = send(self.subset, signedMessage(user), f"{user}@localhost", "bob@none.test")
        self.assertEqual(code, 550, text)

    @pytest.mark.rfc("8601", "5")
    def test_noneChecksNothing(self):
        """
        With C{--auth-checks none}, nothing is checked: a forgery of a
        C{p=reject} domain is delivered with no field of ours and no
        verdicts in the log line; a forged field of our name is still
        removed.
        """
        user = unique("none-")
        extra = f"Authentication-Results: {HOSTNAME}; dmarc=pass header.from=example.test\r\n"
        code, text = send(self.unchecked, signedMessage(user, extra=extra.encode()),
                          f"{user}@localhost", "bob@none.test")
        self.assertEqual(code, 250, text)
        [stored] = self.unchecked.newMessages("localhost", user)
        self.assertEqual(parsedResults(stored), [])
        self.assertNotIn(" auth=", self.unchecked.transactionLine(user))

    @pytest.mark.rfc("7208", "8.4")
    def test_spfRejectFail(self):
        """
        With C{--spf-reject}, an SPF C{fail} refuses MAIL FROM with
        C{550 5.7.23}, naming the domain and the client; the session goes
        on, and a sender that passes is accepted next.
        """
        [(code, text), (nextCode, _)] = self.mailReplies(
            self.spfReject, ["bob@fail.test", "alice@example.test"]
        )
        self.assertEqual(code, 550, text)
        self.assertTrue(text.startswith("5.7.23 "), text)
        self.assertIn("fail.test", text)
        self.assertIn("127.0.0.1", text)
        self.assertEqual(nextCode, 250)

    def test_spfRejectPipelined(self):
        """
        With C{--spf-reject}, MAIL, RCPT and DATA pipelined in one write
        behind a sender that fails SPF get their replies in order: the
        refusal of MAIL, then RCPT and DATA refused for want of a
        transaction, and the session goes on.
        """
        replies = rawDialog(self.spfReject, (
            f"EHLO {CLIENT_HELO}\r\nMAIL FROM:<bob@fail.test>\r\nRCPT TO:<someone@localhost>\r\n"
            "DATA\r\nNOOP\r\n"
        ).encode(), 5)
        self.assertEqual(codes(replies), ["250", "550 5.7.23", "503 5.5.1", "503 5.5.1", "250 2.0.0"])

    @pytest.mark.rfc("7208", "8.5")
    def test_spfRejectSoftfailAccepted(self):
        """
        With C{--spf-reject}, C{softfail}, C{neutral}, C{none} and
        C{permerror} are not refused; the delivered message records the
        softfail.
        """
        replies = self.mailReplies(self.spfReject, [
            "bob@softfail.test", "bob@neutral.test", "bob@none.test", "bob@twice.test",
        ])
        self.assertEqual([code for code, _ in replies], [250, 250, 250, 250])
        stored = self.deliver(self.spfReject, signedMessage(unique("soft-"), "bob@softfail.test"),
                              "bob@softfail.test")
        self.assertEqual(verdicts(stored)[0], "spf=softfail smtp.mailfrom=softfail.test")

    def test_spfRejectTrustedUnchecked(self):
        """
        With C{--spf-reject}, a trusted client is not checked: its MAIL
        FROM a domain that would fail is accepted.
        """
        [(code, text)] = self.mailReplies(self.spfReject, ["bob@fail.test"], source=TRUSTED_SOURCE)
        self.assertEqual(code, 250, text)


class FailingDNSTests(ServersTestCase):
    """
    DNS servers that fail: one that never answers, with two servers asking
    it with C{--auth-timeout 2} (one with the defaults, one with
    C{--spf-reject}), and one that answers every question C{SERVFAIL},
    with a server asking it.
    """

    BUDGET = 2.0
    # What "a few seconds" past the budget may take, at most.
    GRACE = 3.0

    @classmethod
    def startProcesses(cls, addCleanup) -> None:
        """
        Open the failing DNS servers, then start the servers asking them.
        """
        silent = silentServer(addCleanup)
        timeout = ["--auth-timeout", str(int(cls.BUDGET))]
        cls.server = cls.startServer(addCleanup, *timeout, dns=silent)
        cls.spfReject = cls.startServer(addCleanup, "--spf-reject", *timeout, dns=silent)
        cls.servfail = cls.startServer(addCleanup, dns=failingServer(addCleanup))

    @pytest.mark.rfc("7208", "4.4")
    def test_silentDnsTemperror(self):
        """
        When no DNS answer comes, a signed message from a C{p=reject}
        domain is accepted within C{--auth-timeout} and a few seconds,
        with C{temperror} for SPF, DKIM and DMARC (never a refusal), and
        C{arc=none} (no chain, nothing to look up).
        """
        user = unique("silent-")
        data = dkimSigned(signedMessage(user), "example.test", "rsa")
        started = time.monotonic()
        code, text = send(self.server, data, f"{user}@localhost", "alice@example.test")
        elapsed = time.monotonic() - started
        self.assertEqual(code, 250, text)
        self.assertLess(elapsed, self.BUDGET + self.GRACE)
        [stored] = self.server.newMessages("localhost", user)
        self.assertEqual(verdicts(stored), [
            "spf=temperror smtp.mailfrom=example.test",
            "dkim=temperror header.d=example.test header.s=rsa",
            "dmarc=temperror header.from=example.test",
            "arc=none",
        ])

    def test_silentDnsSpfReject(self):
        """
        With C{--spf-reject}, MAIL FROM waits for SPF, but no longer than
        C{--auth-timeout} and a little: C{temperror} is no C{fail}, so it
        is accepted, and so is the message.
        """
        user = unique("silentspf-")
        with smtplib.SMTP(self.spfReject.host, self.spfReject.port, local_hostname=CLIENT_HELO,
                          timeout=TIMEOUT) as c:
            c.ehlo()
            started = time.monotonic()
            code, text = c.mail("alice@example.test")
            self.assertLess(time.monotonic() - started, self.BUDGET + self.GRACE)
            self.assertEqual(code, 250, text)
            c.rcpt(f"{user}@localhost")
            started = time.monotonic()
            code, text = c.data(signedMessage(user))
            self.assertLess(time.monotonic() - started, self.BUDGET + self.GRACE)
            self.assertEqual(code, 250, text)
        [stored] = self.spfReject.newMessages("localhost", user)
        self.assertEqual(verdicts(stored)[0], "spf=temperror smtp.mailfrom=example.test")

    @pytest.mark.rfc("7208", "4.4")
    def test_servfailTemperror(self):
        """
        A DNS server that answers C{SERVFAIL} makes SPF, DKIM and DMARC
        C{temperror} at once: a signed message from a C{p=reject} domain
        is delivered to INBOX.
        """
        user = unique("servfail-")
        data = dkimSigned(signedMessage(user), "example.test", "rsa")
        started = time.monotonic()
        code, text = send(self.servfail, data, f"{user}@localhost", "alice@example.test")
        self.assertEqual(code, 250, text)
        self.assertLess(time.monotonic() - started, self.GRACE)
        [stored] = self.servfail.newMessages("localhost", user)
        self.assertEqual(verdicts(stored), [
            "spf=temperror smtp.mailfrom=example.test",
            "dkim=temperror header.d=example.test header.s=rsa",
            "dmarc=temperror header.from=example.test",
            "arc=none",
        ])
