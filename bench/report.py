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


def ladder_fmt(top):
    """Rates of a ladder; the top rung passed means "at least"."""
    return lambda v: ("≥ " if v >= top else "") + rate_fmt(v)


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
    if 0.95 <= ratio <= 1.05:
        return f"{ratio:.2f}x (even: within 5 %)"
    return f"{ratio:.2f}x" + ("" if ratio >= 1 else " (peer wins)")


def per_run(rows, scenario, system):
    runs = defaultdict(list)
    for r in rows:
        if r["scenario"] == scenario and r["system"] == system:
            runs[r["run"]].append(r)
    return runs


# A step is sustained when nothing was lost and the p99 latency stayed under
# this: a system that only keeps up by queueing seconds of backlog does not.
SUSTAINED_P99_MS = 500


def sustained(steps, needs_processed):
    """The highest offered rate of a run's ladder that was sustained."""
    best = None
    for r in steps:
        rate = int(r["step"])
        if rate == 0:
            continue
        ok = (r.get("lost") == 0 and r.get("received", 0) > 0
              and r.get("p99_ms", 1e9) < SUSTAINED_P99_MS)
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


def table_n(rows_out, perch_runs, peers, specs):
    """Like table, with one column and one advantage column per peer."""
    for label, getter, fmt, higher in specs:
        p_text, p_med = spread([getter(s) for s in perch_runs.values()], fmt)
        cells, ratios = [p_text], []
        for runs in peers:
            q_text, q_med = spread([getter(s) for s in runs.values()], fmt)
            cells.append(q_text)
            ratios.append(advantage(p_med, q_med, higher))
        rows_out.append(f"| {label} | " + " | ".join(cells + ratios) + " |")


def step_row(steps, step):
    for r in steps:
        if r["step"] == step:
            return r
    return None


def idle_cpu_pct(steps):
    for r in steps:
        if r.get("idle_cpu_ms") not in (None, "") and num(r.get("idle_s")):
            return 100.0 * num(r["idle_cpu_ms"]) / (1000.0 * num(r["idle_s"]))
    return None


def cpu_per_k(r):
    """CPU ms spent per 1000 events sent, for one result line."""
    if r is None or not r.get("sent") or r.get("cpu_ms") in (None, ""):
        return None
    return 1000.0 * num(r["cpu_ms"]) / r["sent"]


def svg_plot(path, title, series, x_label, y_label):
    """A log-log line chart, hand-written SVG: series = {name: [(x, y)]}."""
    import math
    w, h, left, right, top, bottom = 660, 360, 70, 170, 40, 50
    points = [p for pts in series.values() for p in pts if p[0] > 0 and p[1] > 0]
    if not points:
        return False
    x0, x1 = min(p[0] for p in points), max(p[0] for p in points)
    y0, y1 = min(p[1] for p in points), max(p[1] for p in points)
    lx0, lx1 = math.log10(x0), math.log10(x1) if x1 > x0 else math.log10(x0) + 1
    ly0, ly1 = math.floor(math.log10(y0)), math.ceil(math.log10(y1))
    if ly1 == ly0:
        ly1 += 1

    def sx(x):
        return left + (math.log10(x) - lx0) / (lx1 - lx0) * (w - left - right)

    def sy(y):
        return h - bottom - (math.log10(y) - ly0) / (ly1 - ly0) * (h - top - bottom)

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
           f'font-family="sans-serif" font-size="12">',
           f'<rect width="{w}" height="{h}" fill="white"/>',
           f'<text x="{w / 2}" y="20" text-anchor="middle" font-size="14">{title}</text>']
    for e in range(ly0, ly1 + 1):
        y = sy(10 ** e)
        out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{w - right}" y2="{y:.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{10 ** e:g}</text>')
    for x in sorted({p[0] for p in points}):
        out.append(f'<text x="{sx(x):.1f}" y="{h - bottom + 16}" text-anchor="middle">'
                   f'{rate_fmt(x).replace(".0 k", "k")}</text>')
    out.append(f'<text x="{(left + w - right) / 2}" y="{h - 10}" text-anchor="middle">{x_label}</text>')
    out.append(f'<text x="16" y="{h / 2}" text-anchor="middle" '
               f'transform="rotate(-90 16 {h / 2})">{y_label}</text>')
    colours = ["#d62728", "#1f77b4", "#2ca02c", "#9467bd"]
    for i, (name, pts) in enumerate(series.items()):
        pts = sorted(p for p in pts if p[0] > 0 and p[1] > 0)
        c = colours[i % len(colours)]
        if pts:
            path_d = " ".join(f"{'M' if j == 0 else 'L'}{sx(x):.1f},{sy(y):.1f}"
                              for j, (x, y) in enumerate(pts))
            out.append(f'<path d="{path_d}" fill="none" stroke="{c}" stroke-width="2"/>')
            for x, y in pts:
                out.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3" fill="{c}"/>')
        ly = top + 20 * i + 10
        out.append(f'<line x1="{w - right + 10}" y1="{ly}" x2="{w - right + 30}" y2="{ly}" '
                   f'stroke="{c}" stroke-width="2"/>')
        out.append(f'<text x="{w - right + 36}" y="{ly + 4}">{name}</text>')
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")
    return True


def ladder(rows, scenario, system, key):
    """(offered rate, median of `key` over the runs) per ladder step."""
    by_step = defaultdict(list)
    for r in rows:
        if r["scenario"] == scenario and r["system"] == system and int(r["step"]) > 0:
            v = num(r.get(key))
            if v is not None:
                by_step[int(r["step"])].append(v)
    return [(x, statistics.median(v)) for x, v in sorted(by_step.items())]


def processed_ladder(rows, system):
    """(offered events/s, median events/s the job processed) per scenario-2 step."""
    by_step = defaultdict(list)
    for r in rows:
        if r["scenario"] == "2" and r["system"] == system and r.get("duration_s"):
            by_step[int(r["step"])].append(min(num(r.get("processed")) or 0, r["sent"]) / r["duration_s"])
    return [(x, statistics.median(v)) for x, v in sorted(by_step.items())]


def scaling(rows, system, prefix, key, factor):
    """(N, median of key x factor) for scenario 5's steps named PREFIX<N>."""
    by_n = defaultdict(list)
    for r in rows:
        if r["scenario"] == "5" and r["system"] == system and r["step"].startswith(prefix):
            v = num(r.get(key))
            if v is not None:
                by_n[int(r["step"][len(prefix):])].append(v * factor)
    return [(x, statistics.median(v)) for x, v in sorted(by_n.items())]


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
    ap.add_argument("--s1-top", type=int, required=True)
    ap.add_argument("--s2-top", type=int, required=True)
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
    out.append(f"- Machine: {a.machine}; load average (1 min) {a.load} at the end "
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
        ("sustained msgs/s: zero loss, p99 < 500 ms (highest ladder step)",
         lambda s: sustained(s, False), ladder_fmt(a.s1_top), True),
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
    nr = per_run(rows, "2", "node-red")
    peers, names = [py], ["Mosquitto + Python"]
    if nr:
        peers.append(nr)
        names.append("Node-RED + Mosquitto")
    lr = a.s2_latency_rate
    out.append("## 2. The edge job: perch vs Mosquitto + a Python script" +
               (" vs Node-RED" if nr else ""))
    out.append("")
    out.append("Sensor events → parse JSON, threshold, 10 s windows, forward 1 in 100 → SQLite "
               "outbox → upstream Mosquitto (QoS 1). perch runs the `window-sample` function; "
               "the peers are Mosquitto + `bench/peers/edge_job.py` (paho-mqtt, sqlite3) and "
               "Node-RED with `bench/peers/node-red/flow.json` (mqtt in → function → sqlite → "
               "mqtt out, node-red-node-sqlite) on Mosquitto. Zero loss means every event was "
               "processed and every forwarded sample reached the upstream. A peer's RSS is "
               "Mosquitto's plus its own." + ("" if nr else " (Node-RED was left out of this run: "
                                              "no node/npm.)"))
    out.append("")
    out.append("| measure | perch | " + " | ".join(names) + " | " +
               " | ".join(f"perch vs {n.split(' ')[0 if 'Node' in n else 2]}" for n in names) + " |")
    out.append("|---|---|" + "---|" * (2 * len(names)))
    table_n(out, perch, peers, [
        ("sustained events/s: zero loss, p99 < 500 ms (highest ladder step)",
         lambda s: sustained(s, True), ladder_fmt(a.s2_top), True),
        (f"p50 latency event → upstream at {rate_fmt(lr)} events/s (ms)",
         lambda s: at_step(s, lr, "p50_ms"), ms_fmt, False),
        (f"p99 latency event → upstream at {rate_fmt(lr)} events/s (ms)",
         lambda s: at_step(s, lr, "p99_ms"), ms_fmt, False),
        ("RSS idle (MiB)", idle_rss, mib_fmt, False),
        ("RSS peak under load (MiB)", peak_rss, mib_fmt, False),
    ])
    out.append("")

    # --- 3. cold start
    cold = {sy: per_run(rows, "3", sy) for sy in ("perch", "perch-local", "python", "node-red")}
    if cold["perch"]:
        out.append("## 3. Cold start: deploy → first output upstream")
        out.append("")
        out.append("From the deploy action to the first sample at the upstream subscriber, a "
                   "sensor publishing a forwardable reading every 2 ms meanwhile "
                   "(`bench/peers/coldstart.py`). perch: `perch fn deploy` of window-sample to a "
                   "running gateway (a new CLI process, MQTT deploy, validation, instantiation); "
                   "Python: starting a new `edge_job.py` on a running Mosquitto; Node-RED: POST "
                   "/flows of the flow to a running Node-RED with an empty flow. Every path "
                   "includes the store's 50 ms commit interval before the upstream publish.")
        out.append("")
        names3 = [("python", "new Python process"), ("node-red", "Node-RED flow deploy")]
        names3 = [(k, n) for k, n in names3 if cold[k]]
        out.append("| measure | perch | " + " | ".join(n for _, n in names3) + " | " +
                   " | ".join(f"perch vs {n.split(' ')[0] if 'Node' in n else 'Python'}"
                              for _, n in names3) + " |")
        out.append("|---|---|" + "---|" * (2 * len(names3)))
        table_n(out, cold["perch"], [cold[k] for k, _ in names3], [
            ("deploy → first output upstream (ms)",
             lambda s: num(s[0].get("first_output_ms")), ms_fmt, False),
            ("deploy action done (ms): CLI acknowledged / HTTP 204",
             lambda s: num(s[0].get("action_ms")), ms_fmt, False),
        ])
        out.append("")
        out.append("(The Python process never finishes its action, so its second row is empty.)")
        out.append("")
        if cold["perch-local"]:
            text, _ = spread([num(s[0].get("first_output_ms")) for s in cold["perch-local"].values()],
                             ms_fmt)
            out.append(f"Without the store and the upstream: `perch fn deploy` of `threshold-alert`, "
                       f"which publishes its alert on the local broker → the first alert at a local "
                       f"subscriber: **{text} ms** (the goal: ≤ 50 ms).")
            out.append("")

    # --- 4. footprint
    out.append(f"## 4. Footprint: idle and under load ({rate_fmt(lr)} events/s, the edge job)")
    out.append("")
    out.append("Taken in scenario 2's step at the latency rate: idle = the job deployed, no "
               "events, over a quiet spell; under load = that step. RSS and CPU summed over "
               "every process of a setup (perch alone; Mosquitto + Python; Mosquitto + "
               "Node-RED), from /proc/<pid>/status (VmRSS, VmHWM) and /proc/<pid>/stat "
               "(utime + stime).")
    out.append("")
    out.append("| measure | perch | " + " | ".join(names) + " | " +
               " | ".join(f"perch vs {n.split(' ')[0 if 'Node' in n else 2]}" for n in names) + " |")
    out.append("|---|---|" + "---|" * (2 * len(names)))
    at = str(lr)
    table_n(out, perch, peers, [
        ("RSS idle (MiB)", lambda s: num((step_row(s, at) or {}).get("rss_idle_kb")), mib_fmt, False),
        ("CPU idle (% of one core)", idle_cpu_pct, lambda v: f"{v:.2f} %", False),
        (f"RSS peak at {rate_fmt(lr)} events/s (MiB)",
         lambda s: num((step_row(s, at) or {}).get("rss_peak_kb")), mib_fmt, False),
        (f"CPU per 1000 events at {rate_fmt(lr)} events/s (ms)",
         lambda s: cpu_per_k(step_row(s, at)), ms_fmt, False),
    ])
    out.append("")

    # --- 5. scaling
    s5p, s5m = per_run(rows, "5", "perch"), per_run(rows, "5", "mosquitto")
    conns = sorted({int(r["step"].split("-")[1]) for r in rows
                    if r["scenario"] == "5" and r["step"].startswith("conns-")})
    fns = sorted({int(r["step"].split("-")[1]) for r in rows
                  if r["scenario"] == "5" and r["step"].startswith("fns-")})
    if conns or fns:
        out.append("## 5. Scaling")
        out.append("")
    if conns:
        srate = next(r["rate_target"] for r in rows if r["scenario"] == "5"
                     and r["step"].startswith("conns-"))
        out.append(f"Connections: broker only, {rate_fmt(srate)} msgs/s offered in all, spread "
                   "over N publisher connections, one subscriber.")
        out.append("")
        out.append("| connections | measure | perch | Mosquitto | perch's advantage |")
        out.append("|---|---|---|---|---|")
        for n in conns:
            st = f"conns-{n}"
            rows_n = []
            table(rows_n, s5p, s5m, [
                ("msgs/s delivered", lambda s: num((step_row(s, st) or {}).get("recv_rate")),
                 rate_fmt, True),
                ("share lost", lambda s: (100.0 * step_row(s, st)["lost"] / step_row(s, st)["expected"])
                 if step_row(s, st) and step_row(s, st)["expected"] else None, pct_fmt, False),
                ("p99 latency (ms)", lambda s: num((step_row(s, st) or {}).get("p99_ms")), ms_fmt, False),
                ("RSS peak (MiB)", lambda s: num((step_row(s, st) or {}).get("rss_peak_kb")),
                 mib_fmt, False),
                ("CPU per 1000 msgs (ms)", lambda s: cpu_per_k(step_row(s, st)), ms_fmt, False),
            ])
            out.extend(f"| {n} " + r for r in rows_n)
        out.append("")
    if fns:
        frate = next(r["rate_target"] for r in rows if r["scenario"] == "5"
                     and r["step"].startswith("fns-"))
        out.append(f"Functions: perch with N copies of window-sample deployed, all on "
                   f"sensors/+/temperature, {rate_fmt(frate)} events/s offered (so N × that many "
                   "invocations/s). \"all invoked\" checks every copy handled every event.")
        out.append("")
        out.append("| functions | invocations/s | all invoked | dropped (queue) / FULL refusals / copies stopped | "
                   "CPU per 1000 events (ms) | RSS after deploy (MiB) | RSS peak (MiB) | "
                   "p99 event → upstream (ms) |")
        out.append("|---|---|---|---|---|---|---|---|")
        for n in fns:
            st = f"fns-{n}"
            got = [step_row(s, st) for s in s5p.values() if step_row(s, st)]
            inv, _ = spread([num(r["processed"]) / r["duration_s"] for r in got
                             if r.get("duration_s")], rate_fmt)
            ok = all(int(r["processed"]) >= r["sent"] * n for r in got)
            cells = [inv, "yes" if ok else "no",
                     " / ".join(spread([num(r.get(k)) for r in got], rate_fmt)[0]
                                for k in ("dropped", "full", "stopped")),
                     spread([cpu_per_k(r) for r in got], ms_fmt)[0],
                     spread([num(r["rss_idle_kb"]) for r in got], mib_fmt)[0],
                     spread([num(r["rss_peak_kb"]) for r in got], mib_fmt)[0],
                     spread([num(r.get("p99_ms")) for r in got], ms_fmt)[0]]
            out.append(f"| {n} | " + " | ".join(cells) + " |")
        out.append("")
        out.append("All copies share one output queue to the aggregate and buffer stages "
                   "(`functions.output_queue_len`); when it is full, `emit()` is refused with FULL, "
                   "window-sample passes that error on, and a copy whose last 10 invocations failed "
                   "is stopped by the circuit breaker (`perch fn list` shows why). \"all invoked\" = "
                   "no, with copies stopped, means that happened: overload turned into stopped "
                   "functions, not into a queue or a slower rate.")
        out.append("")

    # --- 6. publish -> PUBACK on a forwarded topic
    s6_systems = [(k, label) for k, label in
                  (("perch", "perch"), ("perch-before", "perch (before)"), ("mosquitto", "Mosquitto"))
                  if any(r["scenario"] == "6" and r["system"] == k for r in rows)]
    s6_rates = sorted({int(r["step"]) for r in rows if r["scenario"] == "6"})
    if s6_rates:
        out.append("## 6. Publish → PUBACK at QoS 1 on a forwarded topic")
        out.append("")
        out.append("perch with `forward_topics = [\"sensors/#\"]` and an upstream Mosquitto: its "
                   "PUBACK goes out once the record is committed to `buffer.db` (group commit, "
                   "`synchronous = full`). Mosquitto (no persistence, its default) acknowledges "
                   "from memory. \"perch (before)\" is an older binary (`PERCH_BENCH_BEFORE`) run "
                   "beside it. Latency is publish → PUBACK as the publisher sees it.")
        out.append("")
        out.append("| msgs/s offered | measure | " + " | ".join(l for _, l in s6_systems) + " |")
        out.append("|---|---|" + "---|" * len(s6_systems))
        for rate in s6_rates:
            for name, key, fmt in (("PUBACK p50 (ms)", "ack_p50_ms", ms_fmt),
                                   ("PUBACK p99 (ms)", "ack_p99_ms", ms_fmt),
                                   ("msgs/s accepted", "send_rate", rate_fmt),
                                   ("lost", "lost", rate_fmt)):
                cells = []
                for system, _ in s6_systems:
                    got = [step_row(s, str(rate)) for s in per_run(rows, "6", system).values()]
                    cells.append(spread([num(r.get(key)) for r in got if r], fmt)[0])
                out.append(f"| {rate_fmt(rate)} | {name} | " + " | ".join(cells) + " |")
        out.append("")

    # --- 7. live latency while a backlog drains
    s7_modes = [(k, label) for k, label in
                (("idle", "no backlog"), ("drain", "backlog draining, live_first"),
                 ("fifo", "backlog draining, oldest_first"))
                if any(r["scenario"] == "7" and r["step"] == k for r in rows)]
    if s7_modes:
        s7 = [r for r in rows if r["scenario"] == "7"]
        out.append("## 7. Live latency while a backlog drains")
        out.append("")
        out.append(f"perch with `[upstream.mqtt.drain] backlog_records_per_s = {s7[0]['cap']}`: "
                   "live readings (one publisher, QoS 1, one record per upstream message) "
                   "measured event → upstream subscriber with no backlog, and while a backlog "
                   "(buffered while the upstream was not there yet) drains at that cap. Each "
                   "mode ran once per round, the rounds in turn; medians with (min–max).")
        out.append("")
        out.append("| measure | " + " | ".join(l for _, l in s7_modes) + " |")
        out.append("|---|" + "---|" * len(s7_modes))
        for name, key, fmt in (("live p50 (ms)", "p50_ms", ms_fmt),
                               ("live p99 (ms)", "p99_ms", ms_fmt),
                               ("live lost", "lost", rate_fmt),
                               ("backlog records", "backlog", rate_fmt)):
            cells = [spread([num(r.get(key)) for r in s7 if r["step"] == k], fmt)[0]
                     for k, _ in s7_modes]
            out.append(f"| {name} | " + " | ".join(cells) + " |")
        out.append("")

    out.append(f"Every step of the ladders (offered rate → result) is one JSON line in "
               f"`{a.out.rsplit('/', 1)[-1].removesuffix('.md')}.jsonl`, beside this report.")
    out.append("")
    base = a.out.removesuffix(".md")
    name = base.rsplit("/", 1)[-1]
    plots = [
        (f"{base}-broker-latency.svg", "Broker only: p99 latency vs offered load",
         {"perch": ladder(rows, "1", "perch", "p99_ms"),
          "Mosquitto": ladder(rows, "1", "mosquitto", "p99_ms")},
         "offered msgs/s", "p99 latency (ms)"),
        (f"{base}-broker-throughput.svg", "Broker only: delivered vs offered msgs/s",
         {"perch": ladder(rows, "1", "perch", "recv_rate"),
          "Mosquitto": ladder(rows, "1", "mosquitto", "recv_rate")},
         "offered msgs/s", "delivered msgs/s"),
        (f"{base}-edge-latency.svg", "Edge job: p99 event → upstream vs offered load",
         {"perch": ladder(rows, "2", "perch", "p99_ms"),
          "Mosquitto + Python": ladder(rows, "2", "python", "p99_ms"),
          "Node-RED": ladder(rows, "2", "node-red", "p99_ms")},
         "offered events/s", "p99 latency (ms)"),
        (f"{base}-edge-throughput.svg", "Edge job: events/s processed vs offered",
         {"perch": processed_ladder(rows, "perch"),
          "Mosquitto + Python": processed_ladder(rows, "python"),
          "Node-RED": processed_ladder(rows, "node-red")},
         "offered events/s", "events/s processed"),
        (f"{base}-edge-rss.svg", "Edge job: peak RSS vs offered load",
         {"perch": [(x, y / 1024) for x, y in ladder(rows, "2", "perch", "rss_peak_kb")],
          "Mosquitto + Python": [(x, y / 1024) for x, y in ladder(rows, "2", "python", "rss_peak_kb")],
          "Node-RED": [(x, y / 1024) for x, y in ladder(rows, "2", "node-red", "rss_peak_kb")]},
         "offered events/s", "peak RSS (MiB)"),
        (f"{base}-conns-rss.svg", "Broker: peak RSS vs connections",
         {"perch": scaling(rows, "perch", "conns-", "rss_peak_kb", 1 / 1024),
          "Mosquitto": scaling(rows, "mosquitto", "conns-", "rss_peak_kb", 1 / 1024)},
         "publisher connections", "peak RSS (MiB)"),
        (f"{base}-functions-rss.svg", "perch: peak RSS vs deployed functions",
         {"perch": scaling(rows, "perch", "fns-", "rss_peak_kb", 1 / 1024)},
         "functions deployed", "peak RSS (MiB)"),
    ]
    drawn = [p for p in plots if svg_plot(*p)]
    if drawn:
        out.append("Median per ladder step over the runs (steps past a system's last sustained "
                   "one are not run):")
        out.append("")
        for path, title, *_ in drawn:
            out.append(f"![{title}]({path.rsplit('/', 1)[-1]})")
        out.append("")
    del name
    with open(a.out, "w") as f:
        f.write("\n".join(out))
    print("\n".join(out))


if __name__ == "__main__":
    main()
