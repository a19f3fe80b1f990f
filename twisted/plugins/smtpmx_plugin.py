"""
The twistd dropin of smtpmx: C{twistd smtpmx}.  It names the tap module by
string, so listing plugins imports nothing of smtpmx.
"""

from twisted.application.service import ServiceMaker

smtpmx = ServiceMaker(
    "smtpmx",
    "smtpmx.tap",
    "A mail exchanger (SMTP MX) for a small domain: Maildir delivery and relay.",
    "smtpmx",
)
