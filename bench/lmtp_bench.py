"""
What LMTP delivery costs next to the Maildir store, in one run
(docs/relay.rst): N messages handed over by the relay client's LMTP mode
(connections reused through a L{SessionPool}, C at a time) to the recording
sink in LMTP mode run as a subprocess (C{python -m tests.sink --lmtp}, which
fsyncs its record of each transaction before its replies, as an LMTP server
storing the message does), against the same N messages filed by the Maildir
store's C{deliverBytes} (write, fsync, rename), C at a time in the thread
pool::

    python bench/lmtp_bench.py [--messages 2000] [--concurrency 10] [--size 2048]

It prints messages per second for both.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet import reactor  # noqa: E402
from twisted.internet.defer import Deferred, DeferredSemaphore, gatherResults  # noqa: E402
from twisted.internet.threads import deferToThreadPool  # noqa: E402

from smtpmx.delivery.maildir import deliverBytes  # noqa: E402
from smtpmx.relay.nexthop import NextHop  # noqa: E402
from smtpmx.relay.pool import SessionPool  # noqa: E402
from smtpmx.relay.request import DeliveryRequest, Disposition  # noqa: E402
from smtpmx.relay.transaction import deliver  # noqa: E402
from tests.sink import RunningSink  # noqa: E402


def runBlocking(f, *args, **kwargs) -> Deferred:
    """
    Run C{f} in the reactor's thread pool, as the server does.
    """
    return deferToThreadPool(reactor, reactor.getThreadPool(), f, *args, **kwargs)


async def viaLmtp(endpoint: str, messageFile: str, count: int, concurrency: int) -> float:
    """
    Hand C{count} messages to the LMTP server at C{endpoint}.

    @return: messages per second.
    """
    pool = SessionPool(reactor)
    limit = DeferredSemaphore(concurrency)
    size = os.path.getsize(messageFile)

    async def one(n: int) -> None:
        """
        One message, one recipient; it must be delivered.
        """
        request = DeliveryRequest(
            NextHop.lmtp(endpoint), "mx.example.org", "sender@client.example", (f"user{n % 10}@example.org",),
            messageFile, size, "none", protocol="lmtp",
        )
        result = await deliver(request, reactor=reactor, runBlocking=runBlocking, pool=pool)
        [r] = result.recipients.values()
        assert r.disposition is Disposition.DELIVERED, r

    started = time.monotonic()
    await gatherResults([limit.run(lambda n=n: Deferred.fromCoroutine(one(n))) for n in range(count)])
    elapsed = time.monotonic() - started
    await pool.close()
    return count / elapsed


async def intoMaildir(root: str, data: bytes, count: int, concurrency: int) -> float:
    """
    File C{count} messages in Maildirs under C{root}, as the store does.

    @return: messages per second.
    """
    limit = DeferredSemaphore(concurrency)
    started = time.monotonic()
    await gatherResults([
        limit.run(runBlocking, deliverBytes, os.path.join(root, "example.org", f"user{n % 10}"), data)
        for n in range(count)
    ])
    return count / (time.monotonic() - started)


async def bench(options) -> None:
    """
    Both measurements, one after the other, in one run; printed.
    """
    with tempfile.TemporaryDirectory() as directory:
        data = b"Received: from client.example\nSubject: bench\n\n" + b"x" * 75 + b"\n"
        data += (b"y" * 75 + b"\n") * max(0, options.size // 76 - 1)
        messageFile = os.path.join(directory, "message")
        with open(messageFile, "wb") as f:
            f.write(data)
        sink = RunningSink(directory, "127.0.0.3", 0, ["--lmtp"])
        sink.launch()
        try:
            endpoint = f"tcp:{sink.host}:{sink.port}"
            lmtp = await viaLmtp(endpoint, messageFile, options.messages, options.concurrency)
            maildir = await intoMaildir(os.path.join(directory, "Maildir"), data, options.messages, options.concurrency)
        finally:
            sink.stop()
    print(f"{options.messages} messages of {len(data)} bytes, {options.concurrency} at a time")
    print(f"LMTP into the fake server ({endpoint.split(':')[0]}): {lmtp:8.1f} msg/s")
    print(f"Maildir store (deliverBytes):          {maildir:8.1f} msg/s")


def main() -> None:
    """
    The command line.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--size", type=int, default=2048)
    options = parser.parse_args()
    failures = []

    def done(result) -> None:
        """
        Stop the reactor, keeping a failure to report.
        """
        if not isinstance(result, type(None)):
            failures.append(result)
        reactor.stop()

    reactor.callWhenRunning(lambda: Deferred.fromCoroutine(bench(options)).addBoth(done))
    reactor.run()
    if failures:
        failures[0].raiseException()


if __name__ == "__main__":
    main()
