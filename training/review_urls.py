"""Human curation stages: reviewers' pages (review/...) and researchers' pages (manage/...), under /curate/."""

from django.urls import path

from . import review_views as views

app_name = "curation"

urlpatterns = [
    path("", views.review_list, name="review_list"),
    path("review/<slug:name>/", views.review_page, name="review"),
    path("review/<slug:name>/decisions/<int:decision_id>/", views.decide, name="decide"),
    path("review/<slug:name>/decisions/<int:decision_id>/image", views.candidate_image, name="image"),
    path("manage/", views.manage_list, name="manage_list"),
    path("manage/open-generalist/", views.open_generalist, name="open_generalist"),
    path("manage/open-specialist/", views.open_specialist, name="open_specialist"),
    path("manage/<slug:name>/", views.manage_detail, name="manage_detail"),
    path("manage/<slug:name>/close/", views.close, name="close"),
    path("manage/<slug:name>/freeze/", views.freeze, name="freeze"),
    path("manage/<slug:name>/aesthetic-head/", views.train_aesthetic_head, name="aesthetic_head"),
]
