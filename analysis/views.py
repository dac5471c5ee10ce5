"""Campaign reports for researchers (staff only): the report page and its downloads (the JSON API's report
endpoint is analysis.api).

Thin: the numbers and files come from ``analysis.services``; these views read
the query string, choose the status code and set the download headers.
"""

from django.contrib.admin.views.decorators import staff_member_required
from django.http import HttpResponse, StreamingHttpResponse
from django.shortcuts import get_object_or_404, render
from django.utils.http import urlencode

from annotation.models import Campaign

from . import services

DEFAULT_OPTIONS = {"seed": services.DEFAULT_SEED, "rounds": services.DEFAULT_ROUNDS}


def report_options(params) -> dict:
    """``seed`` and ``rounds`` from a query string (defaults when absent); ReportError when out of bounds."""
    options = {}
    for name, default in DEFAULT_OPTIONS.items():
        raw = params.get(name, "").strip()
        try:
            options[name] = int(raw) if raw else default
        except ValueError:
            raise services.ReportError(f"{name} must be a whole number, not {raw!r}.") from None
    services.check_options(**options)
    return options


def _campaign(pk) -> Campaign:
    return get_object_or_404(Campaign.objects.select_related("prompt_set", "baseline"), pk=pk)


def _file_response(exported: services.Export):
    if isinstance(exported.content, bytes):
        response = HttpResponse(exported.content, content_type=exported.format.content_type)
    else:  # CSV lines straight from a database cursor: a large campaign never sits in memory
        response = StreamingHttpResponse(exported.content, content_type=exported.format.content_type)
    response["Content-Disposition"] = f'attachment; filename="{exported.filename}"'
    return response


@staff_member_required
def report_page(request, pk):
    campaign = _campaign(pk)
    context = {"campaign": campaign, "formats": services.EXPORT_FORMATS}
    try:
        options = report_options(request.GET)
    except services.ReportError as exc:
        return render(request, "analysis/report.html", {**context, "error": str(exc)}, status=400)
    # Downloads carry the page's own options, so the files hold the numbers on screen.
    query = urlencode({k: v for k, v in options.items() if v != DEFAULT_OPTIONS[k]})
    context.update(options=options, query=f"?{query}" if query else "")
    try:
        report = services.build_report(campaign, **options)
    except services.ReportError as exc:  # nothing to report yet: say so on the page
        context["error"] = str(exc)
    else:
        context.update(report=report, figures=services.report_figures(report))
    return render(request, "analysis/report.html", context)


@staff_member_required
def report_download(request, pk, fmt):
    campaign = _campaign(pk)
    try:
        options = report_options(request.GET)
    except services.ReportError as exc:
        return HttpResponse(str(exc), status=400, content_type="text/plain; charset=utf-8")
    try:
        exported = services.export(campaign, fmt, **options)
    except services.ReportError as exc:
        return HttpResponse(str(exc), status=409, content_type="text/plain; charset=utf-8")
    return _file_response(exported)
