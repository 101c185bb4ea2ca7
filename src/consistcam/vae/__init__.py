"""A small convolutional VAE, its trainer (run folders with TracIn's checkpoints) and VAE-TracIn."""

from consistcam.vae.config import VAEConfig
from consistcam.vae.loss import elbo_loss, kl_divergence
from consistcam.vae.model import ConvVAE
from consistcam.vae.tracin import elbo_gradients, elbo_per_sample, sample_noise, vae_checkpoints, vae_tracin
from consistcam.vae.train import load_vae, load_vae_data, read_vae_config, train_vae

__all__ = [
    "ConvVAE",
    "VAEConfig",
    "elbo_gradients",
    "elbo_loss",
    "elbo_per_sample",
    "kl_divergence",
    "load_vae",
    "load_vae_data",
    "read_vae_config",
    "sample_noise",
    "train_vae",
    "vae_checkpoints",
    "vae_tracin",
]
