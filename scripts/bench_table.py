#!/usr/bin/env python3
"""Prints the `auth` bench as a table: median, added time over `baseline`, ratio to `floor`.

Run after `cargo bench --all-features --bench auth`; reads criterion's results from
target/criterion/auth (or the directory given as the first argument).
"""
import json
import pathlib
import sys

root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "target/criterion/auth")
medians = {}
for estimates in root.glob("*/new/estimates.json"):
    bench = json.loads((estimates.parent / "benchmark.json").read_text())
    medians[bench["function_id"]] = json.loads(estimates.read_text())["median"]["point_estimate"]

if "baseline" not in medians or "floor" not in medians:
    sys.exit(f"no baseline/floor results under {root}: run `cargo bench --all-features --bench auth`")

baseline = medians["baseline"]
floor_added = medians["floor"] - baseline
order = ["baseline", "floor"] + sorted(k for k in medians if k not in ("baseline", "floor"))
print("| case | median | added over baseline | added / floor's added |")
print("| --- | ---: | ---: | ---: |")
for name in order:
    added = medians[name] - baseline
    ratio = "" if name == "baseline" else f"{added / floor_added:.2f}x"
    print(f"| `{name}` | {medians[name]:.0f} ns | {added:+.0f} ns | {ratio} |")
