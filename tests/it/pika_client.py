#!/usr/bin/env python3
"""A pika client for tests/it/clients.rs: one connection through warren, driven
by its arguments, saying what happened on standard output, one line each.

    pika_client.py MODE HOST PORT VHOST USER PASSWORD HEARTBEAT NAME [SECONDS]

MODE:
  connect  connect, print `connected` (or `error CODE TEXT`), close at once
  hold     connect, print `connected`, keep the connection (heartbeats
           included) for SECONDS, close, print `closed`
  publish  connect, print `connected`, publish a small message to the default
           exchange every 0.2 s for SECONDS (printing `published N`), close

A connection that fails or is closed by the broker prints `error CODE TEXT`
(CODE 0 when there is no AMQP reply code) and exits 0: the test reads it.
"""

import re
import sys
import time

import pika
import pika.exceptions


def params(host, port, vhost, user, password, heartbeat, name):
    return pika.ConnectionParameters(
        host=host,
        port=int(port),
        virtual_host=vhost,
        credentials=pika.PlainCredentials(user, password),
        heartbeat=int(heartbeat),
        connection_attempts=1,
        client_properties={"connection_name": name},
    )


def closed_by_broker(e):
    """(code, text) of a broker's connection.close inside a pika exception
    (pika wraps a close during the handshake into another exception, as text)."""
    for x in (e, *getattr(e, "args", ())):
        if isinstance(x, pika.exceptions.ConnectionClosed):
            return x.reply_code, x.reply_text
        m = re.search(r"\((\d+)\) '(.*)'", str(x))
        if m:
            return int(m.group(1)), m.group(2)
    return 0, repr(e)


def main():
    mode, host, port, vhost, user, password, heartbeat, name = sys.argv[1:9]
    seconds = float(sys.argv[9]) if len(sys.argv) > 9 else 0.0
    try:
        conn = pika.BlockingConnection(params(host, port, vhost, user, password, heartbeat, name))
        print("connected", flush=True)
        if mode == "hold":
            conn.sleep(seconds)
        elif mode == "publish":
            ch = conn.channel()
            end = time.monotonic() + seconds
            n = 0
            while time.monotonic() < end:
                ch.basic_publish("", "warren-test-nowhere", b"x")
                n += 1
                print(f"published {n}", flush=True)
                conn.sleep(0.2)
        conn.close()
        print("closed", flush=True)
    except pika.exceptions.AMQPError as e:
        code, text = closed_by_broker(e)
        print(f"error {code} {text}", flush=True)


if __name__ == "__main__":
    main()
