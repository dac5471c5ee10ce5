"""Campaign operations, rater enrolment, the assignment engine, votes and quality control.

The engine hands each rater their next comparison items under three rules that
must hold with hundreds of raters at once: a rater never sees an item twice,
an item never collects more than k counting votes (votes + open leases <= k),
and items fill depth-first so a campaign stopped early still has complete
majorities. On PostgreSQL the next item is claimed with ``FOR UPDATE SKIP
LOCKED`` along the partial indexes ``item_open_depth_first(_crit)``, in one
statement with the lease it creates; on SQLite (the demo) the ORM does the
same steps and the database serialises writers.
"""

from __future__ import annotations

import hashlib
import logging
import io
import math
import random
import re
import statistics
import time
import unicodedata
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
from django.core.files.base import ContentFile
from django.core.files.storage import storages
from django.db import IntegrityError, OperationalError, connection, transaction
from django.db.models import Count, Exists, F, OuterRef, Q, Subquery, Sum
from django.utils import timezone
from PIL import Image, ImageFilter

from core.errors import ServiceError
from core.task_queue import enqueue_on_commit
from generation import selectors as generation_selectors
from generation import services as generation_services
from generation.models import GeneratedImage, Prompt
from generation.pipelines import PNG_CHUNK_OVERHEAD, encode_png, padded_png
from generation.storage import content_addressed_name

from .models import (
    CRITERION_DEFAULTS,
    DEFAULT_CONSENT_TEXT,
    Assignment,
    Campaign,
    CampaignCriterion,
    CampaignModel,
    Choice,
    ComparisonItem,
    Criterion,
    GoldImage,
    InviteLink,
    new_token,
    Participation,
    PlacementCounter,
    Rater,
    Vote,
)

# Tasks a rater holds at once: the one on screen and the next, whose images the
# page preloads so the switch after a vote is instant.
LOOKAHEAD = 2

logger = logging.getLogger(__name__)


class AnnotationError(ServiceError):
    """Refused; the message says why in words the user can act on; ``field`` names the input it is about."""


# --- Campaigns ---------------------------------------------------------------------------------

# Settings that define what is being measured: frozen once the campaign has items.
STRUCTURAL_FIELDS = {"prompt_set", "seeds", "pairing", "baseline", "gold_share"}
# Operational settings: editable until the campaign has votes.
# The consent text is one of them: what the raters who voted agreed to must stay what the page says.
OPERATIONAL_FIELDS = {
    "lease_seconds", "quota_per_rater", "gold_min_accuracy", "gold_min_answers", "rater_title", "consent_text",
    "speeder_seconds", "exclude_speeders",
}
# Always editable (a contact address may move mid-study).
FREE_FIELDS = {"name", "completion_url", "completion_code", "contact", "screen_out_url", "screen_out_code"}
MAX_CONSENT_TEXT = 10_000
MAX_CONTACT = 200


MAX_QUOTA = 1_000_000
MAX_GOLD_MIN_ANSWERS = 1_000
MAX_RATERS_PER_LINK = 1_000_000
MAX_TEXT = 200  # campaign names, rater titles, invite labels, completion URLs
MAX_SPEEDER_SECONDS = 60.0
# A rater is judged on the gaps between their most recent answers (server clock: the client's own timings can lie),
# once there are enough of them that one quick click does not flag anyone.
SPEEDER_MIN_GAPS = 5
SPEEDER_WINDOW = 20


def _whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_text(value, *, field: str, what: str, blank_ok: bool = False) -> str:
    if not isinstance(value, str):
        raise AnnotationError(f"{what} must be text, not {type(value).__name__}.", field=field)
    if not blank_ok and not value.strip():
        raise AnnotationError(f"Give {what.lower()}.", field=field)
    if len(value) > MAX_TEXT:
        raise AnnotationError(f"{what} is {len(value):,} characters long; use at most {MAX_TEXT} characters.", field=field)
    return value


def _check_settings(
    *, lease_seconds, quota_per_rater, gold_share, gold_min_accuracy, gold_min_answers, rater_title,
    consent_text=DEFAULT_CONSENT_TEXT, contact="", speeder_seconds=1.0, exclude_speeders=False, screen_out_url="",
    screen_out_code=None, completion_code=None,
) -> None:
    if not _whole(lease_seconds) or not 30 <= lease_seconds <= 86_400:
        raise AnnotationError("The lease must be between 30 seconds and one day.", field="lease_seconds")
    if not _whole(quota_per_rater):
        raise AnnotationError(f"The quota must be a whole number of tasks, not {quota_per_rater!r}.", field="quota_per_rater")
    if quota_per_rater < 0:
        raise AnnotationError("The quota cannot be negative; 0 means no limit.", field="quota_per_rater")
    if quota_per_rater > MAX_QUOTA:
        raise AnnotationError(f"The quota must be at most {MAX_QUOTA:,} tasks per rater (0 means no limit).",
                              field="quota_per_rater")
    if not _number(gold_share) or not 0 <= gold_share <= 0.5:
        raise AnnotationError("The gold share must be between 0 and 0.5.", field="gold_share")
    if not _number(gold_min_accuracy) or not 0 <= gold_min_accuracy <= 1:
        raise AnnotationError("The gold accuracy threshold must be between 0 and 1.", field="gold_min_accuracy")
    if not _whole(gold_min_answers) or not 1 <= gold_min_answers <= MAX_GOLD_MIN_ANSWERS:
        raise AnnotationError(
            f"The gold answers needed before excluding a rater must be a whole number from 1 to {MAX_GOLD_MIN_ANSWERS:,}.",
            field="gold_min_answers",
        )
    _check_text(rater_title, field="rater_title", what="The raters' page title")
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
        _check_text(screen_out_url, field="screen_out_url", what="The screen-out URL")
    if screen_out_code is not None:
        _check_text(screen_out_code, field="screen_out_code", what="The screen-out code")
        if screen_out_code.strip() == (completion_code or "").strip():
            # An excluded rater handed the completion code would be paid as if their work counted.
            raise AnnotationError("The screen-out code must differ from the completion code.", field="screen_out_code")


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
        if not _whole(k):
            raise AnnotationError("Raters per comparison must be a whole number.", field=f"{criterion}_votes_per_item")
        if not 1 <= k <= 50:
            raise AnnotationError("Raters per comparison must be between 1 and 50.", field=f"{criterion}_votes_per_item")
        if not isinstance(spec["instructions"], str):
            raise AnnotationError(f"The instructions of {criterion} must be text.", field=f"{criterion}_instructions")
        choices = spec["choices"]
        if (not isinstance(choices, (list, tuple)) or not all(isinstance(c, str) for c in choices)
                or set(choices) - set(Choice.values) or not {"left", "right"} <= set(choices)
                or len(set(choices)) != len(choices)):
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
    created_by=None,
) -> Campaign:
    """A draft campaign comparing ``models`` (two, or N paired as ``pairing`` says).

    ``criteria`` maps criterion -> overrides of CRITERION_DEFAULTS ({} keeps the
    defaults); None means both of Emu's criteria.
    """
    name = _check_text(name if name is not None else "", field="name", what="The campaign's name").strip()
    models = list(models)
    seen = set()
    for model in models:
        if model.pk in seen:
            raise AnnotationError(f"Choose at least two different models: {model.name} is listed twice.", field="models")
        seen.add(model.pk)
    if len(models) < 2:
        raise AnnotationError("Choose at least two models to compare.", field="models")
    if pairing not in Campaign.Pairing.values:
        raise AnnotationError(f"Pairing must be one of: {', '.join(Campaign.Pairing.values)}.", field="pairing")
    if pairing == Campaign.Pairing.VS_BASELINE:
        if baseline is None or baseline.pk not in {m.pk for m in models}:
            raise AnnotationError("With 'each vs the baseline', choose a baseline among the campaign's models.",
                                  field="baseline")
    else:
        baseline = None
    if Campaign.objects.filter(name=name).exists():
        raise AnnotationError(f"A campaign named {name!r} already exists.", field="name")
    seeds = generation_services.check_seeds(seeds, AnnotationError)
    if not prompt_set.prompts.exists():
        raise AnnotationError(f"Prompt set {prompt_set.name!r} has no prompts.", field="prompt_set")
    if completion_url:
        _check_text(completion_url, field="completion_url", what="The completion URL")
    consent_text, contact = _clean_text(consent_text), (contact or "").strip()
    _check_settings(
        lease_seconds=lease_seconds, quota_per_rater=quota_per_rater, gold_share=gold_share,
        gold_min_accuracy=gold_min_accuracy, gold_min_answers=gold_min_answers, rater_title=rater_title,
        consent_text=consent_text, contact=contact, speeder_seconds=speeder_seconds, exclude_speeders=exclude_speeders,
        screen_out_url=screen_out_url,
    )
    _check_gold_can_fire(
        quota_per_rater=quota_per_rater, gold_share=gold_share, gold_min_answers=gold_min_answers,
        gold_min_accuracy=gold_min_accuracy,
    )
    resolved = _resolve_criteria(criteria)
    with transaction.atomic():
        campaign = Campaign.objects.create(
            name=name, prompt_set=prompt_set, seeds=seeds, pairing=pairing, baseline=baseline,
            lease_seconds=lease_seconds, quota_per_rater=quota_per_rater, gold_share=gold_share,
            gold_min_accuracy=gold_min_accuracy, gold_min_answers=gold_min_answers,
            completion_url=completion_url, rater_title=rater_title, consent_text=consent_text, contact=contact,
            screen_out_url=screen_out_url, speeder_seconds=speeder_seconds, exclude_speeders=exclude_speeders,
            created_by=created_by,
        )
        CampaignModel.objects.bulk_create(CampaignModel(campaign=campaign, model=m, position=i) for i, m in enumerate(models))
        CampaignCriterion.objects.bulk_create(
            CampaignCriterion(
                campaign=campaign, criterion=c, question=s["question"], instructions=s["instructions"],
                votes_per_item=s["votes_per_item"], choices=s["choices"], show_prompt=s["show_prompt"],
            )
            for c, s in resolved
        )
        PlacementCounter.objects.bulk_create(PlacementCounter(campaign=campaign, shard=i) for i in range(PlacementCounter.SHARDS))
    return campaign


def _clean_text(text: str | None) -> str:
    """Researcher-written text for raters: Windows line ends unified, surrounding blank space dropped."""
    return (text or "").replace("\r\n", "\n").strip()


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
    if set(changed) & STRUCTURAL_FIELDS and campaign.items.exists():
        raise AnnotationError("The campaign's comparisons exist: models, prompts, seeds, pairing and gold share are frozen.")
    if set(changed) & OPERATIONAL_FIELDS and Vote.objects.filter(assignment__campaign=campaign).exists():
        raise AnnotationError("The campaign has votes: its settings are frozen so every vote was cast under the same rules.")
    for key, value in changed.items():
        setattr(campaign, key, value)
    _check_settings(
        lease_seconds=campaign.lease_seconds, quota_per_rater=campaign.quota_per_rater, gold_share=campaign.gold_share,
        gold_min_accuracy=campaign.gold_min_accuracy, gold_min_answers=campaign.gold_min_answers,
        rater_title=campaign.rater_title, consent_text=campaign.consent_text, contact=campaign.contact,
        speeder_seconds=campaign.speeder_seconds, exclude_speeders=campaign.exclude_speeders,
        screen_out_url=campaign.screen_out_url, screen_out_code=campaign.screen_out_code,
        completion_code=campaign.completion_code,
    )
    if set(changed) & GOLD_RULE_FIELDS:  # only then: a campaign made before this rule can still be renamed
        _check_gold_can_fire(**{f: getattr(campaign, f) for f in GOLD_RULE_FIELDS})
    if "name" in changed and Campaign.objects.filter(name=campaign.name).exclude(pk=campaign.pk).exists():
        raise AnnotationError(f"A campaign named {campaign.name!r} already exists.")
    if changed:
        campaign.save(update_fields=list(changed))
    return campaign


def generation_batch_for(campaign: Campaign, parameters: dict | None = None):
    """A generation batch for the campaign's models, prompts and seeds (images that exist are reused)."""
    return generation_services.create_batch(
        models=campaign.ordered_models(), prompt_set=campaign.prompt_set, seeds=campaign.seeds,
        parameters=parameters, name=f"campaign: {campaign.name}",
    )


def build_items(campaign: Campaign, batch) -> int:
    """Create the comparison items (and gold items) from a complete generation batch; idempotent.

    Returns the number of regular items created.
    """
    progress = generation_selectors.batch_progress(batch)
    if not progress.complete:
        raise AnnotationError(f"The images are not ready yet ({progress.done} of {progress.total}).")
    bms = {bm.model_id: bm for bm in batch.batch_models.all()}
    images = {}
    for model in campaign.ordered_models():
        if model.pk not in bms:
            raise AnnotationError(f"The generation batch has no images of model {model.name!r}.")
        for image in generation_selectors.images_for(bms[model.pk], batch):
            images[model.pk, image.prompt_id, image.seed] = image
    keys = generation_selectors.batch_keys(batch)
    pairs = campaign.model_pairs()
    criteria = list(campaign.criteria.all())
    rows = [
        ComparisonItem(
            campaign=campaign, criterion=criterion, remaining=criterion.votes_per_item,
            image_a=images[a.pk, k.prompt_id, k.seed], image_b=images[b.pk, k.prompt_id, k.seed],
        )
        for criterion in criteria
        for a, b in pairs
        for k in keys
    ]
    before = campaign.items.filter(gold_image__isnull=True).count()
    ComparisonItem.objects.bulk_create(rows, ignore_conflicts=True)
    created = campaign.items.filter(gold_image__isnull=True).count() - before
    _build_gold_items(campaign, criteria, images, pairs)
    served_image_length(campaign, refresh=True)
    return created


def gold_items_needed(regular_items: int, gold_share: float) -> int:
    """Enough gold items that a rater who judges every regular item still meets ``gold_share`` of gold tasks."""
    if gold_share <= 0 or regular_items == 0:
        return 0
    return min(regular_items, max(3, math.ceil(regular_items * gold_share / (1 - gold_share))))


def degrade(png_bytes: bytes, degradation: str) -> bytes:
    """A copy any attentive rater rejects: blurred to a smear, or buried in noise. Deterministic."""
    image = Image.open(io.BytesIO(png_bytes)).convert("RGB")
    if degradation == GoldImage.Degradation.BLUR:
        degraded = image.filter(ImageFilter.GaussianBlur(radius=max(2.0, max(image.size) / 10)))
    else:
        seed = int.from_bytes(hashlib.sha256(png_bytes).digest()[:8], "big")
        noise = np.random.default_rng(seed).integers(0, 256, size=(image.height, image.width, 3), dtype=np.uint8)
        degraded = Image.blend(image, Image.fromarray(noise, "RGB"), 0.65)
    return encode_png(np.asarray(degraded))


def _degraded_gold(source, degradation: str) -> GoldImage:
    gold = GoldImage.objects.filter(source=source, degradation=degradation).first()
    if gold is None:
        with source.file.open("rb") as handle:
            data = degrade(handle.read(), degradation)
        sha = hashlib.sha256(data).hexdigest()
        name = storages["images"].save(content_addressed_name(sha), ContentFile(data))
        gold, _ = GoldImage.objects.get_or_create(source=source, degradation=degradation, defaults={"file": name, "sha256": sha})
    return gold


def _other_prompt_gold(source, decoy) -> GoldImage:
    # One per source image: a later campaign with the same source image reuses the decoy chosen first. It is still
    # another prompt's image of the same seed (what makes it the wrong answer), and is padded like every image.
    gold, _ = GoldImage.objects.get_or_create(
        source=source, degradation=GoldImage.Degradation.OTHER_PROMPT,
        defaults={"file": decoy.file.name, "sha256": decoy.sha256},
    )
    return gold


class _Decoys:
    """The images that can be a source image's wrong answer on text faithfulness, best first.

    Another prompt's image with the same seed, from a model the source's model is compared with: to the rater
    the gold pair looks like any pair (two models, one seed), only the text does not match one side. Prompts of
    another category come first, so the mismatch is plain.
    """

    def __init__(self, images: dict, pairs, categories: dict):
        self.categories = categories
        self.partners: dict[int, set[int]] = {}
        for a, b in pairs:
            self.partners.setdefault(a.pk, set()).add(b.pk)
            self.partners.setdefault(b.pk, set()).add(a.pk)
        self.by_seed: dict[int, list] = {}
        for (model_id, prompt_id, seed), image in sorted(images.items()):
            self.by_seed.setdefault(seed, []).append((model_id, prompt_id, image))

    def of(self, source) -> list:
        partners = self.partners.get(source.model_id, set())
        others = [im for m, p, im in self.by_seed.get(source.seed, ()) if p != source.prompt_id and m in partners]
        other_category = [im for im in others if self.categories.get(im.prompt_id) != self.categories.get(source.prompt_id)]
        return other_category or others


def _build_gold_items(campaign: Campaign, criteria, images: dict, pairs) -> None:
    """Gold items per criterion: a degraded copy for visual appeal, another prompt's image for text faithfulness.

    A blurred copy shows the same things as the original, so "which matches the text better?" has no right
    answer between them; another prompt's image plainly does not match the text shown.
    """
    rng = random.Random(f"gold:{campaign.pk}")  # the same campaign always gets the same gold items
    campaign_images = [im for _, im in sorted(images.items())]
    for criterion in criteria:
        regular = campaign.items.filter(criterion=criterion, gold_image__isnull=True).count()
        needed = gold_items_needed(regular, campaign.gold_share) - campaign.items.filter(criterion=criterion, gold_image__isnull=False).count()
        if needed <= 0:
            continue
        if criterion.criterion == Criterion.TEXT_FAITHFULNESS:
            decoys = _Decoys(images, pairs, dict(campaign.prompt_set.prompts.values_list("id", "category")))
            golds = []
            for source in rng.sample(campaign_images, len(campaign_images)):  # a shuffled copy
                if len(golds) == needed:
                    break
                candidates = decoys.of(source)
                if candidates:  # none with a one-prompt set: that campaign has no faithfulness gold
                    golds.append((source, _other_prompt_gold(source, rng.choice(candidates))))
        else:
            sources = rng.sample(campaign_images, min(needed, len(campaign_images)))
            golds = [
                (source, _degraded_gold(source, (GoldImage.Degradation.BLUR, GoldImage.Degradation.NOISE)[i % 2]))
                for i, source in enumerate(sources)
            ]
        for source, gold in golds:
            ComparisonItem.objects.get_or_create(
                criterion=criterion, gold_image=gold, defaults={"campaign": campaign, "image_a": source, "image_b": source},
            )


# --- What raters receive ---------------------------------------------------------------------
#
# Images are stored as their encoder wrote them, and PNG sizes differ by model (one model's images compressed
# larger in 18 of 18 demo pairs) and by gold kind (a blurred copy is a third of the size). So every image a rater
# receives is re-laid out and padded to one length per campaign (generation.pipelines.padded_png): its length,
# headers and chunk layout are the same for both models and for gold, and only the pixels differ.


def served_image_length(campaign: Campaign, *, refresh: bool = False) -> int:
    """The one byte length of every image ``campaign``'s raters receive; computed once (file sizes), then stored.

    The longest image of the campaign, gold included, plus the padding chunk's overhead, so every image fits.
    """
    if campaign.served_image_bytes and not refresh:
        return campaign.served_image_bytes
    items = ComparisonItem.objects.filter(campaign=campaign)
    names = set(GeneratedImage.objects.filter(
        Q(pk__in=items.values("image_a_id")) | Q(pk__in=items.values("image_b_id"))
    ).values_list("file", flat=True))
    names |= set(GoldImage.objects.filter(pk__in=items.values("gold_image_id")).values_list("file", flat=True))
    storage = storages["images"]
    longest = max((storage.size(name) for name in names), default=0)
    length = max(longest + PNG_CHUNK_OVERHEAD, campaign.served_image_bytes)  # never shrinks once served
    if length != campaign.served_image_bytes:
        Campaign.objects.filter(pk=campaign.pk).update(served_image_bytes=length)
        campaign.served_image_bytes = length
    return length


def shown_image_file(assignment: Assignment, side: str):
    """The file shown on ``side`` of a task: the placement is the assignment's, so the URL never says which model."""
    item = assignment.item
    file_a = item.image_a.file
    # A gold item shows its wrong answer as its B side (image_b repeats image_a).
    file_b = item.gold_image.file if item.gold_image_id else item.image_b.file
    return file_a if (side == "left") == assignment.a_on_left else file_b


def rater_image(campaign: Campaign, assignment: Assignment, side: str) -> bytes:
    """The PNG bytes a rater receives for one side of a task: the stored pixels, padded to the campaign's length.

    Read from storage on every request, for every image alike, so no image is served from a cache that is warm
    for one model or for gold only. Raises FileNotFoundError for a missing file.
    """
    file = shown_image_file(assignment, side)
    with file.storage.open(file.name, "rb") as handle:
        data = handle.read()
    try:
        return padded_png(data, served_image_length(campaign))
    except ValueError:
        # Longer than the stored length: items were added after it was computed. Recompute (it only grows).
        return padded_png(data, served_image_length(campaign, refresh=True))


def set_status(campaign: Campaign, status: str) -> None:
    """Pause, resume or close (and the launch's own steps). Refuses moves the state machine does not allow."""
    with transaction.atomic():
        current = Campaign.objects.select_for_update().values_list("status", flat=True).get(pk=campaign.pk)
        if not Campaign.may_move(current, status):
            raise AnnotationError(f"A {current} campaign cannot become {status}.")
        if status == Campaign.Status.LIVE and not campaign.items.exists():
            raise AnnotationError("The campaign has no comparison items yet: launch it to generate its images first.")
        Campaign.objects.filter(pk=campaign.pk).update(status=status)
    campaign.status = status


def launch_campaign(campaign: Campaign, parameters: dict | None = None) -> None:
    """Generate any missing images through the generation workers, then go live (by the finish_launch task)."""
    with transaction.atomic():
        locked = Campaign.objects.select_for_update().get(pk=campaign.pk)
        if locked.status != Campaign.Status.DRAFT:
            raise AnnotationError(f"Only a draft campaign can be launched; this one is {locked.status}.")
        try:
            batch = generation_batch_for(locked, parameters)
        except generation_services.GenerationError as exc:
            raise AnnotationError(f"Cannot generate the campaign's images: {exc}") from None
        Campaign.objects.filter(pk=campaign.pk).update(status=Campaign.Status.LAUNCHING, generation_batch=batch, launch_error="")
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


# --- Raters -----------------------------------------------------------------------------------

CROWD_PARAMETERS = {"PROLIFIC_PID": "prolific_pid", "STUDY_ID": "study_id", "SESSION_ID": "session_id"}
# The longest id each query parameter may carry (the model fields' lengths). A Prolific id is 24 characters: an id
# longer than this is a mangled or hostile link, refused rather than cut (a cut id could become someone else's).
CROWD_ID_MAX_LENGTH = {"PROLIFIC_PID": 100, "STUDY_ID": 100, "SESSION_ID": 100, "external_id": 200}


class CrowdIdError(AnnotationError):
    """An id in an invite link's query cannot be anyone's id (too long)."""


class ParticipationTaken(AnnotationError):
    """A crowd id that already took part came back with other ids: it is not resumed."""


PARTICIPATION_TAKEN = (
    "This participant id has already started this study in another session, so this link cannot resume it. If that "
    "was you, open the study again from your study platform (on Prolific, from your submission: its link carries "
    "the same study and session ids). If it was not you, please contact the study's organisers."
)

# A Prolific placeholder such as {{%PROLIFIC_PID%}} that nobody filled in: the link was opened as printed.
_UNFILLED_PLACEHOLDER = re.compile(r"\{{1,2}%\s*\w+\s*%\}{1,2}")
# Never part of a real id: control characters (NUL is an error on PostgreSQL; tabs and newlines break exports and
# logs), format characters (bidi overrides and isolates such as U+202E, which would reorder a researcher's page;
# zero-width characters, which make two ids look the same) and line or paragraph separators.
_NOT_IN_IDS = frozenset(("Cc", "Cf", "Zl", "Zp"))


def _crowd_id(value) -> str:
    """A crowd id from an invite link's query, or "" for none. An unfilled placeholder is no id: taken as one, every
    browser that opened the printed link would be the same rater."""
    value = "".join(c for c in str(value or "") if unicodedata.category(c) not in _NOT_IN_IDS).strip()
    return "" if _UNFILLED_PLACEHOLDER.fullmatch(value) else value


def crowd_ids(params: dict) -> dict[str, str]:
    """The crowd ids of an invite link's query (CROWD_ID_MAX_LENGTH's parameters), cleaned: control, format (bidi)
    and separator characters removed, an unfilled placeholder read as no id. Refuses an id too long to be one."""
    ids = {}
    for param, limit in CROWD_ID_MAX_LENGTH.items():
        ids[param] = _crowd_id(params.get(param))
        if len(ids[param]) > limit:
            raise CrowdIdError(
                f"The {param} in this link is {len(ids[param]):,} characters long; an id has at most {limit}. Open "
                "the study again from the link your study platform gave you, or ask the study's organisers for help.",
                field=param,
            )
    return ids


def has_crowd_id(params: dict) -> bool:
    """Whether an invite link's query names a crowd worker (a filled-in id, not an unfilled placeholder)."""
    return any(_crowd_id(value) for value in params.values())


def invite_link_for(campaign: Campaign, *, label: str, max_raters: int = 0) -> InviteLink:
    """The campaign's active invite link with this label and rater limit, created if there is none (idempotent)."""
    link = InviteLink.objects.filter(campaign=campaign, label=label, max_raters=max_raters, active=True).order_by("pk").first()
    return link if link is not None else create_invite_link(campaign, label=label, max_raters=max_raters)


def join_with_invite(link_token: str, params: dict) -> Participation:
    """Enrol whoever opened an invite link, or resume the participation their crowd id already has.

    Resuming needs every id the participation joined with (PROLIFIC_PID, STUDY_ID, SESSION_ID, external_id) to come
    back the same: a PROLIFIC_PID alone is no secret (it shows in screenshots, shared links, spreadsheets), while a
    Prolific SESSION_ID is known only to that submission. The same id with other ids is refused with
    ``ParticipationTaken``, which says nothing about the participation it matched.
    """
    link = InviteLink.objects.select_related("campaign").filter(token=link_token).first()
    if link is None or not link.active:
        raise AnnotationError("This invitation link is not valid. Check that you copied the whole link.")
    campaign = link.campaign
    if campaign.status not in (Campaign.Status.LIVE, Campaign.Status.PAUSED):
        raise AnnotationError("This study is not open right now.")
    presented = crowd_ids(params)
    ids = {field: presented[param] for param, field in CROWD_PARAMETERS.items()}
    ids["external_id"] = external_id = presented["external_id"] or presented["PROLIFIC_PID"]
    with transaction.atomic():
        InviteLink.objects.select_for_update().filter(pk=link.pk).exists()  # serialise the max_raters check
        if external_id:
            existing = Participation.objects.filter(campaign=campaign, external_id=external_id).first()
            if existing is not None:
                if any(getattr(existing, field) != value for field, value in ids.items()):
                    raise ParticipationTaken(PARTICIPATION_TAKEN)
                return existing
        if link.max_raters and link.participations.count() >= link.max_raters:
            raise AnnotationError("This study is full. Thank you for your interest.")
        rater = Rater.objects.create(external_id=external_id, simulated=link.simulated)
        return Participation.objects.create(campaign=campaign, rater=rater, invite_link=link, **ids)


def invite_account(campaign: Campaign, user) -> Participation:
    """Let a researcher-invited account vote in ``campaign``; idempotent."""
    rater, _ = Rater.objects.get_or_create(user=user)
    participation, _ = Participation.objects.get_or_create(campaign=campaign, rater=rater)
    return participation


def create_invite_link(campaign: Campaign, *, label: str = "", max_raters: int = 0, simulated: bool = False) -> InviteLink:
    """``simulated``: a link for programs (the mini-Emu world's raters); everyone joining through it is labelled so."""
    if not _whole(max_raters):
        raise AnnotationError(f"The rater limit must be a whole number (0 means no limit), not {max_raters!r}.",
                              field="max_raters")
    if max_raters < 0:
        raise AnnotationError("The rater limit cannot be negative; 0 means no limit.", field="max_raters")
    if max_raters > MAX_RATERS_PER_LINK:
        raise AnnotationError(f"The rater limit must be at most {MAX_RATERS_PER_LINK:,} (0 means no limit).",
                              field="max_raters")
    _check_text(label, field="label", what="The label", blank_ok=True)
    return InviteLink.objects.create(campaign=campaign, label=label, max_raters=max_raters, simulated=bool(simulated))


def record_consent(participation: Participation) -> None:
    if participation.consented_at is None:
        Participation.objects.filter(pk=participation.pk, consented_at__isnull=True).update(consented_at=timezone.now())
        participation.refresh_from_db(fields=["consented_at"])


# --- Assignment engine ------------------------------------------------------------------------

# Sweeping stale leases on every request would rescan the lease index on every
# round trip; once a few seconds per process is enough (and a claim that finds
# nothing sweeps at once, so an abandoned last item is never stranded).
SWEEP_EVERY = timedelta(seconds=5)
_last_sweep: dict[int, datetime] = {}


def expire_leases(campaign: Campaign | int, now: datetime) -> int:
    """Return abandoned tasks to the pool. Rows another transaction holds are left for it."""
    campaign_id = getattr(campaign, "pk", campaign)
    with transaction.atomic():
        stale = list(
            Assignment.objects.select_for_update(skip_locked=True)
            .filter(campaign_id=campaign_id, state=Assignment.State.LEASED, expires_at__lte=now)
            .values_list("id", "item_id")
        )
        if not stale:
            return 0
        Assignment.objects.filter(id__in=[a for a, _ in stale]).update(state=Assignment.State.EXPIRED)
        _release_slots(Counter(item for _, item in stale))
    return len(stale)


def _release_slots(per_item: Counter) -> None:
    # Sorted, so two transactions releasing overlapping items lock them in the same order.
    for item_id, n in sorted(per_item.items()):
        ComparisonItem.objects.filter(pk=item_id, gold_image__isnull=True).update(
            open_leases=F("open_leases") - n, remaining=F("remaining") + n
        )
        ComparisonItem.objects.filter(pk=item_id, gold_image__isnull=False).update(open_leases=F("open_leases") - n)


def _maybe_sweep(campaign_id: int, now: datetime) -> None:
    last = _last_sweep.get(campaign_id)
    if last is None or not last <= now < last + SWEEP_EVERY:
        _last_sweep[campaign_id] = now
        expire_leases(campaign_id, now)


def _gold_is_due(participation: Participation, tasks_so_far: int, gold_share: float) -> bool:
    """Exactly ``gold_share`` of a rater's tasks are gold, evenly spread with a per-rater random phase."""
    if gold_share <= 0:
        return False
    phase = int(hashlib.sha256(participation.token.encode()).hexdigest()[:8], 16) / 16**8
    return math.floor(gold_share * (tasks_so_far + 1) + phase) > math.floor(gold_share * tasks_so_far + phase)


# How far a rater's left/right balance may stray. At +-1 every other side is forced, so a rater who could tell
# the models apart knew where A would be in every second pair; at +-2 a side is forced only at the edge.
PLACEMENT_BOUND = 2


def _placement(campaign_id: int, participation: Participation, last_regular: bool = False) -> bool:
    """True: model A on the left. A random walk per rater, within +-PLACEMENT_BOUND at every moment and within
    +-1 after the rater's last regular task (``last_regular``: their quota leaves no other); at balance 0 it
    leans toward the campaign's balance.

    Per rater the bound is exact (the participation row is locked). Per
    campaign it is a tendency: the campaign can drift by up to the bound times
    the raters active at once, and the lock-free sharded counter can lag by
    the transactions in flight.
    """
    balance = participation.placement_balance
    bound = 1 if last_regular else PLACEMENT_BOUND
    if balance + 1 > bound:
        return False
    if balance - 1 < -bound:
        return True
    if balance:
        return random.random() < 0.5
    campaign = PlacementCounter.objects.filter(campaign_id=campaign_id).aggregate(total=Sum("balance"))["total"] or 0
    if campaign:
        return campaign < 0
    return random.random() < 0.5


def _last_regular_task(participation: Participation, taken: int, quota: int, gold_share: float) -> bool:
    """Whether the rater's quota leaves no regular task after this one (gold due in every later slot, or none)."""
    return bool(quota) and not any(not _gold_is_due(participation, t, gold_share) for t in range(taken + 1, quota))


# A rater answers one criterion for a few pairs in a row, then the next: fewer switches of question than
# interleaving every pair, while every criterion still draws on every rater (depth-first needs k distinct raters).
CRITERION_BLOCK = 5


def _scheduled_criterion(criteria: list[tuple[int, int]], participation: Participation, tasks_so_far: int) -> int:
    """The criterion (of ``(id, k)`` pairs) of the rater's next task: blocks of CRITERION_BLOCK, in proportion to k.

    Every criterion has the same comparisons, so its share of all vote slots
    is its k: with Emu's 5 and 3, five blocks of appeal for every three of
    faithfulness, so a campaign stopped early has both equally far along
    (ordering by remaining slots alone would fill all k=3 items first). A
    smooth weighted round robin spreads the blocks evenly; a per-rater phase
    keeps raters who start together on different criteria.
    """
    phase = int(hashlib.sha256(participation.token.encode()).hexdigest()[8:16], 16) % 64
    total = sum(k for _, k in criteria)
    credit = dict.fromkeys((c for c, _ in criteria), 0)
    for _ in range(tasks_so_far // CRITERION_BLOCK + phase + 1):
        for criterion_id, k in criteria:
            credit[criterion_id] += k
        chosen = max(credit, key=lambda c: (credit[c], -c))
        credit[chosen] -= total
    return chosen


class _ItemsBusy(Exception):
    pass


def open_tasks(campaign: Campaign, rater: Rater, want: int = LOOKAHEAD, now: datetime | None = None) -> list[Assignment]:
    """The rater's open tasks, oldest first, leasing new ones until there are ``want`` (or none are left)."""
    now = now or timezone.now()
    for attempt in range(60):
        try:
            with transaction.atomic():
                return _open_tasks(campaign, rater, want, now)
        except (_ItemsBusy, IntegrityError, OperationalError):
            # Remaining items locked by others, a rater racing themselves past
            # the lock, or PostgreSQL breaking a rare deadlock: retry shortly.
            time.sleep(min(0.2, 0.005 * 2 ** min(attempt, 6)) * random.random())
    raise AnnotationError("Could not hand out a task right now; please try again in a moment.")


def next_assignment(campaign: Campaign, rater: Rater, now: datetime | None = None) -> Assignment | None:
    """The rater's current task, or a new lease on the next item for them; None when they are done."""
    tasks = open_tasks(campaign, rater, want=1, now=now)
    return tasks[0] if tasks else None


def _locked_participation(campaign: Campaign, rater: Rater) -> Participation:
    """The rater's participation row, locked, with the campaign's current settings read in the same statement."""
    prompts = Prompt.objects.filter(prompt_set=OuterRef("campaign__prompt_set")).order_by().values("prompt_set").annotate(n=Count("*")).values("n")
    locked = (
        Participation.objects.select_for_update(of=("self",)).select_related("campaign")
        .annotate(campaign_prompts=Subquery(prompts)).filter(campaign=campaign, rater=rater)
    )
    participation = locked.first()
    if participation is None:
        # Raters normally arrive through an invitation; the engine enrols anyone else on first use.
        Participation.objects.create(campaign=campaign, rater=rater)
        participation = locked.get()
    return participation


def _open_tasks(campaign: Campaign, rater: Rater, want: int, now: datetime) -> list[Assignment]:
    participation = _locked_participation(campaign, rater)  # one request per rater at a time
    fresh = {f: getattr(participation.campaign, f) for f in ("status", "quota_per_rater", "gold_share", "lease_seconds")}
    fresh["prompts"] = participation.campaign_prompts or 1
    if fresh["status"] != Campaign.Status.LIVE:
        raise AnnotationError("This study is paused or closed right now; please come back later.")
    held = list(Assignment.objects.filter(campaign=campaign, rater=rater, state=Assignment.State.LEASED, expires_at__gt=now).order_by("id"))
    if participation.excluded or len(held) >= want:
        return held[:want] if not participation.excluded else []
    _maybe_sweep(campaign.pk, now)
    criteria = list(CampaignCriterion.objects.filter(campaign=campaign).order_by("id").values_list("id", "votes_per_item"))
    taken = (
        Assignment.objects.filter(campaign=campaign, rater=rater).exclude(state=Assignment.State.EXPIRED).count()
        if fresh["quota_per_rater"] or fresh["gold_share"] or len(criteria) > 1
        else 0  # only the quota, the gold schedule and the criterion schedule need it
    )
    while len(held) < want:
        if fresh["quota_per_rater"] and taken >= fresh["quota_per_rater"]:
            break
        assignment = _lease_one(campaign, rater, participation, taken, fresh, criteria, now)
        if assignment is None:
            break
        held.append(assignment)
        taken += 1
    return held


def _lease_one(campaign, rater, participation, taken: int, fresh: dict, criteria, now: datetime) -> Assignment | None:
    expires_at = now + timedelta(seconds=fresh["lease_seconds"])
    if _gold_is_due(participation, taken, fresh["gold_share"]):
        gold = (
            ComparisonItem.objects.filter(campaign=campaign, gold_image__isnull=False)
            .exclude(assignments__rater=rater)
            .order_by("?")
            .first()
        )
        if gold is not None:
            # Gold items have no k: any number of raters may answer them, so no claim is needed.
            ComparisonItem.objects.filter(pk=gold.pk).update(open_leases=F("open_leases") + 1)
            return Assignment.objects.create(item=gold, rater=rater, campaign=campaign, a_on_left=random.random() < 0.5, expires_at=expires_at)
    last = _last_regular_task(participation, taken, fresh["quota_per_rater"], fresh["gold_share"])
    a_on_left = _placement(campaign.pk, participation, last)
    scheduled = _scheduled_criterion(criteria, participation, taken) if len(criteria) > 1 else None
    # The scheduled criterion first; then any (one criterion, or the scheduled one has nothing left for this
    # rater, or nothing free right now).
    prompts = fresh["prompts"]
    assignment = _claim(campaign, rater, scheduled, a_on_left, expires_at, prompts) if scheduled else None
    assignment = assignment or _claim(campaign, rater, None, a_on_left, expires_at, prompts)
    if assignment is None:
        expire_leases(campaign, now)
        if _unseen_pairs(campaign, rater).filter(remaining__gt=0).exists():
            # What is left is locked by other raters at this instant (the last
            # items of a campaign). Waiting on those locks here could deadlock;
            # retry shortly instead of wrongly saying "no more tasks".
            raise _ItemsBusy
        return None
    step = 1 if a_on_left else -1
    participation.placement_balance += step
    Participation.objects.filter(pk=participation.pk).update(placement_balance=participation.placement_balance)
    PlacementCounter.objects.filter(campaign=campaign, shard=rater.pk % PlacementCounter.SHARDS).update(balance=F("balance") + step)
    return assignment


# The claim is the statement every rater request runs. On PostgreSQL it is one
# statement: pick the open item depth-first, skipping rows other raters hold,
# take a slot from it and insert the lease, in a data-modifying CTE; the ORM
# version (in _claim, for other databases) needs three round trips and most of
# the request's Python time. Both take the same row lock, in the same order, and say the same thing.
#
# Items of one pair under other criteria share (image_a, image_b): matching on the images, rather than on the item,
# keeps a rater who saw the prompt (faithfulness) from judging the pair without it (appeal), and vice versa.
# The prompt spread is a fallback chain (avoid the last few prompts, then the last one, then none) inside COALESCE,
# whose later sub-selects PostgreSQL runs only when the earlier ones found nothing: one statement still, and the
# usual case costs one index scan, as before.
_CLAIM_SQL = """
WITH recent AS (
    SELECT g.prompt_id, row_number() OVER (ORDER BY last.id DESC) AS n
    FROM (
        SELECT r.id, r.item_id FROM {assignment} r WHERE r.rater_id = %(rater)s AND r.campaign_id = %(campaign)s
        ORDER BY r.id DESC LIMIT %(spread)s
    ) last JOIN {item} ri ON ri.id = last.item_id JOIN {image} g ON g.id = ri.image_a_id
), claimed AS (
    SELECT id FROM (SELECT COALESCE({picks}) AS id) pick WHERE id IS NOT NULL
), leased AS (
    UPDATE {item} i SET open_leases = i.open_leases + 1, remaining = i.remaining - 1
    FROM claimed WHERE i.id = claimed.id
    RETURNING i.id
)
INSERT INTO {assignment} (item_id, rater_id, campaign_id, token, a_on_left, state, leased_at, expires_at)
SELECT leased.id, %(rater)s, %(campaign)s, %(token)s, %(a_on_left)s, %(state)s, %(leased_at)s, %(expires_at)s FROM leased
RETURNING id, item_id
"""

_PICK_SQL = """(
    SELECT i.id FROM {item} i
    WHERE i.campaign_id = %(campaign)s AND i.remaining > 0 {criterion_filter}
      AND NOT EXISTS (
        SELECT 1 FROM {item} same JOIN {assignment} seen ON seen.item_id = same.id AND seen.rater_id = %(rater)s
        WHERE same.image_a_id = i.image_a_id AND same.image_b_id = i.image_b_id
      ) {prompt_filter}
    ORDER BY i.remaining, i.id
    LIMIT 1
    FOR UPDATE OF i SKIP LOCKED
)"""

_NOT_RECENT_PROMPT_SQL = """
      AND (SELECT g.prompt_id FROM {image} g WHERE g.id = i.image_a_id) NOT IN (SELECT prompt_id FROM recent WHERE n <= {n})"""

# Consecutive tasks come from different prompts as far as the pool allows: a rater who met one prompt in 8 of
# their first 10 pairs judged that prompt more than the pairs. Any PROMPT_SPREAD tasks in a row are of different
# prompts while the rater's unseen open items allow it; then any two in a row; then whatever is left.
PROMPT_SPREAD = 4


def _spread_tiers(prompts: int) -> list[int]:
    """How many of the rater's last prompts each claim attempt avoids, most first (0: any prompt)."""
    window = max(0, min(PROMPT_SPREAD - 1, prompts - 1))
    return sorted({window, min(window, 1), 0}, reverse=True)


def single_statement_writes() -> bool:
    """Whether the claim and the vote run as one SQL statement each (PostgreSQL), rather than through the ORM."""
    return connection.vendor == "postgresql"


def _unseen_pairs(campaign, rater):
    """The campaign's items whose pair (same images, so same prompt, seed and models) ``rater`` has not met."""
    met = Assignment.objects.filter(
        rater=rater, item__image_a_id=OuterRef("image_a_id"), item__image_b_id=OuterRef("image_b_id")
    )
    return ComparisonItem.objects.filter(campaign=campaign).filter(~Exists(met))


def _claim(
    campaign, rater, criterion_id: int | None, a_on_left: bool, expires_at: datetime, prompts: int = 1
) -> Assignment | None:
    """Lease the open item closest to its k votes (in ``criterion_id``, or any) whose pair ``rater`` has not met,
    from a prompt they did not meet in their last few tasks if there is one; or None.

    ``prompts`` is how many prompts the campaign has (the spread never asks for more).
    """
    tiers = _spread_tiers(prompts)
    if single_statement_writes():
        tables = {"item": ComparisonItem._meta.db_table, "assignment": Assignment._meta.db_table,
                  "image": GeneratedImage._meta.db_table}
        criterion_filter = "AND i.criterion_id = %(criterion)s" if criterion_id else ""
        picks = ", ".join(
            _PICK_SQL.format(
                **tables, criterion_filter=criterion_filter,
                prompt_filter=_NOT_RECENT_PROMPT_SQL.format(**tables, n=int(n)) if n else "",
            )
            for n in tiers
        )
        sql = _CLAIM_SQL.format(**tables, picks=picks)
        token, leased_at = new_token(), timezone.now()
        params = {
            "campaign": campaign.pk, "rater": rater.pk, "criterion": criterion_id, "token": token, "a_on_left": a_on_left,
            "state": Assignment.State.LEASED, "leased_at": leased_at, "expires_at": expires_at, "spread": tiers[0],
        }
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            row = cursor.fetchone()
        if row is None:
            return None
        assignment = Assignment(
            id=row[0], item_id=row[1], rater=rater, campaign=campaign, token=token, a_on_left=a_on_left,
            state=Assignment.State.LEASED, leased_at=leased_at, expires_at=expires_at,
        )
        assignment._state.adding, assignment._state.db = False, connection.alias
        return assignment
    candidates = _unseen_pairs(campaign, rater).filter(remaining__gt=0)
    if criterion_id:
        candidates = candidates.filter(criterion_id=criterion_id)
    recent = list(
        Assignment.objects.filter(campaign=campaign, rater=rater).order_by("-id").values_list("item__image_a__prompt_id", flat=True)[: tiers[0]]
    )
    for n in tiers:
        # A subquery, not a join: FOR UPDATE must lock the item alone, never an image other items share.
        choice = candidates.exclude(image_a__in=GeneratedImage.objects.filter(prompt_id__in=recent[:n])) if n else candidates
        item = choice.order_by("remaining", "id").select_for_update(skip_locked=True).only("id").first()
        if item is not None:
            break
    else:
        return None
    assignment = Assignment.objects.create(item=item, rater=rater, campaign=campaign, a_on_left=a_on_left, expires_at=expires_at)
    ComparisonItem.objects.filter(pk=item.pk).update(open_leases=F("open_leases") + 1, remaining=F("remaining") - 1)
    return assignment


# --- Votes ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VoteResult:
    vote: Vote
    duplicate: bool  # True when this submission repeated one already recorded
    ended: bool = False  # True when quality control ended the rater's participation (gold, speed) after this vote


class ParticipationEnded(AnnotationError):
    """The rater was excluded: nothing more is recorded for them, and they are shown the screen-out ending."""


def submit_vote(
    rater: Rater,
    token: str,
    choice: str,
    seconds_on_task: float | None = None,
    now: datetime | None = None,
    campaign: Campaign | None = None,
) -> VoteResult:
    """Record the rater's choice for their assignment ``token``, once. A replay returns the first vote.

    ``campaign`` pins the task to one campaign (an invited account may rate in several).
    """
    now = now or timezone.now()
    with transaction.atomic():
        assignments = Assignment.objects.filter(token=token, rater=rater)
        if campaign is not None:
            assignments = assignments.filter(campaign=campaign)
        assignment = (
            assignments.select_for_update(of=("self",))
            .select_related("item__criterion", "campaign", "vote")
            .annotate(rater_excluded=Exists(
                Participation.objects.filter(campaign_id=OuterRef("campaign_id"), rater_id=OuterRef("rater_id"), excluded=True)
            ))
            .first()
        )
        if assignment is None:
            raise AnnotationError("No such task for you.")  # another rater's token reads the same as a made-up one
        existing = getattr(assignment, "vote", None)
        if existing is None and assignment.state == Assignment.State.VOTED:
            # A concurrent copy of this vote committed while we waited for the row lock: the lock re-reads the
            # assignment, but the joined vote came from the statement's older snapshot. Read it afresh.
            existing = Vote.objects.filter(assignment=assignment).first()
        if existing is not None:
            if existing.choice != choice:
                raise AnnotationError("You already answered this task; answers cannot be changed.")
            return VoteResult(existing, duplicate=True)
        if assignment.campaign.status == Campaign.Status.CLOSED:
            raise AnnotationError("This study is closed; your answer was not recorded.")
        if assignment.campaign.status == Campaign.Status.PAUSED:
            # A pause stops the study, not only new tasks; leases stay, so the
            # same task can be answered once it resumes (if still in time).
            raise AnnotationError("This study is paused right now, so your answer was not recorded. Please come back later.")
        if assignment.rater_excluded:
            # Exclusion expired the rater's open tasks; telling them the task "expired" would be false.
            raise ParticipationEnded(SCREENED_OUT_VOTE)
        if assignment.state != Assignment.State.LEASED or assignment.expires_at <= now:
            raise AnnotationError("This task expired and went back to the pool; your answer was not recorded.")
        item = assignment.item
        if choice not in item.criterion.choices:
            raise AnnotationError(f"{choice!r} is not a choice for this question.")
        if choice in (Choice.LEFT, Choice.RIGHT):
            a_won = (choice == Choice.LEFT) == assignment.a_on_left
            winner = Vote.Winner.A if a_won else Vote.Winner.B
        else:
            winner = Vote.Winner.TIE
        if seconds_on_task is not None and not (isinstance(seconds_on_task, (int, float)) and 0 <= seconds_on_task < 86_400):
            seconds_on_task = None
        vote = Vote(
            assignment=assignment, choice=choice, winner=winner, seconds_on_task=seconds_on_task, excluded=False,
            gold_correct=(winner == Vote.Winner.A) if item.is_gold else None,  # A is the intact image
        )
        _record_vote(vote, item.pk)
    # Quality control runs after the vote is committed: a check that fails (or must retry) never loses the vote.
    try:
        ended = _exclude_if_failing_gold(assignment.campaign, rater) if item.is_gold else False
        ended = _flag_if_speeding(assignment.campaign, rater, now) or ended
    except OperationalError:
        # The vote is stored and must be acknowledged; the checks run again on the rater's next answer.
        logger.exception("quality control for rater %s in campaign %s failed; retried on their next vote", rater.pk, assignment.campaign_id)
        ended = False
    return VoteResult(vote, duplicate=False, ended=ended)


_RECORD_VOTE_SQL = """
WITH vote AS (
    INSERT INTO {vote} (assignment_id, choice, winner, seconds_on_task, excluded, gold_correct, created_at)
    VALUES (%(assignment)s, %(choice)s, %(winner)s, %(seconds)s, %(excluded)s, %(gold_correct)s, %(created_at)s)
    RETURNING id
), answered AS (
    UPDATE {assignment} SET state = %(voted)s WHERE id = %(assignment)s RETURNING id
), item AS (
    UPDATE {item} SET votes = votes + 1, open_leases = open_leases - 1
    WHERE id = %(item)s RETURNING id
)
SELECT vote.id FROM vote, answered, item
"""


def _record_vote(vote: Vote, item_id: int) -> None:
    """Insert the vote, mark its assignment voted, move the item's counters: one statement on PostgreSQL."""
    if not single_statement_writes():
        vote.save(force_insert=True)
        Assignment.objects.filter(pk=vote.assignment_id).update(state=Assignment.State.VOTED)
        ComparisonItem.objects.filter(pk=item_id).update(
            votes=F("votes") + 1, open_leases=F("open_leases") - 1
        )
        return
    vote.created_at = timezone.now()
    sql = _RECORD_VOTE_SQL.format(vote=Vote._meta.db_table, assignment=Assignment._meta.db_table, item=ComparisonItem._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(sql, {
            "assignment": vote.assignment_id, "choice": vote.choice, "winner": vote.winner, "seconds": vote.seconds_on_task,
            "excluded": vote.excluded, "gold_correct": vote.gold_correct, "created_at": vote.created_at,
            "voted": Assignment.State.VOTED, "item": item_id,
        })
        vote.pk = cursor.fetchone()[0]
    vote._state.adding, vote._state.db = False, connection.alias


# --- Quality control --------------------------------------------------------------------------


SCREENED_OUT_VOTE = "This study has ended for you, so this answer was not recorded."


def _exclude_if_failing_gold(campaign: Campaign, rater: Rater) -> bool:
    """Exclude the rater once their gold accuracy is below the campaign's bar; True if this call excluded them."""
    gold = Vote.objects.filter(assignment__campaign=campaign, assignment__rater=rater, gold_correct__isnull=False)
    answered = gold.count()
    if answered < campaign.gold_min_answers:
        return False
    correct = gold.filter(gold_correct=True).count()
    if correct / answered >= campaign.gold_min_accuracy:
        return False
    participation = Participation.objects.get(campaign=campaign, rater=rater)
    reason = f"automatic: gold accuracy {correct}/{answered} below {campaign.gold_min_accuracy:.0%}"
    return _exclude_with_retry(participation.pk, reason) is not None


def median_seconds_between_votes(campaign: Campaign, rater: Rater, window: int = SPEEDER_WINDOW) -> tuple[float | None, int]:
    """The median gap between the rater's last ``window`` + 1 answers, by the server's clock, and how many gaps."""
    times = list(
        Vote.objects.filter(assignment__campaign=campaign, assignment__rater=rater)
        .order_by("-created_at").values_list("created_at", flat=True)[: window + 1]
    )
    gaps = [(later - earlier).total_seconds() for later, earlier in zip(times, times[1:])]
    return (statistics.median(gaps) if gaps else None), len(gaps)


def _flag_if_speeding(campaign: Campaign, rater: Rater, now: datetime) -> bool:
    """Flag (and, if the campaign says so, exclude) a rater answering faster than pairs can be judged.

    True if this call excluded them. The server's clock decides, not the page's reported seconds, which a script sets
    to anything.
    """
    if campaign.speeder_seconds <= 0:
        return False
    median, gaps = median_seconds_between_votes(campaign, rater)
    if gaps < SPEEDER_MIN_GAPS or median >= campaign.speeder_seconds:
        return False
    participation = Participation.objects.get(campaign=campaign, rater=rater)
    if participation.speeder_flagged_at is None:
        Participation.objects.filter(pk=participation.pk, speeder_flagged_at__isnull=True).update(
            speeder_flagged_at=now, speeder_median_seconds=round(median, 3)
        )
    if not campaign.exclude_speeders or participation.excluded:
        return False
    reason = f"automatic: speeder, median {median:.2f} s between answers, below {campaign.speeder_seconds:g} s"
    return _exclude_with_retry(participation.pk, reason) is not None


EXCLUSION_ATTEMPTS = 5


def exclude_rater(participation: Participation, reason: str) -> int:
    """Stop a rater's votes from counting; they are kept, flagged. Their items reopen. Returns votes flagged.

    Idempotent: excluding twice changes nothing (and returns 0).
    """
    return _exclude_with_retry(participation.pk, reason) or 0


def _exclude_with_retry(participation_id: int, reason: str) -> int | None:
    """Votes flagged, or None if the rater was already excluded.

    Locks rows in one global order (participation, the rater's assignments by id, items by id), as the vote and the
    claim do, and retries if PostgreSQL still breaks a deadlock: two exclusions at once both land.
    """
    reason = (reason or "").strip() or "excluded by a researcher"
    for attempt in range(EXCLUSION_ATTEMPTS):
        try:
            with transaction.atomic():
                return _exclude(participation_id, reason)
        except OperationalError:
            if attempt == EXCLUSION_ATTEMPTS - 1:
                raise
            time.sleep(0.01 * 2**attempt * (1 + random.random()))
    raise AssertionError("unreachable")


def _exclude(participation_id: int, reason: str) -> int | None:
    participation = Participation.objects.select_for_update().get(pk=participation_id)
    if participation.excluded:
        return None
    Participation.objects.filter(pk=participation.pk).update(excluded=True, exclusion_reason=reason[:300], excluded_at=timezone.now())
    mine = {"campaign_id": participation.campaign_id, "rater_id": participation.rater_id}
    # The assignment rows first (a vote locks its assignment, then its item), in id order.
    leased = list(
        Assignment.objects.select_for_update().filter(**mine, state=Assignment.State.LEASED).order_by("id").values_list("id", "item_id")
    )
    votes = Vote.objects.filter(**{f"assignment__{k}": v for k, v in mine.items()}, excluded=False)
    counted_items = Counter(votes.filter(assignment__item__gold_image__isnull=True).values_list("assignment__item_id", flat=True))
    flagged = votes.update(excluded=True)
    Assignment.objects.filter(id__in=[a for a, _ in leased]).update(state=Assignment.State.EXPIRED)
    released = Counter(item for _, item in leased)
    # One pass over the items in id order: votes given back and leases released together, never two passes that
    # another exclusion could interleave with in the opposite order.
    for item_id in sorted(set(counted_items) | set(released)):
        n, leases = counted_items.get(item_id, 0), released.get(item_id, 0)
        ComparisonItem.objects.filter(pk=item_id, gold_image__isnull=True).update(
            votes=F("votes") - n, open_leases=F("open_leases") - leases, remaining=F("remaining") + n + leases
        )
        if leases:
            ComparisonItem.objects.filter(pk=item_id, gold_image__isnull=False).update(open_leases=F("open_leases") - leases)
    return flagged


@dataclass(frozen=True)
class RaterEnding:
    """How a rater's participation ended: the code they hand to the crowd platform, or where they are sent."""

    screened_out: bool  # excluded by quality control: the screen-out code, never the completion code
    code: str
    url: str  # "" when the page shows the code instead


def _with_code(url: str, code: str) -> str:
    return url.replace("{code}", code) if url else ""


def rater_ending(participation: Participation) -> RaterEnding | None:
    """The rater's ending, or None while they still have work: excluded raters always get the screen-out one."""
    campaign = participation.campaign
    if participation.excluded:
        return RaterEnding(True, campaign.screen_out_code, _with_code(campaign.screen_out_url, campaign.screen_out_code))
    if participation.completed_at is not None:
        return RaterEnding(False, campaign.completion_code, _with_code(campaign.completion_url, campaign.completion_code))
    return None


def end_if_out_of_tasks(participation: Participation) -> RaterEnding:
    """Called when the engine has no task left for the rater: complete them (unless excluded) and say how it ended."""
    if not participation.excluded:
        complete_if_done(participation)
    ending = rater_ending(participation)
    assert ending is not None
    return ending


def complete_if_done(participation: Participation) -> None:
    if participation.completed_at is None:
        Participation.objects.filter(pk=participation.pk, completed_at__isnull=True).update(completed_at=timezone.now())
        participation.refresh_from_db(fields=["completed_at"])
