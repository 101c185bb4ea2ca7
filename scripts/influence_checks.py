"""TracIn sanity checks on a trained run, and its link to explanation consistency (ECL's E).

``PYTHONPATH=src python scripts/influence_checks.py RUN [--n-test 20]`` prints JSON lines:

* ``self``: Spearman correlation of TracIn self-influence with the final model's per-sample loss;
  on the demo data also the AUC with which self-influence finds the training images whose
  background contradicts their class (the 1 - rho "unusual" samples of the shortcut).
* ``proponents``: rate of the test image's class among its top-k proponents vs. the class's share
  of the training set (chance), on test images explained at their label.
* ``ecl``: for the run's last ECL scoring round, Spearman(E, self-influence) and the mean
  self-influence of the top and bottom E deciles (ECL down-weights high E, up-weights low E);
  ``ecl_first_round``: the same for the first round's E against the self-influence of the
  checkpoints before it (warm-up epochs, v = 1: no re-weighting has touched the trajectory yet).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor

from consistcam.influence.gradients import classifier_gradients
from consistcam.influence.ranks import auc, spearman
from consistcam.influence.run import run_checkpoints, run_data
from consistcam.influence.tracin import tracin
from consistcam.run.layout import EPOCH_FILES, file_epoch
from consistcam.run.status import method_dir


@torch.no_grad()
def per_sample_loss(model: torch.nn.Module, loader) -> tuple[Tensor, Tensor]:
    """(ids, cross-entropy) of every sample of ``loader`` under ``model`` (eval mode)."""
    from consistcam.models.state import preserved_state

    ids, losses = [], []
    with preserved_state(model, eval_mode=True):
        for batch in loader:
            logits = model(batch["image"])
            losses.append(torch.nn.functional.cross_entropy(logits, batch["label"], reduction="none"))
            ids.append(batch["id"])
    return torch.cat(ids), torch.cat(losses)


def _decile_means(values: Tensor, by: Tensor) -> tuple[float, float]:
    order = by.argsort()
    n = max(1, len(by) // 10)
    return float(values[order[-n:]].mean()), float(values[order[:n]].mean())


def _ecl_row(check: str, scores_file: Path, ids: Tensor, self_influence: Tensor, loss: Tensor) -> dict:
    """E of one scoring round against self-influence (and the final loss), matched by sample id."""
    scores = load_file(str(scores_file))
    pos = {int(i): n for n, i in enumerate(ids)}
    keep = torch.tensor([pos[int(i)] for i in scores["ids"]])
    si, e = self_influence[keep], scores["E"].double()
    top_si, bottom_si = _decile_means(si, e)
    top_loss, bottom_loss = _decile_means(loss[keep].double(), e)
    return {"check": check, "round": scores_file.name, "spearman_E_selfinf": round(spearman(e, si), 4),
            "spearman_E_loss": round(spearman(e, loss[keep]), 4), "selfinf_top_E_decile": round(top_si, 5),
            "selfinf_bottom_E_decile": round(bottom_si, 5), "selfinf_all": round(float(si.mean()), 5),
            "loss_top_E_decile": round(top_loss, 4), "loss_bottom_E_decile": round(bottom_loss, 4)}


def run_checks(run: str | Path, n_test: int = 20, k: int = 10, batch_size: int = 256) -> list[dict]:
    from consistcam.data import build_dataset, build_transform
    from consistcam.run.checkpoint import load_model

    run = Path(run)
    data = run_data(run)
    checkpoints = run_checkpoints(run)
    test_ds = build_dataset(data.spec, "test" if data.spec.startswith("demo") else "val",
                            build_transform(data.image_size, "none"))
    test_ds.keep_locations = False
    idx = range(min(n_test, len(test_ds)))
    test = {"image": torch.stack([test_ds[i]["image"].as_subclass(Tensor) for i in idx]),
            "label": torch.tensor([int(test_ds[i]["label"]) for i in idx]), "id": torch.tensor(list(idx))}
    result = tracin(checkpoints, classifier_gradients("last"), data.loader(batch_size), test)
    model, _ = load_model(run)
    ids, loss = per_sample_loss(model, data.loader(batch_size))
    assert torch.equal(ids, result.ids)
    labels = torch.tensor([int(data.train[i]["label"]) for i in range(len(ids))])
    rows = []
    last = tracin(checkpoints[-1:], classifier_gradients("last"), data.loader(batch_size))
    row = {"check": "self", "run": str(run), "n_train": len(ids), "checkpoints": len(checkpoints),
           "spearman_selfinf_loss": round(spearman(result.self_influence, loss), 4),
           "spearman_last_checkpoint_selfinf_loss": round(spearman(last.self_influence, loss), 4)}
    base = getattr(data.train, "dataset", data.train)
    if hasattr(base, "background_class"):
        unusual = base.background_class[ids] != labels
        row.update(n_unusual=int(unusual.sum()), auc_unusual_selfinf=round(auc(result.self_influence, unusual), 4),
                   auc_unusual_loss=round(auc(loss, unusual), 4))
    rows.append(row)
    same, chance = [], []
    for t in range(len(idx)):
        top, _ = result.proponents(t, k)
        same.append(float((labels[top] == test["label"][t]).float().mean()))
        chance.append(float((labels == test["label"][t]).float().mean()))
    rows.append({"check": "proponents", "n_test": len(idx), "k": k, "same_class_top_k": round(sum(same) / len(same), 4),
                 "same_class_chance": round(sum(chance) / len(chance), 4)})
    folder = method_dir(run)  # ECL's: one file of E per scoring round
    rounds = sorted(folder.glob(EPOCH_FILES)) if folder is not None else []
    if rounds:
        rows.append(_ecl_row("ecl", rounds[-1], ids, result.self_influence, loss))
        first = file_epoch(rounds[0].name)
        before = [c for c in checkpoints if int(c.name.split()[-1]) < first]
        if before:
            early = tracin(before, classifier_gradients("last"), data.loader(batch_size))
            rows.append(_ecl_row("ecl_first_round", rounds[0], ids, early.self_influence, loss))
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="run folder trained with --keep-checkpoints")
    p.add_argument("--n-test", type=int, default=20, help="test images of the proponent check")
    p.add_argument("--k", type=int, default=10, help="proponents inspected per test image")
    args = p.parse_args(argv)
    for row in run_checks(args.run, args.n_test, args.k):
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
