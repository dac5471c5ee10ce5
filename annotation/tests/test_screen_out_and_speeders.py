"""Quality control's endings: excluded raters are screened out (never paid the completion code), speeders flagged."""

import re
import time

import pytest
from django.urls import reverse

from analysis import services as analysis_services
from annotation import services
from annotation.models import Campaign, Participation, Vote
from annotation.services import quality_control
from annotation.tests.test_rater_pages import get_tasks, join, post_vote

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("fresh_rate_limits")]


@pytest.fixture
def gold_campaign(make_campaign):
    """Appeal only, 4 prompts x 5 seeds, a quota of 20 with 20% gold: a rater meets 4 gold pairs, 3 can exclude."""
    return make_campaign(
        name="screened",
        seeds=[0, 1, 2, 3, 4],
        criteria={"visual_appeal": {}},
        gold_share=0.2,
        gold_min_answers=3,
        gold_min_accuracy=0.7,
        quota_per_rater=20,
        speeder_seconds=0,
    )


def _wrong_on_gold(assignment) -> str:
    """The careless rater: the degraded image on every gold pair, left otherwise."""
    if assignment.item.is_gold:
        return "right" if assignment.a_on_left else "left"
    return "left"


def test_a_rater_excluded_by_gold_is_screened_out_and_never_shown_the_completion_code(client, gold_campaign):
    from annotation.models import Assignment

    participation = join(client, gold_campaign)
    seen_ended = None
    for _ in range(20):
        tasks = get_tasks(client, participation).json()
        if tasks.get("ended"):
            seen_ended = tasks
            break
        assert tasks["done"] is False and tasks["completion"] is None
        assignments = [Assignment.objects.select_related("item").get(token=t["id"]) for t in tasks["tasks"]]
        response = post_vote(
            client, participation, {"task": assignments[0].token, "choice": _wrong_on_gold(assignments[0])}
        )
        assert response.status_code == 200, response.content
        if response.json().get("ended"):
            # The vote that excluded them is recorded; the answer says where their ending is, at once.
            assert response.json()["recorded"] is True
            # The task preloaded beside it was released by the exclusion: answering it is refused honestly,
            # not as a false "task expired".
            late = post_vote(client, participation, {"task": assignments[1].token, "choice": "left"})
            assert (
                late.status_code == 409
                and "ended for you" in late.json()["error"]
                and "expired" not in late.json()["error"]
            )
            assert late.json()["ended"] == reverse("rate:done", args=[participation.token])
    else:
        pytest.fail("the careless rater was never excluded")
    assert seen_ended is None or seen_ended["tasks"] == []
    participation.refresh_from_db()
    assert participation.excluded and participation.completed_at is None

    tasks = get_tasks(client, participation).json()
    assert (
        tasks["done"] is True
        and tasks["completion"] is None
        and tasks["ended"] == reverse("rate:done", args=[participation.token])
    )
    assert client.get(reverse("rate:page", args=[participation.token])).url == reverse(
        "rate:done", args=[participation.token]
    )
    page = client.get(reverse("rate:done", args=[participation.token])).content.decode()
    assert "This study has ended for you" in page and gold_campaign.screen_out_code in page
    assert gold_campaign.completion_code not in page and "answered every pair" not in page
    assert gold_campaign.screen_out_code != gold_campaign.completion_code


def test_an_excluded_rater_is_sent_to_the_screen_out_url_with_its_code(client, gold_campaign):
    services.update_campaign(gold_campaign, screen_out_url="https://app.prolific.com/submissions/complete?cc={code}")
    participation = join(client, gold_campaign)
    services.exclude_rater(participation, "straight-lining")
    response = client.get(reverse("rate:done", args=[participation.token]))
    assert response.status_code == 302
    assert response.url == f"https://app.prolific.com/submissions/complete?cc={gold_campaign.screen_out_code}"


def test_a_finished_rater_still_gets_the_completion_code(client, gold_campaign):
    participation = join(client, gold_campaign)
    from annotation.models import Assignment

    while not (tasks := get_tasks(client, participation).json())["done"]:
        a = Assignment.objects.select_related("item").get(token=tasks["tasks"][0]["id"])
        right = ("left" if a.a_on_left else "right") if a.item.is_gold else "left"
        assert post_vote(client, participation, {"task": a.token, "choice": right}).status_code == 200
    assert tasks["completion"]["code"] == gold_campaign.completion_code and "ended" not in tasks
    page = client.get(reverse("rate:done", args=[participation.token])).content.decode()
    assert gold_campaign.completion_code in page and gold_campaign.screen_out_code not in page


@pytest.fixture
def speed_campaign(make_campaign):
    return make_campaign(
        name="speed",
        seeds=[0, 1, 2, 3, 4],
        criteria={"visual_appeal": {}},
        gold_share=0,
        quota_per_rater=12,
        speeder_seconds=1.0,
    )


def _script(client, participation, votes, pause=None, seconds=9.0):
    """A rater answering as fast as HTTP allows, lying about its time on task; or taking ``pause`` seconds (on the
    engine's clock, moved forward rather than waited for)."""
    answers = []
    for _ in range(votes):
        tasks = get_tasks(client, participation).json()
        if tasks["done"]:
            break
        answers.append(
            post_vote(client, participation, {"task": tasks["tasks"][0]["id"], "choice": "left", "seconds": seconds})
        )
        if pause:
            pause()
    return answers


def test_a_script_is_flagged_as_a_speeder_by_the_server_clock_whatever_seconds_it_reports(
    client, speed_campaign, admin_client
):
    participation = join(client, speed_campaign)
    assert all(r.status_code == 200 for r in _script(client, participation, 12))
    participation.refresh_from_db()
    assert participation.speeder_flagged_at is not None and participation.speeder_median_seconds < 1.0
    assert not participation.excluded  # flagged only: the campaign does not exclude speeders
    page = admin_client.get(reverse("campaigns:detail", args=[speed_campaign.pk])).content.decode()
    assert ">speeder</span>" in page
    report = analysis_services.build_report(speed_campaign)
    assert [s.rater_id for s in report.exclusions.speeders] == [participation.rater_id]
    assert "flagged, not excluded" in report.exclusions.rule["description"]


def test_a_rater_who_takes_their_time_is_not_flagged(client, speed_campaign, monkeypatch):
    from datetime import timedelta
    from types import SimpleNamespace

    from django.utils import timezone

    clock = SimpleNamespace(at=timezone.now())
    monkeypatch.setattr(timezone, "now", lambda: clock.at)

    def think():
        clock.at += timedelta(seconds=1.5)

    participation = join(client, speed_campaign)
    # The page claims 0.1 s a pair; the server's clock says 1.5 s, and the server's clock decides.
    assert all(r.status_code == 200 for r in _script(client, participation, 8, pause=think, seconds=0.1))
    participation.refresh_from_db()
    assert participation.speeder_flagged_at is None


def test_with_exclusion_on_a_speeder_is_screened_out_before_the_quota(client, speed_campaign):
    services.update_campaign(speed_campaign, exclude_speeders=True)
    participation = join(client, speed_campaign)
    answers = _script(client, participation, 12)
    ended = [i for i, r in enumerate(answers) if r.json().get("ended")]
    # Five gaps (six answers) are needed to judge; the sixth answer ends it.
    assert ended and ended[0] == services.SPEEDER_MIN_GAPS
    participation.refresh_from_db()
    assert participation.excluded and participation.exclusion_reason.startswith("automatic: speeder")
    assert Vote.objects.filter(assignment__rater=participation.rater).count() == services.SPEEDER_MIN_GAPS + 1
    page = client.get(reverse("rate:done", args=[participation.token])).content.decode()
    assert speed_campaign.screen_out_code in page and speed_campaign.completion_code not in page


@pytest.mark.parametrize(
    "changes,field,message",
    [
        ({"speeder_seconds": -1}, "speeder_seconds", "between 0 (off) and 60"),
        ({"speeder_seconds": float("nan")}, "speeder_seconds", "between 0 (off) and 60"),
        ({"speeder_seconds": "fast"}, "speeder_seconds", "between 0 (off) and 60"),
        ({"exclude_speeders": "yes"}, "exclude_speeders", "true or false"),
        ({"speeder_seconds": 0, "exclude_speeders": True}, "speeder_seconds", "speeder check off"),
        ({"screen_out_code": "SAME"}, "screen_out_code", "must differ from the completion code"),
        ({"screen_out_url": "x" * 300}, "screen_out_url", "at most 200"),
    ],
)
def test_bad_screen_out_and_speeder_settings_are_refused_with_the_field_and_nothing_saved(
    two_models, prompt_set, changes, field, message
):
    campaign = services.create_campaign(name="draft", models=two_models, prompt_set=prompt_set, seeds=[0], gold_share=0)
    services.update_campaign(campaign, completion_code="SAME") if "screen_out_code" in changes else None
    before = Campaign.objects.values().get(pk=campaign.pk)
    with pytest.raises(services.AnnotationError, match=re.escape(message)) as refused:
        services.update_campaign(Campaign.objects.get(pk=campaign.pk), **changes)
    assert refused.value.field == field
    assert Campaign.objects.values().get(pk=campaign.pk) == before


def test_the_api_and_the_command_take_the_screen_out_and_speeder_settings(two_models, prompt_set):
    import io

    from django.core.management import call_command

    call_command(
        *(
            "campaign create --name cli --models base tuned --prompt-set four --seeds 0 --gold-share 0 --screen-out-url"
        ).split(),
        "https://example.org/out?cc={code}",
        "--speeder-seconds",
        "2.5",
        "--exclude-speeders",
        stdout=io.StringIO(),
    )
    campaign = Campaign.objects.get(name="cli")
    assert (campaign.screen_out_url, campaign.speeder_seconds, campaign.exclude_speeders) == (
        "https://example.org/out?cc={code}",
        2.5,
        True,
    )
    from annotation.forms import CampaignForm

    with pytest.raises(services.AnnotationError, match="exclude_speeders must be true or false"):
        CampaignForm.from_payload(
            {"name": "x", "models": ["base", "tuned"], "prompt_set": "four", "seeds": [0], "exclude_speeders": 1}
        )


# --- Under contention ---------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_duplicate_vote_arriving_while_the_first_commits_is_a_duplicate_not_expired(live_campaign, make_rater):
    """The second copy waits on the task's row lock; when it gets it, it must see the first copy's vote."""
    import threading

    from django.db import connection, connections, transaction

    if connection.vendor != "postgresql":
        pytest.skip("row locks: PostgreSQL")
    rater = make_rater()
    task = services.next_assignment(live_campaign, rater)
    first_holds_lock, results, errors = threading.Event(), [], []

    def first():
        try:
            with transaction.atomic():
                results.append(services.submit_vote(rater, task.token, "left"))
                first_holds_lock.set()
                time.sleep(0.5)  # the second copy is now waiting for this row
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            first_holds_lock.set()
            connections.close_all()

    def second():
        first_holds_lock.wait()
        try:
            results.append(services.submit_vote(rater, task.token, "left"))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not errors, errors
    assert sorted(r.duplicate for r in results) == [False, True]
    assert len({r.vote.pk for r in results}) == 1 and Vote.objects.count() == 1


def test_an_exclusion_locks_items_in_one_order_whatever_its_votes_and_leases(live_campaign, make_rater):
    """Two exclusions at once must not lock the same items in opposite orders (PostgreSQL would abort one)."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from annotation.models import ComparisonItem

    rater = make_rater()
    # A counted vote on a later item and an open lease on an earlier one: the old code updated the voted items,
    # then, in a second pass, the leased ones, so its lock order went high then low.
    held = services.open_tasks(live_campaign, rater)
    later = max(held, key=lambda a: a.item_id)
    services.submit_vote(rater, later.token, "left")
    assert any(a.item_id < later.item_id for a in held)
    with CaptureQueriesContext(connection) as queries:
        services.exclude_rater(Participation.objects.get(rater=rater), "test")
    touched = [
        int(q["sql"].split('"id" = ')[1].split(")")[0].split(" ")[0])
        for q in queries.captured_queries
        if q["sql"].startswith(f'UPDATE "{ComparisonItem._meta.db_table}"')
    ]
    assert touched and touched == sorted(touched)
    for item in ComparisonItem.objects.filter(campaign=live_campaign):
        assert (item.votes, item.open_leases, item.remaining) == (0, 0, item.criterion.votes_per_item)


def test_a_vote_is_acknowledged_even_when_the_exclusion_it_triggers_fails(client, gold_campaign, monkeypatch):
    from django.db import OperationalError

    from annotation.models import Assignment

    def deadlocked(*args, **kwargs):
        raise OperationalError("deadlock detected")

    monkeypatch.setattr(quality_control, "_exclude", deadlocked)
    monkeypatch.setattr(quality_control.time, "sleep", lambda s: None)
    participation = join(client, gold_campaign)
    for _ in range(20):
        tasks = get_tasks(client, participation).json()
        if tasks["done"]:
            break
        a = Assignment.objects.select_related("item").get(token=tasks["tasks"][0]["id"])
        response = post_vote(client, participation, {"task": a.token, "choice": _wrong_on_gold(a)})
        assert response.status_code == 200 and response.json()["recorded"] is True
    stored = Vote.objects.filter(assignment__rater=participation.rater)
    assert stored.filter(gold_correct=False).count() >= gold_campaign.gold_min_answers  # the exclusion was due
    assert not Participation.objects.get(pk=participation.pk).excluded
