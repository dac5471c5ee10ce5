"""The votes frame: schema check, encoding to arrays, and the item majority rule.

Everything downstream works on integer codes in numpy arrays (one pass of
``pd.factorize`` per column), never on per-row Python objects, so a million
votes cost well under a second.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

CRITERIA = ("visual_appeal", "text_faithfulness")

# Winner codes used throughout the package: the index into WINNERS.
WINNERS = ("a", "b", "tie")
A, B, TIE = 0, 1, 2
# What the rater answered, mapped to models: text faithfulness asks "both" / "neither" where visual appeal asks "tie".
# The win rate reads all three as a tie (as Emu does); agreement keeps them apart, since they mean different things.
ANSWERS = ("a", "b", "tie", "both", "neither")
_ANSWER_WINNER = {"a": A, "b": B, "tie": TIE, "both": TIE, "neither": TIE}

VOTE_COLUMNS = (
    "item_id",
    "prompt_id",
    "category",
    "challenge",
    "criterion",
    "model_a",
    "model_b",
    "rater_id",
    "winner",
    "a_on_left",
    "seconds_on_task",
    "votes_per_item",
)
# Optional: ``answer`` (one of ANSWERS); when absent it is read as ``winner``.
OPTIONAL_COLUMNS = ("answer",)
_INTEGER_COLUMNS = ("item_id", "prompt_id", "rater_id", "votes_per_item")
# Columns that describe the item, so every vote of one item must agree on them.
_ITEM_COLUMNS = ("prompt_id", "category", "challenge", "criterion", "model_a", "model_b", "votes_per_item")


@dataclass(frozen=True, eq=False)
class EncodedVotes:
    """A validated votes frame as arrays: per-vote codes and per-item attributes.

    Item attributes are indexed by item code (0..items-1); ``*_names`` and
    ``*_ids`` arrays turn codes back into the frame's values.
    """

    vote_item: np.ndarray  # item code of each vote
    vote_winner: np.ndarray  # A, B or TIE
    vote_rater: np.ndarray  # rater code of each vote
    vote_a_on_left: np.ndarray  # bool
    rater_ids: np.ndarray
    item_ids: np.ndarray
    item_prompt: np.ndarray  # prompt code of each item
    prompt_ids: np.ndarray
    item_criterion: np.ndarray
    criterion_names: np.ndarray
    item_model_a: np.ndarray  # model codes into model_names
    item_model_b: np.ndarray
    model_names: np.ndarray
    item_category: np.ndarray
    category_names: np.ndarray
    item_challenge: np.ndarray
    challenge_names: np.ndarray
    item_votes_required: np.ndarray  # the item's k
    item_counts: np.ndarray  # (items, 3): votes for a, b, tie
    vote_answer: np.ndarray  # index into ANSWERS
    item_answer_counts: np.ndarray  # (items, 5): votes answering a, b, tie, both, neither

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def item_votes(self) -> np.ndarray:
        return self.item_counts.sum(axis=1)

    @property
    def item_complete(self) -> np.ndarray:
        """Items with at least k votes (more than k can only come from the Django side's lease races)."""
        return self.item_votes >= self.item_votes_required

    @property
    def item_outcome(self) -> np.ndarray:
        return majority_outcomes(self.item_counts)


def majority_outcomes(counts: np.ndarray) -> np.ndarray:
    """Item outcome codes from an (items, 3) array of a / b / tie vote counts.

    The rule: an outcome (a, b or tie) that has a strict majority of the item's
    votes (more than half) decides the item; when none has, the item is a tie.
    For k = 3 and k = 5 this is the same as plurality with ties between the top
    counts read as a tie; for even k it is stricter (2 b, 1 a, 1 tie is a tie).
    """
    counts = np.asarray(counts)
    twice = 2 * counts
    votes = counts.sum(axis=1)
    outcome = np.full(len(counts), TIE, dtype=np.int8)
    outcome[twice[:, B] > votes] = B
    outcome[twice[:, A] > votes] = A
    return outcome


def validate_votes(votes: pd.DataFrame) -> None:
    """Check a votes frame against the schema; raise ValueError naming the problem.

    Checks: the frame is a non-empty DataFrame with every schema column; ids are
    integers without missing values; ``winner`` is "a", "b" or "tie";
    ``criterion`` is a known criterion; ``a_on_left`` is boolean;
    ``seconds_on_task`` is numeric and not negative; ``votes_per_item`` >= 1;
    ``model_a`` differs from ``model_b``; every vote of an item agrees on the
    item's prompt, category, challenge, criterion, models and k; no rater voted
    twice on one item; the optional ``answer`` is one of ANSWERS and agrees
    with ``winner`` ("both", "neither" and "tie" are ties).
    """
    encode_votes(votes)


def encode_votes(votes: pd.DataFrame) -> EncodedVotes:
    """Validate a votes frame (see :func:`validate_votes`) and encode it as arrays."""
    if not isinstance(votes, pd.DataFrame):
        raise ValueError(f"votes must be a pandas DataFrame, not {type(votes).__name__}")
    missing = [column for column in VOTE_COLUMNS if column not in votes.columns]
    if missing:
        raise ValueError(f"votes frame is missing column(s) {missing}; expected {list(VOTE_COLUMNS)}")
    if len(votes) == 0:
        raise ValueError("votes frame is empty: there is nothing to analyse")

    for column in _INTEGER_COLUMNS:
        if not pd.api.types.is_integer_dtype(votes[column]) or votes[column].isna().any():
            raise ValueError(
                f"column {column!r} must hold integers without missing values (dtype {votes[column].dtype})"
            )
    if (votes["votes_per_item"] < 1).any():
        raise ValueError("column 'votes_per_item' must be at least 1")
    if not pd.api.types.is_bool_dtype(votes["a_on_left"]) or votes["a_on_left"].isna().any():
        raise ValueError(
            f"column 'a_on_left' must be boolean without missing values (dtype {votes['a_on_left'].dtype})"
        )
    seconds = votes["seconds_on_task"]
    if not pd.api.types.is_numeric_dtype(seconds) or pd.api.types.is_bool_dtype(seconds):
        raise ValueError(f"column 'seconds_on_task' must be numeric (NaN allowed), not {seconds.dtype}")
    if (seconds < 0).any():
        raise ValueError("column 'seconds_on_task' has negative values")

    winner_codes, winner_values = pd.factorize(votes["winner"])
    unknown = sorted({str(value) for value in winner_values if value not in WINNERS})
    if unknown or (winner_codes < 0).any():
        shown = unknown + (["<missing>"] if (winner_codes < 0).any() else [])
        raise ValueError(f"column 'winner' has unknown value(s) {shown}; allowed: {list(WINNERS)}")
    vote_winner = np.array([WINNERS.index(value) for value in winner_values], dtype=np.int8)[winner_codes]
    vote_answer = _encode_answers(votes, vote_winner)

    criterion_codes, criterion_names = _factorize_strings(votes, "criterion")
    unknown = sorted(set(criterion_names) - set(CRITERIA))
    if unknown:
        raise ValueError(f"column 'criterion' has unknown value(s) {unknown}; allowed: {list(CRITERIA)}")

    # One model vocabulary for both columns, so codes compare across them.
    model_codes, model_names = _factorize_strings(votes, ["model_a", "model_b"])
    model_a_codes, model_b_codes = model_codes[: len(votes)], model_codes[len(votes) :]
    if (model_a_codes == model_b_codes).any():
        raise ValueError("some votes compare a model with itself (model_a == model_b)")

    category_codes, category_names = _factorize_strings(votes, "category", missing_as_empty=True)
    challenge_codes, challenge_names = _factorize_strings(votes, "challenge", missing_as_empty=True)
    vote_item, item_ids = pd.factorize(votes["item_id"])
    prompt_codes, prompt_ids = pd.factorize(votes["prompt_id"])
    rater_codes, rater_ids = pd.factorize(votes["rater_id"])
    required = votes["votes_per_item"].to_numpy()

    # Any one row of each item stands for it; then every row must agree with it.
    n_items = len(item_ids)
    representative = np.empty(n_items, dtype=np.int64)
    representative[vote_item] = np.arange(len(votes))
    per_vote = {
        "prompt_id": prompt_codes,
        "category": category_codes,
        "challenge": challenge_codes,
        "criterion": criterion_codes,
        "model_a": model_a_codes,
        "model_b": model_b_codes,
        "votes_per_item": required,
    }
    for column in _ITEM_COLUMNS:
        codes = per_vote[column]
        disagree = codes != codes[representative][vote_item]
        if disagree.any():
            example = votes["item_id"].iloc[int(np.argmax(disagree))]
            raise ValueError(
                f"the votes of item {example} disagree on {column!r}; it must be the same for all votes of an item"
            )

    pair_key = vote_item.astype(np.int64) * len(rater_ids) + rater_codes
    duplicated = pd.Series(pair_key).duplicated().to_numpy()
    if duplicated.any():
        row = int(np.argmax(duplicated))
        raise ValueError(
            f"rater {votes['rater_id'].iloc[row]} voted more than once on item {votes['item_id'].iloc[row]}"
        )

    item_counts = np.bincount(vote_item * 3 + vote_winner, minlength=3 * n_items).reshape(n_items, 3)
    answers = len(ANSWERS)
    item_answer_counts = np.bincount(vote_item * answers + vote_answer, minlength=answers * n_items).reshape(
        n_items, answers
    )
    return EncodedVotes(
        vote_item=vote_item,
        vote_winner=vote_winner,
        vote_rater=rater_codes,
        vote_a_on_left=votes["a_on_left"].to_numpy(dtype=bool),
        rater_ids=np.asarray(rater_ids),
        item_ids=np.asarray(item_ids),
        item_prompt=prompt_codes[representative],
        prompt_ids=np.asarray(prompt_ids),
        item_criterion=criterion_codes[representative],
        criterion_names=criterion_names,
        item_model_a=model_a_codes[representative],
        item_model_b=model_b_codes[representative],
        model_names=model_names,
        item_category=category_codes[representative],
        category_names=category_names,
        item_challenge=challenge_codes[representative],
        challenge_names=challenge_names,
        item_votes_required=required[representative],
        item_counts=item_counts,
        vote_answer=vote_answer,
        item_answer_counts=item_answer_counts,
    )


def _encode_answers(votes: pd.DataFrame, vote_winner: np.ndarray) -> np.ndarray:
    """Answer codes (index into ANSWERS): the ``answer`` column, checked against ``winner``; the winner without one."""
    if "answer" not in votes.columns:
        return vote_winner.astype(np.int8)  # a, b, tie are the first three answers
    codes, values = pd.factorize(votes["answer"])
    unknown = sorted({str(value) for value in values if value not in ANSWERS})
    if unknown or (codes < 0).any():
        shown = unknown + (["<missing>"] if (codes < 0).any() else [])
        raise ValueError(f"column 'answer' has unknown value(s) {shown}; allowed: {list(ANSWERS)}")
    vote_answer = np.array([ANSWERS.index(value) for value in values], dtype=np.int8)[codes]
    implied = np.array([_ANSWER_WINNER[name] for name in ANSWERS], dtype=np.int8)[vote_answer]
    if (implied != vote_winner).any():
        row = int(np.argmax(implied != vote_winner))
        raise ValueError(
            f"answer {votes['answer'].iloc[row]!r} contradicts winner {votes['winner'].iloc[row]!r} "
            f"(item {votes['item_id'].iloc[row]}): a and b must match, and tie, both and neither are ties"
        )
    return vote_answer


def _factorize_strings(votes: pd.DataFrame, columns, missing_as_empty: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Codes and names of one string column, or of several read as one (stacked)."""
    names = [columns] if isinstance(columns, str) else columns
    values = pd.concat([votes[name] for name in names], ignore_index=True) if len(names) > 1 else votes[names[0]]
    if missing_as_empty:
        values = values.fillna("")
    codes, uniques = pd.factorize(values)
    if (codes < 0).any():
        raise ValueError(f"column(s) {names} have missing values")
    bad = [value for value in uniques if not isinstance(value, str)]
    if bad:
        raise ValueError(f"column(s) {names} must hold strings; found {bad[:3]!r}")
    return codes, np.asarray(uniques, dtype=object)


def criteria_in(votes: pd.DataFrame) -> list[str]:
    """The criteria present in a votes frame, sorted; ValueError if it is no frame, empty or has no criterion column."""
    if not isinstance(votes, pd.DataFrame):
        raise ValueError(f"votes must be a pandas DataFrame, not {type(votes).__name__}")
    if "criterion" not in votes.columns:
        raise ValueError(f"votes frame is missing column(s) ['criterion']; expected {list(VOTE_COLUMNS)}")
    if len(votes) == 0:
        raise ValueError("votes frame is empty: there is nothing to analyse")
    return sorted(str(value) for value in pd.unique(votes["criterion"]))


def select_criterion(votes: pd.DataFrame, criterion: str | None) -> tuple[str, pd.DataFrame]:
    """The votes of one criterion, so that visual appeal and text faithfulness are never pooled.

    With ``criterion=None`` the frame must hold exactly one criterion. The
    frame's schema is checked later, by :func:`encode_votes`.
    """
    present = criteria_in(votes)
    if criterion is None:
        if len(present) != 1:
            raise ValueError(f"votes hold criteria {present}; pass criterion= to pick one")
        return present[0], votes
    if criterion not in CRITERIA:
        raise ValueError(f"unknown criterion {criterion!r}; allowed: {list(CRITERIA)}")
    if criterion not in present:
        raise ValueError(f"no votes for criterion {criterion!r}")
    if len(present) == 1:
        return criterion, votes
    return criterion, votes[votes["criterion"] == criterion]
