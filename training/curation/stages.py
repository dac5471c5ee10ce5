"""The funnel's stages, frozen dataclasses: resolution, text in the image (OCR), near duplicates, CLIP score, aesthetic score."""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import shutil
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from .candidates import FunnelCandidate
from .features import FunnelFeatures
from .near_duplicates import near_duplicate_pairs

log = logging.getLogger(__name__)


# --- stages -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rejection:
    candidate: FunnelCandidate
    stage: str
    reason: str
    duplicate_of: str | None = None


class FunnelStage:
    """Base of the funnel stages: frozen dataclasses whose fields are their thresholds.

    ``apply(candidates, features) -> (kept, rejections)`` must account for every candidate
    exactly once. ``unavailable_reason`` returns a sentence when the stage cannot run here
    (it is then recorded as skipped); ``configuration_problem`` one when it can never run
    with the funnel's inputs (``run_funnel`` then refuses to start).
    """

    name: str

    def unavailable_reason(self, features: FunnelFeatures) -> str | None:
        return None

    def configuration_problem(self, features: FunnelFeatures) -> str | None:
        return None

    def config(self) -> dict[str, Any]:
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name != "name" and f.metadata.get("config", True)
        }

    def apply(
        self, candidates: Sequence[FunnelCandidate], features: FunnelFeatures
    ) -> tuple[list[FunnelCandidate], list[Rejection]]:
        raise NotImplementedError

    def _threshold(
        self, candidates, values, minimum: float, label: str
    ) -> tuple[list[FunnelCandidate], list[Rejection]]:
        kept, rejected = [], []
        for candidate, value in zip(candidates, values):
            if np.isfinite(value) and value >= minimum:
                kept.append(candidate)
            else:
                rejected.append(Rejection(candidate, self.name, f"{label} {value:.2f} < minimum {minimum:g}"))
        return kept, rejected


@dataclass(frozen=True)
class ResolutionStage(FunnelStage):
    """Emu's resolution and aspect-ratio filter. Keeps ``min(w, h) >= min_side`` and
    ``max(w, h) / min(w, h) <= max_aspect_ratio`` (both bounds inclusive; sizes are upright)."""

    min_side: int = 512
    max_aspect_ratio: float = 2.0
    name: str = "resolution"

    def __post_init__(self):
        if self.min_side < 1 or self.max_aspect_ratio < 1:
            raise ValueError("min_side must be >= 1 and max_aspect_ratio >= 1 (long side / short side)")

    def apply(self, candidates, features):
        kept, rejected = [], []
        for candidate in candidates:
            short, ratio = min(candidate.width, candidate.height), candidate.aspect_ratio
            features.record(candidate, "aspect_ratio", ratio)
            if short < self.min_side:
                rejected.append(
                    Rejection(
                        candidate,
                        self.name,
                        f"short side {short} px < minimum {self.min_side} px ({candidate.width}x{candidate.height})",
                    )
                )
            elif ratio > self.max_aspect_ratio * (1 + 1e-9):  # tolerance: 4/3 computed as 400/300 equals 4/3
                rejected.append(
                    Rejection(
                        candidate,
                        self.name,
                        f"aspect ratio {ratio:.3f} > maximum {self.max_aspect_ratio:g} ({candidate.width}x{candidate.height})",
                    )
                )
            else:
                kept.append(candidate)
        return kept, rejected


def ocr_unavailable_reason() -> str | None:
    """None when pytesseract and the tesseract binary are both installed, else what is missing."""
    missing = []
    command = "tesseract"
    if importlib.util.find_spec("pytesseract") is None:
        missing.append("the Python package pytesseract is not installed (pip install pytesseract)")
    else:
        import pytesseract

        command = getattr(pytesseract.pytesseract, "tesseract_cmd", "tesseract")
    if shutil.which(command) is None:
        missing.append(f"the '{command}' binary is not on PATH (e.g. apt-get install tesseract-ocr)")
    if missing:
        return "OCR is unavailable: " + " and ".join(missing) + "; the text-in-image filter did not run"
    return None


def count_words(text: str) -> int:
    """Words in OCR output: whitespace-separated tokens with at least two letters or digits (OCR noise is single characters)."""
    return sum(1 for token in text.split() if sum(ch.isalnum() for ch in token) >= 2)


@dataclass(frozen=True)
class TextInImageStage(FunnelStage):
    """Emu's OCR filter: rejects images showing more than ``max_words`` words.

    Uses pytesseract + the tesseract binary when both are installed; otherwise the stage
    is skipped and recorded as skipped with the reason. ``ocr`` (image -> text) replaces
    tesseract, e.g. with another OCR engine; it is not part of the recorded config.
    """

    max_words: int = 5
    language: str = "eng"
    name: str = "text_in_image"
    ocr: Callable[[Image.Image], str] | None = field(
        default=None, compare=False, repr=False, metadata={"config": False}
    )

    def unavailable_reason(self, features):
        return None if self.ocr is not None else ocr_unavailable_reason()

    def config(self):
        config = super().config()
        config["ocr_engine"] = "tesseract" if self.ocr is None else getattr(self.ocr, "__name__", "custom")
        return config

    def apply(self, candidates, features):
        if self.ocr is not None:
            read = self.ocr
        else:
            import pytesseract

            def read(image):
                return pytesseract.image_to_string(image, lang=self.language)

        kept, rejected = [], []
        for candidate in candidates:
            words = count_words(read(candidate.open_image()))
            features.record(candidate, "ocr_words", words)
            if words > self.max_words:
                rejected.append(
                    Rejection(candidate, self.name, f"{words} words of text in the image > maximum {self.max_words}")
                )
            else:
                kept.append(candidate)
        return kept, rejected


@dataclass(frozen=True)
class NearDuplicateStage(FunnelStage):
    """Groups near duplicates by 64-bit DCT perceptual hash (Hamming distance <= ``max_hamming``)
    and keeps the best of each group.

    "Best": highest aesthetic score when the funnel has an aesthetic head (computed here
    for the candidates that have near duplicates, and reused by later stages), then
    most pixels, then largest file, then id. Greedy, best first: a kept candidate
    rejects every not-yet-decided candidate within ``max_hamming`` of it, naming it; so
    each rejected image is within the threshold of the one that replaced it (no chains).
    Pair search: ``near_duplicate_pairs`` (see its complexity notes).
    """

    max_hamming: int = 6
    name: str = "near_duplicate"

    def __post_init__(self):
        if not 0 <= self.max_hamming <= 64:
            raise ValueError("max_hamming must be 0-64 bits")

    def apply(self, candidates, features):
        candidates = list(candidates)
        pairs = near_duplicate_pairs(features.phashes(candidates), self.max_hamming)
        if len(pairs) == 0:
            return candidates, []
        neighbours: dict[int, list[tuple[int, int]]] = defaultdict(list)
        for i, j, distance in pairs.tolist():
            neighbours[i].append((j, distance))
            neighbours[j].append((i, distance))
        involved = sorted(neighbours)
        aesthetic = {}
        if features.has_aesthetic:
            values = features.aesthetic_scores([candidates[i] for i in involved])
            aesthetic = dict(zip(involved, values.tolist()))

        def quality(i: int):
            c = candidates[i]
            return (aesthetic.get(i, 0.0), c.pixels, c.size_bytes)

        order = sorted(involved, key=lambda i: (tuple(-v for v in quality(i)), candidates[i].id))
        decided: dict[int, tuple[int, int] | None] = {}  # index -> None (kept) or (keeper, distance)
        for i in order:
            if i in decided:
                continue
            decided[i] = None
            for j, distance in neighbours[i]:
                if j not in decided:
                    decided[j] = (i, distance)

        kept, rejected = [], []
        for index, candidate in enumerate(candidates):
            verdict = decided.get(index)
            if verdict is None:
                kept.append(candidate)
                continue
            keeper_index, distance = verdict
            keeper = candidates[keeper_index]
            if aesthetic:
                why = f"aesthetic {aesthetic[keeper_index]:.2f} vs {aesthetic[index]:.2f}"
            else:
                why = f"{keeper.width}x{keeper.height} vs {candidate.width}x{candidate.height}"
            reason = f"near duplicate of {keeper.id} (hash distance {distance} <= {self.max_hamming}; kept the better one: {why})"
            rejected.append(Rejection(candidate, self.name, reason, duplicate_of=keeper.id))
        return kept, rejected


@dataclass(frozen=True)
class ClipScoreStage(FunnelStage):
    """Emu's CLIP image-text filter: keeps ``100 * cos(image, caption) >= min_score`` (inclusive).

    28 is LAION-5B's cutoff (cosine 0.28 with ViT-B/32); calibrate per CLIP model."""

    min_score: float = 28.0
    name: str = "clip_score"

    def configuration_problem(self, features):
        return None if features.has_clip else f"stage '{self.name}' needs a CLIP model: pass scorer=load_clip(...)"

    def apply(self, candidates, features):
        return self._threshold(candidates, features.clip_scores(candidates), self.min_score, "CLIP score")


@dataclass(frozen=True)
class AestheticStage(FunnelStage):
    """Emu's aesthetic filter: keeps aesthetic score (LAION head on CLIP image embeddings,
    1-10 scale) ``>= min_score`` (inclusive). LAION-Aesthetics V2 subsets cut at 4.5, 5, 6, 6.5."""

    min_score: float = 5.0
    name: str = "aesthetic"

    def configuration_problem(self, features):
        if not features.has_aesthetic:
            return (
                f"stage '{self.name}' needs a CLIP model and an aesthetic head: pass scorer=... and aesthetic_head=..."
            )
        return None

    def apply(self, candidates, features):
        return self._threshold(candidates, features.aesthetic_scores(candidates), self.min_score, "aesthetic score")


def default_stages() -> list[FunnelStage]:
    """Emu's automatic filters in a sensible order: cheap ones first, CLIP-based ones last."""
    return [ResolutionStage(), TextInImageStage(), NearDuplicateStage(), ClipScoreStage(), AestheticStage()]
