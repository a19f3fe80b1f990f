"""
Local delivery backends: where a message for one of our own domains is
filed.
"""
