"""``manage.py curation_stage``: the human curation stages from a terminal, with the services' refusals as CommandErrors.

Reviewers still decide through the services (as the pages do); the command
opens, watches, closes, freezes and exports the stages around them.
"""

import csv
import io

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from training.aesthetic import AestheticHead
from training.datasets import load_curated_dataset
from training.models import CuratedDataset, CurationReview, CurationRun
from training.services import reviews as services
from training.tests.test_review_stages import make_funnel, make_user

pytestmark = pytest.mark.django_db


def stage(*args) -> str:
    out = io.StringIO()
    call_command("curation_stage", *map(str, args), stdout=out)
    return out.getvalue()


@pytest.fixture
def training_dir(settings, tmp_path):
    settings.NEEDLE_TRAINING_DIR = tmp_path / "training"
    return settings.NEEDLE_TRAINING_DIR


@pytest.fixture
def funnel(tmp_path):
    """Six kept candidates (best aesthetic score last, so reviewed first) and one rejected."""
    return make_funnel(tmp_path / "photos", [(5.0 + i * 0.25, 0.3) for i in range(6)])


def test_a_researcher_runs_both_stages_from_the_terminal_and_freezes_the_selection(funnel, training_dir, tmp_path):
    alice, bob = make_user("alice", reviewer=True), make_user("bob", reviewer=True)

    out = stage("open-generalist", "gen", "--funnel-run", funnel.pk)
    assert (
        out.strip() == f"Opened the generalist stage gen (keep or reject) over 6 candidates of funnel run {funnel.pk}."
    )
    generalist = CurationReview.objects.get(name="gen")
    assert (generalist.stage, generalist.mode, generalist.lease_seconds) == ("generalist", "keep_reject", 300)

    # Alice rejects position 2, Bob keeps the rest, each with a known time on task.
    for who, seconds in [(alice, 2.0)] * 3 + [(bob, 4.0)] * 3:
        d = services.next_decision(generalist, who)
        services.decide(generalist, d.pk, who, keep=d.position != 2, seconds=seconds)
    assert services.next_decision(generalist, alice) is None
    status = stage("status", "gen")
    assert "gen: generalist stage, open" in status
    assert "decided 6/6 (100%), kept 5, leased now 0, median 3.0 s per candidate (done)" in status
    assert "  alice: decided 3, kept 2, median 2.0 s" in status
    assert "  bob: decided 3, kept 3, median 4.0 s" in status

    out = stage("open-specialist", "final", "--from", "gen", "--target-size", 2)
    assert out.strip() == "Opened the specialist stage final over 5 candidates kept by gen; it stops at 2 selected."
    specialist = CurationReview.objects.get(name="final")
    assert specialist.source_review == generalist and specialist.target_size == 2

    # Skip the first; select the next two with reasons and corrected captions, which reaches the target.
    written = {}
    while (d := services.next_decision(specialist, alice)) is not None:
        if d.position == 1:
            services.decide(specialist, d.pk, alice, keep=False, seconds=1.5)
            continue
        written[d.position] = f"corrected caption {d.position}"
        services.decide(
            specialist,
            d.pk,
            alice,
            keep=True,
            reasons=["lighting", "composition"],
            caption=written[d.position],
            seconds=9.0,
        )
    assert sorted(written) == [2, 3]
    assert "decided 3/5 (60%), selected 2 of 2, leased now 0, median 9.0 s per candidate (done)" in stage(
        "status", "final"
    )

    csv_path = tmp_path / "decisions.csv"
    assert stage("export", "final", "--out", csv_path).strip() == f"Wrote 5 decisions of final to {csv_path}."
    rows = list(csv.DictReader(csv_path.open(encoding="utf-8", newline="")))
    assert [r["position"] for r in rows] == ["1", "2", "3", "4", "5"]
    skipped, selected, undecided = rows[0], rows[1], rows[4]
    assert (skipped["decided"], skipped["keep"], skipped["reasons"], skipped["corrected_caption"]) == (
        "True",
        "False",
        "",
        "",
    )
    assert (
        selected["keep"],
        selected["reasons"],
        selected["corrected_caption"],
        selected["reviewer"],
        selected["seconds_on_task"],
    ) == ("True", "composition;lighting", "corrected caption 2", "alice", "9.0")
    decision = specialist.decisions.get(position=2)
    assert (
        selected["candidate_path"] == str(decision.candidate.path) and selected["caption"] == decision.candidate.caption
    )
    assert (undecided["decided"], undecided["keep"], undecided["reviewer"], undecided["decided_at"]) == (
        "False",
        "",
        "",
        "",
    )
    assert stage("export", "final").splitlines()[0].startswith("position,candidate_path,caption,decided")

    out = stage("freeze", "final", "--dataset", "emu-mini")
    dataset = CuratedDataset.objects.get(name="emu-mini")
    frozen = load_curated_dataset(dataset.path)
    assert out.strip() == (
        f"Froze final into the curated dataset emu-mini: 2 images, content hash {dataset.content_hash}, "
        f"at {dataset.path}"
    )
    assert frozen.content_hash == dataset.content_hash and len(frozen) == 2
    assert sorted(i.caption for i in frozen.images) == sorted(written.values())
    assert "final: specialist stage, closed, frozen into dataset emu-mini" in stage("status", "final")
    # Freezing again returns the same dataset (idempotent), whatever name is asked for.
    assert "curated dataset emu-mini: 2 images" in stage("freeze", "final", "--dataset", "other")

    assert stage("close", "gen").strip() == "Closed gen: no more candidates are handed out. Its decisions are kept."
    assert CurationReview.objects.get(name="gen").status == "closed"
    assert services.next_decision(generalist, bob) is None


def test_every_refusal_is_a_command_error_with_the_service_s_words(funnel, training_dir, tmp_path):
    alice = make_user("alice", reviewer=True)
    running = make_funnel(tmp_path / "other", [(5.0, 0.3)], status=CurationRun.Status.RUNNING, name="other")
    for args, message in [
        (("open-generalist", "gen", "--funnel-run", 999999), "No curation run 999999"),
        (("open-generalist", "gen", "--funnel-run", running.pk), "running, not finished"),
        (("open-generalist", "bad name", "--funnel-run", funnel.pk), "not a valid name"),
        (
            ("open-generalist", "gen", "--funnel-run", funnel.pk, "--mode", "rating", "--keep-threshold", 9),
            "keep threshold must be a rating from 1 to 5",
        ),
        (("open-generalist", "gen", "--funnel-run", funnel.pk, "--lease", 5), "between 30 seconds and one day"),
        (("open-generalist", "gen", "--funnel-run", funnel.pk, "--keep-threshold", 3), "applies to --mode rating only"),
        (("open-specialist", "final", "--from", "nope", "--target-size", 2), "No curation stage named 'nope'"),
        (("status", "nope"), "No curation stage named 'nope'"),
    ]:
        with pytest.raises(CommandError, match=message):
            stage(*args)
    assert not CurationReview.objects.exists()

    stage("open-generalist", "gen", "--funnel-run", funnel.pk)
    with pytest.raises(CommandError, match="already exists; choose another name"):
        stage("open-generalist", "gen", "--funnel-run", funnel.pk)
    with pytest.raises(CommandError, match="kept no candidates yet"):
        stage("open-specialist", "final", "--from", "gen", "--target-size", 2)
    with pytest.raises(CommandError, match="generalist stage: open a specialist stage on it"):
        stage("freeze", "gen", "--dataset", "d")
    generalist = CurationReview.objects.get(name="gen")
    services.decide(generalist, services.next_decision(generalist, alice).pk, alice, keep=True)
    with pytest.raises(CommandError, match=r"target\), at least 1"):
        stage("open-specialist", "final", "--from", "gen", "--target-size", 0)
    stage("open-specialist", "final", "--from", "gen", "--target-size", 1)
    with pytest.raises(CommandError, match="specialist stage: a specialist stage follows a generalist stage"):
        stage("open-specialist", "final-2", "--from", "final", "--target-size", 1)
    with pytest.raises(CommandError, match="no selected images yet"):
        stage("freeze", "final", "--dataset", "d")
    with pytest.raises(CommandError, match="Only a generalist stage in rating mode"):
        stage("train-head", "gen")
    with pytest.raises(CommandError, match="Cannot write"):
        stage("export", "gen", "--out", tmp_path / "no-such-folder" / "x.csv")
    assert not CuratedDataset.objects.exists()


def test_a_rating_stage_keeps_at_the_threshold_and_trains_an_aesthetic_head(funnel, training_dir, tmp_path):
    from training.clip_scoring import save_tiny_clip

    alice = make_user("alice", reviewer=True)
    out = stage("open-generalist", "rated", "--funnel-run", funnel.pk, "--mode", "rating", "--keep-threshold", 3)
    assert "(rating 1-5, kept at 3 or above) over 6 candidates" in out
    review = CurationReview.objects.get(name="rated")
    for rating in [5, 1, 3, 2, 4, 3]:
        services.decide(review, services.next_decision(review, alice).pk, alice, rating=rating)
    assert "decided 6/6 (100%), kept 4," in stage("status", "rated")
    rows = list(csv.DictReader(io.StringIO(stage("export", "rated"))))
    assert [(r["rating"], r["keep"]) for r in rows] == [
        ("5", "True"),
        ("1", "False"),
        ("3", "True"),
        ("2", "False"),
        ("4", "True"),
        ("3", "True"),
    ]

    with pytest.raises(CommandError, match="Give the local open_clip model"):
        stage("train-head", "rated")  # the funnel run names no CLIP model
    clip = save_tiny_clip(tmp_path / "clip", seed=0)
    out = stage("train-head", "rated", "--clip", clip, "--out", tmp_path / "heads" / "rated.pth")
    assert out.strip() == f"Trained an aesthetic head on rated's ratings: {tmp_path / 'heads' / 'rated.pth'}"
    assert AestheticHead.load(tmp_path / "heads" / "rated.pth").module.input_dim == 32


def test_the_decisions_export_neutralises_formulas_in_captions(tmp_path):
    from training.models import Candidate

    run = make_funnel(tmp_path / "photos", [(5.0, 0.3), (5.5, 0.3)], rejected=0)
    for candidate, caption in zip(Candidate.objects.order_by("pk"), ['=HYPERLINK("http://x")', "@SUM(A1)"]):
        Candidate.objects.filter(pk=candidate.pk).update(caption=caption)
    stage("open-generalist", "gen", "--funnel-run", run.pk)
    rows = list(csv.DictReader(io.StringIO(stage("export", "gen"), newline="")))
    assert sorted(r["caption"] for r in rows) == ['\'=HYPERLINK("http://x")', "'@SUM(A1)"]
    assert [r["position"] for r in rows] == ["1", "2"]
