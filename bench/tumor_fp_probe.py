"""Does the tumor model claim a tumor in a mouse that has none? (issue 19)

The Digimouse atlas (real anatomy, no tumor) rendered as CT (``inference.phantom.digimouse``) for
mice of five sizes (0.9-1.3 times the atlas' length: about 20-60 g), each cut to the torso at six
places (the robustness report's shoulders-to-hips slab, and its ends moved 3-6 mm either way), under
two tissue models (the default, and the unlabelled body drawn at the organs' own level). Each scan
goes through the product's pipeline (``predict_volume``) with the organ model and each tumor model
given, side by side; every tumor voxel predicted is a false claim, and so is every metastasis
(a lung nodule the tumor model's detection rule finds).

    nice -n 19 python bench/tumor_fp_probe.py --tumor inference/models/mouse-tumor/2.0.0 \\
        --tumor data/models/mouse-tumor-2.1.0 [--organs inference/models/mouse-organs/2.4.1]

Prints one line per scan and, per tumor model, how many scans carry any tumor claim, how many
more than the robustness target of 20 mm^3, and the largest claim. Where the claims sit: the
cranial cut through the shoulders of a large mouse, where each foreleg ends in a stump beside
the chest.

The other side of the trade: true tumors cut by the field of view. Each tumor of the held-out
test phantoms 9000-9007 (``robustness.PhantomSource``) is cut through its middle across the long
axis, and each half is segmented on its own (the scan ending in the tumor's middle, cranially or
caudally); printed is the Dice of the predicted tumor near that half (within 6 voxels) against
it, and per model the median over the halves. Such a scan's tumor volume is a lower bound at
best, and the QC gate sends it to review (``tumor_at_field_edge``).

The third part: fields narrower than the mouse. The torso slab of the atlas (sizes 1.0 and 1.2),
cut in-plane through the body from either side, left-right and back-belly, by 10, 20 and 30 % of
the body's width (24 tumor-free scans). The pipeline continues only the cranial and caudal ends
(``infer.cut_faces``); this part says whether the in-plane faces need it too.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from scipy import ndimage

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from inference.metrics import dice  # noqa: E402
from inference.phantom import digimouse  # noqa: E402
from inference.pipeline.predict import predict_volume  # noqa: E402
from inference.registry import ModelCard, default_model, load_card  # noqa: E402
from inference.structures import BY_NAME  # noqa: E402
from inference.training.robustness import PhantomSource  # noqa: E402

SIZES = (0.9, 1.0, 1.1, 1.2, 1.3)
#: Moves of the torso slab's (caudal, cranial) ends, in output voxels of 0.21 mm.
CUTS = ((0, 0), (0, -15), (0, 15), (-10, 30), (10, -30), (20, 0))
TISSUES = {"default": None, "plain body": {"soft_tissue": 55.0, "muscle": 55.0}}
TARGET_MM3 = 20.0
TEST_SEEDS = range(9000, 9008)
INPLANE_SIZES = (1.0, 1.2)
INPLANE_SHARES = (0.1, 0.2, 0.3)
SPACING_MM = 0.21
CUBE = np.ones((3, 3, 3), dtype=bool)  # 26-connected lesions, as the pipeline counts them


def models_from_args(
    description: str | None, argv: list[str] | None
) -> tuple[ModelCard, list[ModelCard], int]:
    """``--tumor DIR`` (repeat), ``--organs DIR`` and ``--threads N`` of a tumor bench: the organ
    model (the served one by default), the tumor models and the threads."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--tumor", action="append", type=Path, required=True, help="tumor model folder (repeat)"
    )
    parser.add_argument("--organs", type=Path, help="organ model folder (default: the one served)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    organs = load_card(args.organs) if args.organs else default_model("organs")
    return organs, [load_card(folder) for folder in args.tumor], args.threads


def main(argv: list[str] | None = None) -> int:
    organs, tumors, threads = models_from_args(__doc__, argv)
    tumor_id, metastasis_id = BY_NAME["tumor"].id, BY_NAME["metastasis"].id
    voxel = SPACING_MM**3
    atlas = digimouse.load()
    claims: dict[str, list[float]] = {f"{c.name} {c.version}": [] for c in tumors}
    metastases: dict[str, list[int]] = {key: [] for key in claims}
    started = time.perf_counter()
    for size in SIZES:
        mouse = replace(atlas, spacing_mm=atlas.spacing_mm * size)
        for tissue, hu in TISSUES.items():
            whole = digimouse.render_ct(mouse, seed=1, spacing_mm=SPACING_MM, crop="whole", hu=hu)
            low, high = digimouse.torso_range(whole.labels, SPACING_MM)
            for d_low, d_high in CUTS:
                a, b = max(low + d_low, 0), min(high + d_high, whole.ct.shape[2])
                ct = np.ascontiguousarray(whole.ct[:, :, a:b])
                row = []
                for card, key in zip(tumors, claims, strict=True):
                    out = predict_volume(ct, whole.affine, [organs, card], threads=threads)
                    mm3 = float((np.asarray(out.labels) == tumor_id).sum()) * voxel
                    claims[key].append(mm3)
                    metastases[key].append(ndimage.label(np.asarray(out.labels) == metastasis_id, CUBE)[1])
                    row.append(f"{key}: {mm3:6.1f} mm3, {metastases[key][-1]} metastases")
                print(
                    f"size {size:.2f}  {tissue:10s}  cut {d_low:+4d} / {d_high:+4d}  " + "  ".join(row),
                    flush=True,
                )
    print(
        f"\n{len(SIZES) * len(TISSUES) * len(CUTS)} tumor-free scans, {time.perf_counter() - started:.0f} s"
    )
    for key, values in claims.items():
        v = np.array(values)
        print(
            f"{key}: any tumor claimed in {int((v > 0).sum())}, over {TARGET_MM3:.0f} mm3 in "
            f"{int((v > TARGET_MM3).sum())}, largest {v.max():.1f} mm3, total {v.sum():.1f} mm3; "
            f"metastases in {sum(n > 0 for n in metastases[key])} scans, {sum(metastases[key])} in all"
        )
    cut_tumors(organs, tumors, threads)
    inplane_cuts(organs, tumors, threads)
    return 0


def cut_tumors(organs: ModelCard, tumors: list[ModelCard], threads: int) -> None:
    """Dice of each half of every test-phantom tumor, cut through its middle by the field."""
    tumor_id = BY_NAME["tumor"].id
    scores: dict[str, list[float]] = {f"{c.name} {c.version}": [] for c in tumors}
    print("\ntrue tumors cut through their middle by the field of view")
    for seed in TEST_SEEDS:
        case = PhantomSource().native(seed)
        components, count = ndimage.label(case.labels == tumor_id)
        for i in range(1, count + 1):
            cut = int(np.median(np.argwhere(components == i)[:, 2]))
            for half, kept in (("caudal half", slice(0, cut)), ("cranial half", slice(cut, None))):
                truth = components[:, :, kept] == i
                ct = np.ascontiguousarray(case.ct[:, :, kept])
                row = []
                for card, key in zip(tumors, scores, strict=True):
                    out = predict_volume(ct, case.affine, [organs, card], threads=threads)
                    found = (np.asarray(out.labels) == tumor_id) & ndimage.binary_dilation(
                        truth, CUBE, iterations=6
                    )
                    scores[key].append(dice(found, truth))
                    row.append(f"{key}: Dice {scores[key][-1]:.3f}")
                mm3 = float(truth.sum()) * SPACING_MM**3
                print(f"phantom {seed} tumor {i} {half:12s} {mm3:5.0f} mm3  " + "  ".join(row), flush=True)
    for key, values in scores.items():
        print(
            f"{key}: median Dice of {len(values)} cut halves {np.median(values):.3f}, "
            f"lowest {min(values):.3f}"
        )


def inplane_slabs(size: float) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """The atlas' torso slab at ``size`` cut in-plane through the body: (what, CT, affine)."""
    atlas = digimouse.load()
    whole = digimouse.render_ct(
        replace(atlas, spacing_mm=atlas.spacing_mm * size), seed=1, spacing_mm=SPACING_MM, crop="whole"
    )
    low, high = digimouse.torso_range(whole.labels, SPACING_MM)
    ct, body = whole.ct[:, :, low:high], whole.labels[:, :, low:high] > 0
    slabs = []
    for axis, name in ((0, "left-right"), (1, "back-belly")):
        extent = np.nonzero(body.any(axis=tuple(a for a in range(3) if a != axis)))[0]
        first, last = int(extent[0]), int(extent[-1])
        for share in INPLANE_SHARES:
            cut = int(share * (last - first))
            for side in ("low", "high"):
                kept = [slice(None)] * 3
                affine = whole.affine.copy()
                if side == "high":
                    kept[axis] = slice(0, last - cut)
                else:  # the array starts later: so does the world position of its first voxel
                    kept[axis] = slice(first + cut, None)
                    affine[:3, 3] += affine[:3, axis] * (first + cut)
                what = f"size {size:.2f}  {name:10s}  {share:.0%} cut from the {side} side"
                slabs.append((what, np.ascontiguousarray(ct[tuple(kept)]), affine))
    return slabs


def inplane_cuts(organs: ModelCard, tumors: list[ModelCard], threads: int) -> None:
    """Tumor claims in the atlas' torso cut in-plane through the body (the docstring's third part)."""
    tumor_id = BY_NAME["tumor"].id
    claims: dict[str, list[float]] = {f"{c.name} {c.version}": [] for c in tumors}
    print("\ntumor-free torsos cut in-plane through the body")
    for size in INPLANE_SIZES:
        for what, ct, affine in inplane_slabs(size):
            row = []
            for card, key in zip(tumors, claims, strict=True):
                out = predict_volume(ct, affine, [organs, card], threads=threads)
                claims[key].append(float((np.asarray(out.labels) == tumor_id).sum()) * SPACING_MM**3)
                row.append(f"{key}: {claims[key][-1]:6.1f} mm3")
            print(f"{what}  " + "  ".join(row), flush=True)
    for key, values in claims.items():
        v = np.array(values)
        print(
            f"{key}: any tumor claimed in {int((v > 0).sum())} of {len(v)}, over {TARGET_MM3:.0f} mm3 in "
            f"{int((v > TARGET_MM3).sum())}, largest {v.max():.1f} mm3"
        )


if __name__ == "__main__":
    raise SystemExit(main())
