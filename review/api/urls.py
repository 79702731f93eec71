"""REST routes of the review app (mounted under /api/): annotations (upload, row, file) and their
lifecycle. Each lifecycle route answers with or without a trailing slash, so
``POST /api/annotations/7/approve`` and ``.../approve/`` both work."""

from __future__ import annotations

from django.urls import URLPattern, path, re_path

from . import corrections, views


def route(pattern: str, view, name: str) -> URLPattern:  # type: ignore[no-untyped-def]
    return re_path(rf"^{pattern}/?$", view, name=name)


app_name = "review-api"

urlpatterns = [
    # Annotations as files: upload (the lifecycle's create_annotation), row and file.
    path("scans/<int:pk>/annotations/", views.ScanAnnotations.as_view(), name="scan-annotations"),
    path("annotations/<int:pk>/", views.AnnotationDetail.as_view(), name="annotation-detail"),
    path("annotations/<int:pk>/file", views.AnnotationFile.as_view(), name="annotation-file"),
    path("annotations/<int:pk>/file.seg.nrrd", views.AnnotationSegNrrd.as_view(), name="annotation-seg-nrrd"),
    path(
        "predictions/<int:pk>/labels.seg.nrrd", views.PredictionSegNrrd.as_view(), name="prediction-seg-nrrd"
    ),
    path("structures/itksnap.txt", views.ItksnapLabels.as_view(), name="itksnap-labels"),
    route(r"annotations/(?P<pk>\d+)/submit", views.SubmitView.as_view(), "submit"),
    route(r"annotations/(?P<pk>\d+)/approve", views.ApproveView.as_view(), "approve"),
    route(r"annotations/(?P<pk>\d+)/reject", views.RejectView.as_view(), "reject"),
    route(r"annotations/(?P<pk>\d+)/reopen", views.ReopenView.as_view(), "reopen"),
    route(r"annotations/(?P<pk>\d+)/replace", views.ReplaceView.as_view(), "replace"),
    route(r"annotations/(?P<pk>\d+)/history", views.HistoryView.as_view(), "history"),
    route(r"predictions/(?P<pk>\d+)/promote", views.PromoteView.as_view(), "promote"),
    route(r"predictions/(?P<pk>\d+)/corrections", corrections.CorrectionView.as_view(), "corrections"),
    route(r"scans/(?P<pk>\d+)/consensus", views.ConsensusView.as_view(), "consensus"),
    re_path(
        r"^consensus/(?P<pk>\d+)/(?P<kind>majority|staple|disagreement)\.nii\.gz$",
        views.ConsensusFileView.as_view(),
        name="consensus-file",
    ),
    re_path(
        r"^scans/(?P<pk>\d+)/agreement\.csv$", views.ScanAgreementCsvView.as_view(), name="scan-agreement-csv"
    ),
    route(r"scans/(?P<pk>\d+)/agreement", views.AgreementView.as_view(), "scan-agreement"),
    re_path(
        r"^studies/(?P<pk>\d+)/agreement\.csv$",
        views.StudyAgreementCsvView.as_view(),
        name="study-agreement-csv",
    ),
    re_path(
        r"^studies/(?P<pk>\d+)/variability\.csv$",
        views.StudyVariabilityCsvView.as_view(),
        name="study-variability-csv",
    ),
    re_path(
        r"^studies/(?P<pk>\d+)/models\.csv$", views.StudyModelsCsvView.as_view(), name="study-models-csv"
    ),
    re_path(r"^studies/(?P<pk>\d+)/dice\.json$", views.StudyDiceView.as_view(), name="study-dice"),
]
