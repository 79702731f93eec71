"""Fixtures of the foundation tests: two labs with one member each, API clients, upload helpers."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from rest_framework.test import APIClient

from labs.models import Lab
from scans.models import Annotation, Mouse, Scan, Study, TimePoint, UploadSession
from tests.factories import LabFactory, member_of

from .niftis import iter_files, nifti_bytes, volume


@pytest.fixture(autouse=True)
def no_segmentation_on_upload(settings) -> None:  # type: ignore[no-untyped-def]
    # These tests are about storing scans; segmentation requests are tested by the service owner.
    settings.LABSEG_SEGMENT_ON_UPLOAD = False


@pytest.fixture
def lab_a(db) -> Lab:  # type: ignore[no-untyped-def]
    return LabFactory.create(name="Lab A")


@pytest.fixture
def lab_b(db) -> Lab:  # type: ignore[no-untyped-def]
    return LabFactory.create(name="Lab B")


@pytest.fixture
def alice(lab_a: Lab) -> Any:
    return member_of(lab_a, username="alice")


@pytest.fixture
def bob(lab_b: Lab) -> Any:
    return member_of(lab_b, username="bob")


@pytest.fixture
def client_a(alice: Any) -> APIClient:
    client = APIClient()
    client.force_login(alice)
    return client


@pytest.fixture
def client_b(bob: Any) -> APIClient:
    client = APIClient()
    client.force_login(bob)
    return client


def upload_scan(client: APIClient, content: bytes, filename: str = "CT_M01_0h.nii.gz", **fields: str) -> Any:
    form: dict[str, Any] = {
        "study": "Flank tumours",
        "mouse": "M01",
        "time_point": "0h",
        "modality": "native_ct",
        **fields,
    }
    form["file"] = SimpleUploadedFile(filename, content, content_type="application/octet-stream")
    return client.post("/api/scans/", form, format="multipart")


def upload_annotation(
    client: APIClient, scan_id: int, content: bytes, filename: str = "Annotator_A.nii.gz", **fields: str
) -> Any:
    form: dict[str, Any] = {"annotator": "A", **fields}
    form["file"] = SimpleUploadedFile(filename, content, content_type="application/octet-stream")
    return client.post(f"/api/scans/{scan_id}/annotations/", form, format="multipart")


@pytest.fixture
def scan_bytes() -> bytes:
    return nifti_bytes(volume())


class Snapshot:
    """Database row counts and the media folder listing, to prove a refusal left nothing behind."""

    MODELS = (Lab, Study, Mouse, TimePoint, Scan, Annotation, UploadSession)

    def __init__(self, media_root: Path) -> None:
        self.media_root = media_root
        self.counts = self._counts()
        self.files = list(iter_files(media_root))

    def _counts(self) -> dict[str, int]:
        return {model.__name__: model.objects.count() for model in self.MODELS}

    def assert_unchanged(self) -> None:
        assert self._counts() == self.counts
        assert list(iter_files(self.media_root)) == self.files


@pytest.fixture
def snapshot(media_root: Path) -> Any:
    return lambda: Snapshot(media_root)


def as_file(content: bytes) -> io.BytesIO:
    return io.BytesIO(content)
