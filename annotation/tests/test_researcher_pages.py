"""The researchers' campaign pages: create, watch, steer, exclude, export; staff only."""

import csv
import html
import io
import shutil
from collections import Counter

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.urls import reverse

from annotation import services
from annotation.models import Campaign, CampaignCriterion, Participation, Vote
from annotation.services import assignment

pytestmark = pytest.mark.django_db

PROLIFIC_SUFFIX = "?PROLIFIC_PID={{%PROLIFIC_PID%}}&STUDY_ID={{%STUDY_ID%}}&SESSION_ID={{%SESSION_ID%}}"


@pytest.fixture
def staff_client(client):
    user = get_user_model().objects.create_user(
        "researcher", password="pw-long-enough-1", is_staff=True, is_superuser=True
    )
    client.force_login(user)
    return client


def vote_everything(campaign, rater, prefer: str) -> int:
    """The rater answers every task they get, always for model ``prefer`` ("a" or "b"), wherever it is shown."""
    n = 0
    while tasks := services.open_tasks(campaign, rater):
        for task in tasks:
            a_side, b_side = ("left", "right") if task.a_on_left else ("right", "left")
            services.submit_vote(rater, task.token, a_side if prefer == "a" else b_side, seconds_on_task=2.0 + n % 3)
            n += 1
    return n


@pytest.fixture
def voted_campaign(live_campaign, make_rater, monkeypatch):
    """Six raters over the 40 items (20 pairs, each under appeal, k=5, and faithfulness, k=3), each pair once per
    rater: three answer faithfulness for every pair, then three appeal; in each three, two always pick model A and
    one model B.

    So every faithfulness item is complete with an A majority (2 to 1); no appeal item is complete (3 of 5).
    """
    criterion = {c.criterion: c.pk for c in live_campaign.criteria.all()}
    link = services.create_invite_link(live_campaign, label="Prolific pilot")
    first = services.join_with_invite(
        link.token, {"PROLIFIC_PID": "pid-1", "STUDY_ID": "study-1", "SESSION_ID": "session-1"}
    )
    account = get_user_model().objects.create_user("lab-member", password="pw-long-enough-2")
    second = services.invite_account(live_campaign, account)
    third = make_rater()  # enrolled by the engine on first use

    def answer(rater, question, prefer):
        # The schedule fixed to one question: a rater then meets every pair under it, and none under the other.
        with monkeypatch.context() as patched:
            patched.setattr(assignment, "_scheduled_criterion", lambda *args: criterion[question])
            assert vote_everything(live_campaign, rater, prefer) == 20

    answer(first.rater, "text_faithfulness", "a")
    answer(second.rater, "text_faithfulness", "a")
    answer(third, "text_faithfulness", "b")
    for prefer in ("a", "a", "b"):
        answer(make_rater(), "visual_appeal", prefer)
    return live_campaign, first, second, Participation.objects.get(campaign=live_campaign, rater=third)


def win_rate_row(win_rates, criterion):
    return next(w for w in win_rates if w["criterion"] == criterion)


def test_staff_create_a_campaign_through_the_form(staff_client, two_models, prompt_set):
    url = reverse("annotation:campaign_new")
    page = staff_client.get(url).content.decode()
    assert "Judge visual appeal" in page and "Which image is more visually appealing?" in page  # prefilled instructions
    form = {
        "name": "emu replication",
        "models": ["base", "tuned"],
        "pairing": "vs_baseline",
        "baseline": "base",
        "prompt_set": "four",
        "seeds": "0-2",
        "visual_appeal_enabled": "on",
        "visual_appeal_instructions": "Pick the prettier one.",
        "visual_appeal_votes_per_item": "7",
        "visual_appeal_choices": ["left", "right", "tie"],
        "text_faithfulness_votes_per_item": "3",  # not enabled: ignored
        "gold_share": "0.2",
        "gold_min_accuracy": "0.8",
        "gold_min_answers": "5",
        "quota_per_rater": "50",
        "lease_seconds": "300",
        "completion_url": "https://app.prolific.com/submissions/complete?cc=X",
        "rater_title": "Pick one",
    }
    response = staff_client.post(url, form)
    campaign = Campaign.objects.get()
    assert response.status_code == 302 and response["Location"] == reverse("campaigns:detail", args=[campaign.pk])
    assert campaign.status == "draft" and campaign.seeds == [0, 1, 2] and campaign.baseline.name == "base"
    assert (campaign.gold_share, campaign.quota_per_rater, campaign.lease_seconds) == (0.2, 50, 300)
    criterion = CampaignCriterion.objects.get(campaign=campaign)
    assert (criterion.criterion, criterion.votes_per_item, criterion.instructions) == (
        "visual_appeal",
        7,
        "Pick the prettier one.",
    )
    assert criterion.choices == ["left", "right", "tie"] and criterion.show_prompt is False
    page = staff_client.get(response["Location"]).content.decode()
    assert "base vs tuned" in page and "k = 7" in page and ">Launch</button>" in page


@pytest.mark.parametrize(
    "change, field, message",
    [
        ({"models": ["base"]}, "models", "Choose at least two models to compare."),
        ({"seeds": "0-x"}, "seeds", "Cannot read seeds"),
        ({"pairing": "round_robin"}, "pairing", "Pairing must be all_pairs or vs_baseline, not round_robin."),
        ({"pairing": "vs_baseline"}, "baseline", "choose the baseline"),
        ({"visual_appeal_choices": ["left", "tie"]}, "visual_appeal_choices", "left and right"),
        ({"gold_share": "0.9"}, "gold_share", "between 0 and 0.5"),
    ],
)
def test_the_form_shows_each_error_next_to_its_field(staff_client, two_models, prompt_set, change, field, message):
    form = {
        "name": "x",
        "models": ["base", "tuned"],
        "pairing": "all_pairs",
        "prompt_set": "four",
        "seeds": "0-1",
        "visual_appeal_enabled": "on",
        "visual_appeal_votes_per_item": "5",
        "visual_appeal_choices": ["left", "right", "tie"],
        "gold_share": "0.1",
        "gold_min_accuracy": "0.7",
        "gold_min_answers": "4",
        "quota_per_rater": "0",
        "lease_seconds": "600",
        "rater_title": "Compare",
    }
    response = staff_client.post(reverse("annotation:campaign_new"), {**form, **change})
    assert response.status_code == 200 and not Campaign.objects.exists()
    errors = response.context["form"].errors
    assert list(errors) == [field] and message in errors[field][0]
    assert f'id="{field}-error"' in response.content.decode()


def test_campaign_page_shows_progress_win_rates_and_rater_quality(staff_client, voted_campaign):
    campaign, first, second, third = voted_campaign
    page = staff_client.get(reverse("campaigns:detail", args=[campaign.pk])).content.decode()
    assert (
        '<span data-p="votes">' in page and "Win rates" in page and 'data-win-rate="visual_appeal:base:tuned"' in page
    )
    assert "Prolific pilot" in page and "pid-1" in page and "account lab-member" in page and "direct" in page
    assert page.count(">Exclude</button>") == 6 and ">Pause</button>" in page and ">Close</button>" in page

    state = staff_client.get(reverse("campaigns:progress", args=[campaign.pk])).json()
    assert set(state) == {"id", "name", "status", "launch_error", "progress", "generation", "win_rates"}
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
    rows = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert len(rows) == Vote.objects.count() == 120
    assert len({r["vote_id"] for r in rows}) == 120
    assert list(rows[0]) == [
        "vote_id",
        "item_id",
        "criterion",
        "prompt_id",
        "prompt",
        "category",
        "challenge",
        "seed",
        "model_a",
        "model_b",
        "rater_id",
        "external_id",
        "choice",
        "a_on_left",
        "winner",
        "winner_model",
        "seconds_on_task",
        "gold",
        "gold_correct",
        "excluded",
        "simulated",
        "created_at",
        "counted",
    ]
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


def test_status_buttons_invite_links_and_account_invitations(staff_client, live_campaign):
    detail = reverse("campaigns:detail", args=[live_campaign.pk])
    staff_client.post(reverse("annotation:pause", args=[live_campaign.pk]))
    assert Campaign.objects.get().status == "paused"
    staff_client.post(reverse("annotation:resume", args=[live_campaign.pk]))
    assert Campaign.objects.get().status == "live"
    response = staff_client.post(reverse("annotation:launch", args=[live_campaign.pk]), follow=True)
    assert "Only a draft campaign can be launched; this one is live." in response.content.decode()
    assert staff_client.get(reverse("annotation:close", args=[live_campaign.pk])).status_code == 405  # POST only

    response = staff_client.post(
        reverse("annotation:invite_link_create", args=[live_campaign.pk]),
        {"label": "Prolific 1", "max_raters": "30"},
        follow=True,
    )
    link = live_campaign.invite_links.get()
    expected = f"http://testserver/join/{link.token}/{PROLIFIC_SUFFIX}"
    page = html.unescape(response.content.decode())
    assert f'value="{expected}"' in page and (link.label, link.max_raters) == ("Prolific 1", 30)
    response = staff_client.post(
        reverse("annotation:invite_link_create", args=[live_campaign.pk]), {"max_raters": "-1"}, follow=True
    )
    assert (
        "The rater limit cannot be negative." in response.content.decode() and live_campaign.invite_links.count() == 1
    )

    get_user_model().objects.create_user("alice", password="pw-long-enough-3")
    response = staff_client.post(
        reverse("annotation:invite_account", args=[live_campaign.pk]), {"username": "alice"}, follow=True
    )
    assert "alice can now vote in this campaign." in response.content.decode()
    assert Participation.objects.get(campaign=live_campaign).rater.user.username == "alice"
    response = staff_client.post(
        reverse("annotation:invite_account", args=[live_campaign.pk]), {"username": "nobody"}, follow=True
    )
    assert "There is no account named &#x27;nobody&#x27;." in response.content.decode()

    staff_client.post(reverse("annotation:close", args=[live_campaign.pk]))
    page = staff_client.get(detail).content.decode()
    assert Campaign.objects.get().status == "closed" and "</button>" not in page.split("<h2>Progress</h2>")[0]


def test_admin_pages_and_the_exclude_action(staff_client, voted_campaign):
    campaign, first, second, third = voted_campaign
    for name in ["campaign", "invitelink", "participation", "vote", "comparisonitem"]:
        assert staff_client.get(reverse(f"admin:annotation_{name}_changelist")).status_code == 200, name
    change = staff_client.get(reverse("admin:annotation_campaign_change", args=[campaign.pk])).content.decode()
    assert reverse("campaigns:detail", args=[campaign.pk]) in change  # "view on site" leads to the dashboard
    assert 'name="name"' in change and 'name="seeds"' not in change and 'name="lease_seconds"' not in change  # frozen
    assert staff_client.get(reverse("admin:annotation_campaign_add")).url == reverse("annotation:campaign_new")
    vote = Vote.objects.first()
    assert staff_client.get(reverse("admin:annotation_vote_delete", args=[vote.pk])).status_code == 403
    staff_client.post(
        reverse("admin:annotation_participation_changelist"),
        {"action": "exclude_raters", "_selected_action": [third.pk]},
    )
    assert Participation.objects.get(pk=third.pk).excluded and Vote.objects.count() == 120


def researcher_urls(campaign, participation):
    pk = campaign.pk
    gets = [
        reverse("annotation:campaign_list"),
        reverse("annotation:campaign_new"),
        reverse("campaigns:detail", args=[pk]),
        reverse("campaigns:progress", args=[pk]),
        reverse("campaigns:votes_csv", args=[pk]),
    ]
    posts = [reverse(f"annotation:{a}", args=[pk]) for a in ("launch", "pause", "resume", "close")] + [
        reverse("annotation:campaign_new"),
        reverse("annotation:invite_link_create", args=[pk]),
        reverse("annotation:invite_account", args=[pk]),
        reverse("annotation:exclude_rater", args=[pk, participation.pk]),
    ]
    api_gets = [
        reverse("api:campaigns"),
        reverse("api:campaign", args=[pk]),
        reverse("api:raters", args=[pk]),
        reverse("api:invite_links", args=[pk]),
    ]
    api_posts = [reverse("api:campaigns"), reverse("api:invite_links", args=[pk])] + [
        reverse(f"api:{a}", args=[pk]) for a in ("launch", "pause", "resume", "close")
    ]
    return gets, posts, api_gets, api_posts


@pytest.mark.parametrize("who", ["anonymous", "rater account"])
def test_non_staff_are_refused_on_every_researcher_url(client, two_models, prompt_set, make_rater, who):
    campaign = services.create_campaign(name="draft", models=two_models, prompt_set=prompt_set, seeds=[0])
    participation = Participation.objects.create(campaign=campaign, rater=make_rater())
    if who == "rater account":
        client.force_login(get_user_model().objects.create_user("rater", password="pw-long-enough-1"))
    gets, posts, api_gets, api_posts = researcher_urls(campaign, participation)
    for url in gets:
        response = client.get(url)
        assert response.status_code == 302 and "/admin/login/" in response["Location"], url
    for url in posts:
        response = client.post(url, {"reason": "x", "username": "rater", "label": "x"})
        assert response.status_code == 302 and "/admin/login/" in response["Location"], url
    expected = 401 if who == "anonymous" else 403
    for url in api_gets:
        response = client.get(url)
        assert response.status_code == expected and "error" in response.json(), url
    for url in api_posts:
        response = client.post(url, "{}", content_type="application/json")
        assert response.status_code == expected and "error" in response.json(), url
    campaign.refresh_from_db()
    assert (
        campaign.status == "draft"
        and not campaign.invite_links.exists()
        and not Participation.objects.get(pk=participation.pk).excluded
    )
    assert Campaign.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_the_campaign_page_follows_votes_as_they_arrive(live_server, live_campaign, make_rater, monkeypatch):
    """In Debian's Chromium: the page polls progress.json and updates its figures and tally without a reload."""
    chromium = "/usr/bin/chromium"
    if not shutil.which(chromium):
        pytest.skip("Debian chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")  # Playwright's sync API runs an event loop in this thread
    get_user_model().objects.create_user("researcher", password="a-long-test-password", is_staff=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--headless", "--no-sandbox", "--disable-gpu"])
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
        browser.close()


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


def test_a_right_to_left_override_in_crowd_ids_or_prompts_is_isolated_on_researcher_pages(staff_client, live_campaign):
    """Ids are stripped of bidi controls when raters join, but rows stored before, and prompts, can still hold one:
    the page isolates each untrusted value, so it cannot reorder the columns and text around it."""
    from generation.models import GenerationBatch, Prompt

    link = services.create_invite_link(live_campaign)
    joined = services.join_with_invite(link.token, {"PROLIFIC_PID": "p-1", "STUDY_ID": "st-1", "SESSION_ID": "s-1"})
    rtl = {name: f"\u202e{name}-evil" for name in ("prolific_pid", "study_id", "session_id", "external_id")}
    Participation.objects.filter(pk=joined.pk).update(**rtl)
    joined.rater.__class__.objects.filter(pk=joined.rater_id).update(external_id=rtl["external_id"])

    response = staff_client.get(reverse("campaigns:detail", args=[live_campaign.pk]))
    page = html.unescape(response.content.decode())
    for value in rtl.values():
        assert f"<bdi>{value}</bdi>" in page
        assert page.count(value) == page.count(f"<bdi>{value}</bdi>")  # shown nowhere without isolation

    prompt = live_campaign.prompt_set.prompts.order_by("position").first()
    Prompt.objects.filter(pk=prompt.pk).update(text="\u202ea red apple")
    batch = staff_client.get(reverse("generation:batch_detail", args=[GenerationBatch.objects.get().pk]))
    assert "<td><bdi>\u202ea red apple</bdi></td>" in html.unescape(batch.content.decode())
