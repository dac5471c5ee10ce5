"""The campaign JSON API: bearer tokens and staff sessions, validation messages, status changes, refusals."""

import json
import time
from unittest import mock

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.test import Client
from django.urls import reverse

from annotation import services
from annotation.models import Campaign, Vote
from core.api_tokens import ApiTokenError, issue_api_token

pytestmark = pytest.mark.django_db

CAMPAIGNS = "/annotation/api/campaigns/"


@pytest.fixture
def api(researcher):
    """A client that authenticates with a bearer token and, like a script, never has a CSRF token."""
    return Client(enforce_csrf_checks=True, headers={"Authorization": f"Bearer {issue_api_token(researcher)}"})


def post(client, url, body, **extra):
    return client.post(
        url, body if isinstance(body, str) else json.dumps(body), content_type="application/json", **extra
    )


def test_create_with_a_bearer_token_and_read_it_back(api, researcher, two_models, prompt_set):
    body = {
        "name": "tuned vs base",
        "models": ["tuned", "base"],
        "prompt_set": "four",
        "seeds": "0-1",
        "criteria": {"visual_appeal": {"votes_per_item": 3, "instructions": "Which one would you hang on a wall?"}},
        "gold_share": 0,
        "quota_per_rater": 20,
        "completion_url": "https://app.prolific.com/submissions/complete?cc=ABC",
    }
    response = post(api, CAMPAIGNS, body)
    assert response.status_code == 201, response.content
    created = response.json()
    campaign = Campaign.objects.get()
    assert created["id"] == campaign.pk and created["status"] == "draft" and campaign.created_by == researcher
    assert created["models"] == ["tuned", "base"]  # the order given: tuned is model A
    assert created["seeds"] == [0, 1] and created["quota_per_rater"] == 20 and created["gold_share"] == 0
    assert list(created["criteria"]) == ["visual_appeal"]
    assert created["criteria"]["visual_appeal"]["votes_per_item"] == 3
    assert created["criteria"]["visual_appeal"]["instructions"] == "Which one would you hang on a wall?"

    listed = api.get(CAMPAIGNS).json()["campaigns"]
    assert [(c["name"], c["status"], c["percent"]) for c in listed] == [("tuned vs base", "draft", 0)]
    detail = api.get(f"{CAMPAIGNS}{campaign.pk}/").json()
    assert detail["progress"]["votes_needed"] == 0 and detail["invite_links"] == []
    assert [
        (w["criterion"], w["model_a"], w["model_b"], w["compared"], w["win_rate"]) for w in detail["win_rates"]
    ] == [("visual_appeal", "tuned", "base", 0, None)]
    assert detail["report"].endswith(f"/analysis/api/campaigns/{campaign.pk}/report?format=json")


def test_stop_rule_and_human_share_through_the_api_and_the_command(api, two_models, prompt_set):
    body = {"name": "watched", "models": ["base", "tuned"], "prompt_set": "four", "seeds": "0"}
    body |= {"stop_when_decided": True, "decision_width": 0.1, "human_share": 0.5}
    created = post(api, CAMPAIGNS, body).json()
    assert (created["stop_when_decided"], created["decision_width"], created["human_share"]) == (True, 0.1, 0.5)
    assert created["human_prompt_ids"] is None  # drawn when the items are built
    default = post(api, CAMPAIGNS, {**body, "name": "plain"} | {"stop_when_decided": None, "decision_width": None})
    assert default.json()["stop_when_decided"] is False and default.json()["decision_width"] is None
    call_command(
        "campaign", "create", "--name", "cli", "--models", "base", "tuned", "--prompt-set", "four", "--seeds", "0",
        "--stop-when-decided", "--decision-width", "0.2", "--human-share", "0.25",
    )  # fmt: skip
    cli = Campaign.objects.get(name="cli")
    assert (cli.stop_when_decided, cli.decision_width, cli.human_share) == (True, 0.2, 0.25)
    # Always editable (the anytime-valid interval holds at every look); the human share freezes with the items.
    services.update_campaign(cli, stop_when_decided=False, decision_width=None)
    assert "human_share" in services.STRUCTURAL_FIELDS and "decision_width" in services.FREE_FIELDS


def test_a_staff_session_must_send_the_csrf_token(researcher, two_models, prompt_set):
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(researcher)
    body = {"name": "from the browser", "models": ["base", "tuned"], "prompt_set": "four", "seeds": [0, 1]}
    refused = post(browser, CAMPAIGNS, body)
    assert refused.status_code == 403 and "CSRF" in refused.json()["error"] and not Campaign.objects.exists()

    browser.get(reverse("annotation:campaign_new"))  # any page with a form sets the csrftoken cookie
    response = post(browser, CAMPAIGNS, body, headers={"X-CSRFToken": browser.cookies["csrftoken"].value})
    assert response.status_code == 201 and Campaign.objects.get().seeds == [0, 1]
    assert set(Campaign.objects.get().criteria.values_list("criterion", flat=True)) == {
        "visual_appeal",
        "text_faithfulness",
    }


@pytest.mark.parametrize(
    "change, message",
    [
        ({"models": ["base"]}, "models: Choose at least two models to compare."),
        ({"models": ["base", "nope"]}, "models: There is no registered model named nope."),
        ({"seeds": "0-x"}, "seeds: Cannot read seeds '0-x'"),
        ({"seeds": [0, "x"]}, "seeds: Cannot read seeds 'x'"),
        ({"pairing": "vs_baseline"}, "baseline: With 'each model vs the baseline', choose the baseline."),
        ({"prompt_set": "missing"}, "prompt_set: There is no prompt set by that name."),
        ({"criteria": ["appeal"]}, "Unknown criteria: appeal."),
        (
            {"criteria": {"visual_appeal": {"k": 3}}},
            "Settings of visual_appeal can be: choices, instructions, votes_per_item.",
        ),
        (
            {"criteria": {"visual_appeal": {"votes_per_item": 99}}},
            "visual_appeal_votes_per_item: Raters per comparison must be between 1 and 50.",
        ),
        ({"gold_share": 0.8}, "gold_share: The gold share must be between 0 and 0.5."),
        ({"lease_seconds": 5}, "lease_seconds: The lease must be between 30 seconds and one day."),
        ({"colour": "red"}, "Unknown settings: colour."),
        ({"name": ""}, "Give name."),
    ],
)
def test_bad_input_is_refused_with_a_message(api, two_models, prompt_set, change, message):
    body = {"name": "x", "models": ["base", "tuned"], "prompt_set": "four", "seeds": "0-1", **change}
    response = post(api, CAMPAIGNS, body)
    assert response.status_code == 400 and message in response.json()["error"], response.json()
    assert not Campaign.objects.exists()


def test_invalid_json_and_a_taken_name_are_refused(api, two_models, prompt_set):
    assert post(api, CAMPAIGNS, "{not json").json() == {"error": "The request body is not valid JSON."}
    body = {"name": "once", "models": ["base", "tuned"], "prompt_set": "four", "seeds": "0"}
    assert post(api, CAMPAIGNS, body).status_code == 201
    response = post(api, CAMPAIGNS, body)
    assert response.status_code == 400 and response.json()["error"] == "name: A campaign named 'once' already exists."


def test_launch_pause_resume_close_and_invite_links(api, live_campaign, two_models, prompt_set):
    draft = services.create_campaign(name="draft", models=two_models, prompt_set=prompt_set, seeds=[0])
    response = post(api, f"{CAMPAIGNS}{draft.pk}/launch/", {})
    assert response.status_code == 200 and response.json()["status"] == "launching"
    response = post(api, f"{CAMPAIGNS}{draft.pk}/pause/", {})
    assert response.status_code == 400 and response.json()["error"] == "A launching campaign cannot become paused."

    url = f"{CAMPAIGNS}{live_campaign.pk}/"
    for action, status in [("pause", "paused"), ("resume", "live"), ("close", "closed")]:
        response = post(api, f"{url}{action}/", {})
        assert response.status_code == 200 and response.json()["status"] == status
        assert Campaign.objects.get(pk=live_campaign.pk).status == status
    assert post(api, f"{url}resume/", {}).json()["error"] == "A closed campaign cannot become live."
    assert api.get(f"{url}launch/").status_code == 405
    assert api.get(f"{CAMPAIGNS}999999/").json() == {"error": "There is no campaign 999999."}

    response = post(
        api, f"{url}invite-links/", {"label": "Prolific 1", "max_raters": 10, "base_url": "https://needle.example.org/"}
    )
    link = live_campaign.invite_links.get()
    assert response.status_code == 201 and response.json()["url"] == (
        f"https://needle.example.org/join/{link.token}/?PROLIFIC_PID={{{{%PROLIFIC_PID%}}}}&STUDY_ID={{{{%STUDY_ID%}}}}&SESSION_ID={{{{%SESSION_ID%}}}}"
    )
    assert (
        post(api, f"{url}invite-links/", {"max_raters": -1}).json()["error"]
        == "The rater limit cannot be negative; 0 means no limit."
    )
    assert api.get(f"{url}invite-links/").json()["invite_links"][0]["label"] == "Prolific 1"
    assert api.get(f"{url}raters/").json() == {"raters": []}


def test_raters_endpoint_lists_quality_rows(api, live_campaign):
    link = services.create_invite_link(live_campaign, label="wave 1")
    participation = services.join_with_invite(link.token, {"PROLIFIC_PID": "pid-9", "STUDY_ID": "s", "SESSION_ID": "x"})
    task = services.next_assignment(live_campaign, participation.rater)
    services.submit_vote(participation.rater, task.token, "left", seconds_on_task=4.5)
    [row] = api.get(f"{CAMPAIGNS}{live_campaign.pk}/raters/").json()["raters"]
    assert (row["source"], row["prolific_pid"], row["votes"], row["median_seconds"], row["left_share"]) == (
        "wave 1",
        "pid-9",
        1,
        4.5,
        1.0,
    )
    assert row["excluded"] is False and row["gold_accuracy"] is None


def test_excluding_a_rater_through_the_api_keeps_their_votes_flagged(api, live_campaign):
    participation = services.join_with_invite(services.create_invite_link(live_campaign).token, {"external_id": "w-1"})
    for task in services.open_tasks(live_campaign, participation.rater):
        services.submit_vote(participation.rater, task.token, "left")
    url = f"{CAMPAIGNS}{live_campaign.pk}/raters/{participation.pk}/exclude/"
    assert post(api, url, {}).json()["error"].startswith("Say why the rater is excluded")
    assert (
        post(api, f"{CAMPAIGNS}{live_campaign.pk}/raters/{participation.pk + 99}/exclude/", {"reason": "x"}).status_code
        == 404
    )
    response = post(api, url, {"reason": "straight-lined the left side"})
    assert response.status_code == 200 and response.json() == {
        "participation_id": participation.pk,
        "excluded": True,
        "exclusion_reason": "straight-lined the left side",
        "votes_flagged": 2,
    }
    assert Vote.objects.filter(excluded=True).count() == Vote.objects.count() == 2  # kept, flagged
    assert post(api, url, {"reason": "again"}).json()["votes_flagged"] == 0  # idempotent
    [row] = api.get(f"{CAMPAIGNS}{live_campaign.pk}/raters/").json()["raters"]
    assert row["excluded"] is True and row["exclusion_reason"] == "straight-lined the left side"


def test_anonymous_get_401_and_non_staff_get_403(client, researcher, two_models, prompt_set):
    assert client.get(CAMPAIGNS).status_code == 401
    assert "Bearer" in post(client, CAMPAIGNS, {}).json()["error"]
    token = issue_api_token(researcher)
    researcher.is_staff = False  # demoted after the token was issued
    researcher.save()
    response = client.get(CAMPAIGNS, headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 403 and response.json()["error"] == "Only staff accounts may use the campaign API."
    with pytest.raises(ApiTokenError, match="not an active staff account"):
        issue_api_token(researcher)
    member = get_user_model().objects.create_user("member", password="pw-long-enough-2")
    client.force_login(member)
    assert client.get(CAMPAIGNS).status_code == 403
    assert post(client, CAMPAIGNS, {"name": "x"}).status_code == 403
    assert not Campaign.objects.exists()


def test_tampered_expired_and_revoked_tokens_are_refused(client, researcher, settings):
    token = issue_api_token(researcher)
    assert client.get(CAMPAIGNS, headers={"Authorization": f"Bearer {token}"}).status_code == 200

    def refused(header):
        response = client.get(CAMPAIGNS, headers={"Authorization": header})
        assert response.status_code == 401, header
        return response.json()["error"]

    value, signature = token.rsplit(":", 1)
    assert (
        refused(f"Bearer {value}:{signature[:-1]}{'A' if signature[-1] != 'A' else 'B'}")
        == "The API token is not valid."
    )
    other_pk = token.replace(f"{researcher.pk}:", f"{researcher.pk + 1}:", 1)
    assert refused(f"Bearer {other_pk}") == "The API token is not valid."
    assert refused(f"Token {token}") == "Send the header as: Authorization: Bearer <token>."

    with mock.patch("django.core.signing.time.time", return_value=time.time() - 91 * 86_400):
        old = issue_api_token(researcher)
    assert "expired" in refused(f"Bearer {old}")
    with mock.patch("django.core.signing.time.time", return_value=time.time() - 2 * 86_400):
        two_days_old = issue_api_token(researcher)
    assert client.get(CAMPAIGNS, headers={"Authorization": f"Bearer {two_days_old}"}).status_code == 200
    settings.NEEDLE_API_TOKEN_MAX_AGE_DAYS = 1  # the lifetime is a setting
    assert "expired" in refused(f"Bearer {two_days_old}")

    researcher.set_password("a-new-password-4")
    researcher.save()
    assert "revoked" in refused(f"Bearer {token}")
