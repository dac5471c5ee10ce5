"""Rater enrolment: invite links, crowd ids (Prolific), joining, consent and resuming."""

from __future__ import annotations

import logging
import re
import unicodedata

from django.db import transaction
from django.utils import timezone

from ..models import (
    Campaign,
    InviteLink,
    Participation,
    Rater,
)
from .campaigns import MAX_RATERS_PER_LINK, check_limit, check_text
from .errors import AnnotationError

logger = logging.getLogger(__name__)

# --- Raters -----------------------------------------------------------------------------------

CROWD_PARAMETERS = {"PROLIFIC_PID": "prolific_pid", "STUDY_ID": "study_id", "SESSION_ID": "session_id"}
# The longest id each query parameter may carry (the model fields' lengths). A Prolific id is 24 characters: an id
# longer than this is a mangled or hostile link, refused rather than cut (a cut id could become someone else's).
CROWD_ID_MAX_LENGTH = {"PROLIFIC_PID": 100, "STUDY_ID": 100, "SESSION_ID": 100, "external_id": 200}


class CrowdIdError(AnnotationError):
    """An id in an invite link's query cannot be anyone's id (too long)."""

    code = "crowd_id_refused"


class ParticipationTaken(AnnotationError):
    """A crowd id that already took part came back with other ids: it is not resumed."""

    code = "participation_taken"


PARTICIPATION_TAKEN = (
    "This participant id has already started this study in another session, so this link cannot resume it. If that "
    "was you, open the study again from your study platform (on Prolific, from your submission: its link carries "
    "the same study and session ids). If it was not you, please contact the study's organisers."
)

# A Prolific placeholder such as {{%PROLIFIC_PID%}} that nobody filled in: the link was opened as printed.
_UNFILLED_PLACEHOLDER = re.compile(r"\{{1,2}%\s*\w+\s*%\}{1,2}")
# Never part of a real id: control characters (NUL is an error on PostgreSQL; tabs and newlines break exports and
# logs), format characters (bidi overrides and isolates such as U+202E, which would reorder a researcher's page;
# zero-width characters, which make two ids look the same) and line or paragraph separators.
_NOT_IN_IDS = frozenset(("Cc", "Cf", "Zl", "Zp"))


def _crowd_id(value) -> str:
    """A crowd id from an invite link's query, or "" for none. An unfilled placeholder is no id: taken as one, every
    browser that opened the printed link would be the same rater."""
    value = "".join(c for c in str(value or "") if unicodedata.category(c) not in _NOT_IN_IDS).strip()
    return "" if _UNFILLED_PLACEHOLDER.fullmatch(value) else value


def crowd_ids(params: dict) -> dict[str, str]:
    """The crowd ids of an invite link's query (CROWD_ID_MAX_LENGTH's parameters), cleaned: control, format (bidi)
    and separator characters removed, an unfilled placeholder read as no id. Refuses an id too long to be one."""
    ids = {}
    for param, limit in CROWD_ID_MAX_LENGTH.items():
        ids[param] = _crowd_id(params.get(param))
        if len(ids[param]) > limit:
            raise CrowdIdError(
                f"The {param} in this link is {len(ids[param]):,} characters long; an id has at most {limit}. Open "
                "the study again from the link your study platform gave you, or ask the study's organisers for help.",
                field=param,
            )
    return ids


def has_crowd_id(params: dict) -> bool:
    """Whether an invite link's query names a crowd worker (a filled-in id, not an unfilled placeholder)."""
    return any(_crowd_id(value) for value in params.values())


def invite_link_for(campaign: Campaign, *, label: str, max_raters: int = 0) -> InviteLink:
    """The campaign's active invite link with this label and rater limit, created if there is none (idempotent)."""
    link = (
        InviteLink.objects.filter(campaign=campaign, label=label, max_raters=max_raters, active=True)
        .order_by("pk")
        .first()
    )
    return link if link is not None else create_invite_link(campaign, label=label, max_raters=max_raters)


def join_with_invite(link_token: str, params: dict) -> Participation:
    """Enrol whoever opened an invite link, or resume the participation their crowd id already has.

    Resuming needs every id the participation joined with (PROLIFIC_PID, STUDY_ID, SESSION_ID, external_id) to come
    back the same: a PROLIFIC_PID alone is no secret (it shows in screenshots, shared links, spreadsheets), while a
    Prolific SESSION_ID is known only to that submission. The same id with other ids is refused with
    ``ParticipationTaken``, which says nothing about the participation it matched.
    """
    link = InviteLink.objects.select_related("campaign").filter(token=link_token).first()
    if link is None or not link.active:
        raise AnnotationError("This invitation link is not valid. Check that you copied the whole link.")
    campaign = link.campaign
    if campaign.status not in (Campaign.Status.LIVE, Campaign.Status.PAUSED):
        raise AnnotationError("This study is not open right now.")
    presented = crowd_ids(params)
    ids = {field: presented[param] for param, field in CROWD_PARAMETERS.items()}
    ids["external_id"] = external_id = presented["external_id"] or presented["PROLIFIC_PID"]
    with transaction.atomic():
        InviteLink.objects.select_for_update().filter(pk=link.pk).exists()  # serialise the max_raters check
        if external_id:
            existing = Participation.objects.filter(campaign=campaign, external_id=external_id).first()
            if existing is not None:
                if any(getattr(existing, field) != value for field, value in ids.items()):
                    raise ParticipationTaken(PARTICIPATION_TAKEN)
                return existing
        if link.max_raters and link.participations.count() >= link.max_raters:
            raise AnnotationError("This study is full. Thank you for your interest.")
        rater = Rater.objects.create(external_id=external_id, simulated=link.simulated)
        return Participation.objects.create(campaign=campaign, rater=rater, invite_link=link, **ids)


def invite_account(campaign: Campaign, user) -> Participation:
    """Let a researcher-invited account vote in ``campaign``; idempotent."""
    rater, _ = Rater.objects.get_or_create(user=user)
    participation, _ = Participation.objects.get_or_create(campaign=campaign, rater=rater)
    return participation


def create_invite_link(
    campaign: Campaign, *, label: str = "", max_raters: int = 0, simulated: bool = False
) -> InviteLink:
    """``simulated``: a link for programs (the mini-Emu world's raters); everyone joining through it is labelled so."""
    check_limit(max_raters, MAX_RATERS_PER_LINK, field="max_raters", what="The rater limit")
    check_text(label, field="label", what="The label", blank_ok=True)
    return InviteLink.objects.create(campaign=campaign, label=label, max_raters=max_raters, simulated=bool(simulated))


def record_consent(participation: Participation) -> None:
    if participation.consented_at is None:
        Participation.objects.filter(pk=participation.pk, consented_at__isnull=True).update(consented_at=timezone.now())
        participation.refresh_from_db(fields=["consented_at"])
