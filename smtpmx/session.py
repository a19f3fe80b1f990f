"""
The SMTP dialogue of one connection, with no transport in it.

L{Session.command} takes one command line and answers an L{Outcome}: the
reply and what the connection must do next (read the message, start TLS,
close).  RCPT may answer late, with a L{Deferred}, when a validator does.
The protocol in L{smtpmx.server} is a thin adapter from bytes to this.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from smtpmx import headers, reply
from smtpmx.access import Access
from smtpmx.address import Address, AddressError, parseParameters, parsePath
from smtpmx.config import Config
from smtpmx.envelope import Envelope, Recipient
from smtpmx.reply import Reply
from smtpmx.validation import ValidatorChain, ValidatorError

# What the connection does after sending the reply.
CONTINUE = "continue"
READ_DATA = "data"
START_TLS = "starttls"
CLOSE = "close"

# Seconds a recipient's validators may take, at most (the command timeout
# if that is shorter).
VALIDATOR_TIMEOUT = 60

# Replies that count as a client's error towards the bad-command limit.
_ERROR_CODES = frozenset({500, 501, 502, 503, 504, 553, 555})


@dataclass(frozen=True)
class Outcome:
    """
    The answer to one command.
    """

    reply: Reply
    action: str = CONTINUE


@dataclass
class RecipientVerdict:
    """
    What became of one RCPT, for the transaction's log line.
    """

    address: str
    reply: Reply
    decidedBy: Optional[str]


@dataclass
class Transaction:
    """
    One mail transaction: from MAIL to the end of DATA or RSET.
    """

    reversePath: Optional[Address]
    smtputf8: bool
    declaredSize: Optional[int]
    recipients: list[Recipient] = field(default_factory=list)
    accepted: int = 0
    verdicts: list[RecipientVerdict] = field(default_factory=list)


class Session:
    """
    The state of one SMTP session (RFC 5321 section 4.1.4).

    Validators see it as the C{session} argument: C{clientHost},
    C{heloName}, C{reversePath}, C{config} and C{runBlocking}.

    @ivar badCommands: how many commands got an error reply.
    @ivar tls: a description of the TLS session (C{"TLSv1.3 with cipher
        ..."}) once STARTTLS is done, else L{None}.
    """

    log = Logger()

    def __init__(
        self,
        config: Config,
        validators: ValidatorChain,
        access: Access,
        clientHost: str,
        runBlocking: Callable[..., Deferred],
        clock: IReactorTime,
        newQueueId: Callable[[], str],
        tlsAvailable: bool = False,
    ) -> None:
        self.config = config
        self.validators = validators
        self.access = access
        self.clientHost = clientHost
        self.runBlocking = runBlocking
        self._newQueueId = newQueueId
        self.tlsAvailable = tlsAvailable
        self._clock = clock
        self.heloName: Optional[str] = None
        self.esmtp = False
        self.tls: Optional[str] = None
        self.transaction: Optional[Transaction] = None
        self.badCommands = 0

    @property
    def reversePath(self) -> Optional[Address]:
        """
        The sender of the current transaction, L{None} for C{<>} or none.
        """
        return self.transaction.reversePath if self.transaction else None

    def command(self, line: bytes) -> Outcome | Deferred:
        """
        Answer one command line (without its line ending).

        @return: an L{Outcome}, or a L{Deferred} firing with one.
        """
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            return self._error(reply.syntaxError("invalid UTF-8 in command"))
        verb, _, argument = text.partition(" ")
        handler = getattr(self, "smtp_" + verb.upper(), None)
        if not verb.isascii() or not verb.isalpha() or handler is None:
            return self._error(reply.UNKNOWN_COMMAND)
        return handler(argument.strip(" "))

    def _error(self, r: Reply, action: str = CONTINUE) -> Outcome:
        """
        Answer with an error reply that counts towards the bad-command limit.
        """
        self.badCommands += 1
        return Outcome(r, action)

    def _answer(self, r: Reply, action: str = CONTINUE) -> Outcome:
        """
        Answer with C{r}, counting it if it is a client error.
        """
        if r.code in _ERROR_CODES:
            self.badCommands += 1
        return Outcome(r, action)

    # Session-level commands.

    def smtp_EHLO(self, argument: str) -> Outcome:
        """
        RFC 5321 4.1.1.1: greet and list the extensions.
        """
        if not argument or " " in argument:
            return self._error(reply.syntaxError("EHLO hostname"))
        self.heloName = argument
        self.esmtp = True
        self.transaction = None
        lines = [
            self.config.hostname,
            "PIPELINING",
            f"SIZE {self.config.maxMessageSize}",
            "8BITMIME",
            "ENHANCEDSTATUSCODES",
            "SMTPUTF8",
        ]
        if self.tlsAvailable and self.tls is None:
            lines.append("STARTTLS")
        lines.append("HELP")
        return Outcome(Reply(250, None, "\n".join(lines)))

    def smtp_HELO(self, argument: str) -> Outcome:
        """
        RFC 5321 4.1.1.1: greet without extensions.
        """
        if not argument or " " in argument:
            return self._error(reply.syntaxError("HELO hostname"))
        self.heloName = argument
        self.esmtp = False
        self.transaction = None
        return Outcome(Reply(250, None, self.config.hostname))

    def smtp_STARTTLS(self, argument: str) -> Outcome:
        """
        RFC 3207: switch to TLS; the session then starts afresh.
        """
        if not self.tlsAvailable:
            return self._error(reply.UNKNOWN_COMMAND)
        if argument:
            return self._error(reply.syntaxError("STARTTLS"))
        if self.tls is not None:
            return self._error(reply.TLS_ACTIVE)
        return Outcome(reply.START_TLS, START_TLS)

    def tlsStarted(self, description: str) -> None:
        """
        TLS is up: forget everything said in the clear (RFC 3207 4.2).
        """
        self.tls = description
        self.heloName = None
        self.esmtp = False
        self.transaction = None

    def smtp_RSET(self, argument: str) -> Outcome:
        """
        RFC 5321 4.1.1.5: abort the transaction.
        """
        if argument:
            return self._error(reply.syntaxError("RSET"))
        self.transaction = None
        return Outcome(reply.OK)

    def smtp_NOOP(self, argument: str) -> Outcome:
        """
        RFC 5321 4.1.1.9: do nothing; an argument is ignored.
        """
        return Outcome(reply.OK)

    def smtp_QUIT(self, argument: str) -> Outcome:
        """
        RFC 5321 4.1.1.10: say goodbye and close.
        """
        return Outcome(reply.BYE, CLOSE)

    def smtp_VRFY(self, argument: str) -> Outcome:
        """
        RFC 5321 3.5.3: we never disclose who exists here.
        """
        if not argument:
            return self._error(reply.syntaxError("VRFY address"))
        return Outcome(reply.VRFY)

    def smtp_HELP(self, argument: str) -> Outcome:
        """
        RFC 5321 4.1.1.8.
        """
        return Outcome(reply.HELP)

    # The mail transaction.

    def smtp_MAIL(self, argument: str) -> Outcome:
        """
        RFC 5321 4.1.1.2: begin a transaction.
        """
        if self.heloName is None:
            return self._error(reply.NEED_HELO)
        if self.transaction is not None:
            return self._error(reply.NESTED_MAIL)
        if argument[:5].upper() != "FROM:":
            return self._error(reply.syntaxError("MAIL FROM:<address>"))
        try:
            path, rest = parsePath(argument[5:], allowNull=True)
            params = parseParameters(rest)
        except AddressError as e:
            return self._error(reply.syntaxError(f"MAIL FROM:<address>: {e}"))
        smtputf8 = False
        size = None
        for key, value in params.items():
            if key == "SIZE" and value is not None and value.isdigit() and len(value) < 20:
                size = int(value)
            elif key == "BODY" and value is not None and value.upper() in ("7BIT", "8BITMIME"):
                pass
            elif key == "SMTPUTF8" and value is None:
                smtputf8 = True
            elif key in ("SIZE", "BODY", "SMTPUTF8"):
                return self._error(reply.syntaxError(f"bad value for {key}"))
            else:
                return self._error(reply.UNSUPPORTED_PARAMETER)
        if path is not None and path.hasControlCharacters():
            return self._error(reply.syntaxError("MAIL FROM:<address>: control character in the address"))
        if path is not None and not path.isASCII() and not smtputf8:
            return self._error(reply.NEED_SMTPUTF8)
        if size is not None and size > self.config.maxMessageSize:
            return Outcome(reply.TOO_BIG)
        self.transaction = Transaction(path, smtputf8, size)
        return Outcome(reply.SENDER_OK)

    def smtp_RCPT(self, argument: str) -> Outcome | Deferred:
        """
        RFC 5321 4.1.1.3: add a recipient, decided by the validators.
        """
        t = self.transaction
        if t is None:
            return self._error(reply.NEED_MAIL)
        if argument[:3].upper() != "TO:":
            return self._error(reply.syntaxError("RCPT TO:<address>"))
        try:
            address, rest = parsePath(argument[3:], allowNull=False, allowPostmaster=True)
            params = parseParameters(rest)
        except AddressError as e:
            return self._error(reply.syntaxError(f"RCPT TO:<address>: {e}"))
        assert address is not None
        if params:
            return self._error(reply.UNSUPPORTED_PARAMETER)
        if not address.isASCII() and not t.smtputf8:
            return self._error(reply.NEED_SMTPUTF8)
        if t.accepted >= self.config.maxRecipients:
            # RFC 5321 4.5.3.1.8: the client sends the rest later.
            return self._verdict(t, address, reply.TOO_MANY_RECIPIENTS, None, [])
        mailbox = self.access.postmaster(address)
        if mailbox is not None:
            return self._verdict(t, address, reply.RECIPIENT_OK, "postmaster", [mailbox])
        if not self.access.isLocal(address.domain):
            if not self.access.mayRelay(self.clientHost, address.domain):
                # Refused before any plugin is asked: no verdict could change it.
                return self._verdict(t, address, reply.RELAY_DENIED, "access", [])
            if address.hasControlCharacters():
                # Never sent on; a local one is refused as an unsafe mailbox.
                return self._error(reply.syntaxError("RCPT TO:<address>: control character in the address"))

        def decided(result):
            name, verdict = result
            r, destinations = self.access.decide(self.clientHost, address, verdict)
            return self._verdict(t, address, r, name, destinations)

        def failed(failure):
            if failure.check(defer.TimeoutError):
                self.log.warn(
                    "validators gave no verdict on {rcpt} within {timeout} s",
                    rcpt=address.path,
                    timeout=timeout,
                )
            else:
                failure.trap(ValidatorError)
            return self._verdict(t, address, reply.VALIDATOR_FAILED, None, [])

        d = self.validators.validate(self, address)
        # A validator whose backend hangs must not hold the session (and
        # its connection slot) for ever: it is a temporary failure.
        timeout = min(VALIDATOR_TIMEOUT, self.config.commandTimeout)
        d.addTimeout(timeout, self._clock)
        d.addCallbacks(decided, failed)
        return d

    def _verdict(self, t: Transaction, address: Address, r: Reply, decidedBy, destinations) -> Outcome:
        """
        Record the verdict on one recipient and answer it.
        """
        if r.code == 250:
            t.accepted += 1
            t.recipients.extend(Recipient(address, dest) for dest in destinations)
        t.verdicts.append(RecipientVerdict(str(address), r, decidedBy))
        if r.code != 250:
            self.log.info(
                "NOQUEUE: reject: RCPT from [{client}]: {reply}; from={sender} to={rcpt}",
                client=self.clientHost,
                reply=str(r),
                sender=t.reversePath.path if t.reversePath else "<>",
                rcpt=address.path,
            )
        return self._answer(r)

    def smtp_DATA(self, argument: str) -> Outcome:
        """
        RFC 5321 4.1.1.4: the message follows.
        """
        if argument:
            return self._error(reply.syntaxError("DATA"))
        if self.transaction is None:
            return self._error(reply.NEED_MAIL)
        if not self.transaction.recipients:
            return self._answer(reply.NO_RECIPIENTS)
        return Outcome(reply.START_DATA, READ_DATA)

    def envelope(self) -> Envelope:
        """
        The envelope of the message now being received, with a new queue ID
        and our Received header.
        """
        t = self.transaction
        assert t is not None
        queueId = self._newQueueId()
        return Envelope(
            queueId=queueId,
            clientHost=self.clientHost,
            heloName=self.heloName or "",
            reversePath=t.reversePath,
            recipients=list(t.recipients),
            received=self._received(queueId, t),
        )

    def _received(self, queueId: str, t: Transaction) -> bytes:
        """
        Our trace header (RFC 5321 4.4).
        """
        if self.tls is not None:
            protocol = "ESMTPS" if self.esmtp else "SMTPS"
        else:
            protocol = "ESMTP" if self.esmtp else "SMTP"
        addresses = {str(r.address) for r in t.recipients}
        return headers.received(
            self.heloName or "",
            self.clientHost,
            self.config.hostname,
            protocol,
            queueId,
            self._clock.seconds(),
            tls=self.tls,
            recipient=t.recipients[0].address if len(addresses) == 1 else None,
        )

    def endTransaction(self) -> Optional[Transaction]:
        """
        The DATA phase is over, whatever its result: the transaction ends.

        @return: the transaction that ended.
        """
        t, self.transaction = self.transaction, None
        return t

