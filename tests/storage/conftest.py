"""Fixtures of the object-storage tests: a real S3 server over HTTP (``tests/s3.py``) and no local
media folder at all: MEDIA_ROOT lies under a plain file, so nothing can create or write it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from labs.models import Lab
from segmentation import services
from segmentation.models import ModelVersion
from tests.factories import LabFactory, member_of
from tests.s3 import Bucket, S3Server, s3_server, use_bucket
from tests.segmentation.tiny import write_tiny_models


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    yield from s3_server(tmp_path_factory.mktemp("s3"))


@pytest.fixture
def bucket(s3: S3Server, settings: Any) -> Bucket:
    """An empty bucket, and this process's default storage pointed at it."""
    fresh = s3.new_bucket()
    use_bucket(settings, fresh)
    return fresh


@pytest.fixture(autouse=True)
def media_root(tmp_path: Path, settings: Any, bucket: Bucket) -> Path:
    """Replaces the suite's local media folder: S3 storage, and a MEDIA_ROOT that cannot exist."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("MEDIA_ROOT lies under this plain file: no folder can be made there\n")
    root = blocker / "media"
    settings.MEDIA_ROOT = root
    settings.LABSEG_UPLOAD_TMP_DIR = str(tmp_path / "web-host-tmp")
    return root


@pytest.fixture(scope="session")
def tiny_models_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_models(tmp_path_factory.mktemp("models"))


@pytest.fixture
def models(db: Any, settings: Any, tiny_models_root: Path) -> dict[str, ModelVersion]:
    """The tiny organ and lesion models, registered and default for their tasks."""
    settings.LABSEG_MODELS_DIR = tiny_models_root
    services.sync_models(root=tiny_models_root)
    return {mv.task: mv for mv in ModelVersion.objects.filter(is_default=True)}


@pytest.fixture
def lab(db: Any) -> Lab:
    return LabFactory.create(name="Storage Lab")


@pytest.fixture
def member(lab: Lab) -> Any:
    return member_of(lab, username="alice")
