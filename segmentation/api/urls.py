"""Segmentation REST endpoints, mounted under ``/api/``."""

from django.urls import path, re_path

from . import views

job_cancel = views.JobCancel.as_view()
EXPORT_KINDS = r"(?P<kind>volumes|lesions|metastases)\.csv"

urlpatterns = [
    path("scans/<int:pk>/segment", views.SegmentScanView.as_view(), name="inference-scan-segment"),
    path("scans/<int:pk>/segment/", views.SegmentScanView.as_view()),
    path(
        "scans/<int:pk>/predictions/", views.ScanPredictionsView.as_view(), name="inference-scan-predictions"
    ),
    re_path(
        rf"^scans/(?P<pk>\d+)/{EXPORT_KINDS}$", views.ScanExportView.as_view(), name="inference-scan-export"
    ),
    re_path(
        rf"^studies/(?P<pk>\d+)/{EXPORT_KINDS}$",
        views.StudyExportView.as_view(),
        name="inference-study-export",
    ),
    path("jobs/", views.JobList.as_view(), name="inference-job-list"),
    path("jobs/<int:pk>/", views.JobDetail.as_view(), name="inference-job-detail"),
    path("jobs/<int:pk>/cancel", job_cancel, name="inference-job-cancel"),
    path("jobs/<int:pk>/cancel/", job_cancel),
    path("predictions/<int:pk>/", views.PredictionDetailView.as_view(), name="inference-prediction-detail"),
    path("predictions/<int:pk>/qc", views.PredictionQCView.as_view(), name="inference-prediction-qc"),
    path("predictions/<int:pk>/qc/", views.PredictionQCView.as_view()),
    path("lesions/<int:pk>/review", views.LesionReviewView.as_view(), name="inference-lesion-review"),
    path("lesions/<int:pk>/review/", views.LesionReviewView.as_view()),
    re_path(
        r"^predictions/(?P<pk>\d+)/(?P<kind>labels|uncertainty)(?:\.nii\.gz)?$",
        views.PredictionFileView.as_view(),
        name="inference-prediction-file",
    ),
    path("models/", views.ModelVersionListView.as_view(), name="inference-model-list"),
]
