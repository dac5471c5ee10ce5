"""Everything a rater touches: invite link and consent, the voting page and its JSON, images, the end.

(About 550 lines, kept whole: it is the rater's entire HTTP surface, and reviewing what a rater can reach
is easiest in one file.)

The views are thin: the assignment engine in ``services`` decides what a rater
is shown and records votes. What this module owns is who may see what:

- URLs carry only opaque 256-bit tokens (invite link, participation,
  assignment) and sealed image links (``rater_access``). Nothing a rater
  receives -- HTML, JSON, image URLs, image bytes, headers -- names a model,
  a campaign, an item or an image hash. Every image arrives with the
  campaign's one byte length and the same headers and PNG layout
  (``services.padded_image``), so neither its size nor its headers tell the
  models, or gold, apart.
- A participation's pages open only for the browser that joined through its
  invite link (the token is kept in the signed ``needle_rater`` cookie,
  ``rater_access``) or for the invited account that owns it. Anything else gets the same 404 as a token that does not exist, and a
  client address that keeps presenting bad tokens gets 429 for the rest of
  the minute (NEEDLE_BAD_TOKEN_LIMIT_PER_MINUTE). With 256-bit tokens that
  makes guessing hopeless twice over.
- One request per answer: the vote's reply carries the rater's next tasks, and
  images are served by ``rater_access.ServedImagesMiddleware`` before any view
  runs; tasks.json is read when the page loads (issue 12).
- Votes are rate-limited per rater (NEEDLE_VOTE_RATE_LIMIT_PER_MINUTE); CSRF
  stays on for every POST, the JSON vote included (X-CSRFToken header).

Completion: when a rater has no task left, the page shows the campaign's
completion code, or sends the rater to ``campaign.completion_url`` when one is
set. A ``{code}`` in that URL is replaced by the code, e.g.
``https://app.prolific.com/submissions/complete?cc={code}``. A rater excluded
by quality control (gold, speed, a researcher) never sees the completion code:
their tasks and votes are refused with ``ended`` (the URL of their ending), and
the ending page says honestly that the study is over for them and gives the
screen-out code (or sends them to ``campaign.screen_out_url``).
"""

from __future__ import annotations

import json
import math
import re

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.http import JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import ensure_csrf_cookie
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from core import ratelimit

from . import rater_access, selectors, services
from .models import Assignment, Campaign, Choice, InviteLink, Participation, Rater

# Tokens are secrets.token_urlsafe(32): 43 characters. Anything that cannot be
# one is refused without a database lookup (and counts as a bad token).
TOKEN_PATTERN = re.compile(r"[A-Za-z0-9_-]{20,64}")
SIDES = ("left", "right")

# How each choice reads on its button, what its keys are (``KeyboardEvent.key``
# values; letters match either case) and what it means, for the instructions.
CHOICE_LABELS = {"left": "Left", "right": "Right", "tie": "Tie", "both": "Both", "neither": "Neither"}
CHOICE_KEYS = {
    "left": ["1", "ArrowLeft"],
    "right": ["2", "ArrowRight"],
    "tie": ["3", "t"],
    "both": ["b"],
    "neither": ["n"],
}
CHOICE_MEANINGS = {
    "left": "the left image is better",
    "right": "the right image is better",
    "tie": "they are equally good",
    "both": "both images match the text",
    "neither": "neither image matches the text",
}
KEY_NAMES = {"ArrowLeft": "←", "ArrowRight": "→"}
# On a phone the pair is stacked (static/rater.css): "left" is the top image. The voting page's buttons say so
# (static/rater.js), and the instructions must use the same words the rater will see there.
STACKED_WORDS = {"left": "top", "right": "bottom"}

# One worked example per criterion on the instructions page: drawn illustrations (scripts/rater_examples.py),
# never campaign images, so they say nothing about any model and cannot prime raters on the real pairs.
WORKED_EXAMPLES = {
    "visual_appeal": {
        "left": ("examples/appeal-better.png", "Example picture: a sharp, colourful sunset over the sea"),
        "right": ("examples/appeal-worse.png", "Example picture: the same sunset, tilted, blurred and dull"),
        "text": "",
        "answer": "left",
        "why": "the {left} picture is sharp, well lit and full of colour; the {right} one is tilted, blurred and dull.",
    },
    "text_faithfulness": {
        "left": ("examples/faithful-mismatch.png", "Example picture: one green apple on a white plate"),
        "right": ("examples/faithful-match.png", "Example picture: two red apples on a blue plate"),
        "text": "two red apples on a blue plate",
        "answer": "right",
        "why": "only the {right} picture shows two red apples on a blue plate; the {left} one has a single green "
        "apple on a white plate, however nice it looks.",
    },
}

INVALID_INVITE = (
    "This invitation link is not valid. Check that you copied the whole link, "
    "or ask the study's organisers for a new one."
)
INVALID_PAGE = (
    "This page does not exist or is not yours. If you were taking part in a study, "
    "open your invitation link again to carry on where you stopped."
)
TOO_MANY_BAD_TOKENS = rater_access.TOO_MANY_BAD_TOKENS
TOO_MANY_VOTES = (
    "You are answering faster than anyone can look at two images, so this answer was not recorded. "
    "Please slow down and take a moment over each pair."
)
CROWD_PARAMETERS = [*services.CROWD_PARAMETERS, "external_id"]


# --- Helpers ----------------------------------------------------------------------------------


def _message_page(request, message: str, *, status: int, heading: str = "Not available", rater_title: str = ""):
    return render(
        request,
        "annotation/rater/message.html",
        {"heading": heading, "message": message, "rater_title": rater_title},
        status=status,
    )


def _refuse_token(
    request, *, as_json: bool = False, message: str = INVALID_PAGE, status: int = 404, heading: str = "Not available"
):
    """The one answer to any token this client may not use: 404, or 429 once it has presented too many."""
    if not ratelimit.allow(rater_access.bad_token_key(request), settings.NEEDLE_BAD_TOKEN_LIMIT_PER_MINUTE):
        if as_json:
            return JsonResponse({"error": TOO_MANY_BAD_TOKENS}, status=429)
        return _message_page(request, TOO_MANY_BAD_TOKENS, status=429, heading="Too many attempts")
    if as_json:
        return JsonResponse({"error": message}, status=status)
    return _message_page(request, message, status=status, heading=heading)


def _authorised_participation(request, token: str) -> Participation | None:
    """The participation behind ``token`` if this browser joined it or this account owns it, else None.

    Another rater's real token and a made-up one both give None, so the
    caller's answer cannot tell them apart.
    """
    if not TOKEN_PATTERN.fullmatch(token):
        return None
    participation = Participation.objects.select_related("campaign", "rater").filter(token=token).first()
    if participation is None:
        return None
    if token in rater_access.joined_tokens(request):
        return participation
    if request.user.is_authenticated and participation.rater.user_id == request.user.pk:
        return participation
    return None


def _joined_in_browser(request, campaign: Campaign) -> Participation | None:
    return Participation.objects.filter(campaign=campaign, token__in=rater_access.joined_tokens(request)).last()


def _active_invite(token: str) -> InviteLink | None:
    if not TOKEN_PATTERN.fullmatch(token):
        return None
    return InviteLink.objects.select_related("campaign").filter(token=token, active=True).first()


def _choice_json(value: str) -> dict:
    return {"value": value, "label": CHOICE_LABELS[value], "keys": CHOICE_KEYS[value]}


def _key_hint(value: str) -> list[str]:
    return [KEY_NAMES.get(key, key.upper()) for key in CHOICE_KEYS[value]]


def _ordered_choices(choices: list[str]) -> list[str]:
    # Left first and right last, whatever order the researcher listed them in,
    # so the buttons sit under the images they stand for.
    middle = [c for c in choices if c not in (Choice.LEFT, Choice.RIGHT)]
    return [Choice.LEFT, *middle, Choice.RIGHT]


def _wide_and_stacked(text: str) -> dict:
    """``text`` with {left}/{right} filled in for side-by-side images and for images stacked on a phone."""
    return {
        "wide": text.format(left="left", right="right"),
        "stacked": text.format(**STACKED_WORDS),
    }


def _choice_for_instructions(value: str) -> dict:
    word = STACKED_WORDS.get(value)
    return {
        "label": CHOICE_LABELS[value],
        "stacked_label": word.capitalize() if word else "",
        "keys": _key_hint(value),
        "meaning": _wide_and_stacked(
            CHOICE_MEANINGS[value].replace(value, "{%s}" % value) if word else CHOICE_MEANINGS[value]
        ),
    }


def _worked_example(criterion) -> dict | None:
    example = WORKED_EXAMPLES.get(criterion.criterion)
    if example is None:
        return None
    return {**example, "answer": _choice_for_instructions(example["answer"]), "why": _wide_and_stacked(example["why"])}


def _criteria_for_instructions(campaign: Campaign) -> list[dict]:
    return [
        {
            "question": criterion.question,
            "instructions": criterion.instructions,
            "show_prompt": criterion.show_prompt,
            "choices": [_choice_for_instructions(c) for c in _ordered_choices(criterion.choices)],
            "example": _worked_example(criterion),
        }
        for criterion in campaign.criteria.all()
    ]


def _progress_json(participation: Participation, answered: int | None = None) -> dict:
    progress = selectors.rater_progress(participation, answered)
    return {"done": progress.done, "total": progress.total}


def _progress_text(participation: Participation) -> str:
    progress = selectors.rater_progress(participation)
    return f"{progress.done} of {progress.total}" if progress.total else f"{progress.done} done"


def _completion_json(ending: services.RaterEnding) -> dict:
    return {"code": ending.code, "url": ending.url or None}


def _ended_json(participation: Participation) -> dict:
    """For an excluded rater: no tasks, and where their ending is (the page goes there)."""
    return {
        "tasks": [],
        "progress": _progress_json(participation),
        "done": True,
        "completion": None,
        "ended": reverse("rate:done", args=[participation.token]),
    }


def _task_json(participation: Participation, assignment: Assignment, image_length: int) -> dict:
    criterion = assignment.item.criterion
    task = {
        "id": assignment.token,
        "question": criterion.question,
        "instructions": criterion.instructions,
        "choices": [_choice_json(c) for c in _ordered_choices(criterion.choices)],
        "images": {
            side: rater_access.image_link(
                participation.token,
                participation.campaign_id,
                services.shown_image_file(assignment, side).name,
                image_length,
                assignment.expires_at,
            )
            for side in SIDES
        },
    }
    if criterion.show_prompt:
        task["prompt"] = assignment.item.image_a.prompt.text
    return task


def _consent_parts(text: str) -> dict:
    """The researchers' consent text as the page shows it: the first paragraph always, the rest folded away."""
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", text.strip()) if p.strip()]
    return {"summary": paragraphs[0] if paragraphs else "", "details": paragraphs[1:]}


def _consent_page(request, campaign: Campaign, *, action: str, hidden: dict[str, str]):
    return render(
        request,
        "annotation/rater/consent.html",
        {
            "rater_title": campaign.rater_title,
            "criteria": _criteria_for_instructions(campaign),
            "quota": campaign.quota_per_rater,
            "consent": _consent_parts(campaign.consent_text),
            "contact": campaign.contact,
            "action": action,
            "hidden": hidden,
        },
    )


# --- Joining: invite links and consent ---------------------------------------------------------


@require_http_methods(["GET", "POST"])
def join(request, link_token: str):
    """GET: what the study is, how to answer, and consent. POST ("I agree, start"): enrol and go to the pairs.

    Crowd ids (PROLIFIC_PID, STUDY_ID, SESSION_ID or external_id) come in the
    link's query string and are carried through the form as hidden fields; a
    worker who comes back with the same PROLIFIC_PID, STUDY_ID and SESSION_ID
    resumes their participation, and the same PROLIFIC_PID with other ids is
    refused (``services.join_with_invite``).
    """
    # Once a client has presented too many bad tokens, refuse every invite
    # token for the rest of the minute, good ones too: answering good ones
    # differently would let the guessing go on.
    if ratelimit.exceeded(rater_access.bad_token_key(request), settings.NEEDLE_BAD_TOKEN_LIMIT_PER_MINUTE):
        return _message_page(request, TOO_MANY_BAD_TOKENS, status=429, heading="Too many attempts")
    link = _active_invite(link_token)
    if link is None:
        return _refuse_token(request, message=INVALID_INVITE)
    campaign = link.campaign

    if request.method == "POST":
        params = {name: request.POST.get(name, "") for name in CROWD_PARAMETERS}
        # Without a crowd id, the engine would enrol a new rater each time; a
        # browser that consents twice (back button, double submit) is one rater.
        participation = None if services.has_crowd_id(params) else _joined_in_browser(request, campaign)
        if participation is None:
            try:
                participation = services.join_with_invite(link_token, params)
            except services.ParticipationTaken as exc:
                # Counted like a bad token: trying other SESSION_IDs for a known PROLIFIC_PID is guessing.
                return _refuse_token(request, message=str(exc), status=403, heading="Already taking part")
            except services.CrowdIdError as exc:
                return _message_page(
                    request, str(exc), status=400, heading="This link is damaged", rater_title=campaign.rater_title
                )
            except services.AnnotationError as exc:  # the study is closed or full
                return _message_page(request, str(exc), status=409, rater_title=campaign.rater_title)
        services.record_consent(participation)
        return rater_access.remember(request, redirect("rate:page", participation.token), participation.token)

    if campaign.status not in (Campaign.Status.LIVE, Campaign.Status.PAUSED):
        return _message_page(request, "This study is not open right now.", status=409, rater_title=campaign.rater_title)
    # This browser already joined and consented: straight back to the pairs.
    joined = _joined_in_browser(request, campaign)
    if joined is not None and joined.consented_at is not None:
        return redirect("rate:page", joined.token)
    try:
        ids = services.crowd_ids(request.GET)
    except services.CrowdIdError as exc:  # said before the rater reads the consent, not after they agree
        return _message_page(
            request, str(exc), status=400, heading="This link is damaged", rater_title=campaign.rater_title
        )
    hidden = {name: value for name, value in ids.items() if value}
    return _consent_page(request, campaign, action=request.path, hidden=hidden)


@require_http_methods(["GET", "POST"])
def consent(request, participation_token: str):
    """Consent for a participation that exists already: how invited accounts start."""
    participation = _authorised_participation(request, participation_token)
    if participation is None:
        return _refuse_token(request)
    if request.method == "POST":
        services.record_consent(participation)
        return redirect("rate:page", participation.token)
    if participation.consented_at is not None:
        return redirect("rate:page", participation.token)
    return _consent_page(request, participation.campaign, action=request.path, hidden={})


@login_required(login_url="rate:login")
@require_GET
def home(request):
    """An invited account's studies (their rater titles only)."""
    rater = Rater.objects.filter(user=request.user).first()
    participations = (
        Participation.objects.filter(
            rater=rater, campaign__status__in=[Campaign.Status.LIVE, Campaign.Status.PAUSED, Campaign.Status.CLOSED]
        )
        .select_related("campaign")
        .order_by("-created_at")
        if rater is not None
        else []
    )
    return render(
        request, "annotation/rater/home.html", {"participations": participations, "rater_title": "Your studies"}
    )


# --- Voting -----------------------------------------------------------------------------------


@never_cache
@ensure_csrf_cookie  # rater.js sends the cookie's token back as X-CSRFToken with each vote
@require_GET
def page(request, participation_token: str):
    """The voting page. Its pairs come from tasks.json, loaded and preloaded by static/rater.js."""
    participation = _authorised_participation(request, participation_token)
    if participation is None:
        return _refuse_token(request)
    if participation.consented_at is None:
        return redirect("rate:consent", participation.token)
    if participation.completed_at is not None or participation.excluded:
        return redirect("rate:done", participation.token)
    page = render(
        request,
        "annotation/rater/vote.html",
        {
            "rater_title": participation.campaign.rater_title,
            "progress_text": _progress_text(participation),
            "token": participation.token,
            "contact": participation.campaign.contact,
        },
    )
    # An invited account's browser holds its participation in the cookie too: image links check the cookie alone.
    return rater_access.remember(request, page, participation.token)


@never_cache
@require_GET
def tasks(request, participation_token: str):
    """The rater's open tasks (the one to show and the next, to preload), progress, and whether they are done."""
    participation = _authorised_participation(request, participation_token)
    if participation is None:
        return _refuse_token(request, as_json=True)
    if participation.consented_at is None:
        return JsonResponse({"error": "Please read the instructions and agree to take part first."}, status=409)
    answer, status = _tasks_answer(participation)
    return JsonResponse(answer, status=status)


def _tasks_answer(participation: Participation, answered: int | None = None) -> tuple[dict, int]:
    """What tasks.json says, and its status; a vote's reply says the same after its own fields."""
    progress = _progress_json(participation, answered)
    if participation.excluded:
        return _ended_json(participation), 200
    try:
        assignments = services.open_tasks(participation.campaign, participation.rater)
    except services.AnnotationError as exc:  # paused or closed
        return {"error": str(exc), "progress": progress}, 409
    if not assignments:
        ending = services.end_if_out_of_tasks(participation)
        if ending.screened_out:  # excluded between the check above and now
            return _ended_json(participation), 200
        return {"tasks": [], "progress": progress, "done": True, "completion": _completion_json(ending)}, 200
    assignments = (
        Assignment.objects.select_related(
            "item__criterion", "item__image_a__prompt", "item__image_b", "item__gold_image"
        )
        .filter(pk__in=[a.pk for a in assignments])
        .order_by("id")
    )
    length = services.served_image_length(participation.campaign)
    tasks = [_task_json(participation, a, length) for a in assignments]
    return {"tasks": tasks, "progress": progress, "done": False, "completion": None}, 200


def _vote_error(message: str, status: int) -> JsonResponse:
    return JsonResponse({"error": message}, status=status)


@require_POST
def vote(request, participation_token: str):
    """Record one answer: JSON ``{task, choice, seconds}``. A replay of a recorded answer is a harmless duplicate."""
    participation = _authorised_participation(request, participation_token)
    if participation is None:
        return _refuse_token(request, as_json=True)
    if not ratelimit.allow(f"vote:{participation.rater_id}", settings.NEEDLE_VOTE_RATE_LIMIT_PER_MINUTE):
        refused = _vote_error(TOO_MANY_VOTES, 429)
        refused["Retry-After"] = str(ratelimit.seconds_to_next_window(60))  # when this rater's answers count again
        return refused
    try:
        body = json.loads(request.body)
    except (ValueError, UnicodeDecodeError):
        return _vote_error("The answer could not be read (not JSON). Please reload the page.", 400)
    if not isinstance(body, dict):
        return _vote_error("The answer could not be read (expected an object). Please reload the page.", 400)
    task, choice, seconds = body.get("task"), body.get("choice"), body.get("seconds")
    if not isinstance(task, str) or not TOKEN_PATTERN.fullmatch(task):
        return _vote_error("The answer names no valid task. Please reload the page.", 400)
    if not isinstance(choice, str) or choice not in Choice.values:
        return _vote_error(f"Unknown choice; expected one of: {', '.join(Choice.values)}.", 400)
    if seconds is not None and (
        isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not math.isfinite(seconds) or seconds < 0
    ):
        return _vote_error("The time on task must be a number of seconds, zero or more.", 400)
    if participation.consented_at is None:
        return _vote_error("Please read the instructions and agree to take part first.", 409)
    ended = reverse("rate:done", args=[participation.token])
    try:
        result = services.submit_vote(participation.rater, task, choice, seconds, campaign=participation.campaign)
    except services.ParticipationEnded as exc:
        return JsonResponse({"error": str(exc), "ended": ended}, status=409)
    except services.AnnotationError as exc:  # expired, closed, not a choice for this question, already answered
        return _vote_error(str(exc), 409)
    answer = {"recorded": True, "duplicate": result.duplicate}
    if result.ended:
        return JsonResponse({**answer, "progress": _progress_json(participation, result.answered), "ended": ended})
    # The next tasks ride on the reply: one request per answer. If handing them out fails (paused a moment ago),
    # the vote still stands and says so; the page asks tasks.json, which explains.
    following, status = _tasks_answer(participation, result.answered)
    if status != 200:
        return JsonResponse({**answer, "progress": following["progress"]})
    return JsonResponse({**answer, **following})


@never_cache
@require_GET
def done(request, participation_token: str):
    """The end: the completion code, or a redirect to the campaign's completion URL."""
    participation = _authorised_participation(request, participation_token)
    if participation is None:
        return _refuse_token(request)
    ending = services.rater_ending(participation)
    if ending is None:
        # The code is for raters who finished: there is work left (or the page was opened early).
        return redirect("rate:page", participation.token)
    if ending.url:
        return redirect(ending.url)
    campaign = participation.campaign
    return render(
        request,
        "annotation/rater/screened_out.html" if ending.screened_out else "annotation/rater/done.html",
        {
            "rater_title": campaign.rater_title,
            "code": ending.code,
            "contact": campaign.contact,
            "progress_text": _progress_text(participation),
        },
    )
