"""``consistcam vae train`` (a small conv VAE whose run folder keeps TracIn's checkpoints) and
``consistcam vae influence`` (VAE-TracIn: self-influence, proponents/opponents of test images)."""

from __future__ import annotations

import argparse
from pathlib import Path

from consistcam.arguments import add_config_options, add_quiet, check_output_folder, config_overrides, int_at_least
from consistcam.influence.cli import add_tracin_options
from consistcam.run.layout import INFLUENCE_DIR, INFLUENCE_FILE, INFLUENCE_PAGE_FILE

_positive = int_at_least(1)  # argparse type: an integer >= 1


def _read_ids(path: str) -> list[int]:
    """Sample ids from a text file: integers separated by white space or commas."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"--exclude-file {path}: no such file")
    ids = []
    for n, token in enumerate(file.read_text().replace(",", " ").split(), 1):
        try:
            ids.append(int(token))
        except ValueError:
            raise ValueError(f"--exclude-file {path}: token {n} ({token!r}) is not an integer sample id") from None
    return ids


def cmd_vae_train(args: argparse.Namespace) -> int:
    from consistcam.config import from_dict
    from consistcam.vae.config import VAEConfig
    from consistcam.vae.train import train_vae

    options = config_overrides(args, VAEConfig, skip=("exclude",))
    if args.exclude_file:
        options["exclude"] = _read_ids(args.exclude_file)
    cfg = from_dict(VAEConfig, options)
    check_output_folder(cfg.out)
    run = train_vae(cfg, overwrite=args.overwrite, progress=not args.quiet)
    print(f"run folder: {run}")
    return 0


def _test_images(items: list[str], cfg) -> tuple:
    import torch
    import torch.nn.functional as F

    from consistcam.data import build_dataset, build_transform, read_rgb

    images, names = [], []
    splits: dict = {}
    for item in items:
        split, sep, index = item.rpartition(":")
        if not Path(item).exists() and sep and split and index.isdigit():
            if split not in splits:
                splits[split] = build_dataset(cfg.data, split, build_transform(cfg.image_size, "none"))
            ds = splits[split]
            if int(index) >= len(ds):
                raise ValueError(f"--test {item!r}: split {split!r} has {len(ds)} images")
            images.append(ds[int(index)]["image"].as_subclass(torch.Tensor))
        else:
            if not Path(item).is_file():
                raise FileNotFoundError(f"--test {item!r}: no such image file (or SPLIT:INDEX of the run's data)")
            img = read_rgb(item).float().div(255)[None]
            img = F.interpolate(img, size=(cfg.image_size, cfg.image_size), mode="bilinear", antialias=True,
                                align_corners=False)
            images.append(img[0])
        names.append(item)
    return torch.stack(images), names


def cmd_vae_influence(args: argparse.Namespace) -> int:
    from consistcam.influence.html import Row, write_grid_html
    from consistcam.vae.tracin import save_result, vae_tracin
    from consistcam.vae.train import read_vae_config

    if not args.test and not args.self_influence:
        raise ValueError("nothing to do: give --test IMAGES and/or --self")
    cfg = read_vae_config(args.run)
    tests, names = _test_images(args.test, cfg) if args.test else (None, [])
    result, train_images = vae_tracin(args.run, tests, params=args.params, samples=args.samples,
                                      projection=args.project, last=args.last, seed=args.seed,
                                      batch_size=args.batch_size, device=args.device, progress=not args.quiet)
    out = Path(args.out) if args.out else Path(args.run) / INFLUENCE_DIR
    save_result(result, out / INFLUENCE_FILE, {"tests": names, "params": args.params,
                                                        "samples": args.samples, "projection": args.project})
    rows = []
    for t, name in enumerate(names):
        rows.append(Row(f"test {name}", [(tests[t], "test")]))
        for kind, (ids, scores) in (("proponents", result.proponents(t, args.top)),
                                    ("opponents", result.opponents(t, args.top))):
            rows.append(Row(f"top {len(ids)} {kind} of {name}",
                            [(train_images[i], f"#{i} {s:+.3g}") for i, s in zip(ids.tolist(), scores.tolist())]))
            print(f"{name}: {kind} {', '.join(f'#{i} ({s:+.3g})' for i, s in zip(ids.tolist(), scores.tolist()))}")
    if args.self_influence:
        ids, scores = result.most_self_influential(args.top)
        rows.append(Row(f"top {len(ids)} training images by self-influence",
                        [(train_images[i], f"#{i} {s:.3g}") for i, s in zip(ids.tolist(), scores.tolist())]))
        print(f"highest self-influence: {', '.join(f'#{i} ({s:.3g})' for i, s in zip(ids.tolist(), scores.tolist()))}")
    page = write_grid_html(out / INFLUENCE_PAGE_FILE, f"VAE-TracIn: {Path(args.run).name}", rows,
                           "Proponents lowered the test image's negative ELBO when trained on; opponents raised it.")
    print(f"report: {page}")
    return 0


def add_command(sub: argparse._SubParsersAction, formatter_class: type) -> None:
    from consistcam.vae.config import VAEConfig

    v = sub.add_parser("vae", help="a small convolutional VAE and VAE-TracIn (train, influence)",
                       formatter_class=formatter_class)
    vsub = v.add_subparsers(dest="vae_command", required=True, help="what to do with the VAE")
    t = vsub.add_parser("train", help="train a conv VAE; the run folder keeps TracIn's checkpoints",
                        formatter_class=formatter_class,
                        epilog="example:\n  consistcam vae train --data demo --epochs 10 --out runs/vae_demo\n"
                               "  consistcam vae train --data demo --extra tinyimagenet:PATH --extra-n 50 "
                               "--out runs/vae_outliers")
    add_config_options(t, VAEConfig, skip=("exclude",))
    t.add_argument("--exclude-file", metavar="FILE", help="text file of sample ids to leave out of training")
    t.add_argument("--overwrite", action="store_true", help="replace what the --out folder holds (else refused)")
    add_quiet(t, "no progress bars or per-epoch lines")
    t.set_defaults(func=cmd_vae_train)

    i = vsub.add_parser("influence", help="VAE-TracIn: self-influence and proponents/opponents of test images",
                        formatter_class=formatter_class,
                        epilog="example:\n  consistcam vae influence runs/vae_demo --test test:0 test:5 --self")
    i.add_argument("run", help="run folder of consistcam vae train")
    i.add_argument("--test", nargs="+", metavar="IMAGE", help="image files or SPLIT:INDEX of the run's data")
    i.add_argument("--self", dest="self_influence", action="store_true", help="rank training images by self-influence")
    i.add_argument("--top", type=_positive, default=10, help="images shown per ranking")
    i.add_argument("--params", default="last", help="gradients of: last (encoder.head + decoder.out), all, or a "
                                                     "module name")
    i.add_argument("--samples", type=_positive, default=16, help="reparameterisation draws averaged in each loss")
    add_tracin_options(i, batch_size=128, seed_help="seed of the noise draws and the projection")
    i.set_defaults(func=cmd_vae_influence)
