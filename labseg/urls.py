"""Top-level URLs: each app owns its own ``api/urls.py`` (REST) and pages.

Stored files are never served from ``MEDIA_URL``, not even in development: every file goes
through a view that scopes it to the user's labs (such as ``/api/scans/{id}/file``).
"""

from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from labseg import health
from labseg.metrics import metrics_view

urlpatterns = [
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("metrics", metrics_view, name="metrics"),
    path("admin/", admin.site.urls),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    path("api/", include("scans.api.urls")),
    path("api/", include("segmentation.api.urls")),
    path("api/", include("review.api.urls")),
    path("api/", include("retraining.api.urls")),
    path("retraining/", include("retraining.urls")),
    path("review/", include("review.urls")),
    path("", include("audit.urls")),
    path("", include("frontend.urls")),
]
