#!/usr/bin/env python3
"""The edge job as a person writes it by hand: Mosquitto + paho-mqtt + sqlite3.

The peer of perch's `window-sample` function in bench/ (scenario 2). Same job:

- subscribe to sensors/+/temperature on the local Mosquitto;
- parse each JSON reading; feed `temperature` (and `over_limit` when the
  reading is above --limit) into tumbling windows of --window-s per device;
- forward 1 reading in --forward-every (seq a multiple of it) into an SQLite
  outbox (WAL, synchronous=NORMAL, one transaction every
  --commit-interval-ms: the same crash-loss window as perch's default), and
  every closed window too;
- send the outbox to the upstream broker at QoS 1, at most --max-inflight
  unacknowledged, as {"id":..., "stream":..., "data":<reading>} on
  <prefix>/<stream>; delete a row only on its PUBACK.

On SIGTERM it prints one JSON line: {"processed": N, "bad": N, ...}, so the
suite can check that every event sent was processed.
"""

import argparse
import json
import queue
import signal
import sqlite3
import sys
import threading
import time

import paho.mqtt.client as mqtt


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--local-port", type=int, required=True)
    ap.add_argument("--upstream-port", type=int, required=True)
    ap.add_argument("--db", required=True)
    ap.add_argument("--limit", type=float, default=29.0)
    ap.add_argument("--forward-every", type=int, default=100)
    ap.add_argument("--window-s", type=int, default=10)
    ap.add_argument("--commit-interval-ms", type=int, default=50)
    ap.add_argument("--max-inflight", type=int, default=100)
    ap.add_argument("--prefix", default="up")
    ap.add_argument("--qos", type=int, default=0)
    args = ap.parse_args()

    incoming = queue.SimpleQueue()  # (stream, kind, payload bytes) to store
    acked = queue.SimpleQueue()  # mids the upstream acknowledged
    stats = {"processed": 0, "bad": 0, "forwarded": 0, "acked": 0}
    windows = {}  # (metric, device, window start) -> [count, min, max, sum, last]
    stop = threading.Event()
    subscribed = threading.Event()
    lock = threading.Lock()  # windows: paho's network thread and the worker

    def on_message(_client, _userdata, msg):
        try:
            reading = json.loads(msg.payload)
            temperature = float(reading["temperature"])
        except (ValueError, KeyError, TypeError):
            stats["bad"] += 1
            return
        device = reading.get("device") or msg.topic.split("/")[1]
        start = int(time.time()) // args.window_s * args.window_s
        metrics = [("temperature", temperature)]
        if temperature > args.limit:
            metrics.append(("over_limit", 1.0))
        with lock:
            for metric, value in metrics:
                w = windows.get((metric, device, start))
                if w is None:
                    windows[(metric, device, start)] = [1, value, value, value, value]
                else:
                    w[0] += 1
                    w[1] = min(w[1], value)
                    w[2] = max(w[2], value)
                    w[3] += value
                    w[4] = value
        seq = reading.get("seq")
        if isinstance(seq, int) and seq % args.forward_every == 0:
            incoming.put(("samples", "record", msg.payload))
        stats["processed"] += 1

    def on_connect(client, _userdata, _flags, reason_code, _properties):
        if reason_code.is_failure:
            print(f"edge_job.py: local broker refused us: {reason_code}", file=sys.stderr)
            return
        client.subscribe("sensors/+/temperature", qos=args.qos)

    local = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="edge-job-local")
    local.on_message = on_message
    local.on_connect = on_connect
    local.on_subscribe = lambda *_: subscribed.set()

    upstream = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="edge-job-up",
                           clean_session=False)
    upstream.max_inflight_messages_set(args.max_inflight)
    upstream.max_queued_messages_set(0)
    upstream.on_publish = lambda _c, _u, mid, _rc, _p: acked.put(mid)

    db = sqlite3.connect(args.db, isolation_level=None, check_same_thread=False)
    mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    if mode != "wal":
        sys.exit(f"edge_job.py: {args.db} is not in WAL mode ({mode})")
    db.execute("PRAGMA synchronous=NORMAL")
    # AUTOINCREMENT: ids are never reused once the outbox empties, so "sent up
    # to id N" stays true (a plain rowid restarts at 1 on an empty table).
    db.execute("CREATE TABLE IF NOT EXISTS outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, "
               "stream TEXT, kind TEXT, data BLOB)")

    def close_windows(now):
        """Moves every window that ended before `now` into the outbox."""
        current = int(now) // args.window_s * args.window_s
        with lock:
            closed = [(k, windows.pop(k)) for k in [k for k in windows if k[2] < current]]
        for key, (count, lo, hi, total, last) in closed:
            metric, device, start = key
            data = json.dumps({"metric": metric, "key": device, "start_s": start,
                               "window_s": args.window_s, "count": count, "min": lo,
                               "max": hi, "sum": total, "mean": total / count,
                               "last": last}).encode()
            incoming.put(("aggregates", "aggregate", data))

    def store_and_forward():
        inflight = {}  # mid -> outbox id
        early = set()  # mids acknowledged before we recorded them
        sent_up_to = 0  # highest outbox id published
        while not stop.is_set():
            time.sleep(args.commit_interval_ms / 1000)
            close_windows(time.time())
            rows = []
            while True:
                try:
                    rows.append(incoming.get_nowait())
                except queue.Empty:
                    break
            done = []
            while True:
                try:
                    mid = acked.get_nowait()
                except queue.Empty:
                    break
                if mid in inflight:
                    done.append(inflight.pop(mid))
                else:
                    early.add(mid)  # acked before publish() returned its mid
            db.execute("BEGIN")
            db.executemany("INSERT INTO outbox (stream, kind, data) VALUES (?, ?, ?)", rows)
            db.executemany("DELETE FROM outbox WHERE id = ?", [(i,) for i in done])
            db.execute("COMMIT")
            stats["acked"] += len(done)
            room = args.max_inflight - len(inflight)
            if room <= 0 or not upstream.is_connected():
                continue
            for rowid, stream, kind, data in db.execute(
                    "SELECT id, stream, kind, data FROM outbox WHERE id > ? ORDER BY id LIMIT ?",
                    (sent_up_to, room)):
                envelope = (b'{"id":"py-%d","stream":"%s","kind":"%s","data":' %
                            (rowid, stream.encode(), kind.encode())) + bytes(data) + b"}"
                info = upstream.publish(f"{args.prefix}/{stream}", envelope, qos=1)
                if info.mid in early:
                    early.discard(info.mid)
                    acked.put(info.mid)
                inflight[info.mid] = rowid
                sent_up_to = rowid
                stats["forwarded"] += 1

    def on_term(_signum, _frame):
        stop.set()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    upstream.connect("127.0.0.1", args.upstream_port, keepalive=60)
    upstream.loop_start()
    local.connect("127.0.0.1", args.local_port, keepalive=60)
    local.loop_start()
    worker = threading.Thread(target=store_and_forward, daemon=True)
    worker.start()
    if not subscribed.wait(10):
        sys.exit("edge_job.py: no SUBACK from the local broker within 10 s")
    print("edge_job.py ready", flush=True)
    while not stop.is_set():
        stop.wait(0.2)
    local.loop_stop()
    worker.join(timeout=5)
    upstream.loop_stop()
    print(json.dumps(stats), flush=True)


if __name__ == "__main__":
    main()
