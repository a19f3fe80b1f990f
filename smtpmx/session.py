"""
The SMTP dialogue of one connection, with no transport in it.

L{Session} owns the whole of one connection's SMTP state: the commands
(L{Session.command} answers each with an L{Answer}: the reply and what the
connection must do next), the count of refused commands, the TLS state, and
the mail transaction from MAIL to the end of DATA, including the message
bytes (L{Session.feedData}, L{Session.endData}), the size and hop limits,
the start of sender authentication (SPF from C{MAIL FROM} on) and the
record of the transaction that the log line is made from
(L{smtpmx.transactionlog}).
The protocol in L{smtpmx.server} only moves bytes to and from it.

RCPT may answer late, with a L{Deferred}, when a validator does; the end
of DATA always answers with a L{Deferred} (the store makes the message
durable first).  The replies are described in C{docs/replies.rst}.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Callable, NamedTuple, Optional

from twisted.internet import defer
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from smtpmx import headers, reply
from smtpmx.access import Access
from smtpmx.address import Address, AddressError, parseParameters, parsePath
from smtpmx.auth.checker import SenderAuthentication
from smtpmx.auth.results import SpfResult, authservIdOf
from smtpmx.body import DataReader, HeaderScanner
from smtpmx.config import Config
from smtpmx.envelope import Envelope, Recipient
from smtpmx.interfaces import IFilteredMessage, IIncomingMessage, IMessageStore
from smtpmx.reply import Reply
from smtpmx.transactionlog import RecipientVerdict, TransactionRecord
from smtpmx.validation import ValidationContext, ValidatorChain, ValidatorError

# RFC 5321 4.5.3.1.4: a command line is at most 512 octets with its CRLF.
MAX_COMMAND_LINE = 510
# RFC 5321 4.5.3.1 does not bound errors; Postfix's smtpd_hard_error_limit.
MAX_BAD_COMMANDS = 20
# Seconds a recipient's validators may take, at most (the command timeout
# if that is shorter).
VALIDATOR_TIMEOUT = 60

# Replies that count as a client's error towards the bad-command limit.
_ERROR_CODES = frozenset({500, 501, 502, 503, 504, 553, 555})


class Action(enum.Enum):
    """
    What the connection does once it has sent an L{Answer}'s reply.
    """

    CONTINUE = "continue"
    READ_DATA = "data"
    START_TLS = "starttls"
    CLOSE = "close"


class Answer(NamedTuple):
    """
    The answer to one command line (an immutable value; a named tuple
    because one is made for every command).

    @ivar reply: the reply to send.
    @ivar action: what the connection does next.
    @ivar farewell: the C{421 4.7.0} of the bad-command limit (RFC 5321
        section 3.8), sent right after C{reply}, before closing; else
        L{None}.  The protocol logs the limit when it sends it.
    """

    reply: Reply
    action: Action = Action.CONTINUE
    farewell: Optional[Reply] = None


@dataclass(frozen=True)
class NegotiatedTLS:
    """
    The TLS session a STARTTLS handshake set up (RFC 3207), as the
    C{Received} header and the log tell it.
    """

    version: str
    cipher: str
    bits: int

    def __str__(self) -> str:
        """
        E.g. C{"TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits)"}.
        """
        return f"{self.version} with cipher {self.cipher} ({self.bits}/{self.bits} bits)"


@dataclass
class Transaction:
    """
    One mail transaction: from MAIL to the end of DATA or RSET.

    @ivar context: what validators are given for this transaction's
        recipients.
    @ivar started: when MAIL was accepted, by the session's clock.
    """

    reversePath: Optional[Address]
    smtputf8: bool
    context: ValidationContext
    recipients: list[Recipient] = field(default_factory=list)
    accepted: int = 0
    verdicts: list[RecipientVerdict] = field(default_factory=list)
    started: float = 0.0


class Session:
    """
    The state of one SMTP session (RFC 5321 section 4.1.4).

    Validators are not given the session: they get the transaction's
    L{ValidationContext}.

    @ivar badCommands: how many commands got an error reply.
    @ivar secure: whether STARTTLS was accepted; the session then started
        afresh, over TLS.
    @ivar tls: the TLS session, once its handshake is done, else L{None}.
    @ivar transaction: the mail transaction under way, or L{None}.
    """

    log = Logger()

    def __init__(
        self,
        config: Config,
        validators: ValidatorChain,
        access: Access,
        store: IMessageStore,
        clientHost: str,
        runBlocking: Callable[..., Deferred],
        clock: IReactorTime,
        newQueueId: Callable[[], str],
        tlsAvailable: bool = False,
        authentication: Optional[SenderAuthentication] = None,
        onVerdict: Optional[Callable[[RecipientVerdict], None]] = None,
        lowOnSpace: Optional[Callable[[], bool]] = None,
    ) -> None:
        """
        @param store: where accepted messages are streamed to.
        @param clientHost: the client's address, as text.
        @param runBlocking: runs blocking work off the reactor thread, for
            validators.
        @param clock: the time of the C{Received} header and the validators'
            timeout; in the server, the reactor, which validators are given
            in their L{ValidationContext}.
        @param newQueueId: makes the queue ID of each message.
        @param tlsAvailable: whether STARTTLS is offered.
        @param authentication: sender authentication, whose SPF check
            starts at C{MAIL FROM}; L{None} when no check is made.
        @param onVerdict: told of every RCPT's verdict as it is given
            (L{smtpmx.interfaces.IServerObserver.recipientDecided}).
        @param lowOnSpace: tells, without blocking, whether the disks
            that mail is stored on are short of free space: MAIL is then
            refused for now.
        """
        self.config = config
        self.validators = validators
        self.access = access
        self.store = store
        self.clientHost = clientHost
        self.runBlocking = runBlocking
        self.tlsAvailable = tlsAvailable
        self.authentication = authentication
        self._newQueueId = newQueueId
        self._clock = clock
        self._onVerdict = onVerdict
        self._lowOnSpace = lowOnSpace
        self.heloName: Optional[str] = None
        self.esmtp = False
        self.secure = False
        self.tls: Optional[NegotiatedTLS] = None
        self.transaction: Optional[Transaction] = None
        self.badCommands = 0
        # The DATA phase under way, if any.
        self._envelope: Optional[Envelope] = None
        self._reader: Optional[DataReader] = None
        self._headers: Optional[HeaderScanner] = None
        self._message: Optional[IIncomingMessage] = None
        self._tooBig = False

    @property
    def inData(self) -> bool:
        """
        Whether the message of a DATA command is being received.
        """
        return self._reader is not None

    def greeting(self) -> Reply:
        """
        The reply that opens the session (RFC 5321 section 4.2).
        """
        return reply.greeting(self.config.hostname)

    # Commands.

    def command(self, line: bytes) -> Answer | Deferred:
        """
        Answer one command line (without its line ending).

        @return: an L{Answer}, or a L{Deferred} firing with one (it never
            fails).
        """
        if len(line) > MAX_COMMAND_LINE:
            return self._answer(reply.LINE_TOO_LONG)
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            return self._answer(reply.syntaxError("invalid UTF-8 in command"))
        verb, _, argument = text.partition(" ")
        handler = getattr(self, "smtp_" + verb.upper(), None)
        if not verb.isascii() or not verb.isalpha() or handler is None:
            return self._answer(reply.UNKNOWN_COMMAND)
        try:
            return handler(argument.strip(" "))
        except Exception:
            self.log.failure("internal error on command from [{client}]", client=self.clientHost)
            return Answer(reply.INTERNAL_ERROR)

    def _broke(self, failure: Failure) -> Answer:
        """
        A late answer failed: log it and answer with a temporary error.
        """
        self.log.failure("internal error answering [{client}]", failure, client=self.clientHost)
        return Answer(reply.INTERNAL_ERROR)

    def _answer(self, r: Reply, action: Action = Action.CONTINUE) -> Answer:
        """
        Answer with C{r}, counting it if it is a client error; at the
        bad-command limit the session ends with a C{421 4.7.0} after it.
        """
        if r.code in _ERROR_CODES:
            self.badCommands += 1
            if self.badCommands >= MAX_BAD_COMMANDS:
                return Answer(r, Action.CLOSE, reply.tooManyErrors(self.config.hostname))
        return Answer(r, action)

    def smtp_EHLO(self, argument: str) -> Answer:
        """
        RFC 5321 4.1.1.1: greet and list the extensions.
        """
        if not argument or " " in argument:
            return self._answer(reply.syntaxError("EHLO hostname"))
        self.heloName = argument
        self.esmtp = True
        self.transaction = None
        extensions = [
            "PIPELINING",
            f"SIZE {self.config.maxMessageSize}",
            "8BITMIME",
            "ENHANCEDSTATUSCODES",
            "SMTPUTF8",
        ]
        if self.tlsAvailable and not self.secure:
            extensions.append("STARTTLS")
        extensions.append("HELP")
        return Answer(reply.ehlo(self.config.hostname, extensions))

    def smtp_HELO(self, argument: str) -> Answer:
        """
        RFC 5321 4.1.1.1: greet without extensions.
        """
        if not argument or " " in argument:
            return self._answer(reply.syntaxError("HELO hostname"))
        self.heloName = argument
        self.esmtp = False
        self.transaction = None
        return Answer(reply.helo(self.config.hostname))

    def smtp_STARTTLS(self, argument: str) -> Answer:
        """
        RFC 3207: switch to TLS.  The session starts afresh at once
        (RFC 3207 4.2): nothing said in the clear is remembered.
        """
        if not self.tlsAvailable:
            return self._answer(reply.UNKNOWN_COMMAND)
        if argument:
            return self._answer(reply.syntaxError("STARTTLS"))
        if self.secure:
            return self._answer(reply.TLS_ACTIVE)
        self.secure = True
        self.heloName = None
        self.esmtp = False
        self.transaction = None
        return Answer(reply.START_TLS, Action.START_TLS)

    def handshakeCompleted(self, tls: NegotiatedTLS) -> None:
        """
        The TLS handshake after STARTTLS is done: record what it set up.
        """
        self.tls = tls

    def smtp_RSET(self, argument: str) -> Answer:
        """
        RFC 5321 4.1.1.5: abort the transaction.
        """
        if argument:
            return self._answer(reply.syntaxError("RSET"))
        self.transaction = None
        return Answer(reply.OK)

    def smtp_NOOP(self, argument: str) -> Answer:
        """
        RFC 5321 4.1.1.9: do nothing; an argument is ignored.
        """
        return Answer(reply.OK)

    def smtp_QUIT(self, argument: str) -> Answer:
        """
        RFC 5321 4.1.1.10: say goodbye and close.
        """
        return Answer(reply.BYE, Action.CLOSE)

    def smtp_VRFY(self, argument: str) -> Answer:
        """
        RFC 5321 3.5.3: we never disclose who exists here.
        """
        if not argument:
            return self._answer(reply.syntaxError("VRFY address"))
        return Answer(reply.VRFY)

    def smtp_HELP(self, argument: str) -> Answer:
        """
        RFC 5321 4.1.1.8.
        """
        return Answer(reply.HELP)

    # The mail transaction.

    def smtp_MAIL(self, argument: str) -> Answer | Deferred:
        """
        RFC 5321 4.1.1.2: begin a transaction; with C{--spf-reject}, once
        SPF has spoken.
        """
        if self.heloName is None:
            return self._answer(reply.NEED_HELO)
        if self.transaction is not None:
            return self._answer(reply.NESTED_MAIL)
        if argument[:5].upper() != "FROM:":
            return self._answer(reply.syntaxError("MAIL FROM:<address>"))
        try:
            path, rest = parsePath(argument[5:], allowNull=True)
            params = parseParameters(rest)
        except AddressError as e:
            return self._answer(reply.syntaxError(f"MAIL FROM:<address>: {e}"))
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
                return self._answer(reply.syntaxError(f"bad value for {key}"))
            else:
                return self._answer(reply.UNSUPPORTED_PARAMETER)
        if path is not None and path.hasControlCharacters():
            return self._answer(reply.syntaxError("MAIL FROM:<address>: control character in the address"))
        if path is not None and not path.isASCII() and not smtputf8:
            return self._answer(reply.NEED_SMTPUTF8)
        if size is not None and size > self.config.maxMessageSize:
            # RFC 1870 6.1.
            return Answer(reply.TOO_BIG)
        if self._lowOnSpace is not None and self._lowOnSpace():
            # RFC 5321 4.2.3: 452, insufficient system storage (RFC 3463
            # X.3.1, mail system full); the client tries again later.
            return Answer(reply.INSUFFICIENT_STORAGE)
        context = ValidationContext(
            self.clientHost, self.heloName, path, self.config, self.runBlocking,
            esmtp=self.esmtp, declaredSize=size, reactor=self._clock,
        )
        transaction = Transaction(path, smtputf8, context, started=self._clock.seconds())
        checking = self._checkSender(path)
        if checking is not None:
            return checking.addCallback(self._senderChecked, transaction).addErrback(self._broke)
        self.transaction = transaction
        return Answer(reply.SENDER_OK)

    def _checkSender(self, path: Optional[Address]) -> Optional[Deferred]:
        """
        Start SPF on an untrusted client's sender (RFC 7208 section 2.4) as
        soon as it is known, so that it overlaps the transaction.

        @return: the L{Deferred} of its L{SpfResult} when C{MAIL} waits for
            it (C{--spf-reject}), else L{None}.
        """
        auth = self.authentication
        if auth is None or not auth.needsSpf or self.access.clientMayRelay(self.clientHost):
            return None
        d = auth.checkSender(self.clientHost, self.heloName, path)
        return d if self.config.spfReject else None

    def _senderChecked(self, spf: SpfResult, transaction: Transaction) -> Answer:
        """
        Under C{--spf-reject}: an SPF C{fail} refuses C{MAIL} (RFC 7208
        section 8.4), anything else begins the transaction.
        """
        if spf.result != "fail":
            self.transaction = transaction
            return Answer(reply.SENDER_OK)
        r = reply.spfFailed(spf.domain or "the sender's domain", self.clientHost)
        self.log.info(
            "NOQUEUE: reject: MAIL from [{client}]: {reply}; from={sender}",
            client=self.clientHost,
            reply=str(r),
            sender=transaction.reversePath.path if transaction.reversePath else "<>",
        )
        return self._answer(r)

    def smtp_RCPT(self, argument: str) -> Answer | Deferred:
        """
        RFC 5321 4.1.1.3: add a recipient, decided by the validators.
        """
        t = self.transaction
        if t is None:
            return self._answer(reply.NEED_MAIL)
        if argument[:3].upper() != "TO:":
            return self._answer(reply.syntaxError("RCPT TO:<address>"))
        try:
            address, rest = parsePath(argument[3:], allowNull=False, allowPostmaster=True)
            params = parseParameters(rest)
        except AddressError as e:
            return self._answer(reply.syntaxError(f"RCPT TO:<address>: {e}"))
        assert address is not None
        if params:
            return self._answer(reply.UNSUPPORTED_PARAMETER)
        if not address.isASCII() and not t.smtputf8:
            return self._answer(reply.NEED_SMTPUTF8)
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
                return self._answer(reply.syntaxError("RCPT TO:<address>: control character in the address"))

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

        d = self.validators.validate(t.context, address)
        # A validator whose backend hangs must not hold the session (and
        # its connection slot) for ever: it is a temporary failure.  A
        # verdict given at once needs no timer.
        timeout = min(VALIDATOR_TIMEOUT, self.config.commandTimeout)
        if not d.called:
            d.addTimeout(timeout, self._clock)
        d.addCallbacks(decided, failed)
        d.addErrback(self._broke)
        return d

    def _verdict(self, t: Transaction, address: Address, r: Reply, decidedBy, destinations) -> Answer:
        """
        Record the verdict on one recipient and answer it.
        """
        if r.code == 250:
            t.accepted += 1
            t.recipients.extend(Recipient(address, dest) for dest in destinations)
        verdict = RecipientVerdict(str(address), r, decidedBy)
        t.verdicts.append(verdict)
        if self._onVerdict is not None:
            self._onVerdict(verdict)
        if r.code != 250:
            self.log.info(
                "NOQUEUE: reject: RCPT from [{client}]: {reply}; from={sender} to={rcpt}",
                client=self.clientHost,
                reply=str(r),
                sender=t.reversePath.path if t.reversePath else "<>",
                rcpt=address.path,
            )
        return self._answer(r)

    def smtp_DATA(self, argument: str) -> Answer:
        """
        RFC 5321 4.1.1.4: the message follows; a message is opened in the
        store for it.
        """
        if argument:
            return self._answer(reply.syntaxError("DATA"))
        t = self.transaction
        if t is None:
            return self._answer(reply.NEED_MAIL)
        if not t.recipients:
            return self._answer(reply.NO_RECIPIENTS)
        self._envelope = envelope = self._newEnvelope(t)
        self._reader = DataReader()
        self._headers = HeaderScanner(forged=self._claimsOurVerdicts)
        self._tooBig = False
        try:
            self._message = self.store.receive(envelope)
        except Exception:
            self.log.failure("cannot store message {id}", id=envelope.queueId)
            self._message = None
        return Answer(reply.START_DATA, Action.READ_DATA)

    # The DATA phase.

    def _claimsOurVerdicts(self, value: bytes) -> bool:
        """
        Whether an incoming C{Authentication-Results:} field, of value
        C{value}, names our C{--hostname} as its authserv-id: only we may
        say what we found, so such a field is removed from every message,
        whoever sends it (RFC 8601 section 5).
        """
        return authservIdOf(value) == self.config.hostname.lower()

    def feedData(self, data: bytes) -> tuple[Optional[Deferred], Optional[bytes]]:
        """
        Take a chunk of the DATA phase as it came from the client: it is
        unstuffed (L{DataReader}), checked against the size limit (RFC 1870
        section 6.3: past it the rest is read and nothing more stored),
        scanned for the hop count, rid of forged C{Authentication-Results:}
        fields and streamed to the store.

        @return: a L{Deferred} that fires when the store is ready for more
            (read no more until then), or L{None}; and L{None} while the
            data goes on, or, once C{<CRLF>.<CRLF>} is seen, the bytes that
            followed it, after which L{endData} must be called.
        """
        reader = self._reader
        assert reader is not None
        body, leftover = reader.feed(data)
        pending = None
        if body and not self._tooBig:
            if reader.size > self.config.maxMessageSize:
                # Keep reading to the end, storing nothing more.
                self._tooBig = True
                self.abortMessage()
            else:
                if not self._headers.done:
                    body = self._headers.feed(body)
                pending = self._write(body)
        return pending, leftover

    def _write(self, data: bytes) -> Optional[Deferred]:
        """
        Stream message bytes to the store, if it still takes them; a store
        that fails is given up on.

        @return: what the store's C{write} returned.
        """
        if self._message is None or not data:
            return None
        try:
            return self._message.write(data)
        except Exception:
            self.log.failure("cannot store message {id}", id=self._envelope.queueId)
            self.abortMessage()
            return None

    def endData(self) -> Deferred:
        """
        The message is all here: the transaction ends, whatever its result.
        Unless it broke a limit (size, RFC 1870 section 6.3; hops, RFC 5321
        section 6.3) it is made durable before the reply.

        @return: a L{Deferred} firing with the L{TransactionRecord} (whose
            C{reply} goes to the client); it never fails.
        """
        envelope, self._envelope = self._envelope, None
        reader, self._reader = self._reader, None
        scanner, self._headers = self._headers, None
        if scanner is not None and not self._tooBig:
            # What the scan held back to the end: a last header field.
            self._write(scanner.flush())
        tooManyHops = scanner is not None and scanner.received > self.config.maxHops
        if tooManyHops:
            # A mail loop (RFC 5321 section 6.3): nothing is kept.
            self.abortMessage()
        message, self._message = self._message, None
        t, self.transaction = self.transaction, None
        assert envelope is not None and reader is not None and t is not None
        size = reader.size

        def record(r: Reply) -> TransactionRecord:
            filters: tuple[str, ...] = ()
            authResults = None
            if message is not None and IFilteredMessage.providedBy(message):
                filters = tuple(message.filterVerdicts)
                authResults = message.authResults
            return TransactionRecord(
                envelope, t.verdicts, size, r, filters, authResults,
                duration=self._clock.seconds() - t.started,
            )

        if self._tooBig:
            return succeed(record(reply.TOO_BIG))
        if tooManyHops:
            return succeed(record(reply.TOO_MANY_HOPS))
        if message is None:
            return succeed(record(reply.STORAGE_FAILED))

        def stored(_) -> TransactionRecord:
            return record(reply.queued(envelope.queueId))

        def failed(failure: Failure) -> TransactionRecord:
            if failure.check(reply.Refused):
                # A message filter refused it (RFC 5321 section 4.1.1.4:
                # the reply to the end of data may refuse the message).
                return record(failure.value.reply)
            self.log.failure("cannot store message {id}", failure, id=envelope.queueId)
            return record(reply.STORAGE_FAILED)

        return message.finish().addCallbacks(stored, failed)

    def abortMessage(self) -> None:
        """
        Give up on the message being received, if any (the connection is
        lost or timed out, or the message is too big): the store throws
        away what it has.
        """
        message, self._message = self._message, None
        if message is not None:
            try:
                message.abort()
            except Exception:
                self.log.failure("cannot abort message")

    def timedOut(self) -> Reply:
        """
        The client was idle too long (RFC 5321 4.5.3.2): a message being
        received is thrown away.

        @return: the reply to send before closing.
        """
        self.abortMessage()
        return reply.timedOut(self.config.hostname)

    def _newEnvelope(self, t: Transaction) -> Envelope:
        """
        The envelope of the message of C{t}, with a new queue ID and our
        Received header.
        """
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
        if self.secure:
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
            tls=str(self.tls) if self.tls is not None else None,
            recipient=t.recipients[0].address if len(addresses) == 1 else None,
        )
