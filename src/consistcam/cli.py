"""``consistcam`` command line: train, evaluate, explain, demo, list."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

from consistcam.config import ConfigError
from consistcam.run.device import DEVICE_HELP


def _parse_set(items: list[str] | None) -> dict:
    """``--set key=value`` (values parsed as YAML); dotted keys nest: ``ecl.consistency.steps=3``."""
    out: dict = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            parsed = value
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r} conflicts with an earlier --set of {part!r}")
        node[leaf] = parsed
    return out


def _train_fields() -> list:
    import dataclasses

    from consistcam.train import TrainConfig

    return [f for f in dataclasses.fields(TrainConfig) if f.name != "strategy"]


def _method_flags() -> list[tuple[str, str, str]]:
    """(method, option, argparse dest) for every scalar option of every registered method: the
    flag ``--ecl-warmup`` sets ``ecl.warmup`` (nested options stay ``--set ecl.consistency.steps=3``)."""
    import dataclasses

    from consistcam.train import STRATEGIES

    out = []
    for name in STRATEGIES.names():
        for f in dataclasses.fields(STRATEGIES.get(name).Config):
            if f.default_factory is dataclasses.MISSING:  # scalars; nested configs go through --set
                out.append((name, f.name, f"method__{name}__{f.name}"))
    return out


def cmd_train(args: argparse.Namespace) -> int:
    from consistcam.train import TrainConfig, Trainer
    from consistcam.train.config import merge
    from consistcam.train.run_folder import read_status

    overrides = {f.name: getattr(args, f.name) for f in _train_fields() if getattr(args, f.name, None) is not None}
    for method, option, dest in _method_flags():
        if getattr(args, dest, None) is not None:
            overrides.setdefault(method, {})[option] = getattr(args, dest)
    overrides = merge(overrides, _parse_set(args.set))
    run_dir = Path(args.resume) if args.resume else None
    if run_dir is not None and not (run_dir / "config.yaml").is_file() and (args.config or overrides):
        # killed before its config was written: nothing to resume, start the run the flags describe
        if any(not p.name.endswith(".tmp") for p in run_dir.iterdir()) if run_dir.is_dir() else False:
            raise FileNotFoundError(f"cannot resume: {run_dir / 'config.yaml'} not found")
        overrides["out"], args.resume = str(run_dir), None
    if args.resume:
        saved = Path(args.resume) / "config.yaml"
        if not saved.is_file():
            raise FileNotFoundError(f"cannot resume: {saved} not found (is {args.resume} a run folder? A run killed "
                                    "before it wrote its config is resumed by its original command with --resume "
                                    f"{args.resume} added)")
        cfg = TrainConfig.from_yaml(saved, {**overrides, "out": args.resume})
    elif args.config:
        cfg = TrainConfig.from_yaml(args.config, overrides)
    else:
        cfg = TrainConfig.from_dict(overrides)
    trainer = Trainer.from_config(cfg, progress=not args.quiet, resume=bool(args.resume), overwrite=args.overwrite)
    if args.resume and trainer.start_epoch >= trainer.epochs and read_status(trainer.run_dir)["state"] == "complete":
        print(f"{trainer.run_dir} is complete ({trainer.epochs} epochs); nothing to do (--epochs N extends it)")
        return 0
    trainer.fit()
    if trainer.is_main:
        print(f"run folder: {trainer.run_dir}")
    if trainer.dist.enabled:
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from consistcam.evaluation import evaluate_run
    from consistcam.report import read_evaluation

    out = evaluate_run(args.run, data=args.data, splits=args.split, explainers=args.explainer or ("gradcam",),
                       protocols=None if args.protocols == "all" else [p for p in args.protocols.split(",") if p],
                       background=args.background, faithfulness_steps=args.faithfulness_steps, subset=args.subset,
                       batch_size=args.batch_size, workers=args.workers, seed=args.seed, device=args.device,
                       out=args.out, report=not args.no_report, progress=not args.quiet,
                       command="consistcam " + " ".join(sys.argv[1:]), skip_bad=args.skip_bad,
                       allow_incomplete=args.allow_incomplete)
    if not args.quiet:
        print(json.dumps(read_evaluation(out).splits, indent=2))
    if not args.no_report:
        print(f"report: {out / 'report.html'}")
    print(f"metrics: {out / 'metrics.json'}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from consistcam.report import compare_runs

    print(f"report: {compare_runs(args.runs, args.out, args.title)}")
    return 0


def _overlay_names(images: list[str], method: str) -> dict[str, str]:
    """``STEM_METHOD.png`` per image; images sharing a stem (``a/x.png``, ``b/x.png``) get ``STEM_K_METHOD.png``
    (k = 1, 2, ... in the order given) instead of overwriting each other's overlay."""
    paths = list(dict.fromkeys(images))
    stems = [Path(p).stem for p in paths]
    names = {p: f"{s}_{method}.png" for p, s in zip(paths, stems) if stems.count(s) == 1}
    used = set(names.values())
    for path, stem in zip(paths, stems):
        k = 0
        while path not in names:
            k += 1
            if f"{stem}_{k}_{method}.png" not in used:
                names[path] = f"{stem}_{k}_{method}.png"
                used.add(names[path])
    return {p: names[p] for p in paths}


def cmd_explain(args: argparse.Namespace) -> int:
    import torch
    import torch.nn.functional as F

    from consistcam.data import DataError, read_rgb
    from consistcam.evaluation.run import run_folder, run_option
    from consistcam.explain import explain
    from consistcam.report import save_overlay
    from consistcam.train import load_model
    from consistcam.train.run_folder import require_complete

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: exists and is not a folder (the overlays are written into a folder)")
    dests = _overlay_names(args.images, args.method)
    require_complete(run_folder(args.checkpoint), args.allow_incomplete)
    model, info = load_model(args.checkpoint, args.device)
    size = args.size or info.get("image_size")
    out.mkdir(parents=True, exist_ok=True)
    skip_bad = args.skip_bad if args.skip_bad is not None else bool(run_option(run_folder(args.checkpoint),
                                                                               "skip_bad", False))
    skipped = 0
    for path in args.images:
        try:
            image = read_rgb(path).float().div(255)[None]  # DataError names the file; main() reports it
        except DataError as err:
            if not skip_bad:
                raise
            print(f"warning: skipped {err}", file=sys.stderr)
            skipped += 1
            continue
        if size:
            image = F.interpolate(image, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        image = image.to(next(model.parameters()).device)
        if args.target is not None and args.target >= len(info["classes"]):
            raise ValueError(f"--target {args.target}: the model has {len(info['classes'])} classes")
        target = None if args.target is None else torch.tensor([args.target])
        heat, logits = explain(model, image, target, explainer=args.method, return_logits=True)
        cls = int(logits.argmax(1)) if args.target is None else args.target
        name = info["classes"][cls] if info["classes"] else str(cls)
        dest = save_overlay(out / dests[path], image[0], heat[0])
        print(f"{path}: class {cls} ({name}), p={logits.softmax(1)[0, cls]:.3f} -> {dest}")
    if skipped:
        print(f"warning: skipped {skipped} unreadable image(s)", file=sys.stderr)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from consistcam.demo import run_demo

    run_demo(args.out, epochs=args.epochs, seed=args.seed, progress=not args.quiet)
    return 0


def cmd_variants(args: argparse.Namespace) -> int:
    from consistcam.data import VARIANTS, build_dataset, export_variants

    variants = tuple(args.variant or VARIANTS)
    ds = build_dataset(args.data, args.split)
    counts = export_variants(ds, args.out, variants, split=args.split, seed=args.seed, progress=not args.quiet)
    print(f"wrote {sum(counts.values())} images ({', '.join(f'{k}: {v}' for k, v in counts.items())}) to {args.out}; "
          f"read them back with --data in9:{args.out}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from consistcam.consistency import SIMILARITIES
    from consistcam.data import DATASETS
    from consistcam.explain import list_explainers
    from consistcam.models import list_models
    from consistcam.train import STRATEGIES

    what = {"models": list_models, "explainers": list_explainers, "methods": STRATEGIES.names,
            "data": DATASETS.names, "similarities": SIMILARITIES.names}[args.what]
    print("\n".join(what()))
    return 0


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Every option shows its default (unless its help already does); epilogs keep their line breaks."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = (action.help or "").replace("%", "%%")  # help texts are plain text, argparse formats with %
        if "default" not in text and action.default not in (None, False, argparse.SUPPRESS) and action.option_strings:
            text += " (default: %(default)s)"
        return text


def _yaml_value(text: str):
    """Flag values are parsed like YAML values (``1e-3`` is a number, ``null`` is None); the config
    then checks the type and range and names the option on error."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _int_at_least(low: int, high: int | None = None):
    """argparse type: an integer >= ``low`` (``--subset -1`` is an error, not an empty evaluation)
    and <= ``high`` when given (``--size 100000`` is an error, not a 120 GB allocation)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(f"must be <= {high}, got {value}")
        return value

    parse.__name__ = f"integer >= {low}" if high is None else f"integer in [{low}, {high}]"
    return parse


def _method_options_help() -> str:
    import dataclasses

    from consistcam.config import option_help
    from consistcam.train import STRATEGIES

    lines = ["method options (in a config file under the method's name, or --set METHOD.KEY=VALUE):"]
    for name in STRATEGIES.names():
        cls = STRATEGIES.get(name)
        fields = dataclasses.fields(cls.Config)
        lines.append(f"  {name}: {(cls.__doc__ or '').strip().splitlines()[0] if cls.__doc__ else ''}")
        for f in fields:
            if dataclasses.is_dataclass(f.default_factory if f.default_factory is not dataclasses.MISSING else None):
                sub = f.default_factory
                lines.append(f"    {name}.{f.name}.*: {f.metadata.get('help', '')}")
                for g in dataclasses.fields(sub):
                    lines.append(f"      {name}.{f.name}.{g.name}: {option_help(sub, g.name)}")
            else:
                lines.append(f"    {name}.{f.name}: {option_help(cls.Config, f.name)}")
    return "\n".join(lines)


# Sub-commands that live with their own package: each module defines ``add_command(sub, formatter_class)``,
# which adds its parser and sets ``func`` (keeps this file from growing a section per feature).
COMMAND_MODULES: tuple[str, ...] = ("consistcam.fool.cli", "consistcam.sweep.cli", "consistcam.influence.cli",
                                    "consistcam.vae.cli", "consistcam.diagnosis.cli")


def build_parser() -> argparse.ArgumentParser:
    import importlib

    from consistcam.config import option_help
    from consistcam.data.images import MAX_SIDE
    from consistcam.train import TrainConfig

    p = argparse.ArgumentParser(prog="consistcam", description="Classifiers whose explanations can be trusted.",
                                formatter_class=_Formatter)
    p.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model (erm, ecl, ...)", formatter_class=_Formatter,
                       epilog=_method_options_help())
    t.add_argument("--config", help="YAML file of training options; flags and --set override it")
    for f in _train_fields():
        flag = "--" + f.name.replace("_", "-")
        if f.type in ("bool", bool):
            t.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                           help=option_help(TrainConfig, f.name))
        else:
            t.add_argument(flag, dest=f.name, type=_yaml_value, default=None, metavar=f.name.upper(),
                           help=option_help(TrainConfig, f.name))
    for method, option, dest in _method_flags():
        from consistcam.train import STRATEGIES

        flags = ["--" + f"{method}-{option}".replace("_", "-")]
        if method == "ecl" and option in ("update_every", "score_batch_size"):
            flags.append("--" + option.replace("_", "-"))  # the names before methods had sections
        t.add_argument(*flags, dest=dest, type=_yaml_value, default=None, metavar=option.upper(),
                       help=f"{method} only: {option_help(STRATEGIES.get(method).Config, option)}")
    t.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="any option, dotted for a method's options: --set ecl.consistency.steps=3 --set momentum=0.8")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run exactly (its config.yaml is used)")
    t.add_argument("--overwrite", action="store_true", help="replace what the --out folder holds (else refused)")
    t.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("evaluate", help="every evaluation protocol: metrics.json and report.html",
                       formatter_class=_Formatter)
    e.add_argument("run", help="run folder or model.safetensors")
    e.add_argument("--data", help="data spec (default: the run's)")
    e.add_argument("--split", action="append", help="split(s) to evaluate (default: the data set's test splits)")
    e.add_argument("--explainer", action="append", help="explainer(s); repeat for several (default: gradcam)")
    e.add_argument("--protocols", default="all",
                   help="comma-separated: localization,faithfulness,consistency,equivariance,robustness or all")
    e.add_argument("--no-background", dest="background", action="store_false",
                   help="skip the background-reliance variants (default: computed when the data has boxes/masks)")
    e.add_argument("--faithfulness-steps", type=_int_at_least(1), default=16, help="insertion/deletion steps")
    e.add_argument("--subset", type=_int_at_least(1), help="first N images of each split only (quick look)")
    e.add_argument("--batch-size", type=_int_at_least(1), default=200, help="evaluation batch size")
    e.add_argument("--workers", type=_int_at_least(0), default=0, help="data loader worker processes")
    e.add_argument("--seed", type=int, default=0, help="seed of attacks, crops and background partners")
    e.add_argument("--device", default="auto", help=DEVICE_HELP)
    e.add_argument("--out", help="output folder (default: RUN/eval)")
    e.add_argument("--no-report", action="store_true", help="write metrics.json only, no report.html")
    e.add_argument("--skip-bad", action=argparse.BooleanOptionalAction, default=None,
                   help="skip unreadable images and bad annotations (default: what the run was trained with)")
    e.add_argument("--allow-incomplete", action="store_true", help="evaluate a run whose training was interrupted")
    e.add_argument("--quiet", action="store_true", help="no progress bars, no metrics on stdout")
    e.set_defaults(func=cmd_evaluate)

    r = sub.add_parser("report", help="side-by-side HTML report of evaluated runs", formatter_class=_Formatter)
    r.add_argument("runs", nargs="+", help="run folders (with eval/metrics.json) or metrics.json files")
    r.add_argument("--out", default="report.html", help="HTML file to write")
    r.add_argument("--title", default="consistcam: runs side by side", help="title of the report")
    r.set_defaults(func=cmd_report)

    x = sub.add_parser("explain", help="heatmap overlays (PNG) for image files", formatter_class=_Formatter)
    x.add_argument("checkpoint", help="run folder or model.safetensors")
    x.add_argument("images", nargs="+", help="image files (JPEG, PNG, ...)")
    x.add_argument("--method", default="gradcam", help="explainer (consistcam list explainers)")
    x.add_argument("--target", type=_int_at_least(0), help="class to explain (default: the prediction)")
    x.add_argument("--size", type=_int_at_least(1, MAX_SIDE),
                   help="resize images to this size (default: the training size)")
    x.add_argument("--out", default="explanations", help="folder for the overlay PNGs")
    x.add_argument("--device", default="auto", help=DEVICE_HELP)
    x.add_argument("--allow-incomplete", action="store_true", help="use a run whose training was interrupted")
    x.add_argument("--skip-bad", action=argparse.BooleanOptionalAction, default=None,
                   help="skip unreadable image files with a warning (default: what the run was trained with)")
    x.set_defaults(func=cmd_explain)

    d = sub.add_parser("demo", help="ERM vs ECL on the embedded demo data set, with a report",
                       formatter_class=_Formatter)
    d.add_argument("--out", default="runs/demo", help="output folder (one run folder per method, report.html)")
    d.add_argument("--epochs", type=_int_at_least(1), default=8, help="epochs per method")
    d.add_argument("--seed", type=_int_at_least(0), default=0, help="seed of data order, initialisation, attacks")
    d.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines")
    d.set_defaults(func=cmd_demo)

    v = sub.add_parser("variants", help="export background-challenge variants in the ImageNet-9 layout",
                       formatter_class=_Formatter)
    v.add_argument("data", help="data spec with boxes or masks, e.g. tinyimagenet:PATH")
    v.add_argument("--split", default="val", help="split to export")
    v.add_argument("--variant", action="append", help="variant(s) to write (default: all)")
    v.add_argument("--seed", type=int, default=0, help="seed of the background partners")
    v.add_argument("--out", required=True, help="output folder (read back with --data in9:OUT)")
    v.add_argument("--quiet", action="store_true", help="no progress bar")
    v.set_defaults(func=cmd_variants)

    ls = sub.add_parser("list", help="list registered names", formatter_class=_Formatter)
    ls.add_argument("what", choices=["models", "explainers", "methods", "data", "similarities"],
                    help="what to list")
    ls.set_defaults(func=cmd_list)
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_command(sub, _Formatter)
    return p


def main(argv: list[str] | None = None) -> int:
    from consistcam._registry import EntryPointError

    try:
        parser = build_parser()  # lists the training methods: loads the plug-ins' entry points
    except EntryPointError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as err:  # ConfigError and DataError are ValueErrors
        if args.debug:
            raise
        print(f"error: {err}\n(consistcam --debug {args.command} ... shows the traceback)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
