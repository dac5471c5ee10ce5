"""How much raters agree with each other, and whether a rater favours one side of the screen."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .intervals import sign_test
from .votes import ANSWERS, TIE, A, B, encode_votes, majority_outcomes, select_criterion


def fleiss_kappa(counts) -> float:
    """Fleiss' kappa from an (items, categories) count matrix; every item needs the same number (>= 2) of ratings."""
    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim != 2 or len(counts) == 0:
        raise ValueError("counts must be a non-empty (items, categories) matrix")
    ratings = counts.sum(axis=1)
    if not np.all(ratings == ratings[0]) or ratings[0] < 2:
        raise ValueError("Fleiss' kappa needs the same number (at least 2) of ratings for every item")
    n = ratings[0]
    observed = ((counts * (counts - 1)).sum(axis=1) / (n * (n - 1))).mean()
    category_shares = counts.sum(axis=0) / counts.sum()
    expected = float(np.sum(category_shares**2))
    if expected == 1:
        raise ValueError("Fleiss' kappa is undefined when every rating falls in one category")
    return float((observed - expected) / (1 - expected))


def krippendorff_alpha_nominal(counts) -> float:
    """Krippendorff's alpha for nominal data from an (items, categories) count matrix; items may differ in ratings.

    Items with fewer than two ratings carry no pair and are ignored, as in the
    coincidence-matrix definition: alpha = 1 - (n - 1) * D_o / D_e, where D_o
    sums each item's disagreeing pairs over (m_u - 1) and D_e the pairs of
    different values among all n pairable ratings.
    """
    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim != 2:
        raise ValueError("counts must be an (items, categories) matrix")
    ratings = counts.sum(axis=1)
    counts, ratings = counts[ratings >= 2], ratings[ratings >= 2]
    if len(counts) == 0:
        raise ValueError("Krippendorff's alpha needs at least one item with two or more ratings")
    observed_disagreement = np.sum((ratings**2 - (counts**2).sum(axis=1)) / (ratings - 1))
    totals = counts.sum(axis=0)
    n = totals.sum()
    expected_disagreement = n**2 - np.sum(totals**2)
    if expected_disagreement == 0:
        raise ValueError("Krippendorff's alpha is undefined when every rating falls in one category")
    return float(1 - (n - 1) * observed_disagreement / expected_disagreement)


@dataclass(frozen=True)
class Agreement:
    """Inter-rater agreement for one criterion.

    ``fleiss_kappa`` over the ``fleiss_items`` items that have the most common
    number of votes (``ratings_per_item``); ``krippendorff_alpha`` (nominal)
    over all ``alpha_items`` items with two or more votes. Both count the
    answers raters gave as distinct ``categories`` (a, b, tie for visual
    appeal; a, b, both, neither for text faithfulness): "both are faithful" and
    "neither is" are opposite judgements, even though the win rate reads each
    as a tie. ``majority_agreement``: share of votes that match their item's
    strict majority outcome (a, b or tie, the win rate's categories), over the
    ``majority_items`` items that have one (``items_without_majority`` have not).
    """

    criterion: str
    fleiss_kappa: float
    fleiss_items: int
    ratings_per_item: int
    krippendorff_alpha: float
    alpha_items: int
    majority_agreement: float
    majority_items: int
    items_without_majority: int
    categories: tuple[str, ...] = ("a", "b", "tie")


def rater_agreement(
    votes: pd.DataFrame, criterion: str | None = None, *, include_incomplete: bool = False
) -> Agreement:
    """Fleiss' kappa, Krippendorff's alpha and agreement with the majority for one criterion.

    Uses the same items as the win rate: complete items (at least k votes)
    unless ``include_incomplete``. Kappa and alpha take the answers as given
    (the frame's ``answer`` column: tie, both and neither stay apart); without
    that column, a / b / tie.
    """
    criterion, selected = select_criterion(votes, criterion)
    encoded = encode_votes(selected)
    used = np.ones(encoded.n_items, dtype=bool) if include_incomplete else encoded.item_complete
    counts = encoded.item_counts[used]
    answered = encoded.item_answer_counts[used]
    present = answered.sum(axis=0) > 0
    categories = tuple(name for name, seen in zip(ANSWERS, present, strict=True) if seen)
    answered = answered[:, present]
    if len(counts) == 0:
        raise ValueError(f"no complete items for {criterion!r}; pass include_incomplete=True to use them")
    ratings = counts.sum(axis=1)

    values, frequency = np.unique(ratings[ratings >= 2], return_counts=True)
    if len(values) == 0:
        raise ValueError("agreement needs items with at least two votes")
    common = int(values[frequency == frequency.max()].max())  # most common number of votes; the larger on a tie
    fleiss_counts = answered[ratings == common]

    outcome = majority_outcomes(counts)
    has_majority = 2 * counts.max(axis=1) > ratings
    agreeing = counts[has_majority, outcome[has_majority]].sum()
    return Agreement(
        criterion=criterion,
        fleiss_kappa=fleiss_kappa(fleiss_counts),
        fleiss_items=len(fleiss_counts),
        ratings_per_item=common,
        krippendorff_alpha=krippendorff_alpha_nominal(answered),
        alpha_items=int(np.count_nonzero(ratings >= 2)),
        majority_agreement=float(agreeing / ratings[has_majority].sum()) if has_majority.any() else float("nan"),
        majority_items=int(has_majority.sum()),
        items_without_majority=int((~has_majority).sum()),
        categories=categories,
    )


def position_bias(votes: pd.DataFrame, criterion: str | None = None) -> pd.DataFrame:
    """Per rater: share of left picks among the votes that picked a side, with an exact binomial test vs 1/2.

    Ties carry no side and are left out. ``criterion=None`` pools every
    criterion present: the bias belongs to the rater, not to the question.
    One row per rater (columns ``rater_id``, ``side_votes``, ``left_picks``,
    ``left_share``, ``p_value``), most significant first.
    """
    if criterion is not None:
        _, votes = select_criterion(votes, criterion)
    encoded = encode_votes(votes)
    picked_side = encoded.vote_winner != TIE
    winner = encoded.vote_winner[picked_side]
    a_on_left = encoded.vote_a_on_left[picked_side]
    left = ((winner == A) & a_on_left) | ((winner == B) & ~a_on_left)
    rater = encoded.vote_rater[picked_side]
    n_raters = len(encoded.rater_ids)
    side_votes = np.bincount(rater, minlength=n_raters)
    left_picks = np.bincount(rater, weights=left, minlength=n_raters).astype(np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        left_share = np.where(side_votes > 0, left_picks / side_votes, np.nan)
    p_values = [
        sign_test(int(picks), int(total - picks)).p_value for picks, total in zip(left_picks, side_votes, strict=True)
    ]
    table = pd.DataFrame(
        {
            "rater_id": encoded.rater_ids,
            "side_votes": side_votes,
            "left_picks": left_picks,
            "left_share": left_share,
            "p_value": p_values,
        }
    )
    return table.sort_values(["p_value", "rater_id"], ignore_index=True)
