"""The backbones shipped in backbones/: the file is the one its README names, and fine-tuning starts from it."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from consistcam.models import create
from consistcam.run import load_model
from consistcam.run.init import load_init
from tests.conftest import TINY_IMAGENET

ROOT = Path(__file__).parents[2]
README = ROOT / "backbones" / "README.md"


def _rows() -> list[tuple[str, str]]:
    return re.findall(r"^\| `([\w.]+\.safetensors)`.*\| `([0-9a-f]{64})` \|$", README.read_text(), re.M)


def test_every_backbone_matches_its_readme_and_fine_tunes():
    rows = _rows()
    assert rows, f"no backbone rows in {README}"
    for name, digest in rows:
        path = ROOT / "backbones" / name
        assert hashlib.sha256(path.read_bytes()).hexdigest() == digest, f"{path} is not the file its README names"
        _, info = load_model(path, device="cpu")
        assert len(info["classes"]) == 170
        if (TINY_IMAGENET / "words.txt").is_file():  # the benchmark's classes were never seen in pretraining
            wnids = (TINY_IMAGENET / "wnids.txt").read_text().split()
            names = {line.split("\t")[1].split(",")[0].strip() for line in (TINY_IMAGENET / "words.txt").read_text()
                     .splitlines() if line.split("\t")[0] in wnids}
            assert not names & set(info["classes"])
        fresh = create(info["arch"], 10)
        assert load_init(fresh, path).head_reinitialised == "model.fc"


def test_the_fine_tuning_preset_names_a_shipped_backbone():
    from consistcam.train import TrainConfig

    cfg = TrainConfig.from_yaml(ROOT / "configs" / "compare" / "shortcut_tinyimagenet_ft_cpu.yaml")
    assert (ROOT / cfg.init).is_file() and Path(cfg.init).name in {name for name, _ in _rows()}
