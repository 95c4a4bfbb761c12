#!/usr/bin/env python3
"""`scripts/demo failover`: a node dies under a confirmed publisher; nothing is lost.

Through warren, three publishers (publisher confirms, one message at a time) and three
consumers (manual acks) use one durable queue declared the way an application
declares it, with no `x-queue-type`: the cluster's setup makes it replicated (a
classic queue mirrored by the `ha-allqueue` policy on 3.x, a quorum queue through
the vhost's default queue type on 4.x). Their six connections spread round-robin
over the three nodes, so the killed node has clients.

After a few seconds the node holding the queue's leader (the management API's
`node`, or `leader` on a quorum queue) is killed with `kill -9` of its Erlang VM;
publishing and consuming go on, clients reconnect through warren. Then the
publishers stop, the node is started again while the consumers drain the queue, and the
tally is printed: confirmed, consumed, lost (confirmed but never consumed),
duplicates, and how long clients took to reconnect. Exit 1 if a confirmed message
was lost. Bounded: 17 s of traffic, the node's restart (10-25 s here), at most 12 s
more of draining.

Called by scripts/demo with the node set's names, pid files and management URLs.
"""

import argparse
import base64
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

import pika
import pika.exceptions

QUEUE = "warren-demo-failover"
WARMUP = 5.0  # s of traffic before the kill
AFTER_KILL = 12.0  # s of traffic after it
DRAIN = 12.0  # at most, for the consumers to get every confirmed message
SETTLED = 20.0  # s a node must have been up: rise x interval + slow start + margin
PUBLISHERS = 3
CONSUMERS = 3


def say(msg):
    print(f"failover: {msg}", flush=True)


class Mgmt:
    """The management API of the nodes, asked in turn until one answers."""

    def __init__(self, urls, user="guest", password="guest"):
        self.urls = urls
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        self.auth = {"Authorization": f"Basic {token}"}

    def call(self, method, path, avoid=None, timeout=3.0):
        last = None
        for url in self.urls:
            if avoid and url == avoid:
                continue
            req = urllib.request.Request(url + path, method=method, headers=self.auth)
            try:
                with urllib.request.urlopen(req, timeout=timeout) as r:
                    body = r.read()
                    return json.loads(body) if body else None
            except urllib.error.HTTPError as e:
                if e.code == 404:
                    return None
                last = e
            except OSError as e:
                last = e
        raise RuntimeError(f"no management API answered {method} {path}: {last}")

    def queue(self, avoid=None):
        return self.call("GET", f"/api/queues/%2F/{QUEUE}", avoid=avoid)


def leader_of(q):
    """The node of the queue's leader: `leader` on quorum queues, `node` otherwise."""
    if not q:
        return None
    return q.get("leader") or q.get("node")


class Tally:
    def __init__(self):
        self.lock = threading.Lock()
        self.confirmed = set()
        self.in_doubt = 0  # published, connection lost before the confirm
        self.consumed = set()
        self.deliveries = 0
        self.reconnects = []  # s from losing a connection to a working one
        self.longest_confirm_gap = 0.0  # s a publisher went without a confirm
        self.errors = []

    def reconnected(self, lost_at, who, error):
        took = time.monotonic() - lost_at
        with self.lock:
            self.reconnects.append(took)
        say(f"{who} reconnected through warren in {took:.2f} s (lost: {error})")


def connect(url, stop):
    """A connection through warren, retried every 100 ms until it works or `stop`."""
    params = pika.URLParameters(url)
    while not stop.is_set():
        try:
            return pika.BlockingConnection(params)
        except pika.exceptions.AMQPError:
            time.sleep(0.1)
        except OSError:
            time.sleep(0.1)
    return None


def close_quietly(conn):
    try:
        if conn is not None and conn.is_open:
            conn.close()
    except Exception:  # noqa: BLE001 - the connection is dead already
        pass


def publisher(n, url, tally, stop, ready):
    who = f"publisher {n}"
    seq = 0
    lost_at = None
    error = None
    last_confirm = None
    while not stop.is_set():
        conn = connect(url, stop)
        if conn is None:
            return
        try:
            ch = conn.channel()
            ch.confirm_delivery()
            if lost_at is not None:
                tally.reconnected(lost_at, who, error)
                lost_at = None
            ready.set()
            while not stop.is_set():
                seq += 1
                mid = f"p{n}-{seq}"
                try:
                    ch.basic_publish(
                        exchange="",
                        routing_key=QUEUE,
                        body=mid.encode(),
                        properties=pika.BasicProperties(delivery_mode=2, message_id=mid),
                        mandatory=True,
                    )
                except (pika.exceptions.UnroutableError, pika.exceptions.NackError):
                    continue  # not confirmed: the broker said so, no doubt
                except Exception:
                    with tally.lock:
                        tally.in_doubt += 1
                    raise
                now = time.monotonic()
                with tally.lock:
                    tally.confirmed.add(mid)
                    if last_confirm is not None:
                        tally.longest_confirm_gap = max(tally.longest_confirm_gap, now - last_confirm)
                last_confirm = now
                time.sleep(0.005)
        except Exception as e:  # noqa: BLE001 - any failure: reconnect
            if stop.is_set():
                break
            lost_at, error = time.monotonic(), type(e).__name__
        finally:
            close_quietly(conn)


def consumer(n, url, tally, stop, ready):
    who = f"consumer {n}"
    lost_at = None
    error = None

    def on_message(ch, method, props, body):
        mid = props.message_id or body.decode()
        with tally.lock:
            tally.deliveries += 1
            tally.consumed.add(mid)
        ch.basic_ack(method.delivery_tag)

    while not stop.is_set():
        conn = connect(url, stop)
        if conn is None:
            return
        try:
            ch = conn.channel()
            ch.basic_qos(prefetch_count=50)
            ch.basic_consume(QUEUE, on_message)
            if lost_at is not None:
                tally.reconnected(lost_at, who, error)
                lost_at = None
            ready.set()
            while not stop.is_set():
                conn.process_data_events(time_limit=0.2)
                if not ch.consumer_tags:  # cancelled by the broker (queue failover)
                    ch.basic_consume(QUEUE, on_message)
        except Exception as e:  # noqa: BLE001 - any failure: reconnect
            if stop.is_set():
                break
            lost_at, error = time.monotonic(), type(e).__name__
        finally:
            close_quietly(conn)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True, help="AMQP URL of warren")
    ap.add_argument("--version", required=True, help="RabbitMQ version of the nodes")
    ap.add_argument("--admin", required=True, help="warren's admin API URL")
    ap.add_argument(
        "--node",
        action="append",
        required=True,
        help="INDEX,NODE_NAME,PID_FILE,MANAGEMENT_URL (one per node)",
    )
    ap.add_argument("--restart", required=True, help="command that starts node $WARREN_NODES again")
    args = ap.parse_args()
    started = time.monotonic()

    nodes = {}
    for spec in args.node:
        idx, name, pidfile, mgmt = spec.split(",", 3)
        nodes[name] = {"index": idx, "pidfile": pidfile, "mgmt": mgmt}
    mgmt = Mgmt([n["mgmt"] for n in nodes.values()])
    url = args.url + ("&" if "?" in args.url else "?") + urllib.parse.urlencode(
        {"heartbeat": 5, "connection_attempts": 1, "socket_timeout": 3, "blocked_connection_timeout": 10}
    )

    # Every node in warren's rotation at full weight, so that the clients spread over
    # all three: up in warren, and up long enough for its slow start (10 s by default,
    # after rise x interval) to be over, when a node was just started again.
    deadline = time.monotonic() + 40
    said = False
    while True:
        try:
            with urllib.request.urlopen(args.admin + "/api/backends", timeout=3) as r:
                states = {b["name"]: b["state"] for b in json.loads(r.read())}
        except OSError as e:
            states = {"warren": str(e)}
        uptime = min((n.get("uptime") or 0) / 1000 for n in mgmt.call("GET", "/api/nodes"))
        wait = max(0.0, SETTLED - uptime)
        if all(v == "up" for v in states.values()) and wait == 0:
            break
        if time.monotonic() > deadline:
            say(f"warren's backends: {states}; going on")
            break
        if not said:
            say(
                f"waiting up to {max(wait, 1.0):.0f} s for every node to be up in warren at full weight "
                f"(a node started {uptime:.0f} s ago; warren's slow start; backends {states})"
            )
            said = True
        time.sleep(max(1.0, min(wait, 5.0)))

    # A fresh queue, declared as an application declares it: durable, no x-queue-type.
    mgmt.call("DELETE", f"/api/queues/%2F/{QUEUE}")
    conn = pika.BlockingConnection(pika.URLParameters(url))
    conn.channel().queue_declare(QUEUE, durable=True)
    conn.close()
    q = None
    for _ in range(50):
        q = mgmt.queue()
        if args.version.startswith("3."):
            if q and len(q.get("synchronised_slave_nodes") or []) >= len(nodes) - 1:
                break
        elif q and leader_of(q) and len(q.get("online") or q.get("members") or []) >= len(nodes):
            break
        time.sleep(0.2)
    leader = leader_of(q)
    if leader not in nodes:
        say(f"cannot tell the node of the queue's leader from the management API: {q}")
        return 2
    if q.get("type") == "quorum":
        say(f"queue {QUEUE}: quorum queue (the vhost's default), leader {leader}, members {', '.join(q.get('members') or [])}")
    else:
        mirrors = ", ".join(q.get("synchronised_slave_nodes") or []) or "none"
        # `policy` comes with the queue's statistics, a few seconds late on 3.x.
        policy = f" (policy {q['policy']})" if q.get("policy") else ""
        say(f"queue {QUEUE}: classic mirrored queue{policy}, master {leader}, synchronised mirrors {mirrors}")

    tally = Tally()
    stop_pub, stop_con = threading.Event(), threading.Event()
    threads = []
    for n in range(1, PUBLISHERS + 1):
        ready = threading.Event()
        t = threading.Thread(target=publisher, args=(n, url, tally, stop_pub, ready), daemon=True)
        t.start()
        threads.append((t, ready))
    for n in range(1, CONSUMERS + 1):
        ready = threading.Event()
        t = threading.Thread(target=consumer, args=(n, url, tally, stop_con, ready), daemon=True)
        t.start()
        threads.append((t, ready))
    for _, ready in threads:
        ready.wait(10)
    say(f"{PUBLISHERS} publishers (confirms) and {CONSUMERS} consumers (manual acks) running through {args.url}")
    time.sleep(WARMUP)

    # Kill the leader's node: its Erlang VM, as a crash would.
    victim = nodes[leader]
    pid = int(open(victim["pidfile"]).read().strip())
    with tally.lock:
        before = len(tally.confirmed)
    say(f"kill -9 {pid}: {leader}, the node of the queue's leader ({before} messages confirmed so far)")
    os.kill(pid, signal.SIGKILL)
    killed_at = time.monotonic()

    # The new leader, as the surviving nodes report it.
    new_leader, new_leader_after = None, None
    while time.monotonic() - killed_at < AFTER_KILL:
        if new_leader is None:
            try:
                q = mgmt.queue(avoid=victim["mgmt"])
                cand = leader_of(q)
                if cand and cand != leader and cand in nodes:
                    new_leader, new_leader_after = cand, time.monotonic() - killed_at
                    say(f"new leader: {new_leader}, {new_leader_after:.1f} s after the kill")
            except RuntimeError:
                pass
        time.sleep(0.25)

    stop_pub.set()

    # Start the node again (scripts/local-cluster start, for that node only) while
    # the consumers drain the queue: a quorum queue keeps the messages a consumer on
    # the dead node had not acked until that node is back (it cannot tell a dead
    # node from a cut-off one), then delivers them again.
    say(f"starting {leader} again")
    restart = {}

    def start_again():
        env = dict(os.environ, WARREN_NODES=victim["index"])
        t0 = time.monotonic()
        try:
            r = subprocess.run(args.restart, shell=True, env=env, timeout=120, stdout=subprocess.DEVNULL)
            restart["ok"] = r.returncode == 0
            restart["msg"] = (
                f"{leader} is back in {time.monotonic() - t0:.1f} s"
                if r.returncode == 0
                else f"restarting {leader} failed (exit {r.returncode}): {args.restart}"
            )
        except subprocess.TimeoutExpired:
            restart["ok"] = False
            restart["msg"] = f"{leader} did not come back within 120 s"
        with tally.lock:
            restart["missing"] = tally.confirmed - tally.consumed
        restart["at"] = time.monotonic()

    restarter = threading.Thread(target=start_again, daemon=True)
    restarter.start()
    while True:
        with tally.lock:
            if tally.confirmed <= tally.consumed and "at" in restart:
                break
        if "at" in restart and time.monotonic() - restart["at"] > DRAIN:
            break
        time.sleep(0.2)
    say(restart["msg"])
    stop_con.set()
    for t, _ in threads:
        t.join(5)

    with tally.lock:
        confirmed = set(tally.confirmed)
        consumed = set(tally.consumed)
        lost = confirmed - consumed
        dups = tally.deliveries - len(consumed)
        reconnects = sorted(tally.reconnects)
        in_doubt = tally.in_doubt
        gap = tally.longest_confirm_gap
    held = len(restart["missing"] & consumed)
    took = time.monotonic() - started

    print()
    print(f"RabbitMQ {args.version}, queue leader {leader} killed with kill -9 after {WARMUP:.0f} s of traffic:")
    print(f"  confirmed   {len(confirmed)}")
    print(f"  consumed    {len(consumed)}   (distinct messages)")
    print(f"  lost        {len(lost)}   (confirmed, never consumed)")
    print(f"  duplicates  {dups}   (redelivered after a lost ack: at-least-once)")
    print(f"  in doubt    {in_doubt}   (published, connection lost before the confirm: may or may not arrive)")
    if reconnects:
        print(
            f"  reconnects  {len(reconnects)}: median {statistics.median(reconnects):.2f} s, "
            f"max {reconnects[-1]:.2f} s (connection lost -> working again, through warren)"
        )
    else:
        print("  reconnects  0 (no client was connected through the killed node)")
    print(f"  publishers' longest wait between two confirms: {gap:.2f} s")
    if new_leader:
        print(f"  new leader  {new_leader}, seen {new_leader_after:.1f} s after the kill")
    if held:
        print(f"  held back   {held}   (unacked on the dead node: delivered again once it was back)")
    print(f"  took        {took:.0f} s (traffic, restart of {leader}, drain)")
    if lost:
        print(f"LOST {len(lost)} confirmed messages, e.g. {sorted(lost)[:10]}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
