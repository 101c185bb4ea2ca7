"""The one input check of explain, the masked attacks and the consistency score: wrong inputs are
refused with a message naming the argument and the fix, valid ones pass, and it costs one host sync."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from consistcam import ConsistencyConfig, explain, explanation_consistency, score_dataset
from consistcam.attack import background_noise, masked_fgsm, masked_pgd
from consistcam.explain.inputs import InputError, check_inputs, expected_channels
from consistcam.models import Normalize
from tests.attack.test_attack import _CountHostSyncs
from tests.helpers import TinyNet, square_images

ENTRY_POINTS = {
    "explain": lambda model, x, y: explain(model, x, y),
    "masked_pgd": lambda model, x, y: masked_pgd(model, x, y, steps=1),
    "explanation_consistency": lambda model, x, y: explanation_consistency(model, x, y, ConsistencyConfig(steps=1)),
}
NAME = {"explain": "targets", "masked_pgd": "labels", "explanation_consistency": "labels"}


@pytest.fixture(scope="module")
def model() -> nn.Module:
    torch.manual_seed(0)
    return Normalize(TinyNet(classes=3), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)).eval()


@pytest.fixture(scope="module")
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    images, labels, _ = square_images(4, seed=3)
    return images, labels


def _bad_images(x: torch.Tensor) -> dict[str, tuple[torch.Tensor, type, str]]:
    nan, inf = x.clone(), x.clone()
    nan[2, 0, 3, 3] = float("nan")
    inf[1, 1, 0, 0] = float("inf")
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    return {
        "uint8": ((x * 255).to(torch.uint8), TypeError, r"integer dtype torch.uint8.*images.float\(\) / 255"),
        "int32": ((x * 255).to(torch.int32), TypeError, r"integer dtype torch.int32.*images.float\(\) / 255"),
        "float64": (x.double(), TypeError, r"images has dtype torch.float64 .* torch.float32.*images.to\("),
        "bool": (x > 0.5, TypeError, r"images has dtype torch.bool"),
        "0-255": (x * 255, ValueError, r"images must lie in \[0, 1\].*divide by 255.*consistcam.models.Normalize"),
        "imagenet-normalised": ((x - mean[:, None, None]) / std[:, None, None], ValueError,
                                r"images must lie in \[0, 1\].*normalised.*inside the model.*Normalize"),
        "nan": (nan, ValueError, r"images contains 1 NaN/Inf values \(first in image 2\)"),
        "inf": (inf, ValueError, r"images contains 1 NaN/Inf values \(first in image 1\)"),
        "grey": (x[:, :1], ValueError, r"images have 1 channel but the model \(Normalize\) takes 3.*"
                                       r"expand\(-1, 3, -1, -1\)"),
        "rgba": (torch.cat([x, x[:, :1]], 1), ValueError, r"images have 4 channels .* takes 3.*images\[:, :3\]"),
        "3-d": (x[0], ValueError, r"\(N, C, H, W\).*got shape \(3, 16, 16\).*images\[None\]"),
    }


@pytest.mark.parametrize("case", list(_bad_images(torch.zeros(4, 3, 16, 16))))
@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_bad_images_are_refused_with_the_fix(model, batch, entry, case):
    x, y = batch
    images, kind, message = _bad_images(x)[case]
    with pytest.raises(kind, match=message) as err:
        ENTRY_POINTS[entry](model, images, y)
    assert isinstance(err.value, InputError)  # also a ValueError: the command line reports it as "error: ..."


def _bad_targets(y: torch.Tensor, name: str) -> dict[str, tuple[object, type, str]]:
    return {
        "float": (y.float(), TypeError, rf"{name} must be integer class ids, got dtype torch.float32.*\.long\(\)"),
        "bool": (y > 0, TypeError, rf"{name} must be integer class ids, got dtype torch.bool"),
        "count": (y[:2], ValueError, rf"{name} must be 4 integer class ids \(one per image\), got shape \(2,\)"),
        "one-hot": (torch.eye(3, dtype=torch.long)[y], ValueError,
                    rf"{name} must be 4 integer class ids.*got shape \(4, 3\).*{name}.argmax\(1\)"),
        "too large": (torch.tensor([0, 1, 2, 3]), ValueError, rf"{name} must lie in \[0, 3\).*got 3"),
        "negative": (torch.tensor([0, -1, 2, 1]), ValueError, rf"{name} must lie in \[0, 3\).*got -1"),
        "string": ("cat", TypeError, rf"{name} must be"),
    }


@pytest.mark.parametrize("case", list(_bad_targets(torch.zeros(4, dtype=torch.long), "t")))
@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_bad_targets_are_refused(model, batch, entry, case):
    x, y = batch
    targets, kind, message = _bad_targets(y, NAME[entry])[case]
    with pytest.raises(kind, match=message):
        ENTRY_POINTS[entry](model, x, targets)


@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_integer_targets_of_any_dtype_and_python_ints_are_accepted(model, batch, entry):
    x, y = batch
    outs = []
    for targets in (y, y.int(), y.to(torch.uint8), y.tolist()):
        torch.manual_seed(0)  # the attack's random start
        outs.append(ENTRY_POINTS[entry](model, x, targets))
    first = outs[0]["E"] if entry == "explanation_consistency" else outs[0]
    for other in outs[1:]:
        assert torch.equal(other["E"] if entry == "explanation_consistency" else other, first)
    assert explain(model, x, 1).shape == (4, 1, 16, 16)  # one Python int for every image


def test_valid_float64_model_and_inputs_pass(batch):
    torch.manual_seed(0)
    model = TinyNet(classes=3).double().eval()
    x, y = batch
    assert explain(model, x.double(), y).dtype == torch.float64
    adv = masked_pgd(model, x.double(), y.int(), steps=1)
    assert adv.dtype == torch.float64 and adv.min() >= 0 and adv.max() <= 1


def test_edges_of_the_valid_range_pass(model, batch):
    x, y = batch
    x = x.clone()
    x[0] = 0.0
    x[1] = 1.0
    assert explain(model, x, y).shape == (4, 1, 16, 16)
    assert masked_fgsm(model, x, y).shape == x.shape


def test_multilabel_targets_are_checked_once_and_still_work(model, batch):
    x, _ = batch
    maps = explain(model, x, [[0, 2], [1], [], [torch.tensor(2, dtype=torch.int32).item()]])
    assert [m.shape[0] for m in maps] == [2, 1, 0, 1]
    assert torch.allclose(maps[0][1:], explain(model, x[:1], [2]), atol=1e-6)
    with pytest.raises(TypeError, match="targets must be integer class ids, got dtype torch.float32"):
        explain(model, x, [[0.5], [1], [2], [0]])
    with pytest.raises(ValueError, match=r"targets must lie in \[0, 3\)"):
        explain(model, x, [[0, 3], [1], [2], [0]])
    with pytest.raises(ValueError, match="got 2 targets lists for 4 images"):
        explain(model, x, [[0], [1]])


def test_attacks_and_consistency_need_one_class_id_per_image(model, batch):
    x, y = batch
    with pytest.raises(ValueError, match="labels must be 4 integer class ids.*got NoneType"):
        masked_pgd(model, x, None, steps=1)
    with pytest.raises(ValueError, match="labels must be 4 integer class ids.*got list"):
        explanation_consistency(model, x, [[0], [1], [2], [0]], ConsistencyConfig(steps=1))


@pytest.mark.parametrize("options,message", [
    ({"explainer": "scorecam", "batch_size": 0}, "explainer option batch_size: batch_size must be >= 1, got 0"),
    ({"explainer": "integrated-gradcam", "steps": 2.5}, "explainer option steps: steps must be >= 1, got 2.5"),
    ({"bogus": 1}, "unknown explainer option 'bogus'; known: baseline, batch_size"),
    ({"batch_sise": 8}, "unknown explainer option 'batch_sise'; did you mean batch_size"),
])
def test_explainer_options_are_checked_before_any_work(model, batch, options, message):
    with pytest.raises(ValueError, match=message):
        explain(model, batch[0], batch[1], **options)


def test_background_noise_checks_the_images_without_a_model(batch):
    x, _ = batch
    with pytest.raises(TypeError, match=r"images.float\(\) / 255"):
        background_noise((x * 255).to(torch.uint8), None)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        background_noise(x * 255, None)
    assert background_noise(x[:, :1], None).shape == (4, 1, 16, 16)  # no model: any channel count


def test_score_dataset_rejects_a_loader_of_uint8_images(model, batch):
    x, y = batch
    loader = [{"image": (x * 255).to(torch.uint8), "label": y, "id": torch.arange(4)}]
    with pytest.raises(TypeError, match=r"images has integer dtype torch.uint8.*images.float\(\) / 255"):
        score_dataset(model, loader, ConsistencyConfig(steps=1))


def test_channel_check_uses_the_normalize_wrapper_and_nothing_else():
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
    assert expected_channels(mlp) is None
    check_inputs(mlp, torch.rand(2, 1, 4, 4), [0, 1])  # nothing to compare the channels with: no error
    # a model that adds channels before its first convolution is not second-guessed
    assert expected_channels(nn.Sequential(nn.Conv2d(5, 8, 3))) is None
    wrapped = Normalize(nn.Sequential(nn.Conv2d(4, 8, 4, stride=4)), mean=(0.5,) * 4, std=(0.2,) * 4)
    assert expected_channels(wrapped) == ("Normalize", 4)


def test_other_floating_dtypes_are_fine_under_autocast(model, batch):
    x, y = batch
    with pytest.raises(TypeError, match="torch.bfloat16"):
        check_inputs(model, x.bfloat16(), y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert check_inputs(model, x.bfloat16(), y).images.dtype == torch.bfloat16


CALLS = {
    "explain": lambda m, x, y, mask: explain(m, x, y),
    "explain multi-label": lambda m, x, y, mask: explain(m, x, [[0, 1], [2], [], [1]]),
    "masked_pgd": lambda m, x, y, mask: masked_pgd(m, x, y, mask, steps=3),
    "masked_pgd explanation": lambda m, x, y, mask: masked_pgd(m, x, y.int(), mask, steps=2, objective="explanation"),
    "masked_fgsm": lambda m, x, y, mask: masked_fgsm(m, x, y, mask),
    "background_noise": lambda m, x, y, mask: background_noise(x, mask),
    "explanation_consistency": lambda m, x, y, mask: explanation_consistency(m, x, y, ConsistencyConfig(steps=2)),
    "explanation_consistency prediction": lambda m, x, y, mask: explanation_consistency(
        m, x, y, ConsistencyConfig(steps=2, target="prediction", objective="explanation")),
}


@pytest.mark.parametrize("call", list(CALLS))
def test_one_host_sync_per_call(model, call):
    x, y, masks = square_images(4, seed=5)
    CALLS[call](model, x, y, masks)  # warm-up: the automatic layer finder's dry forward
    with _CountHostSyncs() as counter:
        CALLS[call](model, x, y, masks)
    assert counter.syncs == 1  # the input check; none per PGD step or per inner explanation
