"""The researcher's pages, their data files and downloads (mounted at ``/``)."""

from django.contrib.auth import views as auth_views
from django.urls import path

from frontend.views import curation, downloads, files, fleet, pages
from labs.lockout import LockoutAuthenticationForm

app_name = "frontend"

urlpatterns = [
    path(
        "login/",
        auth_views.LoginView.as_view(
            template_name="frontend/registration/login.html", authentication_form=LockoutAuthenticationForm
        ),
        name="login",
    ),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("lab/", pages.switch_lab_view, name="switch-lab"),
    path("", pages.dashboard, name="dashboard"),
    path("upload/", pages.upload, name="upload"),
    path("workers/", fleet.workers, name="workers"),
    path("bin/", curation.bin_page, name="bin"),
    path("studies/<int:pk>/", pages.study, name="study"),
    path("mice/<int:pk>/", pages.mouse, name="mouse"),
    path("scans/<int:pk>/", pages.scan, name="scan"),
    path("scans/<int:pk>/viewer.json", pages.scan_viewer_config, name="scan-viewer-config"),
    path("scans/<int:pk>/layers/<str:key>.nii.gz", files.layer, name="scan-layer"),
    path("scans/<int:pk>/qc.png", files.qc_picture, name="scan-qc"),
    path("<str:scope>/<int:pk>/tumor.csv", downloads.tumor_csv, name="tumor-csv"),
    path("<str:scope>/<int:pk>/metastases.csv", downloads.metastases_csv, name="metastases-csv"),
    path("<str:scope>/<int:pk>/lesions.csv", downloads.lesions_csv, name="lesions-csv"),
    path("<str:scope>/<int:pk>/volumes.csv", downloads.volumes_csv, name="volumes-csv"),
]
