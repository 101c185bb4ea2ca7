"""consistcam.ECL, the schedule any loop calls: its rounds, its weights by id, its errors, its state."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import consistcam
from consistcam.data import DemoShapes, build_transform, collate

FAST = consistcam.ConsistencyConfig(steps=1)


def config(**kw) -> consistcam.ECLConfig:
    return consistcam.ECLConfig(**{"warmup": 1, "update_every": 2, "score_batch_size": 32, "consistency": FAST, **kw})


@pytest.fixture(scope="module")
def demo():
    torch.manual_seed(0)
    data = DemoShapes("train", n=48, size=16, transform=build_transform(None, "none"))
    return data, consistcam.create("cc_resnet10", len(data.classes)).eval()


def test_rounds_follow_warmup_and_update_every():
    ecl = consistcam.ECL(10, config(warmup=2, update_every=3))
    assert [e for e in range(12) if ecl.due(e)] == [2, 5, 8, 11]


def test_a_round_weights_each_sample_by_its_id(demo):
    data, model = demo
    ecl = consistcam.ECL(len(data), config())
    logits, labels, ids = torch.randn(6, 4), torch.tensor([0, 1, 2, 3, 0, 1]), torch.tensor([5, 0, 47, 3, 9, 9])
    assert ecl.on_epoch_start(model, DataLoader(data, 16, collate_fn=collate), 0) == {}  # warm-up: v = 1
    assert torch.allclose(ecl.loss(logits, labels, ids), F.cross_entropy(logits, labels))
    reverse = DataLoader(torch.utils.data.Subset(data, range(47, -1, -1)), 16, collate_fn=collate)  # any order
    logs = ecl.on_epoch_start(model, reverse, 1)
    assert ecl.rounds == 1 and logs["consistency/v_min"] < 1 < logs["consistency/v_max"]
    assert ecl.fields["ids"].tolist() == list(range(48))
    assert torch.equal(ecl.weights[ecl.fields["ids"]], ecl.fields["weights"])
    assert ecl.weights.mean().item() == pytest.approx(1.0, abs=1e-5)
    manual = (ecl.weights[ids] * F.cross_entropy(logits, labels, reduction="none")).mean()
    assert torch.allclose(ecl.loss(logits, labels, ids), manual)
    assert ecl.on_epoch_start(model, reverse, 2) == {} and ecl.rounds == 1  # not due


def test_tuple_batches_from_with_ids_score_as_dict_batches(demo):
    data, model = demo
    pairs = TensorDataset(torch.stack([data[i]["image"] for i in range(len(data))]), torch.tensor(data.labels))
    wrapped = consistcam.WithIds(pairs)
    image, label, index = wrapped[7]
    assert index == 7 and label == data.labels[7]
    assert consistcam.WithIds([{"image": image, "label": 1}])[0]["id"] == 0
    a, b = consistcam.ECL(len(data), config(warmup=0)), consistcam.ECL(len(data), config(warmup=0))
    a.on_epoch_start(model, DataLoader(wrapped, 16), 0)
    b.on_epoch_start(model, DataLoader(data, 16, collate_fn=collate), 0)
    assert torch.equal(a.weights, b.weights)


def test_state_dict_resumes_the_ema(demo):
    data, model = demo
    cfg = config(warmup=0, update_every=1, consistency=FAST, weights=consistcam.WeightConfig(ema=0.5))
    loader = DataLoader(data, 24, collate_fn=collate)
    full = consistcam.ECL(len(data), cfg)
    for epoch in range(2):
        full.on_epoch_start(model, loader, epoch)
    part = consistcam.ECL(len(data), cfg)
    part.on_epoch_start(model, loader, 0)
    resumed = consistcam.ECL(len(data), cfg)
    resumed.load_state_dict({k: v.clone() for k, v in part.state_dict().items()})
    resumed.on_epoch_start(model, loader, 1)
    assert resumed.rounds == 2 and torch.equal(resumed.weights, full.weights)


def test_score_fraction_asks_the_loader_for_a_seeded_subset(demo):
    data, model = demo
    asked = []

    def loader(ids):
        asked.append(ids)
        return DataLoader(data if ids is None else torch.utils.data.Subset(data, ids), 16, collate_fn=collate)

    ecl = consistcam.ECL(len(data), config(warmup=0, update_every=1, score_fraction=0.25), seed=3)
    ecl.on_epoch_start(model, loader, 0)
    ecl.on_epoch_start(model, loader, 1)
    assert asked[0] is None and len(asked[1]) == 12 and asked[1] == sorted(asked[1])
    drawn = torch.randperm(48, generator=torch.Generator().manual_seed(3 * 1000 + 1))[:12]  # (seed, epoch) alone
    assert asked[1] == drawn.sort().values.tolist()
    assert (ecl.last["scored_epoch"] == 1).sum() == 12
    with pytest.raises(ValueError, match="loader must be a function of the sample ids"):
        ecl.on_epoch_start(model, DataLoader(data, 16, collate_fn=collate), 2)


@pytest.mark.parametrize("make, match", [
    (lambda: consistcam.ECL(0), "num_samples must be the training set's size"),
    (lambda: consistcam.ECL(4, {"warmup": 1}), "config must be a consistcam.ECLConfig, got dict"),
    (lambda: consistcam.ECL(4, config(score_fraction=0.5), multilabel=True), "score_fraction < 1"),
    (lambda: consistcam.ECL(4, train_ids=[0, 4]), "train_ids must lie in 0 .. num_samples - 1 = 3"),
    (lambda: consistcam.ECL(4).load_state_dict({"weights": torch.ones(5), "rounds": torch.tensor(1)}),
     "has \\(5,\\) weights, this ECL has num_samples=4"),
    (lambda: consistcam.ECL(4).loss(torch.zeros(2, 3), torch.zeros(2).long(), torch.arange(3)),
     "ids has 3 entries but logits has 2 rows"),
    (lambda: consistcam.WithIds([torch.zeros(3)])[0], "expected an \\(image, label\\) pair or a dict"),
])
def test_clear_errors(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make()


def test_ids_seen_twice_or_out_of_range_are_refused(demo):
    data, model = demo
    twice = DataLoader(torch.utils.data.ConcatDataset([data, torch.utils.data.Subset(data, [3])]), 49,
                       collate_fn=collate)
    with pytest.raises(ValueError, match="sample id 3 more than once"):
        consistcam.ECL(len(data), config(warmup=0)).on_epoch_start(model, twice, 0)
    with pytest.raises(ValueError, match="sample id 47, outside 0 .. num_samples - 1 = 9"):
        consistcam.ECL(10, config(warmup=0)).on_epoch_start(model, DataLoader(data, 48, collate_fn=collate), 0)


# without the attack's random start a sample's E does not depend on which batch (or rank) scores it
NO_RANDOM_START = config(warmup=0, consistency=consistcam.ConsistencyConfig(steps=1, random_start=False))


def _rank_weights(rank: int, world: int, init: str, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    torch.manual_seed(0)
    data = DemoShapes("train", n=48, size=16, transform=build_transform(None, "none"))
    model = consistcam.create("cc_resnet10", len(data.classes)).eval()
    shard = torch.utils.data.Subset(data, range(rank, len(data), world))  # disjoint, interleaved
    ecl = consistcam.ECL(len(data), NO_RANDOM_START)  # process_group=None: the default group
    ecl.on_epoch_start(model, DataLoader(shard, 16, collate_fn=collate), 0)
    torch.save(ecl.weights, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


def test_two_processes_gather_the_same_weights_as_one(demo, tmp_path):
    """Each rank scores its shard; after the gather both hold v of the whole set, that of one process
    (up to float rounding: the shards' batches differ)."""
    data, model = demo
    torch.multiprocessing.spawn(_rank_weights, args=(2, f"file://{tmp_path}/init", str(tmp_path)), nprocs=2)
    one = consistcam.ECL(len(data), NO_RANDOM_START)
    one.on_epoch_start(model, DataLoader(data, 16, collate_fn=collate), 0)
    ranks = [torch.load(tmp_path / f"rank{rank}.pt") for rank in (0, 1)]
    assert torch.equal(ranks[0], ranks[1])
    assert torch.allclose(ranks[0], one.weights, atol=1e-4) and one.weights.std() > 0
