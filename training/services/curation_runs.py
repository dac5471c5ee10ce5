"""Candidate collections and the automatic curation funnel: its stages' settings, and runs that compute it.

training.curation does the work without Django; these functions keep its inputs and results as rows.
A curation run goes queued -> running -> finished | failed. Its task claims the run under the row lock and
holds a file lock in the run's folder for as long as it computes, so a duplicate delivery leaves while the
first still runs, and a delivery after a killed worker (lock released by the kernel) takes the run over.
Outcomes and the report are written in one transaction at the end: a run has all of its result or none.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import secrets
from pathlib import Path

from django.db import IntegrityError, transaction
from django.utils import timezone

from core.errors import DUPLICATE
from core.locking import try_lock
from core.task_queue import enqueue_on_commit
from training import curation
from training.models import Candidate, CandidateCollection, CurationRun, FunnelOutcome
from training.services.common import TrainingError, check_new_name, training_dir

logger = logging.getLogger(__name__)

CurationStatus = CurationRun.Status
STAGE_KINDS = {
    cls.__name__: cls
    for cls in (
        curation.ResolutionStage,
        curation.TextInImageStage,
        curation.NearDuplicateStage,
        curation.ClipScoreStage,
        curation.AestheticStage,
    )
}
CLIP_STAGE_KINDS = ("ClipScoreStage", "AestheticStage")
CURATION_LOCK_FILE = ".running.lock"


def curation_dir() -> Path:
    return training_dir() / "curation"


def curation_run_dir(run: CurationRun) -> Path:
    """Where a run's contact sheets are cached and its lock lives (never under MEDIA_ROOT)."""
    return curation_dir() / f"run-{run.pk:05d}"


def import_candidate_collection(name: str, path: str, created_by=None) -> CandidateCollection:
    """Scan a folder of candidate images with captions and store every importable one; problems are kept per file.

    Bad files do not stop the import (they are listed in ``problems``); a folder that gives nothing to curate does.
    """
    name = check_new_name(name, "candidate collection", CandidateCollection.objects, field="name")
    folder = Path(path or "").expanduser()
    if not str(path or "").strip() or not folder.is_dir():
        raise TrainingError(
            f"Candidate folder not found: {folder} is not a folder. Give a folder the workers can read.", field="path"
        )
    scan = curation.scan_candidates(folder)
    missing_captions = [p for p in scan.problems if p.kind == "caption_file_missing"]
    if missing_captions:
        raise TrainingError(
            missing_captions[0].message[0].upper() + missing_captions[0].message[1:] + ".", field="path"
        )
    if not scan.candidates:
        listed = "; ".join(str(p) for p in scan.errors[:5]) or "the folder has no images"
        more = f" (and {len(scan.errors) - 5} more)" if len(scan.errors) > 5 else ""
        raise TrainingError(
            f"No candidate in {folder} could be imported: {listed}{more}. Fix the files, then import again.",
            field="path",
        )
    try:
        with transaction.atomic():
            collection = CandidateCollection.objects.create(
                name=name,
                path=str(folder.resolve()),
                candidate_count=len(scan.candidates),
                problems=[str(p) for p in scan.problems],
                created_by=created_by,
            )
            Candidate.objects.bulk_create(
                [
                    Candidate(
                        collection=collection,
                        relative_path=c.id,
                        caption=c.caption,
                        width=c.width,
                        height=c.height,
                        sha256=c.sha256,
                        format=c.format,
                        size_bytes=c.size_bytes,
                    )
                    for c in scan.candidates
                ],
                batch_size=1000,
            )
    except IntegrityError:
        raise TrainingError(
            f"A candidate collection named {name!r} already exists; choose another name.", field="name", code=DUPLICATE
        ) from None
    return collection


def funnel_candidate(row: Candidate, folder: Path | None = None) -> curation.FunnelCandidate:
    """A Candidate row as the funnel's dataclass (its id is the path inside the collection folder)."""
    folder = Path(folder or row.collection.path)
    return curation.FunnelCandidate(
        row.relative_path,
        folder / row.relative_path,
        row.caption,
        row.width,
        row.height,
        row.sha256,
        row.format,
        row.size_bytes,
    )


# --- Stage configuration -----------------------------------------------------------------------------


def _stage_fields(cls) -> dict:
    """Configurable fields of a stage class and their defaults ('name' included; callables such as ocr are not)."""
    return {f.name: f.default for f in dataclasses.fields(cls) if f.metadata.get("config", True)}


def stages_from_config(config) -> list:
    """Funnel stages from their JSON form ``[{"kind": "ResolutionStage", "min_side": 512}, ...]``, defaults for
    what is not given. TrainingError names the stage, the field and what is allowed."""
    if not isinstance(config, list) or not config:
        raise TrainingError('Stages must be a non-empty JSON list like [{"kind": "ResolutionStage", "min_side": 512}].')
    stages = []
    for number, entry in enumerate(config, start=1):
        where = f"stage {number}"
        if not isinstance(entry, dict):
            raise TrainingError(
                f'{where} is a JSON {type(entry).__name__}, not an object like {{"kind": "ResolutionStage"}}.'
            )
        kind = entry.get("kind")
        if kind not in STAGE_KINDS:
            raise TrainingError(f"{where}: unknown kind {kind!r}; use one of {', '.join(STAGE_KINDS)}.")
        fields = _stage_fields(STAGE_KINDS[kind])
        values = {}
        for key, value in entry.items():
            if key == "kind":
                continue
            if key not in fields:
                raise TrainingError(f"{where} ({kind}): unknown field {key!r}; it takes {', '.join(fields)}.")
            expected = type(fields[key])
            if expected is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if (
                not isinstance(value, expected)
                or isinstance(value, bool)
                or (expected is float and not math.isfinite(value))
            ):
                raise TrainingError(
                    f"{where} ({kind}): {key} must be a{'n' if expected is int else ''} "
                    f"{ {int: 'integer', float: 'number', str: 'string'}[expected] }, not {value!r}."
                )
            values[key] = value
        if "name" in values and not values["name"].strip():
            raise TrainingError(f"{where} ({kind}): name cannot be empty.")
        if kind == "TextInImageStage" and values.get("max_words", 0) < 0:
            raise TrainingError(f"{where} ({kind}): max_words must be 0 or more.")
        try:
            stages.append(STAGE_KINDS[kind](**values))
        except (ValueError, TypeError) as exc:
            raise TrainingError(f"{where} ({kind}): {exc}.") from None
    names = [stage.name for stage in stages]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise TrainingError(f"Stage name {twice[0]!r} is used twice; give each stage its own name.")
    return stages


def stages_to_config(stages) -> list[dict]:
    return [
        {"kind": type(stage).__name__, **{key: getattr(stage, key) for key in _stage_fields(type(stage))}}
        for stage in stages
    ]


def default_stage_config() -> list[dict]:
    return stages_to_config(curation.default_stages())


def _uses_aesthetic_head(stage_config: list[dict], head_path: str) -> bool:
    kinds = {entry["kind"] for entry in stage_config}
    # A near-duplicate stage keeps the most aesthetic copy when a head is given, so the head is loaded for it too.
    return "AestheticStage" in kinds or (bool(head_path) and "NearDuplicateStage" in kinds)


def _uses_clip(stage_config: list[dict], head_path: str) -> bool:
    return any(entry["kind"] in CLIP_STAGE_KINDS for entry in stage_config) or _uses_aesthetic_head(
        stage_config, head_path
    )


# --- Runs ------------------------------------------------------------------------------------------------


def create_curation_run(
    collection: CandidateCollection,
    stages=None,
    *,
    clip_model_path: str = "",
    clip_model_name: str = "",
    aesthetic_head_path: str = "",
    created_by=None,
) -> CurationRun:
    """A queued funnel run over ``collection`` (not started: see start_curation_run). ``stages``: None (Emu's
    default_stages), their JSON form, or FunnelStage objects. Refuses up front what could only fail later."""
    if stages is None:
        stages = curation.default_stages()
    if all(isinstance(stage, curation.FunnelStage) for stage in stages) and stages:
        stage_config = stages_to_config(stages)
        stages_from_config(stage_config)  # same checks as stored JSON (names, values)
    else:
        stage_config = stages_to_config(stages_from_config(stages))
    clip_model_path, clip_model_name = (clip_model_path or "").strip(), (clip_model_name or "").strip()
    aesthetic_head_path = (aesthetic_head_path or "").strip()
    if collection.candidate_count == 0:
        raise TrainingError(f"Collection {collection.name} has no candidates; import a folder with images first.")
    named = [entry["name"] for entry in stage_config if entry["kind"] in CLIP_STAGE_KINDS]
    if _uses_clip(stage_config, aesthetic_head_path) and not clip_model_path:
        raise TrainingError(
            f"The stage(s) {', '.join(named) or 'near_duplicate (with an aesthetic head)'} need a CLIP model: give the "
            "path of a local open_clip checkpoint (an exported folder with open_clip_config.json, or a weights file "
            "plus its architecture name), or leave those stages out.",
            field="clip_model_path",
        )
    if clip_model_path:
        clip_path = Path(clip_model_path).expanduser()
        if not clip_path.exists():
            raise TrainingError(
                f"CLIP model not found: {clip_path} does not exist. Give a path the workers can read.",
                field="clip_model_path",
            )
        if clip_path.is_file() and not clip_model_name:
            raise TrainingError(
                f"{clip_path} is a bare weights file: give its open_clip architecture name too (e.g. ViT-L-14).",
                field="clip_model_name",
            )
        clip_model_path = str(clip_path.resolve())
    if any(entry["kind"] == "AestheticStage" for entry in stage_config) and not aesthetic_head_path:
        raise TrainingError(
            "The aesthetic stage needs an aesthetic head: give the path of a LAION-format head (.pth or .safetensors) "
            "trained on this CLIP model's embeddings, or leave the stage out.",
            field="aesthetic_head_path",
        )
    if aesthetic_head_path:
        head_path = Path(aesthetic_head_path).expanduser()
        if not head_path.is_file():
            raise TrainingError(
                f"Aesthetic head not found: {head_path} is not a file. Give a path the workers can read.",
                field="aesthetic_head_path",
            )
        aesthetic_head_path = str(head_path.resolve())
        if not clip_model_path:
            raise TrainingError(
                "An aesthetic head scores CLIP image embeddings: give the CLIP model it was trained on too.",
                field="clip_model_path",
            )
    return CurationRun.objects.create(
        collection=collection,
        stages=stage_config,
        clip_model_path=clip_model_path,
        clip_model_name=clip_model_name,
        aesthetic_head_path=aesthetic_head_path,
        created_by=created_by,
    )


def start_curation_run(run: CurationRun) -> CurationRun:
    """Queue the funnel task (after commit). A failed run can be started again; a finished one cannot."""
    with transaction.atomic():
        run = CurationRun.objects.select_for_update().get(pk=run.pk)
        if run.status == CurationStatus.FINISHED:
            raise TrainingError(f"Curation run {run.pk} has finished; create a new run to change its stages.")
        if run.status == CurationStatus.RUNNING:
            raise TrainingError(f"Curation run {run.pk} is running; it cannot be started twice.")
        task_id = f"curation-{run.pk}-{secrets.token_hex(6)}"
        CurationRun.objects.filter(pk=run.pk).update(
            status=CurationStatus.QUEUED, error="", celery_task_id=task_id, finished_at=None
        )
        enqueue_on_commit("training.tasks.run_curation_funnel", run.pk, task_id=task_id)
    run.refresh_from_db()
    return run


@contextlib.contextmanager
def _curation_lock(run: CurationRun):
    """Yields True while this process holds the run's lock, False if another process does (released if it dies)."""
    folder = curation_run_dir(run)
    folder.mkdir(parents=True, exist_ok=True)
    with try_lock(folder / CURATION_LOCK_FILE) as handle:
        yield handle is not None


def _finite(value):
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def _jsonable_scores(scores: dict) -> dict:
    return {key: (_finite(value) if isinstance(value, float) else value) for key, value in scores.items()}


def _load_funnel_models(run: CurationRun):
    """(scorer, head) that the run's stages need, or None for each; TrainingError saying what to fix."""
    # torch and open_clip: loaded only when the run's stages need them
    from training.aesthetic import AestheticHead, AestheticHeadError
    from training.clip_scoring import ClipLoadError, load_clip

    scorer = head = None
    if _uses_clip(run.stages, run.aesthetic_head_path):
        try:
            scorer = load_clip(run.clip_model_name or None, run.clip_model_path)
        except ClipLoadError as exc:
            raise TrainingError(
                f"The CLIP model cannot be loaded: {exc}. Restore it and start the run again, or create a new run "
                "with a CLIP model path the workers can read."
            ) from None
    if _uses_aesthetic_head(run.stages, run.aesthetic_head_path):
        try:
            head = AestheticHead.load(run.aesthetic_head_path)
        except AestheticHeadError as exc:
            raise TrainingError(
                f"The aesthetic head cannot be loaded: {exc}. Restore it and start the run again, or create a new run "
                "with another head."
            ) from None
    return scorer, head


def execute_curation_run(run_id: int, task_id: str = "") -> str:
    """The funnel task's body: claim the run, compute, write every outcome and the report at once.

    Idempotent: a finished run is left alone, a run another live worker holds is left to it.
    """
    try:
        run = CurationRun.objects.select_related("collection").get(pk=run_id)
    except CurationRun.DoesNotExist:
        return f"curation run {run_id} no longer exists"
    if run.status == CurationStatus.FINISHED:
        # Before taking the lock: a late duplicate must not report a finished run as "being computed" just
        # because another duplicate holds the lock for its own look at the status.
        return f"curation run {run_id} had finished already"
    with _curation_lock(run) as held:
        if not held:
            return f"curation run {run_id} is being computed by another worker; left it"
        with transaction.atomic():
            run = CurationRun.objects.select_for_update().select_related("collection").get(pk=run_id)
            if run.status == CurationStatus.FINISHED:
                return f"curation run {run_id} had finished already"
            if run.status == CurationStatus.FAILED:
                return f"curation run {run_id} failed before; start it again to retry"
            # queued, or running with its lock free: the worker that claimed it died, so this delivery takes over.
            CurationRun.objects.filter(pk=run_id).update(
                status=CurationStatus.RUNNING, started_at=timezone.now(), error=""
            )
        # Sheets left by an earlier attempt (or by a run of a recreated database with this id) show other outcomes;
        # none is drawn while the run is not finished.
        for sheet in curation_run_dir(run).glob("sheet-*.png"):
            sheet.unlink(missing_ok=True)
        try:
            _compute_and_record(run)
        except (TrainingError, curation.CurationError) as exc:
            _fail_curation_run(run_id, str(exc))
            return f"curation run {run_id} failed: {exc}"
        except Exception as exc:  # noqa: BLE001 - anything else is a bug; the run must not stay "running"
            logger.exception("curation run %s failed", run_id)
            _fail_curation_run(run_id, f"Unexpected error ({type(exc).__name__}: {exc}); see the worker log.")
            raise
    return f"curation run {run_id} finished"


def _fail_curation_run(run_id: int, error: str) -> None:
    CurationRun.objects.filter(pk=run_id).update(status=CurationStatus.FAILED, error=error, finished_at=timezone.now())


def _compute_and_record(run: CurationRun) -> None:
    stages = stages_from_config(run.stages)
    folder = Path(run.collection.path)
    if not folder.is_dir():
        raise TrainingError(
            f"The collection folder {folder} is gone; restore it, or import the images as a new collection."
        )
    rows = list(run.collection.candidates.all())
    by_path = {row.relative_path: row for row in rows}
    scorer, head = _load_funnel_models(run)
    result = curation.run_funnel(
        [funnel_candidate(row, folder) for row in rows], stages, scorer=scorer, aesthetic_head=head
    )

    outcomes = []
    for candidate in result.kept:
        scores = result.scores.get(candidate.id, {})
        outcomes.append(
            FunnelOutcome(
                run=run,
                candidate=by_path[candidate.id],
                kept=True,
                clip_score=_finite(scores.get("clip_score")),
                aesthetic_score=_finite(scores.get("aesthetic_score")),
                scores=_jsonable_scores(scores),
            )
        )
    for rejection in result.rejected:
        scores = result.scores.get(rejection.candidate.id, {})
        outcomes.append(
            FunnelOutcome(
                run=run,
                candidate=by_path[rejection.candidate.id],
                kept=False,
                stage=rejection.stage,
                reason=rejection.reason[:500],
                duplicate_of=rejection.duplicate_of or "",
                clip_score=_finite(scores.get("clip_score")),
                aesthetic_score=_finite(scores.get("aesthetic_score")),
                scores=_jsonable_scores(scores),
            )
        )
    report = json.loads(json.dumps(result.report(), allow_nan=False, default=str))
    with transaction.atomic():
        locked = CurationRun.objects.select_for_update().get(pk=run.pk)
        if locked.status != CurationStatus.RUNNING:
            raise TrainingError(f"Curation run {run.pk} is {locked.status}, not running; its results were not written.")
        FunnelOutcome.objects.filter(run=run).delete()  # none, unless an earlier write was rolled back halfway
        FunnelOutcome.objects.bulk_create(outcomes, batch_size=1000)
        CurationRun.objects.filter(pk=run.pk).update(
            status=CurationStatus.FINISHED,
            report=report,
            count_in=result.count_in,
            count_kept=len(result.kept),
            finished_at=timezone.now(),
            error="",
        )


def funnel_result_from_outcomes(run: CurationRun) -> curation.FunnelResult:
    """The stored outcomes of a finished run as a FunnelResult (for contact sheets), rejections in stage order."""
    folder = Path(run.collection.path)
    outcomes = list(run.outcomes.select_related("candidate"))
    kept = [funnel_candidate(o.candidate, folder) for o in outcomes if o.kept]
    records = []
    for stage in run.report.get("stages", []):
        rejections = [
            curation.Rejection(funnel_candidate(o.candidate, folder), o.stage, o.reason, o.duplicate_of or None)
            for o in outcomes
            if not o.kept and o.stage == stage["name"]
        ]
        records.append(
            curation.StageRecord(
                stage["name"],
                stage["kind"],
                stage["config"],
                stage["status"],
                stage["count_in"],
                stage["count_out"],
                rejections,
            )
        )
    scores = {o.candidate.relative_path: dict(o.scores) for o in outcomes}
    return curation.FunnelResult(count_in=run.count_in, stages=records, kept=kept, scores=scores)


def curation_contact_sheet(run: CurationRun, kept: bool, n: int = 24) -> Path:
    """The contact sheet of kept (or rejected) examples of a finished run, drawn once and cached in its folder."""
    if run.status != CurationStatus.FINISHED:
        raise TrainingError(f"Curation run {run.pk} is {run.status}; contact sheets are drawn once it has finished.")
    path = curation_run_dir(run) / f"sheet-{'kept' if kept else 'rejected'}.png"
    if not path.is_file():
        try:
            curation.contact_sheet(funnel_result_from_outcomes(run), path, kept=kept, n=n)
        except curation.CurationError as exc:
            raise TrainingError(str(exc)) from None
    return path
