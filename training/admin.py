from django.contrib import admin, messages
from django.shortcuts import redirect
from django.urls import reverse
from django.utils.html import format_html

from core.admin import ReadOnlyAdmin

from . import services
from .models import (
    Candidate,
    CandidateCollection,
    CuratedDataset,
    CurationDecision,
    CurationReview,
    CurationRun,
    FunnelOutcome,
    QualityTuningRun,
    RunCheckpoint,
)


def _each_run(model_admin, request, queryset, action) -> None:
    """An admin action's ``action`` on each selected run; a refusal is a warning, and the other runs go on."""
    for run in queryset:
        try:
            action(run)
        except services.TrainingError as exc:
            model_admin.message_user(request, str(exc), messages.WARNING)


@admin.register(CuratedDataset)
class CuratedDatasetAdmin(admin.ModelAdmin):
    list_display = ["name", "image_count", "short_hash", "path", "frozen_at"]
    search_fields = ["name", "path", "description"]
    readonly_fields = ["path", "content_hash", "image_count", "frozen_at", "created_by"]

    @admin.display(description="content hash")
    def short_hash(self, obj):
        return obj.content_hash[:12]

    def add_view(self, request, form_url="", extra_context=None):
        return redirect("training:dataset_list")  # importing checks and hashes the folder


class RunCheckpointInline(admin.TabularInline):
    model = RunCheckpoint
    fields = ["step", "saved_at", "loss", "path", "registered_model", "exported_path"]
    readonly_fields = fields
    extra = 0
    max_num = 0
    can_delete = False


@admin.register(QualityTuningRun)
class QualityTuningRunAdmin(admin.ModelAdmin):
    list_display = ["__str__", "status", "progress", "loss", "attempts", "created_by", "created_at", "page"]
    list_filter = ["status", "base_model", "dataset"]
    list_select_related = ["base_model", "dataset", "created_by"]
    readonly_fields = [
        "base_model",
        "base_fingerprint",
        "dataset",
        "config",
        "run_dir",
        "status",
        "step",
        "max_steps",
        "loss",
        "seconds_per_step",
        "eta_seconds",
        "error",
        "celery_task_id",
        "attempts",
        "worker",
        "trainer_pid",
        "heartbeat_at",
        "created_by",
        "created_at",
        "queued_at",
        "started_at",
        "finished_at",
    ]
    inlines = [RunCheckpointInline]
    actions = ["cancel", "start"]

    @admin.display(description="progress")
    def progress(self, obj):
        return format_html(
            '<progress max="{}" value="{}"></progress> {} / {}', obj.max_steps, obj.step, obj.step, obj.max_steps
        )

    @admin.display(description="")
    def page(self, obj):
        return format_html('<a href="{}">run page</a>', reverse("training:run_detail", args=[obj.pk]))

    def add_view(self, request, form_url="", extra_context=None):
        return redirect("training:run_new")

    @admin.action(description="Cancel the selected runs (they checkpoint and stop)")
    def cancel(self, request, queryset):
        _each_run(self, request, queryset, services.cancel_run)

    @admin.action(description="Queue or resume the selected runs")
    def start(self, request, queryset):
        _each_run(self, request, queryset, services.start_run)


@admin.register(RunCheckpoint)
class RunCheckpointAdmin(admin.ModelAdmin):
    list_display = ["__str__", "step", "saved_at", "loss", "registered_model"]
    list_filter = ["run"]
    list_select_related = ["run", "registered_model"]
    readonly_fields = [
        "run",
        "step",
        "path",
        "saved_at",
        "loss",
        "exported_path",
        "registered_model",
        "lineage",
        "recorded_at",
    ]

    def has_add_permission(self, request):
        return False


# --- Curation (read-mostly: imports and runs go through the curation pages and services) -------------------------


@admin.register(CandidateCollection)
class CandidateCollectionAdmin(admin.ModelAdmin):
    list_display = ["name", "candidate_count", "problem_count", "path", "imported_at", "page"]
    search_fields = ["name", "path"]
    readonly_fields = ["name", "path", "candidate_count", "problems", "created_by", "imported_at"]

    @admin.display(description="problems")
    def problem_count(self, obj):
        return len(obj.problems)

    @admin.display(description="")
    def page(self, obj):
        return format_html('<a href="{}">collection page</a>', reverse("training:curation_collection", args=[obj.pk]))

    def add_view(self, request, form_url="", extra_context=None):
        return redirect("training:curation_collections")  # importing scans and checks every file


@admin.register(Candidate)
class CandidateAdmin(admin.ModelAdmin):
    list_display = ["relative_path", "collection", "width", "height", "format", "size_bytes"]
    list_filter = ["collection", "format"]
    list_select_related = ["collection"]
    search_fields = ["relative_path", "caption", "sha256"]
    readonly_fields = ["collection", "relative_path", "width", "height", "sha256", "format", "size_bytes"]

    def has_add_permission(self, request):
        return False


@admin.register(CurationRun)
class CurationRunAdmin(admin.ModelAdmin):
    list_display = ["__str__", "status", "count_in", "count_kept", "created_by", "created_at", "page"]
    list_filter = ["status", "collection"]
    list_select_related = ["collection", "created_by"]
    readonly_fields = [
        "collection",
        "stages",
        "clip_model_path",
        "clip_model_name",
        "aesthetic_head_path",
        "status",
        "error",
        "report",
        "count_in",
        "count_kept",
        "celery_task_id",
        "created_by",
        "created_at",
        "started_at",
        "finished_at",
    ]
    actions = ["start"]

    @admin.display(description="")
    def page(self, obj):
        return format_html('<a href="{}">run page</a>', reverse("training:curation_run", args=[obj.pk]))

    def has_add_permission(self, request):
        return False

    @admin.action(description="Queue the selected curation runs (failed ones start again)")
    def start(self, request, queryset):
        _each_run(self, request, queryset, services.start_curation_run)


@admin.register(FunnelOutcome)
class FunnelOutcomeAdmin(admin.ModelAdmin):
    list_display = ["candidate", "run", "kept", "stage", "reason", "clip_score", "aesthetic_score"]
    list_filter = ["kept", "stage", "run"]
    list_select_related = ["candidate", "run"]
    readonly_fields = [
        "run",
        "candidate",
        "kept",
        "stage",
        "reason",
        "duplicate_of",
        "clip_score",
        "aesthetic_score",
        "scores",
    ]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


# --- Human curation stages: opened, closed and frozen on /curate/manage/; the admin reads and fixes wording ---------


@admin.register(CurationReview)
class CurationReviewAdmin(admin.ModelAdmin):
    list_display = [
        "name",
        "stage",
        "mode",
        "status",
        "funnel_run",
        "source_review",
        "target_size",
        "dataset",
        "created_at",
        "researcher_page",
    ]
    list_filter = ["stage", "status", "mode"]
    search_fields = ["name"]
    list_select_related = ["funnel_run", "source_review", "dataset"]
    # The candidates, their order and the outcome are the stage's record; only the wording and the lease may change.
    readonly_fields = [
        "name",
        "stage",
        "funnel_run",
        "source_review",
        "mode",
        "keep_threshold",
        "target_size",
        "status",
        "dataset",
        "created_by",
        "created_at",
        "closed_at",
    ]
    fields = [*readonly_fields[:7], "instructions", "lease_seconds", *readonly_fields[7:]]

    def has_add_permission(self, request):
        return False  # stages open from a funnel run or a generalist stage, on the researchers' page

    def has_delete_permission(self, request, obj=None):
        return False

    @admin.display(description="page")
    def researcher_page(self, obj):
        return format_html('<a href="{}">stage page</a>', reverse("curation:manage_detail", args=[obj.name]))

    def view_on_site(self, obj):
        return reverse("curation:manage_detail", args=[obj.name])


@admin.register(CurationDecision)
class CurationDecisionAdmin(ReadOnlyAdmin):
    list_display = [
        "review",
        "position",
        "candidate",
        "reviewer",
        "keep",
        "rating",
        "reasons",
        "decided_at",
        "seconds_on_task",
    ]
    list_filter = ["review", "keep"]
    search_fields = ["candidate__relative_path", "caption"]
    list_select_related = ["review", "candidate", "reviewer"]
