"""The researcher's campaign page: settings, launch progress, raters, invite links and the live win rates.

It lives in analysis, which may read annotation, because it shows analysis's win rates beside annotation's
progress; the forms on it post to annotation's views, which redirect back here. Its URLs stay under
/annotation/campaigns/ (namespace ``campaigns``, mounted by evalsite/urls.py).
"""

from django.contrib.admin.views.decorators import staff_member_required
from django.db.models import Count
from django.http import JsonResponse
from django.shortcuts import get_object_or_404, render
from django.urls import reverse
from django.views.decorators.http import require_safe

from annotation import selectors as annotation_selectors
from annotation.forms import InviteAccountForm, InviteLinkForm
from annotation.models import Campaign

from .live import campaign_state
from .services import (
    PPI_EXPLANATION,
    SEQUENCE_EXPLANATION,
    campaign_win_rates,
    decision_summaries,
    prediction_powered_summaries,
    stop_rule,
)


def _campaign(pk) -> Campaign:
    return get_object_or_404(Campaign.objects.select_related("prompt_set", "baseline", "generation_batch"), pk=pk)


@staff_member_required
@require_safe
def campaign_detail(request, pk):
    campaign = _campaign(pk)
    base_url = request.build_absolute_uri("/")
    links = campaign.invite_links.annotate(joined=Count("participations")).order_by("-created_at")
    context = {
        "campaign": campaign,
        "models": campaign.ordered_models(),
        "pairs": campaign.model_pairs(),
        "criteria": campaign.criteria.all(),
        "generation": annotation_selectors.launch_images(campaign),
        "progress": annotation_selectors.campaign_progress(campaign),
        "raters_needed": annotation_selectors.raters_needed(campaign),
        "win_rates": campaign_win_rates(campaign),
        "sequence_explanation": SEQUENCE_EXPLANATION,
        "stop_rule": stop_rule(campaign),
        "decisions": decision_summaries(campaign),
        "prediction_powered": prediction_powered_summaries(campaign),
        "ppi_explanation": PPI_EXPLANATION,
        "raters": annotation_selectors.rater_quality(campaign),
        "invite_links": [(link, annotation_selectors.invite_url(base_url, link)) for link in links],
        "actions": [
            (label, reverse(f"annotation:{action}", args=[campaign.pk]))
            for action, label in campaign.available_actions()
        ],
        "invite_link_form": InviteLinkForm(),
        "invite_account_form": InviteAccountForm(),
    }
    return render(request, "analysis/campaign_detail.html", context)


@staff_member_required
@require_safe
def campaign_progress(request, pk):
    """What the campaign page polls: status, progress, launch images and win rates."""
    return JsonResponse(campaign_state(_campaign(pk)))
