"""Choosing a checkpoint with raters: one campaign, the base against every chosen checkpoint, visual appeal only.

Emu stops quality-tuning early although the loss still falls: past some step the
model overfits the small curated set, and only the images show it. Two signals
guide the pick: this campaign, where raters compare every checkpoint with the
base (its win rates are ``training.selectors.checkpoint_win_rates``), and the
automatic pick from the aesthetic score of each step's fixed validation images
(``training.services.aesthetic_scoring``: cheap, available while the run trains,
but only a proxy for what raters prefer).
"""

from __future__ import annotations

from django.db import transaction

from annotation import services as annotation_services
from annotation.models import Campaign, Criterion
from generation import services as generation_services
from generation.models import PromptSet
from training.models import QualityTuningRun, RunCheckpoint
from training.services.common import TrainingError
from training.services.registration import register_checkpoint
from training.services.runs import check_base_unchanged

# Three raters per comparison: enough for a strict majority, and several steps x prompts to judge stays affordable.
CHECKPOINT_CAMPAIGN_VOTES_PER_ITEM = 3


def _checkpoint_campaign_name(run: QualityTuningRun) -> str:
    name = stem = f"{run.base_model.name[:80]} run {run.pk} checkpoints"
    number = 2
    while Campaign.objects.filter(name=name).exists():
        name, number = f"{stem} ({number})", number + 1
    return name


def _check_base_unchanged(run: QualityTuningRun) -> None:
    check_base_unchanged(
        run,
        missing=", so the checkpoints cannot be compared with it. Mount the model directory here again.",
        changed="a campaign against it would not compare the checkpoints with the weights they were tuned from. "
        "Restore the original weights.",
    )


def _campaign_checkpoints(run: QualityTuningRun, steps) -> list[RunCheckpoint]:
    recorded = {cp.step: cp for cp in run.checkpoints.select_related("registered_model")}
    if not recorded:
        raise TrainingError(
            f"Run {run.pk} has no checkpoint yet: one is saved every {run.config.get('checkpoint_every')} "
            "steps and at the end. Wait for one before comparing checkpoints."
        )
    # An exported (registered) checkpoint can still be rendered after keep_last_checkpoints pruned its folder.
    usable = {step: cp for step, cp in recorded.items() if cp.exists or cp.registered_model_id is not None}
    if steps is None:
        if not usable:
            raise TrainingError(
                f"Every checkpoint of run {run.pk} was deleted (keep_last_checkpoints pruned them) and "
                "none was registered as a model: there is nothing left to compare."
            )
        return [usable[step] for step in sorted(usable)]
    steps = sorted(set(int(s) for s in steps))
    if not steps:
        raise TrainingError("Choose at least one checkpoint step.")
    unknown = [s for s in steps if s not in recorded]
    if unknown:
        raise TrainingError(
            f"Run {run.pk} has no checkpoint at step {', '.join(map(str, unknown))} "
            f"(checkpoints: {', '.join(map(str, sorted(recorded)))})."
        )
    gone = [s for s in steps if s not in usable]
    if gone:
        raise TrainingError(
            f"The checkpoint at step {', '.join(map(str, gone))} of run {run.pk} was deleted "
            f"(keep_last_checkpoints pruned it) and never registered; choose among "
            f"{', '.join(map(str, sorted(usable))) or 'none'}."
        )
    return [recorded[s] for s in steps]


def create_checkpoint_campaign(
    run: QualityTuningRun,
    *,
    prompt_set,
    seeds=(0,),
    steps=None,
    votes_per_item: int | None = None,
    gold_share: float | None = None,
    new: bool = False,
    created_by=None,
):
    """One draft campaign: the base against every chosen checkpoint (each vs the baseline), visual appeal only.

    ``steps`` None takes every checkpoint still on disk (or registered). Each
    checkpoint is registered as a model first (reusing one registered before).
    ``votes_per_item`` defaults to CHECKPOINT_CAMPAIGN_VOTES_PER_ITEM. The
    campaign is remembered on the run: calling again returns it, unless ``new``.
    """
    given, run = (
        run,
        QualityTuningRun.objects.select_related("base_model", "dataset", "checkpoint_campaign").get(pk=run.pk),
    )
    if run.checkpoint_campaign is not None and not new:
        given.checkpoint_campaign = run.checkpoint_campaign
        return run.checkpoint_campaign
    if isinstance(prompt_set, str):
        found = PromptSet.objects.filter(name=prompt_set).first()
        if found is None:
            raise TrainingError(
                f"There is no prompt set named {prompt_set!r}; import it first (manage.py import_prompts)."
            )
        prompt_set = found
    if prompt_set is None or not PromptSet.objects.filter(pk=prompt_set.pk).exists():
        raise TrainingError("Choose a prompt set that exists.")
    if isinstance(seeds, str):
        try:
            seeds = generation_services.parse_seeds(seeds)
        except generation_services.GenerationError as exc:
            raise TrainingError(str(exc)) from None
    chosen = _campaign_checkpoints(run, steps)
    _check_base_unchanged(run)
    models = [register_checkpoint(cp, registered_by=created_by) for cp in chosen]
    options = {"gold_share": gold_share} if gold_share is not None else {}
    votes = CHECKPOINT_CAMPAIGN_VOTES_PER_ITEM if votes_per_item is None else votes_per_item
    try:
        with transaction.atomic():
            campaign = annotation_services.create_campaign(
                name=_checkpoint_campaign_name(run),
                models=[run.base_model, *models],
                prompt_set=prompt_set,
                seeds=list(seeds),
                pairing="vs_baseline",
                baseline=run.base_model,
                criteria={Criterion.VISUAL_APPEAL.value: {"votes_per_item": votes}},
                created_by=created_by,
                **options,
            )
            QualityTuningRun.objects.filter(pk=run.pk).update(checkpoint_campaign=campaign)
    except annotation_services.AnnotationError as exc:
        raise TrainingError(str(exc)) from None
    given.checkpoint_campaign = campaign
    return campaign
