from django.urls import path

from . import views

app_name = "generation"

urlpatterns = [
    path("", views.batch_list, name="batch_list"),
    path("progress.json", views.progress_json, name="progress_json"),
    path("batches/<int:pk>/", views.batch_detail, name="batch_detail"),
    path("batches/<int:pk>/dispatch/", views.batch_dispatch, name="batch_dispatch"),
    path("images/<str:sha256>.png", views.image, name="image"),
]
