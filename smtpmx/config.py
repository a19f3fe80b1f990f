"""
The configuration: defaults, the TOML file and the command line merged into
one frozen L{Config}, checked once at start-up.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional


@dataclass(frozen=True)
class Config:
    """
    Every option of SPEC section 2, checked and normalised.
    """

    listen: tuple[str, ...] = ("tcp:2525:interface=127.0.0.1",)
    hostname: str = "localhost"
    domains: tuple[str, ...] = ("localhost",)  # lower-cased
    maildirRoot: str = "Maildir"  # absolute after loading
    validators: tuple[str, ...] = ("mailbox",)
    recipientDelimiter: str = "+"  # "" for none
    relayNetworks: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    relayDomains: tuple[str, ...] = ()  # lower-cased
    routes: tuple[tuple[str, str, int], ...] = ()  # (domain or "*", host, port)
    dnsServer: Optional[tuple[str, int]] = None
    relayPort: int = 25
    queueDir: str = "queue"  # absolute after loading
    retrySchedule: tuple[int, ...] = (60, 300, 900, 1800, 3600)
    maxQueueAge: int = 432000
    maxMessageSize: int = 26214400
    maxRecipients: int = 100
    maxConnections: int = 500
    maxConnectionsPerIp: int = 20
    commandTimeout: float = 300.0
    dataTimeout: float = 600.0
    maxHops: int = 50
    tlsCertificate: Optional[str] = None
    tlsKey: Optional[str] = None
    relayTls: str = "may"
    caCerts: Optional[str] = None
