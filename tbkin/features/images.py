"""Decode any image file the datasets may hold into an 8-bit RGB array.

Real image collections contain grayscale, palette, RGBA, CMYK and 16-bit files, and
photos whose camera orientation lives only in the EXIF tag. Every one of them is
turned into the same thing here (H, W, 3) uint8, upright, so that the detector sees
what a person sees in an image viewer.
"""
from __future__ import annotations

import os
import warnings

import numpy as np
from PIL import Image, ImageOps

from tbkin.errors import BadImageError

# Transparent pixels are shown on white, as image viewers and browsers do.
ALPHA_BACKGROUND = (255, 255, 255)


def _to_uint8_rgb(image: Image.Image) -> np.ndarray:
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16-bit grayscale (PIL opens it as I;16 or I): scale the full 16-bit range to 8 bits.
        values = np.asarray(image, dtype=np.float64)
        gray = np.clip(np.round(values / 257.0), 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if mode == "F":
        values = np.nan_to_num(np.asarray(image, dtype=np.float64))
        lo, hi = float(values.min()), float(values.max())
        scaled = (values - lo) / (hi - lo) if hi > lo else np.zeros_like(values)
        gray = np.round(scaled * 255.0).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in image.info)
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, ALPHA_BACKGROUND + (255,))
        return np.asarray(Image.alpha_composite(background, rgba).convert("RGB"))
    return np.asarray(image.convert("RGB"))


def load_rgb(path: str | os.PathLike) -> np.ndarray:
    """Return the image at ``path`` as an upright (H, W, 3) uint8 array.

    Raises BadImageError naming the file when it is missing, truncated or not an image.
    """
    try:
        with warnings.catch_warnings():
            # A truncated or oversized file must fail loudly, not decode half an image.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                image.load()
                upright = ImageOps.exif_transpose(image)
                array = _to_uint8_rgb(upright)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise BadImageError(f"cannot read image {os.fspath(path)}: {exc}") from exc
    if array.ndim != 3 or array.shape[0] == 0 or array.shape[1] == 0:
        raise BadImageError(f"cannot read image {os.fspath(path)}: empty image")
    return np.require(array, requirements=["C", "W"])  # writable: torch.from_numpy needs it
