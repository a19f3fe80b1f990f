"""
Sender authentication (docs/authentication.rst): SPF (RFC 7208), DKIM
(RFC 6376), DMARC (RFC 7489) and ARC (RFC 8617) verdicts on mail from
untrusted clients, recorded in one C{Authentication-Results:} field
(RFC 8601) and, for DMARC, enforced.
"""
