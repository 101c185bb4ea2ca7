"""Instance-based interpretation: TracIn influence of training samples on predictions.

``tracin(checkpoints, gradients, train_batches, test_batch)`` is the core (any loss: the
classifier's cross-entropy here, the VAE's ELBO in :mod:`consistcam.vae`);
``influence_for_run(RUN, ...)`` runs it over a training run's kept checkpoints.
"""

from consistcam.influence.gradients import (
    RandomProjection,
    classifier_gradients,
    last_layer_names,
    per_sample_gradients,
    select_parameters,
)
from consistcam.influence.tracin import TracInCheckpoint, TracInResult, tracin

__all__ = [
    "RandomProjection",
    "TracInCheckpoint",
    "TracInResult",
    "classifier_gradients",
    "influence_for_run",
    "last_layer_names",
    "per_sample_gradients",
    "run_checkpoints",
    "select_parameters",
    "tracin",
]


def __getattr__(name: str):
    if name in ("influence_for_run", "run_checkpoints"):  # run.py reads data sets: imported on use
        from consistcam.influence import run

        return getattr(run, name)
    raise AttributeError(name)
