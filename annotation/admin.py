"""Admin for campaigns and their records. Campaigns are created and steered on the researcher pages (/annotation/);
the admin edits what may still change, through services.update_campaign's freeze rules, and never deletes votes.
"""

from django.contrib import admin, messages
from django.db.models import Count
from django.shortcuts import redirect
from django.urls import reverse
from django.utils.html import format_html

from core.admin import ReadOnlyAdmin

from . import services
from .models import (
    Campaign,
    CampaignCriterion,
    CampaignModel,
    ComparisonItem,
    InviteLink,
    Participation,
    Vote,
)


class CampaignModelInline(admin.TabularInline):
    # Which models a campaign compares is part of its definition: chosen on the "new campaign" page, never edited.
    model = CampaignModel
    fields = ["position", "model"]
    readonly_fields = fields
    extra = 0
    max_num = 0
    can_delete = False


class CampaignCriterionInline(admin.StackedInline):
    model = CampaignCriterion
    fields = ["criterion", "question", "instructions", "votes_per_item", "choices", "show_prompt"]
    extra = 0
    max_num = 0  # criteria are chosen when the campaign is created
    can_delete = False

    def get_readonly_fields(self, request, obj=None):
        # Wording and k may be tuned until the comparisons exist; after that they define what was measured.
        if obj is None or obj.items.exists():
            return self.fields
        return ["criterion", "choices", "show_prompt"]


@admin.register(Campaign)
class CampaignAdmin(admin.ModelAdmin):
    list_display = ["name", "status", "prompt_set", "model_names", "pairing", "created_at", "researcher_page"]
    list_filter = ["status", "pairing"]
    search_fields = ["name"]
    inlines = [CampaignModelInline, CampaignCriterionInline]
    actions = ["pause", "resume", "close"]
    fields = [
        "name",
        "status",
        "prompt_set",
        "pairing",
        "baseline",
        "seeds",
        "gold_share",
        "gold_min_accuracy",
        "gold_min_answers",
        "quota_per_rater",
        "lease_seconds",
        "rater_title",
        "consent_text",
        "contact",
        "completion_code",
        "completion_url",
        "screen_out_code",
        "screen_out_url",
        "speeder_seconds",
        "exclude_speeders",
        "stop_when_decided",
        "decision_width",
        "human_share",
        "human_prompt_ids",
        "pair_selection",
        "generation_batch",
        "launch_error",
        "created_by",
        "created_at",
    ]
    # Never editable here: status moves through the buttons and actions, the rest is bookkeeping.
    always_readonly = ["status", "human_prompt_ids", "generation_batch", "launch_error", "created_by", "created_at"]

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("prompt_set").prefetch_related("campaign_models__model")

    @admin.display(description="models")
    def model_names(self, obj):
        return " · ".join(cm.model.name for cm in obj.campaign_models.all())

    @admin.display(description="page")
    def researcher_page(self, obj):
        return format_html('<a href="{}">dashboard</a>', reverse("campaigns:detail", args=[obj.pk]))

    def view_on_site(self, obj):
        return reverse("campaigns:detail", args=[obj.pk])

    def get_readonly_fields(self, request, obj=None):
        if obj is None:
            return self.fields
        # Of the structural settings only the gold share is a plain number; prompts, seeds, pairing and the human share
        # are chosen at creation (create a new draft campaign to change them).
        editable = services.editable_settings(obj) - (services.STRUCTURAL_FIELDS - {"gold_share"})
        return [f for f in self.fields if f in self.always_readonly or f not in editable]

    def add_view(self, request, form_url="", extra_context=None):
        # Creation needs the service (models, criteria, placement counters): use the researchers' form.
        return redirect("annotation:campaign_new")

    def save_model(self, request, obj, form, change):
        fresh = Campaign.objects.get(pk=obj.pk)
        changes = {f: form.cleaned_data[f] for f in form.changed_data if f in form.cleaned_data}
        try:
            services.update_campaign(fresh, **changes)
        except services.AnnotationError as exc:
            # Something froze between showing the form and saving it: nothing was saved.
            self.message_user(request, f"Not saved: {exc}", messages.ERROR)

    def has_delete_permission(self, request, obj=None):
        # Votes are never deleted, and deleting a campaign would delete its votes.
        if obj is not None and Vote.objects.filter(assignment__campaign=obj).exists():
            return False
        return super().has_delete_permission(request, obj)

    def _set_status(self, request, queryset, action):
        for campaign in queryset:
            try:
                services.apply_campaign_action(campaign, action)
            except services.AnnotationError as exc:
                self.message_user(request, f"{campaign.name}: {exc}", messages.ERROR)
            else:
                self.message_user(request, f"{campaign.name}: {campaign.status}.", messages.SUCCESS)

    @admin.action(description="Pause the selected campaigns")
    def pause(self, request, queryset):
        self._set_status(request, queryset, "pause")

    @admin.action(description="Resume the selected campaigns")
    def resume(self, request, queryset):
        self._set_status(request, queryset, "resume")

    @admin.action(description="Close the selected campaigns (no more votes)")
    def close(self, request, queryset):
        self._set_status(request, queryset, "close")


@admin.register(InviteLink)
class InviteLinkAdmin(admin.ModelAdmin):
    list_display = ["campaign", "label", "max_raters", "joined", "active", "created_at"]
    list_filter = ["active"]
    search_fields = ["label", "campaign__name"]
    fields = ["campaign", "label", "max_raters", "active", "token", "created_at"]
    readonly_fields = ["campaign", "token", "created_at"]

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("campaign").annotate(joined_count=Count("participations"))

    @admin.display(description="joined", ordering="joined_count")
    def joined(self, obj):
        return obj.joined_count

    def has_add_permission(self, request):
        return False  # created on the campaign page, which shows the full link for Prolific

    def has_delete_permission(self, request, obj=None):
        return False  # deactivate instead: participations point at it


@admin.register(Participation)
class ParticipationAdmin(ReadOnlyAdmin):
    list_display = [
        "rater",
        "campaign",
        "invite_link",
        "prolific_pid",
        "study_id",
        "consented_at",
        "completed_at",
        "excluded",
        "exclusion_reason",
    ]
    list_filter = ["excluded", "campaign"]
    list_select_related = ["rater", "campaign", "invite_link"]
    search_fields = ["prolific_pid", "external_id", "study_id", "session_id"]
    readonly_fields = [f.name for f in Participation._meta.fields]
    actions = ["exclude_raters"]

    @admin.action(description="Exclude the selected raters (their votes are kept, flagged, and stop counting)")
    def exclude_raters(self, request, queryset):
        flagged = sum(
            services.exclude_rater(p, f"excluded by {request.user.get_username()} in the admin") for p in queryset
        )
        self.message_user(
            request, f"Excluded {queryset.count()} rater(s); {flagged} vote(s) flagged.", messages.SUCCESS
        )


@admin.register(Vote)
class VoteAdmin(ReadOnlyAdmin):
    list_display = [
        "id",
        "campaign",
        "rater",
        "criterion",
        "choice",
        "winner",
        "seconds_on_task",
        "gold_correct",
        "excluded",
        "created_at",
    ]
    list_filter = ["excluded", "winner", "assignment__campaign"]
    list_select_related = ["assignment__campaign", "assignment__item__criterion"]

    @admin.display(description="campaign")
    def campaign(self, obj):
        return obj.assignment.campaign

    @admin.display(description="rater")
    def rater(self, obj):
        return obj.assignment.rater_id

    @admin.display(description="criterion")
    def criterion(self, obj):
        return obj.assignment.item.criterion.get_criterion_display()


@admin.register(ComparisonItem)
class ComparisonItemAdmin(ReadOnlyAdmin):
    list_display = ["id", "campaign", "criterion", "image_a", "image_b", "is_gold", "votes", "open_leases", "remaining"]
    list_filter = ["campaign", "criterion__criterion"]
    list_select_related = ["campaign", "criterion"]

    @admin.display(boolean=True, description="gold")
    def is_gold(self, obj):
        return obj.is_gold
