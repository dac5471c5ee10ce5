"""Statistics of human preference votes: win rates, intervals, Bradley–Terry, agreement, planning.

Pure pandas / numpy / SciPy: nothing here imports Django, so notebooks and
benchmarks use it as it is. The Django side (analysis/selectors.py) builds the
votes frame and renders what these functions return.

Votes frame
-----------
One row per vote, pandas DataFrame, columns:

- ``item_id`` (int): the comparison item (one prompt, one seed, one criterion, two images)
- ``prompt_id`` (int), ``category`` (str, may be ""), ``challenge`` (str, may be "")
- ``criterion`` (str: "visual_appeal" or "text_faithfulness")
- ``model_a``, ``model_b`` (str): the item's two models (for two-model campaigns the
  same for all rows; for N models any pairs)
- ``rater_id`` (int)
- ``winner`` (str: "a", "b" or "tie") — already mapped back from left/right,
  "both"/"neither" are "tie"
- ``a_on_left`` (bool) — for position bias
- ``seconds_on_task`` (float, may be NaN)
- ``votes_per_item`` (int): the item's k
- ``answer`` (str, optional): what the rater answered, mapped to models: "a",
  "b", "tie", "both" or "neither" (text faithfulness asks both / neither).
  Agreement keeps these apart; without the column it reads ``winner``.

Rows with excluded raters or gold items are removed by the Django side before
calling in. Every entry point validates the schema and raises ValueError with
a clear message on missing columns or bad values (:func:`validate_votes`);
missing ``category`` / ``challenge`` values read as "".

Rules used throughout
---------------------
- Criteria are never pooled: each function analyses one criterion
  (``criterion=`` picks it; ``None`` requires the frame to hold just one).
- An item's outcome is the option (a, b or tie) with a strict majority of its
  votes; with none, the item is a tie (:func:`majority_outcomes`).
- An item with fewer than k votes is incomplete: counted in
  ``incomplete_items`` and left out unless ``include_incomplete=True``.
- Win rates are model B's: wins / comparisons, ties not won; the
  wins + ties / 2 convention is reported beside it, labelled ``half_ties``.
- Bootstraps resample prompts with replacement (all items and votes of a
  prompt move together) and are reproducible from ``seed``.
- The headline interval is :data:`HEADLINE_INTERVAL`, the prompt-clustered
  score interval (deterministic); with fewer than :data:`MIN_PROMPTS` prompts
  there is none. :func:`headline_interval` says why.
"""

from .adaptive_pairs import PairPriority, next_pair_priorities, plan_pairs, ranking_separated
from .agreement import Agreement, fleiss_kappa, krippendorff_alpha_nominal, position_bias, rater_agreement
from .bradley_terry import RIDGE, BradleyTerryResult, bradley_terry, fit_bradley_terry
from .intervals import (
    CLUSTERED_SCORE,
    MIN_PROMPTS,
    BootstrapResult,
    Interval,
    SignTest,
    TooFewPrompts,
    VarianceComponents,
    cluster_bootstrap_ratio,
    clustered_score_bounds,
    clustered_score_interval,
    resampled_totals,
    sign_test,
    variance_components,
    wilson_interval,
)
from .planning import (
    additional_comparisons_needed,
    comparisons_for_half_width,
    comparisons_for_power,
    sign_test_power,
)
from .ppi import PPI, PPI_ITEMS, PredictionPowered, prediction_powered_win_rate
from .sequential import (
    HEDGED_CAPITAL,
    ConfidenceSequence,
    confidence_sequence,
    confidence_sequence_bounds,
    first_exclusion,
    prompt_scores,
)
from .votes import ANSWERS, CRITERIA, OPTIONAL_COLUMNS, VOTE_COLUMNS, WINNERS, majority_outcomes, validate_votes
from .win_rates import (
    HEADLINE_INTERVAL,
    Shares,
    WinRateReport,
    headline_interval,
    win_rate_report,
    win_rate_reports,
    win_rates_by,
)

__all__ = [
    "ANSWERS",
    "CLUSTERED_SCORE",
    "CRITERIA",
    "HEADLINE_INTERVAL",
    "HEDGED_CAPITAL",
    "MIN_PROMPTS",
    "OPTIONAL_COLUMNS",
    "PPI",
    "PPI_ITEMS",
    "RIDGE",
    "VOTE_COLUMNS",
    "WINNERS",
    "Agreement",
    "BootstrapResult",
    "BradleyTerryResult",
    "ConfidenceSequence",
    "Interval",
    "PairPriority",
    "PredictionPowered",
    "Shares",
    "SignTest",
    "TooFewPrompts",
    "VarianceComponents",
    "WinRateReport",
    "additional_comparisons_needed",
    "bradley_terry",
    "cluster_bootstrap_ratio",
    "clustered_score_bounds",
    "clustered_score_interval",
    "comparisons_for_half_width",
    "confidence_sequence",
    "confidence_sequence_bounds",
    "comparisons_for_power",
    "first_exclusion",
    "fit_bradley_terry",
    "fleiss_kappa",
    "headline_interval",
    "krippendorff_alpha_nominal",
    "majority_outcomes",
    "next_pair_priorities",
    "plan_pairs",
    "position_bias",
    "prediction_powered_win_rate",
    "prompt_scores",
    "ranking_separated",
    "rater_agreement",
    "resampled_totals",
    "sign_test",
    "sign_test_power",
    "validate_votes",
    "variance_components",
    "wilson_interval",
    "win_rate_report",
    "win_rate_reports",
    "win_rates_by",
]
