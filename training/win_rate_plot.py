"""The run page's win-rate plot: raters' preference for each checkpoint over the base, per step, with intervals.

Drawn on request from the checkpoint campaign's numbers (they change with every
vote, so there is no file to keep up to date). 50% is marked: a checkpoint below
it is not preferred to the base it was tuned from.
"""

from __future__ import annotations

import io


def draw_win_rate_curve(rows: list[dict], size: tuple[int, int] = (800, 400)) -> bytes:
    """PNG of win rate (%) against step, one point per checkpoint with numbers, interval bars where there is one."""
    import matplotlib

    matplotlib.use("Agg")  # no display on a server
    from matplotlib.figure import Figure

    figure = Figure(figsize=(size[0] / 100, size[1] / 100), dpi=100)
    axes = figure.subplots()
    measured = [r for r in rows if r["win_rate"] is not None]
    axes.axhline(50, color="grey", linestyle="--", linewidth=1)
    if measured:
        steps = [r["step"] for r in measured]
        rates = [100 * r["win_rate"] for r in measured]
        below = [100 * (r["win_rate"] - r["low"]) if r["low"] is not None else 0 for r in measured]
        above = [100 * (r["high"] - r["win_rate"]) if r["high"] is not None else 0 for r in measured]
        axes.errorbar(steps, rates, yerr=[below, above], fmt="o-", color="#1e50c8", ecolor="#7a96dc", capsize=4)
        for step, rate, row in zip(steps, rates, measured):
            axes.annotate(
                f"n={row['comparisons']}", (step, rate), textcoords="offset points", xytext=(6, -12), fontsize=8
            )
    else:
        axes.text(0.5, 0.5, "no complete comparisons yet", ha="center", va="center", transform=axes.transAxes)
    axes.set_ylim(0, 100)
    axes.set_xlabel("step")
    axes.set_ylabel("checkpoint preferred over base (%)")
    axes.set_title("Visual appeal: each checkpoint vs the base (95% interval)", fontsize=10)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
