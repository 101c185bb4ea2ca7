"""``consistcam influence RUN --test IMAGES... --top 10 | --self``: TracIn proponents, opponents
and self-influence of a run's training samples (HTML grid plus the scores as safetensors)."""

from __future__ import annotations

import argparse

from consistcam.arguments import add_device, add_quiet, int_at_least
from consistcam.run.layout import INFLUENCE_DIR, INFLUENCE_FILE

_positive = int_at_least(1)  # argparse type: an integer >= 1


def cmd_influence(args: argparse.Namespace) -> int:
    from consistcam.influence.run import influence_for_run

    result, page = influence_for_run(args.run, args.test or (), self_influence=args.self_influence, top=args.top,
                                     params=args.params, projection=args.project, last=args.last, seed=args.seed,
                                     batch_size=args.batch_size, device=args.device, out=args.out,
                                     progress=not args.quiet)
    for t, name in enumerate(args.test or ()):
        ids, scores = result.proponents(t, args.top)
        print(f"{name}: proponents {', '.join(f'#{i} ({s:+.3g})' for i, s in zip(ids.tolist(), scores.tolist()))}")
        ids, scores = result.opponents(t, args.top)
        print(f"{name}: opponents  {', '.join(f'#{i} ({s:+.3g})' for i, s in zip(ids.tolist(), scores.tolist()))}")
    if args.self_influence:
        ids, scores = result.most_self_influential(args.top)
        print(f"highest self-influence: {', '.join(f'#{i} ({s:.3g})' for i, s in zip(ids.tolist(), scores.tolist()))}")
    print(f"scores: {page.parent / INFLUENCE_FILE}")
    print(f"report: {page}")
    return 0


def add_command(sub: argparse._SubParsersAction, formatter_class: type) -> None:
    p = sub.add_parser(
        "influence", formatter_class=formatter_class,
        help="TracIn: which training samples drove a prediction (proponents/opponents), self-influence",
        description="TracInCP (Pruthi et al. 2020) over the checkpoints a run kept with --keep-checkpoints "
                    "every=N: influence = sum over checkpoints of lr * <grad loss(train), grad loss(test)>.",
        epilog="examples:\n  consistcam influence runs/x --test test:0 test:7 img.png --top 10\n"
               "  consistcam influence runs/x --self --top 50\n"
               "  consistcam influence runs/x --self --params all --project 512")
    p.add_argument("run", help="run folder trained with --keep-checkpoints every=N")
    p.add_argument("--test", nargs="+", metavar="IMAGE",
                   help="image files (explained at the final model's prediction) or SPLIT:INDEX of the run's data "
                        "(explained at their label), e.g. test:12")
    p.add_argument("--self", dest="self_influence", action="store_true",
                   help="rank the training samples by self-influence")
    p.add_argument("--top", type=_positive, default=10, help="proponents/opponents (or self-ranked samples) shown")
    p.add_argument("--params", default="last",
                   help="gradients of: last (the last linear layer), all, or a module name such as model.layer4")
    add_tracin_options(p, batch_size=256, seed_help="seed of the random projection")
    p.set_defaults(func=cmd_influence)


def add_tracin_options(p: argparse.ArgumentParser, *, batch_size: int, seed_help: str) -> None:
    """The options every TracIn command shares (classifier and VAE)."""
    p.add_argument("--project", type=_positive, metavar="K",
                   help="random projection of the gradients to K dims (for --params all on large models)")
    p.add_argument("--last", type=_positive, metavar="N", help="use only the last N kept checkpoints")
    p.add_argument("--seed", type=int, default=0, help=seed_help)
    p.add_argument("--batch-size", type=_positive, default=batch_size, help="training samples per gradient batch")
    add_device(p)
    p.add_argument("--out", help=f"output folder (default: RUN/{INFLUENCE_DIR})")
    add_quiet(p)
