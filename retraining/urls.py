"""Pages of retraining: a training job's comparison, a study's changes between model versions."""

from __future__ import annotations

from django.urls import path

from . import views

app_name = "retraining"

urlpatterns = [
    path("jobs/<int:pk>/", views.comparison_page, name="comparison"),
    path("studies/<int:pk>/changes/", views.changes_page, name="changes"),
]
