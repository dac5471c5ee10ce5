"""What the stages share per candidate: decoded sizes, hashes, and CLIP embeddings computed once, in batches."""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

from .candidates import FunnelCandidate
from .errors import CurationError
from .near_duplicates import perceptual_hash

log = logging.getLogger(__name__)


# --- features shared by the stages ------------------------------------------------------------------------------


class FunnelFeatures:
    """Per-candidate features computed lazily, once, and shared by the stages.

    ``scores[candidate_id]`` collects everything computed (``phash``, ``aspect_ratio``,
    ``ocr_words``, ``clip_score``, ``aesthetic_score``). Image embeddings are computed in
    batches of ``batch_size`` images (one ``scorer.embed_images`` call per batch) only for
    the candidates that reach a stage needing them; captions are embedded once per
    distinct caption.
    """

    def __init__(self, scorer=None, aesthetic_head=None, batch_size: int = 32):
        self.scorer = scorer
        self.aesthetic_head = aesthetic_head
        self.batch_size = batch_size
        self.scores: dict[str, dict[str, Any]] = defaultdict(dict)
        self.image_embeddings_by_id: dict[str, np.ndarray] = {}
        self._text_embeddings: dict[str, np.ndarray] = {}

    @property
    def has_clip(self) -> bool:
        return self.scorer is not None

    @property
    def has_aesthetic(self) -> bool:
        return self.scorer is not None and self.aesthetic_head is not None

    def record(self, candidate: FunnelCandidate, key: str, value: Any) -> None:
        self.scores[candidate.id][key] = value

    def image_embeddings(self, candidates: Sequence[FunnelCandidate]) -> np.ndarray:
        if self.scorer is None:
            raise CurationError("image embeddings need a CLIP scorer: pass scorer=load_clip(...) to run_funnel")
        missing = [c for c in candidates if c.id not in self.image_embeddings_by_id]
        for start in range(0, len(missing), self.batch_size):
            batch = missing[start : start + self.batch_size]
            embeddings = self.scorer.embed_images([c.open_image() for c in batch])
            for candidate, embedding in zip(batch, embeddings):
                self.image_embeddings_by_id[candidate.id] = embedding
        return (
            np.stack([self.image_embeddings_by_id[c.id] for c in candidates])
            if candidates
            else np.zeros((0, 0), np.float32)
        )

    def text_embeddings(self, candidates: Sequence[FunnelCandidate]) -> np.ndarray:
        if self.scorer is None:
            raise CurationError("text embeddings need a CLIP scorer: pass scorer=load_clip(...) to run_funnel")
        missing = list(dict.fromkeys(c.caption for c in candidates if c.caption not in self._text_embeddings))
        for start in range(0, len(missing), self.batch_size):
            batch = missing[start : start + self.batch_size]
            for caption, embedding in zip(batch, self.scorer.embed_texts(batch)):
                self._text_embeddings[caption] = embedding
        return (
            np.stack([self._text_embeddings[c.caption] for c in candidates])
            if candidates
            else np.zeros((0, 0), np.float32)
        )

    def clip_scores(self, candidates: Sequence[FunnelCandidate]) -> np.ndarray:
        todo = [c for c in candidates if "clip_score" not in self.scores[c.id]]
        if todo:
            from training.clip_scoring import ClipScorer  # imports torch: only when CLIP scores are asked for

            values = ClipScorer.cosine_scores(self.image_embeddings(todo), self.text_embeddings(todo))
            for candidate, value in zip(todo, values):
                self.record(candidate, "clip_score", float(value))
        return np.array([self.scores[c.id]["clip_score"] for c in candidates], dtype=np.float64)

    def aesthetic_scores(self, candidates: Sequence[FunnelCandidate]) -> np.ndarray:
        if self.aesthetic_head is None:
            raise CurationError("aesthetic scores need an aesthetic head: pass aesthetic_head=AestheticHead.load(...)")
        todo = [c for c in candidates if "aesthetic_score" not in self.scores[c.id]]
        if todo:
            values = self.aesthetic_head.predict(self.image_embeddings(todo))
            for candidate, value in zip(todo, values):
                self.record(candidate, "aesthetic_score", float(value))
        return np.array([self.scores[c.id]["aesthetic_score"] for c in candidates], dtype=np.float64)

    def phashes(self, candidates: Sequence[FunnelCandidate]) -> list[int]:
        out = []
        for candidate in candidates:
            if "phash" not in self.scores[candidate.id]:
                self.record(candidate, "phash", f"{perceptual_hash(candidate.open_image()):016x}")
            out.append(int(self.scores[candidate.id]["phash"], 16))
        return out
