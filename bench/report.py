#!/usr/bin/env python3
"""bench/report.py RESULTS.tsv OUT.md --machine TEXT --params TEXT

Turns the raw rows written by bench/run.sh into the markdown tables of bench/README.md:
medians over rounds, ratios to the direct client, bare Pingora and nginx, and the
performance targets met or not. Standard library only.
"""

import argparse
import statistics
from collections import defaultdict

TARGETS = ["direct", "lmgate", "bare", "nginx"]
NAMES = {
    "direct": "direct to mock",
    "lmgate": "LMGate",
    "bare": "bare Pingora",
    "nginx": "nginx proxy_pass",
}


def med(xs):
    xs = [x for x in xs if x == x]  # drop NaN
    return statistics.median(xs) if xs else float("nan")


def ratio(a, b):
    return a / b if b else float("nan")


def f(x, nd=1):
    return "n/a" if x != x else f"{x:,.{nd}f}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("tsv")
    ap.add_argument("out")
    ap.add_argument("--machine", default="")
    ap.add_argument("--params", default="")
    a = ap.parse_args()

    load = defaultdict(list)  # (target, conns) -> [(rps, p50, p99, cpu)]
    sse = defaultdict(list)  # (target, conns) -> [(sps, ttfb50, ttfb99, cpu, total50)]
    knob = defaultdict(list)
    rss = defaultdict(dict)  # target -> {label: (kb, note)}
    soak = []
    soakreqs = None
    records = []
    allocs = {}
    with open(a.tsv) as fh:
        for line in fh:
            row = line.rstrip("\n").split("\t")
            kind = row[0]
            if kind == "load":
                load[(row[1], int(row[2]))].append(tuple(float(x) for x in row[4:8]))
            elif kind == "knob":
                knob[row[1]].append(tuple(float(x) for x in row[4:8]))
            elif kind == "sse":
                sse[(row[1], int(row[2]))].append(tuple(float(x) for x in row[4:9]))
            elif kind == "rss":
                rss[row[1]][row[2]] = (int(row[3]), row[4] if len(row) > 4 else "")
            elif kind == "soak":
                soak.append((row[1], int(row[2]), int(row[3])))
            elif kind == "soakreqs":
                soakreqs = (row[1], row[2])
            elif kind == "allocs" and row[2] and row[3]:
                allocs[row[1]] = (int(row[2]), int(row[3]), int(row[4] or 0), int(row[5] or 0))
            elif kind == "records":
                records.append((int(row[1]), int(row[2]), int(row[3]) if len(row) > 3 else None))

    out = []
    w = out.append
    w("# LMGate load comparison\n")
    if a.machine:
        w(f"Machine: {a.machine}. Parameters: {a.params}.\n")
    checks = []

    if load:
        levels = sorted({c for (_, c) in load})
        m = {k: tuple(med([r[i] for r in v]) for i in range(4)) for k, v in load.items()}
        rounds = max(len(v) for v in load.values())
        w(f"## JSON request/response (760-byte chat completion), wrk keep-alive, median of {rounds} rounds\n")
        w("| conns | target | rps | ×direct | ×bare | ×nginx | p50 ms | p99 ms | +p50 vs direct ms | CPU-µs/req | CPU ×bare | CPU ×nginx |")
        w("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for c in levels:
            d = m.get(("direct", c))
            b = m.get(("bare", c))
            n = m.get(("nginx", c))
            for t in TARGETS:
                r = m.get((t, c))
                if not r:
                    continue
                rps, p50, p99, cpu = r
                cells = [
                    str(c), NAMES[t], f(rps, 0),
                    f(ratio(rps, d[0]), 2) + "×" if d else "",
                    f(ratio(rps, b[0]), 2) + "×" if b and t not in ("direct", "bare") else "",
                    f(ratio(rps, n[0]), 2) + "×" if n and t not in ("direct", "nginx") else "",
                    f(p50, 3), f(p99, 3),
                    f(p50 - d[1], 3) if d and t != "direct" else "",
                    f(cpu, 1) if t != "direct" else f"({f(cpu, 1)} mock)",
                    f(ratio(cpu, b[3]), 2) + "×" if b and t in ("lmgate", "nginx") else "",
                    f(ratio(cpu, n[3]), 2) + "×" if n and t in ("lmgate", "bare") else "",
                ]
                w("| " + " | ".join(cells) + " |")
        w("")
        for c in levels:
            lm, n, b, d = (m.get((t, c)) for t in ("lmgate", "nginx", "bare", "direct"))
            if not lm:
                continue
            if n and c >= 16:
                checks.append((f"rps >= 1.0× nginx at {c} conns", ratio(lm[0], n[0]) >= 1.0, f"{ratio(lm[0], n[0]):.2f}×"))
                checks.append((f"CPU-µs/req <= nginx at {c} conns", lm[3] <= n[3], f"{lm[3]:.1f} vs {n[3]:.1f}"))
            if b and c >= 16:
                extra = ratio(lm[3], b[3]) - 1
                checks.append((f"LMGate CPU over bare Pingora <= 5% at {c} conns", extra <= 0.05, f"{extra * 100:+.1f}% CPU/req, rps {ratio(lm[0], b[0]):.2f}×"))
            if d and c == 1:
                added = lm[1] - d[1]
                checks.append(("added p50 <= 0.1 ms at 1 conn", added <= 0.1, f"+{added:.3f} ms"))
    if records:
        n, exact, answered = records[-1]
        line = f"LMGate wrote {n:,} usage records during the JSON runs ({exact:,} with `usage_status: exact`)"
        if answered is not None:
            line += (
                f" for {answered:,} responses wrk completed (warm-ups included; requests cut off"
                " when wrk stops are recorded too)"
            )
        w(line + ".\n")

    if sse:
        levels = sorted({c for (_, c) in sse})
        m = {k: tuple(med([r[i] for r in v]) for i in range(5)) for k, v in sse.items()}
        rounds = max(len(v) for v in sse.values())
        w(f"## SSE streams (24-event OpenAI chat stream with usage), median of {rounds} rounds\n")
        w("| streams | target | streams/s | ×direct | ×bare | ×nginx | TTFB p50 ms | TTFB p99 ms | TTFB overhead p50 ms | whole stream p50 ms | CPU-µs/stream |")
        w("|---|---|---|---|---|---|---|---|---|---|---|")
        for c in levels:
            d, b, n = (m.get((t, c)) for t in ("direct", "bare", "nginx"))
            for t in TARGETS:
                r = m.get((t, c))
                if not r:
                    continue
                sps, t50, t99, cpu, tot = r
                cells = [
                    str(c), NAMES[t], f(sps, 0),
                    f(ratio(sps, d[0]), 2) + "×" if d else "",
                    f(ratio(sps, b[0]), 2) + "×" if b and t not in ("direct", "bare") else "",
                    f(ratio(sps, n[0]), 2) + "×" if n and t not in ("direct", "nginx") else "",
                    f(t50, 3), f(t99, 3),
                    f(t50 - d[1], 3) if d and t != "direct" else "",
                    f(tot, 3),
                    f(cpu, 1) if t != "direct" else f"({f(cpu, 1)} mock)",
                ]
                w("| " + " | ".join(cells) + " |")
            lm = m.get(("lmgate", c))
            if lm and d:
                checks.append((f"SSE TTFB overhead <= 0.1 ms at {c} streams", lm[1] - d[1] <= 0.1, f"+{lm[1] - d[1]:.3f} ms p50"))
        w("")

    if rss:
        w("## Memory: RSS with concurrent slow SSE streams (one event per second, held open)\n")
        w("| proxy | idle | " + " | ".join(f"{k} streams" for k in sorted((k for k in rss.get("lmgate", {}) if k.isdigit()), key=int)) + " | after streams closed | per stream |")
        levels = sorted((k for k in rss.get("lmgate", {}) if k.isdigit()), key=int)
        w("|---|---|" + "---|" * len(levels) + "---|---|")
        for t in ("lmgate", "bare"):
            if t not in rss:
                continue
            r = rss[t]
            idle = r.get("idle", (0, ""))[0]
            cells = [NAMES[t], f"{idle / 1024:.1f} MB"]
            for k in levels:
                v = r.get(k)
                cells.append(f"{v[0] / 1024:.1f} MB" if v else "")
            after = r.get("after")
            cells.append(f"{after[0] / 1024:.1f} MB" if after else "")
            if levels and r.get(levels[-1]):
                n = int(levels[-1])
                per = (r[levels[-1]][0] - idle) / n
                cells.append(f"{per:.1f} kB")
            else:
                cells.append("")
            w("| " + " | ".join(cells) + " |")
        notes = [f"{t} {k}: {v[1]}" for t in rss for k, v in rss[t].items() if v[1]]
        if notes:
            w("\nStreams established: " + "; ".join(notes) + ".")
        r = rss.get("lmgate", {})
        if levels and r.get(levels[-1]):
            n = int(levels[-1])
            idle = r.get("idle", (0, ""))[0]
            at10k = idle + (r[levels[-1]][0] - idle) * 10000 / n
            how = "measured" if n >= 10000 else f"extrapolated linearly from {n:,} streams"
            checks.append(("10k streams < 200 MB RSS", at10k < 200 * 1024, f"{at10k / 1024:.1f} MB ({how})"))
        w("")

    if soak:
        w("## Soak: 16 JSON + 16 SSE connections on LMGate\n")
        before = next((kb for (lbl, kb, _) in soak if lbl == "before"), None)
        after = next((kb for (lbl, kb, _) in soak if lbl == "after"), None)
        idle = next((kb for (lbl, kb, _) in soak if lbl == "idle"), None)
        secs = next((s for (lbl, _, s) in soak if lbl == "after"), 0)
        samples = [(s, kb) for (lbl, kb, s) in soak if lbl == "sample"]
        w(f"| duration | RSS before | RSS after | after 5 s idle | growth |")
        w("|---|---|---|---|---|")
        if before and after:
            w(f"| {secs} s | {before / 1024:.1f} MB | {after / 1024:.1f} MB | {idle / 1024:.1f} MB | {(after - before) / 1024:+.1f} MB |")
        if samples:
            w("\nRSS every 30 s: " + ", ".join(f"{s}s {kb / 1024:.1f}" for s, kb in samples) + " (MB).")
        if soakreqs:
            w(f"\nServed {int(soakreqs[0]):,} JSON requests and {int(soakreqs[1]):,} SSE streams during the soak.")
        w("")

    if knob:
        w("## Knobs at 16 connections (median)\n")
        w("| variant | rps | p50 ms | p99 ms | CPU-µs/req |")
        w("|---|---|---|---|---|")
        for k, v in knob.items():
            rps, p50, p99, cpu = (med([r[i] for r in v]) for i in range(4))
            w(f"| {k} | {f(rps, 0)} | {f(p50, 3)} | {f(p99, 3)} | {f(cpu, 1)} |")
        w("")

    if allocs:
        w("## Allocator calls per request (libc uprobes, 5 s at 16 connections)\n")
        w("| proxy | requests | malloc/req | free/req | realloc/req |")
        w("|---|---|---|---|---|")
        for t in ("lmgate", "bare", "nginx"):
            if t in allocs:
                n, m_, fr, re_ = allocs[t]
                w(f"| {NAMES[t]} | {n:,} | {m_ / n:.1f} | {fr / n:.1f} | {re_ / n:.1f} |")
        w("")

    if checks:
        w("## Targets\n")
        w("| target | met | measured |")
        w("|---|---|---|")
        for name, ok, val in checks:
            w(f"| {name} | {'yes' if ok else 'no'} | {val} |")
        w("")

    text = "\n".join(out) + "\n"
    with open(a.out, "w") as fh:
        fh.write(text)


if __name__ == "__main__":
    main()
