"""The researchers' campaign pages in annotation: create, steer, invite, exclude, admin; staff only.

The campaign page itself (progress, win rates, the votes CSV) is tested in analysis/tests/test_campaign_page.py."""

import html

import pytest
from django.contrib.auth import get_user_model
from django.urls import reverse

from annotation import services
from annotation.models import Campaign, CampaignCriterion, Participation, Vote
from annotation.tests.campaign_fixtures import CAMPAIGN_FORM

pytestmark = pytest.mark.django_db

PROLIFIC_SUFFIX = "?PROLIFIC_PID={{%PROLIFIC_PID%}}&STUDY_ID={{%STUDY_ID%}}&SESSION_ID={{%SESSION_ID%}}"


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
    response = staff_client.post(reverse("annotation:campaign_new"), {**CAMPAIGN_FORM, **change})
    assert response.status_code == 200 and not Campaign.objects.exists()
    errors = response.context["form"].errors
    assert list(errors) == [field] and message in errors[field][0]
    assert f'id="{field}-error"' in response.content.decode()


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
