"""``segment_file``: a NIfTI scan in, every output of a segmentation run in a folder out.

Outputs (each written under a temporary name and renamed, so a killed run never leaves a half
file under a final name; the manifest comes last): ``labels.nii.gz`` (uint8), ``uncertainty.nii.gz``
(uint8), ``volumes.csv``, ``lesions.csv``, ``manifest.json``.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from inference.pipeline.io import LoadedScan, load_label_map, load_scan, save_map
from inference.pipeline.lesions import (
    LesionInputError,
    LesionRow,
    allocate,
    metastasis_assessed_organs,
    metastasis_counts,
    read_points_csv,
    write_lesions_csv,
)
from inference.pipeline.manifest import build_manifest, orientation_entry
from inference.pipeline.postprocess import DEFAULT_MIN_LESION_VOLUME_MM3
from inference.pipeline.predict import PipelineOutput, StageTimer, predict_volume
from inference.pipeline.qc import QCView, check_run
from inference.pipeline.volumes import VolumeRow, labels_present, structure_volumes, write_volumes_csv
from inference.registry import ModelCard, default_model
from inference.structures import ORGAN_NAMES

OUTPUT_NAMES = {
    "labels": "labels.nii.gz",
    "uncertainty": "uncertainty.nii.gz",
    "volumes": "volumes.csv",
    "lesions": "lesions.csv",
    "manifest": "manifest.json",
}


@dataclass
class SegmentResult:
    labels_path: Path
    uncertainty_path: Path
    volumes_path: Path
    lesions_path: Path
    manifest_path: Path
    volumes: list[VolumeRow]
    lesions: list[LesionRow]
    metastasis_counts: dict[str, int | None]
    manifest: dict[str, Any]


def _temporary(path: Path) -> Path:
    # Keep the suffixes (.nii.gz) so nibabel still compresses; the leading dot hides it from globs.
    return path.with_name(f".partial-{path.name}")


def _publish(path: Path, writer: Callable[[Path], object]) -> Path:
    partial = _temporary(path)
    writer(partial)
    os.replace(partial, path)
    return path


def read_lesion_source(path: Path, scan: LoadedScan) -> tuple[np.ndarray, int | None]:
    """A lesion mask on the scan's grid or a CSV of world coordinates -> (array, structure id)."""
    path = Path(path)
    if path.suffix.lower() == ".csv":
        return read_points_csv(path)
    mask = load_label_map(path)
    if mask.data.shape != scan.data.shape or not np.allclose(mask.affine, scan.affine, atol=1e-3):
        raise LesionInputError(
            f"the lesion mask {path.name} (shape {mask.data.shape}) is not on the scan's grid "
            f"(shape {scan.data.shape}); export it from the same scan"
        )
    return mask.data, None


def read_organ_map(path: Path, scan: LoadedScan) -> np.ndarray:
    """An organ label map from an earlier run (e.g. the organ model's ``labels.nii.gz``)."""
    organs = load_label_map(Path(path))
    if organs.data.shape != scan.data.shape or not np.allclose(organs.affine, scan.affine, atol=1e-3):
        raise LesionInputError(f"the organ label map {Path(path).name} is not on the scan's grid")
    return organs.data


def lesions_for(
    output: PipelineOutput,
    affine: np.ndarray,
    source: tuple[np.ndarray, int | None] | None,
    organ_map: np.ndarray | None = None,
) -> list[LesionRow]:
    """Lesions from an uploaded mask/CSV when given, else the predicted tumor-task components.

    Organs come from this run's organ model, else from ``organ_map`` (an earlier organ run)."""
    organs = output.organ_labels if output.organ_labels is not None else organ_map
    if organs is None:
        organs = np.zeros(output.labels.shape, dtype=np.uint8)
    if source is not None:
        data, structure_id = source
        if structure_id is not None:
            return allocate(organs, affine, data, default_structure_id=structure_id)
        return allocate(organs, affine, data)
    if output.lesion_labels is None:
        return []
    return allocate(organs, affine, output.lesion_labels)


def segment_file(
    scan_path: Path,
    out_dir: Path,
    *,
    cards: Sequence[ModelCard] | None = None,
    tasks: Sequence[str] = ("organs", "tumor"),
    device: str = "auto",
    threads: int = 0,
    progress: Callable[[int, str], None] | None = None,
    lesions_from: Path | None = None,
    organs_from: Path | None = None,
    min_lesion_volume_mm3: float = DEFAULT_MIN_LESION_VOLUME_MM3,
    intensity: str = "auto",
    orient: str = "anatomy",
) -> SegmentResult:
    """Segment the NIfTI at ``scan_path`` and write the outputs into ``out_dir`` (created).

    ``cards`` default to the registry's default model for each of ``tasks``. ``progress(percent,
    stage)`` reports 0-100 with the stage's name. ``lesions_from``: a lesion mask (NIfTI on the
    scan's grid) or a CSV of ``x_mm,y_mm,z_mm[,diameter_mm]`` used instead of predicted lesions.
    ``organs_from``: an organ label map on the scan's grid, used to allocate lesions when this
    run has no organ model (a tumor-only job after the organ job). ``intensity``: "auto" (check
    for HU, else calibrate to HU from the scan's air and soft-tissue peaks) or "hu" (as HU, unchecked);
    see ``predict_volume``. ``orient``: "anatomy" (turn the scan when its anatomy says the mouse
    lies otherwise than the header implies; recorded in the manifest's ``orientation``) or "header".
    """
    started = time.perf_counter()
    timer = StageTimer()

    def report(percent: float, stage: str) -> None:
        if progress is not None:
            progress(round(percent), stage)

    chosen = list(cards) if cards is not None else [default_model(task) for task in tasks]
    report(0, "load")
    with timer("load"):
        scan = load_scan(Path(scan_path))
        source = read_lesion_source(Path(lesions_from), scan) if lesions_from is not None else None
        organ_map = read_organ_map(Path(organs_from), scan) if organs_from is not None else None

    def inner(percent: int, stage: str) -> None:
        report(3 + percent * 0.8, stage)

    output = predict_volume(
        scan.data,
        scan.affine,
        chosen,
        device=device,
        threads=threads,
        progress=inner,
        min_lesion_volume_mm3=min_lesion_volume_mm3,
        intensity=intensity,
        orient=orient,
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {key: out / name for key, name in OUTPUT_NAMES.items()}
    with ThreadPoolExecutor(max_workers=3) as pool:
        # The two maps are compressed (zlib releases the GIL) and the volumes counted while the
        # lesions are found and the run is checked: each needs only the pipeline's output.
        maps = [
            pool.submit(
                _publish, paths[key], partial(save_map, data=array, affine=scan.affine, header=scan.header)
            )
            for key, array in (("labels", output.labels), ("uncertainty", output.uncertainty))
        ]
        counting = pool.submit(
            structure_volumes,
            output.labels,
            output.geometry.voxel_volume_mm3,
            output.uncertainty,
            structure_ids=output.structure_ids,
        )
        # Lesions a person gave were looked for everywhere; a model only where its card says.
        searched = (
            set(ORGAN_NAMES)
            if source is not None
            else {o for c in chosen for o in c.metastasis_organs} - set(output.unsearched)
        )
        present = output.organ_ids if output.organ_labels is not None else None
        if present is None and organ_map is not None:
            present = labels_present(organ_map)
        assessed = metastasis_assessed_organs(present, searched)
        report(85, "lesions")
        with timer("lesions"):
            lesions = lesions_for(output, scan.affine, source, organ_map)
        with timer("qc"):
            intensity_entry = output.intensity.as_json() if output.intensity is not None else None
            orientation = orientation_entry(output.orientation, output.geometry.axcodes)
            # The QC's body mask is drawn while the volumes are counted; the checks need both.
            view = QCView.of(output.labels, scan.data, intensity_entry, output.uncertainty)
        counts = metastasis_counts(lesions, assessed)
        report(90, "volumes")
        with timer("volumes"):
            volumes = counting.result()
        with timer("qc"):
            qc = check_run(
                labels=output.labels,
                scan=scan.data,
                voxel_volume_mm3=output.geometry.voxel_volume_mm3,
                volumes=volumes,
                lesions=lesions,
                structure_ids=output.structure_ids,
                uncertainty=output.uncertainty,
                intensity=intensity_entry,
                orientation=orientation,
                animals=output.animals,
                centres=output.organ_centres,
                view=view,
                spacing_mm=output.geometry.spacing_mm,
                pass_agreement=output.pass_agreement,
            )
        report(93, "write")
        with timer("write"):
            _publish(paths["volumes"], lambda p: write_volumes_csv(p, volumes, qc.cut_by_field))
            _publish(paths["lesions"], lambda p: write_lesions_csv(p, lesions))
            for future in maps:
                future.result()
    seconds = {**timer.seconds, **output.seconds}
    seconds["total"] = time.perf_counter() - started
    manifest = build_manifest(
        cards=chosen,
        providers=output.providers,
        size_scales=output.size_scales,
        device=device,
        threads=threads,
        seconds=seconds,
        geometry=output.geometry.as_json(),
        extra={
            "scan": Path(scan_path).name,
            "intensity": intensity_entry,
            "orientation": orientation,
            "qc": qc.as_json(),
            "outputs": dict(OUTPUT_NAMES),
            "lesions_from": Path(lesions_from).name if lesions_from is not None else None,
            "metastasis_counts": counts,
            "metastases_assessed_in": assessed,
            # Where a model measured it: the smallest metastasis it finds in an assessed organ.
            "metastases_found_from_mm": {
                organ: mm
                for card in chosen
                for organ, mm in card.metastases_found_from_mm.items()
                if organ in assessed
            },
            "postprocess": {
                **{
                    task: {"components_removed": r.components_removed, "voxels_removed": r.voxels_removed}
                    for task, r in output.cleaning.items()
                },
                "braincase": output.braincase.as_json() if output.braincase is not None else None,
                # Whether each outline refiner ran on the scan's voxels, on resampled ones, or not.
                "refiners": [run.as_json() for run in output.refiners],
            },
            "uncertainty": "disagreement head where the model has one, else normalised (1 - top probability)",
        },
    )
    _publish(paths["manifest"], lambda p: p.write_text(json.dumps(manifest, indent=2)))
    report(100, "done")
    return SegmentResult(
        labels_path=paths["labels"],
        uncertainty_path=paths["uncertainty"],
        volumes_path=paths["volumes"],
        lesions_path=paths["lesions"],
        manifest_path=paths["manifest"],
        volumes=volumes,
        lesions=lesions,
        metastasis_counts=counts,
        manifest=manifest,
    )
