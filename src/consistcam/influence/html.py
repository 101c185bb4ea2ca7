"""A self-contained HTML page of image grids (proponents, opponents, self-influence rankings).

Thumbnails are PNGs (PIL) inlined as data URIs, upscaled with nearest-neighbour so 32 px images
stay readable; every caption is escaped.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from consistcam.utils import atomic_write


def thumbnail_uri(image: Tensor, size: int = 96) -> str:
    """(3, H, W) image in [0, 1] as a PNG data URI, the longer side scaled to ``size`` pixels."""
    from PIL import Image

    if image.dim() != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"thumbnail_uri expects a (3, H, W) or (1, H, W) image, got shape {tuple(image.shape)}")
    pixels = (image.detach().float().clamp(0, 1).cpu() * 255).round().to(torch.uint8)
    if pixels.shape[0] == 1:
        pixels = pixels.expand(3, -1, -1)
    img = Image.fromarray(pixels.permute(1, 2, 0).contiguous().numpy())
    scale = size / max(img.width, img.height)
    img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


@dataclass
class Row:
    """A heading and a row of (image, caption) cells."""

    heading: str
    cells: list[tuple[Tensor, str]] = field(default_factory=list)


_STYLE = """body{font-family:sans-serif;margin:1.5em}h2{margin-top:1.5em}.row{display:flex;flex-wrap:wrap;gap:8px}
figure{margin:0;text-align:center;font-size:12px;width:110px}img{border:1px solid #999}p.note{color:#444}"""


def write_grid_html(path: str | Path, title: str, rows: Sequence[Row], note: str = "", size: int = 96) -> Path:
    """Write the page (atomically) and return its path."""
    parts = [f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title><style>{_STYLE}</style>",
             f"<h1>{html.escape(title)}</h1>"]
    if note:
        parts.append(f"<p class='note'>{html.escape(note)}</p>")
    for row in rows:
        parts.append(f"<h2>{html.escape(row.heading)}</h2><div class='row'>")
        for image, caption in row.cells:
            parts.append(f"<figure><img src='{thumbnail_uri(image, size)}' alt='{html.escape(caption, quote=True)}'>"
                         f"<figcaption>{html.escape(caption)}</figcaption></figure>")
        parts.append("</div>")
    text = "\n".join(parts) + "\n"
    path = Path(path)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return path
