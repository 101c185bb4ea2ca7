"""Reading images robustly: every failure names the file."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from consistcam.data.base import DataError

MAX_PIXELS = 64_000_000  # larger images are refused: PIL would otherwise decode them into gigabytes
MAX_SIDE = 8192  # the largest side a size option accepts (--image-size, demo:size, explain --size)


def available_memory() -> int | None:
    """Bytes of memory available now (``MemAvailable`` of /proc/meminfo); None where that is unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def check_image_size(size: int, count: int, what: str) -> None:
    """Refuse a side length over :data:`MAX_SIDE`, or ``count`` float32 RGB images of it that would not
    fit in the available memory: a clear error before allocating instead of a 30-160 GB traceback."""
    if size > MAX_SIDE:
        raise DataError(f"{what}: must be <= {MAX_SIDE} pixels, got {size}")
    need, free = count * 3 * size * size * 4, available_memory()
    if free is not None and need > free:
        raise DataError(f"{what}: {count} images of {size}x{size} pixels need {need / 2**30:.1f} GiB as float32, "
                        f"only {free / 2**30:.1f} GiB of memory is available; use a smaller size")


def read_rgb(path: str | Path) -> Tensor:
    """Decode any PIL-readable image (grayscale, CMYK, palette, 16-bit, alpha) to uint8 RGB (3, H, W).

    16-bit images are scaled to 8 bits rather than clipped; alpha is dropped (composited on black
    would change the colours of transparent pixels we cannot see anyway)."""
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise DataError(f"{path}: empty file (0 bytes)")
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                if img.width * img.height > MAX_PIXELS:
                    raise DataError(f"{path}: {img.width}x{img.height} pixels is over the limit of {MAX_PIXELS} "
                                    "(a decompression bomb?); raise consistcam.data.images.MAX_PIXELS to allow it")
                img.load()
                if img.mode in ("I;16", "I;16B", "I;16L", "I"):
                    arr = np.asarray(img, dtype=np.float64)
                    scale = 65535.0 if arr.max() > 255 else 255.0
                    img = Image.fromarray((arr / scale * 255).round().clip(0, 255).astype(np.uint8))
                rgb = img.convert("RGB")
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise DataError(f"{path}: refused as a possible decompression bomb ({err})") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise DataError(f"{path}: unreadable or truncated image ({err})") from None
    return torch.from_numpy(np.asarray(rgb, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()
