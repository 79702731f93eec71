"""Review fixtures: scans and annotations built from numpy arrays, stored as real NIfTI files."""

from __future__ import annotations

import gzip
import hashlib
import itertools
from collections.abc import Callable

import nibabel as nib
import numpy as np
import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage

from labs.models import Lab, Membership
from scans.models import Annotation, Scan
from tests.factories import LabFactory, StudyFactory, TimePointFactory, member_of

SPACING_MM = (0.4, 0.4, 0.5)
_scan_seeds = itertools.count(7)


def nifti_bytes(data: np.ndarray, spacing_mm: tuple[float, float, float] = SPACING_MM) -> bytes:
    image = nib.Nifti1Image(data, np.diag([*spacing_mm, 1.0]))
    image.header.set_data_dtype(data.dtype)
    return gzip.compress(image.to_bytes(), compresslevel=1)


def store(name: str, content: bytes) -> str:
    return default_storage.save(name, ContentFile(content))


def make_scan(
    *,
    lab: Lab,
    ct: np.ndarray,
    mouse: str | None = None,
    time_point: str = "0h",
    study=None,  # type: ignore[no-untyped-def]
    spacing_mm: tuple[float, float, float] = SPACING_MM,
) -> Scan:
    """A scan row whose file is ``ct`` (int16 HU, (x, y, z)) written as NIfTI into storage."""
    study = study or StudyFactory(lab=lab)
    mouse_kwargs = {"mouse__study": study, "mouse__lab": lab}
    if mouse:
        from scans.models import Mouse

        existing = Mouse.objects.filter(lab=lab, identifier=mouse).first()
        mouse_kwargs = {"mouse": existing} if existing else {**mouse_kwargs, "mouse__identifier": mouse}
    tp = TimePointFactory.create(label=time_point, **mouse_kwargs)
    content = nifti_bytes(ct.astype(np.int16), spacing_mm)
    name = store(f"labs/{lab.pk}/scans/ct_{tp.pk}.nii.gz", content)
    return Scan.objects.create(
        lab=lab,
        time_point=tp,
        file=name,
        original_filename="ct.nii.gz",
        sha256=hashlib.sha256(content).hexdigest(),
        size_bytes=len(content),
        shape=list(ct.shape),
        spacing_mm=list(spacing_mm),
        affine=np.diag([*spacing_mm, 1.0]).tolist(),
        dtype="int16",
        orientation="RAS",
        intensity_min=float(ct.min()),
        intensity_max=float(ct.max()),
        intensity_mean=float(ct.mean()),
        intensity_std=float(ct.std()),
    )


def make_annotation(
    *,
    scan: Scan,
    labels: np.ndarray,
    annotator: str,
    status: str = Annotation.Status.SUBMITTED,
    structures: dict[str, int] | None = None,
) -> Annotation:
    """An annotation row whose file is ``labels`` (uint8 canonical ids unless ``structures`` maps them)."""
    content = nifti_bytes(labels.astype(np.uint8), tuple(scan.spacing_mm))
    name = store(f"labs/{scan.lab_id}/annotations/{scan.pk}_{annotator}.nii.gz", content)
    if structures is None:
        from inference.structures import by_id

        structures = {by_id(int(v)).name: int(v) for v in np.unique(labels) if v != 0}
    return Annotation.objects.create(
        scan=scan,
        annotator_name=annotator,
        file=name,
        original_filename=f"Annotator_{annotator}.nii.gz",
        sha256=hashlib.sha256(content).hexdigest(),
        structures=structures,
        status=status,
    )


def ball(shape: tuple[int, int, int], centre: tuple[float, float, float], radius: float) -> np.ndarray:
    grid = np.indices(shape).transpose(1, 2, 3, 0)
    return ((grid - np.asarray(centre)) ** 2).sum(-1) <= radius**2


@pytest.fixture
def lab() -> Lab:
    return LabFactory.create(name="Lab A")


@pytest.fixture
def other_lab() -> Lab:
    return LabFactory.create(name="Lab B")


@pytest.fixture
def reviewer(lab: Lab):  # type: ignore[no-untyped-def]
    return member_of(lab, role=Membership.Role.REVIEWER, username="rita")


@pytest.fixture
def member(lab: Lab):  # type: ignore[no-untyped-def]
    return member_of(lab, role=Membership.Role.MEMBER, username="max")


@pytest.fixture
def tumor_scan(lab: Lab) -> Callable[..., tuple[Scan, list[Annotation]]]:
    """A small CT with one tumor and three annotators who draw it a little differently."""

    def build(statuses: tuple[str, ...] = ("submitted", "submitted", "submitted"), **scan_kwargs):  # type: ignore[no-untyped-def]
        shape = (32, 30, 28)
        truth = ball(shape, (16, 15, 14), 7.0)
        rng = np.random.default_rng(next(_scan_seeds))  # each scan's CT differs (sha256 unique per lab)
        ct = np.where(truth, 60, -700).astype(np.int16) + rng.normal(0, 20, shape).astype(np.int16)
        scan = make_scan(lab=scan_kwargs.pop("lab", lab), ct=ct, **scan_kwargs)
        drawings = [
            ball(shape, (16, 15, 14), 7.6),
            ball(shape, (16.8, 15, 14), 6.8),
            ball(shape, (16, 14.2, 14.5), 7.0),
        ]
        names = ["A", "B", "C"]
        annotations = [
            make_annotation(scan=scan, labels=d.astype(np.uint8) * 14, annotator=n, status=s)
            for d, n, s in zip(drawings, names, statuses, strict=False)
        ]
        return scan, annotations

    return build
