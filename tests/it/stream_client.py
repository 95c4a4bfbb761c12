#!/usr/bin/env python3
"""A RabbitMQ stream client (rstream) for tests/it/streams.rs: a producer or a
consumer on one stream, through warren's stream listener (or straight to a
node), saying what happened on standard output, one line each.

    stream_client.py MODE HOST PORT STREAM SECONDS

MODE:
  produce  create STREAM if missing, then send numbered messages (the body is
           the number) for SECONDS, each waited for until the broker confirms
           it: `confirm N` per confirmed message, `confirmed COUNT` at the end
  consume  read STREAM from its first offset: `got N` per message (N the
           message's number), until SECONDS have passed and nothing came for
           3 s; `received COUNT highest N` at the end (COUNT distinct numbers)

The client is rstream's stock one: load_balancer_mode=False, so after the
first connection (the "locator", to HOST:PORT) the producer connects to the
host:port the metadata gives for the stream's leader, the consumer to one of
its replicas (at random), or the leader when there is none.

Both print `connected LOCAL PEER` for each connection that carries their
publisher or subscription (LOCAL and PEER are host:port: which port the
metadata sent them to), and `closed REASON` when it ends otherwise than by
their own close (the connection lost, or a metadata update that takes the
stream away from it). They then make a new Producer / Consumer and go on
until SECONDS have passed (rstream would re-create the publisher on the next
send by itself, but its consumer does not resubscribe by default: both are
done here the same way, explicitly). A message whose send was not confirmed
is sent again with the same number (at least once); the consumer resumes at
the offset after the last one it got. At the end: `done`.
"""

import asyncio
import sys
import time

from rstream import (
    AMQPMessage,
    Consumer,
    ConsumerOffsetSpecification,
    MessageContext,
    OffsetType,
    Producer,
)
from rstream.recovery import BackOffRecoveryStrategy

USER = "guest"


def say(line):
    print(line, flush=True)


def addr(pair):
    if not pair:
        return "?"
    return f"{pair[0]}:{pair[1]}"


def endpoints(client):
    """(local, peer) of an rstream Client's socket, from its asyncio writer."""
    conn = getattr(client, "_conn", None)
    writer = getattr(conn, "_writer", None)
    if writer is None:
        return "?", "?"
    return addr(writer.get_extra_info("sockname")), addr(writer.get_extra_info("peername"))


class Lost:
    """Set by rstream's on_close_handler: the connection carrying the stream
    ended, or a metadata update moved the stream."""

    def __init__(self):
        self.event = asyncio.Event()
        self.reason = ""

    def handler(self, stream):
        async def on_close(info):
            # The locator connection's close names no stream: not ours to act on.
            if stream in (info.streams or []) and not self.event.is_set():
                self.reason = str(info.reason).replace("\n", " ")
                self.event.set()

        return on_close


async def produce(host, port, stream, seconds):
    end = time.monotonic() + seconds
    n = 0
    confirmed = 0
    while time.monotonic() < end:
        lost = Lost()
        producer = Producer(
            host,
            port,
            username=USER,
            password=USER,
            connection_name=f"stream-produce-{stream}",
            on_close_handler=lost.handler(stream),
            recovery_strategy=BackOffRecoveryStrategy(enable=False),
        )
        try:
            # Created only when missing: one declared with other arguments
            # (a test's leader locator) would make create_stream fail.
            if not await asyncio.wait_for(producer.stream_exists(stream), 10):
                await asyncio.wait_for(producer.create_stream(stream, exists_ok=True), 10)
            said = False
            while time.monotonic() < end:
                if lost.event.is_set():
                    raise ConnectionError(lost.reason)
                await asyncio.wait_for(producer.send_wait(stream, str(n).encode()), 10)
                if not said:
                    local, peer = endpoints(producer._clients.get(stream))
                    say(f"connected {local} {peer}")
                    said = True
                say(f"confirm {n}")
                confirmed += 1
                n += 1
                await asyncio.sleep(0.02)
        except Exception as e:  # any end of the connection: say it, start again
            reason = lost.reason or f"{type(e).__name__} {e}".replace("\n", " ")
            say(f"closed {reason}")
            await asyncio.sleep(0.5)
        finally:
            try:
                await asyncio.wait_for(producer.close(), 5)
            except Exception:
                pass
    say(f"confirmed {confirmed}")


async def consume(host, port, stream, seconds):
    end = time.monotonic() + seconds
    seen = set()
    next_offset = None  # None: from the first offset
    quiet_since = time.monotonic()

    async def on_message(msg: AMQPMessage, ctx: MessageContext):
        nonlocal next_offset, quiet_since
        next_offset = ctx.offset + 1
        quiet_since = time.monotonic()
        try:
            number = int(bytes(msg))
        except ValueError:
            return
        seen.add(number)
        say(f"got {number}")

    while True:
        lost = Lost()
        consumer = Consumer(
            host,
            port,
            username=USER,
            password=USER,
            connection_name=f"stream-consume-{stream}",
            on_close_handler=lost.handler(stream),
        )
        try:
            if next_offset is None:
                spec = ConsumerOffsetSpecification(OffsetType.FIRST, None)
            else:
                spec = ConsumerOffsetSpecification(OffsetType.OFFSET, next_offset)
            await asyncio.wait_for(
                consumer.subscribe(stream, on_message, offset_specification=spec), 10
            )
            local, peer = endpoints(consumer._clients.get(stream))
            say(f"connected {local} {peer}")
            while True:
                if lost.event.is_set():
                    raise ConnectionError(lost.reason)
                now = time.monotonic()
                if now > end and now - quiet_since > 3:
                    break
                await asyncio.sleep(0.1)
            break
        except Exception as e:
            reason = lost.reason or f"{type(e).__name__} {e}".replace("\n", " ")
            say(f"closed {reason}")
            if time.monotonic() > end + 30:
                break
            await asyncio.sleep(0.5)
        finally:
            try:
                await asyncio.wait_for(consumer.close(), 5)
            except Exception:
                pass
    highest = max(seen) if seen else -1
    say(f"received {len(seen)} highest {highest}")


def main():
    mode, host, port, stream, seconds = sys.argv[1:6]
    run = produce if mode == "produce" else consume
    asyncio.run(run(host, int(port), stream, float(seconds)))
    say("done")


if __name__ == "__main__":
    main()
