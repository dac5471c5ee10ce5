"""The files researchers download: votes and comparisons as CSV (streamed), and the report as JSON, HTML and PDF."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from django.db.models import Count, Q
from django.template.loader import render_to_string
from django.utils.text import slugify

from annotation import selectors as annotation_selectors
from annotation.models import Campaign, ComparisonItem
from core import csv_export

from .. import stats
from .reports import ReportError, build_report
from .values import CampaignReport

VOTES_CSV_COLUMNS = [*annotation_selectors.VOTE_EXPORT_COLUMNS, "counted"]


def votes_csv(campaign: Campaign) -> Iterator[str]:
    """Every vote of the campaign, one CSV line each, streamed (gold and excluded ones flagged).

    ``counted`` says whether the vote enters the report: neither excluded nor on a gold item.
    """
    gold, excluded = (annotation_selectors.VOTE_EXPORT_COLUMNS.index(name) for name in ("gold", "excluded"))
    rows = ([*row, not row[gold] and not row[excluded]] for row in annotation_selectors.vote_export_rows(campaign))
    return csv_export.lines(VOTES_CSV_COLUMNS, rows)


ITEMS_CSV_COLUMNS = [
    *annotation_selectors.ITEM_EXPORT_FIELDS,
    "votes_per_item",
    "votes_a",
    "votes_b",
    "votes_tie",
    "votes",
    "majority",
    "majority_model",
    "complete",
]


def items_csv(campaign: Campaign) -> Iterator[str]:
    """One CSV line per regular comparison item, with its counting votes and majority (analysis.stats' rule).

    ``majority`` is filled once an item has votes; only ``complete`` items
    (at least k votes) enter the report. Gold items are left out: they compare
    an image with a degraded copy of itself, not two models.
    """
    counting = Q(assignments__vote__excluded=False)
    items = (
        ComparisonItem.objects.regular()
        .filter(campaign=campaign)
        .order_by("id")
        .values(*annotation_selectors.ITEM_EXPORT_FIELDS.values(), "criterion__votes_per_item")
        .annotate(
            **{
                f"votes_{winner}": Count("assignments__vote", filter=counting & Q(assignments__vote__winner=winner))
                for winner in stats.WINNERS
            }
        )
    )

    def rows():
        for item in items.iterator(chunk_size=2000):
            counts = [item[f"votes_{w}"] for w in stats.WINNERS]
            total = sum(counts)
            majority = stats.WINNERS[stats.majority_outcomes(np.array([counts]))[0]] if total else ""
            model = {"a": item["image_a__model__name"], "b": item["image_b__model__name"]}.get(majority, "")
            yield [
                *(item[field] for field in annotation_selectors.ITEM_EXPORT_FIELDS.values()),
                item["criterion__votes_per_item"],
                *counts,
                total,
                majority,
                model,
                total >= item["criterion__votes_per_item"],
            ]

    return csv_export.lines(ITEMS_CSV_COLUMNS, rows())


def report_json(report: CampaignReport) -> str:
    return json.dumps(report.as_dict(), indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def report_figures(report: CampaignReport) -> dict[str, str | None]:
    """The report's plots as data: URIs (PNG), for the page and the standalone HTML file."""
    from .. import plots  # matplotlib takes a moment to import; only rendering needs it

    with_numbers = [c for c in report.comparisons if c.has_numbers]
    return {
        "outcomes": plots.data_uri(plots.outcome_bars(with_numbers, level=report.reproducibility.level))
        if with_numbers
        else None,
        "by_category": plots.data_uri(plots.breakdown_plot(with_numbers, by="category")) if with_numbers else None,
    }


def report_html(report: CampaignReport) -> str:
    """A standalone HTML file: inline CSS, plots embedded as base64 PNG, no external URL."""
    return render_to_string("analysis/report_standalone.html", {"report": report, "figures": report_figures(report)})


def report_pdf(report: CampaignReport) -> bytes:
    """A PDF: title page with the headline table, the outcome bars, the category breakdown, agreement and reproducibility."""
    from matplotlib.backends.backend_pdf import PdfPages

    from .. import plots

    buffer = io.BytesIO()
    with_numbers = [c for c in report.comparisons if c.has_numbers]
    metadata = {"Title": f"Needle report: {report.campaign_name}", "Creator": "Needle"}
    with PdfPages(buffer, metadata=metadata) as pdf:
        pdf.savefig(plots.title_page(report))
        if with_numbers:
            pdf.savefig(plots.outcome_bars(with_numbers, level=report.reproducibility.level, page=True))
            pdf.savefig(plots.breakdown_plot(with_numbers, by="category", page=True))
        for ranking in report.rankings:
            pdf.savefig(plots.ranking_page(report, ranking))
        for page in plots.details_pages(report):
            pdf.savefig(page)
    return buffer.getvalue()


@dataclass(frozen=True)
class ExportFormat:
    name: str
    content_type: str
    file_suffix: str
    needs_report: bool


EXPORT_FORMATS = {
    "csv": ExportFormat("csv", "text/csv; charset=utf-8", "votes.csv", needs_report=False),
    "items.csv": ExportFormat("items.csv", "text/csv; charset=utf-8", "items.csv", needs_report=False),
    "json": ExportFormat("json", "application/json", "report.json", needs_report=True),
    "html": ExportFormat("html", "text/html; charset=utf-8", "report.html", needs_report=True),
    "pdf": ExportFormat("pdf", "application/pdf", "report.pdf", needs_report=True),
}
# Other spellings accepted by the command line and the API.
FORMAT_ALIASES = {"items-csv": "items.csv", "votes-csv": "csv"}


@dataclass(frozen=True)
class Export:
    """A file to hand over: bytes, or (CSV) an iterator of text lines to stream."""

    format: ExportFormat
    filename: str
    content: bytes | Iterator[str]


def export_format(name: str) -> ExportFormat:
    fmt = EXPORT_FORMATS.get(FORMAT_ALIASES.get(name, name))
    if fmt is None:
        known = ", ".join([*EXPORT_FORMATS, *FORMAT_ALIASES])
        raise ReportError(f"Unknown format {name!r}; use one of: {known}.")
    return fmt


def export_filename(campaign: Campaign, fmt: ExportFormat) -> str:
    return f"{slugify(campaign.name) or f'campaign-{campaign.pk}'}-{fmt.file_suffix}"


def export(campaign: Campaign, format_name: str, **options) -> Export:
    """The file for ``format_name`` (csv, items.csv, json, html, pdf); report options as for build_report."""
    fmt = export_format(format_name)
    if fmt.name == "csv":
        content = votes_csv(campaign)
    elif fmt.name == "items.csv":
        content = items_csv(campaign)
    else:
        report = build_report(campaign, **options)
        renderer = {"json": report_json, "html": report_html, "pdf": report_pdf}[fmt.name]
        content = renderer(report)
        content = content.encode() if isinstance(content, str) else content
    return Export(fmt, export_filename(campaign, fmt), content)


def find_campaign(name_or_id: str) -> Campaign:
    """A campaign by name, or by id when no campaign has that name."""
    campaign = Campaign.objects.filter(name=name_or_id).first()
    if campaign is None and str(name_or_id).isdigit():
        campaign = Campaign.objects.filter(pk=int(name_or_id)).first()
    if campaign is None:
        known = ", ".join(repr(n) for n in Campaign.objects.values_list("name", flat=True)[:20]) or "none yet"
        raise ReportError(f"There is no campaign named {name_or_id!r} (known: {known}).")
    return campaign
