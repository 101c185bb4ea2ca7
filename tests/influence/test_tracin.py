"""TracIn: hand-computed scores on a linear model, batched gradients, projection, kept checkpoints, CLI."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from consistcam.cli import main
from consistcam.config import ConfigError
from consistcam.influence import (
    RandomProjection,
    TracInCheckpoint,
    classifier_gradients,
    last_layer_names,
    tracin,
)
from consistcam.models import create
from consistcam.run.checkpoint import read_metadata
from consistcam.run.kept import kept_checkpoints
from consistcam.train import TrainConfig, Trainer
from tests.helpers import TinyNet


def _linear(seed: int) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(3, 4)


def _hand_gradient(layer: nn.Linear, x: torch.Tensor, y: int) -> torch.Tensor:
    """d CE / d(W, b) of one sample by the formula: (softmax - onehot) x^T and (softmax - onehot)."""
    p = torch.softmax(layer.weight @ x + layer.bias, 0)
    d = p - nn.functional.one_hot(torch.tensor(y), 4).float()
    return torch.cat([torch.outer(d, x).flatten(), d])


@pytest.mark.parametrize("params", ["last", "all"])
def test_tracin_equals_the_hand_computed_sum_over_checkpoints(params):
    g = torch.Generator().manual_seed(0)
    x_train, y_train = torch.randn(6, 3, generator=g), torch.randint(0, 4, (6,), generator=g)
    x_test, y_test = torch.randn(2, 3, generator=g), torch.randint(0, 4, (2,), generator=g)
    checkpoints = [TracInCheckpoint(_linear(1), lr=0.1), TracInCheckpoint(_linear(2), lr=0.05, epochs=2.0),
                   TracInCheckpoint(lambda: _linear(3), lr=0.01)]
    batches = [{"image": x_train[:4], "label": y_train[:4], "id": torch.arange(4)},
               {"image": x_train[4:], "label": y_train[4:], "id": torch.arange(4, 6)}]
    test = {"image": x_test, "label": y_test, "id": torch.arange(2)}
    result = tracin(checkpoints, classifier_gradients(params), batches, test)

    expected = torch.zeros(6, 2, dtype=torch.float64)
    expected_self = torch.zeros(6, dtype=torch.float64)
    for ck in checkpoints:
        layer = ck.load()
        for i in range(6):
            gi = _hand_gradient(layer, x_train[i], int(y_train[i])).double()
            expected_self[i] += ck.lr * ck.epochs * gi.dot(gi)
            for t in range(2):
                expected[i, t] += ck.lr * ck.epochs * gi.dot(_hand_gradient(layer, x_test[t], int(y_test[t])).double())
    assert torch.equal(result.ids, torch.arange(6))
    torch.testing.assert_close(result.influence, expected, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(result.self_influence, expected_self, rtol=1e-5, atol=1e-7)
    # rankings: proponents in decreasing, opponents in increasing order of influence
    ids, scores = result.proponents(0, 3)
    assert torch.equal(ids, expected[:, 0].argsort(descending=True)[:3]) and (scores.diff() <= 0).all()
    ids, scores = result.opponents(1, 2)
    assert torch.equal(ids, expected[:, 1].argsort()[:2]) and (scores.diff() >= 0).all()
    assert torch.equal(result.most_self_influential(1)[0], expected_self.argmax()[None])


def test_shuffled_batches_are_refused():
    x, y = torch.randn(4, 3), torch.tensor([0, 1, 2, 3])
    orders = iter([[0, 1, 2, 3], [1, 0, 2, 3]])

    class Shuffled:
        def __iter__(self):
            order = torch.tensor(next(orders))
            yield {"image": x[order], "label": y[order], "id": order}

    with pytest.raises(ValueError, match="shuffled"):
        tracin([TracInCheckpoint(_linear(1), 0.1)] * 2, classifier_gradients(), Shuffled())
    with pytest.raises(ValueError, match="no checkpoints"):
        tracin([], classifier_gradients(), [])


@pytest.mark.parametrize("params", ["last", "all", "features.3"])
def test_batched_gradients_equal_a_per_sample_loop_and_leave_the_model_alone(params):
    torch.manual_seed(0)
    model = TinyNet(3).train()
    model.features[0].weight.requires_grad_(False)  # frozen: never part of "all"
    x, y = torch.rand(5, 3, 12, 12), torch.tensor([0, 1, 2, 0, 1])
    bn = model.features[1].running_mean.clone()
    g = classifier_gradients(params)(model, {"image": x, "label": y})
    assert model.training and not model.features[0].weight.requires_grad
    assert torch.equal(model.features[1].running_mean, bn)
    assert all(p.grad is None for p in model.parameters())
    names = {"last": ["fc.weight", "fc.bias"], "features.3": ["features.3.weight", "features.3.bias"]}.get(
        params, [n for n, p in model.named_parameters() if p.requires_grad])
    chosen = [dict(model.named_parameters())[n] for n in names]
    model.eval()
    loop = []
    for i in range(5):
        loss = nn.functional.cross_entropy(model(x[i:i + 1]), y[i:i + 1])
        loop.append(torch.cat([t.flatten() for t in torch.autograd.grad(loss, chosen)]))
    torch.testing.assert_close(g, torch.stack(loop), rtol=1e-4, atol=1e-6)


def test_last_layer_is_found_through_wrappers():
    model = create("cc_resnet10", 3)
    assert last_layer_names(model, torch.rand(2, 3, 16, 16)) == ["model.fc.weight", "model.fc.bias"]
    with pytest.raises(ValueError, match="no parameter"):
        classifier_gradients("model.nope")(model, {"image": torch.rand(2, 3, 16, 16), "label": torch.tensor([0, 1])})


def test_random_projection_preserves_inner_products():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(4, 3000, generator=g)
    b = a + 0.5 * torch.randn(4, 3000, generator=g)  # correlated pairs: large inner products
    project = RandomProjection(1024, seed=3, block=700)
    pa, pb = project(a), project(b)
    exact = (a * b).sum(1)
    assert ((pa * pb).sum(1) - exact).abs().max() / exact.abs().min() < 0.15
    # the same matrix for every call, cached or regenerated from the seed block by block
    torch.testing.assert_close(RandomProjection(1024, seed=3, block=700, cache_mb=0)(a), pa)
    assert not torch.allclose(RandomProjection(1024, seed=4, block=700)(a), pa)
    # unbiased: averaged over many projections the estimate converges to the exact inner product
    u, v = a[:1, :200], b[:1, :200]
    est = torch.stack([(RandomProjection(16, seed=s)(u) * RandomProjection(16, seed=s)(v)).sum() for s in range(100)])
    assert abs(est.mean() - (u * v).sum()) < 3 * est.std() / 100 ** 0.5


def test_projected_full_gradients_approximate_the_exact_tracin():
    torch.manual_seed(0)
    model = TinyNet(2).eval()
    x, y = torch.rand(8, 3, 6, 6), torch.randint(0, 2, (8,))
    batches = [{"image": x, "label": y, "id": torch.arange(8)}]
    test = {"image": x[:2], "label": y[:2], "id": torch.arange(2)}
    exact = tracin([TracInCheckpoint(model, 1.0)], classifier_gradients("all"), batches, test)
    approx = tracin([TracInCheckpoint(model, 1.0)], classifier_gradients("all", projection=4096), batches, test)
    assert torch.corrcoef(torch.stack([exact.influence.flatten(), approx.influence.flatten()]))[0, 1] > 0.95
    torch.testing.assert_close(approx.self_influence, exact.self_influence, rtol=0.2, atol=1e-6)


def test_keep_checkpoints_option():
    assert TrainConfig.from_dict({"keep_checkpoints": "every=3"}).keep_checkpoints == 3
    assert TrainConfig.from_dict({"keep_checkpoints": 2}).keep_checkpoints == 2
    assert TrainConfig.from_dict({}).keep_checkpoints is None
    with pytest.raises(ConfigError, match="keep_checkpoints"):
        TrainConfig.from_dict({"keep_checkpoints": "every=x"})
    with pytest.raises(ConfigError, match="keep_checkpoints"):
        TrainConfig.from_dict({"keep_checkpoints": -1})


TINY = dict(data="demo:n=48,n_test=8,size=16", arch="cc_resnet10", batch_size=16, eval_batch_size=64, lr=0.05,
            schedule="cosine")


@pytest.fixture(scope="module")
def kept_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("kept") / "run"
    cfg = TrainConfig.from_dict({**TINY, "epochs": 3, "keep_checkpoints": "every=2", "out": str(out)})
    trainer = Trainer.from_config(cfg, progress=False)
    trainer.fit()
    return out, trainer


def test_kept_checkpoints_carry_their_learning_rate(kept_run):
    out, trainer = kept_run
    kept = kept_checkpoints(out)
    assert list(kept) == [1, 2]  # every 2nd epoch, and the last
    steps = 3  # 48 images / 16
    first, last = read_metadata(kept[1]), read_metadata(kept[2])
    assert (first["interval_epochs"], last["interval_epochs"]) == ("2", "1")
    expected = sum(trainer.schedule(s, steps) for s in range(0, 2 * steps)) / (2 * steps)
    assert float(first["lr"]) == pytest.approx(expected)
    assert float(last["lr"]) == pytest.approx(sum(trainer.schedule(s, steps) for s in range(6, 9)) / 3)
    # the last kept checkpoint is the final model
    final = load_file(str(out / "model.safetensors"))
    assert all(torch.equal(final[k], v) for k, v in load_file(str(kept[2])).items())


def test_cli_influence_writes_scores_and_a_grid(kept_run, tmp_path, capsys):
    out, _ = kept_run
    assert main(["influence", str(out), "--test", "test:0", "test:3", "--self", "--top", "3", "--out",
                 str(tmp_path), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "proponents" in printed and "highest self-influence" in printed
    scores = load_file(str(tmp_path / "influence.safetensors"))
    assert scores["influence"].shape == (48, 2) and scores["self_influence"].shape == (48,)
    assert (scores["self_influence"] > 0).all()
    page = (tmp_path / "influence.html").read_text()
    assert page.count("data:image/png;base64,") == 2 * (1 + 3 + 3) + 3
    assert page.count("<figure>") == 17


def test_cli_influence_errors_are_clear(kept_run, tmp_path, capsys):
    (tmp_path / "plain").mkdir()  # a run trained without --keep-checkpoints
    (tmp_path / "plain" / "config.yaml").write_text((kept_run[0] / "config.yaml").read_text())
    assert main(["influence", str(tmp_path / "plain"), "--self"]) == 2
    assert "--keep-checkpoints" in capsys.readouterr().err
    assert main(["influence", str(tmp_path / "plain")]) == 2
    assert "--test" in capsys.readouterr().err
