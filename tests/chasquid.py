"""
A private chasquid (Debian's package C{chasquid}) for benchmarks: its own
configuration directory, queue and Maildirs in one directory, listening
on a loopback address and port, run in the foreground and stopped by its
PID.

chasquid files local mail through a mail delivery agent, C{maildrop} by
default, run once per recipient; here C{maildrop} (Debian's package
C{maildrop}) with a filter file that files each message into
C{maildirs/DOMAIN/USER/}, Maildirs made beforehand for the listed users.

Durability, as read from the code of chasquid 1.11 and seen with
C{strace}: the queue file is written and renamed, not fsynced, before the
C{250}; C{maildrop} fsyncs the Maildir file before it links it into
C{new/}; no directory is fsynced.

chasquid checks SPF on every C{MAIL FROM} with Go's resolver, which reads
C{/etc/resolv.conf}.  So that the benchmark measures neither the machine's
DNS nor the network (on this machine the resolver's answers slowed to
about 85 ms each after a few hundred lookups), chasquid runs in a mount
namespace of its own (C{unshare --mount}, which needs root) in which
C{/etc/resolv.conf} names a loopback address where nothing answers: each
lookup fails at once (SPF C{temperror}, which chasquid lets pass).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from typing import Callable, Iterable, Optional

from tests.certs import makeAuthority, makeServerCertificate
from tests.process import MaildirPeer, RunningProcess, acceptsConnections

CHASQUID = "/usr/bin/chasquid"
MAILDROP = "/usr/bin/maildrop"
UNSHARE = "/usr/bin/unshare"

# Where the private resolv.conf points: a loopback address on which
# nothing serves DNS.
NO_DNS = "127.0.0.153"


def chasquidMissing() -> str:
    """
    Why a private chasquid cannot be run here, or C{""} when it can.
    """
    if not os.access(CHASQUID, os.X_OK):
        return f"chasquid is not installed ({CHASQUID}; Debian's package chasquid)"
    if not os.access(MAILDROP, os.X_OK):
        return f"maildrop, its delivery agent, is not installed ({MAILDROP}; Debian's package maildrop)"
    if not canIsolateDNS():
        return (f"chasquid's SPF lookups cannot be kept off the network here (that needs root, {UNSHARE}, "
                f"and nothing serving DNS on {NO_DNS})")
    return ""


def canIsolateDNS() -> bool:
    """
    Whether chasquid can be given a resolv.conf of its own: root,
    C{unshare} allowed to make a mount namespace and bind a file in it,
    and nothing serving DNS on L{NO_DNS}.
    """
    if os.geteuid() != 0 or not os.access(UNSHARE, os.X_OK):
        return False
    try:
        probe = subprocess.run(
            [UNSHARE, "--mount", "--propagation", "private", "sh", "-c",
             "mount --bind /etc/resolv.conf /etc/resolv.conf"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    if probe.returncode != 0:
        return False
    dns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        dns.bind((NO_DNS, 53))
    except OSError:
        return False
    finally:
        dns.close()
    return True


CONFIG = """\
hostname: "{hostname}"
smtp_address: "{host}:{port}"
mail_delivery_agent_bin: "{maildrop}"
mail_delivery_agent_args: "{filter}"
mail_delivery_agent_args: "%to_domain%"
mail_delivery_agent_args: "%to_user%"
data_dir: "{data}"
mail_log_path: "{mailLog}"
"""


class Chasquid(MaildirPeer):
    """
    A running private chasquid.

    @ivar directory: where everything is.
    @ivar maildirs: the root of the Maildirs.
    @ivar port: the SMTP port.
    @ivar runner: its L{RunningProcess}.
    """

    def __init__(self, directory: str, host: str, port: int, domain: str, users: Iterable[str],
                 hostname: str = "mx.bench.example", maxDataSizeMB: Optional[int] = None) -> None:
        """
        Write the configuration (a certificate, which chasquid needs to
        start, the users with a plain password each, the maildrop filter,
        the Maildirs); L{start} runs it.

        @param maxDataSizeMB: C{max_data_size_mb}, the largest message in
            MiB; L{None} keeps chasquid's default (50).
        """
        self.directory = directory
        self.host = host
        self.port = port
        self.domain = domain
        self.maildirs = os.path.join(directory, "Maildir")
        etc = os.path.join(directory, "etc")
        certs = os.path.join(etc, "certs", domain)
        domainDir = os.path.join(etc, "domains", domain)
        for path in (certs, domainDir, os.path.join(directory, "data")):
            os.makedirs(path)
        authority = makeAuthority(directory)
        certificate, key = makeServerCertificate(authority, directory, names=(domain,))
        shutil.copy(certificate, os.path.join(certs, "fullchain.pem"))
        shutil.copy(key, os.path.join(certs, "privkey.pem"))
        with open(os.path.join(domainDir, "users"), "w") as f:
            for user in users:
                f.write(f'users: {{ key: "{user}" value: {{ plain: {{ password: "bench" }} }} }}\n')
                for sub in ("tmp", "new", "cur"):
                    os.makedirs(os.path.join(self.maildirs, domain, user, sub))
        # maildrop reads its filter only if it is not readable by others.
        filterPath = os.path.join(etc, "maildrop.filter")
        with open(os.open(filterPath, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
            f.write(f'to "{self.maildirs}/$1/$2/"\n')
        with open(os.path.join(etc, "chasquid.conf"), "w") as f:
            f.write(CONFIG.format(
                hostname=hostname, host=host, port=port, maildrop=MAILDROP, filter=filterPath,
                data=os.path.join(directory, "data"), mailLog=os.path.join(directory, "mail.log"),
            ))
            if maxDataSizeMB is not None:
                f.write(f"max_data_size_mb: {maxDataSizeMB}\n")
        resolvConf = os.path.join(directory, "resolv.conf")
        with open(resolvConf, "w") as f:
            f.write(f"nameserver {NO_DNS}\n")
        # The shell binds the file over /etc/resolv.conf in the new
        # namespace only, then becomes chasquid (same PID).
        command = [
            UNSHARE, "--mount", "--propagation", "private", "sh", "-c",
            'mount --bind "$0" /etc/resolv.conf && exec "$@"', resolvConf,
            CHASQUID, "-config_dir", etc, "-logfile", os.path.join(directory, "chasquid.log"),
        ]
        self.runner = RunningProcess(command, os.path.join(directory, "chasquid.out"), cwd=directory, name="chasquid")

    @classmethod
    def start(cls, addCleanup: Callable, directory: str, host: str, port: int, domain: str,
              users: Iterable[str], timeout: float = 20, **kw) -> "Chasquid":
        """
        Configure and start chasquid, register its stop with
        C{addCleanup}, and wait until it accepts connections.

        @param kw: see L{__init__}.

        @raise tests.process.ProcessDidNotStart: it did not start.
        """
        instance = cls(directory, host, port, domain, users, **kw)
        addCleanup(instance.stop)
        instance.runner.launch(acceptsConnections(host, port), timeout)
        return instance

    def output(self) -> str:
        """
        What it logged, and what it printed.
        """
        try:
            with open(os.path.join(self.directory, "chasquid.log"), "rb") as f:
                log = f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            log = ""
        return log + self.runner.log()
