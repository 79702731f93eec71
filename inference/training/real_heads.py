"""``python -m inference.training.real_heads [--model DIR ...] [--json OUT]``: the real heads scored.

The real mouse heads of ``../shared/realdata/mouse_ct_atlas/`` (8-bit micro-CT, never trained on)
have no label map of their own. The atlas beside them has one: a skull template (the average of 23
strains) whose labels 1, 2, 3 and 21 are skull bones and 15 the endocranial cavity, where the brain
lies (its README). This command registers that template onto each head (``register_template``:
SimpleITK, Mattes mutual information; a rigid fit from 96 starting poses, then affine), carries
the template's labels onto the head's voxels, and scores what the product draws there
(``predict_volume``, exactly as for an upload):

- ``brain``: Dice of the drawn brain against the registered endocranial cavity, with both volumes.
  The cavity also holds cerebrospinal fluid and meninges, so a perfect brain stays a little under
  it and under Dice 1.
- ``bones``: Dice of the drawn bones against the registered skull, counted only where the template
  reaches (its labels grown by ``REACH_MM``): the scans also hold vertebrae and forelimbs, which
  the template lacks.
- ``ceiling``: the best bone Dice that any threshold of the head's own intensities reaches there
  (``best_threshold_dice``): how far the registration alone lets a bone map agree with it.

Every figure here is on real anatomy from a source no model trained on: the only such figures the
repository has.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk  # noqa: N813  (the name every SimpleITK example uses)
from scipy import ndimage

from inference.metrics import dice
from inference.phantom.digimouse import DEFAULT_DIR as DIGIMOUSE_DIR
from inference.pipeline import predict_volume
from inference.pipeline.io import load_scan
from inference.pipeline.orientation import AxisTransform
from inference.registry import ModelCard, find_model, load_card
from inference.structures import BY_NAME
from inference.training.robustness import DEFAULT_MODELS, report_parser, write_report

#: The atlas folder beside the Digimouse one (``../shared/realdata/mouse_ct_atlas``).
DEFAULT_DIR = DIGIMOUSE_DIR.parent / "mouse_ct_atlas"
#: The raw strain scans (the README's files 1 and its second raw scan).
HEADS = ("C57BL6_J_.nii.gz", "BALB_CJ_.nii.gz")
TEMPLATE = "low_res_template_UCHAR.nii.gz"
TEMPLATE_LABELS = "low_res_template_UCHAR-label.nii.gz"
#: The template's skull bones and its endocranial cavity (README: mean intensities 21-32 and 1.1).
SKULL_LABELS = (1, 2, 3, 21)
CAVITY_LABEL = 15
#: Bones are scored this far round the registered template (the skull's own thickness and the
#: affine fit's slack), not beyond: the scans' vertebrae and forelimbs have no template.
REACH_MM = 0.5
#: The template's brightest voxel is 87 (an average blurs bone); one scan's teeth reach 255. The
#: head is clipped at this percentile of its matter so that bone, not enamel, drives the fit.
CLIP_PERCENTILE = 99.0
#: The starting poses are tried on a copy this many voxels coarser (0.85 mm), each for this many
#: steps: enough to tell the right pose from the wrong ones (see ``register_template``).
COARSE_SHRINK = 6
COARSE_ITERATIONS = 30


@dataclass(frozen=True)
class Registration:
    """The template's labels on the head's voxels (x, y, z as the file stores them) and the fit."""

    labels: np.ndarray
    metric: float
    start: int
    matrix: list[list[float]]
    seconds: float


def _proper_rotations() -> list[np.ndarray]:
    """The 24 rotations that map axes onto axes, each also turned 45 degrees about each axis."""
    axis_turns = [t.matrix.astype(float) for t in AxisTransform.every() if not t.is_mirror]
    quarter = []
    for axis in range(3):
        i, j = (k for k in range(3) if k != axis)
        r = np.eye(3)
        r[i, i] = r[j, j] = np.cos(np.pi / 4)
        r[i, j], r[j, i] = -np.sin(np.pi / 4), np.sin(np.pi / 4)
        quarter.append(r)
    return [base @ turn for base in axis_turns for turn in (np.eye(3), *quarter)]


def _centre(image: sitk.Image, above: float) -> np.ndarray:
    """Physical centre (mm, SimpleITK's LPS) of the voxels above ``above``."""
    array = sitk.GetArrayViewFromImage(image)
    index = np.argwhere(array > above)[:, ::-1].astype(float)  # z, y, x -> x, y, z
    if not len(index):
        raise ValueError("nothing above the background to register")
    direction = np.array(image.GetDirection()).reshape(3, 3)
    spacing, origin = np.array(image.GetSpacing()), np.array(image.GetOrigin())
    return origin + direction @ (spacing * index.mean(axis=0))


def _fit(
    fixed: sitk.Image,
    moving: sitk.Image,
    transform: sitk.Transform,
    *,
    shrink: Sequence[int],
    smooth_mm: Sequence[float],
    iterations: int,
) -> float:
    """Optimise ``transform`` in place (moving -> fixed); returns the final metric (lower is better)."""
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(0.1, seed=1)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsGradientDescent(
        learningRate=1.0,
        numberOfIterations=iterations,
        convergenceMinimumValue=1e-6,
        convergenceWindowSize=10,
        estimateLearningRate=method.EachIteration,
    )
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel(list(shrink))
    method.SetSmoothingSigmasPerLevel(list(smooth_mm))
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    method.SetInitialTransform(transform, inPlace=True)
    method.Execute(fixed, moving)
    return float(method.GetMetricValue())


def register_template(head_path: Path, atlas_dir: Path = DEFAULT_DIR) -> Registration:
    """Register the atlas' skull template onto the head at ``head_path`` and carry its labels over.

    The heads lie obliquely, so a rigid fit is started from each of 96 poses (every axis-aligned
    turn, and each turned 45 degrees about each axis) at 0.85 mm; the best two are refined at full
    resolution, the better one made affine (the strains differ in size and proportion)."""
    started = time.perf_counter()
    head = sitk.ReadImage(str(head_path), sitk.sitkFloat32)
    template = sitk.ReadImage(str(atlas_dir / TEMPLATE), sitk.sitkFloat32)
    labels = sitk.ReadImage(str(atlas_dir / TEMPLATE_LABELS), sitk.sitkUInt8)
    values = sitk.GetArrayViewFromImage(head)
    matter = values[values > 0]
    if matter.size == 0:
        raise ValueError(f"{head_path.name}: the scan is empty")
    fixed = sitk.Clamp(head, sitk.sitkFloat32, 0.0, float(np.percentile(matter, CLIP_PERCENTILE)))
    head_centre = _centre(head, float(np.percentile(matter, 90)))
    template_centre = _centre(template, 10.0)

    def start(rotation: np.ndarray) -> sitk.Euler3DTransform:
        transform = sitk.Euler3DTransform()
        transform.SetCenter(head_centre.tolist())
        transform.SetMatrix(rotation.ravel().tolist())
        transform.SetTranslation((template_centre - head_centre).tolist())
        return transform

    # The coarse copies are made once: each fit would otherwise smooth and shrink the full images.
    fixed_coarse, template_coarse = (
        sitk.Shrink(sitk.SmoothingRecursiveGaussian(image, 0.6), [COARSE_SHRINK] * 3)
        for image in (fixed, template)
    )
    coarse = []
    for number, rotation in enumerate(_proper_rotations()):
        transform = start(rotation)
        try:
            metric = _fit(
                fixed_coarse,
                template_coarse,
                transform,
                shrink=[1],
                smooth_mm=[0.0],
                iterations=COARSE_ITERATIONS,
            )
        except RuntimeError:  # this start drifted off the head: the metric has no overlap to read
            continue
        coarse.append((metric, number, transform))
    if not coarse:
        raise ValueError(f"{head_path.name}: the skull template overlaps the scan from no starting pose")
    coarse.sort(key=lambda item: item[0])
    try:
        refined = []
        for _, number, transform in coarse[:2]:
            metric = _fit(fixed, template, transform, shrink=[2, 1], smooth_mm=[0.3, 0.0], iterations=100)
            refined.append((metric, number, transform))
        _, best_start, rigid = min(refined, key=lambda item: item[0])
        affine = sitk.AffineTransform(3)
        affine.SetCenter(rigid.GetCenter())
        affine.SetMatrix(rigid.GetMatrix())
        affine.SetTranslation(rigid.GetTranslation())
        metric = _fit(fixed, template, affine, shrink=[2, 1], smooth_mm=[0.3, 0.0], iterations=150)
    except RuntimeError as error:
        raise ValueError(f"{head_path.name}: the skull template could not be fitted: {error}") from None
    carried = sitk.Resample(labels, head, affine, sitk.sitkNearestNeighbor, 0)
    return Registration(
        labels=np.ascontiguousarray(sitk.GetArrayFromImage(carried).transpose(2, 1, 0)),
        metric=round(metric, 4),
        start=best_start,
        matrix=np.array(affine.GetMatrix()).reshape(3, 3).round(4).tolist(),
        seconds=round(time.perf_counter() - started, 1),
    )


def best_threshold_dice(volume: np.ndarray, skull: np.ndarray, where: np.ndarray, steps: int = 64) -> float:
    """The best bone Dice any intensity threshold of the head reaches against ``skull`` in ``where``.

    A template of averaged strains, fitted affinely, cannot match one mouse's thin bones voxel for
    voxel, and it leaves some bone unlabelled: this is how far the registration lets a bone map
    agree with it, the ceiling for the drawn bones' Dice."""
    values = np.asarray(volume, dtype=np.float32)[where]
    inside = skull[where]
    thresholds = np.unique(np.quantile(values, np.linspace(0.5, 0.999, steps)))
    best = 0.0
    for threshold in thresholds:
        above = values > threshold
        best = max(best, dice(above, inside))
    return best


def score_head(
    head_path: Path,
    cards: Sequence[ModelCard],
    *,
    atlas_dir: Path = DEFAULT_DIR,
    threads: int = 2,
) -> dict[str, Any]:
    """Segment one real head as the product does and score it against the registered template."""
    scan = load_scan(head_path)
    volume = scan.data
    spacing = [float(v) for v in scan.header.get_zooms()[:3]]
    voxel = float(np.prod(spacing))
    registration = register_template(head_path, atlas_dir)
    started = time.perf_counter()
    out = predict_volume(volume, scan.affine, cards, threads=threads)
    seconds = time.perf_counter() - started
    labels = np.asarray(out.labels)
    atlas = registration.labels
    skull = np.isin(atlas, SKULL_LABELS)
    cavity = atlas == CAVITY_LABEL
    reach = [max(1, round(REACH_MM / s)) for s in spacing]
    footprint = ndimage.binary_dilation(atlas > 0, structure=np.ones([2 * r + 1 for r in reach], bool))
    brain = labels == BY_NAME["brain"].id
    bones = labels == BY_NAME["bones"].id
    return {
        "head": head_path.name,
        "brain": {
            "dice": round(dice(brain, cavity), 4),
            "drawn_mm3": round(float(brain.sum()) * voxel, 1),
            "cavity_mm3": round(float(cavity.sum()) * voxel, 1),
            "inside_cavity": round(float((brain & cavity).sum()) / max(int(brain.sum()), 1), 4),
        },
        "bones": {
            "dice": round(dice(bones & footprint, skull), 4),
            "ceiling": round(best_threshold_dice(volume, skull, footprint), 4),
            "skull_mm3": round(float(skull.sum()) * voxel, 1),
        },
        "registration": {
            "metric": registration.metric,
            "start": registration.start,
            "matrix": registration.matrix,
            "seconds": registration.seconds,
        },
        "segment_seconds": round(seconds, 2),
    }


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """One line per head: brain and bones against the registered template."""
    lines = [
        "head              brain Dice  drawn / cavity mm3   bones Dice  (registration ceiling)",
    ]
    for row in rows:
        brain, bones = row["brain"], row["bones"]
        lines.append(
            f"{row['head']:<17} {brain['dice']:>10.3f}  {brain['drawn_mm3']:>6.0f} / "
            f"{brain['cavity_mm3']:<6.0f}     {bones['dice']:>10.3f}  ({bones['ceiling']:.3f})"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = report_parser("inference.training.real_heads", __doc__)
    parser.add_argument("--atlas", type=Path, default=DEFAULT_DIR, help="the mouse_ct_atlas folder")
    args = parser.parse_args(argv)
    missing = [name for name in (*HEADS, TEMPLATE, TEMPLATE_LABELS) if not (args.atlas / name).is_file()]
    if missing:
        parser.exit(2, f"real_heads: {args.atlas} lacks {', '.join(missing)}\n")
    try:
        folders = args.model or [find_model(name).folder for name in DEFAULT_MODELS]
        cards = [load_card(folder) for folder in folders]
        rows = [
            score_head(args.atlas / name, cards, atlas_dir=args.atlas, threads=args.threads) for name in HEADS
        ]
    except ValueError as error:  # a model folder that holds no model, or a head the fit cannot place
        parser.exit(2, f"real_heads: {error}\n")
    report = {"models": [card.key for card in cards], "heads": rows}
    write_report(report, args.json, "inference.training.real_heads", argv)
    sys.stdout.write(format_table(rows) + "\n")


if __name__ == "__main__":
    main()
