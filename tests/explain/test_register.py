"""Explainers are plug-ins: ``register_explainer`` (the built-ins, SISE and a user's own) and the
entry-point group ``consistcam.explainers`` for installed packages, loaded on the first lookup."""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path

import pytest
import torch
from torch import nn

import consistcam
from consistcam import _registry
from consistcam._registry import EntryPointError
from consistcam.consistency import ConsistencyConfig
from consistcam.evaluation.config import EvaluationConfig
from consistcam.explain import EXPLAINERS, CAMContext, check_explainer_options, list_explainers, register_explainer
from consistcam.explain.explainers import ENTRY_POINT_GROUP

SRC = Path(__file__).parents[2] / "src" / "consistcam"


@pytest.fixture
def registry(monkeypatch):
    """EXPLAINERS as it is, into copies restored after the test (a registration does not leak)."""
    EXPLAINERS.names()  # built-ins and any installed plug-ins, loaded before copying
    monkeypatch.setattr(EXPLAINERS, "_items", dict(EXPLAINERS._items))
    monkeypatch.setattr(EXPLAINERS, "_canonical", dict(EXPLAINERS._canonical))
    return EXPLAINERS


def _installed(monkeypatch, registry, **targets: str) -> None:
    """Pretend an installed package declares ``[project.entry-points."consistcam.explainers"]`` name = target
    (through the registry's seam, ``consistcam._registry.entry_points``); the group is read again."""
    other_groups = _registry.entry_points
    monkeypatch.setattr(_registry, "entry_points", lambda group: [
        importlib.metadata.EntryPoint(name, value, group) for name, value in targets.items()
    ] if group == ENTRY_POINT_GROUP else other_groups(group))
    monkeypatch.setattr(registry, "_plugins_loaded", False)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 5)).eval()


def test_a_user_registered_explainer_explains_and_passes_config_validation(registry):
    @register_explainer("input_energy", "energy", options=("scale",))
    def input_energy(ctx: CAMContext) -> torch.Tensor:
        assert ctx.gradients is not None  # needs_gradients defaults to True
        return (ctx.gradients * ctx.activations).abs().sum(1) * ctx.options.get("scale", 1.0)

    images = torch.rand(2, 3, 16, 16)
    maps = consistcam.explain(_model(), images, torch.tensor([1, 3]), explainer="energy", scale=2.0)
    assert maps.shape == (2, 1, 16, 16) and 0 <= maps.min() and maps.max() <= 1
    assert "input_energy" in list_explainers() and "input_energy" in consistcam.list_explainers()
    check_explainer_options({"scale": 2.0})  # its option is known to every config that takes explainer options
    assert EvaluationConfig(explainers=("gradcam", "input_energy")).explainers == ("gradcam", "input_energy")
    assert ConsistencyConfig(explainer="energy").explainer == "energy"
    with pytest.raises(ValueError, match="'input_energi': unknown explainer \\(did you mean input_energy\\?\\)"):
        EvaluationConfig(explainers=("input_energi",))
    with pytest.raises(ValueError, match="explainer 'gradcam' is already registered"):
        register_explainer("gradcam")(input_energy.fn)


def test_the_built_ins_and_sise_register_through_register_explainer():
    assert consistcam.register_explainer is register_explainer
    sources = {p: p.read_text() for p in SRC.rglob("*.py")}
    adds = [p.relative_to(SRC).as_posix() for p, text in sources.items()
            for _ in re.finditer(r"EXPLAINERS\.add\(", text)]
    assert adds == ["explain/explainers.py"]  # the one inside register_explainer
    decorated = {p.name for p, text in sources.items() if re.search(r"^@register_explainer\(", text, re.M)}
    assert decorated == {"explainers.py", "sise.py"}
    assert EXPLAINERS.get("sise").needs_gradients is False and "grad_threshold" in EXPLAINERS.get("sise").options
    assert EXPLAINERS.canonical("adasise") == "ada-sise"


def test_an_entry_point_explainer_is_loaded_on_first_lookup_and_explains(monkeypatch, registry):
    _installed(monkeypatch, registry, activation_cam="tests.explain.plugin_explainer:activation_cam")
    assert not registry._plugins_loaded  # nothing read at import
    assert "activation_cam" in list_explainers()
    images = torch.rand(2, 3, 16, 16)
    maps = consistcam.explain(_model(), images, torch.tensor([0, 4]), explainer="activation_cam", power=2)
    assert maps.shape == (2, 1, 16, 16) and torch.isfinite(maps).all()
    assert EvaluationConfig(explainers=("activation_cam",)).explainers == ("activation_cam",)


@pytest.mark.parametrize(("name", "target", "message"), [
    ("broken", "tests.explain.no_such_module:cam", "failed to load: ModuleNotFoundError"),
    ("broken", "tests.explain.plugin_explainer:undecorated_cam",
     "is not an explainer: decorate its function with @consistcam.explain.register_explainer"),
    ("gradcam", "tests.explain.plugin_explainer:activation_cam", "explainer 'gradcam' is already registered"),
])
def test_a_broken_entry_point_is_named_in_the_error(monkeypatch, registry, name, target, message):
    _installed(monkeypatch, registry, **{name: target})
    with pytest.raises(EntryPointError, match=f"entry point '{name}' = '{target}' .*{message}"):
        list_explainers()
    with pytest.raises(EntryPointError, match=f"entry point '{name}'"):  # again on the next lookup, not forgotten
        EXPLAINERS.get("gradcam")
