"""The votes frame built from the database: schema, mapping back to models, and what is left out."""

import pytest

from analysis import stats
from analysis.selectors import VOTE_COLUMNS, votes_frame
from annotation import services
from annotation.models import ComparisonItem, Participation

pytestmark = pytest.mark.django_db


def test_votes_frame_has_the_documented_schema_and_maps_winners_to_models(live_campaign, make_rater):
    rater = make_rater()
    cast = []
    for _ in range(6):
        a = services.next_assignment(live_campaign, rater)
        services.submit_vote(rater, a.token, "left", seconds_on_task=2.0)
        cast.append(a)
    frame = votes_frame(live_campaign)
    stats.validate_votes(frame)
    assert list(frame.columns) == VOTE_COLUMNS and len(frame) == 6
    assert set(frame.model_a) == {"base"} and set(frame.model_b) == {"tuned"}
    # "left" means model A won exactly when A was on the left.
    assert list(frame.winner) == ["a" if a.a_on_left else "b" for a in cast]
    assert list(frame.a_on_left) == [a.a_on_left for a in cast]
    assert set(frame.votes_per_item) <= {3, 5} and (frame.seconds_on_task == 2.0).all()
    first = ComparisonItem.objects.select_related("image_a__prompt").get(pk=cast[0].item_id)
    row = frame.iloc[0]
    assert (row.prompt_id, row.category, row.challenge) == (
        first.image_a.prompt_id,
        first.image_a.prompt.category,
        first.image_a.prompt.challenge,
    )


def test_excluded_raters_are_left_out_unless_asked_for(live_campaign, make_rater):
    kept, dropped = make_rater(), make_rater()
    for rater in (kept, dropped):
        for _ in range(3):
            a = services.next_assignment(live_campaign, rater)
            services.submit_vote(rater, a.token, "right")
    services.exclude_rater(Participation.objects.get(rater=dropped), "test")
    assert set(votes_frame(live_campaign).rater_id) == {kept.pk}
    assert set(votes_frame(live_campaign, include_excluded=True).rater_id) == {kept.pk, dropped.pk}


def test_both_and_neither_reach_the_frame_as_answers_while_the_winner_reads_a_tie(live_campaign, make_rater):
    rater = make_rater()
    answered = []
    while len(answered) < 12:
        a = services.next_assignment(live_campaign, rater)
        if a is None:
            break
        choices = a.item.criterion.choices  # left, right, tie; or left, right, both, neither
        choice = [choices[2], choices[-1], "left"][len(answered) % 3]
        services.submit_vote(rater, a.token, choice)
        answered.append((a, choice))
    frame = votes_frame(live_campaign).set_index("item_id")
    stats.validate_votes(frame.reset_index())
    for a, choice in answered:
        row = frame.loc[a.item_id]
        if choice == "left":
            assert row.winner == row.answer == ("a" if a.a_on_left else "b")
        else:
            assert row.winner == "tie" and row.answer == choice
    assert {"both", "neither"} & set(frame["answer"]) and set(frame["answer"]) <= set(stats.ANSWERS)
