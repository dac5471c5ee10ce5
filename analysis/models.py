"""What analysis stores: the decisions of "stop when decided" campaigns, and an automatic judge's scores of pairs.

Win rates themselves are never stored: they are computed from votes (``analysis.services``).
"""

from __future__ import annotations

from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q

from annotation.models import Campaign, Criterion
from generation.models import GeneratedImage


class CampaignDecision(models.Model):
    """The look at which a campaign's anytime-valid confidence sequence decided one model pair (issue 13, part 1).

    Written once by ``services.decisions.check_decision`` (idempotent: one row per campaign, criterion and pair);
    the campaign is closed when every pair of its primary criterion has one. ``look`` is the number of complete
    prompts the sequence had seen when it first excluded ``null`` (or became ``target_width`` narrow);
    ``votes_at_look`` the campaign's counting votes at that moment; ``low``/``high``/``estimate`` the sequence
    there. Later looks keep narrowing; the report prints both.
    """

    class Outcome(models.TextChoices):
        B_BETTER = "B better", "model B better"
        A_BETTER = "A better", "model A better"
        WIDTH_REACHED = "width reached", "target width reached"

    campaign = models.ForeignKey(Campaign, on_delete=models.CASCADE, related_name="decisions")
    criterion = models.CharField(max_length=32, choices=Criterion.choices)
    model_a = models.CharField(max_length=200)
    model_b = models.CharField(max_length=200)
    decision = models.CharField(max_length=16, choices=Outcome.choices)
    look = models.PositiveIntegerField(help_text="Complete prompts seen when the sequence decided.")
    votes_at_look = models.PositiveIntegerField(help_text="The campaign's counting votes when that prompt completed.")
    votes_at_check = models.PositiveIntegerField(help_text="The campaign's counting votes when the check ran.")
    low = models.FloatField()
    high = models.FloatField()
    estimate = models.FloatField()
    level = models.FloatField(help_text="Of this pair's sequence (Bonferroni-adjusted with several pairs).")
    null = models.FloatField(default=0.5)
    target_width = models.FloatField(null=True, blank=True)
    decided_at = models.DateTimeField(help_text="When the deciding prompt's last comparison completed.")
    recorded_at = models.DateTimeField(auto_now_add=True)
    closed_campaign = models.BooleanField(default=False, help_text="Whether this check closed the campaign.")

    class Meta:
        ordering = ["campaign", "id"]
        constraints = [
            models.UniqueConstraint(fields=["campaign", "criterion", "model_a", "model_b"], name="decision_once"),
        ]

    def __str__(self) -> str:
        return f"{self.campaign}: {self.criterion} {self.model_b} vs {self.model_a}: {self.decision} at {self.look}"


class JudgeScore(models.Model):
    """An automatic judge's probability that raters prefer image B over image A under one criterion (issue 13, part 2).

    Keyed by the two images, not by a comparison item: humans vote on a random share of a campaign's prompts
    (``Campaign.human_share``), and the judge scores every pair, with or without an item.
    """

    campaign = models.ForeignKey(Campaign, on_delete=models.CASCADE, related_name="judge_scores")
    criterion = models.CharField(max_length=32, choices=Criterion.choices)
    image_a = models.ForeignKey(GeneratedImage, on_delete=models.CASCADE, related_name="+")
    image_b = models.ForeignKey(GeneratedImage, on_delete=models.CASCADE, related_name="+")
    score = models.FloatField(validators=[MinValueValidator(0.0), MaxValueValidator(1.0)])
    judge = models.CharField(
        max_length=200, help_text="Which judge, e.g. 'aesthetic head sac+logos+ava1-l14 (logistic)'."
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["campaign", "criterion", "image_a", "image_b"], name="judge_score_once"),
            models.CheckConstraint(condition=Q(score__gte=0.0) & Q(score__lte=1.0), name="judge_score_in_unit"),
        ]
