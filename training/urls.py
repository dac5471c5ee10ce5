"""Quality-tuning pages (staff only). Run images and logs are served here, never under MEDIA_URL."""

from django.urls import path

from . import views

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
    path("datasets/", views.dataset_list, name="dataset_list"),
]
