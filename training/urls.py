"""Quality-tuning pages (staff only). Run images and logs are served here, never under MEDIA_URL."""

from django.urls import path

from . import curation_views, views

app_name = "training"

urlpatterns = [
    path("", views.run_list, name="run_list"),
    path("runs/new/", views.run_new, name="run_new"),
    path("runs/<int:pk>/", views.run_detail, name="run_detail"),
    path("runs/<int:pk>/progress.json", views.run_progress, name="run_progress"),
    path("runs/<int:pk>/cancel/", views.run_cancel, name="run_cancel"),
    path("runs/<int:pk>/start/", views.run_start, name="run_start"),
    path("runs/<int:pk>/loss.png", views.loss_curve, name="loss_curve"),
    path("runs/<int:pk>/validation/grid.png", views.validation_grid, name="validation_grid"),
    path("runs/<int:pk>/trainer.log", views.trainer_log, name="trainer_log"),
    path("runs/<int:pk>/checkpoints/<int:step>/register/", views.checkpoint_register, name="checkpoint_register"),
    path("runs/<int:pk>/checkpoints/<int:step>/compare/", views.checkpoint_compare, name="checkpoint_compare"),
    path("runs/<int:pk>/checkpoint-campaign/", views.checkpoint_campaign_create, name="checkpoint_campaign_create"),
    path("runs/<int:pk>/score-validation/", views.score_validation, name="score_validation"),
    path("runs/<int:pk>/win_rate.png", views.win_rate_curve, name="win_rate_curve"),
    path("datasets/", views.dataset_list, name="dataset_list"),
    path("curation/", curation_views.collection_list, name="curation_collections"),
    path("curation/collections/<int:pk>/", curation_views.collection_detail, name="curation_collection"),
    path("curation/collections/<int:pk>/funnel/", curation_views.curation_run_new, name="curation_run_new"),
    path("curation/runs/<int:pk>/", curation_views.curation_run_detail, name="curation_run"),
    path("curation/runs/<int:pk>/start/", curation_views.curation_run_start, name="curation_run_start"),
    path("curation/runs/<int:pk>/sheet-<str:which>.png", curation_views.curation_sheet, name="curation_sheet"),
    path("curation/runs/<int:pk>/outcomes.csv", curation_views.curation_outcomes_csv, name="curation_outcomes_csv"),
]
