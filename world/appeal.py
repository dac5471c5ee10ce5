"""The world's hidden visual appeal, computed from pixels alone.

No model, scorer or curation stage ever sees this function: it stands for the taste of the world's raters. It
scores what a 4x-downsampling VAE can carry (grain and fine texture do not survive it):

* **exposure**: mean luminance near mid grey (over- and under-exposed renders lose);
* **contrast**: the subject stands out from the background (haze washes it out);
* **harmony**: a muted background under a vivid subject (garish backgrounds lose);
* **composition**: the subject's mass centred in the frame and filling about a fifth of it;
* **clutter**: one clean subject; every further blob (a second object, a stray speck) costs.

Two defects scale the whole score down, because no composition saves a picture that has them:

* **blur**: edges as crisp as the colour step across them allows (a smeared copy loses up to 60%);
* **grain**: pixel-level noise on flat areas (a noisy copy loses up to 60%).

Each term is in [0, 1]; the score is their weighted mean times the two defect factors, in [0, 1]. A typical web
render scores about 0.5; the top few percent of :func:`world.scenes.sample_scene` score above 0.7.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

WEIGHTS = {"exposure": 0.2, "contrast": 0.2, "harmony": 0.15, "composition": 0.25, "clutter": 0.2}
#: colour distance (RGB in [0, 1]) beyond which a pixel belongs to the foreground.
FOREGROUND_DISTANCE = 0.12
#: blobs smaller than this fraction of the frame are ignored as noise (a 64-px speck is about 0.004).
MIN_BLOB_FRACTION = 0.0015


def as_float(pixels: np.ndarray) -> np.ndarray:
    pixels = np.asarray(pixels)
    if pixels.dtype == np.uint8:
        return pixels.astype(np.float32) / 255.0
    return pixels.astype(np.float32)


def background_colour(pixels: np.ndarray) -> np.ndarray:
    """Median colour of the one-pixel border: the background in every render of this world."""
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    return np.median(border, axis=0)


def foreground_mask(pixels: np.ndarray, background: np.ndarray | None = None) -> np.ndarray:
    background = background_colour(pixels) if background is None else background
    return np.linalg.norm(pixels - background, axis=-1) > FOREGROUND_DISTANCE


def _luminance(rgb: np.ndarray) -> np.ndarray:
    return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114


def _saturation(rgb: np.ndarray) -> float:
    hi, lo = float(np.max(rgb)), float(np.min(rgb))
    return 0.0 if hi <= 1e-6 else (hi - lo) / hi


def appeal_terms(pixels: np.ndarray) -> dict[str, float]:
    """Each term of the appeal score for one ``(H, W, 3)`` image (uint8 or float in [0, 1])."""
    px = as_float(pixels)
    h, w, _ = px.shape
    bg = background_colour(px)
    mask = foreground_mask(px, bg)
    blobs, n_blobs = ndimage.label(mask)
    sizes = ndimage.sum(mask, blobs, index=range(1, n_blobs + 1)) if n_blobs else np.zeros(0)
    n_real = int(np.sum(sizes >= MIN_BLOB_FRACTION * h * w))
    fill = float(mask.mean())

    exposure = float(np.exp(-(((_luminance(px).mean() - 0.5) / 0.17) ** 2)))
    if mask.any():
        fg = px[mask].mean(axis=0)
        contrast = float(np.clip(np.linalg.norm(fg - bg) / 0.75, 0.0, 1.0))
        ys, xs = np.nonzero(mask)
        dist = float(np.hypot(xs.mean() / (w - 1) - 0.5, ys.mean() / (h - 1) - 0.5))
        centred = float(np.exp(-((dist / 0.12) ** 2)))
        filled = float(np.exp(-(((fill - 0.2) / 0.12) ** 2)))
        composition = 0.6 * centred + 0.4 * filled
        harmony = float(np.clip(1.0 - max(0.0, _saturation(bg) - 0.35) / 0.5, 0.0, 1.0)) * float(
            np.clip(_saturation(fg) / 0.6, 0.0, 1.0)
        )
    else:
        contrast = composition = harmony = 0.0
    clutter = 1.0 / (1.0 + 0.45 * max(0, n_real - 1))
    return {
        "exposure": exposure,
        "contrast": contrast,
        "harmony": harmony,
        "composition": composition,
        "clutter": clutter,
        "sharpness": _sharpness(px, mask, bg),
        "cleanliness": _cleanliness(px),
    }


def _sharpness(px: np.ndarray, mask: np.ndarray, bg: np.ndarray) -> float:
    # The steepest colour steps against the colour difference they cross: a crisp anti-aliased edge crosses it in
    # one or two pixels, a smeared one over many.
    if not mask.any():
        return 0.0
    step = float(np.linalg.norm(px[mask].mean(axis=0) - bg))
    if step < 1e-3:
        return 0.0
    gy, gx = np.gradient(px, axis=(0, 1))
    gradient = np.sqrt((gx**2 + gy**2).sum(axis=-1))
    return float(np.clip(np.percentile(gradient, 99) / (0.45 * step), 0.0, 1.0))


def _cleanliness(px: np.ndarray) -> float:
    # Grain is what a 3x3 median removes; edges survive a median, so clean renders keep this near zero.
    residual = np.abs(px - ndimage.median_filter(px, size=(3, 3, 1))).mean()
    return float(np.exp(-((residual / 0.04) ** 2)))


def appeal_score(pixels: np.ndarray) -> float:
    """Hidden visual appeal of one image, in [0, 1]."""
    terms = appeal_terms(pixels)
    composed = sum(WEIGHTS[name] * terms[name] for name in WEIGHTS)
    return float(composed * (0.4 + 0.6 * terms["sharpness"]) * (0.4 + 0.6 * terms["cleanliness"]))
