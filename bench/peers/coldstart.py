#!/usr/bin/env python3
"""Cold start: from a deploy action to the edge job's first output upstream.

(--sub-port/--sub-topic time a local output instead, e.g. perch's
threshold-alert publishing on alerts/#: no store commit on that path.)

Scenario 3 of bench/run.sh. Subscribes to --sub-topic on the upstream broker,
connects a sensor to the local broker, then starts the action (the command
after `--`: `perch fn deploy ...`, a new `python3 edge_job.py ...`, or a
`curl` POST of a Node-RED flow) and publishes one reading with seq 0 every
--every-ms to sensors/cold/temperature until the first sample arrives
upstream. Readings sent before the job listens are simply not seen (QoS 0),
as a real sensor's would be.

Prints one JSON line: first_output_ms (action start -> first upstream
message), action_ms (action start -> the command's exit; null for a command
that keeps running, such as a new edge_job.py, which is stopped at the end).
Exits 1, saying why, when nothing arrives within --timeout-s.
"""

import argparse
import json
import subprocess
import sys
import threading
import time

import paho.mqtt.client as mqtt


def connect(client, port, what):
    try:
        client.connect("127.0.0.1", port, keepalive=60)
    except OSError as e:
        sys.exit(f"coldstart.py: cannot connect to {what} on 127.0.0.1:{port} ({e}): is it running?")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--local-port", type=int, required=True)
    ap.add_argument("--upstream-port", type=int, required=True)
    ap.add_argument("--sub-topic", default="up/samples")
    ap.add_argument("--sub-port", type=int,
                    help="where to wait for the output (default: --upstream-port); the local "
                         "broker's port to time a function that publishes locally")
    ap.add_argument("--every-ms", type=float, default=2.0)
    ap.add_argument("--timeout-s", type=float, default=30.0)
    ap.add_argument("--label", default="")
    ap.add_argument("command", nargs=argparse.REMAINDER)
    args = ap.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        sys.exit("coldstart.py: give the deploy action after --, e.g. -- perch fn deploy ...")

    arrived = threading.Event()
    subscribed = threading.Event()
    first = {}

    def on_message(_c, _u, _msg):
        if not arrived.is_set():
            first["t"] = time.monotonic()
            arrived.set()

    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="coldstart-sub")
    sub.on_message = on_message
    sub.on_connect = lambda c, *_: c.subscribe(args.sub_topic, qos=1)
    sub.on_subscribe = lambda *_: subscribed.set()
    sub_port = args.sub_port or args.upstream_port
    connect(sub, sub_port, "the broker to watch for the output")
    sub.loop_start()
    if not subscribed.wait(10):
        sys.exit(f"coldstart.py: no SUBACK from the broker on port {sub_port} within 10 s")
    sensor = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="coldstart-sensor")
    connect(sensor, args.local_port, "the local broker")
    sensor.loop_start()
    reading = json.dumps({"device": "cold", "seq": 0, "ts_us": 0, "temperature": 30.5}).encode()
    time.sleep(0.2)  # the sensor's CONNECT done before the clock starts

    t0 = time.monotonic()
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    action_ms = None
    deadline = t0 + args.timeout_s
    while not arrived.is_set() and time.monotonic() < deadline:
        sensor.publish("sensors/cold/temperature", reading, qos=0)
        if action_ms is None and proc.poll() is not None:
            action_ms = (time.monotonic() - t0) * 1000
            if proc.returncode != 0:
                err = proc.stderr.read().decode(errors="replace").strip()
                sys.exit(f"coldstart.py: the action {command[0]} failed ({proc.returncode}): {err}")
        arrived.wait(args.every_ms / 1000)
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    elif action_ms is None:
        action_ms = (time.monotonic() - t0) * 1000
    sensor.loop_stop()
    sub.loop_stop()
    if not arrived.is_set():
        sys.exit(f"coldstart.py: no output on {args.sub_topic} within {args.timeout_s} s "
                 f"of starting {' '.join(command)}")
    print(json.dumps({"label": args.label,
                      "first_output_ms": round((first["t"] - t0) * 1000, 3),
                      "action_ms": None if action_ms is None else round(action_ms, 3)}))


if __name__ == "__main__":
    main()
