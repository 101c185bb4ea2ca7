"""Mean +- std over seeds of every metric in RUN/eval/metrics.json, runs grouped by the name before
``_s<seed>`` (e.g. runs/tin10/erm_s0, erm_s1 -> erm). Prints a markdown table with the difference
(other group - baseline); a difference no larger than the larger of the two sample standard
deviations is flagged "none".

    .venv/bin/python scripts/summarize_runs.py runs/tin10 --split val
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("root")
    ap.add_argument("--split", default="val")
    ap.add_argument("--baseline", default="erm", help="group listed first; the difference is other - baseline")
    args = ap.parse_args()
    groups: dict[str, dict[str, list[float]]] = {}
    seeds: dict[str, list[str]] = {}
    for f in sorted(Path(args.root).glob("*/eval/metrics.json")):
        m = re.fullmatch(r"(.+)_s(\d+)", f.parent.parent.name)
        if not m:
            continue
        res = json.loads(f.read_text())["splits"][args.split]
        seeds.setdefault(m[1], []).append(m[2])
        for k, v in res.items():
            if isinstance(v, (int, float)) and not k.startswith("n_"):
                groups.setdefault(m[1], {}).setdefault(k, []).append(float(v))
    names = sorted(groups, key=lambda n: (n != args.baseline, n))
    print("| metric | " + " | ".join(f"{n} (seeds {','.join(seeds[n])})" for n in names) + " | difference |")
    print("|---|" + "---|" * (len(names) + 1))
    for key in groups[names[0]]:
        cells, stats = [], []
        for n in names:
            vals = groups[n].get(key, [])
            mean = statistics.fmean(vals) if vals else float("nan")
            std = statistics.stdev(vals) if len(vals) > 1 else float("nan")
            stats.append((mean, std))
            cells.append(f"{mean:.3f} ± {std:.3f}")
        diff = ""
        if len(stats) == 2:
            d = stats[1][0] - stats[0][0]
            spread = max(stats[0][1], stats[1][1])
            diff = f"{d:+.3f}" + (" (none: inside seed spread)" if abs(d) <= spread else "")
        print(f"| {key} | " + " | ".join(cells) + f" | {diff} |")


if __name__ == "__main__":
    main()
