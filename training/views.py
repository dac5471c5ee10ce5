"""Quality-tuning pages (staff only): runs, a new run, a run's live progress and checkpoints, curated datasets.

Images and logs of a run are served from its run directory through these
staff-only views; nothing of a run is under a public media URL.
"""

from django.contrib import messages
from django.contrib.admin.views.decorators import staff_member_required
from django.http import FileResponse, Http404, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST, require_safe

from core.forms import errors_as_messages, saved
from generation.models import PromptSet

from . import selectors, services
from .forms import (
    CheckpointCampaignForm,
    CompareWithBaseForm,
    DatasetImportForm,
    QualityTuningRunForm,
    RegisterCheckpointForm,
)
from .models import CuratedDataset, QualityTuningRun, RunCheckpoint
from .win_rate_plot import draw_win_rate_curve


def _run(pk) -> QualityTuningRun:
    return get_object_or_404(QualityTuningRun.objects.select_related("base_model", "dataset", "created_by"), pk=pk)


@staff_member_required
def run_list(request):
    runs = QualityTuningRun.objects.select_related("base_model", "dataset")[:200]
    datasets = CuratedDataset.objects.all()[:200]
    return render(request, "training/run_list.html", {"runs": runs, "datasets": datasets})


@staff_member_required
def run_new(request):
    initial = {}
    if "base_model" in request.GET:
        initial["base_model"] = request.GET["base_model"]
    form = QualityTuningRunForm(request.POST or None, initial=initial)
    run = saved(request, form, form.create, request.user)
    if run is not None:
        queued = " and queued it on the training queue" if run.celery_task_id else ""
        messages.success(request, f"Created run {run.pk}{queued}.")
        return redirect("training:run_detail", run.pk)
    return render(request, "training/run_form.html", {"form": form})


@staff_member_required
def run_detail(request, pk):
    run = _run(pk)
    checkpoints = list(run.checkpoints.select_related("registered_model"))
    progress = selectors.run_progress(run)
    # The template reads the new per-checkpoint numbers from the same rows as progress.json.
    rows = {row["step"]: row for row in progress["checkpoints"]}
    for cp in checkpoints:
        cp.row = rows.get(cp.step, {})
    context = {
        "run": run,
        "progress": progress,
        "campaign_form": CheckpointCampaignForm(),
        "config": selectors.config_rows(run),
        "checkpoints": checkpoints,
        "can_start": selectors.can_start(run),
        "can_cancel": run.is_active,
        "log_tail": selectors.trainer_log_tail(run, 4000),
        "prompt_sets": PromptSet.objects.all(),
    }
    return render(request, "training/run_detail.html", context)


@staff_member_required
@require_safe
def run_progress(request, pk):
    return JsonResponse(selectors.run_progress(_run(pk)))


@staff_member_required
@require_POST
def run_cancel(request, pk):
    try:
        run = services.cancel_run(_run(pk))
        messages.success(
            request,
            "Cancelled." if run.status == "cancelled" else "Cancelling: the trainer saves a checkpoint and stops.",
        )
    except services.TrainingError as exc:
        messages.error(request, str(exc))
    return redirect("training:run_detail", pk)


@staff_member_required
@require_POST
def run_start(request, pk):
    try:
        run = _run(pk)
        resumed = run.status != "queued"
        services.start_run(run)
        messages.success(request, "Queued again: the run resumes from its newest checkpoint." if resumed else "Queued.")
    except services.TrainingError as exc:
        messages.error(request, str(exc))
    return redirect("training:run_detail", pk)


def _file_response(path, content_type):
    if path is None:
        raise Http404("not drawn yet")
    try:
        response = FileResponse(open(path, "rb"), content_type=content_type)
    except FileNotFoundError:
        raise Http404("not drawn yet") from None
    response["Cache-Control"] = "private, no-cache"  # redrawn as the run goes on
    return response


@staff_member_required
def loss_curve(request, pk):
    return _file_response(selectors.run_image(_run(pk), "loss"), "image/png")


@staff_member_required
def validation_grid(request, pk):
    return _file_response(selectors.run_image(_run(pk), "grid"), "image/png")


@staff_member_required
def trainer_log(request, pk):
    response = HttpResponse(selectors.trainer_log_tail(_run(pk), 200_000), content_type="text/plain; charset=utf-8")
    response["Cache-Control"] = "private, no-cache"
    return response


def _checkpoint(pk, step) -> RunCheckpoint:
    return get_object_or_404(
        RunCheckpoint.objects.select_related("run__base_model", "run__dataset"), run_id=pk, step=step
    )


@staff_member_required
@require_POST
def checkpoint_register(request, pk, step):
    checkpoint = _checkpoint(pk, step)
    form = RegisterCheckpointForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Give the model a valid name: " + " ".join(form.errors.get("name", [])))
        return redirect("training:run_detail", pk)
    try:
        model = services.register_checkpoint(checkpoint, form.cleaned_data["name"], registered_by=request.user)
        messages.success(request, f"Step {step} is registered as the model {model.name} (parent {model.parent.name}).")
    except services.TrainingError as exc:
        messages.error(request, str(exc))
    return redirect("training:run_detail", pk)


@staff_member_required
@require_POST
def checkpoint_compare(request, pk, step):
    checkpoint = _checkpoint(pk, step)
    form = CompareWithBaseForm(request.POST)
    if not form.is_valid():
        errors_as_messages(request, form, named=True)
        return redirect("training:run_detail", pk)
    d = form.cleaned_data
    try:
        campaign = services.create_tuned_vs_base_campaign(
            checkpoint, d["prompt_set"], d["seeds"], d["name"] or None, created_by=request.user
        )
    except services.TrainingError as exc:
        messages.error(request, str(exc))
        return redirect("training:run_detail", pk)
    messages.success(request, f"Created the draft campaign {campaign.name} (both criteria). Check it, then launch it.")
    return redirect("campaigns:detail", campaign.pk)


@staff_member_required
@require_POST
def checkpoint_campaign_create(request, pk):
    run = _run(pk)
    form = CheckpointCampaignForm(request.POST)
    if not form.is_valid():
        errors_as_messages(request, form, named=True)
        return redirect("training:run_detail", pk)
    d = form.cleaned_data
    existing = run.checkpoint_campaign_id
    try:
        campaign = services.create_checkpoint_campaign(
            run,
            prompt_set=d["prompt_set"],
            seeds=d["seeds"],
            steps=d["steps"] or None,
            new=d["new"],
            created_by=request.user,
        )
    except services.TrainingError as exc:
        messages.error(request, str(exc))
        return redirect("training:run_detail", pk)
    if campaign.pk == existing:
        messages.info(
            request, f"The run already has its checkpoint campaign {campaign.name}; tick 'a new one' to make another."
        )
    else:
        messages.success(
            request,
            f"Created the draft campaign {campaign.name}: every checkpoint vs {run.base_model.name}, "
            "visual appeal. Check it, then launch it.",
        )
    return redirect("campaigns:detail", campaign.pk)


@staff_member_required
@require_POST
def score_validation(request, pk):
    try:
        scored = services.score_validation_images(_run(pk), rescore=True)
        messages.success(request, f"Scored the validation images of {len(scored)} checkpoints.")
    except services.TrainingError as exc:
        messages.error(request, str(exc))
    return redirect("training:run_detail", pk)


@staff_member_required
def win_rate_curve(request, pk):
    run = _run(pk)
    if run.checkpoint_campaign_id is None:
        raise Http404("no checkpoint campaign")
    response = HttpResponse(draw_win_rate_curve(selectors.checkpoint_win_rates(run)), content_type="image/png")
    response["Cache-Control"] = "private, no-cache"  # changes with every vote
    return response


@staff_member_required
def dataset_list(request):
    form = DatasetImportForm(request.POST or None)
    dataset = saved(request, form, form.save, request.user)
    if dataset is not None:
        messages.success(
            request, f"Froze {dataset.name}: {dataset.image_count} images, hash {dataset.content_hash[:12]}."
        )
        return redirect("training:dataset_list")
    return render(request, "training/dataset_list.html", {"form": form, "datasets": CuratedDataset.objects.all()})
