from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from consistcam.data import (
    DataError,
    DemoShapes,
    TinyImageNet,
    build_dataset,
    build_transform,
    collate,
    make_demo_split,
    read_rgb,
)
from tests.conftest import TINY_IMAGENET, requires_tiny_imagenet


def _write_tiny(root, bad_line: str | None = None, zero_byte: bool = False):
    (root / "wnids.txt").write_text("n001\nn002\n")
    (root / "words.txt").write_text("n001\tgoldfish, Carassius\nn002\tlion\n")
    rng = np.random.default_rng(0)
    for c, wnid in enumerate(["n001", "n002"]):
        img_dir = root / "train" / wnid / "images"
        img_dir.mkdir(parents=True)
        lines = []
        for k in range(3):
            arr = rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)
            mode_img = Image.fromarray(arr).convert("L") if (c, k) == (1, 2) else Image.fromarray(arr)
            mode_img.save(img_dir / f"{wnid}_{k}.JPEG", format="JPEG")
            lines.append(f"{wnid}_{k}.JPEG\t{k}\t1\t{10 + k}\t15")
        if bad_line and c == 1:
            lines.append(bad_line)
        (root / "train" / wnid / f"{wnid}_boxes.txt").write_text("\n".join(lines) + "\n")
    val = root / "val" / "images"
    val.mkdir(parents=True)
    Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(val / "val_0.JPEG", format="JPEG")
    (root / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn002\t0\t0\t15\t15\n")
    if zero_byte:
        (root / "train" / "n001" / "images" / "n001_0.JPEG").write_bytes(b"")


def test_tiny_imagenet_native_layout(tmp_path):
    _write_tiny(tmp_path)
    ds = TinyImageNet(tmp_path, "train")
    assert len(ds) == 6 and ds.classes == ["goldfish", "lion"]
    s = ds[4]
    assert s["label"] == 1 and s["id"] == 4
    assert s["boxes"].tolist() == [[1.0, 1.0, 12.0, 16.0]]  # inclusive 1 1 11 15 -> exclusive x1/y1
    assert s["image"].shape == (3, 16, 16)  # the grayscale JPEG came out RGB
    val = TinyImageNet(tmp_path, "val")
    assert len(val) == 1 and val[0]["label"] == 1 and val[0]["boxes"].tolist() == [[0.0, 0.0, 16.0, 16.0]]


@pytest.mark.parametrize("line,match", [
    ("n002_9.JPEG\t1\t2\t3", r"n002_boxes.txt:4: expected 'file x0 y0 x1 y1'"),
    ("n002_0.JPEG\t1\ta\t3\t4", r"n002_boxes.txt:4: expected four integer"),
    ("n002_0.JPEG\t1\t1\t40\t4", r"n002_boxes.txt:4: box .* outside the 16x16 image"),
])
def test_bad_annotation_lines_name_file_and_line(tmp_path, line, match):
    _write_tiny(tmp_path, bad_line=line)
    with pytest.raises(DataError, match=match):
        TinyImageNet(tmp_path, "train")


def test_unknown_class_in_val_and_bad_images(tmp_path):
    _write_tiny(tmp_path, zero_byte=True)
    with pytest.raises(DataError, match=r"n001_0.JPEG: empty file"):
        TinyImageNet(tmp_path, "train")
    ds = TinyImageNet(tmp_path, "train", skip_bad=True)
    assert len(ds) == 5 and len(ds.skipped) == 1
    (tmp_path / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn999\t0\t0\t15\t15\n")
    with pytest.raises(DataError, match=r"val_annotations.txt:1: class id 'n999'"):
        TinyImageNet(tmp_path, "val")


def test_read_rgb_modes(tmp_path):
    arr16 = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000)
    Image.fromarray(arr16).save(tmp_path / "a.png")
    Image.new("RGBA", (8, 8), (10, 20, 30, 0)).save(tmp_path / "b.png")
    Image.new("CMYK", (8, 8), (0, 255, 0, 0)).save(tmp_path / "c.jpg")
    for name in ("a.png", "b.png", "c.jpg"):
        img = read_rgb(tmp_path / name)
        assert img.shape == (3, 8, 8) and img.dtype == torch.uint8
    assert read_rgb(tmp_path / "a.png").max() > 200  # 16-bit scaled, not clipped to 255 garbage
    (tmp_path / "trunc.jpg").write_bytes((tmp_path / "c.jpg").read_bytes()[:40])
    with pytest.raises(DataError, match="trunc.jpg"):
        read_rgb(tmp_path / "trunc.jpg")


def test_transforms_move_boxes_and_masks_with_the_image():
    ds = DemoShapes("train", n=16, size=32, transform=None)
    flip = v2.Compose([v2.RandomHorizontalFlip(p=1.0), build_transform(None, "none")])
    crop = v2.Compose([v2.RandomResizedCrop(24, scale=(0.3, 0.6)), build_transform(None, "none")])
    torch.manual_seed(0)
    for tf in (flip, crop):
        for i in range(16):
            s = tf(ds[i])
            mask = s["mask"].bool()
            if len(s["boxes"]) == 0:  # cropped away entirely: dropped, and so is the object
                assert mask.sum() <= 2
                continue
            x0, y0, x1, y1 = s["boxes"][0].tolist()
            ys, xs = mask.nonzero(as_tuple=True)
            assert xs.min() >= x0 - 1 and xs.max() <= x1 and ys.min() >= y0 - 1 and ys.max() <= y1
            assert 0 <= x0 < x1 <= s["image"].shape[-1] and 0 <= y0 < y1 <= s["image"].shape[-2]


def test_demo_is_deterministic_and_correlated():
    a = make_demo_split(400, seed=3)
    b = make_demo_split(400, seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    _, labels, masks, bg = make_demo_split(2000, rho=0.9, split="train")
    assert abs((bg == labels).float().mean().item() - 0.9) < 0.03
    _, labels, _, bg = make_demo_split(2000, split="test")
    assert abs((bg == labels).float().mean().item() - 0.25) < 0.04
    assert masks.flatten(1).any(1).all()
    # val: the same decorrelated distribution as test, but other images (picking on val, reporting on test)
    images_val, labels_val, _, bg_val = make_demo_split(2000, split="val")
    assert abs((bg_val == labels_val).float().mean().item() - 0.25) < 0.04
    assert not torch.equal(images_val, make_demo_split(2000, split="test")[0])
    assert not torch.equal(labels_val, labels)
    batch = collate([DemoShapes("test", transform=build_transform())[i] for i in range(4)])
    assert batch["mask"].shape == (4, 1, 32, 32) and len(batch["boxes"]) == 4


def test_data_spec_errors():
    with pytest.raises(ValueError, match="unknown data set .cifar.*known: .*cub.*tinyimagenet.*voc"):
        build_dataset("cifar:/x")
    with pytest.raises(ValueError, match="bad demo option"):
        build_dataset("demo:foo=1")
    with pytest.raises(DataError, match="wnids.txt: not found"):
        build_dataset("tinyimagenet:/nonexistent")


@pytest.mark.slow
@requires_tiny_imagenet()
def test_real_tiny_imagenet_10():
    train = TinyImageNet(TINY_IMAGENET, "train")
    val = TinyImageNet(TINY_IMAGENET, "val")
    assert len(train) == 5000 and len(val) == 500 and train.num_classes == 10
    assert torch.bincount(torch.tensor(train.labels)).tolist() == [500] * 10
    for ds in (train, val):
        boxes = torch.stack(ds.boxes)
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= 64).all() and (boxes[:, 3] <= 64).all()
        assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
        assert all(img.shape == (3, 64, 64) for img in ds.images)
