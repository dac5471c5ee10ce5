"""Researcher-facing URLs of the annotation app (staff only); its JSON API under api/ is mounted by evalsite.api."""

from django.urls import path

from . import views
from .models import Campaign

app_name = "annotation"

urlpatterns = [
    path("", views.campaign_list, name="campaign_list"),
    path("campaigns/new/", views.campaign_new, name="campaign_new"),
    # The campaign page itself (campaigns/<pk>/ and its progress.json) is analysis.campaign_views.
    *[
        path(f"campaigns/<int:pk>/{action}/", views.campaign_action, {"action": action}, name=action)
        for action in Campaign.ACTIONS
    ],
    path("campaigns/<int:pk>/invite-links/", views.invite_link_create, name="invite_link_create"),
    path("campaigns/<int:pk>/invite-account/", views.invite_account, name="invite_account"),
    path("campaigns/<int:pk>/raters/<int:participation_pk>/exclude/", views.exclude_rater, name="exclude_rater"),
]
