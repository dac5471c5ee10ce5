"""Rater-facing URLs (invite links, the voting page). Researchers' pages are in annotation/urls.py.

Every variable part is an opaque token: nothing here names a campaign, a model, an item or an image. Images are not
here: their sealed links (/i/...) are answered by annotation.rater_access.ServedImagesMiddleware before any URL is
resolved.
"""

from django.contrib.auth import views as auth_views
from django.urls import path

from . import rater_views

app_name = "rate"

urlpatterns = [
    path("join/<str:link_token>/", rater_views.join, name="join"),
    # Invited accounts: sign in, list their studies. Researchers sign in through the admin instead.
    path(
        "accounts/login/",
        auth_views.LoginView.as_view(template_name="registration/login.html", next_page="rate:home"),
        name="login",
    ),
    path("accounts/logout/", auth_views.LogoutView.as_view(next_page="rate:login"), name="logout"),
    path("rate/", rater_views.home, name="home"),
    path("rate/<str:participation_token>/", rater_views.page, name="page"),
    path("rate/<str:participation_token>/consent/", rater_views.consent, name="consent"),
    path("rate/<str:participation_token>/tasks.json", rater_views.tasks, name="tasks"),
    path("rate/<str:participation_token>/vote", rater_views.vote, name="vote"),
    path("rate/<str:participation_token>/done/", rater_views.done, name="done"),
]
