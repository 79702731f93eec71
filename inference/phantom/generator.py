"""One phantom from one seed: the CT in HU, its ground truth and the simulated annotators.

Deterministic: the same (seed, modality, spacing, growth) always gives the same arrays. The mouse's
anatomy, its tumors' sites and its scan-to-scan pose come from separate random streams, so a
time series (``growth`` > 1) shows the same animal with larger tumors.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from inference.phantom.anatomy import BODY, SKIN, Body, Tissues, paint_envelope, paint_mouse
from inference.phantom.annotators import annotate, sample_annotators
from inference.phantom.canvas import Canvas
from inference.phantom.scanner import acquire, paint_bed
from inference.structures import STRUCTURES

#: Field of view across the animal (x and y), as in the tumor database's 192-voxel crops at 0.21 mm.
FOV_MM = 40.32
#: Body length (nose to base of tail) of an average adult mouse in the phantom.
BODY_LENGTH_MM = 94.0


@dataclass
class Phantom:
    """``ct`` int16 HU, ``labels`` uint8 canonical ids, ``annotators`` name -> uint8 label map.

    All arrays are (x, y, z) in closest-canonical RAS order; ``affine`` maps voxel indices to mm.
    """

    ct: np.ndarray
    labels: np.ndarray
    annotators: dict[str, np.ndarray]
    affine: np.ndarray
    meta: dict[str, object] = field(default_factory=dict)

    @property
    def spacing_mm(self) -> float:
        return float(self.affine[0, 0])


def _tumor_plan(rng: np.random.Generator) -> list[float]:
    n = int(rng.choice(3, p=[0.2, 0.5, 0.3]))
    return [float(np.exp(rng.uniform(np.log(10.0), np.log(2500.0)))) for _ in range(n)]


def generate_phantom(
    seed: int,
    *,
    modality: str = "native",
    spacing_mm: float = 0.21,
    growth: float = 1.0,
    time_index: int = 0,
    n_annotators: int = 3,
    annotated: list[str] | None = None,
) -> Phantom:
    """Build one phantom.

    ``growth`` multiplies the tumors' volumes (time series); ``time_index`` varies pose, noise and
    bed between scans of the same animal. ``annotated`` restricts what the annotators label.
    """
    if modality not in ("native", "contrast"):
        raise ValueError(f"modality must be 'native' or 'contrast', not {modality!r}")
    anatomy_rng = np.random.default_rng([seed, 1])
    tumor_rng = np.random.default_rng([seed, 2])
    scan_rng = np.random.default_rng([seed, 3, time_index])
    annot_rng = np.random.default_rng([seed, 4, time_index])
    fat_rng = np.random.default_rng([seed, 5])

    scale = float(anatomy_rng.uniform(0.9, 1.06))
    girth = float(anatomy_rng.uniform(0.93, 1.06))
    length = BODY_LENGTH_MM * scale
    n_xy = round(FOV_MM / spacing_mm)
    nz = int(np.ceil((length + 7.0) / spacing_mm))
    canvas = Canvas.empty((n_xy, n_xy, nz), spacing_mm)
    body = Body(
        length_mm=length,
        z_nose_mm=nz * spacing_mm - 3.0,
        centre_x_mm=FOV_MM / 2 + float(scan_rng.normal(0, 0.8)),
        centre_y_mm=FOV_MM / 2 - 1.0 + float(scan_rng.normal(0, 0.6)),
        scale=scale,
        girth=girth,
        bend=(
            float(scan_rng.normal(0, 1.2)),
            float(scan_rng.normal(0, 0.8)),
            float(scan_rng.uniform(0, np.pi)),
            float(scan_rng.uniform(0, np.pi)),
        ),
    )
    tissues = Tissues.sample(anatomy_rng, modality)
    neighbour = scan_rng.random() < 0.15
    if neighbour:
        # A second mouse scanned alongside: only its flank reaches into this crop, unlabelled.
        side = 1 if scan_rng.random() < 0.5 else -1
        other = Body(
            length_mm=length * float(scan_rng.uniform(0.95, 1.05)),
            z_nose_mm=body.z_nose_mm + float(scan_rng.normal(0, 3)),
            centre_x_mm=body.centre_x_mm
            + side * (2 * 12.8 * scale * girth + float(scan_rng.uniform(0.5, 3))),
            centre_y_mm=body.centre_y_mm,
            scale=scale,
            girth=girth,
            bend=(0.0, 0.0, 0.0, 0.0),
        )
        paint_envelope(canvas, other, tissues, skin_mm=0.3, fat_mm=0.6)
    tumors = [v * growth for v in _tumor_plan(tumor_rng)]
    n_mets = 0 if anatomy_rng.random() < 0.35 else int(anatomy_rng.integers(1, 31))
    record = paint_mouse(
        canvas,
        body,
        tissues,
        anatomy_rng,
        tumor_volumes_mm3=tumors,
        tumor_rng=tumor_rng,
        n_metastases=n_mets,
        fat_rng=fat_rng,
    )
    labels = canvas.labels
    labels[(labels == BODY) | (labels == SKIN)] = 0

    bed = scan_rng.random() < 0.5
    if bed:
        occupied = np.flatnonzero((canvas.hu > -500).any(axis=(0, 2)))
        paint_bed(canvas.hu, spacing_mm, float(occupied.max() + 1) * spacing_mm, scan_rng)
    scanner = acquire(canvas.hu, spacing_mm, scan_rng)
    ct = np.clip(np.rint(canvas.hu), -1024, 3071).astype(np.int16)

    people = sample_annotators(annot_rng, n_annotators)
    annotator_maps = {a.name: annotate(labels, a, spacing_mm, annot_rng, annotated) for a in people}
    affine = np.diag([spacing_mm, spacing_mm, spacing_mm, 1.0])

    voxel_mm3 = spacing_mm**3
    counts = np.bincount(labels.ravel(), minlength=len(STRUCTURES))
    volumes = {s.name: round(float(counts[s.id]) * voxel_mm3, 3) for s in STRUCTURES[1:]}
    tumor_voxels = int(counts[STRUCTURES[14].id])
    meta: dict[str, object] = {
        "seed": seed,
        "modality": modality,
        "spacing_mm": spacing_mm,
        "time_index": time_index,
        "growth": growth,
        "shape": list(ct.shape),
        "body_length_mm": round(length, 2),
        "neighbour_mouse": bool(neighbour),
        "bed": bool(bed),
        "scanner": scanner,
        "tissues_hu": {k: round(v, 1) for k, v in vars(tissues).items()},
        "volumes_mm3": volumes,
        "tumor_volume_mm3": round(tumor_voxels * voxel_mm3, 3),
        "tumors": record.tumors,
        "metastases": record.metastases,
        "annotators": [vars(a) for a in people],
        "annotated_structures": annotated or "all present",
    }
    return Phantom(ct=ct, labels=labels, annotators=annotator_maps, affine=affine, meta=meta)
