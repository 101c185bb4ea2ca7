"""``consistcam`` command line: train, evaluate, explain, demo, list."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from consistcam.arguments import (
    Formatter,
    add_config_options,
    add_device,
    add_quiet,
    check_output_folder,
    config_overrides,
    int_at_least,
    parse_set,
)
from consistcam.config import option_help
from consistcam.run.layout import CONFIG_FILE, EVAL_DIR, EVAL_METRICS_FILE, MODEL_FILE, REPORT_FILE

TRAIN_SKIP = ("method_options",)  # the chosen method's options: --METHOD-OPTION flags and --set METHOD.KEY=VALUE


def _method_configs() -> list[tuple[str, type]]:
    """(method, its options dataclass) of every registered training method: the flag ``--ecl-warmup``
    sets ``ecl.warmup`` (nested options stay ``--set ecl.consistency.steps=3``)."""
    from consistcam.train import METHODS

    return [(name, METHODS.get(name).Config) for name in METHODS.names()]


def cmd_train(args: argparse.Namespace) -> int:
    from consistcam.run.layout import config_path
    from consistcam.run.status import read_status
    from consistcam.train import TrainConfig, Trainer
    from consistcam.train.config import merge

    overrides = config_overrides(args, TrainConfig, skip=TRAIN_SKIP)
    for method, config in _method_configs():
        options = config_overrides(args, config, dest_prefix=f"method__{method}__")
        if options:
            overrides[method] = options
    overrides = merge(overrides, parse_set(args.set))
    run_dir = Path(args.resume) if args.resume else None
    if run_dir is not None and not config_path(run_dir).is_file() and (args.config or overrides):
        # killed before its config was written: nothing to resume, start the run the flags describe
        if any(not p.name.endswith(".tmp") for p in run_dir.iterdir()) if run_dir.is_dir() else False:
            raise FileNotFoundError(f"cannot resume: {config_path(run_dir)} not found")
        overrides["out"], args.resume = str(run_dir), None
    if args.resume:
        saved = config_path(args.resume)
        if not saved.is_file():
            raise FileNotFoundError(f"cannot resume: {saved} not found (is {args.resume} a run folder? A run killed "
                                    "before it wrote its config is resumed by its original command with --resume "
                                    f"{args.resume} added)")
        cfg = TrainConfig.from_yaml(saved, {**overrides, "out": args.resume})
    elif args.config:
        cfg = TrainConfig.from_yaml(args.config, overrides)
    else:
        cfg = TrainConfig.from_dict(overrides)
    check_output_folder(cfg.out)
    trainer = Trainer.from_config(cfg, progress=not args.quiet, resume=bool(args.resume), overwrite=args.overwrite)
    epochs = trainer.loop.epochs
    if args.resume and trainer.start_epoch >= epochs and read_status(trainer.run_dir)["state"] == "complete":
        print(f"{trainer.run_dir} is complete ({epochs} epochs); nothing to do (--epochs N extends it)")
        return 0
    trainer.fit()
    if trainer.is_main:
        print(f"run folder: {trainer.run_dir}")
    if trainer.dist.enabled:
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    import warnings

    from consistcam.report import compare_runs

    with warnings.catch_warnings(record=True) as caught:  # runs left out: one line each, not Python's format
        warnings.simplefilter("always")
        page = compare_runs(args.runs, args.out, args.title)
    for w in caught:
        print(f"warning: {str(w.message).removeprefix('compare_runs: ')}", file=sys.stderr)
    print(f"report: {page}")
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
    from consistcam.explain import explain
    from consistcam.report import save_overlay
    from consistcam.run.layout import run_folder, run_option
    from consistcam.run.status import require_complete
    from consistcam.train import load_model

    out = check_output_folder(args.out)
    dests = _overlay_names(args.images, args.explainer)
    require_complete(run_folder(args.checkpoint), args.allow_incomplete)
    model, info = load_model(args.checkpoint, args.device)
    if args.target is not None and args.target >= len(info["classes"]):
        raise ValueError(f"--target {args.target}: the model has {len(info['classes'])} classes")
    size = args.size or info.get("image_size")
    skip_bad = args.skip_bad if args.skip_bad is not None else bool(run_option(run_folder(args.checkpoint),
                                                                               "skip_bad", False))
    # every image is read and checked before the first overlay is written (and before --out is made)
    images: dict[str, torch.Tensor] = {}
    skipped = 0
    for path in dict.fromkeys(args.images):
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
        images[path] = image.to(next(model.parameters()).device)
        _check_explainable(model, path, images[path], resized=bool(size))
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        for path, image in images.items():
            target = None if args.target is None else torch.tensor([args.target])
            heat, logits = explain(model, image, target, explainer=args.explainer, return_logits=True)
            cls = int(logits.argmax(1)) if args.target is None else args.target
            name = info["classes"][cls] if info["classes"] else str(cls)
            dest = save_overlay(out / dests[path], image[0], heat[0])
            if not args.quiet:
                print(f"{path}: class {cls} ({name}), p={logits.softmax(1)[0, cls]:.3f} -> {dest}")
    except BaseException:
        if created and not any(out.iterdir()):  # a failed command leaves no empty folder behind
            out.rmdir()
        raise
    if skipped:
        print(f"warning: skipped {skipped} unreadable image(s)", file=sys.stderr)
    return 0


def _check_explainable(model, path: str, image, resized: bool) -> None:
    """An image too small for the model (no layer keeps a spatial map, or a kernel larger than its
    feature map) is named with its size, instead of an error about the model's layers."""
    from consistcam.explain import find_target_layer

    try:
        find_target_layer(model, image)
    except (ValueError, RuntimeError):
        height, width = image.shape[-2:]
        hint = "pass a larger --size" if resized else "use a larger image or --size N (the training size)"
        raise ValueError(f"{path}: {width}x{height} pixels{' after --size' if resized else ''} is too small for "
                         f"this model to explain (no layer keeps a spatial map); {hint}") from None


def cmd_demo(args: argparse.Namespace) -> int:
    from consistcam.demo import run_demo

    run_demo(args.out, epochs=args.epochs, seed=args.seed, device=args.device, progress=not args.quiet)
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
    from consistcam.train import METHODS

    what = {"models": list_models, "explainers": list_explainers, "methods": METHODS.names,
            "data": DATASETS.names, "similarities": SIMILARITIES.names}[args.what]
    print("\n".join(what()))
    return 0


def _method_options_help() -> str:
    import dataclasses

    from consistcam.train import METHODS

    lines = ["method options (in a config file under the method's name, or --set METHOD.KEY=VALUE):"]
    for name in METHODS.names():
        cls = METHODS.get(name)
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


def build_parser() -> argparse.ArgumentParser:
    from consistcam.data.images import MAX_SIDE
    from consistcam.diagnosis import cli as diagnosis_cli
    from consistcam.evaluation import cli as evaluation_cli
    from consistcam.fool import cli as fool_cli
    from consistcam.influence import cli as influence_cli
    from consistcam.sweep import cli as sweep_cli
    from consistcam.train import TrainConfig
    from consistcam.vae import cli as vae_cli

    p = argparse.ArgumentParser(prog="consistcam", description="Classifiers whose explanations can be trusted.",
                                formatter_class=Formatter)
    p.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model (erm, ecl, ...)", formatter_class=Formatter,
                       epilog=_method_options_help())
    t.add_argument("--config", help="YAML file of training options; flags and --set override it")
    add_config_options(t, TrainConfig, skip=TRAIN_SKIP)
    for method, config in _method_configs():
        add_config_options(t, config, dest_prefix=f"method__{method}__", flag_prefix=f"{method}-",
                           help_prefix=f"{method} only: ")
    t.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="any option, dotted for a method's options: --set ecl.consistency.steps=3 --set momentum=0.8")
    t.add_argument("--resume", metavar="RUN_DIR",
                   help=f"continue an interrupted run exactly (its {CONFIG_FILE} is used)")
    t.add_argument("--overwrite", action="store_true", help="replace what the --out folder holds (else refused)")
    add_quiet(t, "no progress bars or per-epoch lines")
    t.set_defaults(func=cmd_train)

    evaluation_cli.add_command(sub, Formatter)

    r = sub.add_parser("report", help="side-by-side HTML report of evaluated runs", formatter_class=Formatter)
    r.add_argument("runs", nargs="+",
                   help=f"run folders (with {EVAL_DIR}/{EVAL_METRICS_FILE}) or {EVAL_METRICS_FILE} files")
    r.add_argument("--out", default=REPORT_FILE, help="HTML file to write")
    r.add_argument("--title", default="consistcam: runs side by side", help="title of the report")
    r.set_defaults(func=cmd_report)

    x = sub.add_parser("explain", help="heatmap overlays (PNG) for image files", formatter_class=Formatter)
    x.add_argument("checkpoint", help=f"run folder or {MODEL_FILE}")
    x.add_argument("images", nargs="+", help="image files (JPEG, PNG, ...)")
    x.add_argument("--explainer", default="gradcam", help="explainer (consistcam list explainers)")
    x.add_argument("--target", type=int_at_least(0), help="class to explain (default: the prediction)")
    x.add_argument("--size", type=int_at_least(1, MAX_SIDE),
                   help="resize images to this size (default: the training size)")
    x.add_argument("--out", default="explanations", help="folder for the overlay PNGs")
    add_device(x)
    x.add_argument("--allow-incomplete", action="store_true", help="use a run whose training was interrupted")
    x.add_argument("--skip-bad", action=argparse.BooleanOptionalAction, default=None,
                   help="skip unreadable image files with a warning (default: what the run was trained with)")
    add_quiet(x, "no line per image (warnings still go to stderr)")
    x.set_defaults(func=cmd_explain)

    d = sub.add_parser("demo", help="ERM vs ECL on the embedded demo data set, with a report",
                       formatter_class=Formatter)
    d.add_argument("--out", default="runs/demo", help=f"output folder (one run folder per method, {REPORT_FILE})")
    d.add_argument("--epochs", type=int_at_least(1), default=8, help="epochs per method")
    d.add_argument("--seed", type=int_at_least(0), default=0, help="seed of data order, initialisation, attacks")
    add_device(d)
    add_quiet(d, "no progress bars or per-epoch lines")
    d.set_defaults(func=cmd_demo)

    v = sub.add_parser("variants", help="export background-challenge variants in the ImageNet-9 layout",
                       formatter_class=Formatter)
    v.add_argument("data", help="data spec with boxes or masks, e.g. tinyimagenet:PATH")
    v.add_argument("--split", default="val", help="split to export")
    v.add_argument("--variant", action="append", help="variant(s) to write (default: all)")
    v.add_argument("--seed", type=int, default=0, help="seed of the background partners")
    v.add_argument("--out", required=True, help="output folder (read back with --data in9:OUT)")
    add_quiet(v, "no progress bar")
    v.set_defaults(func=cmd_variants)

    ls = sub.add_parser("list", help="list registered names", formatter_class=Formatter)
    ls.add_argument("what", choices=["models", "explainers", "methods", "data", "similarities"],
                    help="what to list")
    ls.set_defaults(func=cmd_list)
    for module in (fool_cli, sweep_cli, influence_cli, vae_cli, diagnosis_cli):  # commands living with their package
        module.add_command(sub, Formatter)
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
