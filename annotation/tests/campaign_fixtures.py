"""Campaigns with votes, shared by the tests of the researcher pages (annotation) and the campaign page (analysis)."""

import pytest
from django.contrib.auth import get_user_model

from annotation import services
from annotation.models import Participation
from annotation.services import assignment


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
