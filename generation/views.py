"""Researcher dashboard for generation: batch progress and side-by-side pairs (staff only)."""

import math

from django.contrib import messages
from django.contrib.admin.views.decorators import staff_member_required
from django.http import FileResponse, Http404, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST, require_safe

from . import selectors, services
from .models import GeneratedImage, GenerationBatch


def _batch_summary(batch):
    progress = selectors.batch_progress(batch)
    status = selectors.batch_status(batch, progress)
    return {
        "id": batch.pk,
        "name": str(batch),
        "status": status,
        "stalled": selectors.stalled_message(batch, progress) if status == "stalled" else "",
        "done": progress.done,
        "total": progress.total,
        "percent": progress.percent,
        "error": batch.error,
        "total_keys": batch.prompt_set.prompts.count() * len(batch.seeds),
        "per_model": [{"model": m.model_name, "done": m.done, "total": m.total} for m in progress.per_model],
    }


@staff_member_required
def batch_list(request):
    batches = GenerationBatch.objects.select_related("prompt_set").order_by("-created_at")[:100]
    rows = [(batch, _batch_summary(batch)) for batch in batches]
    return render(request, "generation/batch_list.html", {"rows": rows})


@staff_member_required
def batch_detail(request, pk):
    batch = get_object_or_404(GenerationBatch.objects.select_related("prompt_set"), pk=pk)
    summary = _batch_summary(batch)
    pages = max(1, math.ceil(summary["total_keys"] / selectors.PAIRS_PER_PAGE))
    page = request.GET.get("page", "1")
    page = min(int(page), pages) if page.isdigit() and int(page) >= 1 else 1
    batch_models, pairs = selectors.image_pairs(batch, page=page, per_page=selectors.PAIRS_PER_PAGE)
    first = (page - 1) * selectors.PAIRS_PER_PAGE + 1
    return render(
        request,
        "generation/batch_detail.html",
        {
            "batch": batch,
            "summary": summary,
            "batch_models": batch_models,
            "pairs": pairs,
            "page": page,
            "pages": pages,
            "first": first,
            "last": first + len(pairs) - 1,
            "previous_page": page - 1 if page > 1 else None,
            "next_page": page + 1 if page < pages else None,
        },
    )


@staff_member_required
@require_safe
def progress_json(request):
    ids = [int(i) for i in request.GET.getlist("id") if i.isdigit()][:100]
    batches = (
        GenerationBatch.objects.filter(pk__in=ids) if ids else GenerationBatch.objects.order_by("-created_at")[:100]
    )
    return JsonResponse({"batches": [_batch_summary(b) for b in batches]})


@staff_member_required
@require_POST
def batch_dispatch(request, pk):
    batch = get_object_or_404(GenerationBatch, pk=pk)
    sent = services.dispatch_batch(batch)
    messages.success(request, f"Queued {sent} chunk task(s)." if sent else "Nothing to do: every image exists.")
    return redirect("generation:batch_detail", pk)


@staff_member_required
def image(request, sha256):
    # Images are not under a public URL: only staff see them here; raters get
    # per-assignment opaque URLs from the annotation app.
    found = GeneratedImage.objects.filter(sha256=sha256).first()
    if found is None:
        raise Http404("no such image")
    try:
        handle = found.file.open("rb")
    except FileNotFoundError:
        raise Http404("image file missing from storage") from None
    response = FileResponse(handle, content_type="image/png")
    response["Cache-Control"] = "private, max-age=31536000, immutable"
    return response
