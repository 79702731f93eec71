"""Import of a folder in the public tumor database layout.

Layout (see ``../shared/science.md``)::

    Dataset N/M01_M02_8d/M02_8d/CT_M02_8d.nii.gz
                               Annotator_A_M02_8d.nii.gz, Annotator_B_..., STAPLE_M02_8d.nii.gz

``MXX`` is the mouse, ``8d`` / ``3h`` the time since its first scan. Every CT becomes a scan (its
mouse and time point created when new); every annotator file one annotation named after the
annotator; STAPLE-merged labels are imported as annotator "STAPLE", and ground-truth label maps
(``GroundTruth_M02_8d.nii.gz``, canonical structure ids) as annotator "GroundTruth": label maps are
never scans. Running it again imports
only what is missing: scans are recognised by sha256, annotations by scan and annotator.

It lives in the review app because it creates annotations, which only the annotation lifecycle
does (``services.create_annotation``, which records each one's first transition); scans are
registered by the scans app.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from labs.models import Lab
from scans.files import sha256_of
from scans.models import Annotation, Cohort, Mouse, Scan, Study
from scans.services import register_scan
from scans.validation import ScanRejected

from .services import create_annotation

_CT = re.compile(r"^CT_(?P<mouse>[^_]+)_(?P<time_point>[^_]+)\.nii(?:\.gz)?$", re.IGNORECASE)
_ANNOTATOR = re.compile(r"^Annotator_(?P<annotator>[^_]+)_(?P<rest>.+)\.nii(?:\.gz)?$", re.IGNORECASE)
_STAPLE = re.compile(r"^STAPLE_(?P<rest>.+)\.nii(?:\.gz)?$", re.IGNORECASE)
_GROUND_TRUTH = re.compile(r"^GroundTruth_(?P<rest>.+)\.nii(?:\.gz)?$", re.IGNORECASE)
#: Ground-truth label maps (phantom datasets) carry canonical structure ids, not the tumor as 1.
GROUND_TRUTH = "GroundTruth"
_DATASET = re.compile(r"^Dataset[ _-]*\d+$", re.IGNORECASE)

#: The tumor database marks tumor voxels with 1.
DEFAULT_STRUCTURES = {"tumor": 1}


@dataclass(frozen=True)
class DatasetScan:
    """One CT of the layout with its annotation files (annotator name -> path)."""

    path: Path
    mouse: str
    time_point: str
    dataset: str
    annotations: dict[str, Path]


@dataclass
class ImportReport:
    scans_created: int = 0
    scans_existing: int = 0
    annotations_created: int = 0
    annotations_existing: int = 0
    refused: list[str] = field(default_factory=list)


def find_dataset_scans(root: Path) -> list[DatasetScan]:
    """Every CT below ``root`` with the annotation files beside it, sorted by path."""
    found = []
    for path in sorted(root.rglob("*")):
        match = _CT.match(path.name)
        if not match or not path.is_file():
            continue
        stem = f"{match['mouse']}_{match['time_point']}"
        annotations: dict[str, Path] = {}
        for sibling in sorted(path.parent.iterdir()):
            annotator = _ANNOTATOR.match(sibling.name)
            staple = _STAPLE.match(sibling.name)
            truth = _GROUND_TRUTH.match(sibling.name)
            if annotator and annotator["rest"].lower() == stem.lower():
                annotations[annotator["annotator"]] = sibling
            elif staple and staple["rest"].lower() == stem.lower():
                annotations["STAPLE"] = sibling
            elif truth and truth["rest"].lower() == stem.lower():
                annotations[GROUND_TRUTH] = sibling
        dataset = next((part for part in path.relative_to(root).parts if _DATASET.match(part)), "")
        found.append(
            DatasetScan(
                path=path,
                mouse=match["mouse"],
                time_point=match["time_point"],
                dataset=dataset,
                annotations=annotations,
            )
        )
    return found


def import_dataset(
    *,
    root: Path,
    lab: Lab,
    study_name: str,
    user: Any = None,
    structures: dict[str, int] | None = None,
    progress: Callable[[Iterable[DatasetScan]], Iterable[DatasetScan]] = lambda items: items,
) -> ImportReport:
    """Import every scan and annotation of ``root`` into ``study_name`` of ``lab`` (idempotent).

    A refused file is reported (path and reason) and the import goes on with the next one.
    """
    report = ImportReport()
    mapping = structures or DEFAULT_STRUCTURES
    for item in progress(find_dataset_scans(root)):
        scan = _import_scan(item, lab=lab, study_name=study_name, user=user, report=report)
        if scan is None:
            continue
        for annotator, path in item.annotations.items():
            if Annotation.objects.filter(scan=scan, annotator_name=annotator).exists():
                report.annotations_existing += 1
                continue
            try:
                create_annotation(
                    scan=scan,
                    file=path,
                    original_filename=path.name,
                    annotator_name=annotator,
                    user=None,
                    structures=None if annotator == GROUND_TRUTH else mapping,
                    note=f"imported from {path}",
                )
            except ScanRejected as error:
                report.refused.append(f"{path}: {error.message}")
                continue
            report.annotations_created += 1
    return report


def _import_scan(
    item: DatasetScan, *, lab: Lab, study_name: str, user: Any, report: ImportReport
) -> Scan | None:
    existing = Scan.objects.filter(lab=lab, sha256=sha256_of(item.path)).first()
    if existing is not None:
        report.scans_existing += 1
        return existing
    try:
        scan = register_scan(
            lab=lab,
            uploaded_file_path_or_file=item.path,
            original_filename=item.path.name,
            study_name=study_name,
            mouse_identifier=item.mouse,
            time_point_label=item.time_point,
            modality=Scan.Modality.NATIVE_CT,
            user=user,
        )
    except ScanRejected as error:
        report.refused.append(f"{item.path}: {error.message}")
        return None
    report.scans_created += 1
    if item.dataset:
        _put_in_cohort(scan.time_point.mouse, item.dataset)
    return scan


def _put_in_cohort(mouse: Mouse, dataset: str) -> None:
    """The dataset folder (``Dataset 2``) becomes the mouse's cohort, so its origin stays visible."""
    if mouse.cohort_id is None:
        study: Study = mouse.study
        mouse.cohort, _ = Cohort.objects.get_or_create(study=study, name=dataset)
        mouse.save(update_fields=["cohort"])
