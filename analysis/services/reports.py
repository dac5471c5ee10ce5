"""Campaign reports: the numbers of ``analysis.stats`` over a campaign's votes, and the files researchers download.

(About 550 lines, kept whole: ``build_report`` and the helpers only it uses, read top to bottom as one
computation; the values it returns, the live figures and the exports are their own modules.)

``build_report`` reads the campaign once (the votes frame of
``analysis.selectors``, sorted so that the same votes always give the same
numbers), analyses every criterion and model pair on its own, and returns a
frozen :class:`CampaignReport` of plain values. The renderers (JSON, HTML,
PDF) only lay that report out; the CSV exports stream rows from the database.

Conventions are those of ``analysis.stats``: an item's outcome is the strict
majority of its k votes; items with fewer than k votes are incomplete and left
out (and counted); the win rate is model B's, ties not won, with the
wins + ties / 2 convention beside it; the interval around a win rate is the
prompt-clustered score interval (:data:`analysis.stats.HEADLINE_INTERVAL`),
deterministic, and withheld, with the reason, below
:data:`analysis.stats.MIN_PROMPTS` prompts. The bootstrap seed and rounds
only move the Bradley–Terry intervals, printed with their Monte Carlo error.
Excluded raters' votes and gold items never enter the numbers.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import math
import re
import subprocess
from collections.abc import Iterator

import numpy as np
import pandas as pd
import scipy
from django.conf import settings
from django.db.models import Count, Max, Q

from annotation.models import Campaign, ComparisonItem, Participation, Vote

from .. import stats
from ..selectors import VOTE_COLUMNS, item_completions, votes_frame
from .decisions import decision_summaries, sequence_summaries, stop_rule
from .prediction_powered import prediction_powered_summaries
from .values import (
    DEFAULT_ROUNDS,
    DEFAULT_SEED,
    MAX_ROUNDS,
    MAX_SEED,
    MIN_ROUNDS,
    PLANNER_HALF_WIDTHS,
    POSITION_BIAS_ALPHA,
    AgreementSummary,
    Bounds,
    CampaignReport,
    Comparison,
    ExcludedRater,
    Exclusions,
    FlaggedSpeeder,
    GroupWinRate,
    Outcomes,
    PlannerTarget,
    RankedModel,
    Ranking,
    RaterSideBias,
    Reproducibility,
    percent,
)


class ReportError(Exception):
    """The report cannot be made; the message tells the researcher why and what to do."""


def build_report(
    campaign: Campaign,
    *,
    seed: int = DEFAULT_SEED,
    rounds: int = DEFAULT_ROUNDS,
    level: float = 0.95,
    include_incomplete: bool = False,
) -> CampaignReport:
    """The campaign's report. ReportError when there is nothing to report yet (no counting votes) or bad options.

    A criterion without complete comparisons still gets its row, saying so,
    rather than failing the whole report.
    """
    check_options(seed=seed, rounds=rounds, level=level)
    frame = analysed_votes(campaign)
    if frame.empty:
        raise ReportError(_no_votes_message(campaign))
    options = {"seed": seed, "rounds": rounds, "level": level, "include_incomplete": include_incomplete}

    comparisons = tuple(campaign_comparisons(campaign, frame, breakdowns=True, **options))
    criteria = [(c.criterion, c.get_criterion_display()) for c in campaign.criteria.all()]
    models = [m.name for m in campaign.ordered_models()]
    exclusions = _exclusions(campaign)
    last_vote = counting_votes(campaign).aggregate(last=Max("created_at"))["last"]
    items, _ = item_completions(campaign)
    return CampaignReport(
        campaign_id=campaign.pk,
        campaign_name=campaign.name,
        campaign_status=campaign.status,
        models=tuple(models),
        pairing=campaign.pairing,
        baseline=campaign.baseline.name if campaign.baseline_id else None,
        prompt_set=campaign.prompt_set.name,
        comparisons=comparisons,
        agreement=tuple(_agreement(frame, name, label, include_incomplete) for name, label in criteria),
        position_bias=_position_bias(campaign, frame),
        rankings=(
            tuple(
                _ranking(campaign, frame, name, label, seed=seed, rounds=rounds, level=level)
                for name, label in criteria
            )
            if len(models) > 2
            else ()
        ),
        exclusions=exclusions,
        reproducibility=Reproducibility(
            votes=len(frame),
            votes_sha256=votes_snapshot_sha256(frame),
            last_vote_at=last_vote.isoformat() if last_vote else None,
            simulated_votes=counting_votes(campaign).filter(assignment__rater__simulated=True).count(),
            excluded_votes=exclusions.excluded_votes,
            exclusion_rule=exclusions.rule,
            seed=seed,
            rounds=rounds,
            level=level,
            include_incomplete=include_incomplete,
            interval_method=stats.HEADLINE_INTERVAL,
            min_prompts_for_interval=stats.MIN_PROMPTS,
            bradley_terry_unit="item",
            code_version=code_version(),
            software={"numpy": np.__version__, "pandas": pd.__version__, "scipy": scipy.__version__},
        ),
        sequences=sequence_summaries(campaign, items=items, level=level),
        stop_rule=stop_rule(campaign),
        decisions=decision_summaries(campaign),
        prediction_powered=prediction_powered_summaries(campaign, items=items, level=level),
    )


def check_options(*, seed, rounds, level=0.95) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise ReportError(f"The bootstrap seed must be a whole number from 0 to {MAX_SEED}.")
    if isinstance(rounds, bool) or not isinstance(rounds, int) or not MIN_ROUNDS <= rounds <= MAX_ROUNDS:
        raise ReportError(f"Bootstrap rounds must be a whole number from {MIN_ROUNDS} to {MAX_ROUNDS:,}.")
    if not isinstance(level, float | int) or not 0.5 <= level < 1:
        raise ReportError("The confidence level must be at least 0.5 and below 1 (e.g. 0.95).")


def analysed_votes(campaign: Campaign) -> pd.DataFrame:
    """The counting votes as the documented votes frame, sorted by item and rater.

    Sorted because the bootstrap numbers prompts in order of appearance: a
    fixed order makes the numbers depend on the votes alone, not on the order
    they were cast in, so the snapshot hash identifies them.
    """
    frame = votes_frame(campaign)
    return frame.sort_values(["item_id", "rater_id"], kind="stable", ignore_index=True)


def votes_snapshot_sha256(frame: pd.DataFrame) -> str:
    """sha256 of a stable CSV of the votes frame: sorted by item and rater, fixed columns, floats as repr, NaN empty."""
    ordered = frame.sort_values(["item_id", "rater_id"], kind="stable", ignore_index=True)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(VOTE_COLUMNS)
    for row in ordered[VOTE_COLUMNS].itertuples(index=False, name=None):
        writer.writerow(_snapshot_cell(value) for value in row)
    return hashlib.sha256(buffer.getvalue().encode()).hexdigest()


def _snapshot_cell(value) -> str:
    if isinstance(value, bool | np.bool_):
        return "true" if value else "false"
    if isinstance(value, float | np.floating):
        return "" if math.isnan(value) else repr(float(value))
    return str(value)


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """The git commit the code runs from (asked once per process); "unknown" outside a git checkout."""
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=settings.BASE_DIR, capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    commit = result.stdout.strip()
    return commit if result.returncode == 0 and re.fullmatch(r"[0-9a-f]{40}|[0-9a-f]{64}", commit) else "unknown"


def counting_votes(campaign: Campaign):
    """The votes the numbers use: not excluded, on regular items."""
    return Vote.objects.counting().filter(assignment__campaign=campaign)


def _no_votes_message(campaign: Campaign) -> str:
    all_votes = Vote.objects.filter(assignment__campaign=campaign)
    regular = all_votes.on_regular_items().count()
    if regular:
        return (
            f"Campaign {campaign.name!r} has no counting votes: all {regular} vote(s) on its comparisons come from "
            "excluded raters. Invite more raters; the report appears once their votes arrive."
        )
    if campaign.status in (Campaign.Status.DRAFT, Campaign.Status.LAUNCHING):
        return (
            f"Campaign {campaign.name!r} has no votes yet: it is {campaign.status}. Launch it and invite raters first."
        )
    return (
        f"Campaign {campaign.name!r} has no votes yet. Invite raters from the campaign page; "
        "the report appears once votes arrive (win rates need complete comparisons)."
    )


def campaign_comparisons(
    campaign, frame, *, breakdowns: bool, seed, rounds, level, include_incomplete
) -> Iterator[Comparison]:
    """A Comparison for every criterion x model pair the campaign compares, voted on or not."""
    item_counts = {
        (row["criterion__criterion"], row["image_a__model__name"], row["image_b__model__name"]): row["n"]
        for row in ComparisonItem.objects.regular()
        .filter(campaign=campaign)
        .values("criterion__criterion", "image_a__model__name", "image_b__model__name")
        .annotate(n=Count("id"))
        .order_by()
    }
    for criterion in campaign.criteria.all():
        for model_a, model_b in campaign.model_pairs():
            selected = frame[
                (frame["criterion"] == criterion.criterion)
                & (frame["model_a"] == model_a.name)
                & (frame["model_b"] == model_b.name)
            ]
            yield _comparison(
                selected,
                criterion=criterion.criterion,
                criterion_label=criterion.get_criterion_display(),
                model_a=model_a.name,
                model_b=model_b.name,
                votes_per_item=criterion.votes_per_item,
                items=item_counts.get((criterion.criterion, model_a.name, model_b.name), 0),
                breakdowns=breakdowns,
                seed=seed,
                rounds=rounds,
                level=level,
                include_incomplete=include_incomplete,
            )


def _item_table(votes: pd.DataFrame) -> pd.DataFrame:
    """One row per voted item: prompt, k, votes for a / b / tie, whether complete, outcome code (analysis.stats' rule)."""
    counts = (
        votes.groupby(["item_id", "winner"])
        .size()
        .unstack("winner", fill_value=0)
        .reindex(columns=list(stats.WINNERS), fill_value=0)
    )
    attributes = votes.groupby("item_id")[["prompt_id", "votes_per_item"]].first()
    table = attributes.join(counts)
    table["votes"] = table[list(stats.WINNERS)].sum(axis=1)
    table["complete"] = table["votes"] >= table["votes_per_item"]
    table["outcome"] = stats.majority_outcomes(table[list(stats.WINNERS)].to_numpy())
    return table


def design_effect(items: pd.DataFrame) -> float:
    """How much prompt clustering widens the win rate's uncertainty: its variance over the binomial one (>= 1).

    The variance is the jackknife over prompts (leave one prompt's items out),
    deterministic so the planner does not move with the bootstrap seed. The
    planner scales the Wilson sample size by it, as
    ``analysis.stats.comparisons_for_half_width`` expects. 1 when it cannot
    be estimated (one prompt, or a 0% / 100% win rate).
    """
    won = items["outcome"] == stats.WINNERS.index("b")
    per_prompt = pd.DataFrame({"won": won, "prompt": items["prompt_id"]}).groupby("prompt")["won"].agg(["sum", "size"])
    m, n, wins = len(per_prompt), int(per_prompt["size"].sum()), int(per_prompt["sum"].sum())
    if m < 2 or wins in (0, n):
        return 1.0
    leave_one_out = (wins - per_prompt["sum"]) / (n - per_prompt["size"])
    jackknife_variance = (m - 1) / m * float(((leave_one_out - leave_one_out.mean()) ** 2).sum())
    share = wins / n
    return max(1.0, jackknife_variance / (share * (1 - share) / n))


def _bounds(interval: stats.Interval | None) -> Bounds | None:
    if interval is None:
        return None
    return Bounds(float(interval.low), float(interval.high), float(interval.level), interval.method)


def _outcomes(shares: stats.Shares) -> Outcomes:
    return Outcomes(shares.wins, shares.ties, shares.losses, shares.win_rate, shares.tie_share, shares.loss_share)


def _comparison(
    votes,
    *,
    criterion,
    criterion_label,
    model_a,
    model_b,
    votes_per_item,
    items,
    breakdowns,
    seed,
    rounds,
    level,
    include_incomplete,
) -> Comparison:
    table = _item_table(votes) if len(votes) else None
    voted = 0 if table is None else len(table)
    incomplete = 0 if table is None else int((~table["complete"]).sum())
    used = None if table is None else table if include_incomplete else table[table["complete"]]
    base = {
        "criterion": criterion,
        "criterion_label": criterion_label,
        "model_a": model_a,
        "model_b": model_b,
        "votes_per_item": votes_per_item,
        "items": items,
        "incomplete_items": incomplete,
        "unvoted_items": max(0, items - voted),
    }
    if used is None or used.empty:
        message = "no votes yet" if table is None else f"no complete comparisons yet ({incomplete} incomplete)"
        return Comparison(
            **base,
            compared=0,
            prompts=0 if table is None else int(table["prompt_id"].nunique()),
            raters=0 if table is None else int(votes["rater_id"].nunique()),
            message=message,
            statement=message,
            item_outcomes=None,
            vote_outcomes=None,
            win_rate=None,
            interval=None,
            win_rate_half_ties=None,
            interval_half_ties=None,
            interval_note="",
            sign_test_p=None,
            by_category=(),
            by_challenge=(),
            design_effect=1.0,
            planner=_planner(0, 0, votes_per_item, level, 1.0),
        )

    # The win-rate intervals are deterministic: no bootstrap rounds (rounds and seed are for Bradley–Terry).
    options = {"rounds": 0, "seed": seed, "level": level, "include_incomplete": include_incomplete}
    report = stats.win_rate_report(votes, criterion, **options)
    effect = design_effect(used)
    return Comparison(
        **base,
        compared=report.items.comparisons,
        prompts=report.prompts,
        raters=int(votes.loc[votes["item_id"].isin(used.index), "rater_id"].nunique()),
        message="",
        statement=f"{model_b} preferred in {percent(report.items.win_rate)} of comparisons",
        item_outcomes=_outcomes(report.items),
        vote_outcomes=_outcomes(report.votes),
        win_rate=report.items.win_rate,
        interval=_bounds(report.interval),
        win_rate_half_ties=report.items.win_rate_half_ties,
        interval_half_ties=_bounds(report.interval_half_ties),
        interval_note=report.interval_note,
        sign_test_p=float(report.sign_test.p_value),
        by_category=_groups(votes, "category", criterion, options) if breakdowns else (),
        by_challenge=_groups(votes, "challenge", criterion, options) if breakdowns else (),
        design_effect=effect,
        planner=_planner(report.items.wins, report.items.comparisons, votes_per_item, level, effect),
    )


def _groups(votes, by: str, criterion: str, options: dict) -> tuple[GroupWinRate, ...]:
    table = stats.win_rates_by(votes, by, criterion, **options)
    rows = []
    for row in table.to_dict("records"):
        has_numbers = pd.notna(row.get("win_rate"))
        has_interval = has_numbers and pd.notna(row.get("low"))
        rows.append(
            GroupWinRate(
                group=str(row[by]),
                comparisons=int(row["comparisons"]) if has_numbers else 0,
                prompts=int(row["prompts"]) if has_numbers else 0,
                wins=int(row["wins"]) if has_numbers else 0,
                ties=int(row["ties"]) if has_numbers else 0,
                losses=int(row["losses"]) if has_numbers else 0,
                win_rate=float(row["win_rate"]) if has_numbers else None,
                interval=Bounds(float(row["low"]), float(row["high"]), options["level"], row["interval_method"])
                if has_interval
                else None,
                sign_test_p=float(row["sign_test_p"]) if has_numbers else None,
                incomplete_items=int(row["incomplete_items"]),
                interval_note=str(row["interval_note"]) if has_numbers else "",
            )
        )
    return tuple(sorted(rows, key=lambda g: g.group))


def _planner(wins: int, compared: int, k: int, level: float, effect: float) -> tuple[PlannerTarget, ...]:
    targets = []
    for points in PLANNER_HALF_WIDTHS:
        needed = stats.additional_comparisons_needed(wins, compared, points / 100, level=level, design_effect=effect)
        targets.append(PlannerTarget(points, needed, needed * k))
    return tuple(targets)


def _agreement(frame, criterion: str, label: str, include_incomplete: bool) -> AgreementSummary:
    if not (frame["criterion"] == criterion).any():
        return AgreementSummary(criterion, label, "no votes yet")
    try:
        agreement = stats.rater_agreement(frame, criterion, include_incomplete=include_incomplete)
    except ValueError as exc:  # too few items, or every vote the same answer: kappa and alpha are undefined
        return AgreementSummary(criterion, label, str(exc))
    return AgreementSummary(
        criterion,
        label,
        "",
        fleiss_kappa=agreement.fleiss_kappa,
        fleiss_items=agreement.fleiss_items,
        ratings_per_item=agreement.ratings_per_item,
        krippendorff_alpha=agreement.krippendorff_alpha,
        alpha_items=agreement.alpha_items,
        majority_agreement=agreement.majority_agreement,
        majority_items=agreement.majority_items,
        items_without_majority=agreement.items_without_majority,
        categories=agreement.categories,
    )


def _position_bias(campaign, frame) -> tuple[RaterSideBias, ...]:
    table = stats.position_bias(frame)  # pooled over criteria: the habit belongs to the rater
    tested = int((table["side_votes"] > 0).sum())
    external = {
        p.rater_id: p.external_id or p.rater.external_id
        for p in Participation.objects.filter(campaign=campaign).select_related("rater")
    }
    return tuple(
        RaterSideBias(
            rater_id=int(row.rater_id),
            external_id=external.get(int(row.rater_id), ""),
            side_votes=int(row.side_votes),
            left_picks=int(row.left_picks),
            left_share=float(row.left_share) if row.side_votes else None,
            p_value=float(row.p_value),
            flagged=bool(tested and row.p_value < POSITION_BIAS_ALPHA / tested),
        )
        for row in table.itertuples(index=False)
    )


def _ranking(campaign, frame, criterion: str, label: str, *, seed, rounds, level) -> Ranking:
    if not (frame["criterion"] == criterion).any():
        return Ranking(criterion, label, "no votes yet")
    # Against a baseline, scores read as "better or worse than the baseline"; otherwise they average zero.
    anchor = (
        campaign.baseline.name if campaign.pairing == Campaign.Pairing.VS_BASELINE and campaign.baseline_id else None
    )
    try:
        result = stats.bradley_terry(
            frame, criterion, unit="item", anchor=anchor, rounds=rounds, seed=seed, level=level
        )
    except ValueError as exc:  # no complete items yet, or models never beaten by a group of others
        return Ranking(criterion, label, str(exc), anchor=anchor)
    # The bootstrap cannot see more spread between prompts than the few it has: below the win rate's minimum
    # the intervals would be far too narrow, so the scores stand alone.
    with_intervals = result.prompts >= stats.MIN_PROMPTS
    ranked = tuple(
        RankedModel(
            str(name),
            float(row["score"]),
            float(row["low"]) if with_intervals else None,
            float(row["high"]) if with_intervals else None,
            int(row["rank"]),
            int(row["rank_upper"]) if with_intervals else None,
            mc_error=float(row["mc_error"]) if with_intervals else None,
        )
        for name, row in result.ranking.iterrows()
    )
    fractions = result.win_fractions.to_numpy()
    return Ranking(
        criterion,
        label,
        "",
        unit=result.unit,
        anchor=anchor,
        battles=result.battles,
        prompts=result.prompts,
        degenerate_rounds=result.degenerate_rounds,
        models=ranked,
        win_fractions=tuple(tuple(float(v) if np.isfinite(v) else None for v in row) for row in fractions),
        interval_note="" if with_intervals else stats.intervals.too_few_prompts_message(result.prompts),
    )


def exclusion_rule(campaign: Campaign) -> dict:
    if not campaign.speeder_seconds:
        speeders = "The speeder check is off."
    else:
        speeders = (
            f"Raters whose median time between answers (server clock) fell below {campaign.speeder_seconds:g} s are "
            + ("flagged and excluded automatically." if campaign.exclude_speeders else "flagged, not excluded.")
        )
    return {
        "gold_share": campaign.gold_share,
        "gold_min_accuracy": campaign.gold_min_accuracy,
        "gold_min_answers": campaign.gold_min_answers,
        "speeder_seconds": campaign.speeder_seconds,
        "exclude_speeders": campaign.exclude_speeders,
        "description": (
            f"Raters below {campaign.gold_min_accuracy:.0%} gold accuracy after {campaign.gold_min_answers} gold answers "
            f"are excluded automatically; researchers exclude others by hand, with a reason. {speeders} Excluded "
            "raters' votes are kept, flagged, and left out of every number; gold items are left out too."
        ),
    }


def _exclusions(campaign: Campaign) -> Exclusions:
    flagged = {
        row["assignment__rater_id"]: row
        for row in Vote.objects.filter(assignment__campaign=campaign, excluded=True)
        .values("assignment__rater_id")
        .annotate(
            regular=Count("id", filter=Q(assignment__item__gold_image__isnull=True)),
            gold=Count("id", filter=Q(assignment__item__gold_image__isnull=False)),
        )
        .order_by()
    }
    raters = tuple(
        ExcludedRater(
            rater_id=p.rater_id,
            participation_id=p.pk,
            external_id=p.external_id or p.rater.external_id,
            reason=p.exclusion_reason,
            excluded_at=p.excluded_at.isoformat() if p.excluded_at else None,
            excluded_votes=flagged.get(p.rater_id, {}).get("regular", 0),
            excluded_gold_votes=flagged.get(p.rater_id, {}).get("gold", 0),
        )
        for p in Participation.objects.filter(campaign=campaign, excluded=True).select_related("rater").order_by("id")
    )
    gold_votes = Vote.objects.filter(assignment__campaign=campaign, assignment__item__gold_image__isnull=False).count()
    speeders = tuple(
        FlaggedSpeeder(
            rater_id=p.rater_id,
            external_id=p.external_id or p.rater.external_id,
            median_seconds=p.speeder_median_seconds,
            excluded=p.excluded,
        )
        for p in Participation.objects.filter(campaign=campaign, speeder_flagged_at__isnull=False)
        .select_related("rater")
        .order_by("id")
    )
    return Exclusions(
        rule=exclusion_rule(campaign),
        raters=raters,
        excluded_votes=sum(r.excluded_votes for r in raters),
        gold_votes=gold_votes,
        speeders=speeders,
    )
