"""VAE-TracIn: the ELBO by hand, its gradient path, the trainer's run folder, TracIn sums, CLI."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from consistcam.cli import main
from consistcam.config import ConfigError
from consistcam.run.checkpoint import read_metadata
from consistcam.run.kept import kept_checkpoints
from consistcam.vae import (
    ConvVAE,
    VAEConfig,
    elbo_gradients,
    elbo_loss,
    load_vae,
    sample_noise,
    train_vae,
    vae_checkpoints,
    vae_tracin,
)


def test_elbo_matches_the_formula():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 4, 4, generator=g)
    recon = torch.randn(2, 3, 3, 4, 4, generator=g)  # S = 3 draws
    mu, logvar = torch.randn(2, 5, generator=g), torch.randn(2, 5, generator=g)
    loss = elbo_loss(recon, x, mu, logvar, beta=2.0)
    for i in range(2):
        se = sum(((torch.sigmoid(recon[i, s]) - x[i]) ** 2).sum() for s in range(3)) / 3
        kl = sum(-0.5 * (1 + logvar[i, j] - mu[i, j] ** 2 - logvar[i, j].exp()) for j in range(5))
        assert loss[i].item() == pytest.approx(((se + 2.0 * kl) / 48).item(), rel=1e-5)


def test_elbo_gradients_follow_the_reparameterisation_path():
    torch.manual_seed(0)
    model = ConvVAE(8, 3, latent_dim=4, widths=(4, 8)).train()
    x, ids = torch.rand(3, 3, 8, 8), torch.tensor([5, 9, 2])
    g = elbo_gradients("last", samples=2, beta=1.0, seed=7)(model, {"image": x, "id": ids})
    assert model.training and all(p.grad is None for p in model.parameters())
    names = ["encoder.head.weight", "encoder.head.bias", "decoder.out.weight", "decoder.out.bias"]
    params = dict(model.named_parameters())
    eps = sample_noise(ids, 2, 4, seed=7)
    model.eval()
    loop = []
    for i in range(3):
        recon, mu, logvar = model(x[i:i + 1], eps[i:i + 1])
        loss = elbo_loss(recon, x[i:i + 1], mu, logvar).sum()
        loop.append(torch.cat([t.flatten() for t in torch.autograd.grad(loss, [params[n] for n in names])]))
    torch.testing.assert_close(g, torch.stack(loop), rtol=1e-4, atol=1e-7)
    # both ends carry gradient: the encoder head through z = mu + sigma * eps and the KL term
    enc = params["encoder.head.weight"].numel() + params["encoder.head.bias"].numel()
    assert g[:, :enc].abs().sum(1).min() > 0 and g[:, enc:].abs().sum(1).min() > 0
    # a sample's gradient does not depend on its batch (its noise is keyed by its id)
    alone = elbo_gradients("last", samples=2, seed=7)(model, {"image": x[1:2], "id": ids[1:2]})
    torch.testing.assert_close(alone[0], g[1], rtol=1e-5, atol=1e-7)


def test_kl_only_gradient_of_the_encoder_head_by_hand():
    """beta-weighted KL is the only encoder-head term when the decoder ignores z (zeroed decoder.fc)."""
    torch.manual_seed(0)
    model = ConvVAE(8, 3, latent_dim=2, widths=(4, 8)).eval()
    with torch.no_grad():
        model.decoder.fc.weight.zero_()
    x = torch.rand(1, 3, 8, 8)
    g = elbo_gradients(["encoder.head.bias"], samples=1, beta=3.0)(model, {"image": x, "id": torch.tensor([0])})
    mu, logvar = model.encoder(x)
    # d/dmu (0.5 mu^2) = mu; d/dlogvar (-0.5 (1 + lv - e^lv)) = 0.5 (e^lv - 1); scaled by beta / pixels
    expected = torch.cat([mu[0], 0.5 * (logvar[0].exp() - 1)]) * 3.0 / x[0].numel()
    torch.testing.assert_close(g[0], expected.detach(), rtol=1e-4, atol=1e-7)


TINY = dict(data="demo:n=24,size=16", image_size=16, latent_dim=4, widths=[4, 8], epochs=2, batch_size=8,
            lr=1e-3, keep_checkpoints=1)


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("vae") / "run"
    return train_vae(VAEConfig(**TINY, out=str(out)))


def test_trainer_writes_a_run_folder_with_checkpoints(vae_run, tmp_path):
    kept = kept_checkpoints(vae_run)
    assert list(kept) == [0, 1]
    assert float(read_metadata(kept[0])["lr"]) == 1e-3 and read_metadata(kept[1])["interval_epochs"] == "1"
    assert '"complete"' in (vae_run / "status.json").read_text()
    final = load_file(str(vae_run / "model.safetensors"))
    assert all(torch.equal(final[k], v) for k, v in load_file(str(kept[1])).items())
    assert isinstance(load_vae(vae_run), ConvVAE)
    # excluded ids are left out of training, the rest trains the same way
    out = train_vae(VAEConfig(**{**TINY, "epochs": 1}, exclude=[0, 3], out=str(tmp_path / "ex")))
    assert (out / "model.safetensors").is_file()
    with pytest.raises(ValueError, match="exclude"):
        train_vae(VAEConfig(**{**TINY, "epochs": 1}, exclude=[99], out=str(tmp_path / "bad")))
    with pytest.raises(ConfigError, match="image_size"):
        VAEConfig(image_size=30, widths=[4, 8])


def test_vae_tracin_is_the_lr_weighted_sum_of_gradient_products(vae_run):
    test = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    result, images = vae_tracin(vae_run, test, samples=2, seed=1, batch_size=10)
    assert result.influence.shape == (24, 2) and torch.equal(result.ids, torch.arange(24))
    featurize = elbo_gradients("last", samples=2, seed=1)
    test_batch = {"image": test, "id": torch.arange(2), "noise_id": torch.arange(2) + 2**40}
    expected = torch.zeros(24, 2, dtype=torch.float64)
    expected_self = torch.zeros(24, dtype=torch.float64)
    for ck in vae_checkpoints(vae_run):
        model = ck.load()
        gt = featurize(model, test_batch).double()
        gi = featurize(model, {"image": images, "id": torch.arange(24)}).double()
        expected += 1e-3 * gi @ gt.T
        expected_self += 1e-3 * gi.square().sum(1)
    torch.testing.assert_close(result.influence, expected, rtol=1e-5, atol=1e-12)
    torch.testing.assert_close(result.self_influence, expected_self, rtol=1e-5, atol=1e-12)


def test_cli_vae_train_and_influence(tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["vae", "train", "--data", "demo:n=16,size=16", "--image-size", "16", "--widths", "[4, 8]",
                 "--latent-dim", "2", "--epochs", "1", "--out", str(out), "--quiet"]) == 0
    assert main(["vae", "influence", str(out), "--test", "test:0", "--self", "--top", "2", "--samples", "1",
                 "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "proponents" in printed and "highest self-influence" in printed
    assert (out / "influence" / "influence.html").read_text().count("<figure>") == 1 + 2 + 2 + 2
    assert main(["vae", "train", "--lr", "-1", "--out", str(tmp_path / "x")]) == 2
    assert "lr" in capsys.readouterr().err
    assert main(["vae", "influence", str(tmp_path / "missing"), "--self"]) == 2
    assert "config.yaml" in capsys.readouterr().err
