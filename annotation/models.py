"""Comparison campaigns, the items raters judge, raters, their assignments and votes.

A comparison item is (prompt, seed, criterion, image of model A, image of
model B). Raters get items through assignments: a leased, per-rater view of
one item with its own left/right placement. A vote belongs to exactly one
assignment, so a replayed submission can never count twice. Gold items are
items with a known answer, mixed in to check that raters pay attention: for
visual appeal a campaign image against a visibly degraded copy, for text
faithfulness the prompt's image against another prompt's image.
"""

from __future__ import annotations

import itertools
import secrets

from django.conf import settings
from django.core.files.storage import storages
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q

from generation.models import GeneratedImage, PromptSet, TextToImageModel


class Criterion(models.TextChoices):
    VISUAL_APPEAL = "visual_appeal", "visual appeal"
    TEXT_FAITHFULNESS = "text_faithfulness", "text faithfulness"


class Choice(models.TextChoices):
    LEFT = "left", "left"
    RIGHT = "right", "right"
    TIE = "tie", "tie"
    BOTH = "both", "both"
    NEITHER = "neither", "neither"


# Emu's protocol: appeal without the prompt, 5 raters; faithfulness with the prompt, 3 raters.
CRITERION_DEFAULTS = {
    Criterion.VISUAL_APPEAL: {
        "votes_per_item": 5,
        "choices": ["left", "right", "tie"],
        "show_prompt": False,
        "question": "Which image is more visually appealing?",
        "instructions": "Which image is more visually appealing? Judge the image alone: composition, lighting, "
        "colour, detail and overall aesthetics. Ignore what it is supposed to show. If they are equally "
        "appealing, choose tie.",
    },
    Criterion.TEXT_FAITHFULNESS: {
        "votes_per_item": 3,
        "choices": ["left", "right", "both", "neither"],
        "show_prompt": True,
        "question": "Which image matches the text better?",
        "instructions": "Which image matches the text better? Check every object, attribute, count and relation "
        "the text asks for. Ignore how beautiful the images are. Choose both if both match equally well, "
        "neither if neither matches.",
    },
}


def _image_storage():
    return storages["images"]


def new_token() -> str:
    """An unguessable URL token: 32 random bytes (256 bits), so tokens cannot be enumerated."""
    return secrets.token_urlsafe(32)


def new_completion_code() -> str:
    return secrets.token_hex(4).upper()


# What raters agree to, unless the researchers write their own. The first paragraph is the summary every rater sees
# on the consent page; further paragraphs (separated by a blank line) fold away under "Full information".
DEFAULT_CONSENT_TEXT = (
    "Your answers are recorded together with the time you took on each pair and the ids your recruiting platform "
    "put in your link (for example your Prolific ID). They are used for research on image generation and are not linked "
    "to your name. Taking part is voluntary: you may stop at any time by closing this page."
)


class Campaign(models.Model):
    class Status(models.TextChoices):
        DRAFT = "draft", "draft"
        LAUNCHING = "launching", "launching"  # images being generated; goes live by itself when they are ready
        LIVE = "live", "live"
        PAUSED = "paused", "paused"
        CLOSED = "closed", "closed"

    # The campaign's state machine, written once: the moves each status allows, and the researcher's actions (the
    # buttons, the API's action endpoints and the command's verbs), each with the statuses it starts from.
    TRANSITIONS = {
        Status.DRAFT: {Status.LAUNCHING, Status.LIVE},
        Status.LAUNCHING: {Status.LIVE, Status.DRAFT},  # goes live by itself; back to draft if generation fails
        Status.LIVE: {Status.PAUSED, Status.CLOSED},
        Status.PAUSED: {Status.LIVE, Status.CLOSED},
        Status.CLOSED: set(),
    }
    ACTIONS = {  # action: (button label, from, to)
        "launch": ("Launch", {Status.DRAFT}, Status.LAUNCHING),
        "pause": ("Pause", {Status.LIVE}, Status.PAUSED),
        "resume": ("Resume", {Status.PAUSED}, Status.LIVE),
        "close": ("Close", {Status.LIVE, Status.PAUSED}, Status.CLOSED),
    }

    class Pairing(models.TextChoices):
        ALL_PAIRS = "all_pairs", "all pairs"
        VS_BASELINE = "vs_baseline", "each model vs the baseline"

    class PairSelection(models.TextChoices):
        UNIFORM = "uniform", "uniform: every model pair alike"
        ADAPTIVE = "adaptive", "adaptive: the pairs that most narrow the ranking first"

    name = models.CharField(max_length=200, unique=True, help_text="Researchers only; raters never see it.")
    rater_title = models.CharField(
        max_length=200, default="Compare two images", help_text="The heading raters see. Never name the models here."
    )
    consent_text = models.TextField(
        default=DEFAULT_CONSENT_TEXT,
        help_text="What raters agree to before they start. The first paragraph is always shown; the rest (after a "
        "blank line) folds away under 'Full information'. Never name the models here.",
    )
    contact = models.CharField(
        max_length=200,
        blank=True,
        help_text="Who raters can write to about the study, e.g. 'Dr A. Researcher, a.researcher@uni.example'.",
    )
    prompt_set = models.ForeignKey(PromptSet, on_delete=models.PROTECT, related_name="campaigns")
    compared_models = models.ManyToManyField(TextToImageModel, through="CampaignModel", related_name="campaigns")
    pairing = models.CharField(max_length=16, choices=Pairing.choices, default=Pairing.ALL_PAIRS)
    baseline = models.ForeignKey(
        TextToImageModel,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        help_text="With 'each vs the baseline': the model every other model is compared against.",
    )
    seeds = models.JSONField()
    # Which model pair raters get next (all pairs, three or more models): adaptive takes the pairs whose votes most
    # narrow the ranking's uncertain adjacent gaps first (ComparisonItem.pair_priority, recomputed by analysis).
    pair_selection = models.CharField(
        max_length=16,
        choices=PairSelection.choices,
        default=PairSelection.UNIFORM,
        help_text="Adaptive (all pairs, three or more models): the pairs that most narrow the ranking's uncertain "
        "gaps get votes first, so the ranking separates with fewer votes.",
    )
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.DRAFT)
    lease_seconds = models.PositiveIntegerField(
        default=600, help_text="An unanswered task returns to the pool after this."
    )
    quota_per_rater = models.PositiveIntegerField(
        default=0, help_text="Tasks per rater, gold included; 0 means no limit."
    )
    gold_share = models.FloatField(
        default=0.1,
        validators=[MinValueValidator(0.0), MaxValueValidator(0.5)],
        help_text="Share of a rater's tasks that are gold items with a known answer.",
    )
    gold_min_accuracy = models.FloatField(
        default=0.7,
        validators=[MinValueValidator(0.0), MaxValueValidator(1.0)],
        help_text="Raters below this gold accuracy are excluded automatically (their votes are kept, flagged).",
    )
    gold_min_answers = models.PositiveIntegerField(
        default=4, help_text="Gold answers needed before a rater can be excluded."
    )
    # Every image a rater receives is padded to this one length, so that byte counts say nothing about model or
    # gold (services.served_image_length); set when the items are built. 0: not computed yet.
    served_image_bytes = models.PositiveIntegerField(default=0, editable=False)
    completion_code = models.CharField(
        max_length=64, default=new_completion_code, help_text="Shown to raters when they finish."
    )
    completion_url = models.URLField(
        blank=True,
        help_text="Where finished raters are sent, e.g. https://app.prolific.com/submissions/complete?cc=CODE",
    )
    # Raters excluded by quality control (gold, speed, a researcher) end here instead: never the completion code,
    # which is what a crowd platform pays for. Prolific calls it a screen-out code.
    screen_out_code = models.CharField(
        max_length=64,
        default=new_completion_code,
        help_text="Shown to raters excluded by quality control (Prolific: a screen-out code); never the completion code.",
    )
    screen_out_url = models.URLField(
        blank=True,
        help_text="Where excluded raters are sent, e.g. https://app.prolific.com/submissions/complete?cc=SCREENED",
    )
    speeder_seconds = models.FloatField(
        default=1.0,
        validators=[MinValueValidator(0.0), MaxValueValidator(60.0)],
        help_text="A rater whose median time between answers is below this many seconds is flagged as a speeder. "
        "0 turns the check off.",
    )
    exclude_speeders = models.BooleanField(
        default=False,
        help_text="Exclude flagged speeders automatically (their votes are kept, flagged), not only flag them.",
    )
    # Issue 13. "Stop when decided": analysis closes the campaign once the anytime-valid confidence sequence of its
    # primary criterion (the first) excludes 50%, or is at most ``decision_width`` wide, for every model pair.
    stop_when_decided = models.BooleanField(
        default=False,
        help_text="Close the campaign by itself once its anytime-valid interval (primary criterion, every pair) "
        "excludes 50%, or is narrower than the decision width.",
    )
    decision_width = models.FloatField(
        null=True,
        blank=True,
        validators=[MinValueValidator(0.01), MaxValueValidator(1.0)],
        help_text="With 'stop when decided': also stop once the anytime-valid interval is at most this wide "
        "(e.g. 0.10 for 10 points). Empty: stop only when it excludes 50%.",
    )
    # Humans vote on this share of the prompts, drawn at random when the items are built (seeded by the campaign's
    # id, recorded in human_prompt_ids); an automatic judge can score the pairs of every prompt (prediction-powered
    # win rates). 1: every prompt.
    human_share = models.FloatField(
        default=1.0,
        validators=[MinValueValidator(0.01), MaxValueValidator(1.0)],
        help_text="Share of the prompts whose comparisons get human votes, drawn at random; an automatic judge can "
        "score the rest. 1 means every prompt.",
    )
    human_prompt_ids = models.JSONField(null=True, blank=True, editable=False)
    generation_batch = models.ForeignKey(
        "generation.GenerationBatch", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    launch_error = models.TextField(blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]

    @classmethod
    def may_move(cls, current: str, status: str) -> bool:
        return status in cls.TRANSITIONS[current]

    def available_actions(self) -> list[tuple[str, str]]:
        """(action, label) of the actions this campaign's status offers, in the order the buttons show them."""
        return [(action, label) for action, (label, sources, _) in self.ACTIONS.items() if self.status in sources]

    def __str__(self) -> str:
        return self.name

    def ordered_models(self) -> list[TextToImageModel]:
        return [cm.model for cm in self.campaign_models.select_related("model").order_by("position")]

    def model_pairs(self) -> list[tuple[TextToImageModel, TextToImageModel]]:
        """The (model A, model B) pairs the campaign compares, A before B in the campaign's order."""
        models = self.ordered_models()
        if self.pairing == self.Pairing.VS_BASELINE:
            return [(self.baseline, m) for m in models if m.pk != self.baseline_id]
        return list(itertools.combinations(models, 2))


class CampaignModel(models.Model):
    campaign = models.ForeignKey(Campaign, on_delete=models.CASCADE, related_name="campaign_models")
    model = models.ForeignKey(TextToImageModel, on_delete=models.PROTECT, related_name="+")
    position = models.PositiveSmallIntegerField()

    class Meta:
        ordering = ["position"]
        constraints = [
            models.UniqueConstraint(fields=["campaign", "model"], name="campaign_model_once"),
            models.UniqueConstraint(fields=["campaign", "position"], name="campaign_model_position_once"),
        ]


class CampaignCriterion(models.Model):
    campaign = models.ForeignKey(Campaign, on_delete=models.CASCADE, related_name="criteria")
    criterion = models.CharField(max_length=32, choices=Criterion.choices)
    question = models.CharField(max_length=300)
    instructions = models.TextField()
    votes_per_item = models.PositiveSmallIntegerField()
    choices = models.JSONField()
    show_prompt = models.BooleanField()

    class Meta:
        ordering = ["id"]
        constraints = [models.UniqueConstraint(fields=["campaign", "criterion"], name="campaign_criterion_unique")]

    def __str__(self) -> str:
        return f"{self.campaign} / {self.get_criterion_display()}"


class GoldImage(models.Model):
    """The wrong answer of gold items whose right answer is ``source``.

    Visual appeal: a visibly degraded copy of ``source`` (its own content-addressed file). Text faithfulness: a
    degraded copy would still show what the text asks for, so the wrong answer is another prompt's image (same
    seed, from a model ``source``'s model is compared with); ``file`` and ``sha256`` are that image's.
    """

    class Degradation(models.TextChoices):
        BLUR = "blur", "heavy blur"
        NOISE = "noise", "heavy noise"
        OTHER_PROMPT = "other_prompt", "another prompt's image"

    source = models.ForeignKey(GeneratedImage, on_delete=models.PROTECT, related_name="+")
    degradation = models.CharField(max_length=16, choices=Degradation.choices)
    file = models.FileField(storage=_image_storage, max_length=200)
    sha256 = models.CharField(max_length=64)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["source", "degradation"], name="gold_image_once")]


class ComparisonItemQuerySet(models.QuerySet):
    def regular(self):
        """Comparisons of two models' images: what the report counts."""
        return self.filter(gold_image__isnull=True)

    def gold(self):
        """Gold items: an image against a copy with a known answer, to check raters; never in the report."""
        return self.filter(gold_image__isnull=False)


class ComparisonItem(models.Model):
    objects = ComparisonItemQuerySet.as_manager()

    campaign = models.ForeignKey(Campaign, on_delete=models.CASCADE, related_name="items")
    criterion = models.ForeignKey(CampaignCriterion, on_delete=models.CASCADE, related_name="items")
    image_a = models.ForeignKey(GeneratedImage, on_delete=models.PROTECT, related_name="+")
    # For a gold item, B is shown as ``gold_image`` (a degraded copy of A, or
    # another prompt's image) and image_b repeats image_a, so every item keeps
    # its (prompt, seed) through A.
    image_b = models.ForeignKey(GeneratedImage, on_delete=models.PROTECT, related_name="+")
    gold_image = models.ForeignKey(GoldImage, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    # Kept by the assignment engine under the item's row lock. ``votes`` counts
    # the votes that count (excluded raters' votes do not); ``open_leases`` the
    # tasks handed out and not yet answered or expired; ``remaining`` is
    # k - votes - open_leases, stored so the depth-first order is one index
    # scan. Gold items have no k: remaining stays 0 and they are picked apart.
    votes = models.PositiveSmallIntegerField(default=0)
    open_leases = models.PositiveSmallIntegerField(default=0)
    remaining = models.SmallIntegerField(default=0)
    # The claim takes open items in (pair_priority, remaining, id) order: 0 is most wanted. Always 0 in a uniform
    # campaign; an adaptive one's are set per model pair (services.set_pair_priorities) from the votes so far.
    pair_priority = models.IntegerField(default=0)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(
                fields=["criterion", "image_a", "image_b"],
                condition=Q(gold_image__isnull=True),
                name="comparison_item_unique",
            ),
            models.UniqueConstraint(fields=["criterion", "gold_image"], name="gold_item_unique"),
        ]
        indexes = [
            # Depth-first claim: WHERE campaign = ? AND remaining > 0 ORDER BY pair_priority, remaining, id.
            models.Index(
                fields=["campaign", "pair_priority", "remaining", "id"],
                condition=Q(remaining__gt=0),
                name="item_open_depth_first",
            ),
            # The same within one criterion: the usual claim, for the criterion the rater's schedule names.
            models.Index(
                fields=["criterion", "pair_priority", "remaining", "id"],
                condition=Q(remaining__gt=0),
                name="item_open_depth_first_crit",
            ),
        ]

    @property
    def is_gold(self) -> bool:
        return self.gold_image_id is not None


class Rater(models.Model):
    """Someone who votes: an invited account, or an anonymous crowd worker known by external ids."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE, related_name="rater"
    )
    external_id = models.CharField(max_length=200, blank=True, help_text="e.g. PROLIFIC_PID")
    # A program, not a person (the mini-Emu world's simulated raters): counted like anyone, but always labelled.
    simulated = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"rater {self.pk}"


class InviteLink(models.Model):
    """A shareable link for crowd platforms; whoever opens it becomes a new anonymous rater."""

    campaign = models.ForeignKey(Campaign, on_delete=models.CASCADE, related_name="invite_links")
    token = models.CharField(max_length=64, unique=True, default=new_token)
    label = models.CharField(max_length=200, blank=True, help_text="e.g. 'Prolific study 1'")
    max_raters = models.PositiveIntegerField(default=0, help_text="0 means no limit.")
    active = models.BooleanField(default=True)
    simulated = models.BooleanField(
        default=False,
        help_text="Whoever joins through this link is recorded as a simulated rater (pages, exports, reports say so).",
    )
    created_at = models.DateTimeField(auto_now_add=True)


class Participation(models.Model):
    """A rater in a campaign: how they came, their crowd ids, whether they finished or were excluded."""

    campaign = models.ForeignKey(Campaign, on_delete=models.CASCADE, related_name="participations")
    rater = models.ForeignKey(Rater, on_delete=models.CASCADE, related_name="participations")
    # The opaque id in the rater's URLs; it names neither campaign nor models.
    token = models.CharField(max_length=64, unique=True, default=new_token)
    invite_link = models.ForeignKey(
        InviteLink, null=True, blank=True, on_delete=models.SET_NULL, related_name="participations"
    )
    prolific_pid = models.CharField(max_length=100, blank=True)
    study_id = models.CharField(max_length=100, blank=True)
    session_id = models.CharField(max_length=100, blank=True)
    external_id = models.CharField(max_length=200, blank=True)
    consented_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    excluded = models.BooleanField(default=False)
    exclusion_reason = models.CharField(max_length=300, blank=True)
    excluded_at = models.DateTimeField(null=True, blank=True)
    # Set once the rater's median time between answers fell below the campaign's speeder_seconds (server clock).
    speeder_flagged_at = models.DateTimeField(null=True, blank=True)
    speeder_median_seconds = models.FloatField(null=True, blank=True)
    # Regular tasks shown with model A on the left minus those with B on the
    # left; kept under this row's lock by the assignment engine (within +-1).
    placement_balance = models.SmallIntegerField(default=0, editable=False)
    # Votes this rater recorded in this campaign (excluded ones too): their progress, moved in the statement that
    # records each vote, so showing it costs no count.
    answered = models.PositiveIntegerField(default=0, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        constraints = [models.UniqueConstraint(fields=["campaign", "rater"], name="participation_once")]


class PlacementCounter(models.Model):
    """Left/right balance of a campaign, split over shards so raters do not queue on one row.

    A shard's ``balance`` is assignments with model A on the left minus those
    with B on the left, for the raters hashed to it; the campaign's balance is
    the sum, read without locks.
    """

    SHARDS = 16

    campaign = models.ForeignKey(Campaign, on_delete=models.CASCADE, related_name="placement_counters")
    shard = models.PositiveSmallIntegerField()
    balance = models.IntegerField(default=0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["campaign", "shard"], name="placement_counter_once")]


class Assignment(models.Model):
    class State(models.TextChoices):
        LEASED = "leased", "leased"
        VOTED = "voted", "voted"
        EXPIRED = "expired", "expired"

    item = models.ForeignKey(ComparisonItem, on_delete=models.CASCADE, related_name="assignments")
    rater = models.ForeignKey(Rater, on_delete=models.CASCADE, related_name="assignments")
    campaign = models.ForeignKey(Campaign, on_delete=models.CASCADE, related_name="assignments")
    token = models.CharField(
        max_length=64, unique=True, default=new_token, help_text="Opaque id the rater's pages use."
    )
    a_on_left = models.BooleanField()
    state = models.CharField(max_length=16, choices=State.choices, default=State.LEASED)
    leased_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()

    class Meta:
        ordering = ["id"]
        constraints = [
            # A rater never sees an item twice, not even after a lease expired.
            models.UniqueConstraint(fields=["item", "rater"], name="assignment_once_per_rater"),
        ]
        indexes = [
            models.Index(fields=["campaign", "state", "expires_at"]),
            models.Index(fields=["rater", "campaign", "state"]),
            # The rater's last few tasks (the claim's prompt spread), read backward; without it, all of them sorted.
            models.Index(fields=["rater", "campaign", "id"], name="assignment_rater_recent"),
        ]


# The counting-vote rule, written once: a vote enters the numbers when its rater was not excluded and its item is a
# regular comparison (gold items check raters, they measure no model).
COUNTING_VOTE = Q(excluded=False, assignment__item__gold_image__isnull=True)


class VoteQuerySet(models.QuerySet):
    def counting(self):
        return self.filter(COUNTING_VOTE)

    def on_regular_items(self):
        """Counting or not (excluded raters' votes included), on regular comparisons."""
        return self.filter(assignment__item__gold_image__isnull=True)


class Vote(models.Model):
    class Winner(models.TextChoices):
        A = "a", "model A"
        B = "b", "model B"
        TIE = "tie", "tie"

    objects = VoteQuerySet.as_manager()

    assignment = models.OneToOneField(Assignment, on_delete=models.PROTECT, related_name="vote")
    choice = models.CharField(max_length=16, choices=Choice.choices, help_text="What the rater clicked, as shown.")
    winner = models.CharField(max_length=8, choices=Winner.choices, help_text="The choice mapped back to models.")
    seconds_on_task = models.FloatField(null=True, blank=True)
    # Votes are never deleted: an excluded rater's votes stay, flagged, and stop counting.
    excluded = models.BooleanField(default=False)
    gold_correct = models.BooleanField(
        null=True, blank=True, help_text="For gold items: whether the known answer was picked."
    )
    created_at = models.DateTimeField(auto_now_add=True)
