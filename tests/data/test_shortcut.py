"""The real-image shortcut benchmark (Waterbirds protocol on boxed data)."""

import pytest
import torch

from consistcam.data import DemoShapes, build_dataset, collate, eval_splits
from consistcam.data.base import DataError
from consistcam.data.shortcut import ShortcutBackgrounds, _resize, background_strip
from tests.conftest import TINY_IMAGENET, requires_tiny_imagenet

BASE = "demo:n=600,n_test=300,num_classes=4"


def _build(split: str, opts: str = "") -> ShortcutBackgrounds:
    return build_dataset(f"shortcut:{opts + ':' if opts else ''}{BASE}", split)


def test_splits_are_deterministic_and_follow_the_spec():
    assert eval_splits(f"shortcut:{BASE}") == ("val", "test", "test_correlated")
    a, b = _build("train"), _build("train")
    assert a.groups == b.groups and a.partner == b.partner
    assert torch.equal(a.load(5)[0], b.load(5)[0])
    other_seed = _build("train", "seed=1")
    assert other_seed.partner != a.partner


@pytest.mark.parametrize("split,expected", [("train", 0.9), ("test_correlated", 0.9), ("test", 0.25), ("val", 0.25)])
def test_background_group_agrees_with_the_class_at_rate_rho(split, expected):
    ds = _build(split)
    aligned = sum(g == y for g, y in zip(ds.groups, ds.labels)) / len(ds)
    tol = 3 * (expected * (1 - expected) / len(ds)) ** 0.5  # three binomial standard deviations
    assert abs(aligned - expected) < tol


def test_val_is_held_out_of_train_and_backgrounds_stay_in_their_split():
    train, val = _build("train"), _build("val")
    assert not set(train.index) & set(val.index)
    assert sorted(train.index + val.index) == list(range(600))
    assert set(train.partner) <= set(train.index) and set(val.partner) <= set(val.index)
    assert all(p != i for p, i in zip(train.partner, train.index))


def test_scenes_are_the_same_few_training_images_in_every_split():
    """scenes=K: each group's backgrounds are K fixed images of its class, from the train share of
    the training split, in train, val, test and test_correlated alike."""
    splits = {s: _build(s, "scenes=3,area=1.0") for s in ("train", "val", "test", "test_correlated")}
    train, test = splits["train"], splits["test"]
    scenes = set(train.strips)
    assert len(scenes) == 3 * 4 and scenes <= set(train.index)  # 3 per class, none held out as val
    for ds in splits.values():
        assert set(ds.strips) == scenes and set(ds.partner) <= scenes
    base = DemoShapes("train", n=600, num_classes=4)
    assert all(base.labels[p] == g for p, g in zip(test.partner, test.groups))  # a group's scenes are its class's
    image, _, _, mask = test.load(4)  # a test object on a training scene's strip
    x0, y0, x1, y1 = test.strips[test.partner[4]]
    expected_bg = _resize(base.load(test.partner[4])[0][:, y0:y1, x0:x1], tuple(image.shape[-2:]))
    assert torch.equal(image[:, ~mask.bool()], expected_bg[:, ~mask.bool()])
    assert set(_build("train", "scenes=3,seed=1").strips) != scenes  # drawn from the seed


def test_composite_is_the_object_on_the_lenders_background_strip():
    ds = _build("train", "area=1.0")  # no scaling: the object keeps its place and pixels
    base = DemoShapes("train", n=600, num_classes=4)
    for k in (0, 7, 33):
        image, label, box, mask = ds.load(k)
        orig, orig_label, _, orig_mask = base.load(ds.index[k])
        assert label == orig_label == ds.labels[k]
        assert torch.equal(mask, orig_mask)
        fg = mask.bool()
        assert torch.equal(image[:, fg], orig[:, fg])  # the object's pixels are the original's
        lender = ds.partner[k]
        x0, y0, x1, y1 = ds.strips[lender]
        expected_bg = _resize(base.load(lender)[0][:, y0:y1, x0:x1], tuple(image.shape[-2:]))
        assert torch.equal(image[:, ~fg], expected_bg[:, ~fg])  # everything else is the lender's strip
        assert base.labels[lender] == ds.groups[k]  # the background comes from the group's class


def test_large_objects_are_scaled_to_the_area_and_the_box_follows():
    ds = _build("test", "area=0.1")
    for k in range(20):
        image, _, box, mask = ds.load(k)
        x0, y0, x1, y1 = box[0].tolist()
        h, w = image.shape[-2:]
        assert (x1 - x0) * (y1 - y0) <= 0.1 * h * w * 1.3 + 2  # rounding of the scaled side lengths
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
        ys, xs = torch.nonzero(mask, as_tuple=True)
        assert xs.min() >= x0 and xs.max() < x1 and ys.min() >= y0 and ys.max() < y1


def test_samples_carry_their_group_through_transforms_and_collate():
    from consistcam.data import build_transform

    ds = build_dataset(f"shortcut:{BASE}", "test", build_transform(32, "flip"))
    batch = collate([ds[i] for i in range(6)])
    assert batch["group"].tolist() == ds.groups[:6]
    assert batch["image"].shape == (6, 3, 32, 32) and len(batch["boxes"]) == 6


def test_strip_is_the_largest_box_free_side():
    assert background_strip((10, 0, 64, 64), 64, 64) == (0, 0, 10, 64)
    assert background_strip((0, 0, 64, 50), 64, 64) == (0, 50, 64, 64)
    x0, y0, x1, y1 = background_strip((0, 0, 64, 64), 64, 64)
    assert (x1 - x0) * (y1 - y0) == 0


@pytest.mark.parametrize("spec,match", [
    (f"shortcut:rho=2:{BASE}", "rho must be in"),
    (f"shortcut:area=0:{BASE}", "area must be in"),
    (f"shortcut:colour=1:{BASE}", "bad shortcut option 'colour=1'"),
    (f"shortcut:rho=abc:{BASE}", "expected a number, got 'abc'"),
    ("shortcut:", "needs a data spec"),
    (f"shortcut:shortcut:{BASE}", "not a data set"),
    (f"shortcut:min_strip=0.99:{BASE}", "lower min_strip"),
    (f"shortcut:scenes=-1:{BASE}", "scenes must be an integer >= 0, got -1"),
    (f"shortcut:scenes=1000:{BASE}", "scenes=1000: class '.*' has only \\d+ training images"),
])
def test_bad_specs_are_clear_errors(spec, match):
    with pytest.raises((ValueError, DataError), match=match):
        build_dataset(spec, "train")


def test_data_without_locations_is_refused(tmp_path):
    from PIL import Image

    for c in ("a", "b"):
        (tmp_path / "train" / c).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "train" / c / "x.png")
    with pytest.raises(ValueError, match="needs object boxes or masks"):
        build_dataset(f"shortcut:imagefolder:{tmp_path}", "train")


@pytest.mark.slow
@requires_tiny_imagenet()
def test_tiny_imagenet_shortcut_builds():
    ds = build_dataset(f"shortcut:tinyimagenet:{TINY_IMAGENET}", "test")
    assert len(ds) == 500 and ds.num_classes == 10
    image, label, box, mask = ds.load(0)
    assert image.shape == (3, 64, 64) and mask is None and box.shape == (1, 4)


@pytest.mark.slow
@requires_tiny_imagenet()
def test_tiny_imagenet_scene_shortcut_takes_test_backgrounds_from_training_scenes():
    spec = f"shortcut:scenes=2,val_fraction=0.2:tinyimagenet:{TINY_IMAGENET}"
    train, test = build_dataset(spec, "train"), build_dataset(spec, "test")
    assert len(test.strips) == 2 * 10 and set(test.strips) == set(train.strips) <= set(train.index)
    assert test.lender_base is not test.base and len(test.lender_base) == 5000  # the training split's images
    image, label, box, _ = test.load(0)
    assert image.shape == (3, 64, 64) and box.shape == (1, 4)


def test_cached_composites_are_the_composites():
    cached, fresh = _build("train"), _build("train", "")
    fresh._cache_left = 0  # never caches
    for k in (0, 3, 0, 3):  # second round served from the cache
        a, b = cached.load(k), fresh.load(k)
        assert torch.equal(a[0], b[0]) and torch.equal(a[2], b[2]) and torch.equal(a[3], b[3])
    assert set(cached._cache) == {0, 3} and not fresh._cache
