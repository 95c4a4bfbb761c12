#!/usr/bin/env python3
"""An AMQP 1.0 client (python-qpid-proton, blocking API) for tests/it/amqp10.rs:
connections through warren that reconnect when they are closed or lost, saying
what happened on standard output, one line each.

    amqp10_client.py MODE URL ADDRESS SECONDS

MODE:
  send     send numbered durable messages to ADDRESS for SECONDS, each waited
           for until the broker settles it; `accepted N` once it accepted N
  receive  receive from ADDRESS and accept (`received N`) until SECONDS have
           passed and nothing came for 3 s

Both print `connected` on each connection, and on a connection that ends
otherwise than by their own close `closed CONDITION TEXT` (CONDITION the AMQP
error condition of the peer's `close`, `none` without one, `lost` for a
connection that ended without a `close`); they then connect again until
SECONDS have passed. A message whose send did not end accepted is sent again
(at least once). At the end: `done`.
"""

import sys
import time

from proton import Message, Timeout
from proton.utils import BlockingConnection, ConnectionClosed, LinkDetached


def closed_line(e):
    if isinstance(e, (ConnectionClosed, LinkDetached)):
        condition = getattr(e, "condition", None) or "none"
    else:
        condition = "lost"
    text = str(e).replace("\n", " ")
    return f"closed {condition} {text}"


def connect(url):
    conn = BlockingConnection(url, timeout=10, allowed_mechs="PLAIN")
    print("connected", flush=True)
    return conn


def send(url, address, seconds):
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end:
        conn = None
        try:
            conn = connect(url)
            sender = conn.create_sender(address)
            while time.monotonic() < end:
                sender.send(Message(body=str(n), durable=True), timeout=10)
                print(f"accepted {n}", flush=True)
                n += 1
                time.sleep(0.02)
            conn.close()
        except Exception as e:  # any end of a connection: say it, connect again
            print(closed_line(e), flush=True)
            try:
                if conn is not None:
                    conn.close()
            except Exception:
                pass
            time.sleep(0.2)


def receive(url, address, seconds):
    end = time.monotonic() + seconds
    quiet_since = time.monotonic()
    while True:
        conn = None
        try:
            conn = connect(url)
            receiver = conn.create_receiver(address, credit=20)
            while True:
                if time.monotonic() > end and time.monotonic() - quiet_since > 3:
                    conn.close()
                    return
                try:
                    msg = receiver.receive(timeout=0.5)
                except Timeout:
                    continue
                receiver.accept()
                quiet_since = time.monotonic()
                print(f"received {msg.body}", flush=True)
        except Exception as e:
            print(closed_line(e), flush=True)
            try:
                if conn is not None:
                    conn.close()
            except Exception:
                pass
            if time.monotonic() > end + 30:
                return
            time.sleep(0.2)


def main():
    mode, url, address, seconds = sys.argv[1:5]
    if mode == "send":
        send(url, address, float(seconds))
    else:
        receive(url, address, float(seconds))
    print("done", flush=True)


if __name__ == "__main__":
    main()
