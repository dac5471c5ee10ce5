"""Campaigns: their settings and the rules that freeze them, creation, edits and the lifecycle (launch, pause, resume, close)."""

from __future__ import annotations

import logging
import math

from django.db import transaction

from core.errors import CONFLICT, DUPLICATE
from core.task_queue import enqueue_on_commit
from core.text import unstorable_text_problem
from generation import selectors as generation_selectors
from generation import services as generation_services

from ..models import (
    CRITERION_DEFAULTS,
    DEFAULT_CONSENT_TEXT,
    Campaign,
    CampaignCriterion,
    CampaignModel,
    Choice,
    Criterion,
    PlacementCounter,
    Vote,
)
from .errors import AnnotationError
from .items import build_items
from .pair_priorities import adaptive_pairs_possible, reset_pair_priorities

logger = logging.getLogger(__name__)

# --- Campaigns ---------------------------------------------------------------------------------

# Settings that define what is being measured: frozen once the campaign has items.
# The human share too: which prompts humans vote on is drawn when the items are built.
STRUCTURAL_FIELDS = {"prompt_set", "seeds", "pairing", "baseline", "gold_share", "human_share"}
# Operational settings: editable until the campaign has votes.
# The consent text is one of them: what the raters who voted agreed to must stay what the page says.
OPERATIONAL_FIELDS = {
    "lease_seconds",
    "quota_per_rater",
    "gold_min_accuracy",
    "gold_min_answers",
    "rater_title",
    "consent_text",
    "speeder_seconds",
    "exclude_speeders",
    "pair_selection",
}
# Always editable (a contact address may move mid-study). The stop rule too: the anytime-valid interval it watches
# holds at every look at once, so turning "stop when decided" on or changing its width mid-campaign, even after
# looking, keeps its guarantee (a fixed-sample interval's would not survive that).
FREE_FIELDS = {
    "name",
    "completion_url",
    "completion_code",
    "contact",
    "screen_out_url",
    "screen_out_code",
    "stop_when_decided",
    "decision_width",
}
MAX_CONSENT_TEXT = 10_000
MAX_CONTACT = 200


MAX_QUOTA = 1_000_000
MAX_GOLD_MIN_ANSWERS = 1_000
MAX_RATERS_PER_LINK = 1_000_000
MAX_TEXT = 200  # campaign names, rater titles, invite labels, completion URLs
MAX_SPEEDER_SECONDS = 60.0
MIN_DECISION_WIDTH = 0.01
MIN_HUMAN_SHARE = 0.01


def is_whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_limit(value, maximum: int, *, field: str, what: str, unit: str = "") -> None:
    """A limit where 0 means none: a whole number from 0 to ``maximum`` (``unit`` follows it in the refusal)."""
    if not is_whole(value):
        raise AnnotationError(f"{what} must be a whole number (0 means no limit), not {value!r}.", field=field)
    if value < 0:
        raise AnnotationError(f"{what} cannot be negative; 0 means no limit.", field=field)
    if value > maximum:
        raise AnnotationError(f"{what} must be at most {maximum:,}{unit} (0 means no limit).", field=field)


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_text(value, *, field: str, what: str, blank_ok: bool = False) -> str:
    if not isinstance(value, str):
        raise AnnotationError(f"{what} must be text, not {type(value).__name__}.", field=field)
    if not blank_ok and not value.strip():
        raise AnnotationError(f"Give {what.lower()}.", field=field)
    if len(value) > MAX_TEXT:
        raise AnnotationError(
            f"{what} is {len(value):,} characters long; use at most {MAX_TEXT} characters.", field=field
        )
    if problem := unstorable_text_problem(value, what):
        raise AnnotationError(problem, field=field)
    return value


def _check_settings(
    *,
    lease_seconds,
    quota_per_rater,
    gold_share,
    gold_min_accuracy,
    gold_min_answers,
    rater_title,
    consent_text=DEFAULT_CONSENT_TEXT,
    contact="",
    speeder_seconds=1.0,
    exclude_speeders=False,
    screen_out_url="",
    screen_out_code=None,
    completion_code=None,
    stop_when_decided=False,
    decision_width=None,
    human_share=1.0,
) -> None:
    if not is_whole(lease_seconds) or not 30 <= lease_seconds <= 86_400:
        raise AnnotationError("The lease must be between 30 seconds and one day.", field="lease_seconds")
    check_limit(quota_per_rater, MAX_QUOTA, field="quota_per_rater", what="The quota", unit=" tasks per rater")
    if not _number(gold_share) or not 0 <= gold_share <= 0.5:
        raise AnnotationError("The gold share must be between 0 and 0.5.", field="gold_share")
    if not _number(gold_min_accuracy) or not 0 <= gold_min_accuracy <= 1:
        raise AnnotationError("The gold accuracy threshold must be between 0 and 1.", field="gold_min_accuracy")
    if not is_whole(gold_min_answers) or not 1 <= gold_min_answers <= MAX_GOLD_MIN_ANSWERS:
        raise AnnotationError(
            f"The gold answers needed before excluding a rater must be a whole number from 1 to {MAX_GOLD_MIN_ANSWERS:,}.",
            field="gold_min_answers",
        )
    check_text(rater_title, field="rater_title", what="The raters' page title")
    if not isinstance(consent_text, str) or not consent_text.strip():
        raise AnnotationError("Give the consent text raters agree to before they start.", field="consent_text")
    if len(consent_text) > MAX_CONSENT_TEXT:
        raise AnnotationError(f"The consent text can be at most {MAX_CONSENT_TEXT:,} characters.", field="consent_text")
    if not isinstance(contact, str) or len(contact) > MAX_CONTACT:
        raise AnnotationError(f"The contact can be at most {MAX_CONTACT} characters.", field="contact")
    if not _number(speeder_seconds) or not 0 <= speeder_seconds <= MAX_SPEEDER_SECONDS:
        raise AnnotationError(
            f"The speeder threshold must be between 0 (off) and {MAX_SPEEDER_SECONDS:g} seconds per pair.",
            field="speeder_seconds",
        )
    if not isinstance(exclude_speeders, bool):
        raise AnnotationError("Say yes or no (true or false) to excluding speeders.", field="exclude_speeders")
    if exclude_speeders and speeder_seconds == 0:
        raise AnnotationError(
            "Speeders cannot be excluded with the speeder check off: set a speeder threshold above 0 seconds.",
            field="speeder_seconds",
        )
    if screen_out_url:
        check_text(screen_out_url, field="screen_out_url", what="The screen-out URL")
    _check_decision_settings(stop_when_decided=stop_when_decided, decision_width=decision_width)
    if not _number(human_share) or not MIN_HUMAN_SHARE <= human_share <= 1:
        raise AnnotationError(
            f"The human share is the fraction of prompts humans vote on: a number from {MIN_HUMAN_SHARE:g} to 1 "
            f"(1: every prompt), not {human_share!r}.",
            field="human_share",
        )
    if screen_out_code is not None:
        check_text(screen_out_code, field="screen_out_code", what="The screen-out code")
        if screen_out_code.strip() == (completion_code or "").strip():
            # An excluded rater handed the completion code would be paid as if their work counted.
            raise AnnotationError("The screen-out code must differ from the completion code.", field="screen_out_code")


def _check_decision_settings(*, stop_when_decided, decision_width) -> None:
    if not isinstance(stop_when_decided, bool):
        raise AnnotationError("Say yes or no (true or false) to stopping when decided.", field="stop_when_decided")
    if decision_width is None:
        return
    if not _number(decision_width) or not MIN_DECISION_WIDTH <= decision_width <= 1:
        raise AnnotationError(
            f"The decision width is the anytime-valid interval's width at which to stop, as a fraction: a number "
            f"from {MIN_DECISION_WIDTH:g} to 1 (e.g. 0.1 for 10 points), or empty to stop only when the interval "
            f"excludes 50%; not {decision_width!r}.",
            field="decision_width",
        )


def _check_pair_selection(pair_selection, *, n_models: int, pairing: str) -> None:
    if pair_selection not in Campaign.PairSelection.values:
        raise AnnotationError(
            f"Pair selection must be one of: {', '.join(Campaign.PairSelection.values)}.", field="pair_selection"
        )
    if pair_selection == Campaign.PairSelection.ADAPTIVE and not adaptive_pairs_possible(n_models, pairing):
        raise AnnotationError(
            "Adaptive pair selection needs three or more models compared as all pairs: it chooses which pair of a "
            f"ranking to show next, and this campaign compares {n_models} models"
            + (" each against the baseline." if pairing == Campaign.Pairing.VS_BASELINE else ".")
            + " Use uniform.",
            field="pair_selection",
        )


# Settings that decide whether gold can ever exclude a rater (checked together by _check_gold_can_fire).
GOLD_RULE_FIELDS = {"quota_per_rater", "gold_share", "gold_min_answers", "gold_min_accuracy"}


def guaranteed_gold_answers(quota_per_rater: int, gold_share: float) -> int:
    """Gold answers every rater who fills the quota gives, whatever their schedule's phase (see _gold_is_due)."""
    # The epsilon keeps 0.2 x 20 at 4 although floats round it a hair either way.
    return math.floor(quota_per_rater * gold_share + 1e-9)


def _check_gold_can_fire(*, quota_per_rater, gold_share, gold_min_answers, gold_min_accuracy) -> None:
    """Refuse a quota too small for any rater to reach the gold answers needed before exclusion.

    Otherwise gold is shown and scored but can never exclude anyone, silently (the demo's 20 tasks x 10% gave 2
    gold answers against a minimum of 4). No quota, no gold, or a threshold of 0 (never exclude) cannot conflict.
    """
    if not quota_per_rater or gold_share <= 0 or gold_min_accuracy <= 0:
        return
    reachable = guaranteed_gold_answers(quota_per_rater, gold_share)
    if reachable >= gold_min_answers:
        return
    fixes = [f"raise the quota to at least {math.ceil(gold_min_answers / gold_share - 1e-9)} tasks"]
    share_needed = math.ceil(gold_min_answers / quota_per_rater * 100) / 100
    if share_needed <= 0.5:
        fixes.append(f"raise the gold share to at least {share_needed:g}")
    if reachable >= 1:
        fixes.append(f"lower the gold answers needed before exclusion to {reachable}")
    raise AnnotationError(
        f"Gold could never exclude anyone: a quota of {quota_per_rater} tasks at a gold share of {gold_share:g} gives "
        f"each rater {reachable} gold answer{'s' if reachable != 1 else ''}, fewer than the {gold_min_answers} needed "
        f"before a rater can be excluded. To fix it, {', or '.join(fixes)} (or set the gold share to 0 to turn gold off)."
    )


def _resolve_criteria(criteria: dict[str, dict] | None) -> list[tuple[str, dict]]:
    criteria = criteria if criteria is not None else {c.value: {} for c in Criterion}
    if not criteria:
        raise AnnotationError("Choose at least one criterion.")
    unknown = [c for c in criteria if not isinstance(c, str) or c not in Criterion.values]
    if unknown:
        raise AnnotationError(
            f"Unknown criteria: {', '.join(map(str, unknown))}. Known: {', '.join(Criterion.values)}.", field="criteria"
        )
    resolved = []
    for criterion, overrides in criteria.items():
        if overrides is not None and not isinstance(overrides, dict):
            raise AnnotationError(f"Settings of {criterion} must be an object, not {overrides!r}.", field="criteria")
        spec = {**CRITERION_DEFAULTS[criterion], **{k: v for k, v in (overrides or {}).items() if v not in (None, "")}}
        k = spec["votes_per_item"]
        if not is_whole(k):
            raise AnnotationError("Raters per comparison must be a whole number.", field=f"{criterion}_votes_per_item")
        if not 1 <= k <= 50:
            raise AnnotationError(
                "Raters per comparison must be between 1 and 50.", field=f"{criterion}_votes_per_item"
            )
        if not isinstance(spec["instructions"], str):
            raise AnnotationError(f"The instructions of {criterion} must be text.", field=f"{criterion}_instructions")
        choices = spec["choices"]
        if (
            not isinstance(choices, (list, tuple))
            or not all(isinstance(c, str) for c in choices)
            or set(choices) - set(Choice.values)
            or not {"left", "right"} <= set(choices)
            or len(set(choices)) != len(choices)
        ):
            raise AnnotationError(
                f"Choices must include left and right, once each, and come from {', '.join(Choice.values)}.",
                field=f"{criterion}_choices",
            )
        resolved.append((criterion, {**spec, "votes_per_item": k, "choices": list(choices)}))
    return resolved


def create_campaign(
    *,
    name: str,
    models: list,
    prompt_set,
    seeds: list[int],
    pairing: str = Campaign.Pairing.ALL_PAIRS,
    baseline=None,
    criteria: dict[str, dict] | None = None,
    lease_seconds: int = 600,
    quota_per_rater: int = 0,
    gold_share: float = 0.1,
    gold_min_accuracy: float = 0.7,
    gold_min_answers: int = 4,
    completion_url: str = "",
    rater_title: str = "Compare two images",
    consent_text: str = DEFAULT_CONSENT_TEXT,
    contact: str = "",
    screen_out_url: str = "",
    speeder_seconds: float = 1.0,
    exclude_speeders: bool = False,
    stop_when_decided: bool = False,
    decision_width: float | None = None,
    human_share: float = 1.0,
    pair_selection: str = Campaign.PairSelection.UNIFORM,
    created_by=None,
) -> Campaign:
    """A draft campaign comparing ``models`` (two, or N paired as ``pairing`` says).

    ``criteria`` maps criterion -> overrides of CRITERION_DEFAULTS ({} keeps the
    defaults); None means both of Emu's criteria.
    """
    name = check_text(name if name is not None else "", field="name", what="The campaign's name").strip()
    models = list(models)
    seen = set()
    for model in models:
        if model.pk in seen:
            raise AnnotationError(
                f"Choose at least two different models: {model.name} is listed twice.", field="models"
            )
        seen.add(model.pk)
    if len(models) < 2:
        raise AnnotationError("Choose at least two models to compare.", field="models")
    if pairing not in Campaign.Pairing.values:
        raise AnnotationError(f"Pairing must be one of: {', '.join(Campaign.Pairing.values)}.", field="pairing")
    if pairing == Campaign.Pairing.VS_BASELINE:
        if baseline is None or baseline.pk not in {m.pk for m in models}:
            raise AnnotationError(
                "With 'each vs the baseline', choose a baseline among the campaign's models.", field="baseline"
            )
    else:
        baseline = None
    _check_pair_selection(pair_selection, n_models=len(models), pairing=pairing)
    if Campaign.objects.filter(name=name).exists():
        raise AnnotationError(f"A campaign named {name!r} already exists.", field="name", code=DUPLICATE)
    seeds = generation_services.check_seeds(seeds, AnnotationError)
    if not prompt_set.prompts.exists():
        raise AnnotationError(f"Prompt set {prompt_set.name!r} has no prompts.", field="prompt_set")
    if completion_url:
        check_text(completion_url, field="completion_url", what="The completion URL")
    consent_text, contact = _clean_text(consent_text), (contact or "").strip()
    _check_settings(
        lease_seconds=lease_seconds,
        quota_per_rater=quota_per_rater,
        gold_share=gold_share,
        gold_min_accuracy=gold_min_accuracy,
        gold_min_answers=gold_min_answers,
        rater_title=rater_title,
        consent_text=consent_text,
        contact=contact,
        speeder_seconds=speeder_seconds,
        exclude_speeders=exclude_speeders,
        screen_out_url=screen_out_url,
        stop_when_decided=stop_when_decided,
        decision_width=decision_width,
        human_share=human_share,
    )
    _check_gold_can_fire(
        quota_per_rater=quota_per_rater,
        gold_share=gold_share,
        gold_min_answers=gold_min_answers,
        gold_min_accuracy=gold_min_accuracy,
    )
    resolved = _resolve_criteria(criteria)
    with transaction.atomic():
        campaign = Campaign.objects.create(
            name=name,
            prompt_set=prompt_set,
            seeds=seeds,
            pairing=pairing,
            baseline=baseline,
            lease_seconds=lease_seconds,
            quota_per_rater=quota_per_rater,
            gold_share=gold_share,
            gold_min_accuracy=gold_min_accuracy,
            gold_min_answers=gold_min_answers,
            completion_url=completion_url,
            rater_title=rater_title,
            consent_text=consent_text,
            contact=contact,
            screen_out_url=screen_out_url,
            speeder_seconds=speeder_seconds,
            exclude_speeders=exclude_speeders,
            stop_when_decided=stop_when_decided,
            decision_width=decision_width,
            human_share=human_share,
            pair_selection=pair_selection,
            created_by=created_by,
        )
        CampaignModel.objects.bulk_create(
            CampaignModel(campaign=campaign, model=m, position=i) for i, m in enumerate(models)
        )
        CampaignCriterion.objects.bulk_create(
            CampaignCriterion(
                campaign=campaign,
                criterion=c,
                question=s["question"],
                instructions=s["instructions"],
                votes_per_item=s["votes_per_item"],
                choices=s["choices"],
                show_prompt=s["show_prompt"],
            )
            for c, s in resolved
        )
        PlacementCounter.objects.bulk_create(
            PlacementCounter(campaign=campaign, shard=i) for i in range(PlacementCounter.SHARDS)
        )
    return campaign


def _clean_text(text: str | None) -> str:
    """Researcher-written text for raters: Windows line ends unified, surrounding blank space dropped."""
    return (text or "").replace("\r\n", "\n").strip()


def editable_settings(campaign: Campaign) -> set[str]:
    """The settings that may still change: what defines the measurement until items exist, the rules raters work
    under until the first vote, the rest always (the settings-freeze rule, for the service, the form and the admin)."""
    editable = set(FREE_FIELDS)
    if not campaign.items.exists():
        editable |= STRUCTURAL_FIELDS
    if not Vote.objects.filter(assignment__campaign=campaign).exists():
        editable |= OPERATIONAL_FIELDS
    return editable


def update_campaign(campaign: Campaign, **changes) -> Campaign:
    """Change settings; what defines the measurement freezes once items exist, the rest once votes exist."""
    unknown = set(changes) - STRUCTURAL_FIELDS - OPERATIONAL_FIELDS - FREE_FIELDS
    if unknown:
        raise AnnotationError(f"These settings cannot be changed here: {', '.join(sorted(unknown))}.")
    if "consent_text" in changes:
        changes["consent_text"] = _clean_text(changes["consent_text"])
    if "contact" in changes:
        changes["contact"] = (changes["contact"] or "").strip()
    changed = {k: v for k, v in changes.items() if getattr(campaign, k) != v}
    frozen = set(changed) - editable_settings(campaign) if changed else set()
    if frozen & STRUCTURAL_FIELDS:
        raise AnnotationError(
            "The campaign's comparisons exist: models, prompts, seeds, pairing and gold share are frozen.",
            code=CONFLICT,
        )
    if frozen & OPERATIONAL_FIELDS:
        raise AnnotationError(
            "The campaign has votes: its settings are frozen so every vote was cast under the same rules.",
            code=CONFLICT,
        )
    for key, value in changed.items():
        setattr(campaign, key, value)
    _check_settings(
        lease_seconds=campaign.lease_seconds,
        quota_per_rater=campaign.quota_per_rater,
        gold_share=campaign.gold_share,
        gold_min_accuracy=campaign.gold_min_accuracy,
        gold_min_answers=campaign.gold_min_answers,
        rater_title=campaign.rater_title,
        consent_text=campaign.consent_text,
        contact=campaign.contact,
        speeder_seconds=campaign.speeder_seconds,
        exclude_speeders=campaign.exclude_speeders,
        screen_out_url=campaign.screen_out_url,
        screen_out_code=campaign.screen_out_code,
        completion_code=campaign.completion_code,
        stop_when_decided=campaign.stop_when_decided,
        decision_width=campaign.decision_width,
        human_share=campaign.human_share,
    )
    _check_pair_selection(campaign.pair_selection, n_models=campaign.campaign_models.count(), pairing=campaign.pairing)
    if set(changed) & GOLD_RULE_FIELDS:  # only then: a campaign made before this rule can still be renamed
        _check_gold_can_fire(**{f: getattr(campaign, f) for f in GOLD_RULE_FIELDS})
    if "name" in changed and Campaign.objects.filter(name=campaign.name).exclude(pk=campaign.pk).exists():
        raise AnnotationError(f"A campaign named {campaign.name!r} already exists.", field="name", code=DUPLICATE)
    if changed:
        with transaction.atomic():
            campaign.save(update_fields=list(changed))
            if changed.get("pair_selection") == Campaign.PairSelection.UNIFORM:
                reset_pair_priorities(campaign)
    return campaign


def generation_batch_for(campaign: Campaign, parameters: dict | None = None):
    """A generation batch for the campaign's models, prompts and seeds (images that exist are reused)."""
    return generation_services.create_batch(
        models=campaign.ordered_models(),
        prompt_set=campaign.prompt_set,
        seeds=campaign.seeds,
        parameters=parameters,
        name=f"campaign: {campaign.name}",
    )


def set_status(campaign: Campaign, status: str) -> None:
    """Pause, resume or close (and the launch's own steps). Refuses moves the state machine does not allow."""
    with transaction.atomic():
        current = Campaign.objects.select_for_update().values_list("status", flat=True).get(pk=campaign.pk)
        if not Campaign.may_move(current, status):
            raise AnnotationError(f"A {current} campaign cannot become {status}.", code=CONFLICT)
        if status == Campaign.Status.LIVE and not campaign.items.exists():
            raise AnnotationError(
                "The campaign has no comparison items yet: launch it to generate its images first.", code=CONFLICT
            )
        Campaign.objects.filter(pk=campaign.pk).update(status=status)
    campaign.status = status


def launch_campaign(campaign: Campaign, parameters: dict | None = None) -> None:
    """Generate any missing images through the generation workers, then go live (by the finish_launch task)."""
    with transaction.atomic():
        locked = Campaign.objects.select_for_update().get(pk=campaign.pk)
        if locked.status != Campaign.Status.DRAFT:
            raise AnnotationError(f"Only a draft campaign can be launched; this one is {locked.status}.", code=CONFLICT)
        try:
            batch = generation_batch_for(locked, parameters)
        except generation_services.GenerationError as exc:
            raise AnnotationError(f"Cannot generate the campaign's images: {exc}") from None
        Campaign.objects.filter(pk=campaign.pk).update(
            status=Campaign.Status.LAUNCHING, generation_batch=batch, launch_error=""
        )
        generation_services.dispatch_batch(batch)
        enqueue_on_commit("annotation.tasks.finish_launch", campaign.pk)
    campaign.refresh_from_db()


def finish_launch(campaign_id: int) -> bool:
    """Go live once the launch's images exist. True when there is nothing left to wait for. Idempotent."""
    campaign = Campaign.objects.select_related("generation_batch").get(pk=campaign_id)
    if campaign.status != Campaign.Status.LAUNCHING:
        return True
    batch = campaign.generation_batch
    if batch is None or batch.error:
        why = batch.error if batch is not None else "its generation batch was deleted"
        with transaction.atomic():
            Campaign.objects.filter(pk=campaign_id, status=Campaign.Status.LAUNCHING).update(
                status=Campaign.Status.DRAFT, launch_error=f"Image generation failed: {why}. Fix it and launch again."
            )
        return True
    if not generation_selectors.batch_progress(batch).complete:
        return False
    build_items(campaign, batch)
    try:
        set_status(campaign, Campaign.Status.LIVE)
    except AnnotationError:
        campaign.refresh_from_db()
        if campaign.status == Campaign.Status.LAUNCHING:
            raise
    return True


# The researcher's buttons (dashboard, API, `manage.py campaign`): one verb each, one place that maps them.
def apply_campaign_action(campaign: Campaign, action: str) -> None:
    """launch, pause, resume or close ``campaign``; refused moves raise AnnotationError."""
    if action not in Campaign.ACTIONS:
        raise AnnotationError(f"Unknown action {action!r}: use launch, pause, resume or close.", field="action")
    if action == "launch":
        launch_campaign(campaign)
    else:
        set_status(campaign, Campaign.ACTIONS[action][2])
