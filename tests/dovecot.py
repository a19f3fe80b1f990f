"""
A private Dovecot (Debian's dovecot-imapd and dovecot-lmtpd) for tests,
built from the example C{etc/dovecot-smtpmx.conf} with its paths and ports
replaced: C{base_dir}, C{state_dir} and the log in a short temporary
directory, a passwd-file userdb and passdb there, Maildirs under a
temporary Maildir root (C{mail_location = maildir:<root>/%d/%n}), LMTP on
a free loopback port and on the UNIX socket C{<base_dir>/lmtp}, IMAP on a
free loopback port; run in the foreground (C{dovecot -F -c CONF}) and
stopped by its PID.

Dovecot refuses to run mail processes as root: they run as C{nobody},
in the group of the Maildir root (C{nogroup}, the root made C{2770}, as
docs/storage.rst tells an operator to do for a Dovecot in smtpmx's
group).  Starting Dovecot needs root (its master binds, then drops to its
own users); L{dovecotMissing} says why it cannot be run otherwise.

The users: C{alice@example.org} and C{bob@example.org}, password
L{PASSWORD}, no quota; C{carol@example.org}, whose quota is
L{SMALL_QUOTA}.
"""

from __future__ import annotations

import grp
import imaplib
import os
import pwd
import re
import shutil
import socket
import tempfile
from typing import Callable, Iterable, Optional

from tests.e2e import freePort
from tests.process import RunningProcess, acceptsConnections

DOVECOT = "/usr/sbin/dovecot"
EXAMPLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "etc", "dovecot-smtpmx.conf")

# The password of every test user.
PASSWORD = "secret"

# The users the harness makes, and the one with a small quota.
USERS = ("alice@example.org", "bob@example.org", "carol@example.org")
SMALL_QUOTA_USER = "carol@example.org"
SMALL_QUOTA = "*:storage=1K"

# How long Dovecot's auth process may go on with a passwd-file it read
# before it changed, in seconds: it checks the file at most about once a
# second.
USERS_REREAD = 1.5

# Who the mail processes run as, and the group of the Maildir root.
MAIL_USER = "nobody"
MAIL_GROUP = "nogroup"


def dovecotMissing() -> str:
    """
    Why a private Dovecot cannot be run here, or C{""} when it can.
    """
    if not os.access(DOVECOT, os.X_OK):
        return f"Dovecot is not installed ({DOVECOT}; Debian's packages dovecot-imapd and dovecot-lmtpd)"
    if not os.path.exists("/usr/lib/dovecot/lmtp"):
        return "Dovecot's LMTP server is not installed (Debian's package dovecot-lmtpd)"
    if not os.path.exists("/usr/lib/dovecot/imap"):
        return "Dovecot's IMAP server is not installed (Debian's package dovecot-imapd)"
    if os.geteuid() != 0:
        return "a private Dovecot needs root (its master process drops to its own users)"
    try:
        pwd.getpwnam(MAIL_USER)
        grp.getgrnam(MAIL_GROUP)
    except KeyError:
        return f"no user {MAIL_USER} or group {MAIL_GROUP} to run Dovecot's mail processes as"
    return ""


def configuration(example: str, *, baseDir: str, stateDir: str, logPath: str, maildirRoot: str,
                  usersPath: str, lmtpPort: int, imapPort: int) -> str:
    """
    The example configuration with its paths, ports and mail user
    replaced by a private Dovecot's.

    @raise ValueError: a setting to replace is missing from the example
        (the example and the harness must agree).
    """
    replacements = [
        (r"^base_dir = .*$", f"base_dir = {baseDir}"),
        (r"^state_dir = .*$", f"state_dir = {stateDir}"),
        (r"^log_path = .*$", f"log_path = {logPath}"),
        (r"^mail_location = maildir:.*/%d/%n$", f"mail_location = maildir:{maildirRoot}/%d/%n"),
        (r"^mail_uid = .*$", f"mail_uid = {MAIL_USER}"),
        (r"^mail_gid = .*$", f"mail_gid = {MAIL_GROUP}"),
        (r"(?<= )/etc/dovecot/smtpmx-users$", usersPath),
        (r"(inet_listener imap \{\n(?:.*\n)*?\s*port = )143$", rf"\g<1>{imapPort}"),
        (r"(inet_listener lmtp \{\n(?:.*\n)*?\s*port = )24$", rf"\g<1>{lmtpPort}"),
    ]
    text = example
    for pattern, replacement in replacements:
        text, count = re.subn(pattern, replacement, text, flags=re.MULTILINE)
        if count == 0:
            raise ValueError(f"{EXAMPLE} has no line matching {pattern!r}")
    # The user and passdb files hold every test user's home; none is
    # looked up elsewhere.
    return text


def passwdLine(address: str, maildirRoot: str, quotaRule: Optional[str] = None) -> str:
    """
    One passwd-file line: the address, its password, no uid or gid (the
    global C{mail_uid}/C{mail_gid}), its home (its Maildir), and a quota
    rule of its own if given.
    """
    name, _, domain = address.partition("@")
    home = os.path.join(maildirRoot, domain, name)
    extra = f"userdb_quota_rule={quotaRule}" if quotaRule else ""
    return f"{address}:{{PLAIN}}{PASSWORD}::::{home}::{extra}\n"


class RunningDovecot:
    """
    One private Dovecot.

    @ivar directory: its base directory (short: UNIX socket paths are).
    @ivar maildirRoot: the Maildir root its users' mail lives under.
    @ivar lmtpPort: its LMTP loopback port.
    @ivar imapPort: its IMAP loopback port.
    @ivar lmtpSocket: the path of its LMTP UNIX socket.
    @ivar lmtpTCP: C{tcp:127.0.0.1:PORT}, its LMTP client endpoint string.
    @ivar lmtpUNIX: C{unix:PATH}, the same over the UNIX socket.
    @ivar runner: its L{RunningProcess}.
    """

    def __init__(self, directory: str, maildirRoot: Optional[str] = None,
                 users: Iterable[str] = USERS) -> None:
        """
        Write its configuration and users; start nothing.

        @param directory: an empty directory for it, made traversable by
            Dovecot's own users.
        @param maildirRoot: the Maildir root (smtpmx's C{--maildir-root});
            C{<directory>/Maildir} by default.  It is given to the group
            C{nogroup} and made C{2770}.
        """
        self.directory = directory
        os.chmod(directory, 0o755)
        self.baseDir = os.path.join(directory, "run")
        self.stateDir = os.path.join(directory, "state")
        os.mkdir(self.stateDir, 0o755)
        self.logPath = os.path.join(directory, "dovecot.log")
        self.usersPath = os.path.join(directory, "users")
        self.maildirRoot = maildirRoot or os.path.join(directory, "Maildir")
        os.makedirs(self.maildirRoot, exist_ok=True)
        os.chown(self.maildirRoot, -1, grp.getgrnam(MAIL_GROUP).gr_gid)
        os.chmod(self.maildirRoot, 0o2770)
        self.lmtpPort = freePort()
        self.imapPort = freePort()
        self.lmtpSocket = os.path.join(self.baseDir, "lmtp")
        self.lmtpTCP = f"tcp:127.0.0.1:{self.lmtpPort}"
        self.lmtpUNIX = f"unix:{self.lmtpSocket}"
        self.users: dict[str, Optional[str]] = {}
        for address in users:
            self.users[address] = SMALL_QUOTA if address == SMALL_QUOTA_USER else None
        self._writeUsers()
        with open(EXAMPLE, encoding="utf-8") as f:
            example = f.read()
        self.configPath = os.path.join(directory, "dovecot.conf")
        with open(self.configPath, "w", encoding="utf-8") as f:
            f.write(configuration(
                example, baseDir=self.baseDir, stateDir=self.stateDir, logPath=self.logPath,
                maildirRoot=self.maildirRoot, usersPath=self.usersPath,
                lmtpPort=self.lmtpPort, imapPort=self.imapPort,
            ))
        self.runner = RunningProcess(
            [DOVECOT, "-F", "-c", self.configPath],
            os.path.join(directory, "dovecot.out"),
            name="dovecot",
        )

    @classmethod
    def start(cls, addCleanup: Callable, maildirRoot: Optional[str] = None,
              users: Iterable[str] = USERS) -> "RunningDovecot":
        """
        Start one in a new short temporary directory, ready once LMTP and
        IMAP accept connections; stopped by PID and its directory removed
        by cleanups.

        @param addCleanup: a test's C{addCleanup} (or a class's).
        """
        directory = tempfile.mkdtemp(prefix="dc", dir="/tmp")
        addCleanup(shutil.rmtree, directory, True)
        dovecot = cls(directory, maildirRoot, users)
        addCleanup(dovecot.stop)
        dovecot.launch()
        return dovecot

    def launch(self) -> None:
        """
        Start it (again), and wait until its LMTP (TCP and UNIX) and IMAP
        listeners accept connections.
        """
        tcpLmtp = acceptsConnections("127.0.0.1", self.lmtpPort)
        imap = acceptsConnections("127.0.0.1", self.imapPort)

        def ready(runner: RunningProcess) -> bool:
            return tcpLmtp(runner) and imap(runner) and self._unixAccepts()

        self.runner.launch(ready)

    def _unixAccepts(self) -> bool:
        """
        Whether the LMTP UNIX socket takes connections.
        """
        s = socket.socket(socket.AF_UNIX)
        try:
            s.settimeout(1)
            s.connect(self.lmtpSocket)
            return True
        except OSError:
            return False
        finally:
            s.close()

    def stop(self) -> None:
        """
        SIGTERM, then SIGKILL, by the master's PID (it stops its
        children); idempotent.
        """
        self.runner.stop()

    def log(self) -> str:
        """
        What it logged.
        """
        try:
            with open(self.logPath, encoding="utf-8", errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def _writeUsers(self) -> None:
        """
        Write the passwd-file (readable by Dovecot's auth process, which
        re-reads it when it changes).
        """
        lines = "".join(passwdLine(a, self.maildirRoot, q) for a, q in self.users.items())
        temporary = self.usersPath + ".new"
        with open(temporary, "w", encoding="utf-8") as f:
            f.write(lines)
        os.chmod(temporary, 0o644)
        os.replace(temporary, self.usersPath)

    def addUser(self, address: str, quotaRule: Optional[str] = None) -> None:
        """
        Add a user (known to Dovecot within L{USERS_REREAD} seconds).
        """
        self.users[address] = quotaRule
        self._writeUsers()

    def removeUser(self, address: str) -> None:
        """
        Remove a user: LMTP answers C{550 5.1.1} for it once Dovecot
        has read the file again, within L{USERS_REREAD} seconds.
        """
        self.users.pop(address, None)
        self._writeUsers()

    def imap(self, address: str) -> imaplib.IMAP4:
        """
        An IMAP session logged in as C{address} (plaintext login, which
        Dovecot allows on loopback); the caller logs out.
        """
        session = imaplib.IMAP4("127.0.0.1", self.imapPort, timeout=15)
        session.login(address, PASSWORD)
        return session

    def messages(self, address: str, folder: str = "INBOX") -> list[bytes]:
        """
        Every message in one of C{address}'s folders, read over IMAP.
        """
        session = self.imap(address)
        try:
            status, _ = session.select(folder, readonly=True)
            if status != "OK":
                raise AssertionError(f"cannot select {folder} of {address}")
            _, data = session.search(None, "ALL")
            found = []
            for number in data[0].split():
                _, parts = session.fetch(number, "(BODY.PEEK[])")
                found.append(parts[0][1])
            return found
        finally:
            session.logout()

    def fileMessage(self, address: str, data: bytes, name: str = "1.smtpmx-test.localhost") -> str:
        """
        File a message straight into C{address}'s Maildir C{new/}, the way
        smtpmx's Maildir store does with C{--maildir-mode 0660} (group
        C{nogroup} from the setgid root, so Dovecot's mail user reads it):
        to fill a mailbox past its quota.

        @return: the file's path.
        """
        name_, _, domain = address.partition("@")
        home = os.path.join(self.maildirRoot, domain, name_)
        for sub in ("", "tmp", "new", "cur"):
            path = os.path.join(home, sub)
            os.makedirs(path, exist_ok=True)
            os.chmod(path, 0o2770)
        path = os.path.join(home, "new", name)
        with open(path, "wb") as f:
            f.write(data)
        os.chmod(path, 0o660)
        return path
