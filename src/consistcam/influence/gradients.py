"""Per-sample loss gradients for TracIn, batched with ``torch.func`` (``vmap`` over ``grad``).

TracIn needs one gradient per training sample per checkpoint. ``vmap(grad(...))`` computes them for
a whole batch in one pass, only for the parameters asked for (autograd never fills ``.grad``), and
works for any ``nn.Module`` through ``functional_call``. The last layer is the default (Pruthi et
al. 2020, Sec. 3.2: cheap and close to the full-model ranking); full-model gradients can be
compressed by a seeded random projection that preserves inner products in expectation.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

# loss(forward, *inputs) -> per-sample losses (B,); ``forward`` calls the model with the given parameters
SampleLoss = Callable[..., Tensor]


@contextlib.contextmanager
def _recording_linears(model: nn.Module) -> Iterator[list[str]]:
    """Names of the ``nn.Linear`` modules in the order a forward pass runs them (hooks removed on exit)."""
    called: list[str] = []
    handles = [m.register_forward_hook(lambda mod, inp, out, n=name: called.append(n))
               for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    try:
        yield called
    finally:
        for h in handles:
            h.remove()


def last_layer(model: nn.Module, example: Tensor) -> tuple[str, nn.Module]:
    """(name, module) of the last ``nn.Linear`` a forward pass of ``example`` (a batch) runs: the
    classifier head of torchvision, timm and our models, wherever it sits in the module tree."""
    from consistcam.models.state import preserved_state

    with preserved_state(model, eval_mode=True), torch.no_grad(), _recording_linears(model) as called:
        model(example[:1])
    if not called:
        raise ValueError("params='last': the model runs no nn.Linear layer; pass params='all' or a module name")
    return called[-1], model.get_submodule(called[-1])


def last_layer_names(model: nn.Module, example: Tensor) -> list[str]:
    """Parameter names of :func:`last_layer` (``model.fc.weight``, ``model.fc.bias``)."""
    name, layer = last_layer(model, example)
    return [f"{name}.{n}" if name else n for n, _ in layer.named_parameters()]


def select_parameters(model: nn.Module, params: str | Sequence[str], example: Tensor | None = None) -> list[str]:
    """Parameter names from ``"last"`` (the last linear layer), ``"all"``, a module-name prefix
    (``"model.layer4"``) or an explicit list of names."""
    names = [n for n, p in model.named_parameters() if p.requires_grad]  # what training updated
    if isinstance(params, str):
        if params == "last":
            if example is None:
                raise ValueError("params='last' needs an example input to find the last layer")
            return last_layer_names(model, example)
        if params == "all":
            return names
        chosen = [n for n in names if n == params or n.startswith(params + ".")]
        if not chosen:
            raise ValueError(f"params={params!r}: no parameter of the model is named so or lies under it "
                             f"(e.g. {', '.join(names[:3])}, ...)")
        return chosen
    known = dict(model.named_parameters())
    missing = [n for n in params if n not in known]
    if missing:
        raise ValueError(f"params: the model has no parameter {missing[0]!r}")
    return list(params)


def per_sample_gradients(model: nn.Module, loss: SampleLoss, inputs: Sequence[Tensor], names: Sequence[str],
                         chunk_size: int | None = None) -> Tensor:
    """(B, D) gradients of ``loss`` for each sample of ``inputs`` w.r.t. the parameters ``names``
    (flattened and concatenated in that order). The model is run in eval mode (BatchNorm uses its
    running statistics, so samples do not interact) and is left as it was."""
    from consistcam.models.state import preserved_state

    if not names:
        raise ValueError("per_sample_gradients: no parameters selected")
    wanted = set(names)
    with preserved_state(model, eval_mode=True):
        trained = {n: p.detach() for n, p in model.named_parameters() if n in wanted}
        fixed = {n: p.detach() for n, p in model.named_parameters() if n not in wanted}
        fixed.update({n: b.detach() for n, b in model.named_buffers()})

        def one(chosen: dict[str, Tensor], *sample: Tensor) -> Tensor:
            def forward(*args, **kwargs):
                return functional_call(model, {**fixed, **chosen}, args, kwargs)

            return loss(forward, *(x.unsqueeze(0) for x in sample)).sum()

        grads = vmap(grad(one), in_dims=(None, *([0] * len(inputs))), chunk_size=chunk_size)(trained, *inputs)
    return torch.cat([grads[n].flatten(1) for n in names], 1)


class RandomProjection:
    """``g -> g R`` with R (D, k) of i.i.d. N(0, 1/k) entries, so E[<g1 R, g2 R>] = <g1, g2>
    (Johnson-Lindenstrauss). R is never held whole: it is drawn in column blocks, each from a
    generator seeded by (seed, block), so every batch and checkpoint sees the same R; blocks are
    cached while they fit in ``cache_mb``."""

    def __init__(self, dim: int, seed: int = 0, block: int = 32768, cache_mb: float = 256.0) -> None:
        if dim < 1:
            raise ValueError(f"projection dim must be >= 1, got {dim}")
        self.dim, self.seed, self.block = dim, seed, block
        self.cache_limit = int(cache_mb * 2**20 / 4)
        self._cache: dict[tuple[int, int, str], Tensor] = {}
        self._cached = 0

    def _matrix(self, index: int, rows: int, device: torch.device) -> Tensor:
        key = (index, rows, str(device))
        if key in self._cache:
            return self._cache[key]
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        m = (torch.randn(rows, self.dim, generator=g) / math.sqrt(self.dim)).to(device)
        if self._cached + m.numel() <= self.cache_limit:
            self._cache[key] = m
            self._cached += m.numel()
        return m

    def __call__(self, g: Tensor) -> Tensor:
        out = g.new_zeros(g.shape[0], self.dim)
        for i, start in enumerate(range(0, g.shape[1], self.block)):
            part = g[:, start:start + self.block]
            out += part @ self._matrix(i, part.shape[1], g.device)
        return out


def _last_linear_gradients(model: nn.Module, image: Tensor, label: Tensor) -> Tensor | None:
    """Exact per-sample gradients of the cross-entropy w.r.t. the last linear layer from one plain
    forward pass: with h the layer's input and d = dCE/dlogits, dW = d h^T and db = d. About half
    the cost of ``vmap``. None when the layer's output is not the model's output (then ``vmap``)."""
    from consistcam.models.state import preserved_state

    name, layer = last_layer(model, image)
    names = last_layer_names(model, image)
    seen: dict[str, Tensor] = {}

    def keep(mod: nn.Module, inp: tuple, out: Tensor) -> None:
        seen["h"], seen["z"] = inp[0].detach(), out.detach()

    handle = layer.register_forward_hook(keep)
    try:
        with preserved_state(model, eval_mode=True), torch.no_grad():
            logits = model(image)
    finally:
        handle.remove()
    if seen["z"].shape != logits.shape or not torch.equal(seen["z"], logits) or seen["h"].dim() != 2:
        return None
    z = logits.clone().requires_grad_(True)
    with torch.enable_grad():
        (d,) = torch.autograd.grad(nn.functional.cross_entropy(z, label, reduction="sum"), z)
    prefix = f"{name}." if name else ""
    parts = {f"{prefix}weight": (d[:, :, None] * seen["h"][:, None, :]).flatten(1), f"{prefix}bias": d}
    return torch.cat([parts[n] for n in names], 1)


def classifier_gradients(params: str | Sequence[str] = "last", projection: int | None = None, seed: int = 0,
                         chunk_size: int | None = None) -> Callable[[nn.Module, dict], Tensor]:
    """The TracIn featurizer of a classifier: ``(model, batch) -> (B, D)`` gradients of the
    cross-entropy of ``batch["image"]`` at ``batch["label"]`` (optionally randomly projected to
    ``projection`` dimensions)."""
    project = RandomProjection(projection, seed) if projection else None

    def ce(forward, image: Tensor, label: Tensor) -> Tensor:
        return nn.functional.cross_entropy(forward(image), label, reduction="none")

    def gradients(model: nn.Module, batch: dict) -> Tensor:
        image, label = batch["image"], batch["label"]
        if label.dim() != 1:
            raise ValueError("TracIn for classifiers needs single-label data (one class id per image)")
        g = _last_linear_gradients(model, image, label) if params == "last" else None
        if g is None:
            g = per_sample_gradients(model, ce, (image, label), select_parameters(model, params, image), chunk_size)
        return project(g) if project is not None else g

    return gradients
