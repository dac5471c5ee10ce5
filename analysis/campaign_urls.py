"""The campaign page's URLs, under /annotation/campaigns/ as before it moved to analysis (see campaign_views)."""

from django.urls import path

from . import campaign_views as views
from . import views as report_views

app_name = "campaigns"

urlpatterns = [
    path("campaigns/<int:pk>/", views.campaign_detail, name="detail"),
    path("campaigns/<int:pk>/progress.json", views.campaign_progress, name="progress"),
    # The one votes export (every vote, and whether it counts): the report download's csv format.
    path("campaigns/<int:pk>/votes.csv", report_views.report_download, {"fmt": "csv"}, name="votes_csv"),
]
