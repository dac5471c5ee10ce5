"""Comparison campaigns, the items raters judge, their assignments and votes.

A comparison item is (prompt, seed, criterion, image of model A, image of
model B). Raters get items through assignments: a leased, per-rater view of
one item with its own left/right placement. A vote belongs to exactly one
assignment, so a replayed submission can never count twice.
"""

from __future__ import annotations

import secrets

from django.conf import settings
from django.db import models
from django.db.models import F, Q

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
        "instructions": "Which image is more visually appealing? Judge the image alone: composition, lighting, "
        "colour, detail and overall aesthetics. Ignore what it is supposed to show. If they are equally "
        "appealing, choose tie.",
    },
    Criterion.TEXT_FAITHFULNESS: {
        "votes_per_item": 3,
        "choices": ["left", "right", "both", "neither"],
        "show_prompt": True,
        "instructions": "Which image matches the text better? Check every object, attribute, count and relation "
        "the text asks for. Ignore how beautiful the images are. Choose both if both match equally well, "
        "neither if neither matches.",
    },
}


def new_token() -> str:
    return secrets.token_urlsafe(24)


class Campaign(models.Model):
    class Status(models.TextChoices):
        DRAFT = "draft", "draft"
        LIVE = "live", "live"
        PAUSED = "paused", "paused"
        CLOSED = "closed", "closed"

    name = models.CharField(max_length=200, unique=True)
    prompt_set = models.ForeignKey(PromptSet, on_delete=models.PROTECT, related_name="campaigns")
    model_a = models.ForeignKey(TextToImageModel, on_delete=models.PROTECT, related_name="+")
    model_b = models.ForeignKey(TextToImageModel, on_delete=models.PROTECT, related_name="+")
    seeds = models.JSONField()
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.DRAFT)
    lease_seconds = models.PositiveIntegerField(default=600, help_text="An unanswered task returns to the pool after this.")
    quota_per_rater = models.PositiveIntegerField(default=0, help_text="Tasks per rater; 0 means no limit.")
    # Placement balance: assignments with model A on the left minus those with B on the left.
    left_balance = models.IntegerField(default=0, editable=False)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [models.CheckConstraint(condition=~Q(model_a=F("model_b")), name="campaign_two_distinct_models")]

    def __str__(self) -> str:
        return self.name


class CampaignCriterion(models.Model):
    campaign = models.ForeignKey(Campaign, on_delete=models.CASCADE, related_name="criteria")
    criterion = models.CharField(max_length=32, choices=Criterion.choices)
    instructions = models.TextField()
    votes_per_item = models.PositiveSmallIntegerField()
    choices = models.JSONField()
    show_prompt = models.BooleanField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["campaign", "criterion"], name="campaign_criterion_unique")]

    def __str__(self) -> str:
        return f"{self.campaign} / {self.get_criterion_display()}"


class ComparisonItem(models.Model):
    campaign = models.ForeignKey(Campaign, on_delete=models.CASCADE, related_name="items")
    criterion = models.ForeignKey(CampaignCriterion, on_delete=models.CASCADE, related_name="items")
    image_a = models.ForeignKey(GeneratedImage, on_delete=models.PROTECT, related_name="+")
    image_b = models.ForeignKey(GeneratedImage, on_delete=models.PROTECT, related_name="+")
    # Kept by the assignment engine under a row lock: votes recorded, and leases
    # handed out and not yet answered or expired. votes + open_leases <= k.
    votes = models.PositiveSmallIntegerField(default=0)
    open_leases = models.PositiveSmallIntegerField(default=0)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["criterion", "image_a", "image_b"], name="comparison_item_unique"),
        ]
        indexes = [models.Index(fields=["campaign", "votes", "open_leases"])]


class Rater(models.Model):
    """Someone who votes: an invited account, or an anonymous crowd worker known by external ids."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE, related_name="rater")
    external_id = models.CharField(max_length=200, blank=True, help_text="e.g. PROLIFIC_PID")
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"rater {self.pk}"


class Assignment(models.Model):
    class State(models.TextChoices):
        LEASED = "leased", "leased"
        VOTED = "voted", "voted"
        EXPIRED = "expired", "expired"

    item = models.ForeignKey(ComparisonItem, on_delete=models.CASCADE, related_name="assignments")
    rater = models.ForeignKey(Rater, on_delete=models.CASCADE, related_name="assignments")
    campaign = models.ForeignKey(Campaign, on_delete=models.CASCADE, related_name="assignments")
    token = models.CharField(max_length=64, unique=True, default=new_token, help_text="Opaque id the rater's pages use.")
    a_on_left = models.BooleanField()
    state = models.CharField(max_length=16, choices=State.choices, default=State.LEASED)
    leased_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()

    class Meta:
        constraints = [
            # A rater never sees an item twice, not even after a lease expired.
            models.UniqueConstraint(fields=["item", "rater"], name="assignment_once_per_rater"),
        ]
        indexes = [models.Index(fields=["campaign", "state", "expires_at"])]


class Vote(models.Model):
    class Winner(models.TextChoices):
        A = "a", "model A"
        B = "b", "model B"
        TIE = "tie", "tie"

    assignment = models.OneToOneField(Assignment, on_delete=models.PROTECT, related_name="vote")
    choice = models.CharField(max_length=16, choices=Choice.choices, help_text="What the rater clicked, as shown.")
    winner = models.CharField(max_length=8, choices=Winner.choices, help_text="The choice mapped back to models.")
    seconds_on_task = models.FloatField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
