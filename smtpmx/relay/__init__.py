"""
Relaying mail to other hosts (docs/relay.rst): the durable queue, the next
hop, the client, the retry schedule and the service that drives them.
"""
