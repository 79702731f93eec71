"""``python -m inference.phantom --out DIR --n N --seed S``: write phantoms to disk."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from inference.phantom.writer import write_dataset


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m inference.phantom", description=__doc__)
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--n", type=int, default=1, help="phantoms (flat) or mice (tumor-db)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first phantom; the i-th uses seed+i")
    parser.add_argument("--spacing", type=float, default=0.21, help="isotropic voxel size in mm")
    parser.add_argument("--modality", choices=("native", "contrast"), default="native")
    parser.add_argument("--layout", choices=("flat", "tumor-db"), default="flat")
    parser.add_argument("--annotators", type=int, default=3, help="simulated annotators per phantom")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    write_dataset(
        args.out,
        n=args.n,
        seed=args.seed,
        spacing_mm=args.spacing,
        modality=args.modality,
        layout=args.layout,
        n_annotators=args.annotators,
    )


if __name__ == "__main__":
    main()
