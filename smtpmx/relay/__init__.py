"""
Relaying mail to other hosts (SPEC section 6): the durable queue, the next
hop, the client, the retry schedule and the service that drives them.
"""
