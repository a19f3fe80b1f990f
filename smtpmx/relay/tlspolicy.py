"""
The relay client's TLS policy towards a next hop (RFC 3207), the values
of the C{relay-tls} option (docs/options.rst, docs/relay.rst).
"""

import enum


class TLSPolicy(enum.Enum):
    """
    Whether the relay client starts TLS, and whether it checks the next
    hop's certificate.
    """

    NONE = "none"  # never STARTTLS
    MAY = "may"  # STARTTLS when offered; any certificate
    VERIFY = "verify"  # STARTTLS required; a certificate valid for the next hop
