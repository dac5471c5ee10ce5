"""The Django side of analysis: build the votes frame the statistics module takes.

The frame's schema is documented in ``analysis.stats``. Excluded raters' votes
and gold items are left out here (gold items measure raters, not models);
``include_excluded=True`` keeps excluded votes for audits. The optional
``answer`` column comes from the vote's stored choice, so that "both" and
"neither" (text faithfulness) stay apart for agreement, where ``winner`` reads
both as a tie.
"""

from __future__ import annotations

import pandas as pd

from annotation.models import Campaign, Vote

from . import stats

VOTE_COLUMNS = [*stats.VOTE_COLUMNS, *stats.OPTIONAL_COLUMNS]  # the schema of analysis.stats, answer included


def votes_frame(campaign: Campaign, *, include_excluded: bool = False) -> pd.DataFrame:
    """One row per counting vote on the campaign's regular comparison items."""
    votes = Vote.objects.filter(assignment__campaign=campaign)
    votes = votes.on_regular_items() if include_excluded else votes.counting()
    rows = votes.order_by("id").values_list(
        "assignment__item_id",
        "assignment__item__image_a__prompt_id",
        "assignment__item__image_a__prompt__category",
        "assignment__item__image_a__prompt__challenge",
        "assignment__item__criterion__criterion",
        "assignment__item__image_a__model__name",
        "assignment__item__image_b__model__name",
        "assignment__rater_id",
        "winner",
        "assignment__a_on_left",
        "seconds_on_task",
        "assignment__item__criterion__votes_per_item",
        "choice",
    )
    frame = pd.DataFrame.from_records(list(rows), columns=[*VOTE_COLUMNS[:-1], "choice"])
    # The answer as given, with left / right mapped to the model shown there (which ``winner`` already says).
    frame["answer"] = frame["winner"].where(frame["winner"] != Vote.Winner.TIE, frame["choice"])
    frame = frame.drop(columns="choice")
    frame["seconds_on_task"] = pd.to_numeric(frame["seconds_on_task"], errors="coerce").astype(float)
    for column in ("category", "challenge"):
        frame[column] = frame[column].fillna("").astype(str)
    frame["a_on_left"] = frame["a_on_left"].astype(bool)
    return frame
