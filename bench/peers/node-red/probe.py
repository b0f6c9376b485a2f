#!/usr/bin/env python3
"""Asks the Node-RED edge job (bench/peers/node-red/flow.json) for its counts.

Publishes {"probe": N} to sensors/probe/temperature on the local broker until
the flow answers on bench/node-red/ready, then prints the answer (one JSON
line: processed, bad, forwarded, acked). An answer proves the flow is
deployed and its subscription live; it arrives after every reading the
broker delivered before the probe, so its count is final once the load
stopped. Exits 1, saying so, when no answer comes within --timeout-s.
"""

import argparse
import json
import sys
import threading

import paho.mqtt.client as mqtt


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, required=True, help="the local broker's port")
    ap.add_argument("--timeout-s", type=float, default=30.0)
    args = ap.parse_args()
    answer = {}
    got = threading.Event()
    subscribed = threading.Event()

    def on_message(_c, _u, msg):
        try:
            answer.update(json.loads(msg.payload))
        except ValueError:
            return
        got.set()

    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="node-red-probe")
    c.on_message = on_message
    c.on_connect = lambda cl, *_: cl.subscribe("bench/node-red/ready", qos=0)
    c.on_subscribe = lambda *_: subscribed.set()
    try:
        c.connect("127.0.0.1", args.port, keepalive=60)
    except OSError as e:
        sys.exit(f"probe.py: cannot connect to the local broker on 127.0.0.1:{args.port} ({e}): "
                 "is Mosquitto running there?")
    c.loop_start()
    tries = int(args.timeout_s / 0.2)
    if subscribed.wait(min(10, args.timeout_s)):
        for n in range(tries):
            c.publish("sensors/probe/temperature", json.dumps({"probe": n}), qos=0)
            if got.wait(0.2):
                break
    c.loop_stop()
    if not got.is_set():
        sys.exit(f"probe.py: the Node-RED flow did not answer on port {args.port} within "
                 f"{args.timeout_s} s: is it deployed and connected? (see its log)")
    print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    main()
