"""
Every option of smtpmx, declared once.

L{SECTIONS} is the table: each L{Option} has its flag name (also its key in
the TOML file), the kind of value it takes, its default, whether it may be
repeated, and its help text.  From it come the frozen
L{smtpmx.config.Config} type, the loading and checking of the TOML file and
the command line (L{smtpmx.config.loadConfig}), the options and C{--help}
of C{twistd smtpmx} (L{smtpmx.tap.Options}), and the reference in
docs/options.rst, the option tables of README.rst and the commented
C{etc/smtpmx.toml} (written by C{python -m smtpmx.optiondocs --write};
a test fails when they drift).

Adding an option is adding an L{Option} to its section here (with a new
L{ValueType} in L{smtpmx.optiontypes} if none fits), then running
C{python -m smtpmx.optiondocs --write}; the code that uses it reads
C{config.<field>}.  A check that spans several options is a rule in
L{smtpmx.optionrules.RULES}.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, make_dataclass
from typing import Any, Callable, Optional

from smtpmx.auth.results import DmarcPolicy
from smtpmx.optiontypes import (
    AUTH_CHECKS,
    BOOLEAN,
    BYTES,
    DELIVERY,
    MODE,
    DELIMITER,
    DIRECTORY,
    DNS_SERVER,
    DOMAIN,
    ENDPOINT,
    FILTER,
    HOSTNAME,
    NETWORK,
    NEXT_HOP,
    PORT,
    POSITIVE_INT,
    READABLE_FILE,
    ROUTE,
    SCHEDULE,
    SECONDS,
    VALIDATOR,
    LoadContext,
    ValueType,
    choice,
)
from smtpmx.relay.tlspolicy import TLSPolicy


class FilterFailure(enum.Enum):
    """
    What a message filter that fails or times out does
    (C{--filter-failure}).

    @cvar ACCEPT: the message is delivered as if the filter had no
        opinion; the failure is logged.
    @cvar TEMPFAIL: the message is refused with C{451 4.7.1}; the client
        tries again later.
    """

    ACCEPT = "accept"
    TEMPFAIL = "tempfail"


class LogFormat(enum.Enum):
    """
    How the log is written (C{--log-format}).

    @cvar TEXT: twistd's lines of text.
    @cvar JSON: one JSON object per line (L{smtpmx.jsonlog}).
    """

    TEXT = "text"
    JSON = "json"


@dataclass(frozen=True)
class Option:
    """
    One option: C{--name} on the command line, C{name} in the TOML file.

    @ivar name: the long flag name, without the dashes; the TOML key.
    @ivar metavar: what its value looks like in the docs (C{DOMAIN});
        empty for an option that takes no value.
    @ivar help: what it does, in one sentence (``literal`` as in
        reStructuredText; shown in C{--help}, README.rst and the docs).
    @ivar valueType: the kind of value; L{None} for an option of the
        command line alone that L{smtpmx.tap.Options} handles itself.
    @ivar field: the L{smtpmx.config.Config} attribute it sets; L{None}
        when it sets none itself (a rule uses it).
    @ivar default: the value when it is not given (a tuple for a
        repeatable option).
    @ivar defaultText: the default in words, when it is not a value
        (C{"the host's FQDN"}).
    @ivar defaultFrom: computes the default at loading time.
    @ivar repeatable: may be given more than once; the values form a
        list, and given on the command line they replace the file's list.
    @ivar unique: a repeatable option's repeats are dropped.
    @ivar atLeastOne: when not empty, the list may not be empty; names
        what is needed (C{"local domain"}).
    @ivar fileAliases: other keys for it in the TOML file (the plural).
    @ivar details: more about it, for docs/options.rst and the comments
        of C{etc/smtpmx.toml}.
    @ivar commandLineOnly: a flag of the command line, not a key of the
        file (C{--config}).
    """

    name: str
    metavar: str
    help: str
    valueType: Optional[ValueType]
    field: Optional[str] = None
    default: Any = None
    defaultText: Optional[str] = None
    defaultFrom: Optional[Callable[[LoadContext], Any]] = None
    repeatable: bool = False
    unique: bool = False
    atLeastOne: str = ""
    fileAliases: tuple[str, ...] = ()
    details: str = ""
    commandLineOnly: bool = False

    @property
    def flag(self) -> str:
        """
        C{--name}.
        """
        return f"--{self.name}"

    @property
    def isFlag(self) -> bool:
        """
        Whether C{--name} takes no value on the command line (a boolean,
        or an action such as C{--list-validators}): its metavar is empty.
        """
        return not self.metavar

    def showDefault(self) -> str:
        """
        The default as C{--help} and the docs show it.
        """
        if self.defaultText is not None:
            return self.defaultText
        if self.default is None or self.valueType is None:
            return "none"
        if self.repeatable:
            return ", ".join(self.valueType.show(v) for v in self.default) or "none"
        return self.valueType.show(self.default)


def plainText(text: str) -> str:
    """
    Help text without its reStructuredText literal marks, for C{--help}
    and comments.
    """
    return text.replace("``", "")


@dataclass(frozen=True)
class Section:
    """
    Options that belong together, a section of the docs and of the
    example file.

    @ivar title: its heading.
    @ivar intro: a sentence before its options in docs/options.rst.
    """

    title: str
    intro: str
    options: tuple[Option, ...] = field(default_factory=tuple)


SECTIONS: tuple[Section, ...] = (
    Section(
        "Running",
        "Options of the command line alone.",
        (
            Option(
                "config", "PATH",
                "TOML configuration file; its keys are named like these options.",
                None, commandLineOnly=True,
                details="``etc/smtpmx.toml`` is an example with every option.",
            ),
            Option(
                "list-validators", "",
                "Print every recipient validator found, with its description, and exit.",
                None, commandLineOnly=True,
            ),
            Option(
                "list-filters", "",
                "Print every message filter found, with its description, and exit.",
                None, commandLineOnly=True,
            ),
            Option(
                "list-backends", "",
                "Print every delivery backend found, with its description, and exit.",
                None, commandLineOnly=True,
            ),
        ),
    ),
    Section(
        "Receiving",
        "Where smtpmx listens, which domains it receives mail for, and its limits.",
        (
            Option(
                "listen", "ENDPOINT", "Twisted server endpoint to listen on.",
                ENDPOINT, field="listen", default=("tcp:2525:interface=127.0.0.1",),
                repeatable=True, atLeastOne="endpoint", fileAliases=("listens",),
                details="For instance ``tcp:25`` or ``tcp6:25:interface=\\:\\:`` (a colon"
                " inside a value is written ``\\:``).  Ports are bound before twistd"
                " gives up root (``--uid``/``--gid``).",
            ),
            Option(
                "hostname", "NAME",
                "Our name in the greeting, the EHLO reply, Received headers and bounces.",
                HOSTNAME, field="hostname", default="localhost", defaultText="the host's FQDN",
                defaultFrom=lambda context: context.getfqdn(),
            ),
            Option(
                "domain", "DOMAIN",
                "A local domain: its mail is delivered here (into Maildirs, or see ``--delivery``).",
                DOMAIN, field="domains", default=("localhost",), repeatable=True, unique=True,
                atLeastOne="local domain", fileAliases=("domains",),
                details="Domains are compared in lower case.  ``postmaster@`` every"
                " local domain is always accepted (RFC 5321 section 4.5.1).",
            ),
            Option(
                "maildir-root", "DIR",
                "Maildirs live at ``DIR/<domain>/<localpart>/{tmp,new,cur}``.",
                DIRECTORY, field="maildirRoot", default="Maildir",
                details="docs/storage.rst describes the layout.",
            ),
            Option(
                "delivery", "[DOMAIN=]NAME[:ARG]",
                "How local mail is delivered: ``maildir`` (files under ``--maildir-root``),"
                " ``lmtp:ENDPOINT`` (handed to an LMTP server such as Dovecot, RFC 2033)"
                " or another delivery backend plugin, for one domain or, without"
                " ``DOMAIN=``, for the others.",
                DELIVERY, field="delivery", default=(), defaultText="maildir for every domain",
                repeatable=True,
                details="``ENDPOINT`` is a Twisted client endpoint: ``unix:/run/dovecot/lmtp``"
                " or ``tcp:127.0.0.1:24``.  A domain not named uses the entry without a"
                " domain, else ``maildir``.  Mail for an LMTP domain is queued durably"
                " before the ``250`` and handed over at once; docs/storage.rst describes it,"
                " and so it is for every backend but ``maildir`` (docs/plugins.rst;"
                " ``twistd smtpmx --list-backends`` lists those installed)."
                "  Give an LMTP domain the ``lmtp`` validator too, so that unknown users"
                " and full mailboxes are refused at ``RCPT`` (README.rst, \"Handing mail"
                " to Dovecot\").",
            ),
            Option(
                "maildir-mode", "MODE",
                "Octal mode of Maildir files; directories get the matching search bits.",
                MODE, field="maildirMode", default=0o600,
                details="``0660`` with a setgid Maildir root lets a Dovecot running in"
                " the root's group read and write the mail (docs/storage.rst).",
            ),
            Option(
                "validator", "NAME[:ARG]",
                "A recipient validator (built in: ``mailbox``, ``any``, ``aliases:PATH``,"
                " ``policy:ENDPOINT``, ``lmtp[:ENDPOINT]``); they are consulted in order,"
                " the first verdict decides.",
                VALIDATOR, field="validators", default=("mailbox",), repeatable=True,
                fileAliases=("validators",),
                details="``twistd smtpmx --list-validators`` lists those installed."
                "  The built-ins: ``mailbox`` (a local recipient whose Maildir exists),"
                " ``any`` (every local recipient; the Maildir is made on first"
                " delivery), ``aliases:PATH`` (the recipients of an aliases file,"
                " re-read when it changes), ``policy:ENDPOINT`` (asks a Postfix"
                " policy server such as postgrey at each RCPT; ``ENDPOINT`` is a Twisted"
                " client endpoint, ``tcp:127.0.0.1:10023``) and ``lmtp[:ENDPOINT]``"
                " (asks the LMTP server, the ``ENDPOINT`` given or the recipient"
                " domain's ``--delivery`` backend, at each RCPT: an unknown user is"
                " ``550 5.1.1``, a full mailbox the server's ``552`` or ``452``, a"
                " server that is down ``451 4.3.0``).  ``mailbox`` and ``any`` have no"
                " opinion on a domain delivered over LMTP (its mail is not under"
                " ``--maildir-root``), so such a domain needs ``lmtp`` (or"
                " ``aliases:PATH``) in the list, or its recipients are refused."
                "  List ``policy:`` first, since the first verdict wins.  docs/plugins.rst"
                " describes them and tells how to write one.",
            ),
            Option(
                "recipient-delimiter", "C",
                "``user+tag@domain`` is delivered to ``user``'s Maildir; empty for none.",
                DELIMITER, field="recipientDelimiter", default="+",
                details="The recipients of a domain delivered over LMTP are handed over as"
                " given, ``+tag`` and all: the LMTP server applies its own delimiter"
                " (Dovecot's ``recipient_delimiter``).",
            ),
            Option(
                "max-message-size", "BYTES",
                "Largest message accepted, advertised in SIZE (RFC 1870).",
                POSITIVE_INT, field="maxMessageSize", default=26214400,
            ),
            Option(
                "max-recipients", "N",
                "Recipients per transaction; more get ``452 4.5.3``.",
                POSITIVE_INT, field="maxRecipients", default=100,
            ),
            Option(
                "max-connections", "N",
                "Simultaneous connections; past it ``421 4.7.0``.",
                POSITIVE_INT, field="maxConnections", default=500,
            ),
            Option(
                "max-connections-per-ip", "N",
                "Simultaneous connections from one address; past it ``421 4.7.0``.",
                POSITIVE_INT, field="maxConnectionsPerIp", default=20,
            ),
            Option(
                "command-timeout", "SECONDS",
                "How long a client may stay idle between commands (RFC 5321 section 4.5.3.2).",
                SECONDS, field="commandTimeout", default=300.0,
            ),
            Option(
                "data-timeout", "SECONDS",
                "How long a client may stay idle while sending the message"
                " (RFC 5321 section 4.5.3.2).",
                SECONDS, field="dataTimeout", default=600.0,
            ),
            Option(
                "max-hops", "N",
                "More ``Received:`` headers than this is a mail loop: ``554 5.4.6``.",
                POSITIVE_INT, field="maxHops", default=50,
            ),
            Option(
                "min-free-space", "BYTES",
                "While the file system of ``--maildir-root`` or ``--queue-dir`` has less free"
                " space than this, MAIL gets ``452 4.3.1``; 0 turns the check off.",
                BYTES, field="minFreeSpace", default=104857600,
                details="The space free for unprivileged users is measured at start-up and"
                " every 5 seconds, off the reactor thread; the log says when it runs short"
                " and when it is back.  Mail already accepted is still delivered and the"
                " relay goes on sending (the default is 100 MiB).",
            ),
            Option(
                "tls-certificate", "PEM",
                "Certificate (chain) that enables STARTTLS (RFC 3207); needs ``--tls-key``.",
                READABLE_FILE, field="tlsCertificate", defaultText="off",
                details="The file may hold the intermediate certificates after the"
                " server's.  Both files are read at start-up: an unreadable or"
                " mismatched pair stops it; an expired one is a warning in the log, as"
                " is one that expires within 14 days (looked at daily).  ``SIGHUP``"
                " reads them again (docs/resilience.rst).",
            ),
            Option(
                "tls-key", "PEM",
                "Private key of ``--tls-certificate`` (it may be in the same file).",
                READABLE_FILE, field="tlsKey", defaultText="off",
            ),
        ),
    ),
    Section(
        "Sender authentication",
        "SPF, DKIM, DMARC and ARC verdicts on mail from untrusted clients, recorded in an"
        " ``Authentication-Results:`` field (RFC 8601) and, for DMARC, enforced"
        " (docs/authentication.rst).",
        (
            Option(
                "auth-checks", "LIST",
                "The checks run on mail from clients outside ``--relay-network``:"
                " a comma-separated subset of ``spf,dkim,dmarc,arc``, or ``none``.",
                AUTH_CHECKS, field="authChecks", default=("spf", "dkim", "dmarc", "arc"),
                details="In the file, a list or the same text.  Only the methods named"
                " appear in the ``Authentication-Results:`` field; ``dmarc`` evaluates SPF"
                " and DKIM for its alignment even when they are left out.  An incoming"
                " ``Authentication-Results:`` field naming ``--hostname`` is removed from"
                " every message, whatever this says (RFC 8601 section 5).",
            ),
            Option(
                "dmarc-policy", "MODE",
                "``enforce``: a DMARC failure follows the sender domain's policy"
                " (``p=reject`` refused ``550 5.7.1``, ``p=quarantine`` filed in Junk);"
                " ``tag``: the verdicts are only recorded.",
                choice(DmarcPolicy), field="dmarcPolicy", default=DmarcPolicy.ENFORCE.value,
                details="A DMARC ``temperror`` never refuses mail.",
            ),
            Option(
                "spf-reject", "",
                "Refuse an SPF ``fail`` at ``MAIL FROM`` with ``550 5.7.23`` (RFC 7372).",
                BOOLEAN, field="spfReject", default=False,
                details="Needs ``spf`` in ``--auth-checks``.  Off, an SPF ``fail`` is"
                " recorded, and weighs in DMARC.",
            ),
            Option(
                "auth-timeout", "SECONDS",
                "Time budget of one message's lookups; a check not done by then is"
                " ``temperror`` and the message is accepted.",
                SECONDS, field="authTimeout", default=10.0,
            ),
        ),
    ),
    Section(
        "Filtering",
        "Message filters judge each message from an untrusted client after its data"
        " and before the reply to DATA (docs/plugins.rst).",
        (
            Option(
                "filter", "NAME[:ARG]",
                "A message filter (built in: ``rspamd[:URL]``); all run in order, the first"
                " refusal decides.",
                FILTER, field="filters", default=(), repeatable=True,
                fileAliases=("filters",),
                details="``twistd smtpmx --list-filters`` lists those installed."
                "  ``rspamd[:URL]`` asks rspamd (at ``http://127.0.0.1:11333`` by"
                " default).  Filters see mail from clients outside"
                " ``--relay-network`` only.  ``Accept`` and ``Junk`` verdicts add their"
                " header fields to every copy; a ``Junk`` files the Maildir copies in the"
                " Junk folder (Maildir++ ``.Junk``, the IMAP folder ``Junk`` in Dovecot:"
                " docs/storage.rst; over LMTP the server files it, by a Sieve script on"
                " the filters' fields); a ``Reject`` refuses the message after its data."
                "  docs/plugins.rst tells how to write one.",
            ),
            Option(
                "filter-timeout", "SECONDS",
                "How long one filter may take; past it the filter has failed.",
                SECONDS, field="filterTimeout", default=30.0,
            ),
            Option(
                "filter-failure", "MODE",
                "A filter that fails or times out: ``accept`` delivers anyway (logged),"
                " ``tempfail`` answers ``451 4.7.1``.",
                choice(FilterFailure), field="filterFailure",
                default=FilterFailure.ACCEPT.value,
            ),
        ),
    ),
    Section(
        "Relaying",
        "Who may relay, where mail for other domains goes, and how it is retried.",
        (
            Option(
                "relay-network", "CIDR", "Clients allowed to relay to any domain.",
                NETWORK, field="relayNetworks", default=("127.0.0.0/8", "::1/128"),
                repeatable=True, unique=True, fileAliases=("relay-networks",),
            ),
            Option(
                "relay-domain", "DOMAIN",
                "A domain relayed for any client (we are its backup MX).",
                DOMAIN, field="relayDomains", default=(), repeatable=True, unique=True,
                fileAliases=("relay-domains",),
            ),
            Option(
                "route", "DOMAIN=HOST:PORT",
                "A fixed next hop for a domain, no MX lookup; ``*`` is every domain.",
                ROUTE, field="routes", default=(), repeatable=True, fileAliases=("routes",),
                details="In the file, routes may also be a table: ``[route]`` then"
                " ``\"example.net\" = \"mail.example.net:25\"``.  A domain may have"
                " one route.",
            ),
            Option(
                "smarthost", "HOST:PORT", "The same as ``--route '*=HOST:PORT'``.",
                NEXT_HOP,
                details="Given in the same place as a ``*`` route it is an error; on the"
                " command line it replaces the file's ``*`` route.",
            ),
            Option(
                "dns-server", "IP[:PORT]",
                "Resolver for MX/A/AAAA lookups (port 53 if left out).",
                DNS_SERVER, field="dnsServer", defaultText="the system's",
            ),
            Option(
                "relay-port", "PORT", "Port of the MX hosts the relay connects to.",
                PORT, field="relayPort", default=25,
            ),
            Option(
                "queue-dir", "DIR", "Directory of the durable relay queue.",
                DIRECTORY, field="queueDir", default="queue",
                details="docs/storage.rst describes the layout.",
            ),
            Option(
                "retry-schedule", "LIST",
                "Seconds between delivery attempts, comma-separated; the last repeats.",
                SCHEDULE, field="retrySchedule", default=(60, 300, 900, 1800, 3600),
                details="In the file, a list of numbers or the same text.",
            ),
            Option(
                "max-queue-age", "SECONDS",
                "After this a message still undelivered is bounced (432000 s is 5 days).",
                POSITIVE_INT, field="maxQueueAge", default=432000,
            ),
            Option(
                "relay-active-limit", "N",
                "Messages the relay attempts at once at most; the rest wait on disk in the queue.",
                POSITIVE_INT, field="relayActiveLimit", default=1000,
                details="Like Postfix's ``qmgr_message_active_limit`` (docs/relay.rst).",
            ),
            Option(
                "relay-tls", "MODE",
                "Relay client TLS: ``none`` never, ``may`` when offered, ``verify``"
                " required with a certificate valid for the next hop.",
                choice(TLSPolicy), field="relayTls", default=TLSPolicy.MAY.value,
                details="docs/relay.rst describes the policy.",
            ),
            Option(
                "ca-certs", "PEM", "Trust roots for ``--relay-tls verify``.",
                READABLE_FILE, field="caCerts", defaultText="the system's",
            ),
        ),
    ),
    Section(
        "Operating",
        "Watching smtpmx at work: metrics, health and the log (docs/monitoring.rst).",
        (
            Option(
                "metrics", "ENDPOINT",
                "Twisted server endpoint to serve HTTP ``/metrics`` (Prometheus text format)"
                " and ``/healthz`` on.",
                ENDPOINT, field="metrics", defaultText="off",
                details="For instance ``tcp:9100:interface=127.0.0.1``.  ``/healthz`` answers"
                " ``200 ok`` while smtpmx listens and can write its Maildir root and queue,"
                " ``503`` and the reason otherwise.  docs/monitoring.rst lists the metrics;"
                " ``etc/prometheus/smtpmx-alerts.yml`` has alert rules for them.",
            ),
            Option(
                "log-format", "FORMAT",
                "``text``: twistd's lines; ``json``: one JSON object per line.",
                choice(LogFormat), field="logFormat", default=LogFormat.TEXT.value,
                details="A JSON line has ``time``, ``level`` and ``text``; a transaction's adds"
                " ``queue_id``, ``client``, ``from``, ``to`` (a list), ``size`` and ``result``"
                " (docs/monitoring.rst).  It goes where twistd's log goes (``--logfile``,"
                " or stdout with ``--nodaemon``), not to syslog.",
            ),
            Option(
                "workers", "N",
                "Reactor processes that share the listening sockets; one of them runs the"
                " relay queue.",
                POSITIVE_INT, field="workers", default=1,
                details="Above 1, every ``--listen`` must be ``tcp:`` or ``tcp6:``; twistd's"
                " process binds them and watches the workers (docs/workers.rst).  Raise it"
                " to the number of cores when one process is CPU-bound.",
            ),
        ),
    ),
)

OPTIONS: tuple[Option, ...] = tuple(o for s in SECTIONS for o in s.options)

# The options of the TOML file and of L{smtpmx.config.loadConfig}.
FILE_OPTIONS: tuple[Option, ...] = tuple(o for o in OPTIONS if not o.commandLineOnly)


def optionNamed(name: str) -> Option:
    """
    The option called C{name}.

    @raise KeyError: there is none.
    """
    for option in OPTIONS:
        if option.name == name:
            return option
    raise KeyError(name)


def fileKeys(options: tuple[Option, ...] = FILE_OPTIONS) -> dict[str, Option]:
    """
    Every key the TOML file may use (C{_} standing for C{-} aside), with
    the option it sets.
    """
    keys: dict[str, Option] = {}
    for option in options:
        for key in (option.name, *option.fileAliases):
            keys[key] = option
    return keys


def configType(options: tuple[Option, ...] = FILE_OPTIONS) -> type:
    """
    The frozen dataclass with a field for every option that sets one, in
    the table's order, with its default.
    """
    fields = []
    for option in options:
        if option.field is None or option.valueType is None:
            continue
        kind = option.valueType.pythonType
        if option.repeatable:
            kind = tuple[kind, ...]
        fields.append((option.field, kind, field(default=option.default)))
    return make_dataclass("Config", fields, frozen=True)
