"""REST routes of retraining (mounted under /api/)."""

from __future__ import annotations

from django.urls import path

from . import views

app_name = "retraining-api"

urlpatterns = [
    path("training-sets/", views.TrainingSets.as_view(), name="training-sets"),
    path("training-sets/<int:pk>/", views.TrainingSetDetail.as_view(), name="training-set"),
    path("training-sets/<int:pk>/train", views.Train.as_view(), name="train"),
    path("training-jobs/<int:pk>/", views.TrainingJobDetail.as_view(), name="training-job"),
    path("training-jobs/<int:pk>/cancel", views.CancelTraining.as_view(), name="cancel-training"),
    path("models/<int:pk>/promote", views.Promote.as_view(), name="promote-model"),
    path("labs/<int:pk>/models/", views.LabModels.as_view(), name="lab-models"),
    path("labs/<int:pk>/models/<str:task>/roll-back", views.RollBack.as_view(), name="roll-back"),
    path("studies/<int:pk>/rerun", views.Rerun.as_view(), name="rerun-study"),
    path("studies/<int:pk>/model-changes", views.ModelChanges.as_view(), name="model-changes"),
]
