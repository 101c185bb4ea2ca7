"""Native-format fixtures (written here, tiny) for CUB, VOC, STL-10, ImageFolder and ImageNet-9,
and the background-variant builder."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from consistcam.data import (
    CUB200,
    STL10,
    BackgroundVariant,
    DataError,
    DemoShapes,
    ImageFolder,
    ImageNet9,
    VOCDetectionLabels,
    build_dataset,
    build_transform,
    collate,
    eval_splits,
    export_variants,
)


def _png(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def _color(value, h=20, w=24):
    return np.full((h, w, 3), value, dtype=np.uint8)


# -- CUB -------------------------------------------------------------------------------------------

def _write_cub(root, boxes_line3="3 2.0 1.0 5.0 4.0", label3="2"):
    root = root / "CUB_200_2011"
    (root / "images").mkdir(parents=True)
    (root / "classes.txt").write_text("1 001.Black_footed_Albatross\n2 002.Laysan_Albatross\n")
    names = ["001.Black_footed_Albatross/a.jpg", "001.Black_footed_Albatross/b.jpg", "002.Laysan_Albatross/c.jpg"]
    for k, n in enumerate(names):
        _png(root / "images" / n, _color(40 * k))
    (root / "images.txt").write_text("".join(f"{k + 1} {n}\n" for k, n in enumerate(names)))
    (root / "train_test_split.txt").write_text("1 1\n2 0\n3 1\n")
    (root / "image_class_labels.txt").write_text(f"1 1\n2 1\n3 {label3}\n")
    (root / "bounding_boxes.txt").write_text(f"1 0.0 0.0 24.0 20.0\n2 1.0 1.0 2.0 2.0\n{boxes_line3}\n")


def test_cub_native_layout(tmp_path):
    _write_cub(tmp_path)
    train = CUB200(tmp_path, "train")  # the parent of CUB_200_2011 works too
    assert len(train) == 2 and train.classes == ["Black footed Albatross", "Laysan Albatross"]
    s = train[1]
    assert s["label"] == 1 and s["id"] == 1 and s["image"][0, 0, 0] == 80
    assert s["boxes"].tolist() == [[2.0, 1.0, 7.0, 5.0]]  # x y w h -> XYXY
    test = CUB200(tmp_path / "CUB_200_2011", "test")
    assert len(test) == 1 and test[0]["label"] == 0
    t = build_dataset(f"cub:{tmp_path}", "train", build_transform(10, "none"))[1]  # 24x20 -> 12x10, crop 10x10
    assert t["boxes"].tolist() == [[0.0, 0.5, 2.5, 2.5]]


@pytest.mark.parametrize("kw,match", [
    ({"label3": "7"}, r"image_class_labels.txt \(image id 3\): class id 7 is not in classes.txt"),
    ({"boxes_line3": "3 1 2 3"}, r"bounding_boxes.txt:3: expected 5 fields"),
    ({"boxes_line3": "3 -1 0 4 4"}, r"bounding_boxes.txt \(image id 3\): bad box"),
])
def test_cub_bad_annotations(tmp_path, kw, match):
    _write_cub(tmp_path, **kw)
    with pytest.raises(DataError, match=match):
        CUB200(tmp_path, "train")


def test_cub_skip_bad_box_counts_it(tmp_path):
    _write_cub(tmp_path, boxes_line3="3 -1 0 4 4")
    ds = CUB200(tmp_path, "train", skip_bad=True)
    assert len(ds) == 1 and len(ds.skipped) == 1 and "c.jpg" in ds.skipped.items[0][0]


# -- VOC -------------------------------------------------------------------------------------------

def _voc_xml(objects, w=24, h=20):
    objs = "".join(
        f"<object><name>{n}</name><difficult>{d}</difficult><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
        f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>" for n, d, b in objects)
    return f"<annotation><size><width>{w}</width><height>{h}</height><depth>3</depth></size>{objs}</annotation>"


def _write_voc(root, extra_xml=None):
    year = root / "VOCdevkit" / "VOC2007"
    (year / "ImageSets" / "Main").mkdir(parents=True)
    (year / "Annotations").mkdir()
    anns = {
        "000001": [("dog", 0, (1, 1, 10, 10)), ("person", 0, (5, 2, 24, 20)), ("cat", 1, (2, 2, 4, 4))],
        "000002": [("cat", 1, (1, 1, 5, 5))],  # only a difficult cat: a negative image
    }
    if extra_xml:
        anns["000003"] = extra_xml
    for name, objs in anns.items():
        (year / "Annotations" / f"{name}.xml").write_text(objs if isinstance(objs, str) else _voc_xml(objs))
        _png(year / "JPEGImages" / f"{name}.jpg", _color(50))
    (year / "ImageSets" / "Main" / "val.txt").write_text("\n".join(anns) + "\n")


def test_voc_multilabel_boxes_and_difficult(tmp_path):
    _write_voc(tmp_path)
    ds = VOCDetectionLabels(tmp_path, "val")
    s = ds[0]
    assert ds.multilabel and s["label"].shape == (20,)
    assert torch.nonzero(s["label"]).flatten().tolist() == [ds.classes.index("dog"), ds.classes.index("person")]
    assert s["boxes"].tolist() == [[0.0, 0.0, 10.0, 10.0], [4.0, 1.0, 24.0, 20.0]]  # 1-based inclusive -> 0-based
    assert s["box_labels"].tolist() == [ds.classes.index("dog"), ds.classes.index("person")]
    assert ds[1]["label"].sum() == 0 and ds[1]["boxes"].shape == (0, 4)
    keep = VOCDetectionLabels(tmp_path / "VOCdevkit", "val", keep_difficult=True)
    assert keep[1]["label"][keep.classes.index("cat")] == 1
    # a crop that removes a box drops its class entry with it, and the batch keeps them per image
    t = build_dataset(f"voc:{tmp_path}", "val", build_transform(10, "none"))
    batch = collate([t[0], t[1]])
    assert batch["label"].shape == (2, 20) and [len(b) for b in batch["box_labels"]] == [len(b) for b in batch["boxes"]]


@pytest.mark.parametrize("xml,match", [
    (_voc_xml([("unicorn", 0, (1, 1, 3, 3))]), r"000003.xml: object 0 has unknown class 'unicorn'"),
    (_voc_xml([("dog", 0, (1, 1, 30, 3))]), r"000003.xml: object 0 \(dog\) box .* outside the 24x20 image"),
    ("<annotation><size>", r"000003.xml: malformed XML"),
])
def test_voc_bad_annotations(tmp_path, xml, match):
    _write_voc(tmp_path, extra_xml=xml)
    with pytest.raises(DataError, match=match):
        VOCDetectionLabels(tmp_path, "val")
    assert len(VOCDetectionLabels(tmp_path, "val", skip_bad=True)) == 2


# -- STL-10 ----------------------------------------------------------------------------------------

def test_stl10_binary_column_major(tmp_path):
    root = tmp_path / "stl10_binary"
    root.mkdir()
    images = np.random.default_rng(0).integers(0, 255, (3, 96, 96, 3), dtype=np.uint8)  # N H W C
    images.transpose(0, 3, 2, 1).tofile(root / "train_X.bin")  # the release's column-major order
    np.array([1, 10, 4], dtype=np.uint8).tofile(root / "train_y.bin")
    ds = STL10(tmp_path, "train")
    assert len(ds) == 3 and [ds[i]["label"] for i in range(3)] == [0, 9, 3]
    assert torch.equal(ds[1]["image"], torch.from_numpy(images[1]).permute(2, 0, 1))
    np.array([1, 11, 4], dtype=np.uint8).tofile(root / "train_y.bin")
    with pytest.raises(DataError, match=r"train_y.bin: label 11 at position 1"):
        STL10(root, "train")
    (root / "test_X.bin").write_bytes(b"\0" * 100)
    with pytest.raises(DataError, match=r"test_X.bin: 100 bytes is not a whole number"):
        STL10(root, "test")


# -- ImageFolder and ImageNet-9 --------------------------------------------------------------------

def test_image_folder(tmp_path):
    for c, name in enumerate(["cat", "ant"]):
        for k in range(2):
            _png(tmp_path / "train" / name / f"{k}.png", _color(10 * c + k))
    ds = ImageFolder(tmp_path, "train")
    assert ds.classes == ["ant", "cat"] and [ds[i]["label"] for i in range(4)] == [0, 0, 1, 1]
    assert ds[2]["image"][0, 0, 0] == 0 and "boxes" not in ds[0]
    (tmp_path / "train" / "bee").mkdir()
    with pytest.raises(DataError, match=r"train/bee: class folder has no images"):
        ImageFolder(tmp_path, "train")
    (tmp_path / "train" / "bee" / "0.png").write_bytes(b"not an image")
    with pytest.raises(DataError, match=r"bee/0.png: unreadable"):
        ImageFolder(tmp_path, "train", skip_bad=False)[2]
    with pytest.raises(DataError, match=r"bee: class folder has no readable images left"):
        ImageFolder(tmp_path, "train", skip_bad=True)
    _png(tmp_path / "train" / "bee" / "1.png", _color(7))
    ds = ImageFolder(tmp_path, "train", skip_bad=True)
    assert len(ds) == 5 and len(ds.skipped) == 1 and ds[2]["label"] == 1
    assert eval_splits("imagefolder:x") == ("val",)


# -- background variants ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def demo():
    return DemoShapes("test", num_classes=3, size=16, seed=1)


def test_variants_keep_object_and_replace_background(demo):
    fg = demo.masks.bool()
    for variant in ("only_fg", "no_fg", "mixed_same", "mixed_rand", "mixed_next"):
        v = BackgroundVariant(demo, variant, seed=0)
        for i in range(8):
            img, label, _, mask = v.load(i)
            orig = demo.images[i]
            assert label == demo.labels[i]
            obj = fg[i]
            if variant == "no_fg":
                assert (img[:, obj] == 0).all() and torch.equal(img[:, ~obj], orig[:, ~obj])
                continue
            assert torch.equal(img[:, obj], orig[:, obj])  # the object stays, pixel for pixel
            if variant == "only_fg":
                assert (img[:, ~obj] == 0).all()
            else:
                j = v.partner[i]
                assert j != i
                expect = torch.where(fg[j], torch.zeros_like(orig), demo.images[j])  # its object blacked out
                assert torch.equal(img[:, ~obj], expect[:, ~obj])
                want = {"mixed_same": demo.labels[i], "mixed_next": (demo.labels[i] + 1) % 3}.get(variant)
                assert want is None or demo.labels[j] == want
    a, b = BackgroundVariant(demo, "mixed_rand", seed=0), BackgroundVariant(demo, "mixed_rand", seed=0)
    assert a.partner == b.partner != BackgroundVariant(demo, "mixed_rand", seed=1).partner


def test_variant_needs_locations(tmp_path):
    _png(tmp_path / "a" / "0.png", _color(1))
    with pytest.raises(ValueError, match="needs object boxes or masks"):
        BackgroundVariant(ImageFolder(tmp_path), "only_fg")


def test_export_roundtrip_through_imagenet9_loader(tmp_path, demo):
    counts = export_variants(demo, tmp_path, ("original", "only_fg", "mixed_rand"), seed=0)
    assert counts == {"original": len(demo), "only_fg": len(demo), "mixed_rand": len(demo)}
    for variant in ("original", "mixed_rand"):
        in9 = ImageNet9(tmp_path, variant)
        ref = BackgroundVariant(demo, variant, seed=0)
        assert len(in9) == len(demo) and in9.has_masks
        # folders sort by class, then file; map back through the file name (the source index)
        for k in (0, 5, len(in9) - 1):
            src = int(in9.files[k].stem)
            s = in9[k]
            assert s["label"] == demo.labels[src]
            assert torch.equal(s["image"].as_subclass(torch.Tensor), ref.load(src)[0])
            assert torch.equal(s["mask"].as_subclass(torch.Tensor).bool(), demo.masks[src].bool())
    with pytest.raises(DataError, match=r"mixed_next/val: not found \(variants present"):
        ImageNet9(tmp_path, "mixed_next")
    assert eval_splits(f"in9:{tmp_path}")[0] == "original"


def test_variants_cli_exports_readable_layout(tmp_path, capsys):
    from consistcam.cli import main

    assert main(["variants", "demo:size=16", "--split", "test", "--variant", "original", "--variant", "mixed_same",
                 "--out", str(tmp_path), "--quiet"]) == 0
    assert "mixed_same: 1000" in capsys.readouterr().out
    ds = build_dataset(f"in9:{tmp_path}", "mixed_same/test")
    assert len(ds) == 1000 and ds.has_masks
