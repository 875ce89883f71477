#!/usr/bin/env python3
"""Prints the `auth` bench as a table of added time per request.

Run after `cargo bench --all-features --bench auth`. Reads target/criterion/auth (or the
directory given as the first argument): `paired.json`, where each case was timed interleaved
with the no-auth baseline, and criterion's own medians for the rest.
"""
import json
import pathlib
import sys

root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "target/criterion/auth")
paired_file = root / "paired.json"
if not paired_file.exists():
    sys.exit(f"no {paired_file}: run `cargo bench --all-features --bench auth` first")
paired = json.loads(paired_file.read_text())

medians = {}
for estimates in root.glob("*/new/estimates.json"):
    bench = json.loads((estimates.parent / "benchmark.json").read_text())
    medians[bench["function_id"]] = json.loads(estimates.read_text())["median"]["point_estimate"]

added = {name: p["case_ns"] - p["baseline_ns"] for name, p in paired.items()}
floor = added["floor"]
print("| case | ns per request | baseline alongside | added | added / floor's added |")
print("| --- | ---: | ---: | ---: | ---: |")
order = ["floor"] + sorted(n for n in paired if n != "floor")
for name in order:
    p = paired[name]
    print(
        f"| `{name}` | {p['case_ns']:.0f} | {p['baseline_ns']:.0f} | "
        f"{added[name]:+.0f} ns | {added[name] / floor:.2f}x |"
    )
if "layer/miss" in medians:
    base = sum(p["baseline_ns"] for p in paired.values()) / len(paired)
    print(
        f"| `layer/miss` (cold cache, memory store; criterion median) | {medians['layer/miss']:.0f} "
        f"| {base:.0f} (mean of the above) | {medians['layer/miss'] - base:+.0f} ns | |"
    )
