"""Curation pages (staff only): candidate collections, automatic funnel runs, their report, sheets and outcomes.

Contact sheets show candidate images: they are served here, from the run's folder under NEEDLE_TRAINING_DIR,
to staff only, never under MEDIA_URL.
"""

from django.contrib import messages
from django.contrib.admin.views.decorators import staff_member_required
from django.core.paginator import Paginator
from django.http import FileResponse, Http404, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from core.forms import saved

from . import selectors, services
from .curation_forms import CollectionImportForm, CurationRunForm
from .models import CandidateCollection, CurationRun

OUTCOMES_PER_PAGE = 100


def _curation_run(pk) -> CurationRun:
    return get_object_or_404(CurationRun.objects.select_related("collection", "created_by"), pk=pk)


@staff_member_required
def collection_list(request):
    form = CollectionImportForm(request.POST or None)
    collection = saved(request, form, form.save, request.user)
    if collection is not None:
        problems = f", {len(collection.problems)} problem(s) reported" if collection.problems else ""
        messages.success(request, f"Imported {collection.candidate_count} candidates into {collection.name}{problems}.")
        return redirect("training:curation_collection", collection.pk)
    collections = CandidateCollection.objects.all()[:200]
    runs = CurationRun.objects.select_related("collection")[:50]
    return render(
        request, "training/curation_collections.html", {"form": form, "collections": collections, "runs": runs}
    )


@staff_member_required
def collection_detail(request, pk):
    collection = get_object_or_404(CandidateCollection, pk=pk)
    context = {"collection": collection, "runs": collection.curation_runs.all(), "form": CurationRunForm()}
    return render(request, "training/curation_collection.html", context)


@staff_member_required
def curation_run_new(request, pk):
    collection = get_object_or_404(CandidateCollection, pk=pk)
    form = CurationRunForm(request.POST or None)
    run = saved(request, form, form.create, collection, request.user)
    if run is not None:
        messages.success(request, f"Queued curation run {run.pk} on the training queue.")
        return redirect("training:curation_run", run.pk)
    return render(request, "training/curation_run_form.html", {"collection": collection, "form": form})


@staff_member_required
def curation_run_detail(request, pk):
    run = _curation_run(pk)
    outcomes = run.outcomes.select_related("candidate")
    verdict = request.GET.get("verdict", "")
    if verdict == "kept":
        outcomes = outcomes.filter(kept=True)
    elif verdict == "rejected":
        outcomes = outcomes.filter(kept=False)
    page = Paginator(outcomes, OUTCOMES_PER_PAGE).get_page(request.GET.get("page"))
    context = {
        "run": run,
        "stages": selectors.stage_rows(run),
        "histograms": selectors.histogram_bars(run),
        "page": page,
        "verdict": verdict,
        "active": run.status in (CurationRun.Status.QUEUED, CurationRun.Status.RUNNING),
    }
    return render(request, "training/curation_run_detail.html", context)


@staff_member_required
@require_POST
def curation_run_start(request, pk):
    try:
        services.start_curation_run(_curation_run(pk))
        messages.success(request, "Queued.")
    except services.TrainingError as exc:
        messages.error(request, str(exc))
    return redirect("training:curation_run", pk)


@staff_member_required
def curation_sheet(request, pk, which):
    if which not in ("kept", "rejected"):
        raise Http404("no such sheet")
    try:
        path = services.curation_contact_sheet(_curation_run(pk), kept=which == "kept")
    except services.TrainingError as exc:
        raise Http404(str(exc)) from None
    response = FileResponse(open(path, "rb"), content_type="image/png")
    response["Cache-Control"] = "private, no-cache"
    return response


@staff_member_required
def curation_outcomes_csv(request, pk):
    run = _curation_run(pk)
    response = HttpResponse(content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="curation-{run.pk}-{run.collection.name}.csv"'
    selectors.write_outcomes_csv(run, response)
    return response
