"""Fixtures of the segmentation service tests: tiny registered models and scans uploaded through
the real upload service (``scans.services.register_scan``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from labs.models import Lab
from scans.models import Scan
from scans.services import register_scan
from segmentation import services
from segmentation.models import ModelVersion
from tests.factories import LabFactory, member_of

from .tiny import write_phantom, write_tiny_models


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
def lab() -> Lab:
    return LabFactory.create(name="Tumor Lab")


@pytest.fixture
def member(lab: Lab) -> Any:
    return member_of(lab, username="alice")


@pytest.fixture
def upload_scan(tmp_path: Path, settings: Any, lab: Lab, member: Any) -> Callable[..., Scan]:
    """Upload a phantom scan through the real upload service; ``segment=True`` lets the upload
    request the segmentation itself (``LABSEG_SEGMENT_ON_UPLOAD``)."""
    counter = iter(range(1, 10_000))

    def upload(
        *,
        shape: tuple[int, int, int] = (48, 40, 40),
        mouse: str = "M01",
        time_point: str = "0h",
        study: str = "Metastasis study",
        in_lab: Lab | None = None,
        user: Any = None,
        segment: bool = False,
    ) -> Scan:
        settings.LABSEG_SEGMENT_ON_UPLOAD = segment
        n = next(counter)
        path = write_phantom(tmp_path / f"phantom{n}.nii.gz", shape, seed=n)
        return register_scan(
            lab=in_lab or lab,
            uploaded_file_path_or_file=path,
            original_filename=path.name,
            study_name=study,
            mouse_identifier=mouse,
            time_point_label=time_point,
            modality=Scan.Modality.CONTRAST_CT,
            user=user or member,
        )

    return upload
