#!/usr/bin/env python3
"""Turns bench/run.sh's raw results (JSON lines) into the markdown report.

Each number in the tables is the median over the runs, with the min-max of
the runs beside it; ratios are taken between the medians of one run set, so
perch and its peer were measured side by side on the same machine. The
advantage column is always "how many times better perch is" (> 1: perch
wins, < 1: the peer wins): throughput divided by the peer's, or the peer's
latency / memory divided by perch's.
"""

import argparse
import json
import statistics
import sys
from collections import defaultdict


def num(v):
    return float(v) if v not in (None, "") else None


def load(path):
    rows = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                rows.append(json.loads(line))
    return rows


def spread(values, fmt):
    values = [v for v in values if v is not None]
    if not values:
        return "—", None
    med = statistics.median(values)
    if len(values) == 1:
        return fmt(med), med
    return f"{fmt(med)} ({fmt(min(values))}–{fmt(max(values))})", med


def rate_fmt(v):
    return f"{v / 1000:.1f} k" if v >= 1000 else f"{v:.0f}"


def ms_fmt(v):
    return f"{v:.2f}" if v < 10 else f"{v:.0f}"


def mib_fmt(v):
    return f"{v / 1024:.1f}"


def pct_fmt(v):
    return f"{v:.1f} %"


def advantage(perch, peer, higher_is_better):
    if perch is None or peer is None or perch == 0 or peer == 0:
        return "—"
    ratio = perch / peer if higher_is_better else peer / perch
    return f"{ratio:.2f}x" + ("" if ratio >= 1 else " (peer wins)")


def per_run(rows, scenario, system):
    runs = defaultdict(list)
    for r in rows:
        if r["scenario"] == scenario and r["system"] == system:
            runs[r["run"]].append(r)
    return runs


def sustained(steps, needs_processed):
    """The highest offered rate of a run's ladder at which nothing was lost."""
    best = None
    for r in steps:
        rate = int(r["step"])
        if rate == 0:
            continue
        ok = r.get("lost") == 0 and r.get("received", 0) > 0
        if needs_processed:
            ok = ok and int(r.get("processed", 0)) >= r["sent"]
        if ok and (best is None or rate > best):
            best = rate
    return best


def at_step(steps, rate, key):
    for r in steps:
        if int(r["step"]) == rate:
            return num(r.get(key))
    return None


def peak_rss(steps):
    values = [int(r.get("rss_peak_kb", 0)) for r in steps]
    return max(values) if values else None


def idle_rss(steps):
    values = [int(r.get("rss_idle_kb", 0)) for r in steps if int(r.get("rss_idle_kb", 0)) > 0]
    return min(values) if values else None


def table(rows_out, perch_runs, peer_runs, specs):
    for label, getter, fmt, higher in specs:
        p_text, p_med = spread([getter(s) for s in perch_runs.values()], fmt)
        q_text, q_med = spread([getter(s) for s in peer_runs.values()], fmt)
        rows_out.append(f"| {label} | {p_text} | {q_text} | {advantage(p_med, q_med, higher)} |")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("results")
    ap.add_argument("--machine", required=True)
    ap.add_argument("--versions", required=True)
    ap.add_argument("--load", required=True)
    ap.add_argument("--elapsed", required=True)
    ap.add_argument("--runs", required=True)
    ap.add_argument("--smoke", default="0")
    ap.add_argument("--s1-latency-rate", type=int, required=True)
    ap.add_argument("--s2-latency-rate", type=int, required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    rows = load(a.results)
    if not rows:
        sys.exit("report.py: no results to report: every step failed (see the logs in the work dir)")
    first = rows[0]
    out = []
    out.append(f"# perch vs the alternatives — {a.out.rsplit('/', 1)[-1].removesuffix('.md')}")
    out.append("")
    out.append(f"- Command: `bench/run.sh{' --smoke' if a.smoke == '1' else ''}` "
               f"({a.runs} run(s), {a.elapsed} s in all)")
    out.append(f"- Machine: {a.machine}; load average {a.load} at the end "
               "(a shared VM: other builds ran at the same time, so figures are noisy)")
    out.append(f"- Versions: {a.versions}")
    out.append(f"- Load: {first['publishers']} publisher connections, {first['size']}-byte JSON "
               "payloads, QoS 0, one subscriber; medians over the runs with (min–max)")
    out.append("")

    s0 = per_run(rows, "0", "null-sink")
    text, _ = spread([s[0]["send_rate"] for s in s0.values()], rate_fmt)
    out.append("## 0. The load generator's own ceiling")
    out.append("")
    out.append(f"Publishing flat out into a null sink (reads TCP, answers CONNECT): **{text} msgs/s**. "
               "Every rate below is far under it, so the generator is not the bottleneck.")
    out.append("")

    perch, mosq = per_run(rows, "1", "perch"), per_run(rows, "1", "mosquitto")
    out.append("## 1. Broker only: fan-in, perch vs Mosquitto")
    out.append("")
    out.append("| measure | perch | Mosquitto | perch's advantage |")
    out.append("|---|---|---|---|")
    lr = a.s1_latency_rate
    table(out, perch, mosq, [
        ("sustained msgs/s with zero loss (highest ladder step)",
         lambda s: sustained(s, False), rate_fmt, True),
        ("flat out: msgs/s accepted from the publishers",
         lambda s: at_step(s, 0, "send_rate"), rate_fmt, True),
        ("flat out: msgs/s delivered to the subscriber",
         lambda s: at_step(s, 0, "recv_rate"), rate_fmt, True),
        ("flat out: share lost",
         lambda s: (100.0 * at_step(s, 0, "lost") / at_step(s, 0, "expected"))
         if at_step(s, 0, "expected") else None, pct_fmt, False),
        (f"p50 latency at {rate_fmt(lr)} msgs/s (ms)", lambda s: at_step(s, lr, "p50_ms"), ms_fmt, False),
        (f"p99 latency at {rate_fmt(lr)} msgs/s (ms)", lambda s: at_step(s, lr, "p99_ms"), ms_fmt, False),
        ("RSS idle (MiB)", idle_rss, mib_fmt, False),
        ("RSS peak under load (MiB)", peak_rss, mib_fmt, False),
    ])
    out.append("")

    perch, py = per_run(rows, "2", "perch"), per_run(rows, "2", "python")
    lr = a.s2_latency_rate
    out.append("## 2. The edge job: perch vs Mosquitto + a Python script")
    out.append("")
    out.append("Sensor events → parse JSON, threshold, 10 s windows, forward 1 in 100 → SQLite "
               "outbox → upstream Mosquitto (QoS 1). perch runs the `window-sample` function; "
               "the peer is Mosquitto + `bench/peers/edge_job.py` (paho-mqtt, sqlite3). Zero loss "
               "means every event was processed and every forwarded sample reached the upstream. "
               "RSS of the peer is Mosquitto's plus Python's.")
    out.append("")
    out.append("| measure | perch | Mosquitto + Python | perch's advantage |")
    out.append("|---|---|---|---|")
    table(out, perch, py, [
        ("sustained events/s with zero loss (highest ladder step)",
         lambda s: sustained(s, True), rate_fmt, True),
        (f"p50 latency event → upstream at {rate_fmt(lr)} events/s (ms)",
         lambda s: at_step(s, lr, "p50_ms"), ms_fmt, False),
        (f"p99 latency event → upstream at {rate_fmt(lr)} events/s (ms)",
         lambda s: at_step(s, lr, "p99_ms"), ms_fmt, False),
        ("RSS idle (MiB)", idle_rss, mib_fmt, False),
        ("RSS peak under load (MiB)", peak_rss, mib_fmt, False),
    ])
    out.append("")
    out.append("The ladders (offered rate → result) of every step are in the raw results, "
               "one JSON line per step.")
    out.append("")
    with open(a.out, "w") as f:
        f.write("\n".join(out))
    print("\n".join(out))


if __name__ == "__main__":
    main()
