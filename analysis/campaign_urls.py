"""The campaign page's URLs, under /annotation/campaigns/ as before it moved to analysis (see campaign_views)."""

from django.urls import path

from . import campaign_views as views

app_name = "campaigns"

urlpatterns = [
    path("campaigns/<int:pk>/", views.campaign_detail, name="detail"),
    path("campaigns/<int:pk>/progress.json", views.campaign_progress, name="progress"),
]
