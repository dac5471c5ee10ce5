from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView

from evalsite.api import api

urlpatterns = [
    path("", RedirectView.as_view(pattern_name="generation:batch_list", permanent=False)),
    path("admin/", admin.site.urls),
    # The researcher JSON API (evalsite.api): /annotation/api/..., /analysis/api/..., /api/openapi.json, /api/docs.
    path("", api.urls),
    path("generation/", include("generation.urls")),
    # Researchers (staff only): campaigns, dashboards, exports.
    path(
        "annotation/", include("analysis.campaign_urls")
    ),  # the campaign page: annotation's progress, analysis's win rates
    path("annotation/", include("annotation.urls")),
    path("analysis/", include("analysis.urls")),
    path("training/", include("training.urls")),
    path("curate/", include("training.review_urls")),
    # Raters: invite links and the voting page. Nothing under here names a model or campaign.
    path("", include("annotation.rater_urls")),
]
