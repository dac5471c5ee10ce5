"""Emu's human curation stages: generalists keep or reject, specialists select with reasons and captions, freeze.

Candidates are real image files in a collection folder, with funnel outcomes
written directly (the funnel itself is tested in training/).
"""

import hashlib
from datetime import timedelta

import pytest
from django.conf import settings
from django.contrib.auth.models import Permission, User
from django.db import connection
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from PIL import Image

from conftest import all_at_once
from training import selectors
from training.datasets import load_curated_dataset
from training.models import (
    Candidate,
    CandidateCollection,
    CurationDecision,
    CurationReview,
    CurationRun,
    FunnelOutcome,
    SelectionReason,
)
from training.services import reviews as services

pytestmark = pytest.mark.django_db

CAPTIONS = [
    "a red barn in snow",
    "a lighthouse at dusk",
    "three blue birds",
    "a bowl of lemons",
    "a foggy pier",
    "an old tram",
    "a cat on a windowsill",
    "sunflowers in a field",
    "a mountain lake",
    "a neon street at night",
]


# --- Fixtures -----------------------------------------------------------------------------------


def make_funnel(folder, scores, *, status=CurationRun.Status.FINISHED, rejected=1, name="photos"):
    """A collection of real PNGs and a funnel run that kept one candidate per (aesthetic, clip) score pair."""
    folder.mkdir(parents=True, exist_ok=True)
    collection = CandidateCollection.objects.create(name=name, path=str(folder))
    run = CurationRun.objects.create(
        collection=collection, stages=[], status=status, count_in=len(scores) + rejected, count_kept=len(scores)
    )
    for i, scored in enumerate([*scores, *[None] * rejected]):
        file_name = f"img-{i:03d}.png"
        hue = (37 * i) % 256
        Image.new("RGB", (96 + 8 * (i % 3), 64), (hue, 255 - hue, (hue * 3) % 256)).save(folder / file_name)
        data = (folder / file_name).read_bytes()
        candidate = Candidate.objects.create(
            collection=collection,
            relative_path=file_name,
            caption=CAPTIONS[i % len(CAPTIONS)],
            width=96,
            height=64,
            sha256=hashlib.sha256(data).hexdigest(),
            format="PNG",
            size_bytes=len(data),
        )
        aesthetic, clip = scored if scored else (9.9, 0.9)  # a rejected candidate scores high, to show it is left out
        FunnelOutcome.objects.create(
            run=run,
            candidate=candidate,
            kept=scored is not None,
            stage="" if scored else "ResolutionStage",
            aesthetic_score=aesthetic,
            clip_score=clip,
        )
    return run


@pytest.fixture
def funnel(tmp_path):
    """Eight kept candidates with distinct aesthetic scores, and one rejected."""
    return make_funnel(tmp_path / "photos", [(5.0 + i * 0.25, 0.3) for i in range(8)])


def make_user(username, *, staff=False, reviewer=False):
    user = User.objects.create_user(username, password="pw-" + username, is_staff=staff)
    if reviewer:
        user.user_permissions.add(
            Permission.objects.get(codename="review_curation", content_type__app_label="training")
        )
    return User.objects.get(pk=user.pk)  # fresh, so the permission cache is empty


@pytest.fixture
def alice():
    return make_user("alice", reviewer=True)


@pytest.fixture
def bob():
    return make_user("bob", reviewer=True)


@pytest.fixture
def researcher():
    return make_user("researcher", staff=True)


def generalist_keeping(funnel, user, keep_positions, name="gen"):
    review = services.open_generalist_review(funnel, name)
    while (d := services.next_decision(review, user)) is not None:
        services.decide(review, d.pk, user, keep=d.position in keep_positions)
    return review


# --- Opening stages -----------------------------------------------------------------------------


def test_a_generalist_stage_reviews_kept_candidates_best_aesthetic_score_first(tmp_path):
    scores = [(5.0, 0.2), (6.5, 0.1), (5.0, 0.4), (None, 0.9), (7.0, 0.3)]
    run = make_funnel(tmp_path / "p", scores)
    review = services.open_generalist_review(run, "gen-order")
    ordered = [
        (
            d.position,
            FunnelOutcome.objects.get(run=run, candidate=d.candidate).aesthetic_score,
            FunnelOutcome.objects.get(run=run, candidate=d.candidate).clip_score,
        )
        for d in review.decisions.order_by("position")
    ]
    # Aesthetic descending; a tie broken by the CLIP score; unscored last; the rejected candidate left out.
    assert ordered == [(1, 7.0, 0.3), (2, 6.5, 0.1), (3, 5.0, 0.4), (4, 5.0, 0.2), (5, None, 0.9)]
    assert "photography magazine" in review.instructions
    assert review.stage == "generalist" and review.status == "open"


def test_a_funnel_run_not_finished_or_that_kept_nothing_is_refused(tmp_path):
    running = make_funnel(tmp_path / "a", [(5.0, 0.3)], status=CurationRun.Status.RUNNING, name="a")
    with pytest.raises(services.ReviewError, match="running, not finished"):
        services.open_generalist_review(running, "gen-a")
    empty = make_funnel(tmp_path / "b", [], rejected=2, name="b")
    with pytest.raises(services.ReviewError, match="kept no candidates"):
        services.open_generalist_review(empty, "gen-b")
    finished = make_funnel(tmp_path / "c", [(5.0, 0.3)], name="c")
    services.open_generalist_review(finished, "gen-c")
    with pytest.raises(services.ReviewError, match="already exists"):
        services.open_generalist_review(finished, "gen-c")
    with pytest.raises(services.ReviewError, match="not a valid name"):
        services.open_generalist_review(finished, "gen c!")
    assert CurationReview.objects.count() == 1


def test_a_specialist_stage_takes_what_the_generalist_kept_in_its_order(funnel, alice):
    with pytest.raises(services.ReviewError, match="kept no candidates yet"):
        services.open_specialist_review(
            services.open_generalist_review(funnel, "gen-empty"), "spec-empty", target_size=2
        )
    generalist = generalist_keeping(funnel, alice, {2, 3, 5, 8})
    kept = list(generalist.decisions.filter(keep=True).order_by("position").values_list("candidate_id", flat=True))
    specialist = services.open_specialist_review(generalist, "spec", target_size=2)
    assert list(specialist.decisions.order_by("position").values_list("candidate_id", flat=True)) == kept
    assert specialist.source_review == generalist and specialist.funnel_run == funnel and specialist.target_size == 2
    assert "composition" in specialist.instructions and "caption" in specialist.instructions
    with pytest.raises(services.ReviewError, match="follows a generalist stage"):
        services.open_specialist_review(specialist, "spec-2", target_size=1)


# --- The claim and leases -----------------------------------------------------------------------


def test_claims_go_in_review_order_and_a_double_click_gets_the_same_lease(funnel, alice, bob):
    review = services.open_generalist_review(funnel, "gen")
    first = services.next_decision(review, alice)
    assert services.next_decision(review, alice).pk == first.pk  # the double click
    assert first.position == 1 and first.reviewer_id == alice.pk
    assert services.next_decision(review, bob).position == 2
    services.decide(review, first.pk, alice, keep=True)
    assert services.next_decision(review, alice).position == 3


def test_an_expired_lease_returns_to_the_pool_and_then_belongs_to_its_new_holder(funnel, alice, bob):
    review = services.open_generalist_review(funnel, "gen")
    now = timezone.now()
    held = services.next_decision(review, alice, now=now)
    later = now + timedelta(seconds=review.lease_seconds + 1)
    taken = services.next_decision(review, bob, now=later)
    assert taken.pk == held.pk and taken.reviewer_id == bob.pk
    with pytest.raises(services.ReviewError, match="another reviewer took it"):
        services.decide(review, held.pk, alice, keep=True, now=later)
    assert services.decide(review, held.pk, bob, keep=False, now=later).decision.keep is False


def test_the_last_holder_may_still_decide_after_the_lease_ran_out_if_nobody_took_it(funnel, alice):
    review = services.open_generalist_review(funnel, "gen")
    now = timezone.now()
    held = services.next_decision(review, alice, now=now)
    late = now + timedelta(seconds=review.lease_seconds + 60)
    result = services.decide(review, held.pk, alice, keep=True, now=late)
    assert result.decision.keep is True
    # Without a time from the page, time on task runs from the lease.
    assert result.decision.seconds_on_task == pytest.approx(review.lease_seconds + 60)


def test_a_resubmitted_decision_is_idempotent_and_a_conflicting_one_is_refused(funnel, alice, bob):
    review = services.open_generalist_review(funnel, "gen")
    d = services.next_decision(review, alice)
    first = services.decide(review, d.pk, alice, keep=True, seconds=1.5)
    again = services.decide(review, d.pk, alice, keep=True, seconds=9.0)
    assert (first.duplicate, again.duplicate) == (False, True)
    assert again.decision.pk == first.decision.pk and again.decision.seconds_on_task == 1.5
    with pytest.raises(services.ReviewError, match="already decided"):
        services.decide(review, d.pk, alice, keep=False)
    with pytest.raises(services.ReviewError, match="already decided"):
        services.decide(review, d.pk, bob, keep=True)
    with pytest.raises(services.ReviewError, match="Choose keep or reject"):
        services.decide(review, services.next_decision(review, alice).pk, alice)
    assert CurationDecision.objects.filter(review=review, decided_at__isnull=False).count() == 1


def test_rating_mode_keeps_ratings_at_or_above_the_threshold(funnel, alice):
    review = services.open_generalist_review(funnel, "rated", mode="rating", keep_threshold=4)
    assert "1 (poor" in review.instructions
    kept = {}
    for rating in [1, 2, 3, 4, 5]:
        d = services.next_decision(review, alice)
        kept[rating] = services.decide(review, d.pk, alice, rating=rating).decision.keep
    assert kept == {1: False, 2: False, 3: False, 4: True, 5: True}
    d = services.next_decision(review, alice)
    for bad in [0, 6, None, True, "5"]:
        with pytest.raises(services.ReviewError, match="from 1 to 5"):
            services.decide(review, d.pk, alice, rating=bad)
    with pytest.raises(services.ReviewError, match="rating from 1 to 5"):
        services.open_generalist_review(funnel, "rated-2", mode="rating", keep_threshold=7)


def test_a_specialist_selection_needs_a_reason_and_a_caption(funnel, alice):
    specialist = services.open_specialist_review(generalist_keeping(funnel, alice, {1, 2, 3}), "spec", target_size=3)
    d = services.next_decision(specialist, alice)
    with pytest.raises(services.ReviewError, match="tick at least one"):
        services.decide(specialist, d.pk, alice, keep=True, caption="a barn")
    with pytest.raises(services.ReviewError, match="Write the caption"):
        services.decide(specialist, d.pk, alice, keep=True, reasons=["lighting"], caption="  ")
    with pytest.raises(services.ReviewError, match="Unknown reasons"):
        services.decide(specialist, d.pk, alice, keep=True, reasons=["vibes"], caption="a barn")
    result = services.decide(
        specialist, d.pk, alice, keep=True, reasons=["lighting", "composition"], caption=" a red\nbarn "
    )
    assert result.decision.reasons == ["composition", "lighting"] and result.decision.caption == "a red barn"
    # The same ticks in another order are the same decision.
    assert services.decide(
        specialist, d.pk, alice, keep=True, reasons=["composition", "lighting"], caption="a red barn"
    ).duplicate
    skipped = services.next_decision(specialist, alice)
    assert services.decide(specialist, skipped.pk, alice, keep=False, reasons=["lighting"]).decision.reasons == []


def test_the_specialist_stage_never_selects_more_than_its_target(funnel, alice, bob):
    specialist = services.open_specialist_review(
        generalist_keeping(funnel, alice, {1, 2, 3, 4, 5}), "spec", target_size=2
    )
    a, b, c = (services.next_decision(specialist, u) for u in (alice, bob, make_user("carol", reviewer=True)))
    select = {"keep": True, "reasons": [SelectionReason.COMPOSITION], "caption": "fine"}
    services.decide(specialist, a.pk, alice, **select)
    services.decide(specialist, b.pk, bob, **select)
    with pytest.raises(services.ReviewError, match="selection is full"):
        services.decide(specialist, c.pk, c.reviewer, **select)
    assert services.next_decision(specialist, alice) is None  # the stage is done at its target
    assert specialist.decisions.filter(keep=True).count() == 2
    assert selectors.review_progress(specialist).done


def test_a_closed_review_hands_out_nothing_and_refuses_decisions(funnel, alice):
    review = services.open_generalist_review(funnel, "gen")
    d = services.next_decision(review, alice)
    services.close_review(review)
    assert services.next_decision(review, alice) is None
    with pytest.raises(services.ReviewError, match="closed"):
        services.decide(review, d.pk, alice, keep=True)


def test_progress_counts_decisions_kept_and_each_reviewer(funnel, alice, bob):
    review = services.open_generalist_review(funnel, "gen")
    for user, keep, seconds in [(alice, True, 2.0), (alice, False, 4.0), (alice, True, 6.0), (bob, True, 1.0)]:
        services.decide(review, services.next_decision(review, user).pk, user, keep=keep, seconds=seconds)
    services.next_decision(review, bob)
    progress = selectors.review_progress(review)
    assert (progress.total, progress.decided, progress.kept, progress.leased) == (8, 4, 3, 1)
    assert progress.median_seconds == 3.0
    assert [(r.reviewer, r.decided, r.kept, r.median_seconds) for r in progress.reviewers] == [
        ("alice", 3, 2, 4.0),
        ("bob", 1, 1, 1.0),
    ]


# --- Freezing ------------------------------------------------------------------------------------


@pytest.fixture
def training_dir(settings, tmp_path):
    settings.NEEDLE_TRAINING_DIR = tmp_path / "training"
    return settings.NEEDLE_TRAINING_DIR


def test_freeze_writes_the_selection_with_corrected_captions_and_is_idempotent(funnel, alice, researcher, training_dir):
    generalist = generalist_keeping(funnel, alice, {1, 2, 3, 4})
    with pytest.raises(services.ReviewError, match="generalist stage"):
        services.freeze_review(generalist, "nope")
    specialist = services.open_specialist_review(generalist, "spec", target_size=10)
    with pytest.raises(services.ReviewError, match="no selected images"):
        services.freeze_review(specialist, "nope")
    written = {}
    while (d := services.next_decision(specialist, alice)) is not None:
        if d.position == 2:
            services.decide(specialist, d.pk, alice, keep=False)
            continue
        written[d.candidate.relative_path] = f"corrected: {d.candidate.caption} (#{d.position})"
        services.decide(
            specialist, d.pk, alice, keep=True, reasons=["colour_contrast"], caption=written[d.candidate.relative_path]
        )

    dataset = services.freeze_review(specialist, "emu-mini", created_by=researcher)
    specialist.refresh_from_db()
    assert specialist.dataset == dataset and specialist.status == "closed" and specialist.closed_at
    assert dataset.image_count == 3 and dataset.created_by == researcher
    frozen = load_curated_dataset(dataset.path)
    assert frozen.content_hash == dataset.content_hash
    assert sorted(i.caption for i in frozen.images) == sorted(written.values())
    assert services.freeze_review(specialist, "another-name") == dataset  # idempotent
    assert sorted(p.name for p in (training_dir / "datasets").iterdir()) == ["emu-mini"]


def test_an_aesthetic_head_trains_from_a_rating_stage(funnel, alice, researcher, tmp_path):
    from training.clip_scoring import save_tiny_clip

    review = services.open_generalist_review(funnel, "rated", mode="rating")
    with pytest.raises(services.ReviewError, match="at least a few"):
        services.train_aesthetic_head_from_review(review, clip_model_path="x")
    for rating in [1, 5, 2, 4, 3]:
        services.decide(review, services.next_decision(review, alice).pk, alice, rating=rating)
    with pytest.raises(services.ReviewError, match="rating mode"):
        services.train_aesthetic_head_from_review(services.open_generalist_review(funnel, "kr"), clip_model_path="x")
    clip_dir = save_tiny_clip(tmp_path / "tiny-clip", seed=0)
    path = services.train_aesthetic_head_from_review(
        review, clip_model_path=str(clip_dir), out_path=tmp_path / "head.pth"
    )
    assert path.is_file()


# --- Pages and permissions ----------------------------------------------------------------------


def client_for(user):
    client = Client()
    if user is not None:
        client.force_login(user)
    return client


def test_reviewer_pages_need_the_permission_and_researcher_pages_need_staff(funnel, alice, researcher):
    review = services.open_generalist_review(funnel, "gen")
    decision = review.decisions.get(position=1)
    plain = make_user("plain")
    reviewer_urls = [
        reverse("curation:review_list"),
        reverse("curation:review", args=[review.name]),
        reverse("curation:image", args=[review.name, decision.pk]),
    ]
    researcher_urls = [reverse("curation:manage_list"), reverse("curation:manage_detail", args=[review.name])]
    for url in reviewer_urls + researcher_urls:
        response = client_for(None).get(url)
        assert response.status_code == 302 and "login" in response["Location"], url
    for url in reviewer_urls + researcher_urls:
        assert client_for(plain).get(url).status_code == 403, url
    for url in reviewer_urls:
        assert client_for(alice).get(url).status_code == 200, url
        assert client_for(researcher).get(url).status_code == 200, url
    for url in researcher_urls:
        assert client_for(alice).get(url).status_code == 403, url
        assert client_for(researcher).get(url).status_code == 200, url
    assert client_for(alice).post(reverse("curation:close", args=[review.name])).status_code == 403
    assert (
        client_for(plain).post(reverse("curation:decide", args=[review.name, decision.pk]), {"keep": "1"}).status_code
        == 403
    )


def test_candidate_images_come_from_the_collection_folder_only_through_the_review(funnel, alice):
    review = services.open_generalist_review(funnel, "gen")
    decision = review.decisions.get(position=1)
    response = client_for(alice).get(reverse("curation:image", args=[review.name, decision.pk]))
    assert response["Content-Type"] == "image/png" and "private" in response["Cache-Control"]
    assert b"".join(response.streaming_content) == decision.candidate.path.read_bytes()
    assert client_for(alice).get(reverse("curation:image", args=["other", decision.pk])).status_code == 404
    Candidate.objects.filter(pk=decision.candidate_id).update(relative_path="../../etc/passwd")
    assert client_for(alice).get(reverse("curation:image", args=[review.name, decision.pk])).status_code == 404


def test_the_generalist_page_works_as_a_plain_form_without_javascript(funnel, alice):
    review = services.open_generalist_review(funnel, "gen")
    client = client_for(alice)
    page = client.get(reverse("curation:review", args=[review.name]))
    first = services.next_decision(review, alice)
    html = page.content.decode()
    assert first.candidate.caption in html and "1 of 8" not in html and "0 of 8" in html
    assert reverse("curation:decide", args=[review.name, first.pk]) in html
    response = client.post(reverse("curation:decide", args=[review.name, first.pk]), {"keep": "1", "seconds": ""})
    assert response.status_code == 302 and response["Location"] == reverse("curation:review", args=[review.name])
    assert client.get(response["Location"]).content.decode().count("1 of 8") == 1
    first.refresh_from_db()
    assert first.keep is True and first.seconds_on_task is not None
    # A resubmission is harmless; a different answer is refused with the reason on the page.
    client.post(reverse("curation:decide", args=[review.name, first.pk]), {"keep": "1"})
    refused = client.post(reverse("curation:decide", args=[review.name, first.pk]), {"keep": "0"}, follow=True)
    assert "already decided" in refused.content.decode()
    assert review.decisions.filter(decided_at__isnull=False).count() == 1


def test_the_json_answer_carries_the_next_candidate_and_a_refusal_says_why(funnel, alice):
    specialist = services.open_specialist_review(generalist_keeping(funnel, alice, {1, 2, 3}), "spec", target_size=1)
    client = client_for(alice)
    client.get(reverse("curation:review", args=[specialist.name]))
    d = services.next_decision(specialist, alice)
    url = reverse("curation:decide", args=[specialist.name, d.pk])
    refused = client.post(url, {"keep": "1", "caption": "x"}, HTTP_ACCEPT="application/json")
    assert refused.status_code == 409 and "at least one" in refused.json()["error"]
    ok = client.post(
        url,
        {"keep": "1", "caption": "a barn", "reasons": ["lighting"], "seconds": "3.5"},
        HTTP_ACCEPT="application/json",
    )
    body = ok.json()
    assert body["recorded"] and body["next"] is None  # the target of 1 is reached
    assert body["progress"] == "1 of 3 · 1 of 1 selected"
    d.refresh_from_db()
    assert (d.caption, d.reasons, d.seconds_on_task) == ("a barn", ["lighting"], 3.5)
    assert (
        "final selection is complete" in client.get(reverse("curation:review", args=[specialist.name])).content.decode()
    )


def test_researchers_open_both_stages_and_freeze_from_their_pages(funnel, alice, researcher, training_dir):
    client = client_for(researcher)
    response = client.post(
        reverse("curation:open_generalist"),
        {
            "generalist-funnel_run": funnel.pk,
            "generalist-name": "gen",
            "generalist-mode": "keep_reject",
            "generalist-keep_threshold": 4,
            "generalist-lease_seconds": 300,
            "generalist-instructions": "",
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    generalist = CurationReview.objects.get(name="gen")
    refused = client.post(
        reverse("curation:open_specialist"),
        {
            "specialist-source_review": generalist.pk,
            "specialist-name": "spec",
            "specialist-target_size": 2,
            "specialist-lease_seconds": 600,
        },
    )
    assert refused.status_code == 400 and "kept no candidates yet" in refused.content.decode()
    while (d := services.next_decision(generalist, alice)) is not None:
        services.decide(generalist, d.pk, alice, keep=d.position <= 3)
    client.post(
        reverse("curation:open_specialist"),
        {
            "specialist-source_review": generalist.pk,
            "specialist-name": "spec",
            "specialist-target_size": 2,
            "specialist-lease_seconds": 600,
        },
    )
    specialist = CurationReview.objects.get(name="spec")
    while (d := services.next_decision(specialist, alice)) is not None:
        services.decide(
            specialist, d.pk, alice, keep=True, reasons=["subject_background"], caption=f"caption {d.position}"
        )
    detail = client.get(reverse("curation:manage_detail", args=["spec"])).content.decode()
    assert "2 of the target 2" in detail and "alice" in detail
    frozen = client.post(reverse("curation:freeze", args=["spec"]), {"dataset_name": "emu-pages"}, follow=True)
    assert "Froze the selection into the curated dataset emu-pages (2 images)" in frozen.content.decode()
    assert CurationReview.objects.get(name="spec").dataset.name == "emu-pages"


def test_the_admin_lists_stages_and_decisions_read_mostly(funnel, alice):
    review = services.open_generalist_review(funnel, "gen")
    services.decide(review, services.next_decision(review, alice).pk, alice, keep=True)
    admin = User.objects.create_superuser("root", password="pw-root")
    client = client_for(admin)
    for name in ["curationreview", "curationdecision"]:
        assert client.get(reverse(f"admin:training_{name}_changelist")).status_code == 200
    assert client.get(reverse("admin:training_curationreview_change", args=[review.pk])).status_code == 200
    assert client.get(reverse("admin:training_curationreview_add")).status_code == 403


# --- Under real concurrency (PostgreSQL) ----------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_concurrent_reviewers_never_get_the_same_candidate(tmp_path):
    if connection.vendor != "postgresql":
        pytest.skip("row locks with SKIP LOCKED are a PostgreSQL feature; SQLite serialises writers instead")
    run = make_funnel(tmp_path / "many", [(float(i), 0.5) for i in range(40)])
    review = services.open_generalist_review(run, "crowd")
    reviewers = [make_user(f"r{i}", reviewer=True) for i in range(6)]
    claimed: dict[int, list[int]] = {u.pk: [] for u in reviewers}

    def work(user):
        while (d := services.next_decision(review, user)) is not None:
            claimed[user.pk].append(d.pk)
            services.decide(review, d.pk, user, keep=d.pk % 2 == 0)
            if d.pk % 5 == 0:  # a double submit
                assert services.decide(review, d.pk, user, keep=d.pk % 2 == 0).duplicate

    all_at_once(work, reviewers, timeout=120)
    everything = [pk for pks in claimed.values() for pk in pks]
    assert len(everything) == len(set(everything)) == 40, "a candidate was handed to two reviewers"
    decided = CurationDecision.objects.filter(review=review)
    assert decided.filter(decided_at__isnull=True).count() == 0
    assert all(decided.get(pk=pk).reviewer_id == uid for uid, pks in claimed.items() for pk in pks)


# --- In the browser ------------------------------------------------------------------------------


def screenshots_dir():
    path = settings.VAR_DIR / "test" / "screenshots"
    path.mkdir(parents=True, exist_ok=True)
    return path


def signed_in(browser, live_server, user, **context_options):
    client = client_for(user)
    context = browser.new_context(**context_options)
    context.add_cookies(
        [
            {
                "name": settings.SESSION_COOKIE_NAME,
                "value": client.cookies[settings.SESSION_COOKIE_NAME].value,
                "url": live_server.url,
            }
        ]
    )
    return context


def wait_for_candidate(page, number):
    page.wait_for_function(
        "n => { const r = document.getElementById('curate'); return r && r.dataset.state === 'ready' && r.dataset.shown === String(n); }",
        arg=number,
        timeout=15_000,
    )


@pytest.mark.django_db(transaction=True)
def test_a_reviewer_keeps_and_rejects_five_candidates_by_keyboard(live_server, browser, tmp_path, settings):
    settings.NEEDLE_TRAINING_DIR = tmp_path / "training"
    run = make_funnel(tmp_path / "photos", [(5.0 + i * 0.25, 0.3) for i in range(8)])
    review = services.open_generalist_review(run, "gen-browser")
    reviewer = make_user("kim", reviewer=True)
    staff = make_user("lead", staff=True)
    context = signed_in(browser, live_server, reviewer, viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.goto(f"{live_server.url}/curate/")
    page.screenshot(path=str(screenshots_dir() / "curate-list-desktop.png"))
    page.click(f"text={review.name}")
    keys = ["k", "ArrowLeft", "ArrowRight", "r", "K"]
    for number, key in enumerate(keys, start=1):
        wait_for_candidate(page, number)
        assert page.locator("#curate-progress").inner_text() == f"{number - 1} of 8"
        # The candidate's image loads after its number shows; on a busy machine that takes a moment.
        page.wait_for_function(
            "() => { const img = document.querySelector('#curate-image'); return img.complete && img.naturalWidth > 0; }",
            timeout=15_000,
        )
        if number == 1:
            page.screenshot(path=str(screenshots_dir() / "curate-generalist-desktop.png"))
            page.keyboard.press(key)
            page.keyboard.press(key)  # a double press decides once
        else:
            page.keyboard.press(key)
    wait_for_candidate(page, 6)
    assert page.locator("#curate-progress").inner_text() == "5 of 8"
    decided = review.decisions.filter(decided_at__isnull=False).order_by("position")
    assert [d.keep for d in decided] == [True, False, True, False, True]
    assert all(d.reviewer_id == reviewer.pk and d.seconds_on_task > 0 for d in decided)
    context.close()

    phone = signed_in(
        browser,
        live_server,
        reviewer,
        viewport={"width": 390, "height": 844},
        device_scale_factor=2,
        is_mobile=True,
        has_touch=True,
    )
    page = phone.new_page()
    page.goto(f"{live_server.url}/curate/review/{review.name}/")
    wait_for_candidate(page, 1)
    for button in ("Reject", "Keep"):
        box = page.get_by_role("button", name=button).bounding_box()
        assert box["height"] >= 44 and box["y"] + box["height"] <= 844, "buttons are tap-sized and on screen"
    page.screenshot(path=str(screenshots_dir() / "curate-generalist-phone.png"))
    page.get_by_role("button", name="Keep").tap()
    wait_for_candidate(page, 2)
    assert review.decisions.filter(decided_at__isnull=False).count() == 6

    # Specialist, then the researcher's page, for the screenshots.
    specialist = services.open_specialist_review(review, "spec-browser", target_size=2)
    page.goto(f"{live_server.url}/curate/review/{specialist.name}/")
    wait_for_candidate(page, 1)
    page.screenshot(path=str(screenshots_dir() / "curate-specialist-phone.png"), full_page=True)
    phone.close()
    context = signed_in(browser, live_server, reviewer, viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.goto(f"{live_server.url}/curate/review/{specialist.name}/")
    wait_for_candidate(page, 1)
    page.keyboard.press("Enter")  # no reason ticked: refused on the page
    assert "at least one reason" in page.locator("#curate-message").inner_text()
    page.keyboard.press("1")
    page.keyboard.press("3")
    page.fill("#curate-caption-input", "a red barn in fresh snow under a pale sky")
    page.screenshot(path=str(screenshots_dir() / "curate-specialist-desktop.png"))
    page.keyboard.press("Enter")  # in the caption, Enter selects
    wait_for_candidate(page, 2)
    page.keyboard.press("x")
    wait_for_candidate(page, 3)
    chosen = specialist.decisions.get(keep=True)
    assert (chosen.reasons, chosen.caption) == (
        ["composition", "colour_contrast"],
        "a red barn in fresh snow under a pale sky",
    )
    assert specialist.decisions.filter(keep=False).count() == 1
    context.close()

    context = signed_in(browser, live_server, staff, viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.goto(f"{live_server.url}/curate/manage/{review.name}/")
    page.screenshot(path=str(screenshots_dir() / "curate-manage-detail-desktop.png"), full_page=True)
    page.goto(f"{live_server.url}/curate/manage/")
    page.screenshot(path=str(screenshots_dir() / "curate-manage-list-desktop.png"), full_page=True)
    context.close()
