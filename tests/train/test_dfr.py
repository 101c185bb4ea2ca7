"""dfr: the l1 logistic regression against scikit-learn, balanced subsets, the head refit on val
(backbone untouched, standardisation folded in exactly), and its refusals."""

from __future__ import annotations

import pytest
import torch

from consistcam.models.factory import classifier_head
from consistcam.train import TrainConfig, Trainer
from consistcam.train.methods.dfr import DFRConfig, balanced_subset, fit_l1_logistic, worst_cell_accuracy

DATA = "shortcut:demo:n=400,n_test=200,num_classes=2,size=16"
TINY = dict(data=DATA, arch="cc_resnet10", batch_size=50, eval_batch_size=200, lr=0.05, seed=1)


def _objective(x, y, w, b, c):
    logits = x.double() @ w.double().T + b.double()
    return torch.nn.functional.cross_entropy(logits, y, reduction="sum").item() + w.abs().sum().item() / c


@pytest.mark.parametrize("c", [1.0, 0.1])
def test_l1_logistic_regression_matches_scikit_learn(c):
    linear_model = pytest.importorskip("sklearn.linear_model")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(120, 8, generator=g, dtype=torch.float64)
    score = x[:, :3] @ torch.tensor([2.0, -1.0, 0.5], dtype=torch.float64)
    y = torch.bucketize(score + 0.5 * torch.randn(120, generator=g, dtype=torch.float64),
                        torch.tensor([-1.0, 1.0], dtype=torch.float64))
    w, b = fit_l1_logistic(x, y, 3, c, max_iter=20000, tol=1e-12)
    ref = linear_model.LogisticRegression(l1_ratio=1.0, C=c, solver="saga", tol=1e-10, max_iter=100000)
    ref.fit(x.numpy(), y.numpy())
    rw, rb = torch.from_numpy(ref.coef_), torch.from_numpy(ref.intercept_)
    ours, theirs = _objective(x, y, w, b, c), _objective(x, y, rw, rb, c)
    assert ours <= theirs * (1 + 1e-6)  # at least as good a minimum of the same objective
    assert torch.allclose(w, rw, atol=2e-3) and torch.equal(w == 0, rw.abs() < 1e-6)  # the same sparsity
    # the intercepts are defined up to a common shift (softmax): compare them centred
    assert torch.allclose(b - b.mean(), rb - rb.mean(), atol=2e-3)


def test_balanced_subset_cuts_every_cell_to_the_smallest():
    cells = torch.tensor([0] * 7 + [1] * 2 + [3] * 5)
    idx = balanced_subset(cells, torch.Generator().manual_seed(0))
    assert torch.bincount(cells[idx]).tolist() == [2, 2, 0, 2] and len(idx.unique()) == 6
    assert torch.equal(idx, balanced_subset(cells, torch.Generator().manual_seed(0)))  # seeded
    assert worst_cell_accuracy(torch.tensor([0, 1, 1]), torch.tensor([0, 1, 0]), torch.tensor([0, 0, 1])) == 0.0


def _trainer(tmp_path, method: str, epochs: int = 3, **kw) -> Trainer:
    cfg = TrainConfig.from_dict({**TINY, "method": method, "epochs": epochs, "out": str(tmp_path / method), **kw})
    return Trainer.from_config(cfg, progress=False)


def test_dfr_is_erm_with_the_head_refit_on_val(tmp_path):
    erm, dfr = _trainer(tmp_path, "erm"), _trainer(tmp_path, "dfr", dfr={"retrains": 3})
    erm.fit()
    records = dfr.fit()
    name, head = classifier_head(dfr.module)
    a, b = erm.module.state_dict(), dfr.module.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a if not k.startswith(name + "."))  # the backbone is ERM's
    assert not torch.equal(a[name + ".weight"], b[name + ".weight"])
    last = records[-1]
    assert last["dfr/C"] in DFRConfig().c_grid and 0 < last["dfr/balanced_size"] <= 20
    assert all("dfr/C" not in r for r in records[:-1])  # the refit happens once, after the last epoch
    # refitting again from the same features reproduces the head: the fit is a function of (features, seed)
    before = head.weight.detach().clone()
    x, y, cells = dfr.method._features()
    dfr.method.refit_head(x, y, cells)
    assert torch.allclose(head.weight, before, atol=1e-6)


def test_standardisation_is_folded_into_the_head_exactly(tmp_path):
    trainer = _trainer(tmp_path, "dfr", epochs=1, dfr={"retrains": 2, "c_grid": [0.3]})
    x, y, cells = trainer.method._features()
    trainer.method.refit_head(x, y, cells)
    _, head = classifier_head(trainer.module)
    w, b = trainer.method.fitted  # the mean fit in standardised coordinates
    std = x.double().std(0)
    z = (x.double() - x.double().mean(0)) / torch.where(std > 1e-8, std, 1.0)  # dead units: scale 1
    expected = z @ w.T + b
    assert torch.allclose(head(x).double(), expected, atol=1e-4)


def test_dfr_refuses_a_missing_split_and_data_without_groups(tmp_path):
    with pytest.raises(ValueError, match="dfr fits the head on split 'holdout'.*val, test, test_correlated"):
        _trainer(tmp_path, "dfr", dfr={"split": "holdout"})
    with pytest.raises(ValueError, match="split 'val'.*test, test_correlated"):
        _trainer(tmp_path, "dfr", data="demo:n=32,n_test=16,size=16")
    with pytest.raises(ValueError, match="c_grid.*positive"):
        DFRConfig(c_grid=(1.0, -0.1))
