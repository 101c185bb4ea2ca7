"""Bad data gets a clear error naming the file (and line), or a counted skip under skip_bad."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from consistcam.data import DataError, TinyImageNet, collate, read_rgb
from consistcam.data import images as images_module
from tests.data.test_data import _write_tiny


@pytest.mark.parametrize(("bad_line", "message"), [
    ("n002_9.JPEG\tnan\t1\t3\t4", "expected four integer coordinates, got 'nan 1 3 4'"),
    ("n002_9.JPEG\ta\tb\tc\td", "expected four integer coordinates"),
    ("n002_9.JPEG\t1\t2\t3", "expected 'file x0 y0 x1 y1'"),
])
def test_bad_annotation_lines_fail_or_are_skipped_and_counted(tmp_path, bad_line, message):
    _write_tiny(tmp_path, bad_line=bad_line)
    boxes = tmp_path / "train" / "n002" / "n002_boxes.txt"
    with pytest.raises(DataError, match=f"{boxes}:4: {message}"):
        TinyImageNet(tmp_path, "train")
    ds = TinyImageNet(tmp_path, "train", skip_bad=True)
    assert len(ds) == 6 and ds.skipped.counts() == {"annotation": 1}
    assert ds.skipped.items[0][0] == f"{boxes}:4"


def test_unknown_class_in_val_annotations(tmp_path):
    _write_tiny(tmp_path)
    ann = tmp_path / "val" / "val_annotations.txt"
    ann.write_text(ann.read_text() + "val_0.JPEG\tn999\t0\t0\t15\t15\n")
    with pytest.raises(DataError, match=f"{ann}:2: class id 'n999' is not in wnids.txt"):
        TinyImageNet(tmp_path, "val")
    assert TinyImageNet(tmp_path, "val", skip_bad=True).skipped.counts() == {"annotation": 1}


def test_duplicated_class_id_is_an_error(tmp_path):
    _write_tiny(tmp_path)
    (tmp_path / "wnids.txt").write_text("n001\nn002\nn001\n")
    with pytest.raises(DataError, match=r"wnids.txt:3: class id 'n001' appears twice \(first on line 1\)"):
        TinyImageNet(tmp_path, "train")


def test_a_class_emptied_by_skipping_is_an_error(tmp_path):
    _write_tiny(tmp_path)
    for k in range(3):
        (tmp_path / "train" / "n001" / "images" / f"n001_{k}.JPEG").write_bytes(b"not an image")
    with pytest.raises(DataError, match="class 'goldfish' has no samples after skipping 3 bad entries"):
        TinyImageNet(tmp_path, "train", skip_bad=True)


def test_decompression_bomb_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    Image.fromarray(np.zeros((40, 50, 3), dtype=np.uint8)).save(path)
    monkeypatch.setattr(images_module, "MAX_PIXELS", 1000)
    with pytest.raises(DataError, match=r"big.png: 50x40 pixels is over the limit of 1000 \(a decompression bomb"):
        read_rgb(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)  # PIL's own guard, also turned into a DataError
    monkeypatch.setattr(images_module, "MAX_PIXELS", 10**9)
    with pytest.raises(DataError, match="decompression bomb"):
        read_rgb(path)


def test_non_image_file_names_the_file(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("hello")
    with pytest.raises(DataError, match="notes.jpg: unreadable or truncated image"):
        read_rgb(path)


def test_mixed_image_sizes_say_to_set_image_size():
    samples = [{"image": torch.zeros(3, 16, 16), "label": 0, "id": 0},
               {"image": torch.zeros(3, 20, 24), "label": 1, "id": 1}]
    with pytest.raises(DataError, match=r"different sizes in one batch \(16x16 and 24x20, e.g. sample id 1\); "
                                        r"set --image-size"):
        collate(samples)
