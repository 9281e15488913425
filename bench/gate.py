#!/usr/bin/env python3
"""bench/gate.py — turns one bench/gate.sh run into ratios, checks each
against its floor, and writes results.json, gate.md and gate.png next to the
inputs.

    python3 bench/gate.py OUT_DIR [--update-readme]

Floors sit well under the medians of quiet runs (bench/README.md), so a
gate fails on a real regression of a contention path, not on a noisy box.
--update-readme replaces the generated section of bench/README.md (between
the gate markers) with gate.md, so the figures there come from the JSON.
"""
import datetime
import json
import os
import platform
import re
import sys

# (id, what, peer, floor)
GATES = [
    ("record_vs_mutex", "tally record() vs mutex + unordered_map, 2 threads", 1.5),
    ("moodycamel_vs_mutex", "moodycamel bulk vs mutex deque, 2 producers", 2.0),
    ("copy_vs_values", "COPY-staged apply vs multi-row VALUES, 20,000 rows", 1.5),
    ("resp_vs_set", "RESP TALLY.RECORD vs redis-server SET (redis-benchmark; ratio: median of the rounds')", 0.7),
    ("tally_vs_direct", "through tally vs direct writers, events/s (0 deadlocks required)", 100.0),
]


def load(out, name):
    with open(os.path.join(out, name + ".json")) as f:
        return json.load(f)


def rate(data, run_name, stat="median"):
    """items/s of `run_name`: the median aggregate if repeated, else the run."""
    rows = [b for b in data["benchmarks"] if b.get("run_name", b["name"]) == run_name]
    for b in rows:
        if b.get("aggregate_name") == stat:
            return b["items_per_second"], b
    for b in rows:
        if b.get("run_type", "iteration") == "iteration":
            return b["items_per_second"], b
    raise SystemExit(f"gate: no result for {run_name}")


def resp_medians(out):
    """Median TALLY.RECORD and SET rates, and the median of the rounds' ratios.

    The gate takes the last: each round runs SET and TALLY.RECORD back to
    back, so a burst of load on the shared box hits both sides of a round's
    ratio, while the two medians may come from different rounds."""
    text = open(os.path.join(out, "resp.txt")).read()
    m = re.search(r"median:\s+SET\s+([0-9.]+) ops/s\s+TALLY.RECORD\s+([0-9.]+) ops/s", text)
    if not m:
        raise SystemExit("gate: no median line in resp.txt")
    ratios = sorted(float(t) / float(s) for s, t in
                    re.findall(r"round \d+: SET\s+([0-9.]+) ops/s\s+TALLY.RECORD\s+([0-9.]+) ops/s", text))
    if not ratios:
        raise SystemExit("gate: no round lines in resp.txt")
    n = len(ratios)
    ratio = ratios[n // 2] if n % 2 else (ratios[n // 2 - 1] + ratios[n // 2]) / 2
    return float(m.group(2)), float(m.group(1)), ratio


def measure(out):
    ingest, queue, upsert, contention = (load(out, n) for n in ("ingest", "queue", "upsert", "contention"))
    figures = {}
    tally, _ = rate(ingest, "BM_TallyRecord/real_time/threads:2")
    mutex, _ = rate(ingest, "BM_MutexBaseline/real_time/threads:2")
    figures["record_vs_mutex"] = (tally, mutex, "events/s")
    mc, _ = rate(queue, "BM_MoodycamelBulk/2/manual_time")
    md, _ = rate(queue, "BM_MutexDeque/2/manual_time")
    figures["moodycamel_vs_mutex"] = (mc, md, "items/s")
    copy, _ = rate(upsert, "BM_Upsert/2/20000/real_time")
    values, _ = rate(upsert, "BM_Upsert/1/20000/real_time")
    unnest, _ = rate(upsert, "BM_Upsert/0/20000/real_time")
    figures["copy_vs_values"] = (copy, values, "rows/s")
    figures["copy_vs_unnest"] = (copy, unnest, "rows/s")  # reported, not gated
    t, s, round_ratio = resp_medians(out)
    figures["resp_vs_set"] = (t, s, "ops/s", round_ratio)
    through, tb = rate(contention, "BM_ThroughTally/5000/real_time")
    direct, db = rate(contention, "BM_DirectWriters/40/real_time")
    figures["tally_vs_direct"] = (through, direct, "events/s")
    deadlocks = {"through_tally": tb.get("deadlocks", 0), "direct_writers": db.get("deadlocks", 0)}
    return figures, deadlocks


def human(v):
    for unit, scale in (("M", 1e6), ("k", 1e3)):
        if v >= scale:
            return f"{v / scale:.2f} {unit}"
    return f"{v:.1f}"


def main():
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    out = sys.argv[1]
    update_readme = "--update-readme" in sys.argv[2:]
    figures, deadlocks = measure(out)
    results = {
        "when": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{os.cpu_count()} cores, {platform.machine()}, load {open('/proc/loadavg').read().split()[0]}",
        "gates": [],
        "info": [],
        "deadlocks": deadlocks,
    }
    failed = []
    for gid, what, floor in GATES:
        a, b, unit, *given = figures[gid]
        ratio = given[0] if given else (a / b if b else float("inf"))
        ok = ratio >= floor and (gid != "tally_vs_direct" or deadlocks["through_tally"] == 0)
        results["gates"].append({"id": gid, "what": what, "tally": a, "peer": b, "unit": unit,
                                 "ratio": ratio, "floor": floor, "pass": ok})
        line = f"{what}: {human(a)} vs {human(b)} {unit}, ratio {ratio:.2f}, floor {floor}"
        if gid == "tally_vs_direct":
            line += f", deadlocks {deadlocks['through_tally']:.0f} (direct writers {deadlocks['direct_writers']:.0f})"
        print(("gate: ok     " if ok else "gate: FAILED ") + line)
        if not ok:
            failed.append(line)
    a, b, unit = figures["copy_vs_unnest"]
    results["info"].append({"id": "copy_vs_unnest", "what": "COPY-staged apply vs unnest arrays, 20,000 rows",
                            "tally": a, "peer": b, "unit": unit, "ratio": a / b})
    print(f"gate: info   COPY-staged apply vs unnest: {human(a)} vs {human(b)} rows/s, ratio {a / b:.2f}")

    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    md = [f"Generated by `bench/gate.sh` (bench/gate.py) from its JSON, {results['when']}, "
          f"{results['machine']}. Ratios measured in one run; medians of 5 (ingest, queue) or 3 (upsert) "
          "repetitions in random interleaved order (contention: one round each; RESP: the median of 7 alternating rounds' ratios, 1M requests each).", "",
          "| gate | tally | peer | ratio | floor | |", "|---|---|---|---|---|---|"]
    for g in results["gates"]:
        md.append(f"| {g['what']} | {human(g['tally'])} {g['unit']} | {human(g['peer'])} {g['unit']} | "
                  f"**{g['ratio']:.2f}** | {g['floor']} | {'ok' if g['pass'] else 'FAILED'} |")
    for g in results["info"]:
        md.append(f"| {g['what']} (not gated) | {human(g['tally'])} {g['unit']} | {human(g['peer'])} {g['unit']} | "
                  f"{g['ratio']:.2f} | — | |")
    md.append("")
    md.append(f"Deadlocks in the same run: through tally {deadlocks['through_tally']:.0f}, "
              f"direct writers {deadlocks['direct_writers']:.0f}.")
    with open(os.path.join(out, "gate.md"), "w") as f:
        f.write("\n".join(md) + "\n")

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = [g["id"] for g in results["gates"]]
    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.barh(names, [g["ratio"] for g in results["gates"]],
            color=["tab:green" if g["pass"] else "tab:red" for g in results["gates"]])
    ax.scatter([g["floor"] for g in results["gates"]], names, marker="|", s=400, color="black", label="floor")
    ax.set_xscale("log")
    ax.set_xlabel("ratio to peer (log scale)")
    ax.set_title(f"tally performance gate, {results['when']}")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "gate.png"), dpi=100)

    if update_readme:
        path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "README.md")
        text = open(path).read()
        begin, end = "<!-- gate:begin -->", "<!-- gate:end -->"
        if begin not in text or end not in text:
            raise SystemExit("gate: bench/README.md has no gate markers")
        head, rest = text.split(begin, 1)
        _, tail = rest.split(end, 1)
        with open(path, "w") as f:
            f.write(head + begin + "\n" + "\n".join(md) + "\n" + end + tail)
        print(f"gate: rewrote the generated section of {path}")

    print(f"gate: wrote {out}/results.json, gate.md, gate.png")
    if failed:
        print("gate: FAILED: " + "; ".join(failed))
        sys.exit(1)


if __name__ == "__main__":
    main()
