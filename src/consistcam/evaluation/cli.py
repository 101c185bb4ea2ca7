"""``consistcam evaluate RUN``: its flags come from :class:`EvaluationConfig` through
:mod:`consistcam.arguments`; :func:`parse_evaluate_args` lets ``consistcam sweep --evaluate-args``
read the same flags without the whole command line."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from consistcam.arguments import (
    Formatter,
    add_config_options,
    add_quiet,
    check_output_folder,
    config_overrides,
    parse_set,
)
from consistcam.evaluation.config import EvaluationConfig
from consistcam.evaluation.pipeline import PROTOCOLS
from consistcam.run.layout import EVAL_DIR, EVAL_METRICS_FILE, MODEL_FILE, REPORT_FILE


def _protocols(text: str) -> tuple[str, ...]:
    """``--protocols a,b`` or ``all``."""
    return PROTOCOLS if text == "all" else tuple(p for p in text.split(",") if p)


# flags whose value has several parts (and the spellings scripts use)
_LISTS = {
    "explainers": {"flag": "--explainer", "action": "append", "metavar": "EXPLAINER",
                   "help": "explainer; repeat for several (default: gradcam)"},
    "protocols": {"type": _protocols, "metavar": "P1,P2",
                  "help": f"comma-separated: {','.join(PROTOCOLS)} or all (default: all)"},
}


def add_evaluate_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of ``consistcam evaluate`` (without ``func``)."""
    p.add_argument("run", help=f"run folder or {MODEL_FILE}")
    p.add_argument("--data", help="data spec (default: the run's)")
    p.add_argument("--split", action="append", help="split(s) to evaluate (default: the data set's test splits)")
    add_config_options(p, EvaluationConfig, lists=_LISTS)
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="any option, dotted for the consistency scorer: --set consistency.steps=3")
    p.add_argument("--out", help=f"output folder (default: RUN/{EVAL_DIR})")
    p.add_argument("--no-report", action="store_true", help=f"write {EVAL_METRICS_FILE} only, no {REPORT_FILE}")
    p.add_argument("--allow-incomplete", action="store_true", help="evaluate a run whose training was interrupted")
    add_quiet(p, "no progress bars, no metrics on stdout")


def evaluation_config(args: argparse.Namespace) -> EvaluationConfig:
    """The :class:`EvaluationConfig` of parsed ``evaluate`` arguments (flags, then ``--set``)."""
    options = config_overrides(args, EvaluationConfig)
    for key, value in parse_set(args.set).items():
        if isinstance(value, dict) and isinstance(options.get(key), dict):
            value = {**options[key], **value}
        options[key] = value
    return EvaluationConfig.from_dict(options)


def parse_evaluate_args(run: str, argv: Sequence[str]) -> tuple[EvaluationConfig, argparse.Namespace]:
    """``consistcam evaluate RUN *argv`` parsed and checked, without building the whole command line."""
    p = argparse.ArgumentParser(prog="consistcam evaluate", formatter_class=Formatter)
    add_evaluate_arguments(p)
    args = p.parse_args([run, *argv])
    return evaluation_config(args), args


def cmd_evaluate(args: argparse.Namespace) -> int:
    from consistcam.evaluation.run import evaluate_run
    from consistcam.report import read_evaluation

    config = evaluation_config(args)  # checked before the model or any data is read
    if args.out:
        check_output_folder(args.out)
    out = evaluate_run(args.run, config, data=args.data, splits=args.split, out=args.out, report=not args.no_report,
                       progress=not args.quiet, command="consistcam " + " ".join(sys.argv[1:]),
                       allow_incomplete=args.allow_incomplete)
    if not args.quiet:
        print(json.dumps(read_evaluation(out).splits, indent=2))
    if not args.no_report:
        print(f"report: {out / REPORT_FILE}")
    print(f"metrics: {out / EVAL_METRICS_FILE}")
    return 0


def add_command(sub: argparse._SubParsersAction, formatter_class: type) -> None:
    e = sub.add_parser("evaluate", help=f"every evaluation protocol: {EVAL_METRICS_FILE} and {REPORT_FILE}",
                       formatter_class=formatter_class)
    add_evaluate_arguments(e)
    e.set_defaults(func=cmd_evaluate)
