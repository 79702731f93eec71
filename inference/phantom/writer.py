"""Writing phantoms to disk in the two layouts.

``flat``: ``DIR/<case>/{ct.nii.gz, labels.nii.gz, annotator_A.nii.gz ..., meta.json}`` with
canonical label ids everywhere. ``tumor-db``: the public subcutaneous-tumor database's folders,
``Dataset 1/M01_M02_8d/M02_8d/{CT_M02_8d.nii.gz, Annotator_A_M02_8d.nii.gz ...}``, where the
annotators' files are binary tumor masks (0/1) as in the real database, the CT is clipped to
[-400, 1000] HU, each mouse is shown at several time points with a growing tumor, and
``meta_M02_8d.json`` records the ground truth, including every metastasis and its organ.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import nibabel as nib
import numpy as np

from inference.phantom.generator import Phantom, generate_phantom
from inference.structures import BY_NAME

log = logging.getLogger(__name__)

#: (folder label, tumor volume factor) of the tumor-db time series: volume doubles in ~4 days.
TIME_POINTS: tuple[tuple[str, float], ...] = (("0d", 1.0), ("4d", 2.0), ("8d", 4.0))


def save_nifti(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    image = nib.Nifti1Image(array, affine)
    image.header.set_xyzt_units("mm")
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(image, str(path))


def write_flat(phantom: Phantom, folder: Path) -> None:
    save_nifti(phantom.ct, phantom.affine, folder / "ct.nii.gz")
    save_nifti(phantom.labels, phantom.affine, folder / "labels.nii.gz")
    for name, labels in phantom.annotators.items():
        save_nifti(labels, phantom.affine, folder / f"annotator_{name}.nii.gz")
    (folder / "meta.json").write_text(json.dumps(phantom.meta, indent=1))


def write_dataset(
    out: Path,
    *,
    n: int,
    seed: int,
    spacing_mm: float = 0.21,
    modality: str = "native",
    layout: str = "flat",
    n_annotators: int = 3,
    skip_existing: bool = False,
) -> list[Path]:
    """Generate and write ``n`` phantoms (flat) or ``n`` mice x time points (tumor-db).

    With ``skip_existing`` (flat layout) a case whose ``meta.json`` is already there is kept as it
    is (phantoms are deterministic by seed), so a grown set only writes its new seeds.
    """
    written: list[Path] = []
    if layout == "flat":
        for i in range(n):
            case_seed = seed + i
            folder = out / f"{modality}_{case_seed:05d}"
            if skip_existing and (folder / "meta.json").is_file():
                written.append(folder)
                continue
            phantom = generate_phantom(
                case_seed, modality=modality, spacing_mm=spacing_mm, n_annotators=n_annotators
            )
            write_flat(phantom, folder)
            log.info("wrote %s", folder)
            written.append(folder)
        return written
    if layout != "tumor-db":
        raise ValueError(f"layout must be 'flat' or 'tumor-db', not {layout!r}")
    tumor_id = BY_NAME["tumor"].id
    for first in range(0, n, 2):
        mice = [m for m in (first, first + 1) if m < n]
        names = [f"M{m + 1:02d}" for m in mice]
        for t_index, (tp, growth) in enumerate(TIME_POINTS):
            group = out / "Dataset 1" / f"{'_'.join(names)}_{tp}"
            for m, name in zip(mice, names, strict=True):
                phantom = generate_phantom(
                    seed + m,
                    modality=modality,
                    spacing_mm=spacing_mm,
                    growth=growth,
                    time_index=t_index,
                    n_annotators=n_annotators,
                    annotated=["tumor"],
                )
                folder = group / f"{name}_{tp}"
                ct = np.clip(phantom.ct, -400, 1000).astype(np.int16)
                save_nifti(ct, phantom.affine, folder / f"CT_{name}_{tp}.nii.gz")
                for who, labels in phantom.annotators.items():
                    mask = (labels == tumor_id).astype(np.uint8)
                    save_nifti(mask, phantom.affine, folder / f"Annotator_{who}_{name}_{tp}.nii.gz")
                meta = {**phantom.meta, "mouse": name, "time_point": tp}
                (folder / f"meta_{name}_{tp}.json").write_text(json.dumps(meta, indent=1))
                save_nifti(phantom.labels, phantom.affine, folder / f"GroundTruth_{name}_{tp}.nii.gz")
                log.info("wrote %s", folder)
                written.append(folder)
    return written
