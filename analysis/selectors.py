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

from annotation.models import Campaign, ComparisonItem, Vote

from . import stats
from .models import JudgeScore

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


ITEM_COLUMNS = [
    "item_id",
    "criterion",
    "model_a",
    "model_b",
    "prompt_id",
    "image_a_id",
    "image_b_id",
    "votes_per_item",
    "a",
    "b",
    "tie",
    "votes",
    "completed_at",
]


def item_completions(campaign: Campaign) -> tuple[pd.DataFrame, pd.Series]:
    """Every regular item with its counting votes per winner and when it completed; and the counting votes' times.

    ``completed_at`` is the time of the item's k-th counting vote (NaT while it has fewer), so items, and the
    prompts whose items are all complete, can be put in the order they completed: the order in which an
    anytime-valid confidence sequence sees them. The second value is every counting vote's time, sorted, to count
    the votes cast by a given moment.
    """
    items = pd.DataFrame.from_records(
        list(
            ComparisonItem.objects.regular()
            .filter(campaign=campaign)
            .order_by("id")
            .values_list(
                "id",
                "criterion__criterion",
                "image_a__model__name",
                "image_b__model__name",
                "image_a__prompt_id",
                "image_a_id",
                "image_b_id",
                "criterion__votes_per_item",
            )
        ),
        columns=ITEM_COLUMNS[:8],
    )
    votes = pd.DataFrame.from_records(
        list(
            Vote.objects.counting()
            .filter(assignment__campaign=campaign)
            .order_by("id")
            .values_list("assignment__item_id", "winner", "created_at")
        ),
        columns=["item_id", "winner", "created_at"],
    )
    counts = (
        votes.groupby(["item_id", "winner"]).size().unstack("winner", fill_value=0)
        if len(votes)
        else pd.DataFrame(columns=["a", "b", "tie"])
    )
    counts = counts.reindex(columns=["a", "b", "tie"], fill_value=0)
    items = items.join(counts, on="item_id")
    for column in ("a", "b", "tie"):
        items[column] = items[column].fillna(0).astype(int)
    items["votes"] = items[["a", "b", "tie"]].sum(axis=1)
    items["completed_at"] = pd.Series(pd.NaT, index=items.index, dtype="datetime64[ns, UTC]")
    if len(votes):
        votes["nth"] = votes.groupby("item_id").cumcount() + 1
        kth = votes.merge(items[["item_id", "votes_per_item"]], on="item_id")
        kth = kth[kth["nth"] == kth["votes_per_item"]]
        moments = dict(zip(kth["item_id"], pd.to_datetime(kth["created_at"], utc=True), strict=True))
        complete = items["item_id"].isin(moments)
        items.loc[complete, "completed_at"] = [moments[i] for i in items.loc[complete, "item_id"]]
    times = pd.to_datetime(votes["created_at"], utc=True).sort_values(ignore_index=True)
    return items[ITEM_COLUMNS], times


JUDGE_COLUMNS = ["criterion", "image_a_id", "image_b_id", "prompt_id", "model_a", "model_b", "score", "judge"]


def judge_scores(campaign: Campaign) -> pd.DataFrame:
    """The automatic judge's scores of the campaign's pairs (``JudgeScore``), with each pair's prompt and models."""
    rows = (
        JudgeScore.objects.filter(campaign=campaign)
        .order_by("id")
        .values_list(
            "criterion",
            "image_a_id",
            "image_b_id",
            "image_a__prompt_id",
            "image_a__model__name",
            "image_b__model__name",
            "score",
            "judge",
        )
    )
    return pd.DataFrame.from_records(list(rows), columns=JUDGE_COLUMNS)
