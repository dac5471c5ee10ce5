"""JSON endpoints answer errors in JSON: part of the bad-input corpus (evalsite/bad_input.py).

Under /annotation/api/ and /analysis/api/, and at every other JSON endpoint (progress.json, tasks.json, the rater's
vote), a bad URL, a wrong method, an oversized body or an unexpected failure must come back as JSON with an "error"
message a script can show, never as an HTML page or a bare 500.
"""

from __future__ import annotations

import json

import pytest
from django.contrib.auth import get_user_model

from annotation import services
from annotation.models import Campaign, InviteLink, Vote
from evalsite.bad_input import check, from_json_request, snapshot

pytestmark = pytest.mark.django_db

HUGE_ID = "99999999999999999999"
BIG_BODY = json.dumps({"reason": "x" * 3_000_000})


def state():
    return snapshot(Campaign, InviteLink, Vote)


@pytest.fixture
def browser(researcher, client):
    client.force_login(researcher)
    return client


@pytest.fixture
def draft(two_models, prompt_set):
    return services.create_campaign(name="draft", models=two_models, prompt_set=prompt_set, seeds=[0])


def api_cases(campaign_id):
    api = "/annotation/api/campaigns/"
    return [
        ("a campaign id that is not a number", "get", f"{api}abc/", None, 404, ["/annotation/api/campaigns/abc/"]),
        ("a path that is no endpoint", "get", "/annotation/api/nothing-here", None, 404, ["no such", "nothing-here"]),
        ("a campaign id past 2^63", "get", f"{api}{HUGE_ID}/", None, 404, ["no campaign"]),
        ("GET on an action", "get", f"{api}{campaign_id}/launch/", None, 405, ["POST"]),
        ("PUT on the campaign list", "put", api, "{}", 405, ["GET or POST"]),
        ("DELETE on a campaign", "delete", f"{api}{campaign_id}/", None, 405, ["GET"]),
        (
            "an invite link body of 3 MB",
            "post",
            f"{api}{campaign_id}/invite-links/",
            BIG_BODY,
            413,
            ["too large", "2,621,440"],
        ),
        ("a campaign body of 3 MB", "post", api, BIG_BODY, 413, ["too large"]),
        (
            "a campaign whose decision width is in points, not a fraction",
            "post",
            api,
            '{"name": "w", "models": ["base", "tuned"], "prompt_set": "four", "seeds": "0", "decision_width": 10}',
            400,
            ["decision width", "fraction"],
        ),
        (
            "a campaign whose human share is a word",
            "post",
            api,
            '{"name": "h", "models": ["base", "tuned"], "prompt_set": "four", "seeds": "0", "human_share": "half"}',
            400,
            ["human_share", "number"],
        ),
        ("a raters list of a campaign id past 2^63", "get", f"{api}{HUGE_ID}/raters/", None, 404, ["no campaign"]),
        (
            "a report of a campaign id that is not a number",
            "get",
            "/analysis/api/campaigns/abc/report",
            None,
            404,
            ["no such"],
        ),
        (
            "a report of a campaign id past 2^63",
            "get",
            f"/analysis/api/campaigns/{HUGE_ID}/report",
            None,
            404,
            ["no campaign"],
        ),
        (
            "a report in an unknown format",
            "get",
            f"/analysis/api/campaigns/{campaign_id}/report?format=docx",
            None,
            400,
            ["format", "json"],
        ),
        (
            "a report with 10**30 rounds",
            "get",
            f"/analysis/api/campaigns/{campaign_id}/report?rounds={10**30}",
            None,
            400,
            ["rounds"],
        ),
        (
            "a report with a word for seed",
            "get",
            f"/analysis/api/campaigns/{campaign_id}/report?seed=abc",
            None,
            400,
            ["seed", "whole number"],
        ),
        ("POST on a report", "post", f"/analysis/api/campaigns/{campaign_id}/report", "{}", 405, ["GET"]),
    ]


@pytest.mark.parametrize("index", range(15))
def test_api_errors_are_json(index, api, draft):
    case, method, url, body, status, says = api_cases(draft.pk)[index]
    before = state()
    kwargs = {"data": body, "content_type": "application/json"} if body is not None else {}
    answer = from_json_request(lambda: getattr(api, method)(url, **kwargs))
    check(f"JSON endpoint: {case}", "API", answer, says=says, before=before, after=state())
    assert answer.status == status or answer.kind != "refused" or not answer.json, (answer.status, answer.message)


def test_other_json_endpoints_answer_errors_in_json(browser, draft):
    for case, method, url, says in [
        ("batch progress for an id past 2^63", "get", f"/generation/progress.json?id={HUGE_ID}", None),
        ("progress of an unknown run", "get", "/training/runs/999999/progress.json", ["no such", "run"]),
        ("progress of a run id past 2^63", "get", f"/training/runs/{HUGE_ID}/progress.json", ["no such", "run"]),
        (
            "progress of an unknown campaign",
            "get",
            "/annotation/campaigns/999999/progress.json",
            ["no such", "campaign"],
        ),
        ("POST on a campaign's progress", "post", f"/annotation/campaigns/{draft.pk}/progress.json", ["GET"]),
    ]:
        before = state()
        answer = from_json_request(lambda: getattr(browser, method)(url))
        if says is None:  # an id no batch can have is simply not listed
            assert answer.kind == "accepted" and json.loads(answer.message) == {"batches": []}, answer
            continue
        check(f"JSON endpoint: {case}", "API", answer, says=says, before=before, after=state())


def test_the_rater_json_endpoints_answer_errors_in_json(client, draft):
    user = get_user_model().objects.create_user("rater", password="pw-long-enough-1")
    participation = services.invite_account(draft, user)
    client.force_login(user)
    vote = f"/rate/{participation.token}/vote"
    for case, send, says in [
        ("GET on the vote endpoint", lambda: client.get(vote), ["POST"]),
        ("a vote body of 3 MB", lambda: client.post(vote, BIG_BODY, content_type="application/json"), ["too large"]),
        ("POST on tasks.json", lambda: client.post(f"/rate/{participation.token}/tasks.json"), ["GET"]),
        (
            "a vote for an unknown rater",
            lambda: client.post("/rate/" + "x" * 43 + "/vote", "{}", content_type="application/json"),
            ["not yours", "invitation link"],
        ),
    ]:
        before = state()
        check(f"rater JSON: {case}", "API", from_json_request(send), says=says, before=before, after=state())


def test_an_unexpected_failure_is_a_json_500_with_the_traceback_in_the_log(api, draft, monkeypatch, caplog):
    def fail(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(services, "apply_campaign_action", fail)
    before = state()
    response = api.post(f"/annotation/api/campaigns/{draft.pk}/launch/", "{}", content_type="application/json")
    assert response.status_code == 500 and response["Content-Type"].startswith("application/json")
    error = response.json()["error"]
    assert "unexpected" in error.lower() and "disk on fire" not in error and "Traceback" not in error
    assert state() == before
    assert any("disk on fire" in (r.exc_text or "") or r.exc_info for r in caplog.records)


def test_a_plain_text_refusal_at_a_json_endpoint_keeps_its_words(browser, draft):
    response = browser.get(f"/analysis/campaigns/{draft.pk}/report.json", {"rounds": "10"})
    assert response.status_code == 400 and response["Content-Type"].startswith("application/json")
    assert "Bootstrap rounds must be a whole number" in response.json()["error"]
