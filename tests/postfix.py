"""
Postfix for tests and benchmarks, started on a loopback address and
stopped by PID:

  - C{smtp-sink} as a real next hop (L{startSmtpSink});
  - a private Postfix instance that delivers to Maildirs through
    C{virtual(8)} (L{PrivatePostfix}): a peer for C{bench/compare.py}.
"""

from __future__ import annotations

import os
import pwd
import re
import subprocess
from typing import Callable, Iterable, Optional, Sequence

from tests.process import MaildirPeer, RunningProcess, acceptsConnections
from tests.proctree import stopGroup

SMTP_SINK = "/usr/sbin/smtp-sink"
POSTFIX = "/usr/sbin/postfix"
MASTER = "/usr/lib/postfix/sbin/master"

# Who virtual(8) delivers as: it refuses root.
MAILDIR_USER = "nobody"


class SmtpSink:
    """
    A running C{smtp-sink -c}; its output holds its counters.

    @ivar port: the port it listens on.
    @ivar runner: its L{RunningProcess}.
    """

    def __init__(self, runner: RunningProcess, port: int) -> None:
        """
        @param runner: the process, started or not.
        @param port: the port it listens on.
        """
        self.runner = runner
        self.port = port

    @property
    def process(self) -> Optional[subprocess.Popen]:
        """
        The L{subprocess.Popen}.
        """
        return self.runner.process

    def stop(self) -> None:
        """
        SIGTERM, then SIGKILL; idempotent.
        """
        self.runner.stop()

    def output(self) -> str:
        """
        What it printed (with C{-c}: its counters).
        """
        return self.runner.output()

    def counters(self) -> tuple[int, int]:
        """
        Sessions that have ended (less the probe that saw it start) and
        messages taken, from its last counters line.
        """
        found = re.findall(r"sess=(\d+) quit=\d+ mesg=(\d+)", self.output())
        if not found:
            return 0, 0
        sessions, messages = found[-1]
        return int(sessions) - 1, int(messages)


def startSmtpSink(
    addCleanup: Callable,
    directory: str,
    host: str,
    port: int,
    extra: Sequence[str] = (),
    backlog: int = 100,
) -> SmtpSink:
    """
    Start C{smtp-sink -c [-u root] [extra] HOST:PORT BACKLOG}, register its
    stop with C{addCleanup}, and wait (10 s at most) until it accepts
    connections.

    @raise tests.process.ProcessDidNotStart: it did not start.
    """
    arguments = [SMTP_SINK, "-c"]
    if os.geteuid() == 0:
        arguments += ["-u", "root"]
    arguments += [*extra, f"{host}:{port}", str(backlog)]
    runner = RunningProcess(arguments, os.path.join(directory, "smtp-sink.out"), cwd=directory, name="smtp-sink")
    sink = SmtpSink(runner, port)
    addCleanup(sink.stop)
    runner.launch(acceptsConnections(host, port), timeout=10)
    return sink


# main.cf of a private instance: its own queue and data directories, one
# virtual mailbox domain whose users are listed in a table, nothing
# delivered locally or relayed.  Everything else is Postfix's default.
MAIN_CF = """\
compatibility_level = 3.6
queue_directory = {queue}
data_directory = {data}
mail_owner = postfix
setgid_group = postdrop
myhostname = {hostname}
mydestination =
local_transport = error:local delivery is disabled
alias_maps =
alias_database =
relay_domains =
inet_interfaces = {host}
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
virtual_mailbox_domains = {domain}
virtual_mailbox_base = {maildirs}
virtual_mailbox_maps = texthash:{mailboxes}
virtual_uid_maps = static:{uid}
virtual_gid_maps = static:{gid}
maillog_file = {log}
maillog_file_prefixes = {directory}
biff = no
"""

# master.cf: Debian's services less those nothing here uses (TLS, the
# pipe transports, local), none chrooted, the SMTP server on one loopback
# address and port.
MASTER_CF = """\
{host}:{port} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
virtual   unix  -       n       n       -       -       virtual
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


def privatePostfixMissing() -> str:
    """
    Why a private Postfix cannot be run here, or C{""} when it can.
    """
    if not (os.access(POSTFIX, os.X_OK) and os.access(MASTER, os.X_OK)):
        return f"Postfix is not installed ({POSTFIX}, {MASTER}; Debian's package postfix)"
    if os.geteuid() != 0:
        return "a private Postfix needs root (its master process runs its daemons as the user postfix)"
    for user in ("postfix", MAILDIR_USER):
        try:
            pwd.getpwnam(user)
        except KeyError:
            return f"no user {user}"
    return ""


class PrivatePostfix(MaildirPeer):
    """
    A Postfix instance of its own: configuration, queue and Maildirs in
    one directory, its master process (C{master -d}, in the foreground)
    listening on a loopback address and port, every message for a listed
    user of C{domain} delivered by C{virtual(8)} to
    C{maildirs/DOMAIN/USER/} (Maildir, made on first delivery, owned by
    L{MAILDIR_USER}).

    Its durability is Postfix's: the queue file is fsynced before the
    C{250}; C{virtual(8)} fsyncs each Maildir file before it links it
    into C{new/}; no directory is fsynced.

    @ivar directory: where everything is.
    @ivar maildirs: the root of the Maildirs.
    @ivar port: the SMTP port.
    @ivar runner: the master's L{RunningProcess}.
    """

    def __init__(self, directory: str, host: str, port: int, domain: str, users: Iterable[str],
                 hostname: str = "mx.bench.example", messageSizeLimit: Optional[int] = None) -> None:
        """
        Write the configuration; L{start} runs it.

        @param directory: a new or empty directory; it is made (if
            missing) readable by the Postfix daemons (mode 0755), and so
            must its parents be.
        @param users: the local parts that have a mailbox; mail for any
            other is refused at RCPT, as a real server would.
        @param messageSizeLimit: C{message_size_limit} in bytes (and the
            mailbox limits raised to it when they are lower); L{None}
            keeps Postfix's default (10240000).
        """
        self.directory = directory
        self.host = host
        self.port = port
        self.domain = domain
        self.maildirs = os.path.join(directory, "Maildir")
        self.etc = os.path.join(directory, "etc")
        self.log = os.path.join(directory, "maillog")
        owner = pwd.getpwnam(MAILDIR_USER)
        os.makedirs(directory, exist_ok=True)
        os.chmod(directory, 0o755)
        queue, data = os.path.join(directory, "queue"), os.path.join(directory, "data")
        for path in (self.etc, queue, data, self.maildirs):
            os.makedirs(path)
        os.chown(data, pwd.getpwnam("postfix").pw_uid, -1)
        os.chown(self.maildirs, owner.pw_uid, owner.pw_gid)
        mailboxes = os.path.join(self.etc, "mailboxes")
        with open(mailboxes, "w") as f:
            for user in users:
                f.write(f"{user}@{domain} {domain}/{user}/\n")
        with open(os.path.join(self.etc, "main.cf"), "w") as f:
            f.write(MAIN_CF.format(
                queue=queue, data=data, hostname=hostname, host=host, domain=domain,
                maildirs=self.maildirs, mailboxes=mailboxes, uid=owner.pw_uid, gid=owner.pw_gid,
                log=self.log, directory=directory,
            ))
            if messageSizeLimit is not None:
                mailboxLimit = max(51200000, messageSizeLimit)
                f.write(f"message_size_limit = {messageSizeLimit}\n"
                        f"mailbox_size_limit = {mailboxLimit}\nvirtual_mailbox_limit = {mailboxLimit}\n")
        with open(os.path.join(self.etc, "master.cf"), "w") as f:
            f.write(MASTER_CF.format(host=host, port=port))
        self.runner = RunningProcess(
            [MASTER, "-c", self.etc, "-d"], os.path.join(directory, "master.out"), cwd=directory,
            name="postfix master",
        )

    @classmethod
    def start(cls, addCleanup: Callable, directory: str, host: str, port: int, domain: str,
              users: Iterable[str], timeout: float = 30, **kw) -> "PrivatePostfix":
        """
        Write the configuration, make the queue's directories
        (C{postfix -c ETC check}), start the master, register its stop
        with C{addCleanup}, and wait until it accepts connections.

        @param kw: see L{__init__}.

        @raise tests.process.ProcessDidNotStart: it did not start.
        """
        instance = cls(directory, host, port, domain, users, **kw)
        subprocess.run(
            [POSTFIX, "-c", instance.etc, "check"], check=True, timeout=timeout,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        addCleanup(instance.stop)
        instance.runner.launch(acceptsConnections(host, port), timeout)
        return instance

    def stop(self) -> None:
        """
        SIGTERM to the master, which ends its daemons; then, by PID, any
        daemon of its process group still there.  Idempotent.
        """
        if self.runner.process is None:
            return
        self.runner.stop()
        stopGroup(self.runner.pid)

    def output(self) -> str:
        """
        The instance's mail log.
        """
        try:
            with open(self.log, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""
