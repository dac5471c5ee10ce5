"""Running the funnel: candidates through the stages, with counts, reasons and per-candidate scores, and its report."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .candidates import FunnelCandidate
from .errors import CurationError
from .features import FunnelFeatures
from .stages import FunnelStage, Rejection

log = logging.getLogger(__name__)


# --- running the funnel and reporting -------------------------------------------------------------------------


@dataclass
class StageRecord:
    name: str
    kind: str
    config: dict[str, Any]
    status: str  # "ran" or "skipped"
    count_in: int
    count_out: int
    rejections: list[Rejection] = field(default_factory=list)
    skipped_reason: str | None = None
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "config": _jsonable(self.config),
            "status": self.status,
            "skipped_reason": self.skipped_reason,
            "count_in": self.count_in,
            "count_out": self.count_out,
            "rejected": len(self.rejections),
            "seconds": round(self.seconds, 4),
        }


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, Path):
        return str(value)
    return value


def histogram(values: Iterable[float], bins: int = 10) -> dict[str, Any] | None:
    """``{"bin_edges", "counts", "n"}`` over the finite values (numpy's right-closed last bin), None if none."""
    values = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    if len(values) == 0:
        return None
    counts, edges = np.histogram(values, bins=bins)
    return {"bin_edges": edges.tolist(), "counts": counts.tolist(), "n": int(len(values))}


@dataclass
class FunnelResult:
    count_in: int
    stages: list[StageRecord]
    kept: list[FunnelCandidate]
    scores: dict[str, dict[str, Any]]
    image_embeddings: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    @property
    def rejected(self) -> list[Rejection]:
        return [rejection for stage in self.stages for rejection in stage.rejections]

    def stage(self, name: str) -> StageRecord:
        for record in self.stages:
            if record.name == name:
                return record
        raise KeyError(name)

    def report(self, bins: int = 10) -> dict[str, Any]:
        """Counts per stage in/out, configs, skips, and histograms of CLIP and aesthetic scores (JSON-ready)."""
        return {
            "count_in": self.count_in,
            "count_kept": len(self.kept),
            "count_rejected": len(self.rejected),
            "stages": [record.as_dict() for record in self.stages],
            "histograms": {
                key: histogram((s[key] for s in self.scores.values() if key in s), bins=bins)
                for key in ("clip_score", "aesthetic_score")
            },
        }

    def candidate_table(self) -> list[dict[str, Any]]:
        """One JSON-ready row per candidate: verdict, rejecting stage and reason, scores."""
        rows = []
        for candidate in self.kept:
            rows.append(
                {
                    "id": candidate.id,
                    "caption": candidate.caption,
                    "kept": True,
                    "stage": None,
                    "reason": None,
                    "duplicate_of": None,
                    "scores": _jsonable(self.scores.get(candidate.id, {})),
                }
            )
        for rejection in self.rejected:
            c = rejection.candidate
            rows.append(
                {
                    "id": c.id,
                    "caption": c.caption,
                    "kept": False,
                    "stage": rejection.stage,
                    "reason": rejection.reason,
                    "duplicate_of": rejection.duplicate_of,
                    "scores": _jsonable(self.scores.get(c.id, {})),
                }
            )
        return rows


def run_funnel(
    candidates: Sequence[FunnelCandidate],
    stages: Sequence[FunnelStage],
    *,
    scorer=None,
    aesthetic_head=None,
    batch_size: int = 32,
    features: FunnelFeatures | None = None,
) -> FunnelResult:
    """Pass ``candidates`` through ``stages`` in order (see the module docstring).

    ``scorer``: a ``training.clip_scoring.ClipScorer``; ``aesthetic_head``: a
    ``training.aesthetic.AestheticHead`` on that scorer's embeddings. Unavailable stages
    (OCR without tesseract) are recorded as skipped with their reason; a stage that can
    never run with these inputs (CLIP stage without a scorer) stops the funnel before
    anything is computed.
    """
    features = features or FunnelFeatures(scorer=scorer, aesthetic_head=aesthetic_head, batch_size=batch_size)
    names = [stage.name for stage in stages]
    problems = [f"stage name '{n}' is used twice" for n in sorted({n for n in names if names.count(n) > 1})]
    problems += [p for stage in stages if (p := stage.configuration_problem(features))]
    if features.has_aesthetic and stages:
        head_dim, clip_dim = features.aesthetic_head.input_dim, features.scorer.embed_dim
        if head_dim != clip_dim:
            problems.append(f"the aesthetic head takes {head_dim}-d embeddings but the CLIP model gives {clip_dim}-d")
    ids = [c.id for c in candidates]
    if len(set(ids)) != len(ids):
        problems.append("candidate ids are not unique")
    if problems:
        raise CurationError("; ".join(problems))

    surviving = list(candidates)
    records = []
    for stage in stages:
        kind = type(stage).__name__
        reason = stage.unavailable_reason(features)
        if reason:
            log.warning("Curation stage %s skipped: %s", stage.name, reason)
            records.append(
                StageRecord(
                    stage.name, kind, stage.config(), "skipped", len(surviving), len(surviving), skipped_reason=reason
                )
            )
            continue
        started = time.perf_counter()
        kept, rejected = stage.apply(surviving, features)
        kept_ids, rejected_ids = [c.id for c in kept], [r.candidate.id for r in rejected]
        if sorted(kept_ids + rejected_ids) != sorted(c.id for c in surviving):
            raise RuntimeError(
                f"stage {stage.name} did not account for each of its {len(surviving)} candidates exactly once"
            )
        records.append(
            StageRecord(
                stage.name,
                kind,
                stage.config(),
                "ran",
                len(surviving),
                len(kept),
                list(rejected),
                seconds=time.perf_counter() - started,
            )
        )
        surviving = list(kept)
    return FunnelResult(
        count_in=len(candidates),
        stages=records,
        kept=surviving,
        scores={c.id: dict(features.scores.get(c.id, {})) for c in candidates},
        image_embeddings=dict(features.image_embeddings_by_id),
    )
