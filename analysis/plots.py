"""Figures of a campaign report, drawn with matplotlib's object API.

Every function builds and returns its own ``matplotlib.figure.Figure``: no
pyplot, so nothing lands in a global figure registry (web processes render
reports for years) and no GUI backend is ever chosen; saving to PNG or PDF
uses the Agg-based canvases. The functions take the report's plain values
(``analysis.services.Comparison`` and friends) and compute nothing new.
"""

from __future__ import annotations

import base64
import io
import textwrap

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import PercentFormatter

B_COLOUR = "#2453d6"  # model B (the candidate): the site's accent
TIE_COLOUR = "#b8bec6"
A_COLOUR = "#e0863a"
MUTED = "#5f6670"
PAGE = (11.69, 8.27)  # A4 landscape, inches
PNG_DPI = 120
LINES_PER_PAGE = 52


def data_uri(figure: Figure) -> str:
    """The figure as a base64 PNG data: URI, to embed in HTML without a second request or file."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=PNG_DPI)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _percent(value) -> str:
    return "—" if value is None or not np.isfinite(value) else f"{100 * value:.1f}%"


def outcome_bars(comparisons, *, level: float = 0.95, page: bool = False) -> Figure:
    """Emu-style horizontal stacked bars, one per criterion and pair: B wins, tie, A wins (item level).

    The error bar is the headline interval of B's win rate, drawn at the end
    of B's segment; the number of comparisons stands at the right.
    """
    rows = list(comparisons)
    figure = Figure(figsize=PAGE if page else (9, 1.9 + 0.62 * len(rows)), layout="constrained")
    ax = figure.add_subplot()
    y = np.arange(len(rows))[::-1]  # first comparison on top
    wins = np.array([c.item_outcomes.win_share for c in rows])
    ties = np.array([c.item_outcomes.tie_share for c in rows])
    losses = np.array([c.item_outcomes.loss_share for c in rows])
    one_pair = len({(c.model_a, c.model_b) for c in rows}) == 1
    names = (rows[0].model_b, rows[0].model_a) if one_pair else ("model B", "model A")
    segments = [
        (wins, np.zeros(len(rows)), B_COLOUR, f"{names[0]} wins", "white"),
        (ties, wins, TIE_COLOUR, "tie", "black"),
        (losses, wins + ties, A_COLOUR, f"{names[1]} wins", "black"),
    ]
    for widths, lefts, colour, label, text_colour in segments:
        ax.barh(y, widths, left=lefts, color=colour, label=label, height=0.6)
        for yi, width, left in zip(y, widths, lefts, strict=True):
            if width >= 0.07:  # narrower segments cannot hold a label
                # In the lower half of the bar: the error bar runs through the upper half.
                ax.text(
                    left + width / 2,
                    yi - 0.14,
                    f"{100 * width:.1f}%",
                    ha="center",
                    va="center",
                    fontsize=9,
                    color=text_colour,
                )
    with_interval = np.array([c.interval is not None for c in rows])
    if with_interval.any():  # none with fewer prompts than an interval needs
        low = np.array([c.interval.low for c in rows if c.interval])
        high = np.array([c.interval.high for c in rows if c.interval])
        shown = wins[with_interval]
        ax.errorbar(
            shown,
            y[with_interval] + 0.12,
            xerr=[np.clip(shown - low, 0, None), np.clip(high - shown, 0, None)],
            fmt="none",
            ecolor="black",
            elinewidth=1.2,
            capsize=5,
        )
    for yi, c in zip(y, rows, strict=True):
        ax.text(1.01, yi, f"n = {c.compared}", transform=ax.get_yaxis_transform(), va="center", fontsize=9)
    labels = [f"{c.criterion_label}" if one_pair else f"{c.criterion_label}\n{c.model_b} vs {c.model_a}" for c in rows]
    ax.set_yticks(y, labels)
    ax.set_xlim(0, 1)
    ax.set_ylim(-0.6, len(rows) - 0.4)
    ax.xaxis.set_major_formatter(PercentFormatter(1.0))
    ax.axvline(0.5, color=MUTED, linestyle=":", linewidth=0.8)
    ax.spines[["top", "right"]].set_visible(False)
    title = f"{names[0]} vs {names[1]}" if one_pair else "Model B vs model A"
    ax.set_title(
        f"{title}: share of comparisons (majority of each comparison's raters)\n"
        f"error bar: {level:.0%} interval of {names[0]}'s win rate",
        fontsize=10,
        loc="left",
    )
    figure.legend(loc="outside lower center", ncols=3, frameon=False)
    return figure


def breakdown_plot(comparisons, *, by: str = "category", page: bool = False) -> Figure:
    """B's win rate per prompt category (or challenge) with its interval, one panel per criterion and pair; 50% line."""
    panels = [(c, getattr(c, f"by_{by}")) for c in comparisons if getattr(c, f"by_{by}")]
    rows = sum(len(groups) for _, groups in panels)
    figure = Figure(figsize=PAGE if page else (9, 1.4 + 0.32 * rows + 0.7 * len(panels)), layout="constrained")
    if not panels:
        figure.text(0.5, 0.5, f"No {by} breakdown yet: no complete comparisons.", ha="center", va="center")
        return figure
    axes = figure.subplots(len(panels), 1, sharex=True, squeeze=False, height_ratios=[len(g) for _, g in panels])[:, 0]
    for ax, (comparison, groups) in zip(axes, panels, strict=True):
        y = np.arange(len(groups))[::-1]
        for yi, group in zip(y, groups, strict=True):
            if group.win_rate is None:
                ax.text(
                    0.01,
                    yi,
                    f"no complete comparisons ({group.incomplete_items} incomplete)",
                    va="center",
                    fontsize=8,
                    color=MUTED,
                )
                continue
            if group.interval is None:  # too few prompts for an interval: the point alone, hollow
                ax.plot(group.win_rate, yi, "o", markerfacecolor="none", color=B_COLOUR, markersize=5)
            else:
                error = [
                    [max(0.0, group.win_rate - group.interval.low)],
                    [max(0.0, group.interval.high - group.win_rate)],
                ]
                ax.errorbar(group.win_rate, yi, xerr=error, fmt="o", color=B_COLOUR, capsize=3, markersize=5)
            ax.text(1.01, yi, f"n = {group.comparisons}", transform=ax.get_yaxis_transform(), va="center", fontsize=8)
        ax.axvline(0.5, color=MUTED, linestyle="--", linewidth=0.9)
        ax.set_yticks(y, [group.label for group in groups], fontsize=9)
        ax.set_ylim(-0.7, len(groups) - 0.3)
        ax.set_title(comparison.title, loc="left", fontsize=10)
        ax.spines[["top", "right"]].set_visible(False)
    axes[-1].set_xlim(0, 1)
    axes[-1].xaxis.set_major_formatter(PercentFormatter(1.0))
    axes[-1].set_xlabel(
        f"model B's win rate by prompt {by} (item level, with the headline interval over the group's prompts; hollow: too few prompts for one)"
    )
    return figure


# --- PDF pages ------------------------------------------------------------------------------------


def _page(title: str) -> Figure:
    figure = Figure(figsize=PAGE)
    figure.text(0.04, 0.95, title, fontsize=15, weight="bold", va="top")
    return figure


def _table(figure: Figure, rect, header, cells, font_size=8):
    ax = figure.add_axes(rect)
    ax.axis("off")
    table = ax.table(cellText=cells, colLabels=header, loc="upper center", cellLoc="center")
    table.auto_set_font_size(False)
    table.set_fontsize(font_size)
    table.auto_set_column_width(list(range(len(header))))
    table.scale(1, 1.45)
    for (row, _), cell in table.get_celld().items():
        cell.set_edgecolor("#dde1e6")
        if row == 0:
            cell.set_text_props(weight="bold")
            cell.set_facecolor("#eef3ff")
    return table


def headline_cells(report) -> tuple[list[str], list[list[str]]]:
    level = report.level_text
    header = [
        "Criterion",
        "B vs A",
        "Comparisons",
        "Prompts",
        "Raters",
        "B wins",
        "Ties",
        "A wins",
        f"B win rate ({level} interval)",
        "Ties as half",
        "Sign test p",
        "Incomplete",
    ]
    cells = []
    for c in report.comparisons:
        pair = f"{c.model_b} vs {c.model_a}"
        if not c.has_numbers:
            cells.append(
                [
                    c.criterion_label,
                    pair,
                    "0",
                    str(c.prompts),
                    str(c.raters),
                    "—",
                    "—",
                    "—",
                    c.message,
                    "—",
                    "—",
                    str(c.incomplete_items),
                ]
            )
            continue
        o = c.item_outcomes
        cells.append(
            [
                c.criterion_label,
                pair,
                str(c.compared),
                str(c.prompts),
                str(c.raters),
                f"{o.wins} ({_percent(o.win_share)})",
                f"{o.ties} ({_percent(o.tie_share)})",
                f"{o.losses} ({_percent(o.loss_share)})",
                f"{_percent(c.win_rate)} [{_percent(c.interval.low)}, {_percent(c.interval.high)}]"
                if c.interval
                else f"{_percent(c.win_rate)} (no interval: {c.prompts} prompts)",
                _percent(c.win_rate_half_ties),
                "< 0.001" if c.sign_test_p < 0.001 else f"{c.sign_test_p:.3g}",
                str(c.incomplete_items),
            ]
        )
    return header, cells


def title_page(report) -> Figure:
    figure = _page(f"Human preference report: {report.campaign_name}")
    r = report.reproducibility
    facts = (
        f"Models: {', '.join(report.models)} ({report.pairing.replace('_', ' ')}"
        f"{f', baseline {report.baseline}' if report.baseline else ''}) · prompt set {report.prompt_set} · "
        f"campaign {report.campaign_status} · {r.votes} counting votes (sha256 {r.votes_sha256[:12]}…)"
    )
    figure.text(0.04, 0.90, facts, fontsize=9, color=MUTED, va="top")
    header, cells = headline_cells(report)
    table_height = min(0.5, 0.035 * (len(cells) + 1))
    _table(figure, [0.03, 0.86 - table_height, 0.94, table_height], header, cells)
    paragraphs = [c.sentence for c in report.comparisons] + [
        "Item level, as in Emu: each comparison's outcome is the strict majority of its k raters' votes (no majority: a tie); "
        "ties count as not won, with ties-as-half-a-win beside it. Incomplete comparisons (fewer than k votes) are left out and "
        f"counted. Interval: {r.interval_method} (prompt-clustered score interval, deterministic), none below "
        f"{r.min_prompts_for_interval} prompts."
    ]
    lines = [line for paragraph in paragraphs for line in [*textwrap.wrap(paragraph, 165), ""]]
    _lines(figure, lines, top=0.84 - table_height, size=8.5)
    return figure


def _lines(figure: Figure, lines, *, top: float, size: float = 8.5, family: str = "sans-serif") -> None:
    step = size * 1.45 / 72 / PAGE[1]  # line height as a share of the page
    for i, line in enumerate(lines):
        figure.text(0.04, top - i * step, line, fontsize=size, va="top", family=family)


def ranking_page(report, ranking) -> Figure:
    figure = _page(f"Bradley–Terry ranking: {ranking.criterion_label}")
    if ranking.message:
        figure.text(0.04, 0.85, f"No ranking: {ranking.message}", fontsize=10, va="top")
        return figure
    anchor = f"{ranking.anchor} fixed at 0" if ranking.anchor else "scores average 0"
    intro = (
        f"Log-strength scores ({anchor}) from {ranking.battles} complete comparisons (majorities) over {ranking.prompts} prompts; "
        f"{report.level_text} percentile intervals from the prompt-clustered bootstrap ({report.reproducibility.rounds} rounds, "
        "± its Monte Carlo standard error); ties as half a win. Rank, upper bound: 1 + the models whose interval lies wholly above."
        + (f" {ranking.interval_note}" if ranking.interval_note else "")
    )
    figure.text(0.04, 0.90, textwrap.fill(intro, 150), fontsize=9, color=MUTED, va="top")
    header = ["Rank", "Model", "Score", f"{report.level_text} interval", "Rank, upper bound"]
    cells = [
        [
            str(m.rank),
            m.model,
            f"{m.score:+.3f}",
            f"[{m.low:+.3f}, {m.high:+.3f}] ±{m.mc_error:.3f}" if m.low is not None else "—",
            str(m.rank_upper) if m.rank_upper is not None else "—",
        ]
        for m in ranking.models
    ]
    _table(figure, [0.04, 0.45, 0.42, 0.4], header, cells, font_size=9)
    ax = figure.add_axes([0.56, 0.12, 0.38, 0.7])
    names = [m.model for m in ranking.models]
    matrix = np.array([[np.nan if v is None else v for v in row] for row in ranking.win_fractions], dtype=float)
    ax.imshow(np.ma.masked_invalid(matrix), cmap="RdBu", vmin=0, vmax=1)
    for i in range(len(names)):
        for j in range(len(names)):
            if np.isfinite(matrix[i, j]):
                colour = "white" if abs(matrix[i, j] - 0.5) > 0.3 else "black"  # readable on the map's dark ends
                ax.text(j, i, f"{100 * matrix[i, j]:.0f}%", ha="center", va="center", fontsize=9, color=colour)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_title("Share of comparisons the row model won against the column model", fontsize=9)
    if ranking.degenerate_rounds:
        figure.text(
            0.04,
            0.08,
            f"{ranking.degenerate_rounds} of {report.reproducibility.rounds} bootstrap rounds had a model "
            "winning or losing every comparison; intervals are rough.",
            fontsize=8,
            color=MUTED,
        )
    return figure


def watching_text(report) -> list[str]:
    """The anytime-valid intervals, the stop rule and its decisions, and the AI-assisted win rates, as lines of text."""
    lines = ["ANYTIME-VALID INTERVALS (B's win rate, ties as half; prompts whose comparisons are all complete)"]
    for sequence, comparison in report.sequence_rows:
        fixed = comparison.half_ties_interval_text if comparison else "—"
        lines.append(
            f"  {sequence.criterion_label}, {sequence.model_b} vs {sequence.model_a}: "
            + (
                f"{_percent(sequence.estimate)} over {sequence.prompts} of {sequence.total_prompts} prompts; "
                f"anytime-valid {sequence.text}, fixed {fixed}; {sequence.decision_text}"
                if sequence.low is not None
                else sequence.message
            )
        )
    lines.append(f"  {report.sequence_explanation}")
    if report.stop_rule:
        lines.append(f"  {report.stop_rule['description']}")
    for decision in report.decisions:
        lines.append(f"  DECISION: {decision.sentence}")
    if report.prediction_powered:
        lines += ["", "AI-ASSISTED (PREDICTION-POWERED) WIN RATES"]
        lines += [f"  {p.sentence}" for p in report.prediction_powered]
        lines.append(f"  {report.ppi_explanation}")
    return lines


def details_text(report) -> list[str]:
    """Agreement, position bias, exclusions, planner and reproducibility as lines of text (PDF pages)."""
    lines = [*watching_text(report), "", "AGREEMENT (complete comparisons, all pairs of a criterion)"]
    for a in report.agreement:
        if a.message:
            lines.append(f"  {a.criterion_label}: {a.message}")
            continue
        lines.append(
            f"  {a.criterion_label}: Fleiss' kappa {a.fleiss_kappa:.3f} ({a.fleiss_items} comparisons of {a.ratings_per_item} votes), "
            f"Krippendorff's alpha {a.krippendorff_alpha:.3f} ({a.alpha_items} comparisons; answers {a.categories_text}), "
            f"votes agreeing with their majority {_percent(a.majority_agreement)} ({a.items_without_majority} comparisons without a majority)"
        )
    tested = [b for b in report.position_bias if b.side_votes]
    flagged = [b for b in tested if b.flagged]
    lines += [
        "",
        f"POSITION BIAS: {len(tested)} rater(s) tested, {len(flagged)} flagged (left share far from 50%, Bonferroni 5%)",
    ]
    for b in flagged[:10]:
        lines.append(
            f"  rater {b.rater_id} {b.external_id}: {b.left_picks}/{b.side_votes} left picks, p {b.p_value:.2g}"
        )
    e = report.exclusions
    lines += [
        "",
        f"EXCLUSIONS: {len(e.raters)} rater(s) excluded, {e.excluded_votes} of their votes left out; "
        f"gold answers (attention checks, never counted): {e.gold_votes}",
        *[f"  {line}" for line in textwrap.wrap(e.rule["description"], 160)],
    ]
    for x in e.raters:
        lines.append(f"  rater {x.rater_id} {x.external_id}: {x.excluded_votes} votes left out — {x.reason}")
    lines.append(f"  speeders flagged: {len(e.speeders)}")
    for x in e.speeders:
        seconds = f"{x.median_seconds:.2f} s" if x.median_seconds is not None else "—"
        lines.append(
            f"  speeder rater {x.rater_id} {x.external_id}: median {seconds} between answers{', excluded' if x.excluded else ''}"
        )
    lines += [
        "",
        "PLANNER: further complete comparisons for an interval of ±x points (at the current win rate and prompt clustering)",
    ]
    for c in report.comparisons:
        targets = ", ".join(
            f"±{t.half_width_points}: {t.comparisons_needed} ({t.votes_needed} votes)" for t in c.planner
        )
        lines.append(f"  {c.title}: {targets}; design effect {c.design_effect:.2f}")
    r = report.reproducibility
    lines += [
        "",
        "REPRODUCIBILITY",
        f"  votes snapshot: {r.votes} counting votes, sha256 {r.votes_sha256}",
        f"  last vote: {r.last_vote_at}; excluded votes: {r.excluded_votes}",
        f"  exclusion rule: gold accuracy >= {r.exclusion_rule['gold_min_accuracy']:.0%} after {r.exclusion_rule['gold_min_answers']} gold answers "
        f"(gold share {r.exclusion_rule['gold_share']:.0%})",
        f"  win-rate intervals: {r.interval_method}, level {r.level}, deterministic, none below {r.min_prompts_for_interval} prompts; "
        f"bootstrap (Bradley–Terry only): seed {r.seed}, {r.rounds} rounds; "
        f"incomplete comparisons {'included' if r.include_incomplete else 'left out'}",
        f"  code version {r.code_version}; " + ", ".join(f"{k} {v}" for k, v in r.software.items()),
    ]
    return lines


def details_pages(report) -> list[Figure]:
    wrapped = [
        piece for line in details_text(report) for piece in (textwrap.wrap(line, 175, subsequent_indent="    ") or [""])
    ]
    pages = []
    for start in range(0, len(wrapped), LINES_PER_PAGE):
        figure = _page("Agreement, exclusions, planner, reproducibility" + (" (continued)" if start else ""))
        _lines(figure, wrapped[start : start + LINES_PER_PAGE], top=0.89, size=8)
        pages.append(figure)
    return pages
