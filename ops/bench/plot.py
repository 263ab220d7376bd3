"""Draws the projection benchmark's figures from DIR/results.json and DIR/latency-series.csv.

    python plot.py DIR      (ops/bench/plot sets up matplotlib and calls this)

throughput.png: events/s per contender over its steady window, and the CPU microseconds per
event each process spent meanwhile (contender, broker, PostgreSQL, Redis), stacked.
latency.png: per second of the latency run, p50, p99 and max of produce -> visible in
PostgreSQL, produce -> visible in Redis and command -> visible through the query API, with the
100 ms target.
"""

import csv
import json
import sys
from collections import defaultdict
from pathlib import Path

import matplotlib.pyplot as plt

PROCESSES = [("contender", "contender", "#4c72b0"), ("broker", "Kafka broker", "#dd8452"),
             ("postgres", "PostgreSQL", "#55a868"), ("redis", "Redis", "#c44e52")]


def throughput(results, out):
    run = results["throughput"]
    contenders = run["contenders"]
    names = [c["name"] for c in contenders]
    rates = [c["rate"] for c in contenders]
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 0.6 * len(names) + 2.4), sharey=True)
    colors = ["#c44e52" if c["key"] == "prism" else "#4c72b0" for c in contenders]
    bars = left.barh(names, rates, color=colors)
    left.bar_label(bars, labels=[f"{r:,.0f}" for r in rates], padding=3, fontsize=8)
    left.set_xlabel("events/s (steady window)")
    left.set_title("throughput")
    left.invert_yaxis()
    left.margins(x=0.2)
    offsets = [0.0] * len(names)
    for key, label, color in PROCESSES:
        values = [c["us_per_event"].get(key) or 0.0 for c in contenders]
        right.barh(names, values, left=offsets, color=color, label=label)
        offsets = [o + v for o, v in zip(offsets, values)]
    right.bar_label(right.containers[-1], labels=[f"{o:.1f}" for o in offsets], padding=3, fontsize=8)
    right.set_xlabel("CPU µs per event")
    right.set_title("cost per event, by process")
    right.legend(fontsize=8, loc="lower right")
    right.margins(x=0.2)
    fig.suptitle(f"Projection benchmark, {run['events']:,} events — {run['when']}\n{results.get('machine', '')}",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def latency(results, series_csv, out):
    series = defaultdict(lambda: defaultdict(list))
    with open(series_csv, newline="") as f:
        for row in csv.DictReader(f):
            s = series[row["series"]]
            s["second"].append(int(row["second"]))
            for k in ("p50_ms", "p99_ms", "max_ms"):
                s[k].append(float(row[k]))
    panels = [("produce_to_postgres", "produce → visible in PostgreSQL"),
              ("produce_to_redis", "produce → visible in Redis"),
              ("command_to_query", "command answered → visible through the query API")]
    fig, axes = plt.subplots(len(panels), 1, figsize=(11, 8), sharex=True)
    for ax, (key, title) in zip(axes, panels):
        s = series.get(key)
        if s:
            ax.plot(s["second"], s["max_ms"], color="#bbbbbb", linewidth=0.8, label="max")
            ax.plot(s["second"], s["p99_ms"], color="#dd8452", linewidth=1.2, label="p99")
            ax.plot(s["second"], s["p50_ms"], color="#4c72b0", linewidth=1.2, label="p50")
        ax.axhline(100, color="#c44e52", linestyle="--", linewidth=0.8, label="100 ms target (p99)")
        ax.set_yscale("log")
        ax.set_ylabel("ms")
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7, loc="upper right", ncol=4)
    axes[-1].set_xlabel("seconds into the run")
    lat = results.get("latency", {})
    fig.suptitle(f"Latency at {lat.get('produced_rate', 0):,.0f} events/s produced + {lat.get('clients', 0)} "
                 f"command-then-read clients — {lat.get('when', '')}\n{results.get('machine', '')}", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main():
    directory = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/benchmarks")
    results = json.loads((directory / "results.json").read_text())
    made = []
    if "throughput" in results:
        throughput(results, directory / "throughput.png")
        made.append("throughput.png")
    if "latency" in results and (directory / "latency-series.csv").exists():
        latency(results, directory / "latency-series.csv", directory / "latency.png")
        made.append("latency.png")
    print(f"bench-plot: wrote {', '.join(made) or 'nothing (no results)'} in {directory}")


if __name__ == "__main__":
    main()
