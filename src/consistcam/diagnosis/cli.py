"""``consistcam diagnose RUN [RUN ...]``: how well ECL's weights (and JTT's error set, the per-sample
loss, E) single out the bias-conflicting training samples; with several runs (seeds), also the
mean ± std of every row."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from consistcam.run.layout import DIAGNOSIS_DIR, DIAGNOSIS_FIGURE_FILE, DIAGNOSIS_FILE, DIAGNOSIS_TABLE_FILE


def _pm(row: dict, key: str) -> str:
    mean, std = row.get(key), row.get(f"{key}_std")
    if not isinstance(mean, float) or math.isnan(mean):
        return ""
    return f"{mean:.3f}" + ("" if std is None or math.isnan(std) else f" ± {std:.3f}")


def cmd_diagnose(args: argparse.Namespace) -> int:
    from consistcam.diagnosis.run import diagnose_run, markdown, summarize

    docs = []
    for run in args.runs:
        out = diagnose_run(run, data=args.data)
        docs.append(json.loads((out / DIAGNOSIS_FILE).read_text()))
        print(f"{run}: {out / DIAGNOSIS_TABLE_FILE}, {out / DIAGNOSIS_FIGURE_FILE}")
    if len(docs) == 1:
        print(markdown(docs[0]["rows"]), end="")
        return 0
    rows = summarize(docs)
    keys = ("auc", "precision_at_k", "weight_share", "set_precision", "set_recall", "minority_fraction")
    table = markdown([{"source": r["source"], "epoch": r["epoch"], "runs": r["runs"], **{k: _pm(r, k) for k in keys}}
                      for r in rows], ("source", "epoch", "runs", *keys))
    print(table, end="")
    if args.summary:
        path = Path(args.summary)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"# Minority identification over {len(docs)} runs (mean ± std)\n\n"
                        + "".join(f"- {d['run']} ({d['method']}, seed {d['seed']})\n" for d in docs) + "\n" + table)
        path.with_suffix(".json").write_text(json.dumps({"runs": [d["run"] for d in docs], "rows": rows}, indent=1))
        print(f"summary: {path}")
    return 0


def add_command(sub: argparse._SubParsersAction, formatter_class: type) -> None:
    p = sub.add_parser(
        "diagnose", formatter_class=formatter_class,
        help="do a run's per-sample weights single out the bias-conflicting training samples?",
        description="For every ECL scoring round (weight v, 1 - E, the model's errors) and JTT's error set and "
                    "per-sample loss: ROC-AUC and precision at the minority fraction of finding the training images "
                    "whose background group is not their class, and the minority's share of the weight. Writes "
                    f"RUN/{DIAGNOSIS_DIR}/ ({DIAGNOSIS_FILE}, .md, .png); consistcam report shows it. Needs data with "
                    "background groups (demo, shortcut:...).",
        epilog="examples:\n  consistcam diagnose runs/compare/demo/method=ecl/seed=0\n"
               "  consistcam diagnose runs/x/seed=0 runs/x/seed=1 runs/x/seed=2 --summary runs/x/summary.md")
    p.add_argument("runs", nargs="+", help="run folders (ecl or jtt)")
    p.add_argument("--data", help="training data spec, when the run's own does not resolve from here")
    p.add_argument("--summary", metavar="FILE.md", help="with several runs: write the mean ± std table here (+ .json)")
    p.set_defaults(func=cmd_diagnose)
