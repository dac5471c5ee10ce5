"""Researchers' campaign pages (staff only): list, new campaign, the campaign dashboard, exclusions, the vote export.

Views stay thin: what they show comes from selectors, what they change goes
through services, whose refusals are shown to the researcher as they are.
"""

from django.contrib import messages
from django.contrib.admin.views.decorators import staff_member_required
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from core.forms import errors_as_messages, saved

from . import selectors, services
from .forms import CampaignForm, ExcludeRaterForm, InviteAccountForm, InviteLinkForm
from .models import Campaign, Participation


def _campaign(pk) -> Campaign:
    return get_object_or_404(Campaign.objects.select_related("prompt_set", "baseline", "generation_batch"), pk=pk)


@staff_member_required
def campaign_list(request):
    campaigns = list(Campaign.objects.select_related("prompt_set").prefetch_related("campaign_models__model")[:200])
    percent = selectors.campaign_percentages(campaigns)
    rows = [(c, [cm.model.name for cm in c.campaign_models.all()], percent.get(c.pk, 0)) for c in campaigns]
    return render(request, "annotation/researcher/campaign_list.html", {"rows": rows})


@staff_member_required
def campaign_new(request):
    form = CampaignForm(request.POST or None)
    campaign = saved(request, form, form.create, request.user)
    if campaign is not None:
        messages.success(request, f"Created the draft campaign {campaign.name}. Check its settings, then launch it.")
        return redirect("campaigns:detail", campaign.pk)
    return render(request, "annotation/researcher/campaign_form.html", {"form": form})


@staff_member_required
@require_POST
def campaign_action(request, pk, action):
    campaign = _campaign(pk)
    try:
        services.apply_campaign_action(campaign, action)
    except services.AnnotationError as exc:
        messages.error(request, str(exc))
    else:
        done = {
            "launch": "Launching: the images are being generated; the campaign goes live by itself when they are ready.",
            "pause": "Paused: raters get no new tasks until you resume.",
            "resume": "Live again.",
            "close": "Closed: no more votes are accepted.",
        }
        messages.success(request, done[action])
    return redirect("campaigns:detail", campaign.pk)


@staff_member_required
@require_POST
def invite_link_create(request, pk):
    campaign = _campaign(pk)
    form = InviteLinkForm(request.POST)
    if form.is_valid():
        try:
            link = services.create_invite_link(
                campaign, label=form.cleaned_data["label"], max_raters=form.cleaned_data["max_raters"] or 0
            )
        except services.AnnotationError as exc:
            messages.error(request, str(exc))
        else:
            messages.success(
                request, f"Invite link created: {selectors.invite_url(request.build_absolute_uri('/'), link)}"
            )
    else:
        errors_as_messages(request, form)
    return redirect("campaigns:detail", campaign.pk)


@staff_member_required
@require_POST
def invite_account(request, pk):
    campaign = _campaign(pk)
    form = InviteAccountForm(request.POST)
    if form.is_valid():
        user = form.cleaned_data["username"]
        services.invite_account(campaign, user)
        messages.success(request, f"{user.get_username()} can now vote in this campaign.")
    else:
        errors_as_messages(request, form)
    return redirect("campaigns:detail", campaign.pk)


@staff_member_required
@require_POST
def exclude_rater(request, pk, participation_pk):
    participation = get_object_or_404(Participation, pk=participation_pk, campaign_id=pk)
    form = ExcludeRaterForm(request.POST)
    if form.is_valid():
        flagged = services.exclude_rater(participation, form.cleaned_data["reason"])
        messages.success(
            request, f"Rater {participation.rater_id} excluded; {flagged} vote(s) kept and flagged, no longer counted."
        )
    else:
        errors_as_messages(request, form)
    return redirect("campaigns:detail", pk)
