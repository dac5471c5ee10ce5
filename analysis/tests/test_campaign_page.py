"""The campaign page (analysis.campaign_views): progress, raters, live win rates as votes arrive, and the votes CSV."""

import csv
import io
from collections import Counter

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.urls import reverse

from annotation import services
from annotation.models import Participation, Vote
from annotation.tests.campaign_fixtures import vote_everything, win_rate_row

pytestmark = pytest.mark.django_db

PROLIFIC_SUFFIX = "?PROLIFIC_PID={{%PROLIFIC_PID%}}&STUDY_ID={{%STUDY_ID%}}&SESSION_ID={{%SESSION_ID%}}"


def test_campaign_page_shows_progress_win_rates_and_rater_quality(staff_client, voted_campaign):
    campaign, first, second, third = voted_campaign
    page = staff_client.get(reverse("campaigns:detail", args=[campaign.pk])).content.decode()
    assert (
        '<span data-p="votes">' in page and "Win rates" in page and 'data-win-rate="visual_appeal:base:tuned"' in page
    )
    assert "Prolific pilot" in page and "pid-1" in page and "account lab-member" in page and "direct" in page
    assert page.count(">Exclude</button>") == 6 and ">Pause</button>" in page and ">Close</button>" in page

    state = staff_client.get(reverse("campaigns:progress", args=[campaign.pk])).json()
    assert set(state) == {
        *("id", "name", "status", "launch_error", "progress", "generation", "win_rates", "stop_rule", "decisions")
    }
    progress = state["progress"]
    assert set(progress) == {
        "votes",
        "votes_needed",
        "percent",
        "complete_items",
        "items",
        "per_criterion",
        "open_leases",
        "active_raters",
        "recent_votes",
        "projected_finish",
    }
    assert (progress["votes"], progress["votes_needed"], progress["percent"]) == (120, 160, 75)
    assert (progress["complete_items"], progress["items"], progress["active_raters"]) == (20, 40, 6)
    assert progress["recent_votes"] == 120 and progress["projected_finish"] is not None
    assert {c["criterion"]: (c["votes"], c["complete_items"]) for c in progress["per_criterion"]} == {
        "visual_appeal": (60, 0),
        "text_faithfulness": (60, 20),
    }
    appeal, faithfulness = (
        win_rate_row(state["win_rates"], "visual_appeal"),
        win_rate_row(state["win_rates"], "text_faithfulness"),
    )
    assert (appeal["model_a"], appeal["model_b"]) == ("base", "tuned")
    # No appeal comparison has its 5 votes yet: no win rate, and the page says why instead of mixing them in.
    assert (appeal["compared"], appeal["incomplete_items"], appeal["win_rate"]) == (0, 20, None)
    assert appeal["win_rate_text"] == "no complete comparisons yet (20 incomplete)"
    # Every faithfulness comparison is a 2-1 majority for A (base): tuned wins none of 20.
    assert (faithfulness["wins"], faithfulness["ties"], faithfulness["losses"], faithfulness["compared"]) == (
        0,
        0,
        20,
        20,
    )
    assert faithfulness["win_rate"] == 0.0
    # Four prompts are too few for an honest prompt-clustered interval: none is shown, and the note says why.
    assert (faithfulness["low"], faithfulness["high"]) == (None, None) and "4 prompts" in faithfulness["interval_note"]

    rows = {r.participation_id: r for r in page_context_raters(staff_client, campaign)}
    one = rows[first.pk]
    assert (one.source, one.prolific_pid, one.study_id, one.session_id) == (
        "Prolific pilot",
        "pid-1",
        "study-1",
        "session-1",
    )
    assert one.votes == 20 and one.gold_answered == 0 and one.gold_accuracy is None and one.median_seconds == 3.0
    assert 0.4 <= one.left_share <= 0.6  # A is shown left half the time: always picking A is not a position bias
    assert rows[second.pk].source == "account lab-member" and rows[third.pk].source == "direct"

    listing = staff_client.get(reverse("annotation:campaign_list")).content.decode()
    assert "base · tuned" in listing and "status-live" in listing and "75%" in listing
    assert 'href="/annotation/"' in staff_client.get(reverse("generation:batch_list")).content.decode()  # nav link


def page_context_raters(client, campaign):
    return client.get(reverse("campaigns:detail", args=[campaign.pk])).context["raters"]


def test_excluding_a_rater_keeps_their_votes_flagged_and_changes_the_win_rates(staff_client, voted_campaign):
    campaign, first, second, third = voted_campaign
    url = reverse("annotation:exclude_rater", args=[campaign.pk, second.pk])
    response = staff_client.post(url, {"reason": ""}, follow=True)
    assert (
        "Say why the rater is excluded" in response.content.decode()
        and not Participation.objects.get(pk=second.pk).excluded
    )

    response = staff_client.post(url, {"reason": "answered in under a second"}, follow=True)
    assert "20 vote(s) kept and flagged" in response.content.decode()
    assert Vote.objects.count() == 120  # nothing deleted
    assert Vote.objects.filter(excluded=True, assignment__rater=second.rater).count() == 20
    assert Participation.objects.get(pk=second.pk).exclusion_reason == "answered in under a second"

    state = staff_client.get(reverse("campaigns:progress", args=[campaign.pk])).json()
    # Without the second rater every faithfulness comparison is back to 2 of 3 votes: none complete.
    faithfulness = win_rate_row(state["win_rates"], "text_faithfulness")
    assert (faithfulness["compared"], faithfulness["incomplete_items"], faithfulness["win_rate"]) == (0, 20, None)
    assert state["progress"]["votes"] == 100 and state["progress"]["complete_items"] == 0
    page = staff_client.get(reverse("campaigns:detail", args=[campaign.pk])).content.decode()
    assert "excluded</span>: answered in under a second" in page and page.count(">Exclude</button>") == 5


def test_votes_csv_has_one_tidy_row_per_vote_with_the_winning_model(staff_client, voted_campaign):
    campaign, first, second, third = voted_campaign
    services.exclude_rater(second, "test")
    response = staff_client.get(reverse("campaigns:votes_csv", args=[campaign.pk]))
    assert response.streaming and response["Content-Type"].startswith("text/csv")
    assert 'filename="c-votes.csv"' in response["Content-Disposition"]
    body = b"".join(response.streaming_content).decode()
    assert body.splitlines()[0] == (
        "vote_id,item_id,criterion,prompt_id,prompt,category,challenge,seed,model_a,model_b,rater_id,external_id,"
        "choice,a_on_left,winner,winner_model,seconds_on_task,gold,gold_correct,excluded,simulated,created_at,counted"
    )
    rows = list(csv.DictReader(io.StringIO(body)))
    assert len(rows) == Vote.objects.count() == 120
    assert len({r["vote_id"] for r in rows}) == 120
    assert {row["simulated"] for row in rows} == {"false"}
    by_rater = {p.rater_id: name for p, name in ((first, "base"), (second, "base"), (third, "tuned"))}
    for row in rows:
        assert row["winner_model"] == by_rater.get(int(row["rater_id"]), row["winner_model"])
        assert row["winner"] == ("a" if row["winner_model"] == "base" else "b")
        # What was clicked, mapped through the placement, gives the winner.
        assert ((row["choice"] == "left") == (row["a_on_left"] == "true")) == (row["winner"] == "a")
        assert (row["model_a"], row["model_b"], row["gold"], row["gold_correct"]) == ("base", "tuned", "false", "")
        assert row["excluded"] == ("true" if int(row["rater_id"]) == second.rater_id else "false")
    assert Counter(r["criterion"] for r in rows) == {"visual_appeal": 60, "text_faithfulness": 60}
    assert Counter((r["criterion"], r["winner_model"]) for r in rows if r["criterion"] == "visual_appeal") == {
        ("visual_appeal", "base"): 40,
        ("visual_appeal", "tuned"): 20,
    }
    assert all(r["criterion"] == "text_faithfulness" for r in rows if int(r["rater_id"]) in by_rater)
    assert {r["external_id"] for r in rows if int(r["rater_id"]) == first.rater_id} == {"pid-1"}
    sample = next(r for r in rows if r["prompt"] == "three blue birds")
    assert (sample["category"], sample["challenge"]) == ("Animals", "Quantity")


def test_the_campaign_page_says_how_many_raters_the_campaign_needs(staff_client, live_campaign):
    # A rater takes each pair under one criterion only: 20 pairs x (5 + 3) votes need 8 raters, 16 at 10 tasks each.
    detail = reverse("campaigns:detail", args=[live_campaign.pk])
    assert 'data-raters-needed="8"' in staff_client.get(detail).content.decode()
    services.update_campaign(live_campaign, quota_per_rater=10)
    assert 'data-raters-needed="16"' in staff_client.get(detail).content.decode()


def test_the_campaign_page_follows_votes_as_they_arrive(live_server, live_campaign, make_rater, browser):
    """In Debian's Chromium: the page polls progress.json and updates its figures and tally without a reload."""
    get_user_model().objects.create_user("researcher", password="a-long-test-password", is_staff=True)
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"{live_server.url}{reverse('campaigns:detail', args=[live_campaign.pk])}")
    page.fill("#id_username", "researcher")
    page.fill("#id_password", "a-long-test-password")
    page.click("input[type=submit]")
    assert page.locator('[data-p="votes"]').inner_text() == "0"

    rater = make_rater()
    tasks = services.open_tasks(live_campaign, rater)
    for task in tasks:
        a_side = "left" if task.a_on_left else "right"
        services.submit_vote(rater, task.token, a_side)  # two votes for model A
    page.locator('[data-p="votes"]', has_text="2").wait_for(timeout=20_000)
    assert page.locator('[data-p="active_raters"]').inner_text() == "1"
    # Both tasks are of the criterion the rater's schedule starts with: two votes make two incomplete
    # comparisons there, said in words.
    (criterion,) = {task.item.criterion.criterion for task in tasks}
    page.locator(
        f'[data-win-rate="{criterion}:base:tuned"] [data-f="win_rate_text"]',
        has_text="no complete comparisons yet (2 incomplete)",
    ).wait_for(timeout=20_000)
    assert errors == []
    shots = settings.VAR_DIR / "screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(shots / "campaign-dashboard.png"), full_page=True)


# Cells a spreadsheet would run as formulas, as a stranger could write a prompt, a category or a crowd id.
FORMULA_PROMPTS = ['=HYPERLINK("http://x")', "\tx", "\rx", "@SUM(A1)"]


def campaign_with_formulas(campaign) -> Participation:
    """The campaign's prompts, categories and challenges, and one voting rater's PROLIFIC_PID, all formulas."""
    from generation.models import Prompt

    for prompt, text in zip(campaign.prompt_set.prompts.order_by("position"), FORMULA_PROMPTS):
        Prompt.objects.filter(pk=prompt.pk).update(text=text, category="+1", challenge="-2+3")
    link = services.create_invite_link(campaign)
    participation = services.join_with_invite(
        link.token, {"PROLIFIC_PID": "@SUM(A1)", "STUDY_ID": "s", "SESSION_ID": "x"}
    )
    assert vote_everything(campaign, participation.rater, "a") == 20  # one question per pair for one rater
    return participation


def test_the_votes_csv_neutralises_formulas_from_prompts_categories_and_rater_ids(staff_client, live_campaign):
    participation = campaign_with_formulas(live_campaign)
    response = staff_client.get(reverse("campaigns:votes_csv", args=[live_campaign.pk]))
    rows = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode(), newline="")))
    assert len(rows) == 20
    assert {row["prompt"] for row in rows} == {"'" + text for text in FORMULA_PROMPTS}
    assert {(row["category"], row["challenge"], row["external_id"]) for row in rows} == {("'+1", "'-2+3", "'@SUM(A1)")}
    assert {row["rater_id"] for row in rows} == {str(participation.rater_id)}  # numbers untouched
