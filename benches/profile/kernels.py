#!/usr/bin/env python3
"""One steady-state frame's GPU kernels, from an ncu CSV of several frames.

    ncu --csv --clock-control none --cache-control none \
        --metrics gpu__time_duration.sum --log-file K.csv \
        posed bench --route hands --hands 1 --warmup 3 --runs 3 ...
    benches/profile/kernels.py K.csv [--json out.json]

The bench repeats the same frame, so two back-to-back frames launch the same
kernels (by name and launch shape): the longest stretch of the sequence
that repeats right after itself is one frame. Reported for that frame:
the kernel count and the summed kernel time (the GPU's busy time: ncu runs
kernels one at a time, so this excludes every gap between them), by family.
"""
import argparse
import csv
import json
import re
import sys
from collections import defaultdict


def read(path):
    """(id, name, grid, block, duration_ns) per kernel, in launch order."""
    with open(path, newline="") as f:
        lines = [l for l in f if l.startswith('"')]  # skip ncu's own log lines
    rows = {}
    for r in csv.DictReader(lines):
        if r.get("Metric Name") != "gpu__time_duration.sum":
            continue
        value = float(r["Metric Value"].replace(",", ""))
        unit = r.get("Metric Unit", "nsecond")
        scale = {"nsecond": 1.0, "usecond": 1e3, "msecond": 1e6, "second": 1e9}.get(unit, 1.0)
        rows[int(r["ID"])] = (
            r["Kernel Name"],
            r.get("Grid Size", ""),
            r.get("Block Size", ""),
            value * scale,
        )
    return [rows[i] for i in sorted(rows)]


def frame_of(seq):
    """The longest stretch that repeats right after itself: two back-to-back
    identical frames (blocks inside a frame repeat too, but shorter)."""
    import numpy as np

    ids = {}
    a = np.array([ids.setdefault((n, g, b), len(ids)) for n, g, b, _ in seq])
    for p in range(len(a) // 2, 0, -1):
        eq = a[:-p] == a[p:]
        # Longest run of matches: a run of p means seq[s:s+p] == seq[s+p:s+2p].
        edges = np.flatnonzero(np.diff(np.concatenate(([0], eq.astype(np.int8), [0]))))
        runs = edges[1::2] - edges[0::2]
        if len(runs) and runs.max() >= p:
            start = edges[0::2][runs.argmax()]
            return seq[start:start + p]
    return None


FAMILIES = [
    ("event signal (MLX stream sync)", r"event_signal|event_wait"),
    ("fused (compiled graph)", r"mlx::\w+_(contiguous|strided)<"),
    ("convolution (cuDNN)", r"fprop|dgrad|conv|cudnn|winograd"),
    ("GEMM (cuBLAS/cuBLASLt)", r"gemm|xmma|cutlass|nvjet|gemv"),
    ("attention", r"sdpa|attention|flash"),
    ("layout copies and casts", r"copy|transpose|nchw|nhwc|pad"),
    ("elementwise (unfused)", r"unary|binary|ternary|elementwise"),
    ("reductions / norms", r"reduce|norm|softmax|arg_"),
    ("gather / scatter", r"gather|scatter|index"),
]


def family(name):
    for label, pat in FAMILIES:
        if re.search(pat, name, re.IGNORECASE):
            return label
    return "other"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("csv")
    ap.add_argument("--json")
    a = ap.parse_args()
    seq = read(a.csv)
    frame = frame_of(seq)
    if frame is None:
        sys.exit(f"{a.csv}: {len(seq)} kernels and no frame repeated back to back")
    p = len(frame)
    by = defaultdict(lambda: [0, 0.0])
    for name, _, _, ns in frame:
        f = by[family(name)]
        f[0] += 1
        f[1] += ns
    total_ns = sum(ns for *_, ns in frame)
    out = {
        "kernels_in_file": len(seq),
        "kernels_per_frame": p,
        "gpu_busy_ms_per_frame": total_ns / 1e6,
        "families": {k: {"kernels": v[0], "ms": v[1] / 1e6} for k, v in sorted(by.items(), key=lambda kv: -kv[1][1])},
        "top_kernels": [],
    }
    tops = defaultdict(lambda: [0, 0.0])
    for name, _, _, ns in frame:
        t = tops[name[:120]]
        t[0] += 1
        t[1] += ns
    for name, (n, ns) in sorted(tops.items(), key=lambda kv: -kv[1][1])[:15]:
        out["top_kernels"].append({"name": name, "launches": n, "ms": ns / 1e6})
    print(f"{a.csv}: {p} kernels per frame, {total_ns / 1e6:.2f} ms of kernel time")
    for k, v in out["families"].items():
        print(f"  {k:34s} {v['kernels']:5d} kernels {v['ms']:8.3f} ms")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
