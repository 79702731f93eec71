"""REST routes of the scans app (contracts 5 and 7), mounted under ``/api/``."""

from django.urls import path

from . import bin, views

urlpatterns = [
    path("scans/", views.ScanListCreate.as_view(), name="scan-list"),
    path("scans/<int:pk>/", views.ScanDetail.as_view(), name="scan-detail"),
    path("bin/", views.BinList.as_view(), name="bin-list"),
    path("bin/<int:pk>/restore", views.ScanRestore.as_view(), name="bin-restore"),
    path("bin/mice/", bin.BinMice.as_view(), name="bin-mice"),
    path("bin/mice/<int:pk>/restore", bin.MouseRestore.as_view(), name="bin-mouse-restore"),
    path("bin/studies/", bin.BinStudies.as_view(), name="bin-studies"),
    path("bin/studies/<int:pk>/restore", bin.StudyRestore.as_view(), name="bin-study-restore"),
    path("scans/<int:pk>/file", views.ScanFile.as_view(), name="scan-file"),
    path("scans/<int:pk>/thumbnail.png", views.ScanThumbnail.as_view(), name="scan-thumbnail"),
    path("studies/", views.StudyList.as_view(), name="study-list"),
    path("studies/<int:pk>/", bin.StudyDetail.as_view(), name="study-detail"),
    path("mice/", views.MouseList.as_view(), name="mouse-list"),
    path("mice/<int:pk>/", bin.MouseDetail.as_view(), name="mouse-detail"),
    path("mice/<int:pk>/merge", views.MouseMerge.as_view(), name="mouse-merge"),
    path("scans/<int:pk>/move", views.ScanMove.as_view(), name="scan-move"),
    path("studies/<int:pk>/cohorts", views.CohortCreate.as_view(), name="study-cohorts"),
    path("labs/", views.LabList.as_view(), name="lab-list"),
    path("structures/", views.StructureList.as_view(), name="structure-list"),
    path("uploads/", views.UploadCreate.as_view(), name="upload-create"),
    path("uploads/<uuid:pk>/", views.UploadChunk.as_view(), name="upload-detail"),
    path("uploads/<uuid:pk>/complete/", views.UploadComplete.as_view(), name="upload-complete"),
]
