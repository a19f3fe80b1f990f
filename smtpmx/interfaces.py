"""
Every interface that a third party, or a test, plugs into.

Validators decide recipients, message filters judge whole messages and
delivery backends carry local mail from the queue (the plugin API of
C{docs/plugins.rst}); a message store makes accepted messages
durable (C{docs/storage.rst}).  The
server knows storage only through L{IMessageStore}, never a concrete class.
"""

from zope.interface import Attribute, Interface


class IRecipientValidator(Interface):
    """
    Decides whether one recipient is acceptable.
    """

    def validateRecipient(session, recipient):
        """
        Give a verdict on C{recipient}.

        @param session: not the SMTP session but its transaction's
            L{smtpmx.validation.ValidationContext}, a frozen value taken
            when MAIL was accepted: C{clientHost} (the client's IP address
            as text), C{heloName}, C{reversePath} (an
            L{smtpmx.address.Address} or L{None} for the null path C{<>}),
            C{config} (the server's L{smtpmx.config.Config}) and
            C{runBlocking(f, *args, **kwargs)}, which runs C{f} in the
            server's thread pool and returns a L{Deferred} of its result.
            L{smtpmx.testing.validationContext} builds one for tests; see
            C{docs/plugins.rst}.
        @param recipient: the forward-path, an L{smtpmx.address.Address}.

        @return: an L{smtpmx.validation.Accept}, an
            L{smtpmx.validation.Reject}, L{None} for "no opinion", or a
            L{Deferred} that fires with one of those.
        """


class IRecipientValidatorFactory(Interface):
    """
    A plugin that makes recipient validators; found with
    C{getPlugins(IRecipientValidatorFactory, smtpmx.plugins)}.
    """

    name = Attribute("The name used in C{--validator NAME[:ARG]}.")
    description = Attribute("One line shown by C{--list-validators}.")

    def makeValidator(argument):
        """
        Make a validator.

        @param argument: the text after the first C{:} of the
            C{--validator} option, or L{None} when there was none.

        @return: a provider of L{IRecipientValidator}.

        @raise ValueError: the argument is unusable; start-up stops with
            this message.
        """


class IReloadable(Interface):
    """
    Optional, for a validator or a message filter that reads files when it
    is made (a table, a list, a key): they are read again when the server
    is sent C{SIGHUP}, without a restart (C{docs/plugins.rst}).  Declare it
    beside the plugin's own interface,
    C{@implementer(IRecipientValidator, IReloadable)}.
    """

    def reload(runBlocking):
        """
        Read the files again and use them for what is judged from then on;
        until then, and whenever the new files are unusable, keep using
        the old ones.  Called in the reactor thread, one reload at a time.

        @param runBlocking: C{runBlocking(f, *args, **kwargs)} runs C{f} in
            the server's thread pool and returns a L{Deferred} of its
            result: read the files through it, never in the reactor thread.

        @return: L{None}, or a L{Deferred} that fires once the new files
            are in use.  Raise, or fail the L{Deferred}, with an exception
            whose message says what is wrong with them (C{ValueError("PATH,
            line 3: ...")}): the server logs it on one line, and the old
            files stay in use.
        """


class IFilterableMessage(Interface):
    """
    A message as a filter sees it: received in full and spooled to disk,
    not yet stored or acknowledged.
    """

    envelope = Attribute(
        "The L{smtpmx.envelope.Envelope}: C{reversePath} (an Address, or"
        " L{None} for C{<>}), C{recipients} (each with its C{address}),"
        " C{clientHost}, C{heloName} and C{queueId}.  Read it; do not change it."
    )
    size = Attribute("The size of the message as received, in bytes.")

    def open():
        """
        Open the message as received (dot-unstuffed, LF line endings,
        without our trace fields) for reading.

        It is a file on disk: read it in chunks, from a thread
        (C{runBlocking}) when it may be large, never whole into memory.

        @return: a binary file object; the caller closes it.
        """


class IMessageFilter(Interface):
    """
    Judges one whole message after its data is received and before the
    reply to DATA, so that a refusal is given in the SMTP dialogue.
    """

    def filterMessage(session, message):
        """
        Give a verdict on C{message}.

        @param session: the transaction's
            L{smtpmx.validation.ValidationContext} (as a validator gets).
        @param message: an L{IFilterableMessage}.

        @return: an L{smtpmx.filtering.Accept}, L{smtpmx.filtering.Junk},
            L{smtpmx.filtering.Reject}, L{None} for "no opinion", or a
            L{Deferred} that fires with one of those.
        """


class IMessageFilterFactory(Interface):
    """
    A plugin that makes message filters; found with
    C{getPlugins(IMessageFilterFactory, smtpmx.plugins)}.
    """

    name = Attribute("The name used in C{--filter NAME[:ARG]}.")
    description = Attribute("One line shown by C{--list-filters}.")

    def makeFilter(argument):
        """
        Make a filter.

        @param argument: the text after the first C{:} of the C{--filter}
            option, or L{None} when there was none.

        @return: a provider of L{IMessageFilter}.

        @raise ValueError: the argument is unusable; start-up stops with
            this message.
        """


class IIncomingMessage(Interface):
    """
    One message being received: its body arrives in chunks, then it is
    either finished (made durable) or aborted (nothing is left behind).
    """

    def write(data):
        """
        Append body bytes (already dot-unstuffed, LF line endings).

        @type data: L{bytes}

        @return: L{None}, or a L{Deferred} when the store's buffer is full:
            the caller should stop reading input until it fires.
        """

    def finish():
        """
        Make the message durable for every recipient.

        @return: a L{Deferred} that fires with L{None} once the message is
            on disk (file and directory fsynced) for all recipients, or
            fails with nothing left behind.
        """

    def abort():
        """
        Give up on the message and remove whatever was written for it.
        """


class IFilteredMessage(IIncomingMessage):
    """
    An incoming message that sender authentication and the message
    filters judged at C{finish()}: what they said is kept for the
    transaction's log line.
    """

    filterVerdicts = Attribute(
        "After C{finish()} fired or failed: one C{'name verdict'} text per"
        " filter asked, in order (C{'rspamd junk'}, C{'spam 550 5.7.1'})."
    )
    authResults = Attribute(
        "After C{finish()} fired or failed: the"
        " L{smtpmx.auth.results.AuthResults} of sender authentication, or"
        " L{None} when the message was not checked."
    )


class ITwoPhaseMessage(IIncomingMessage):
    """
    An incoming message whose completion can be split in two, so that a
    store filing one message in several places (the Maildirs and the relay
    queue) makes it durable in all of them or in none:
    L{smtpmx.routing.RoutingStore} prepares one part, finishes the other,
    then commits the first, and rolls back what was done when a step fails.
    """

    def prepare():
        """
        Write the whole message and fsync it, without making it visible
        yet.  Instead of C{finish()}.

        @return: a L{Deferred} that fires with L{None} once the message can
            be committed, or fails with nothing left behind.
        """

    def commit():
        """
        Make a prepared message visible, durably (renamed to its final
        names, those directories fsynced).

        @return: a L{Deferred} that fires with L{None} once the message is
            stored, or fails with nothing left behind.
        """

    def rollback():
        """
        Remove every file of the message, whatever its state: unlike
        C{abort()}, this also undoes a successful C{finish()} or
        C{commit()}, for a caller whose larger transaction failed.

        @return: a L{Deferred} that fires with L{None} once the files are
            gone; it never fails.
        """


class IMessageStore(Interface):
    """
    Where accepted messages go.
    """

    def receive(envelope):
        """
        Begin storing a message.

        @param envelope: an L{smtpmx.envelope.Envelope}.

        @return: a provider of L{IIncomingMessage}.
        """


class IServerObserver(Interface):
    """
    Told what happens on the SMTP server's connections, as it happens:
    what L{smtpmx.metrics} counts.  The server calls it on the reactor
    thread; a method must return at once and never raise.
    """

    def connectionOpened(clientHost):
        """
        A client connected and was admitted (within C{--max-connections}
        and C{--max-connections-per-ip}).

        @param clientHost: its address, as text.
        """

    def connectionRefused(clientHost, reason):
        """
        A client connected past a connection limit and was refused with
        C{421 4.7.0}.

        @param reason: why, in words.
        """

    def connectionClosed(clientHost):
        """
        An admitted connection ended.
        """

    def tlsStarted(tls):
        """
        A STARTTLS handshake (RFC 3207) completed.

        @param tls: the L{smtpmx.session.NegotiatedTLS}: version and cipher.
        """

    def recipientDecided(verdict):
        """
        A C{RCPT} got its verdict (RFC 5321 section 4.1.1.3), whether or
        not the transaction ever reaches DATA.

        @param verdict: the L{smtpmx.transactionlog.RecipientVerdict}: address,
            reply and the validator that decided.
        """

    def transactionEnded(record):
        """
        A transaction reached the end of its data and got its reply: the
        message was stored, refused or deferred.

        @param record: the L{smtpmx.transactionlog.TransactionRecord} that the
            transaction's log line is made from.
        """


class IDeliveryBackend(Interface):
    """
    A courier from the durable relay queue to where a local domain's mail
    lives (C{--delivery DOMAIN=NAME:ARG}, docs/plugins.rst): its recipients
    are queued first, with C{via} the backend's specification, and the
    relay service hands them to L{deliver}, retrying and bouncing by its
    answer exactly as for a relayed recipient.
    """

    def deliver(request):
        """
        Hand one queued message to the backend for some recipients.

        @param request: an L{smtpmx.backendlookup.CourierRequest}, a frozen
            value: C{messageFile} (the queued message, our C{Received}
            field first, LF line endings; read it from a thread),
            C{size}, C{sender} (C{""} for C{<>}), C{recipients} (addresses
            without brackets, exactly as received), C{heloName},
            C{reactor} and C{runBlocking}.
            L{smtpmx.testing.deliverWithBackend} builds one for tests.

        @return: a L{Deferred} that fires with a mapping of each recipient
            to its L{smtpmx.relay.request.RecipientResult} (or with an
            L{smtpmx.relay.request.DeliveryResult}): 2xx delivered, 4xx
            retried on C{--retry-schedule}, 5xx bounced.  A recipient left
            out, or a failed Deferred, is a temporary failure.
        """


class IDeliveryBackendFactory(Interface):
    """
    A plugin that makes delivery backends; found with
    C{getPlugins(IDeliveryBackendFactory, smtpmx.plugins)}.
    """

    name = Attribute("The name used in C{--delivery [DOMAIN=]NAME[:ARG]}.")
    description = Attribute("One line shown by C{--list-backends}.")

    def makeBackend(argument):
        """
        Make a backend.

        @param argument: the text after the first C{:} of the backend
            specification, or L{None} when there was none.

        @return: a provider of L{IDeliveryBackend}, or L{None} for the
            built-in C{maildir}, which is no courier (its recipients are
            filed by the Maildir store before the C{250}).

        @raise ValueError: the argument is unusable; start-up stops with
            this message.
        """
