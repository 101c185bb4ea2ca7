"""``consistcam sweep``: the command-line face of :mod:`consistcam.sweep`."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from consistcam.arguments import add_quiet, check_output_folder, parse_set

EPILOG = """\
examples:
  consistcam sweep configs/tinyimagenet_cpu.yaml --grid method=erm,ecl ecl.consistency.steps=1,3,5 \\
      --seeds 0 1 2 --out sweeps/steps
  consistcam sweep --set data=demo --set epochs=6 --arm method=erm --arm method=ecl \\
      --arm "method=ecl ecl.update_every=1" --seeds 0 1 2 --out sweeps/demo \\
      --evaluate-args --protocols localization,consistency --no-background
  consistcam sweep ... --shard 0/4     # this process runs members 0, 4, 8, ... (then 1/4, 2/4, 3/4)
  consistcam sweep ... --table-only    # after every shard finished: the table over all members

Members = every --arm (or none) x the cartesian product of the --grid values, x --seeds. Each is a
run folder OUT/<key=value__...>_s<seed>; a complete one is skipped, an interrupted one resumed.
The table (OUT/sweep.md, .csv, .json) and the plot (OUT/sweep.png) cover every evaluated member.
See docs/sweep.md for the verdict rule."""


def add_command(sub, formatter_class) -> None:
    s = sub.add_parser("sweep", help="run a grid of options x seeds; table and plot against a baseline",
                       formatter_class=formatter_class, epilog=EPILOG)
    s.add_argument("config", nargs="?", help="YAML file of training options every member starts from "
                   "(put it first; default: the built-in defaults)")
    s.add_argument("--grid", action="extend", nargs="+", metavar="KEY=V1,V2",
                   help="option values to sweep; several keys give their cartesian product; dotted keys for a "
                        "method's options (ecl.consistency.steps=1,3); KEY=[..] for values with commas")
    s.add_argument("--arm", action="append", metavar="'KEY=V [KEY=V ...]'",
                   help="an explicit arm (repeat for several); combined with every --grid point")
    s.add_argument("--set", action="append", metavar="KEY=VALUE", help="an option for every member (as train --set)")
    s.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="training seeds of every arm")
    s.add_argument("--out", required=True, help="sweep folder: one run folder per member, the table and plot")
    s.add_argument("--shard", metavar="I/N", help="run only members k with k mod N == I (0 <= I < N)")
    s.add_argument("--baseline", help="arm the others are compared with: its name or KEY=V words that select one "
                                      "arm (default: the arm with method erm, if exactly one)")
    s.add_argument("--confidence", type=float, default=0.95, help="level of the paired t-interval of the verdict")
    s.add_argument("--metrics", help="comma-separated [SPLIT/]METRIC columns of the markdown (default: the key ones "
                                     "present; CSV/JSON hold all)")
    s.add_argument("--plot-metric", help="[SPLIT/]METRIC of the plot (default: acc on the first split)")
    s.add_argument("--list", action="store_true", help="list the members (shard, state) and exit")
    s.add_argument("--table-only", action="store_true", help="run nothing; write the table from what is evaluated")
    add_quiet(s, "no progress bars or per-epoch lines of each run (the [sweep] lines stay)")
    s.add_argument("--evaluate-args", nargs=argparse.REMAINDER,
                   help="everything after it goes to `consistcam evaluate RUN` (must come last; --out not allowed)")
    s.set_defaults(func=cmd_sweep)


def cmd_sweep(args: argparse.Namespace) -> int:
    from consistcam.run.status import read_status
    from consistcam.sweep import grid as g
    from consistcam.sweep.runner import collect, evaluation_options, is_evaluated, member_config, run_members
    from consistcam.sweep.table import write_outputs
    from consistcam.train import METHODS, TrainConfig

    if args.config and not Path(args.config).is_file():
        raise FileNotFoundError(f"sweep CONFIG {args.config} not found (a YAML file of training options)")
    if not 0 < args.confidence < 1:
        raise ValueError(f"--confidence must be in (0, 1), got {args.confidence}")
    base = parse_set(args.set)
    for key in ("seed", "out"):
        if key in base:
            raise ValueError(f"--set {key}=...: the sweep sets {key} per member; use {g.RESERVED[key]}")
    grid = [g.parse_grid_item(item) for item in args.grid or []]
    arms = g.expand_arms(grid, [g.parse_assignments(a) for a in args.arm or []],
                         base_method=_base_method(args.config, base, TrainConfig), methods=METHODS.names())
    items = g.members(arms, args.seeds)
    root = check_output_folder(args.out)
    baseline = g.select_arm(arms, args.baseline, _base_method(args.config, base, TrainConfig))
    mine = g.shard(items, *g.parse_shard(args.shard)) if args.shard else items
    evaluate_args = list(args.evaluate_args or [])
    evaluation_options(root, evaluate_args)  # a bad --evaluate-args fails before the first member trains
    for m in items:  # every member's config is valid before anything runs (all shards see the same error)
        member_config(args.config, base, m, root)
    if args.list:  # this shard's members (all without --shard): folder, state, arm, seed
        for m in mine:
            state = read_status(root / m.folder)["state"]
            state += ", evaluated" if is_evaluated(root / m.folder, evaluate_args) else ""
            print(f"{m.folder}\t{state}\t{m.arm.name}\t{m.seed}")
        return 0
    if not args.table_only:
        run_members(root, args.config, base, mine, evaluate_args, progress=not args.quiet)
    collected = collect(root, items, evaluate_args)
    from_shell = Path(sys.argv[0]).name in ("consistcam", "__main__.py")  # else main(argv) from Python
    command = "consistcam " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if from_shell else None
    header = (f"Sweep `{root}`: {len(arms)} arms x seeds {', '.join(map(str, args.seeds))}"
              f" ({len(items) - len(collected.missing)} of {len(items)} members evaluated).")
    meta = {"command": command, "config": args.config, "set": args.set or [], "grid": args.grid or [],
            "arm": args.arm or [], "seeds": args.seeds, "evaluate_args": evaluate_args}
    names = [a.name for a in arms]
    out = write_outputs(root, collected, names, baseline.name if baseline else None, args.confidence,
                        [m.strip() for m in args.metrics.split(",") if m.strip()] if args.metrics else None,
                        args.plot_metric, header, meta)
    print((root / "sweep.md").read_text())
    print("written: " + ", ".join(str(p) for p in out.values()))
    return 0


def _base_method(config: str | None, base: dict, config_cls) -> str:
    """The method of CONFIG + --set (what an arm trains unless it sets ``method``)."""
    if config:
        return config_cls.from_yaml(config, base).method
    return config_cls.from_dict(base).method
