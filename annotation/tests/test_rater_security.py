"""What a rater must not be able to do or learn: other raters' tasks, researcher pages, model names, token guessing."""

import json
import re
import secrets
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.core.cache import cache
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from annotation import rater_access, services
from annotation.models import Assignment, GoldImage, Participation, Vote
from annotation.tests.test_rater_pages import IMAGE_LINK
from core import ratelimit
from generation.models import GeneratedImage, TextToImageModel

pytestmark = pytest.mark.django_db

PROLIFIC = {"PROLIFIC_PID": "5f1d0c0ffee0000000000002", "STUDY_ID": "study-43", "SESSION_ID": "session-8"}
URL_SAFE_TOKEN = re.compile(r"[A-Za-z0-9_-]{43,}")


@pytest.fixture(autouse=True)
def _fresh_rate_limits(monkeypatch):
    cache.clear()
    # Fixed windows are cut from the clock: pin it so a window never ends mid-test.
    monkeypatch.setattr(ratelimit, "clock", lambda: 1_700_000_000.0)
    yield
    cache.clear()


def join(client, campaign, params=None, link=None) -> Participation:
    link = link or services.create_invite_link(campaign)
    url = reverse("rate:join", args=[link.token])
    client.get(url, params or {})
    response = client.post(url, params or {})
    assert response.status_code == 302, response.content
    return Participation.objects.get(token=response.url.split("/")[2])


def first_task(client, participation) -> dict:
    return client.get(reverse("rate:tasks", args=[participation.token])).json()["tasks"][0]


def post_vote(client, participation, body, **extra):
    return client.post(
        reverse("rate:vote", args=[participation.token]), json.dumps(body), content_type="application/json", **extra
    )


# --- Other raters' tasks and pages ------------------------------------------------------------------


def test_a_rater_cannot_fetch_another_raters_images(live_campaign):
    alice, bob = Client(), Client()
    pa = join(alice, live_campaign)
    join(bob, live_campaign)
    task = first_task(alice, pa)
    assert alice.get(task["images"]["left"]).status_code == 200
    # Alice's link copied into Bob's browser, or into a browser that joined nothing: the same 404.
    assert bob.get(task["images"]["left"]).status_code == 404
    assert Client().get(task["images"]["right"]).status_code == 404
    # A link altered by one character is no link at all.
    link = task["images"]["left"]
    forged = link[:-1] + ("A" if link[-1] != "A" else "B")
    assert alice.get(forged).status_code == 404


def test_a_rater_cannot_vote_on_another_raters_task(live_campaign):
    alice, bob = Client(), Client()
    pa, pb = join(alice, live_campaign), join(bob, live_campaign)
    task = first_task(alice, pa)
    mine = post_vote(bob, pb, {"task": task["id"], "choice": "left"})
    assert mine.status_code == 409 and "No such task" in mine.json()["error"]
    theirs = post_vote(bob, pa, {"task": task["id"], "choice": "left"})
    assert theirs.status_code == 404
    assert not Vote.objects.exists()


def test_a_rater_cannot_vote_on_an_expired_task(client, live_campaign):
    participation = join(client, live_campaign)
    task = first_task(client, participation)
    Assignment.objects.filter(token=task["id"]).update(expires_at=timezone.now() - timedelta(seconds=1))
    response = post_vote(client, participation, {"task": task["id"], "choice": "left"})
    assert response.status_code == 409 and "expired" in response.json()["error"]
    assert not Vote.objects.exists()


def test_a_rater_cannot_open_another_participations_pages(live_campaign):
    alice, bob = Client(), Client()
    pa, pb = join(alice, live_campaign), join(bob, live_campaign)
    made_up = secrets.token_urlsafe(32)
    for name in ("rate:page", "rate:tasks", "rate:consent", "rate:done"):
        theirs = bob.get(reverse(name, args=[pa.token]))
        unknown = bob.get(reverse(name, args=[made_up]))
        assert theirs.status_code == unknown.status_code == 404, name
        assert theirs.content == unknown.content, f"{name}: another rater's page must read as one that does not exist"
        assert bob.get(reverse(name, args=[pb.token])).status_code in (200, 302)
    # A signed-in invited account owns its own participations, not anonymous raters'.
    user = get_user_model().objects.create_user("invited", password="a-long-rater-password")
    own = services.invite_account(live_campaign, user)
    account = Client()
    account.force_login(user)
    assert account.get(reverse("rate:page", args=[pa.token])).status_code == 404
    assert account.get(reverse("rate:page", args=[own.token])).status_code == 302  # to its consent page
    assert bob.get(reverse("rate:page", args=[own.token])).status_code == 404


# --- Researcher pages -------------------------------------------------------------------------


def test_researcher_pages_refuse_anonymous_raters_and_invited_accounts(live_campaign):
    rater = Client()
    join(rater, live_campaign)
    user = get_user_model().objects.create_user("invited", password="a-long-rater-password")
    services.invite_account(live_campaign, user)
    account = Client()
    account.force_login(user)
    sha = GeneratedImage.objects.first().sha256
    model_names = list(TextToImageModel.objects.values_list("name", flat=True))
    pk = live_campaign.pk
    researcher_urls = [
        "/generation/",
        "/generation/progress.json",
        f"/generation/images/{sha}.png",
        "/admin/",
        "/admin/annotation/",
        "/annotation/",
        f"/annotation/campaigns/{pk}/",
        f"/annotation/campaigns/{pk}/progress.json",
        f"/annotation/campaigns/{pk}/votes.csv",
        "/annotation/api/campaigns/",
        f"/annotation/api/campaigns/{pk}/raters/",
    ]
    for client in (rater, account):
        for url in researcher_urls:
            response = client.get(url)
            assert response.status_code in (302, 401, 403, 404), url
            if response.status_code == 302:
                assert "login" in response.url, url
            body = response.content.decode(errors="replace")
            assert not any(f">{name}<" in body for name in model_names), url
            assert response.get("Content-Type", "").split(";")[0] != "image/png", url


# --- CSRF -------------------------------------------------------------------------------------


def test_csrf_is_enforced_on_consent_and_on_votes(live_campaign):
    browser = Client(enforce_csrf_checks=True)
    link = services.create_invite_link(live_campaign)
    url = reverse("rate:join", args=[link.token])
    assert browser.post(url, PROLIFIC).status_code == 403
    assert not Participation.objects.exists()

    browser.get(url, PROLIFIC)  # the consent page sets the CSRF cookie
    token = browser.cookies["csrftoken"].value
    agreed = browser.post(url, {**PROLIFIC, "csrfmiddlewaretoken": token})
    assert agreed.status_code == 302
    participation = Participation.objects.get()

    browser.get(agreed.url)
    task = first_task(browser, participation)
    body = {"task": task["id"], "choice": "left", "seconds": 1}
    assert post_vote(browser, participation, body).status_code == 403
    assert post_vote(browser, participation, body, HTTP_X_CSRFTOKEN="x" * 32).status_code == 403
    assert not Vote.objects.exists()
    assert (
        post_vote(browser, participation, body, HTTP_X_CSRFTOKEN=browser.cookies["csrftoken"].value).status_code == 200
    )
    assert Vote.objects.count() == 1


def test_csrf_is_enforced_on_an_invited_accounts_consent(live_campaign):
    user = get_user_model().objects.create_user("invited", password="a-long-rater-password")
    participation = services.invite_account(live_campaign, user)
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(user)
    url = reverse("rate:consent", args=[participation.token])
    assert browser.post(url).status_code == 403
    participation.refresh_from_db()
    assert participation.consented_at is None
    browser.get(url)
    assert browser.post(url, {"csrfmiddlewaretoken": browser.cookies["csrftoken"].value}).status_code == 302
    participation.refresh_from_db()
    assert participation.consented_at is not None


# --- Rate limits ------------------------------------------------------------------------------


def test_votes_past_the_per_rater_limit_get_429_and_are_not_recorded(client, live_campaign, settings, monkeypatch):
    settings.NEEDLE_VOTE_RATE_LIMIT_PER_MINUTE = 3
    participation = join(client, live_campaign)
    first, second = client.get(reverse("rate:tasks", args=[participation.token])).json()["tasks"]
    for _ in range(3):  # every submission counts, replays too
        assert post_vote(client, participation, {"task": first["id"], "choice": "left"}).status_code == 200
    refused = post_vote(client, participation, {"task": second["id"], "choice": "left"})
    assert refused.status_code == 429 and "not recorded" in refused.json()["error"]
    assert 1 <= int(refused["Retry-After"]) <= 60  # when the rater's next answer will count
    assert Vote.objects.count() == 1
    monkeypatch.setattr(ratelimit, "clock", lambda: 1_700_000_000.0 + 60)  # the next minute
    assert post_vote(client, participation, {"task": second["id"], "choice": "left"}).status_code == 200


def test_bad_invite_tokens_get_identical_404s_then_429_for_the_rest_of_the_minute(client, live_campaign, settings):
    settings.NEEDLE_BAD_TOKEN_LIMIT_PER_MINUTE = 4
    link = services.create_invite_link(live_campaign)
    participation = join(client, live_campaign, link=link)  # a real rater on this address, before the guessing
    inactive = services.create_invite_link(live_campaign)
    inactive.active = False
    inactive.save()
    bad = [secrets.token_urlsafe(32), "abc", inactive.token, participation.token]
    responses = [client.get(reverse("rate:join", args=[token])) for token in bad]
    assert [r.status_code for r in responses] == [404] * 4
    assert len({r.content for r in responses}) == 1, "every bad token gets the very same page"
    assert b"This invitation link is not valid" in responses[0].content

    assert client.get(reverse("rate:join", args=[secrets.token_urlsafe(32)])).status_code == 429
    # Past the limit even a good link is refused, or the guessing could go on...
    assert client.get(reverse("rate:join", args=[link.token])).status_code == 429
    # ...but pages this browser has joined are not guesses, and other addresses are not blocked.
    assert client.get(reverse("rate:page", args=[participation.token])).status_code == 200
    assert Client(REMOTE_ADDR="192.0.2.7").get(reverse("rate:join", args=[link.token])).status_code == 200


def test_bad_participation_tokens_count_toward_the_same_limit(client, live_campaign, settings):
    settings.NEEDLE_BAD_TOKEN_LIMIT_PER_MINUTE = 3
    join(client, live_campaign)
    statuses = [client.get(reverse("rate:tasks", args=[secrets.token_urlsafe(32)])).status_code for _ in range(5)]
    assert statuses == [404, 404, 404, 429, 429]
    assert "error" in client.get(reverse("rate:tasks", args=[secrets.token_urlsafe(32)])).json()


def test_invite_participation_and_assignment_tokens_are_at_least_43_url_safe_characters(client, live_campaign):
    link = services.create_invite_link(live_campaign)
    participation = join(client, live_campaign, link=link)
    client.get(reverse("rate:tasks", args=[participation.token]))
    tokens = [link.token, participation.token, *Assignment.objects.values_list("token", flat=True)]
    assert len(tokens) == 4
    assert all(URL_SAFE_TOKEN.fullmatch(token) for token in tokens), tokens
    assert len(set(tokens)) == len(tokens)


# --- Nothing a rater receives names a model, a campaign or an image ---------------------------------


def test_no_rater_response_names_a_model_a_campaign_or_an_image_hash(live_campaign):
    base, tuned = live_campaign.ordered_models()
    TextToImageModel.objects.filter(pk=base.pk).update(name="zebracorn-alpha-7q")
    TextToImageModel.objects.filter(pk=tuned.pk).update(name="quokkafish-beta-3x")
    live_campaign.name = "Secret campaign aardvark-19"
    live_campaign.quota_per_rater = 3
    live_campaign.save()
    forbidden = {"zebracorn-alpha-7q", "quokkafish-beta-3x", "Secret campaign aardvark-19", "aardvark-19"}
    for model in TextToImageModel.objects.all():
        forbidden |= {model.weights_fingerprint, model.pipeline_path}
    forbidden |= set(GeneratedImage.objects.values_list("sha256", flat=True))
    forbidden |= set(GoldImage.objects.values_list("sha256", flat=True))
    forbidden |= {sha[:12] for sha in GeneratedImage.objects.values_list("sha256", flat=True)}  # short hashes too
    forbidden.discard("")

    seen = []  # (what, response)
    rater = Client()
    link = services.create_invite_link(live_campaign)
    join_url = reverse("rate:join", args=[link.token])
    seen.append(("consent page", rater.get(join_url, PROLIFIC)))
    agreed = rater.post(join_url, PROLIFIC)
    seen.append(("consent post", agreed))
    participation = Participation.objects.get()
    seen.append(("voting page", rater.get(agreed.url)))
    seen.append(("malformed vote", post_vote(rater, participation, {"task": "x", "choice": "left"})))
    choices = iter(["left", "right", "tie", "both", "neither", "left"])
    while True:
        tasks = rater.get(reverse("rate:tasks", args=[participation.token]))
        seen.append(("tasks.json", tasks))
        data = tasks.json()
        if data["done"]:
            break
        for task in data["tasks"]:
            for side in ("left", "right"):
                url = task["images"][side]
                assert re.fullmatch(IMAGE_LINK, url)
                seen.append((f"image {side}", rater.get(url)))
        task = data["tasks"][0]
        offered = [c["value"] for c in task["choices"]]
        choice = next(c for c in choices if c in offered)
        seen.append(("vote", post_vote(rater, participation, {"task": task["id"], "choice": choice, "seconds": 1})))
        seen.append(("replayed vote", post_vote(rater, participation, {"task": task["id"], "choice": choice})))
    seen.append(("done page", rater.get(reverse("rate:done", args=[participation.token]))))
    seen.append(("bad invite", rater.get(reverse("rate:join", args=[secrets.token_urlsafe(32)]))))
    services.set_status(live_campaign, "paused")
    seen.append(("paused tasks.json", rater.get(reverse("rate:tasks", args=[participation.token]))))

    user = get_user_model().objects.create_user("invited", password="a-long-rater-password")
    own = services.invite_account(live_campaign, user)
    account = Client()
    seen.append(("login page", account.get(reverse("rate:login"))))
    account.force_login(user)
    seen.append(("studies", account.get(reverse("rate:home"))))
    seen.append(("account consent page", account.get(reverse("rate:consent", args=[own.token]))))

    assert {what for what, _ in seen} >= {
        "consent page",
        "voting page",
        "tasks.json",
        "image left",
        "vote",
        "done page",
    }
    for what, response in seen:
        headers = "\n".join(f"{k}: {v}" for k, v in response.items())
        blob = response.content + headers.encode() + response.cookies.output().encode()
        for secret in forbidden:
            assert secret.encode() not in blob, f"{what} leaks {secret!r}"
        if response.get("Content-Type", "").startswith("application/json"):
            assert_only_tokens_and_counts(response.json(), what)


def assert_only_tokens_and_counts(data, what, path="") -> None:
    """Walk a JSON answer: the only numbers are progress counts, the only ids opaque tokens."""
    if isinstance(data, dict):
        for key, value in data.items():
            assert key in JSON_KEYS, f"{what}: unexpected key {path}.{key}"
            if key == "id":
                assert URL_SAFE_TOKEN.fullmatch(value), f"{what}: {path}.id is not an opaque token"
            assert_only_tokens_and_counts(value, what, f"{path}.{key}")
    elif isinstance(data, list):
        for value in data:
            assert_only_tokens_and_counts(value, what, path)
    elif isinstance(data, (int, float)) and not isinstance(data, bool):
        assert path in (".progress.done", ".progress.total"), f"{what}: a number at {path}"


JSON_KEYS = {
    "tasks",
    "progress",
    "done",
    "total",
    "completion",
    "code",
    "url",
    "id",
    "question",
    "instructions",
    "prompt",
    "choices",
    "value",
    "label",
    "keys",
    "images",
    "left",
    "right",
    "recorded",
    "duplicate",
    "error",
}


# --- Crowd ids: someone else's PROLIFIC_PID, ids with characters no id has ------------------------------------------


def test_someone_else_presenting_a_known_prolific_pid_is_refused_and_learns_nothing(live_campaign):
    link = services.create_invite_link(live_campaign)
    owner = Client()
    mine = join(owner, live_campaign, PROLIFIC, link=link)
    task = first_task(owner, mine)
    url = reverse("rate:join", args=[link.token])
    for others in [
        {**PROLIFIC, "SESSION_ID": "session-9"},
        {**PROLIFIC, "STUDY_ID": "study-99"},
        {"PROLIFIC_PID": PROLIFIC["PROLIFIC_PID"]},
    ]:
        intruder = Client()
        assert intruder.get(url, others).status_code == 200  # the consent page, as anyone sees it
        response = intruder.post(url, others)
        page = response.content.decode()
        assert response.status_code == 403 and "already started this study in another session" in page
        assert "Traceback" not in page
        for secret in (mine.token, task["id"], PROLIFIC["SESSION_ID"], PROLIFIC["STUDY_ID"]):
            assert secret not in page
        assert rater_access.COOKIE_NAME not in intruder.cookies
        assert intruder.get(reverse("rate:tasks", args=[mine.token])).status_code == 404
    assert Participation.objects.count() == 1

    # The owner, after a browser restart or on another device, comes back with the same three ids: same tasks.
    again = Client()
    assert join(again, live_campaign, PROLIFIC, link=link).pk == mine.pk
    assert first_task(again, mine)["id"] == task["id"]


def test_trying_session_ids_for_a_known_prolific_pid_counts_as_guessing(client, live_campaign, settings):
    settings.NEEDLE_BAD_TOKEN_LIMIT_PER_MINUTE = 2
    link = services.create_invite_link(live_campaign)
    join(Client(), live_campaign, PROLIFIC, link=link)
    url = reverse("rate:join", args=[link.token])
    statuses = [client.post(url, {**PROLIFIC, "SESSION_ID": f"guess-{i}"}).status_code for i in range(3)]
    assert statuses == [403, 403, 429]


@pytest.mark.parametrize(
    "raw",
    [
        "5f1d\x00c0ffee",  # NUL: an error on PostgreSQL, a 500 before
        "\x075f1d\x1bc0ffee\r\n",  # control characters
        "\u202e5f1dc0ffee\u202c",  # a right-to-left override that would reorder the researcher's pages
        "5f1d\u2066c0\u200bffee\u2069",  # a bidi isolate and a zero-width space
    ],
    ids=["NUL", "controls", "RTL override", "isolate and zero width"],
)
def test_a_crowd_id_with_characters_no_id_has_joins_with_them_stripped(client, live_campaign, raw):
    link = services.create_invite_link(live_campaign)
    url = reverse("rate:join", args=[link.token])
    params = {"PROLIFIC_PID": raw, "STUDY_ID": raw, "SESSION_ID": raw}
    page = client.get(url, params)
    assert page.status_code == 200 and 'name="PROLIFIC_PID" value="5f1dc0ffee"' in page.content.decode()
    assert client.post(url, params).status_code == 302
    joined = Participation.objects.select_related("rater").get()
    ids = (joined.prolific_pid, joined.study_id, joined.session_id, joined.external_id, joined.rater.external_id)
    assert ids == ("5f1dc0ffee",) * 5
    # The same link, opened again elsewhere, resumes: the ids are compared as stored.
    assert join(Client(), live_campaign, params, link=link).pk == joined.pk


def test_an_overlong_crowd_id_is_refused_before_consent_and_nothing_is_stored(client, live_campaign):
    link = services.create_invite_link(live_campaign)
    url = reverse("rate:join", args=[link.token])
    params = {**PROLIFIC, "PROLIFIC_PID": "5f" * 51}
    for response in (client.get(url, params), client.post(url, params)):
        page = response.content.decode()
        assert response.status_code == 400 and "The PROLIFIC_PID in this link is 102 characters long" in page
        assert "at most 100" in page and "Traceback" not in page
    assert not Participation.objects.exists()
