"""The annotation app's part of the bad-input corpus (evalsite/bad_input.py): campaigns and invite links through the
JSON API, the ``campaign`` command and the campaign form page.

Each input must be refused with a message that says what to fix, never a 500 or a traceback, and create nothing.
"""

from __future__ import annotations

import html
import json
import re

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import reverse

from annotation import services
from annotation.models import Campaign, CampaignCriterion, CampaignModel, InviteLink, Participation, PlacementCounter
from evalsite.bad_input import Answer, check, from_call, from_command, from_form_page, from_json_request, snapshot

pytestmark = pytest.mark.django_db

CAMPAIGNS = "/annotation/api/campaigns/"
GOOD = {"name": "new campaign", "models": ["base", "tuned"], "prompt_set": "four", "seeds": "0-1"}


def state():
    return snapshot(Campaign, CampaignModel, CampaignCriterion, InviteLink, Participation, PlacementCounter)


@pytest.fixture
def draft(two_models, prompt_set):
    return services.create_campaign(name="draft", models=two_models, prompt_set=prompt_set, seeds=[0, 1])


def post(client, url, body):
    data = body if isinstance(body, (str, bytes)) else json.dumps(body)
    return client.post(url, data, content_type="application/json")


# --- POST /annotation/api/campaigns/ ----------------------------------------------------------------------------------

CREATE_CASES = [
    ("criteria [1]", {"criteria": [1]}, ["criteria", "visual_appeal", "text_faithfulness"]),
    ('criteria [["x"]]', {"criteria": [["x"]]}, ["criteria", "visual_appeal"]),
    ("criteria a bare string", {"criteria": "visual_appeal"}, ["criteria", "list"]),
    ("criteria {name: 5}", {"criteria": {"visual_appeal": 5}}, ["visual_appeal", "votes_per_item"]),
    ("criteria with k 0", {"criteria": {"visual_appeal": {"votes_per_item": 0}}}, ["raters per comparison", "1", "50"]),
    (
        "criteria with k 10**30",
        {"criteria": {"visual_appeal": {"votes_per_item": 10**30}}},
        ["raters per comparison", "50"],
    ),
    ("criteria with only left", {"criteria": {"visual_appeal": {"choices": ["left"]}}}, ["left and right"]),
    ("criteria choices a string", {"criteria": {"visual_appeal": {"choices": "left"}}}, ["choices", "list"]),
    (
        "criteria instructions a list",
        {"criteria": {"visual_appeal": {"instructions": ["x"]}}},
        ["instructions", "text"],
    ),
    ("criteria unknown", {"criteria": {"beauty": {}}}, ["unknown criteria", "beauty", "visual_appeal"]),
    ("criteria empty", {"criteria": []}, ["at least one criterion"]),
    ('name ["a","b"]', {"name": ["a", "b"]}, ["name", "text"]),
    ("name a number", {"name": 5}, ["name", "text"]),
    ("name empty", {"name": ""}, ["give name"]),
    ("name 300 characters", {"name": "n" * 300}, ["200 characters"]),
    ("the same model twice", {"models": ["base", "base"]}, ["two different models"]),
    ("one model", {"models": ["base"]}, ["at least two models"]),
    ("models a bare string", {"models": "base"}, ["at least two models"]),
    ("models numbers", {"models": [1, 2]}, ["models", "names"]),
    ("models nested lists", {"models": [["base"], ["tuned"]]}, ["models", "names"]),
    ("models an object", {"models": {"base": 1}}, ["models", "list"]),
    ("an unknown model", {"models": ["base", "nope"]}, ["no registered model named nope"]),
    ("prompt_set a list", {"prompt_set": ["four"]}, ["prompt_set", "name"]),
    ("prompt_set unknown", {"prompt_set": "nope"}, ["no prompt set"]),
    ("seeds backwards", {"seeds": "5-1"}, ["5-1", "backwards"]),
    ("a million seeds", {"seeds": "0-1000000"}, ["100,000"]),
    ("a negative seed", {"seeds": [-1]}, ["seed", "0"]),
    ("a seed that is a word", {"seeds": ["a"]}, ["seeds", "'a'"]),
    ("a fractional seed", {"seeds": [1.5]}, ["seeds", "1.5"]),
    ("a seed that is true", {"seeds": [True]}, ["seeds", "whole numbers"]),
    ("a seed twice", {"seeds": [1, 1]}, ["twice"]),
    ("seeds an object", {"seeds": {"a": 1}}, ["seeds", "list"]),
    ("a seed past 2^63", {"seeds": [2**70]}, ["seed", "0"]),
    (
        "gold share NaN",
        '{"name": "x", "models": ["base", "tuned"], "prompt_set": "four", "seeds": "0", "gold_share": NaN}',
        ["gold_share", "number"],
    ),
    ("gold share 0.9", {"gold_share": 0.9}, ["gold share", "0.5"]),
    ("gold share a word", {"gold_share": "abc"}, ["gold_share", "number"]),
    ("gold share a list", {"gold_share": [0.1]}, ["gold_share", "number"]),
    ("gold accuracy 2", {"gold_min_accuracy": 2}, ["accuracy", "between 0 and 1"]),
    ("gold answers 0", {"gold_min_answers": 0}, ["gold_min_answers", "1"]),
    ("gold answers 10**30", {"gold_min_answers": 10**30}, ["gold_min_answers", "1,000"]),
    ("quota 10**30", {"quota_per_rater": 10**30}, ["quota", "1,000,000"]),
    ("quota negative", {"quota_per_rater": -1}, ["quota", "negative"]),
    ("quota fractional", {"quota_per_rater": 1.5}, ["quota_per_rater", "whole number"]),
    ("lease 5 s", {"lease_seconds": 5}, ["lease", "30 seconds"]),
    ("lease 10**30 s", {"lease_seconds": 10**30}, ["lease", "one day"]),
    ("completion URL javascript:", {"completion_url": "javascript:alert(1)"}, ["completion_url", "URL"]),
    ("completion URL a number", {"completion_url": 5}, ["completion_url", "text"]),
    ("rater title empty", {"rater_title": ""}, ["rater_title", "required"]),
    ("rater title a list", {"rater_title": ["x"]}, ["rater_title", "text"]),
    ("consent text with a NUL character", {"consent_text": "I agree\x00"}, ["consent_text", "NUL"]),
    (
        "a name with a lone surrogate",
        '{"name": "x\\udc00", "models": ["base", "tuned"], "prompt_set": "four", "seeds": "0"}',
        ["name", "UTF-8"],
    ),
    (
        "a criterion's instructions with a NUL character",
        {"criteria": {"visual_appeal": {"instructions": "\x00"}}},
        ["instructions", "NUL"],
    ),
    ("pairing unknown", {"pairing": "bogus"}, ["pairing", "all_pairs", "vs_baseline"]),
    ("stop when decided a string", {"stop_when_decided": "yes"}, ["stop_when_decided", "true or false"]),
    ("stop when decided a number", {"stop_when_decided": 1}, ["stop_when_decided", "true or false"]),
    ("decision width 0", {"decision_width": 0}, ["decision width", "0.01", "1"]),
    ("decision width 10 (points, not a fraction)", {"decision_width": 10}, ["decision width", "fraction"]),
    ("decision width a word", {"decision_width": "narrow"}, ["decision_width", "number"]),
    (
        "decision width NaN",
        '{"name": "x", "models": ["base", "tuned"], "prompt_set": "four", "seeds": "0", "decision_width": NaN}',
        ["decision_width", "number"],
    ),
    ("human share 0", {"human_share": 0}, ["human share", "0.01", "1"]),
    ("human share 1.5", {"human_share": 1.5}, ["human share", "1"]),
    ("human share a list", {"human_share": [0.5]}, ["human_share", "number"]),
    ("vs baseline without a baseline", {"pairing": "vs_baseline"}, ["choose the baseline"]),
    ("baseline unknown", {"pairing": "vs_baseline", "baseline": "nope"}, ["baseline", "no registered model"]),
    ("baseline a list", {"pairing": "vs_baseline", "baseline": ["base"]}, ["baseline", "name"]),
    ("adaptive pairs with two models", {"pair_selection": "adaptive"}, ["adaptive", "three or more models"]),
    ("pair selection unknown", {"pair_selection": "ucb"}, ["pair", "uniform", "adaptive"]),
    ("pair selection a list", {"pair_selection": ["adaptive"]}, ["pair_selection", "text"]),
    ("an unknown setting", {"colour": "red"}, ["unknown settings", "colour"]),
    ("a body that is not JSON", "{not json", ["not valid JSON"]),
    ("a body that is a list", "[1, 2]", ["JSON object"]),
    ("a body that is a string", '"campaign"', ["JSON object"]),
    ("an empty body", "", ["give", "models"]),
    ("a body that is not UTF-8", b"\xff\xfe{", ["not valid JSON"]),
    ("a body of 3 MB", json.dumps({**GOOD, "rater_title": "x" * 3_000_000}), ["too large", "2,621,440"]),
]


@pytest.mark.parametrize("case,change,says", CREATE_CASES, ids=[c[0] for c in CREATE_CASES])
def test_api_refuses_bad_campaign_settings(case, change, says, api, two_models, prompt_set):
    body = change if isinstance(change, (str, bytes)) else {**GOOD, **change}
    before = state()
    answer = from_json_request(lambda: post(api, CAMPAIGNS, body))
    check(f"API create: {case}", "API", answer, says=says, before=before, after=state())


def test_api_refuses_a_taken_name(api, draft):
    before = state()
    answer = from_json_request(lambda: post(api, CAMPAIGNS, {**GOOD, "name": "draft"}))
    check("API create: a taken name", "API", answer, says=["already exists"], before=before, after=state())


INVITE_CASES = [
    ("max_raters 10**30", {"max_raters": 10**30}, ["rater limit", "1,000,000"]),
    ("max_raters negative", {"max_raters": -1}, ["rater limit", "negative"]),
    ("max_raters a string", {"max_raters": "5"}, ["max_raters", "whole number"]),
    ("max_raters fractional", {"max_raters": 1.5}, ["max_raters", "whole number"]),
    ("max_raters true", {"max_raters": True}, ["max_raters", "whole number"]),
    ("base_url ftp", {"base_url": "ftp://example.org"}, ["base_url", "https://"]),
    ("base_url a number", {"base_url": 5}, ["base_url", "https://"]),
    ("label a list", {"label": ["a"]}, ["label", "text"]),
    ("label 500 characters", {"label": "l" * 500}, ["label", "200 characters"]),
    ("label with a NUL character", {"label": "wave\x001"}, ["label", "NUL"]),
    ("label with a lone surrogate", '{"label": "wave \\ud800"}', ["label", "UTF-8"]),
    ("an unknown setting", {"colour": "red"}, ["unknown", "colour", "max_raters"]),
    ("a body that is a list", "[1]", ["JSON object"]),
    ("a body that is not JSON", "{", ["not valid JSON"]),
]


@pytest.mark.parametrize("case,body,says", INVITE_CASES, ids=[c[0] for c in INVITE_CASES])
def test_api_refuses_bad_invite_links(case, body, says, api, draft):
    before = state()
    answer = from_json_request(lambda: post(api, f"{CAMPAIGNS}{draft.pk}/invite-links/", body))
    check(f"API invite link: {case}", "API", answer, says=says, before=before, after=state())


def test_api_refuses_bad_exclusions_and_actions(api, draft):
    participation = services.invite_account(draft, get_user_model().objects.create_user("rater"))
    exclude = f"{CAMPAIGNS}{draft.pk}/raters/{participation.pk}/exclude/"
    for case, url, body, says in [
        ("exclude with a number as reason", exclude, {"reason": 5}, ["why", "reason"]),
        ("exclude with an empty reason", exclude, {"reason": " "}, ["why", "reason"]),
        ("exclude with a NUL character in the reason", exclude, {"reason": "bot\x00"}, ["reason", "NUL"]),
        ("exclude with a lone surrogate in the reason", exclude, '{"reason": "bot \\udfff"}', ["reason", "UTF-8"]),
        ("exclude with a body that is a list", exclude, [1], ["why", "reason"]),
        (
            "exclude an unknown rater",
            f"{CAMPAIGNS}{draft.pk}/raters/999999/exclude/",
            {"reason": "x"},
            ["no rater", "raters/"],
        ),
        (
            "exclude a rater id past 2^63",
            f"{CAMPAIGNS}{draft.pk}/raters/99999999999999999999/exclude/",
            {"reason": "x"},
            ["no rater"],
        ),
        ("pause a draft", f"{CAMPAIGNS}{draft.pk}/pause/", {}, ["draft", "cannot become paused"]),
        ("launch an unknown campaign", f"{CAMPAIGNS}999999/launch/", {}, ["no campaign 999999"]),
        ("launch a campaign id past 2^63", f"{CAMPAIGNS}99999999999999999999/launch/", {}, ["no campaign"]),
    ]:
        before = state()
        answer = from_json_request(lambda: post(api, url, body))
        check(f"API: {case}", "API", answer, says=says, before=before, after=state())
    assert not Participation.objects.filter(excluded=True).exists()


# --- manage.py campaign -----------------------------------------------------------------------------------------------

COMMAND_CASES = [
    ("the same model twice", ["--models", "base", "base"], ["two different models"]),
    ("seeds backwards", ["--seeds", "5-1"], ["backwards"]),
    ("a million seeds", ["--seeds", "0-1000000"], ["100,000"]),
    ("gold share NaN", ["--gold-share", "nan"], ["gold_share", "number"]),
    ("quota 10**30", ["--quota", str(10**30)], ["quota", "1,000,000"]),
    ("lease 5 s", ["--lease", "5"], ["lease", "30 seconds"]),
    ("an empty name", ["--name", ""], ["give name"]),
    ("an unknown prompt set", ["--prompt-set", "nope"], ["no prompt set"]),
    ("a completion URL that is not one", ["--completion-url", "not a url"], ["completion_url", "URL"]),
    ("an unknown criterion", ["--criteria", "beauty"], ["criteria", "invalid choice"]),
    ("decision width 0", ["--decision-width", "0"], ["decision width", "0.01"]),
    ("decision width NaN", ["--decision-width", "nan"], ["decision_width", "number"]),
    ("human share 2", ["--human-share", "2"], ["human share", "1"]),
    ("human share a word", ["--human-share", "half"], ["human-share", "invalid float"]),
    ("adaptive pairs with two models", ["--pair-selection", "adaptive"], ["three or more models"]),
    ("an unknown pair selection", ["--pair-selection", "ucb"], ["pair-selection", "invalid choice"]),
]


@pytest.mark.parametrize("case,changes,says", COMMAND_CASES, ids=[c[0] for c in COMMAND_CASES])
def test_campaign_create_command_refuses_bad_settings(case, changes, says, two_models, prompt_set):
    args = {"--name": ["new"], "--models": ["base", "tuned"], "--prompt-set": ["four"], "--seeds": ["0-1"]}
    args[changes[0]] = changes[1:]
    before = state()
    answer = from_command("campaign", "create", *[p for flag, values in args.items() for p in (flag, *values)])
    check(f"campaign create: {case}", "command", answer, says=says, before=before, after=state())


def test_campaign_commands_refuse_bad_invites_and_names(draft):
    for case, argv, says in [
        (
            "invite with max raters 10**30",
            ["invite", "draft", "--max-raters", str(10**30)],
            ["rater limit", "1,000,000"],
        ),
        ("invite with max raters -1", ["invite", "draft", "--max-raters", "-1"], ["rater limit", "negative"]),
        ("invite with an ftp base URL", ["invite", "draft", "--base-url", "ftp://x"], ["base-url", "https://"]),
        ("launch an unknown campaign", ["launch", "nope"], ["no campaign", "nope"]),
        ("pause a draft", ["pause", "draft"], ["draft", "cannot become paused"]),
    ]:
        before = state()
        check(f"campaign: {case}", "command", from_command("campaign", *argv), says=says, before=before, after=state())


# --- The campaign form page and the invite-link service ------------------------------------------------------------

FORM_CASES = [
    ("seeds backwards", {"seeds": "5-1"}, "seeds", ["backwards"]),
    ("a million seeds", {"seeds": "0-1000000"}, "seeds", ["100,000"]),
    ("quota 10**30", {"quota_per_rater": str(10**30)}, "quota_per_rater", ["1,000,000"]),
    ("gold answers 10**30", {"gold_min_answers": str(10**30)}, "gold_min_answers", ["1,000"]),
    ("one model", {"models": ["base"]}, "models", ["at least two"]),
    ("gold share NaN", {"gold_share": "nan"}, "gold_share", ["number"]),
    ("decision width 0", {"decision_width": "0"}, "decision_width", ["decision width", "0.01"]),
    ("decision width a word", {"decision_width": "narrow"}, "decision_width", ["number"]),
    ("human share 0", {"human_share": "0"}, "human_share", ["human share", "0.01"]),
    ("adaptive pairs with two models", {"pair_selection": "adaptive"}, "pair_selection", ["three or more models"]),
]


@pytest.mark.parametrize("case,changes,field,says", FORM_CASES, ids=[c[0] for c in FORM_CASES])
def test_campaign_form_page_shows_each_error_under_its_field(
    case, changes, field, says, researcher, client, two_models, prompt_set
):
    client.force_login(researcher)
    from annotation.forms import CampaignForm

    data = {name: f.initial for name, f in CampaignForm().fields.items() if f.initial is not None}
    data.update({"name": "new", "models": ["base", "tuned"], "prompt_set": "four", "seeds": "0-1", **changes})
    data = {k: v for k, v in data.items() if v is not False}
    before = state()
    answer = from_form_page(lambda: client.post(reverse("annotation:campaign_new"), data))
    check(f"campaign form: {case}", "form", answer, says=says, field=field, before=before, after=state())


def test_services_refuse_values_of_the_wrong_type(two_models, prompt_set, draft):
    base, tuned = two_models
    good = {"name": "svc", "models": [base, tuned], "prompt_set": prompt_set, "seeds": [0]}
    for case, call, says in [
        (
            "create_campaign: a name that is a list",
            lambda: services.create_campaign(**{**good, "name": ["a", "b"]}),
            ["name", "text"],
        ),
        (
            "create_campaign: the same model twice",
            lambda: services.create_campaign(**{**good, "models": [base, base]}),
            ["two different models"],
        ),
        (
            "create_campaign: criteria keyed by a number",
            lambda: services.create_campaign(**good, criteria={1: {}}),
            ["unknown criteria", "1"],
        ),
        (
            "create_campaign: seeds backwards in a list",
            lambda: services.create_campaign(**{**good, "seeds": [-5]}),
            ["seed", "0"],
        ),
        (
            "create_campaign: quota 10**30",
            lambda: services.create_campaign(**good, quota_per_rater=10**30),
            ["quota", "1,000,000"],
        ),
        (
            "create_invite_link: max raters 10**30",
            lambda: services.create_invite_link(draft, max_raters=10**30),
            ["rater limit", "1,000,000"],
        ),
        (
            "create_invite_link: max raters a string",
            lambda: services.create_invite_link(draft, max_raters="5"),
            ["rater limit", "whole number"],
        ),
        (
            "create_campaign: stop when decided a string",
            lambda: services.create_campaign(**good, stop_when_decided="yes"),
            ["stop", "true or false"],
        ),
        (
            "create_campaign: decision width infinite",
            lambda: services.create_campaign(**good, decision_width=float("inf")),
            ["decision width", "fraction"],
        ),
        (
            "create_campaign: human share 0",
            lambda: services.create_campaign(**good, human_share=0.0),
            ["human share", "fraction of prompts"],
        ),
        (
            "create_campaign: adaptive pairs with two models",
            lambda: services.create_campaign(**good, pair_selection="adaptive"),
            ["three or more models"],
        ),
        (
            "update_campaign: adaptive pairs on a two-model draft",
            lambda: services.update_campaign(draft, pair_selection="adaptive"),
            ["three or more models"],
        ),
        (
            "update_campaign: decision width 5",
            lambda: services.update_campaign(draft, decision_width=5),
            ["decision width", "0.01"],
        ),
        # Text PostgreSQL cannot store, refused by the service itself (not only at the API's door).
        ("create_campaign: a NUL in the name", lambda: services.create_campaign(**{**good, "name": "a\x00b"}), ["NUL"]),
        (
            "create_invite_link: a lone surrogate in the label",
            lambda: services.create_invite_link(draft, label="x\ud800"),
            ["surrogate"],
        ),
    ]:
        before = state()
        check(case, "service", from_call(call, services.AnnotationError), says=says, before=before, after=state())


# --- The rater's invite link: crowd ids a stranger wrote ------------------------------------------------------------


def from_rater_page(response) -> Answer:
    """A rater page's answer: a 4xx page is a refusal whose message is the page's text, a 5xx a traceback."""
    text = html.unescape(re.sub(r"<[^>]+>", " ", response.content.decode()))
    if response.status_code >= 500:
        return Answer("traceback", text, status=response.status_code)
    return Answer("refused" if response.status_code >= 400 else "accepted", text, status=response.status_code)


def test_the_invite_link_refuses_crowd_ids_that_are_no_id_or_someone_else_s(draft):
    from django.core.cache import cache

    Campaign.objects.filter(pk=draft.pk).update(status=Campaign.Status.LIVE)
    link = services.create_invite_link(draft)
    url = reverse("rate:join", args=[link.token])
    owner = {"PROLIFIC_PID": "5f1d0c0ffee0000000000003", "STUDY_ID": "study-44", "SESSION_ID": "session-9"}
    assert Client().post(url, owner).status_code == 302
    for case, method, params, says in [
        (
            "join: a PROLIFIC_PID of 101 characters (consent page)",
            "get",
            {**owner, "PROLIFIC_PID": "p" * 101},
            ["PROLIFIC_PID", "101 characters", "at most 100", "study platform"],
        ),
        (
            "join: a SESSION_ID of 5,000 characters",
            "post",
            {**owner, "SESSION_ID": "s" * 5000},
            ["SESSION_ID", "5,000 characters", "at most 100"],
        ),
        ("join: an external_id of 201 characters", "post", {"external_id": "e" * 201}, ["external_id", "at most 200"]),
        (
            "join: someone else's PROLIFIC_PID with another SESSION_ID",
            "post",
            {**owner, "SESSION_ID": "session-10"},
            ["already started this study in another session", "Prolific", "organisers"],
        ),
        (
            "join: someone else's PROLIFIC_PID alone",
            "post",
            {"PROLIFIC_PID": owner["PROLIFIC_PID"]},
            ["already started this study in another session"],
        ),
    ]:
        cache.clear()  # refusals of someone else's id count toward the bad-token limit
        before = state()
        answer = from_rater_page(getattr(Client(), method)(url, params))
        check(case, "rater page", answer, says=says, before=before, after=state())
    for case, params, field in [
        ("join_with_invite: a STUDY_ID of 101 characters", {**owner, "STUDY_ID": "s" * 101}, "STUDY_ID"),
        (
            "join_with_invite: a NUL-padded PROLIFIC_PID of 200 characters",
            {"PROLIFIC_PID": "\x00" + "p" * 199},
            "PROLIFIC_PID",
        ),
    ]:
        before = state()
        answer = from_call(lambda: services.join_with_invite(link.token, params), services.AnnotationError)
        check(case, "service", answer, says=[field, "at most 100"], field=field, before=before, after=state())
