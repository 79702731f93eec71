"""Pages of the review app, mounted at /review/ (see labseg/urls.py)."""

from __future__ import annotations

from django.urls import path

from . import views

app_name = "review"

urlpatterns = [
    path("scans/<int:pk>/", views.scan_review, name="scan"),
    path(
        "scans/<int:pk>/disagreement/<str:structure>.nii.gz",
        views.live_disagreement,
        name="live-disagreement",
    ),
    path("studies/<int:pk>/qc/", views.study_qc, name="study-qc"),
]
