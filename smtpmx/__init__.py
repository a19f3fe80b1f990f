"""
smtpmx: a mail exchanger for a small domain, on Twisted.

It receives mail over SMTP (RFC 5321), files it into Maildirs for its own
domains and, for trusted clients, relays it onwards.
"""

__version__ = "0.1.0"
