#!/usr/bin/env python3
"""A STOMP client (stomp.py, STOMP 1.2) for tests/it/listeners.rs, through
warren's STOMP listener (or straight to a node), saying what happened on
standard output, one line each.

    stomp_client.py HOST PORT QUEUE N [HOLD_SECONDS]

Connects as guest (`connected LOCAL PEER`, host:port), subscribes to
/queue/QUEUE (RabbitMQ declares it: durable, not auto-deleted) with
client-individual acks, sends N numbered messages to it, each waited for
until the broker's RECEIPT, and checks that every one comes back (each
acked): `ok N`, else `missing M1 M2 ...` and exit status 1. With
HOLD_SECONDS it then keeps the connection that long (`disconnected` if the
other side closes it meanwhile). At the end, having unsubscribed and
disconnected: `done`.
"""

import sys
import threading
import time

import stomp


def say(line):
    print(line, flush=True)


def addr(pair):
    return f"{pair[0]}:{pair[1]}"


class Listener(stomp.ConnectionListener):
    def __init__(self):
        self.cond = threading.Condition()
        self.got = set()
        self.receipts = set()
        self.conn = None

    def on_message(self, frame):
        with self.cond:
            try:
                self.got.add(int(frame.body))
            except ValueError:
                pass
            self.cond.notify_all()
        # STOMP 1.2 acks the ack header (RabbitMQ: the same as message-id).
        self.conn.ack(frame.headers.get("ack", frame.headers["message-id"]))

    def on_receipt(self, frame):
        with self.cond:
            self.receipts.add(frame.headers.get("receipt-id"))
            self.cond.notify_all()

    def on_error(self, frame):
        say("error " + " ".join(f"{k}={v}" for k, v in frame.headers.items()))

    def on_disconnected(self):
        say("disconnected")

    def wait(self, predicate, within):
        deadline = time.monotonic() + within
        with self.cond:
            while not predicate() and time.monotonic() < deadline:
                self.cond.wait(0.2)
            return predicate()


def main():
    host, port, queue, n = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    hold = float(sys.argv[5]) if len(sys.argv) > 5 else 0.0
    destination = f"/queue/{queue}"
    conn = stomp.Connection12([(host, port)], heartbeats=(0, 0), reconnect_attempts_max=1, vhost="/")
    listener = Listener()
    listener.conn = conn
    conn.set_listener("test", listener)
    conn.connect("guest", "guest", wait=True)
    sock = conn.transport.socket
    say(f"connected {addr(sock.getsockname())} {addr(sock.getpeername())}")
    conn.subscribe(destination, id="1", ack="client-individual", receipt="subscribed")
    if not listener.wait(lambda: "subscribed" in listener.receipts, 10):
        say("never subscribed")
        sys.exit(1)
    for i in range(n):
        conn.send(destination, str(i), receipt=f"sent-{i}", headers={"persistent": "true"})
        if not listener.wait(lambda i=i: f"sent-{i}" in listener.receipts, 10):
            say(f"no receipt for {i}")
            sys.exit(1)
    want = set(range(n))
    if not listener.wait(lambda: want <= listener.got, 15):
        say("missing " + " ".join(map(str, sorted(want - listener.got))))
        sys.exit(1)
    say(f"ok {n}")
    end = time.monotonic() + hold
    while time.monotonic() < end and conn.is_connected():
        time.sleep(0.1)
    if conn.is_connected():
        conn.unsubscribe("1")
        conn.disconnect(receipt="bye")
    say("done")


if __name__ == "__main__":
    main()
