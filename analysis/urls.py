"""Report pages and downloads under /analysis/ (staff only); the report endpoint of the JSON API (analysis.api) is
mounted by evalsite.api under api/."""

import re

from django.urls import path, register_converter

from . import services, views

app_name = "analysis"


class ExportFormatConverter:
    """The file ending after "report.": csv (votes), items.csv, json, html or pdf."""

    regex = "|".join(re.escape(name) for name in sorted(services.EXPORT_FORMATS, key=len, reverse=True))

    def to_python(self, value: str) -> str:
        return value

    def to_url(self, value: str) -> str:
        return value


register_converter(ExportFormatConverter, "report_format")

urlpatterns = [
    path("campaigns/<int:pk>/report/", views.report_page, name="report"),
    path("campaigns/<int:pk>/report.<report_format:fmt>", views.report_download, name="report_download"),
]
