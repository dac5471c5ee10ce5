"""The rater's pages through Django's test client: consent, tasks.json, images, votes, the end."""

import io
import json
import re
from datetime import timedelta

import numpy as np
import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from PIL import Image

from annotation import rater_access, services
from annotation.models import Assignment, Participation, Vote

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("fresh_rate_limits")]

PROLIFIC = {"PROLIFIC_PID": "5f1d0c0ffee0000000000001", "STUDY_ID": "study-42", "SESSION_ID": "session-7"}
TOKEN = r"[A-Za-z0-9_-]{43,}"
# A sealed image link: the same length for every image, gold and both models alike (rater_access).
IMAGE_LINK = r"/i/[A-Za-z0-9_-]{347}"


def join(client, campaign, params=None, link=None) -> Participation:
    """Open an invite link, agree, and land on the voting page; returns the participation."""
    link = link or services.create_invite_link(campaign)
    url = reverse("rate:join", args=[link.token])
    assert client.get(url, params or {}).status_code == 200
    response = client.post(url, params or {})  # the consent form carries the link's ids as hidden fields
    participation = Participation.objects.get(
        invite_link=link, **({"prolific_pid": params["PROLIFIC_PID"]} if params else {})
    )
    assert response.status_code == 302 and response.url == reverse("rate:page", args=[participation.token])
    return participation


def get_tasks(client, participation):
    return client.get(reverse("rate:tasks", args=[participation.token]))


def post_vote(client, participation, body):
    data = body if isinstance(body, (str, bytes)) else json.dumps(body)
    return client.post(reverse("rate:vote", args=[participation.token]), data, content_type="application/json")


def image_bytes(file) -> bytes:
    with file.storage.open(file.name, "rb") as handle:
        return handle.read()


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def shows(response, file, campaign) -> bool:
    """The response is a PNG of the campaign's one length with exactly the stored file's pixels."""
    campaign.refresh_from_db()
    return (
        response.status_code == 200
        and len(response.content) == campaign.served_image_bytes
        and np.array_equal(pixels(response.content), pixels(image_bytes(file)))
    )


# --- Joining ----------------------------------------------------------------------------------


def test_instructions_show_a_worked_example_pair_per_criterion_made_of_drawn_illustrations(client, live_campaign):
    from django.contrib.staticfiles import finders
    from PIL import Image

    link = services.create_invite_link(live_campaign)
    page = client.get(reverse("rate:join", args=[link.token])).content.decode()
    examples = re.findall(r'<img src="/static/(examples/[^"]+)" alt="([^"]+)"', page)
    assert [path for path, _ in examples] == [
        "examples/appeal-better.png",
        "examples/appeal-worse.png",  # appeal: the better one left, answer Left
        "examples/faithful-mismatch.png",
        "examples/faithful-match.png",  # faithfulness: the match right, answer Right
    ]
    assert all(alt.startswith("Example picture:") for _, alt in examples)
    answers = re.findall(
        r'Answer: <strong class="wide-only">(\w+)</strong><strong class="narrow-only">(\w+)</strong>'
        r'<span class="key-hint">\s*\(press <kbd>(\w)</kbd>\)</span>',
        page,
    )
    # Appeal: the better picture on the left; faithfulness: the match on the right. On a phone (stacked) the same
    # answers read top and bottom, as the voting page's buttons do.
    assert answers == [("Left", "Top", "1"), ("Right", "Bottom", "2")]
    assert "Example for the text “two red apples on a blue plate”" in page
    assert '<span class="narrow-only">the top image is better</span>' in page
    for path, _ in examples:
        found = finders.find(path)
        assert found, f"{path} is not a static file"
        with Image.open(found) as image:
            assert image.size == (256, 256) and not image.text, "plain pictures, no metadata"


def test_consent_page_explains_the_task_and_agreeing_records_the_prolific_ids(client, live_campaign):
    live_campaign.rater_title = "Which picture do you prefer?"
    live_campaign.save()
    link = services.create_invite_link(live_campaign)
    url = reverse("rate:join", args=[link.token])

    page = client.get(url, PROLIFIC).content.decode()
    assert "Which picture do you prefer?" in page
    for criterion in live_campaign.criteria.all():
        assert criterion.question in page and criterion.instructions in page
    assert "<kbd>1</kbd>" in page and "<kbd>B</kbd>" in page and "<kbd>N</kbd>" in page  # how to answer, by key
    assert "I agree, start" in page and "csrfmiddlewaretoken" in page
    for name, value in PROLIFIC.items():
        assert f'name="{name}" value="{value}"' in page
    assert not Participation.objects.exists(), "opening the link enrols nobody; agreeing does"

    response = client.post(url, PROLIFIC)
    participation = Participation.objects.get()
    assert response.status_code == 302 and response.url == reverse("rate:page", args=[participation.token])
    assert (participation.prolific_pid, participation.study_id, participation.session_id) == (
        PROLIFIC["PROLIFIC_PID"],
        PROLIFIC["STUDY_ID"],
        PROLIFIC["SESSION_ID"],
    )
    assert participation.external_id == PROLIFIC["PROLIFIC_PID"] and participation.consented_at is not None
    assert rater_access.tokens_in_cookie(client.cookies[rater_access.COOKIE_NAME].value) == [participation.token]

    voting = client.get(response.url)
    assert voting.status_code == 200
    html = voting.content.decode()
    assert "Which picture do you prefer?" in html and "0 done" in html and "rater.js" in html
    assert client.get(url).status_code == 302, "a browser that already agreed goes straight back to its pairs"


def test_a_returning_prolific_worker_resumes_the_same_participation(client, live_campaign):
    link = services.create_invite_link(live_campaign)
    first = join(client, live_campaign, PROLIFIC, link=link)
    again = join(Client(), live_campaign, PROLIFIC, link=link)  # another browser, same worker
    assert again.pk == first.pk and Participation.objects.count() == 1


def test_consenting_twice_without_crowd_ids_is_still_one_rater(client, live_campaign):
    link = services.create_invite_link(live_campaign)
    url = reverse("rate:join", args=[link.token])
    client.post(url)
    client.post(url)  # back button, or a double submit
    assert Participation.objects.count() == 1


def test_an_invite_to_a_closed_study_says_it_is_not_open(client, live_campaign):
    link = services.create_invite_link(live_campaign)
    services.set_status(live_campaign, "closed")
    response = client.get(reverse("rate:join", args=[link.token]))
    assert response.status_code == 409 and "not open" in response.content.decode()
    assert client.post(reverse("rate:join", args=[link.token])).status_code == 409
    assert not Participation.objects.exists()


def test_an_invited_account_signs_in_sees_its_studies_and_consents_once(client, live_campaign):
    live_campaign.rater_title = "Pick the nicer picture"
    live_campaign.save()
    user = get_user_model().objects.create_user("invited", password="a-long-rater-password")
    participation = services.invite_account(live_campaign, user)

    response = client.get(reverse("rate:home"))
    assert response.status_code == 302 and response.url.startswith(reverse("rate:login"))
    login_page = client.get(response.url)
    assert login_page.status_code == 200 and b"Sign in" in login_page.content
    signed_in = client.post(
        reverse("rate:login"),
        {"username": "invited", "password": "a-long-rater-password", "next": reverse("rate:home")},
    )
    assert signed_in.status_code == 302 and signed_in.url == reverse("rate:home")

    home = client.get(reverse("rate:home")).content.decode()
    page_url = reverse("rate:page", args=[participation.token])
    assert "Pick the nicer picture" in home and page_url in home
    to_consent = client.get(page_url)
    assert to_consent.status_code == 302 and to_consent.url == reverse("rate:consent", args=[participation.token])
    assert "I agree, start" in client.get(to_consent.url).content.decode()
    assert client.post(to_consent.url).url == page_url
    participation.refresh_from_db()
    assert participation.consented_at is not None
    assert client.get(page_url).status_code == 200
    assert client.get(to_consent.url).status_code == 302, "consent is asked once"


# --- tasks.json and images ----------------------------------------------------------------------


def test_tasks_json_offers_two_tasks_with_opaque_image_urls_and_their_criterions_choices(client, live_campaign):
    participation = join(client, live_campaign)
    data = get_tasks(client, participation).json()
    assert set(data) == {"tasks", "progress", "done", "completion"}
    assert data["progress"] == {"done": 0, "total": None} and data["done"] is False and data["completion"] is None
    assert len(data["tasks"]) == 2
    for task in data["tasks"]:
        assignment = Assignment.objects.select_related("item__criterion", "item__image_a__prompt").get(token=task["id"])
        criterion = assignment.item.criterion
        assert assignment.rater_id == participation.rater_id and assignment.state == "leased"
        assert set(task) == {"id", "question", "instructions", "choices", "images"} | (
            {"prompt"} if criterion.show_prompt else set()
        )
        assert task["question"] == criterion.question and task["instructions"] == criterion.instructions
        if criterion.show_prompt:
            assert task["prompt"] == assignment.item.image_a.prompt.text
        assert [c["value"] for c in task["choices"]][0] == "left" and [c["value"] for c in task["choices"]][
            -1
        ] == "right"
        assert sorted(c["value"] for c in task["choices"]) == sorted(criterion.choices)
        keys = {c["value"]: c["keys"] for c in task["choices"]}
        assert keys["left"] == ["1", "ArrowLeft"] and keys["right"] == ["2", "ArrowRight"]
        for side in ("left", "right"):
            assert re.fullmatch(IMAGE_LINK, task["images"][side])
    # Asking again hands out the same two tasks, not new ones.
    assert [t["id"] for t in get_tasks(client, participation).json()["tasks"]] == [t["id"] for t in data["tasks"]]


def test_images_show_each_side_as_the_assignment_places_it_padded_to_the_campaigns_length(client, live_campaign):
    participation = join(client, live_campaign)
    for task in get_tasks(client, participation).json()["tasks"]:
        assignment = Assignment.objects.select_related("item__image_a", "item__image_b").get(token=task["id"])
        a, b = assignment.item.image_a.file, assignment.item.image_b.file
        left, right = (a, b) if assignment.a_on_left else (b, a)
        for side, expected in (("left", left), ("right", right)):
            response = client.get(task["images"][side])
            assert shows(response, expected, live_campaign)
            assert response["Content-Type"] == "image/png"
            assert response["Cache-Control"] == "private, max-age=3600, no-transform"
            for header in ("ETag", "Last-Modified", "Content-Disposition"):
                assert header not in response
    assert client.get(task["images"]["left"][:-4]).status_code == 404  # a link cut short is no link


@pytest.fixture
def gold_campaign(make_campaign):
    """Appeal only, one seed, half the tasks gold: 4 regular items and 4 gold items."""
    return make_campaign(name="gold", seeds=[0], gold_share=0.5, criteria={"visual_appeal": {}})


def test_a_gold_item_shows_the_degraded_copy_as_its_b_side(client, gold_campaign):
    participation = join(client, gold_campaign)
    tasks = get_tasks(client, participation).json()["tasks"]
    gold = [Assignment.objects.select_related("item__gold_image", "item__image_a").get(token=t["id"]) for t in tasks]
    gold = [a for a in gold if a.item.is_gold]
    assert gold, "with a gold share of 0.5 one of the first two tasks is gold"
    assignment = gold[0]
    task = next(t for t in tasks if t["id"] == assignment.token)
    degraded_side = "right" if assignment.a_on_left else "left"
    intact_side = "left" if assignment.a_on_left else "right"
    assert shows(client.get(task["images"][degraded_side]), assignment.item.gold_image.file, gold_campaign)
    assert shows(client.get(task["images"][intact_side]), assignment.item.image_a.file, gold_campaign)


@pytest.fixture
def faithfulness_gold_campaign(make_campaign):
    """Text faithfulness only, one seed, half the tasks gold: 4 regular items and 4 gold items."""
    return make_campaign(name="faithful gold", seeds=[0], gold_share=0.5, criteria={"text_faithfulness": {}})


def test_a_faithfulness_gold_item_shows_the_prompt_with_its_image_against_another_prompts_image(
    client, faithfulness_gold_campaign
):
    from generation.models import GeneratedImage

    participation = join(client, faithfulness_gold_campaign)
    while True:
        tasks = get_tasks(client, participation).json()["tasks"]
        assignment = Assignment.objects.select_related("item__gold_image", "item__image_a__prompt").get(
            token=tasks[0]["id"]
        )
        if assignment.item.is_gold:
            break
        assert post_vote(client, participation, {"task": tasks[0]["id"], "choice": "neither"}).status_code == 200
    task, item = tasks[0], assignment.item
    decoy = GeneratedImage.objects.select_related("prompt").get(sha256=item.gold_image.sha256)
    assert task["prompt"] == item.image_a.prompt.text != decoy.prompt.text
    matching_side = "left" if assignment.a_on_left else "right"
    other_side = "right" if assignment.a_on_left else "left"
    # Both padded to the campaign's one length: the decoy is a campaign image like any other.
    assert shows(client.get(task["images"][matching_side]), item.image_a.file, faithfulness_gold_campaign)
    assert shows(client.get(task["images"][other_side]), decoy.file, faithfulness_gold_campaign)
    # Picking the image made for the text shown is the right answer.
    assert post_vote(client, participation, {"task": task["id"], "choice": matching_side}).status_code == 200
    assert Vote.objects.get(assignment=assignment).gold_correct is True


# --- Votes ------------------------------------------------------------------------------------


def vote_until_done(client, participation, choice="left"):
    """Answer through the endpoints as rater.js does; returns (votes sent, the final tasks.json)."""
    sent = 0
    while True:
        data = get_tasks(client, participation).json()
        if data["done"]:
            return sent, data
        response = post_vote(client, participation, {"task": data["tasks"][0]["id"], "choice": choice, "seconds": 1.5})
        assert response.status_code == 200, response.content
        assert response.json()["recorded"] is True and response.json()["duplicate"] is False
        sent += 1
        assert response.json()["progress"] == data["progress"] | {"done": sent}


def test_voting_until_done_shows_the_completion_code(client, live_campaign):
    live_campaign.quota_per_rater = 5
    live_campaign.save()
    participation = join(client, live_campaign)
    assert "0 of 5" in client.get(reverse("rate:page", args=[participation.token])).content.decode()
    sent, final = vote_until_done(client, participation)
    assert sent == 5 and Vote.objects.filter(assignment__rater=participation.rater).count() == 5
    assert final == {
        "tasks": [],
        "progress": {"done": 5, "total": 5},
        "done": True,
        "completion": {"code": live_campaign.completion_code, "url": None},
    }
    assert set(Vote.objects.values_list("seconds_on_task", flat=True)) == {1.5}
    participation.refresh_from_db()
    assert participation.completed_at is not None
    done = client.get(reverse("rate:done", args=[participation.token]))
    assert done.status_code == 200 and live_campaign.completion_code in done.content.decode()
    assert "5 of 5" in done.content.decode()
    assert client.get(reverse("rate:page", args=[participation.token])).url == reverse(
        "rate:done", args=[participation.token]
    )


def test_the_done_page_gives_no_code_before_the_work_is_done(client, live_campaign):
    participation = join(client, live_campaign)
    response = client.get(reverse("rate:done", args=[participation.token]))
    assert response.status_code == 302 and response.url == reverse("rate:page", args=[participation.token])


def test_completion_redirects_to_the_completion_url_with_the_code_filled_in(client, live_campaign):
    live_campaign.quota_per_rater = 1
    live_campaign.completion_url = "https://app.prolific.com/submissions/complete?cc={code}"
    live_campaign.save()
    participation = join(client, live_campaign)
    _, final = vote_until_done(client, participation)
    expected = f"https://app.prolific.com/submissions/complete?cc={live_campaign.completion_code}"
    assert final["completion"] == {"code": live_campaign.completion_code, "url": expected}
    response = client.get(reverse("rate:done", args=[participation.token]))
    assert response.status_code == 302 and response.url == expected


def test_a_replayed_vote_is_a_duplicate_and_counts_once(client, live_campaign):
    participation = join(client, live_campaign)
    task = get_tasks(client, participation).json()["tasks"][0]
    body = {"task": task["id"], "choice": "right", "seconds": 2}
    first, replay = post_vote(client, participation, body), post_vote(client, participation, body)
    recorded = {"recorded": True, "progress": {"done": 1, "total": None}, "done": False, "completion": None}
    assert first.json().items() >= (recorded | {"duplicate": False}).items()
    assert replay.json().items() >= (recorded | {"duplicate": True}).items()
    assert [t["id"] for t in replay.json()["tasks"]] == [t["id"] for t in first.json()["tasks"]]
    changed = post_vote(client, participation, body | {"choice": "left"})
    assert changed.status_code == 409 and "cannot be changed" in changed.json()["error"]
    assert Vote.objects.count() == 1 and Vote.objects.get().choice == "right"


def test_a_votes_reply_carries_the_raters_next_tasks_so_an_answer_is_one_request(client, live_campaign):
    participation = join(client, live_campaign)
    shown = get_tasks(client, participation).json()["tasks"]
    reply = post_vote(client, participation, {"task": shown[0]["id"], "choice": "left", "seconds": 2}).json()
    following = [t["id"] for t in reply["tasks"]]
    assert len(following) == 2 and shown[0]["id"] not in following and following[0] == shown[1]["id"]
    assert following == [t["id"] for t in get_tasks(client, participation).json()["tasks"]]
    assert all(re.fullmatch(IMAGE_LINK, t["images"][side]) for t in reply["tasks"] for side in ("left", "right"))
    assert reply["progress"] == {"done": 1, "total": None}
    # A vote that ends the work says so with the completion, as tasks.json would.
    while not reply["done"]:
        reply = post_vote(client, participation, {"task": reply["tasks"][0]["id"], "choice": "left"}).json()
    assert reply["tasks"] == [] and reply["completion"]["code"] == live_campaign.completion_code
    assert reply["progress"]["done"] == Vote.objects.filter(assignment__rater=participation.rater).count()


@pytest.mark.parametrize("status", ["paused", "closed"])
def test_votes_on_a_paused_or_closed_study_are_refused_with_a_message(client, live_campaign, status):
    participation = join(client, live_campaign)
    task = get_tasks(client, participation).json()["tasks"][0]
    services.set_status(live_campaign, status)
    response = post_vote(client, participation, {"task": task["id"], "choice": "left", "seconds": 3})
    assert response.status_code == 409 and status in response.json()["error"]
    assert "not recorded" in response.json()["error"]
    refused = get_tasks(client, participation)
    assert refused.status_code == 409 and "paused or closed" in refused.json()["error"]
    assert not Vote.objects.exists()
    if status == "paused":  # once resumed, the same task can be answered
        services.set_status(live_campaign, "live")
        assert post_vote(client, participation, {"task": task["id"], "choice": "left"}).status_code == 200


def test_a_vote_on_an_expired_lease_is_refused_with_a_message(client, live_campaign):
    participation = join(client, live_campaign)
    task = get_tasks(client, participation).json()["tasks"][0]
    Assignment.objects.filter(token=task["id"]).update(expires_at=timezone.now() - timedelta(seconds=1))
    response = post_vote(client, participation, {"task": task["id"], "choice": "left", "seconds": 700})
    assert response.status_code == 409 and "expired" in response.json()["error"]
    assert not Vote.objects.exists()
    assert task["id"] not in [t["id"] for t in get_tasks(client, participation).json()["tasks"]]


MALFORMED_VOTES = [
    ("not json", 400, "not JSON"),
    (b"\xff\xfe", 400, "not JSON"),
    ("[1, 2]", 400, "expected an object"),
    ({"choice": "left"}, 400, "no valid task"),
    ({"task": "short", "choice": "left"}, 400, "no valid task"),
    ({"task": "../../etc/passwd" + "a" * 40, "choice": "left"}, 400, "no valid task"),
    ({"task": 123, "choice": "left"}, 400, "no valid task"),
    ({"task": "TASK", "choice": "up"}, 400, "Unknown choice"),
    ({"task": "TASK", "choice": ["left"]}, 400, "Unknown choice"),
    ({"task": "TASK", "choice": "left", "seconds": "fast"}, 400, "time on task"),
    ({"task": "TASK", "choice": "left", "seconds": -1}, 400, "time on task"),
    ({"task": "TASK", "choice": "left", "seconds": True}, 400, "time on task"),
    ('{"task": "TASK", "choice": "left", "seconds": NaN}', 400, "time on task"),
    ({"task": "TASK", "choice": "both"}, 409, "not a choice for this question"),  # appeal offers left/right/tie
    ({"task": "A" * 43, "choice": "left"}, 409, "No such task"),
]


def test_malformed_votes_get_a_4xx_with_a_message_and_record_nothing(client, live_campaign):
    live_campaign.criteria.filter(criterion="text_faithfulness").delete()  # every task asks about appeal
    participation = join(client, live_campaign)
    task = get_tasks(client, participation).json()["tasks"][0]
    for body, status, says in MALFORMED_VOTES:
        if isinstance(body, dict):
            body = json.dumps(body)
        if isinstance(body, str):
            body = body.replace("TASK", task["id"])
        response = post_vote(client, participation, body)
        assert (response.status_code, says in response.json()["error"]) == (status, True), (body, response.content)
    assert not Vote.objects.exists()
    assert (
        post_vote(client, participation, {"task": task["id"], "choice": "tie"}).status_code == 200
    )  # the task is intact


def test_seconds_on_task_is_recorded_and_may_be_left_out(client, live_campaign):
    participation = join(client, live_campaign)
    first, second = get_tasks(client, participation).json()["tasks"]
    assert post_vote(client, participation, {"task": first["id"], "choice": "left", "seconds": 4.25}).status_code == 200
    assert post_vote(client, participation, {"task": second["id"], "choice": "right"}).status_code == 200
    recorded = dict(Vote.objects.values_list("assignment__token", "seconds_on_task"))
    assert recorded == {first["id"]: 4.25, second["id"]: None}
