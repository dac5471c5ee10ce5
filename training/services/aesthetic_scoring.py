"""The automatic pick's proxy: an aesthetic head on CLIP embeddings scores each checkpoint's validation images.

Also trains such a head from people's 1-5 ratings of candidates. The pick itself and the last scoring failure are
read by ``training.selectors`` (automatic_pick, scoring_warning).
"""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path

import numpy as np
from django.db import DatabaseError
from PIL import Image

from training import checkpoints, curation
from training.atomic import atomic_write_text
from training.models import Candidate, QualityTuningRun, RunCheckpoint
from training.selectors import SCORING_WARNING_FILE
from training.services.common import TrainingError
from training.services.curation_runs import funnel_candidate
from training.validation import PROMPTS_FILE, VALIDATION_DIR

logger = logging.getLogger(__name__)


def load_aesthetic_scoring(head_path: str, clip_path: str, clip_name: str = ""):
    """(CLIP, aesthetic head) from local files, checked to fit each other; TrainingError saying what is wrong."""
    # torch and open_clip: loaded only when scoring is asked for
    from training.aesthetic import AestheticHead, AestheticHeadError
    from training.clip_scoring import ClipLoadError, load_clip

    if not head_path or not clip_path:
        missing, field = (
            ("the aesthetic head", "aesthetic_head_path")
            if not head_path
            else ("the CLIP model it sits on", "clip_model_path")
        )
        raise TrainingError(
            f"Scoring validation images needs both an aesthetic head and its CLIP model; give {missing}.", field=field
        )
    try:
        head = AestheticHead.load(head_path)
    except AestheticHeadError as exc:
        raise TrainingError(f"Aesthetic head: {exc}", field="aesthetic_head_path") from None
    try:
        clip = load_clip(clip_name or None, clip_path)
    except ClipLoadError as exc:
        raise TrainingError(f"CLIP model: {exc}", field="clip_model_path") from None
    if clip.embed_dim != head.input_dim:
        raise TrainingError(
            f"The aesthetic head {head_path} takes {head.input_dim}-d CLIP embeddings but {clip.model_name} makes "
            f"{clip.embed_dim}-d ones: give the CLIP model the head was trained on.",
            field="clip_model_path",
        )
    return clip, head


def validation_images(run: QualityTuningRun, step: int) -> list[Path] | None:
    """The step's validation PNGs, or None unless every (prompt, seed) of the run's validation set is there."""
    root = Path(run.run_dir) / VALIDATION_DIR
    folder = root / checkpoints.checkpoint_name(step)
    try:
        expected = sorted(json.loads((root / PROMPTS_FILE).read_text(encoding="utf-8")))
    except (OSError, ValueError):
        expected = None
    if not folder.is_dir():
        return None
    found = sorted(p.name for p in folder.glob("*.png"))
    if not found or (expected is not None and any(name not in found for name in expected)):
        return None  # still being rendered, or partly deleted
    return [folder / name for name in (expected or found)]


def score_validation_images(
    run: QualityTuningRun, *, rescore: bool = False, require_all: bool = True, scoring=None
) -> dict[int, float]:
    """Store the mean aesthetic score of each checkpoint's validation images; returns {step: score} of those scored now.

    Idempotent: checkpoints scored before are kept unless ``rescore``. With
    ``require_all`` a checkpoint without a complete set of validation images is
    an error (after the others are stored); without it such a checkpoint waits
    (the follow loop: a checkpoint is saved before its images are rendered).
    ``scoring`` is a (CLIP, head) pair from load_aesthetic_scoring, to load them once.
    """
    run = QualityTuningRun.objects.get(pk=run.pk)
    if not run.aesthetic_head_path:
        raise TrainingError(
            f"Run {run.pk} has no aesthetic head configured: give one (and its CLIP model) when creating "
            "the run, to score its validation images."
        )
    pending = list(
        run.checkpoints.all() if rescore else run.checkpoints.filter(validation_aesthetic_score__isnull=True)
    )
    if not pending:
        return {}
    found = {cp.step: validation_images(run, cp.step) for cp in pending}
    missing = [step for step, images in found.items() if images is None]
    if len(missing) == len(pending) and require_all:
        raise TrainingError(_missing_validation_message(run, missing, VALIDATION_DIR))
    scored = {}
    if len(missing) < len(pending):
        clip, head = scoring or load_aesthetic_scoring(
            run.aesthetic_head_path, run.clip_model_path, run.clip_model_name
        )
        for cp in pending:
            if found[cp.step] is None:
                continue
            images = []
            for path in found[cp.step]:
                with Image.open(path) as image:
                    images.append(image.convert("RGB"))
            score = float(head.predict(clip.embed_images(images)).mean())
            RunCheckpoint.objects.filter(pk=cp.pk).update(validation_aesthetic_score=score)
            scored[cp.step] = score
    if missing and require_all:
        raise TrainingError(
            _missing_validation_message(run, missing, VALIDATION_DIR)
            + (f" Steps {', '.join(map(str, sorted(scored)))} were scored." if scored else "")
        )
    with contextlib.suppress(OSError):
        _note_scoring_warning(run, "")  # it works now: an old failure no longer applies
    return scored


def _missing_validation_message(run: QualityTuningRun, steps: list[int], validation_dir: str) -> str:
    folders = ", ".join(str(Path(run.run_dir) / validation_dir / checkpoints.checkpoint_name(s)) for s in sorted(steps))
    return (
        f"Run {run.pk} has no complete set of validation images for step {', '.join(map(str, sorted(steps)))} "
        f"({folders}). The trainer renders them at every checkpoint it reaches by training; a checkpoint saved "
        "when the run was cancelled has none, and deleted images cannot be scored."
    )


def _note_scoring_warning(run: QualityTuningRun, message: str) -> None:
    path = Path(run.run_dir) / SCORING_WARNING_FILE
    if message:
        atomic_write_text(path, message + "\n")
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


class FollowerScoring:
    """Scores validation images as the follow loop sees them, loading CLIP and the head once; never fails the run."""

    def __init__(self, run: QualityTuningRun):
        self.run = run
        self.enabled = bool(run.aesthetic_head_path)
        self.scoring = None
        self.failed = False

    def sync(self) -> None:
        if not self.enabled or self.failed:
            return
        try:
            if not RunCheckpoint.objects.filter(run_id=self.run.pk, validation_aesthetic_score__isnull=True).exists():
                return
            if self.scoring is None:
                self.scoring = load_aesthetic_scoring(
                    self.run.aesthetic_head_path, self.run.clip_model_path, self.run.clip_model_name
                )
            score_validation_images(self.run, require_all=False, scoring=self.scoring)
        except DatabaseError:
            raise
        except Exception as exc:  # noqa: BLE001 - a proxy score must never stop a training run
            self.failed = True  # the same files would fail the same way at every poll
            message = exc if isinstance(exc, TrainingError) else f"{type(exc).__name__}: {exc}"
            logger.warning("run %s: scoring validation images failed: %s", self.run.pk, message)
            with contextlib.suppress(OSError):
                _note_scoring_warning(
                    self.run,
                    f"Scoring the validation images failed; the run goes on without an "
                    f"automatic pick. {message} Fix it, then score them from the run page.",
                )


def train_aesthetic_head_from_ratings(ratings, *, clip_model_path, clip_model_name: str = "", out_path) -> Path:
    """Fit a LAION-format aesthetic head on the CLIP image embeddings of rated candidates and save it to ``out_path``.

    ``ratings``: (Candidate row, rating 1-5) pairs; several ratings of one candidate are averaged.
    """
    # torch and open_clip: loaded only when a head is trained
    from training.aesthetic import AestheticHeadError, train_aesthetic_head
    from training.clip_scoring import ClipLoadError, load_clip

    out_path = Path(out_path).expanduser()
    if out_path.suffix not in (".pth", ".pt", ".bin", ".safetensors"):
        raise TrainingError(f"{out_path}: name the head file .pth or .safetensors (the LAION layout).")
    by_candidate: dict[int, list[float]] = {}
    rows: dict[int, Candidate] = {}
    for row, rating in ratings:
        if isinstance(rating, bool) or not isinstance(rating, (int, float)) or not 1 <= rating <= 5:
            raise TrainingError(f"{row.relative_path} has the rating {rating!r}; ratings run from 1 to 5.")
        by_candidate.setdefault(row.pk, []).append(float(rating))
        rows[row.pk] = row
    if len(by_candidate) < 2:
        raise TrainingError(f"{len(by_candidate)} rated image(s): rate at least 2 different images to train a head.")
    try:
        scorer = load_clip(clip_model_name or None, clip_model_path)
    except ClipLoadError as exc:
        raise TrainingError(f"The CLIP model cannot be loaded: {exc}") from None
    order = list(by_candidate)
    try:
        images = [funnel_candidate(rows[pk]).open_image() for pk in order]
    except curation.CurationError as exc:
        raise TrainingError(str(exc)) from None
    embeddings = scorer.embed_images(images)
    targets = np.array([np.mean(by_candidate[pk]) for pk in order])
    try:
        training = train_aesthetic_head(
            embeddings, targets, kind="absolute", validation_fraction=0.2 if len(order) >= 10 else 0.0
        )
    except AestheticHeadError as exc:
        raise TrainingError(str(exc)) from None
    out_path.parent.mkdir(parents=True, exist_ok=True)
    return training.head.save(out_path)
