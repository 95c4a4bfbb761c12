#!/usr/bin/env python3
"""An MQTT client (paho-mqtt, MQTT 3.1.1) for tests/it/listeners.rs, through
warren's MQTT listener (or straight to a node), saying what happened on
standard output, one line each.

    mqtt_client.py HOST PORT TOPIC N [HOLD_SECONDS]

Connects as guest with the client id `TOPIC-PID` (RabbitMQ lets one
connection per client id live in the cluster, so each process has its own;
the management API shows it as the connection's client_properties.client_id),
subscribes to TOPIC at QoS 1, publishes N numbered QoS 1 messages to it, each
waited for until the broker acknowledges it (PUBACK), and checks that every
one comes back: `ok N`, else `missing M1 M2 ...` and exit status 1.

With HOLD_SECONDS, it then stays connected that long: when the connection
ends (`disconnected RC`), paho reconnects by itself (after 1 s) and the
client publishes one more message to check the new connection
(`roundtrip N`). Each connection prints `connected LOCAL PEER` (host:port).
At the end: `done`.
"""

import os
import sys
import threading
import time

import paho.mqtt.client as mqtt


def say(line):
    print(line, flush=True)


def addr(pair):
    return f"{pair[0]}:{pair[1]}"


def main():
    host, port, topic, n = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    hold = float(sys.argv[5]) if len(sys.argv) > 5 else 0.0
    got = set()
    lock = threading.Condition()
    connected = threading.Event()
    subscribed = threading.Event()
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=f"{topic}-{os.getpid()}",
        protocol=mqtt.MQTTv311,
    )
    client.username_pw_set("guest", "guest")
    client.reconnect_delay_set(min_delay=1, max_delay=2)

    def on_connect(c, _userdata, _flags, reason_code, _props):
        if reason_code.is_failure:
            say(f"refused {reason_code}")
            return
        sock = c.socket()
        say(f"connected {addr(sock.getsockname())} {addr(sock.getpeername())}")
        # Subscribed again on every connection (a clean session forgets it).
        subscribed.clear()
        c.subscribe(topic, qos=1)
        connected.set()

    def on_disconnect(_c, _userdata, _flags, reason_code, _props):
        connected.clear()
        say(f"disconnected {reason_code}")

    def on_message(_c, _userdata, msg):
        with lock:
            try:
                got.add(int(msg.payload))
            except ValueError:
                pass
            lock.notify_all()

    def on_subscribe(_c, _userdata, _mid, _codes, _props):
        subscribed.set()

    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
    client.on_message = on_message
    client.on_subscribe = on_subscribe
    client.connect(host, port, keepalive=30)
    client.loop_start()

    def roundtrip(numbers, within=15.0):
        """Publishes `numbers` at QoS 1; the ones that did not come back."""
        for i in numbers:
            info = client.publish(topic, str(i), qos=1)
            info.wait_for_publish(timeout=10)
        deadline = time.monotonic() + within
        with lock:
            while not set(numbers) <= got and time.monotonic() < deadline:
                lock.wait(0.2)
            return sorted(set(numbers) - got)

    if not (connected.wait(15) and subscribed.wait(15)):
        say("never connected")
        sys.exit(1)
    missing = roundtrip(list(range(n)))
    if missing:
        say("missing " + " ".join(map(str, missing)))
        client.loop_stop()
        sys.exit(1)
    say(f"ok {n}")

    next_number = n
    end = time.monotonic() + hold
    was_connected = True
    while time.monotonic() < end:
        now_connected = connected.is_set()
        if now_connected and not was_connected:
            subscribed.wait(10)
            if roundtrip([next_number]):
                say(f"missing {next_number}")
            else:
                say(f"roundtrip {next_number}")
            next_number += 1
        was_connected = now_connected
        time.sleep(0.1)
    client.disconnect()
    client.loop_stop()
    say("done")


if __name__ == "__main__":
    main()
