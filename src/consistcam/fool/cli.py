"""``consistcam fool RUN --kind location|topk|center-mass|active --out RUN2``."""

from __future__ import annotations

import argparse
import json
import shlex
import sys

from consistcam.arguments import add_config_options, add_device, add_quiet, check_output_folder, config_overrides
from consistcam.fool.finetune import FoolConfig
from consistcam.run.layout import FOOL_FILE, MODEL_FILE

# options with several values on the command line
_LISTS = {"classes": dict(nargs=2, type=int, metavar=("A", "B")), "transfer": dict(nargs="*", metavar="EXPLAINER")}


def add_command(sub, formatter_class) -> None:
    """Add the ``fool`` parser: one flag per :class:`FoolConfig` option, plus the run folders."""
    p = sub.add_parser("fool", help="fine-tune a trained run so that its explanations are fooled (Heo et al. 2019)",
                       formatter_class=formatter_class,
                       description="Adversarial model manipulation: fine-tune RUN's model with CE + lam * fooling loss "
                                   "and write the fooled model to OUT, a run folder `consistcam evaluate` reads, with "
                                   f"{FOOL_FILE} (FSR, rank correlation, accuracy before/after, transfer).")
    p.add_argument("run", help=f"trained run folder (or its {MODEL_FILE})")
    p.add_argument("--out", required=True, help="new run folder for the fooled model")
    add_config_options(p, FoolConfig, dest_prefix="fool_", lists=_LISTS)
    add_device(p)
    p.add_argument("--overwrite", action="store_true", help="replace what OUT holds")
    p.add_argument("--allow-incomplete", action="store_true", help="fool an interrupted run")
    add_quiet(p, "no progress bars, no summary")
    p.set_defaults(func=cmd_fool)


def cmd_fool(args: argparse.Namespace) -> int:
    from consistcam.fool.run import fool_run

    # checked before the model or any data is read
    cfg = FoolConfig.from_dict(config_overrides(args, FoolConfig, dest_prefix="fool_"))
    check_output_folder(args.out)
    command = "consistcam " + shlex.join(sys.argv[1:]) if sys.argv[1:] else "consistcam fool"
    doc = fool_run(args.run, args.out, cfg, device=args.device, overwrite=args.overwrite,
                   allow_incomplete=args.allow_incomplete, progress=not args.quiet, command=command)
    if not args.quiet:
        summary = {k: doc[k] for k in ("acc_before", "acc_after", "fsr", "rank_corr")}
        print(json.dumps({"kind": cfg.kind, **summary, "explainers": doc["explainers"]}, indent=2))
        print(f"fooled run: {args.out} (consistcam evaluate {args.out})")
    return 0
