"""How well the anatomy finds a mouse's pose (pipeline/orientation.py), and what it is worth.

    python bench/orientation_check.py poses --seeds 0-11 --spacing 0.42 [--variant hu|8bit|8bit-noisy]
    python bench/orientation_check.py speed [--spacing 0.21] [--seed 9000]
    python bench/orientation_check.py dice [--seed 9000] [--threads 2]

``poses``: every phantom in all 48 axis permutations with flips; a pose counts as exact when the
finder's turn puts the mouse back, "mirror undecided" when only left/right is left as the header
had it (reported as such, never guessed), "kept header" when the evidence was too weak, and
wrong otherwise. ``8bit`` maps -1000..2000 HU to 0..255; ``8bit-noisy`` adds Gaussian noise of 6
grey levels first. ``speed``: seconds of ``find_orientation`` on a full-size phantom.
``dice``: the committed organ and tumor models on the phantom as scanned (prone), supine and
lateral (the header unchanged), with the anatomy's orientation and with the header's alone.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter

import numpy as np

from inference.metrics.overlap import dice
from inference.phantom import generate_phantom
from inference.pipeline import predict_volume
from inference.pipeline.orientation import AxisTransform, find_orientation
from inference.registry import default_model

MIRROR_X = AxisTransform(((0, -1), (1, 1), (2, 1)))
POSES = {
    "prone": AxisTransform(),
    "supine": AxisTransform(((0, -1), (1, -1), (2, 1))),
    "lateral": AxisTransform(((1, 1), (0, -1), (2, 1))),
}
GROUPS = {"heart": (1,), "lungs": (2, 3), "liver": (4,), "kidneys": (5, 6)}


def seeds(text: str) -> list[int]:
    if "-" in text:
        first, last = (int(v) for v in text.split("-"))
        return list(range(first, last + 1))
    return [int(v) for v in text.split(",")]


def variant_of(ct: np.ndarray, variant: str, seed: int) -> np.ndarray:
    if variant == "hu":
        return ct
    grey = (ct.astype(np.float32) + 1000.0) * (255.0 / 3000.0)
    if variant == "8bit-noisy":
        grey += np.random.default_rng(seed).normal(0.0, 6.0, ct.shape).astype(np.float32)
    return np.clip(np.rint(grey), 0, 255).astype(np.uint8)


def run_poses(args: argparse.Namespace) -> None:
    total: Counter[str] = Counter()
    seconds: list[float] = []
    for seed in seeds(args.seeds):
        phantom = generate_phantom(seed, spacing_mm=args.spacing, n_annotators=0)
        ct = variant_of(phantom.ct, args.variant, seed)
        counts: Counter[str] = Counter()
        for pose in AxisTransform.every():
            finding = find_orientation(pose.apply(ct), pose.spacing((args.spacing,) * 3))
            seconds.append(finding.seconds)
            net = pose.then(finding.transform)
            if net.is_identity:
                counts["exact"] += 1
            elif finding.kept == "left-right" and net == MIRROR_X:
                counts["mirror undecided"] += 1
            elif finding.kept == "header" and finding.transform.is_identity:
                counts["kept header"] += 1
            else:
                counts["wrong"] += 1
        total += counts
        print(f"seed {seed}: {dict(counts)}", flush=True)
    print(
        f"{args.variant} {args.spacing} mm, {len(seconds)} poses: {dict(total)}; "
        f"median {np.median(seconds):.3f} s, max {np.max(seconds):.3f} s"
    )


def run_speed(args: argparse.Namespace) -> None:
    ct = generate_phantom(args.seed, spacing_mm=args.spacing, n_annotators=0).ct
    for name, pose in POSES.items():
        scan = pose.apply(ct)
        wall, cpu = [], []
        for _ in range(5):
            start, start_cpu = time.perf_counter(), time.process_time()
            finding = find_orientation(scan, pose.spacing((args.spacing,) * 3))
            wall.append(time.perf_counter() - start)
            cpu.append(time.process_time() - start_cpu)
        # CPU seconds as well: on a shared machine the wall clock mostly measures the others.
        turn = finding.transform.describe()
        print(
            f"{name} {scan.shape}: {np.median(wall):.3f} s wall, {np.median(cpu):.3f} s CPU "
            f"(medians of 5), turn: {turn}"
        )


def run_dice(args: argparse.Namespace) -> None:
    phantom = generate_phantom(args.seed, spacing_mm=0.21, n_annotators=0)
    affine = np.diag([0.21, 0.21, 0.21, 1.0])
    cards = [default_model("organs"), default_model("tumor")]
    print(f"models: {', '.join(card.key for card in cards)}; phantom seed {args.seed} {phantom.ct.shape}")
    for name, pose in POSES.items():
        truth = pose.apply(phantom.labels)
        for orient in ("anatomy", "header"):
            if name == "prone" and orient == "header":
                continue
            start = time.perf_counter()
            out = predict_volume(pose.apply(phantom.ct), affine, cards, threads=args.threads, orient=orient)
            scores = {
                group: dice(np.isin(out.labels, ids), np.isin(truth, ids)) for group, ids in GROUPS.items()
            }
            turn = out.orientation.transform.describe() if out.orientation is not None else "(header)"
            print(
                f"{name:8s} orient={orient:8s} "
                + " ".join(f"{g} {v:.3f}" for g, v in scores.items())
                + f"  [{time.perf_counter() - start:.0f} s; turn: {turn}]",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    poses = commands.add_parser("poses")
    poses.add_argument("--seeds", default="0-11")
    poses.add_argument("--spacing", type=float, default=0.42)
    poses.add_argument("--variant", choices=("hu", "8bit", "8bit-noisy"), default="hu")
    speed = commands.add_parser("speed")
    speed.add_argument("--spacing", type=float, default=0.21)
    speed.add_argument("--seed", type=int, default=9000)
    check = commands.add_parser("dice")
    check.add_argument("--seed", type=int, default=9000)
    check.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    {"poses": run_poses, "speed": run_speed, "dice": run_dice}[args.command](args)


if __name__ == "__main__":
    main()
