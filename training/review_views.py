"""Human curation stages: the reviewers' keyboard-driven pages and the researchers' pages that steer them.

Reviewers are accounts that are staff or hold the ``training.review_curation``
permission; anyone else signed in gets 403, anyone signed out goes to the
sign-in page. Researchers' pages (``manage/``) are for staff only.

The review pages are plain forms (POST with CSRF) that work without
JavaScript; static/curate.js takes them over to post in the background, show
the next candidate (preloaded) at once and record time on task. Candidate
images come only through ``candidate_image``, which checks the user may review;
they are never under a public media URL.
"""

from __future__ import annotations

import mimetypes
from functools import wraps
from pathlib import Path

from django.contrib import messages
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from django.http import FileResponse, Http404, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_POST

from . import selectors
from .models import CurationDecision, CurationReview, CurationStage, SelectionReason
from .review_forms import AestheticHeadForm, FreezeReviewForm, GeneralistReviewForm, SpecialistReviewForm
from .services import reviews as services

LOGIN_URL = "rate:login"  # the admin's sign-in refuses accounts that are not staff, and most reviewers are not
REASON_KEYS = dict(zip(SelectionReason.values, "1234"))


def reviewer_required(view):
    @wraps(view)
    def wrapper(request, *args, **kwargs):
        if not request.user.is_authenticated:
            return redirect_to_login(request.get_full_path(), reverse(LOGIN_URL))
        if not selectors.reviewer_may_review(request.user):
            raise PermissionDenied("Reviewing curation candidates needs the 'review curation' permission.")
        return view(request, *args, **kwargs)

    return wrapper


def researcher_required(view):
    @wraps(view)
    def wrapper(request, *args, **kwargs):
        if not request.user.is_authenticated:
            return redirect_to_login(request.get_full_path(), reverse("admin:login"))
        if not (request.user.is_active and request.user.is_staff):
            raise PermissionDenied("Only researchers (staff) manage curation stages.")
        return view(request, *args, **kwargs)

    return wrapper


def _review(name: str, **filters) -> CurationReview:
    return get_object_or_404(
        CurationReview.objects.select_related("funnel_run", "source_review", "dataset"), name=name, **filters
    )


def _wants_json(request) -> bool:
    return "application/json" in request.headers.get("Accept", "")


# --- Reviewers --------------------------------------------------------------------------------


def _progress_text(review: CurationReview, progress) -> str:
    text = f"{progress.decided} of {progress.total}"
    if progress.target:
        text += f" · {progress.kept} of {progress.target} selected"
    return text


def _decision_json(review: CurationReview, decision: CurationDecision) -> dict:
    return {
        "id": decision.pk,
        "action": reverse("curation:decide", args=[review.name, decision.pk]),
        "image": reverse("curation:image", args=[review.name, decision.pk]),
        "caption": decision.candidate.caption,
        "alt": f"Candidate {decision.position}: {decision.candidate.caption}",
    }


def _preload_url(review, user, decision) -> str | None:
    upcoming = selectors.peek_next_decision(review, user, decision)
    return reverse("curation:image", args=[review.name, upcoming.pk]) if upcoming else None


@never_cache
@reviewer_required
@require_GET
def review_list(request):
    return render(request, "training/review/review_list.html", {"reviews": selectors.open_reviews_for(request.user)})


@never_cache
@reviewer_required
@require_GET
def review_page(request, name: str):
    """The candidate this reviewer holds (leased on first view), or the end of the stage."""
    review = _review(name)
    decision = services.next_decision(review, request.user)
    progress = selectors.review_progress(review)
    context = {
        "review": review,
        "decision": decision,
        "progress": progress,
        "progress_text": _progress_text(review, progress),
        "rating_mode": review.stage == CurationStage.GENERALIST and review.mode == CurationReview.Mode.RATING,
        "ratings": range(1, 6),
        "reasons": [(value, label, REASON_KEYS[value]) for value, label in SelectionReason.choices],
    }
    if decision is not None:
        context["current"] = _decision_json(review, decision)
        context["preload"] = _preload_url(review, request.user, decision)
    template = "specialist" if review.stage == CurationStage.SPECIALIST else "generalist"
    return render(request, f"training/review/{template}.html", context)


def _parse_decision(post) -> dict:
    def integer(name):
        try:
            return int(post[name])
        except (KeyError, ValueError):
            return None

    def number(name):
        try:
            return float(post[name])
        except (KeyError, ValueError):
            return None

    keep = {"1": True, "0": False}.get(post.get("keep", ""))
    return {
        "keep": keep,
        "rating": integer("rating"),
        "reasons": post.getlist("reasons"),
        "caption": post.get("caption", ""),
        "seconds": number("seconds"),
    }


@reviewer_required
@require_POST
def decide(request, name: str, decision_id: int):
    """Record one decision. With JSON accepted, answers with the next candidate; otherwise back to the page."""
    review = _review(name)
    try:
        result = services.decide(review, decision_id, request.user, **_parse_decision(request.POST))
    except services.ReviewError as exc:
        if _wants_json(request):
            return JsonResponse({"error": str(exc)}, status=409)
        messages.error(request, str(exc))
        return redirect("curation:review", review.name)
    if not _wants_json(request):
        return redirect("curation:review", review.name)
    upcoming = services.next_decision(review, request.user)
    progress = selectors.review_progress(review)
    return JsonResponse(
        {
            "recorded": True,
            "duplicate": result.duplicate,
            "progress": _progress_text(review, progress),
            "next": _decision_json(review, upcoming) if upcoming else None,
            "preload": _preload_url(review, request.user, upcoming) if upcoming else None,
        }
    )


@reviewer_required
@require_GET
def candidate_image(request, name: str, decision_id: int):
    decision = get_object_or_404(
        CurationDecision.objects.select_related("candidate__collection"), pk=decision_id, review__name=name
    )
    candidate = decision.candidate
    folder = Path(candidate.collection.path).resolve()
    path = candidate.path.resolve()
    # relative_path comes from an imported folder: never follow it out of the collection.
    if not path.is_relative_to(folder) or not path.is_file():
        raise Http404("This candidate's image file is missing from its collection folder.")
    content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    response = FileResponse(path.open("rb"), content_type=content_type)
    response["Cache-Control"] = "private, max-age=3600"
    return response


# --- Researchers ------------------------------------------------------------------------------


def _manage_list_page(request, generalist_form=None, specialist_form=None, status=200):
    reviews = CurationReview.objects.select_related("funnel_run__collection", "source_review", "dataset")
    rows = [(review, selectors.review_progress(review)) for review in reviews[:200]]
    context = {
        "rows": rows,
        "generalist_form": generalist_form or GeneralistReviewForm(prefix="generalist"),
        "specialist_form": specialist_form or SpecialistReviewForm(prefix="specialist"),
    }
    return render(request, "training/review/manage_list.html", context, status=status)


@never_cache
@researcher_required
@require_GET
def manage_list(request):
    return _manage_list_page(request)


def _open_stage(request, form, stage: str):
    review = form.open(request.user)
    if review is None:
        return _manage_list_page(request, **{f"{stage}_form": form}, status=400)
    messages.success(request, f"Opened the {stage} stage {review.name} over {review.decisions.count()} candidates.")
    return redirect("curation:manage_detail", review.name)


@researcher_required
@require_POST
def open_generalist(request):
    return _open_stage(request, GeneralistReviewForm(request.POST, prefix="generalist"), "generalist")


@researcher_required
@require_POST
def open_specialist(request):
    return _open_stage(request, SpecialistReviewForm(request.POST, prefix="specialist"), "specialist")


def _manage_detail_page(request, review, freeze_form=None, head_form=None, status=200):
    context = {
        "review": review,
        "progress": selectors.review_progress(review),
        "review_url": request.build_absolute_uri(reverse("curation:review", args=[review.name])),
        "freeze_form": freeze_form or FreezeReviewForm(initial={"dataset_name": review.name}),
        "head_form": head_form or AestheticHeadForm(),
        "can_freeze": review.stage == CurationStage.SPECIALIST and review.dataset_id is None,
        "can_train_head": review.stage == CurationStage.GENERALIST and review.mode == CurationReview.Mode.RATING,
        "next_reviews": review.next_reviews.all(),
    }
    return render(request, "training/review/manage_detail.html", context, status=status)


@never_cache
@researcher_required
@require_GET
def manage_detail(request, name: str):
    return _manage_detail_page(request, _review(name))


@researcher_required
@require_POST
def close(request, name: str):
    review = services.close_review(_review(name))
    messages.success(request, f"Closed {review.name}: no more candidates are handed out. Its decisions are kept.")
    return redirect("curation:manage_detail", review.name)


@researcher_required
@require_POST
def freeze(request, name: str):
    review = _review(name)
    form = FreezeReviewForm(request.POST)
    if form.is_valid():
        try:
            dataset = services.freeze_review(
                review,
                form.cleaned_data["dataset_name"],
                description=form.cleaned_data["description"],
                created_by=request.user,
            )
        except services.ReviewError as exc:
            form.add_error(None, str(exc))
        else:
            messages.success(
                request, f"Froze the selection into the curated dataset {dataset.name} ({dataset.image_count} images)."
            )
            return redirect("curation:manage_detail", review.name)
    return _manage_detail_page(request, review, freeze_form=form, status=400)


@researcher_required
@require_POST
def train_aesthetic_head(request, name: str):
    """Runs in the request: a stage's few thousand ratings train a small MLP on CLIP embeddings."""
    review = _review(name)
    form = AestheticHeadForm(request.POST)
    if form.is_valid():
        try:
            path = services.train_aesthetic_head_from_review(review, **form.cleaned_data)
        except services.ReviewError as exc:
            form.add_error(None, str(exc))
        else:
            messages.success(request, f"Trained an aesthetic head on this stage's ratings: {path}")
            return redirect("curation:manage_detail", review.name)
    return _manage_detail_page(request, review, head_form=form, status=400)
