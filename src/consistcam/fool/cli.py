"""``consistcam fool RUN --kind location|topk|center-mass|active --out RUN2``."""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys

from consistcam.fool.finetune import FoolConfig
from consistcam.run.device import DEVICE_HELP

# options with several values on the command line
_LISTS = {"classes": dict(nargs=2, type=int, metavar=("A", "B")), "transfer": dict(nargs="*", metavar="EXPLAINER")}


def add_command(sub, formatter_class) -> None:
    """Add the ``fool`` parser: one flag per :class:`FoolConfig` option, plus the run folders."""
    from consistcam.config import option_help

    p = sub.add_parser("fool", help="fine-tune a trained run so that its explanations are fooled (Heo et al. 2019)",
                       formatter_class=formatter_class,
                       description="Adversarial model manipulation: fine-tune RUN's model with CE + lam * fooling loss "
                                   "and write the fooled model to OUT, a run folder `consistcam evaluate` reads, with "
                                   "fool.json (FSR, rank correlation, accuracy before/after, transfer).")
    p.add_argument("run", help="trained run folder (or its model.safetensors)")
    p.add_argument("--out", required=True, help="new run folder for the fooled model")
    for f in dataclasses.fields(FoolConfig):
        flag = "--" + f.name.replace("_", "-")
        extra = dict(_LISTS.get(f.name, {}))
        if not extra and f.type in ("int", "int | None"):
            extra = {"type": int}
        elif not extra and f.type == "float":
            extra = {"type": float}
        extra.setdefault("metavar", f.name.upper())
        p.add_argument(flag, dest=f"fool_{f.name}", default=None, help=option_help(FoolConfig, f.name), **extra)
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--overwrite", action="store_true", help="replace what OUT holds")
    p.add_argument("--allow-incomplete", action="store_true", help="fool an interrupted run")
    p.add_argument("--quiet", action="store_true", help="no progress bars, no summary")
    p.set_defaults(func=cmd_fool)


def cmd_fool(args: argparse.Namespace) -> int:
    from consistcam.fool.run import fool_run

    options = {f.name: getattr(args, f"fool_{f.name}") for f in dataclasses.fields(FoolConfig)
               if getattr(args, f"fool_{f.name}", None) is not None}
    cfg = FoolConfig.from_dict(options)  # checked before the model or any data is read
    command = "consistcam " + shlex.join(sys.argv[1:]) if sys.argv[1:] else "consistcam fool"
    doc = fool_run(args.run, args.out, cfg, device=args.device, overwrite=args.overwrite,
                   allow_incomplete=args.allow_incomplete, progress=not args.quiet, command=command)
    if not args.quiet:
        summary = {k: doc[k] for k in ("acc_before", "acc_after", "fsr", "rank_corr")}
        print(json.dumps({"kind": cfg.kind, **summary, "explainers": doc["explainers"]}, indent=2))
        print(f"fooled run: {args.out} (consistcam evaluate {args.out})")
    return 0
