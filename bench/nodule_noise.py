"""Lung metastases found and claimed as a scan gets noisier (issue 19).

A lab's low-dose in-vivo micro-CT often holds 50-80 HU of noise; our phantoms hold 20-40. Each tumor
model given runs through the product's pipeline (``predict_volume``, beside the served organ model)
on:

- the held-out native test phantoms 9000-9007 (``robustness.PhantomSource``; never used in
  training or tuning) as they are and with 40 and 60 HU of white noise added: true lung
  metastases found and false ones, as ``evaluate.metastasis_scores`` counts them (found: a
  predicted metastasis within one voxel; false: a face-connected component that touches none);
- the tumor-free Digimouse atlas rendered as CT (noise seed 1: ``calibrate.atlas_negatives`` tunes
  the nodule rule on seed 2, the robustness report draws seed 0), whole and shoulders to hips, at
  0.85, 1.0 and 1.2 times its length, with 20, 40, 60 and 80 HU of noise: every metastasis is
  false, counted as the lab's lesion table counts them (26-connected components).

    python bench/nodule_noise.py --tumor inference/models/mouse-tumor/2.0.2 \\
        --tumor inference/models/mouse-tumor/2.0.3 [--organs DIR] [--threads 2]

Prints one line per scan and, per tumor model and noise level, metastases found of the true ones,
false ones on the phantoms, and atlas scans with a metastasis counted.
"""

from __future__ import annotations

import sys
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import numpy as np
from scipy import ndimage

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.tumor_fp_probe import models_from_args  # noqa: E402
from inference.phantom import digimouse  # noqa: E402
from inference.pipeline.predict import predict_volume  # noqa: E402
from inference.registry import ModelCard  # noqa: E402
from inference.structures import BY_NAME  # noqa: E402
from inference.training.evaluate import metastasis_scores  # noqa: E402
from inference.training.robustness import PhantomSource  # noqa: E402

TEST_SEEDS = range(9000, 9008)
PHANTOM_EXTRA_NOISE_HU = (0.0, 40.0, 60.0)
ATLAS_NOISE_HU = (20.0, 40.0, 60.0, 80.0)
ATLAS_SIZES = (0.85, 1.0, 1.2)
ATLAS_SEED = 1
METASTASIS = BY_NAME["metastasis"].id
CUBE = np.ones((3, 3, 3), dtype=bool)  # 26-connected lesions, as the pipeline counts them


def _key(card: ModelCard) -> str:
    return f"{card.name} {card.version}"


def main(argv: list[str] | None = None) -> int:
    organs, tumors, threads = models_from_args(__doc__, argv)
    started = time.perf_counter()
    # (model, noise) -> [found, true, false]
    phantoms: dict[tuple[str, float], list[int]] = defaultdict(lambda: [0, 0, 0])
    source = PhantomSource()
    for seed in TEST_SEEDS:
        case = source.native(seed)
        truth = case.labels == METASTASIS
        voxel = float(np.prod(case.spacing_mm))
        for extra in PHANTOM_EXTRA_NOISE_HU:
            noise = np.random.default_rng([seed, int(extra)]).standard_normal(case.ct.shape, dtype=np.float32)
            ct = case.ct.astype(np.float32) + noise * np.float32(extra)
            row = []
            for card in tumors:
                out = predict_volume(ct, case.affine, [organs, card], threads=threads)
                scores = metastasis_scores(np.asarray(out.labels) == METASTASIS, truth, voxel)
                found = sum(lesion["detected"] for lesion in scores["lesions"])
                tally = phantoms[(_key(card), extra)]
                tally[0] += found
                tally[1] += scores["true"]
                tally[2] += scores["false_positives"]
                row.append(f"{_key(card)}: {found}/{scores['true']} found, {scores['false_positives']} false")
            print(f"phantom {seed} +{extra:.0f} HU  " + "  ".join(row), flush=True)
    # (model, noise) -> [scans with a metastasis, metastases]
    atlas_counts: dict[tuple[str, float], list[int]] = defaultdict(lambda: [0, 0])
    atlas = digimouse.load()
    scans = 0
    for size in ATLAS_SIZES:
        mouse = replace(atlas, spacing_mm=atlas.spacing_mm * size)
        for noise_hu in ATLAS_NOISE_HU:
            for crop in ("whole", "torso"):
                scan = digimouse.render_ct(mouse, seed=ATLAS_SEED, crop=crop, noise_hu=noise_hu)
                scans += 1
                row = []
                for card in tumors:
                    out = predict_volume(scan.ct, scan.affine, [organs, card], threads=threads)
                    count = ndimage.label(np.asarray(out.labels) == METASTASIS, CUBE)[1]
                    tally = atlas_counts[(_key(card), noise_hu)]
                    tally[0] += count > 0
                    tally[1] += count
                    row.append(f"{_key(card)}: {count} metastases")
                print(f"atlas x{size:g} {crop:5s} {noise_hu:.0f} HU  " + "  ".join(row), flush=True)
    print(f"\n{time.perf_counter() - started:.0f} s on {threads} threads")
    print("test phantoms 9000-9007, lung metastases found / true, false (per added noise):")
    for card in tumors:
        parts = [
            f"+{extra:.0f} HU {phantoms[(_key(card), extra)][0]}/{phantoms[(_key(card), extra)][1]}, "
            f"{phantoms[(_key(card), extra)][2]} false"
            for extra in PHANTOM_EXTRA_NOISE_HU
        ]
        print(f"  {_key(card)}: " + "; ".join(parts))
    per_noise = scans // len(ATLAS_NOISE_HU)
    print(f"tumor-free atlas, scans with a metastasis counted / {per_noise}, metastases (per noise):")
    for card in tumors:
        parts = [
            f"{noise:.0f} HU {atlas_counts[(_key(card), noise)][0]}, {atlas_counts[(_key(card), noise)][1]}"
            for noise in ATLAS_NOISE_HU
        ]
        print(f"  {_key(card)}: " + "; ".join(parts))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
