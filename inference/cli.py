"""Command line for scripts and benchmarks; no server, no database, no Django.

    python -m inference segment SCAN.nii.gz --out DIR [--task organs,tumor] [--device cpu|cuda]
                                [--threads N] [--model DIR ...] [--lesions MASK_OR_CSV]
                                [--organs LABELS.nii.gz] [--min-lesion-mm3 V] [--intensity auto|hu]
                                [--orient anatomy|header]
    python -m inference allocate --organs LABELS.nii.gz --lesions MASK_OR_CSV --out DIR
    python -m inference models [--root DIR] [--json]

Bad input (a missing or unreadable file, an unknown task, a broken model folder, CUDA where there
is none, a scan whose values are not Hounsfield units and cannot be calibrated to them) prints one
plain sentence on stderr and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Collection, Sequence
from pathlib import Path

from inference.assessment import judge_volume
from inference.pipeline.intensity import MODES as INTENSITY_MODES
from inference.pipeline.intensity import IntensityCalibrationError
from inference.pipeline.io import ScanReadError, load_label_map
from inference.pipeline.lesions import LesionInputError, allocate, metastasis_counts, write_lesions_csv
from inference.pipeline.orientation import ORIENT_CHOICES
from inference.pipeline.runtime import DEVICES, DeviceError
from inference.pipeline.segment import read_lesion_source, segment_file
from inference.pipeline.volumes import VolumeRow
from inference.registry import DEFAULT_MODELS_DIR, TASKS, ModelCardError, discover_models, load_card

EXIT_BAD_INPUT = 2
_BAD_INPUT = (
    ScanReadError,
    ModelCardError,
    LesionInputError,
    DeviceError,
    FileNotFoundError,
    IntensityCalibrationError,
)


class BadInputError(Exception):
    """Something the user can fix on the command line."""


def _tasks(text: str) -> tuple[str, ...]:
    tasks = tuple(t.strip() for t in text.split(",") if t.strip())
    unknown = [t for t in tasks if t not in TASKS]
    if not tasks or unknown:
        raise argparse.ArgumentTypeError(f"tasks are a comma-separated subset of {', '.join(TASKS)}")
    return tasks


def _threads(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("threads must be 0 (automatic) or more")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m inference", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    segment = commands.add_parser("segment", help="segment one NIfTI scan")
    segment.add_argument("scan", type=Path, help="the scan (.nii or .nii.gz)")
    segment.add_argument("--out", type=Path, required=True, help="folder for the outputs (created)")
    segment.add_argument("--task", type=_tasks, default=TASKS, help="organs,tumor (default: both)")
    segment.add_argument("--device", choices=DEVICES, default="auto")
    segment.add_argument("--threads", type=_threads, default=0, help="CPU threads (0 = automatic)")
    segment.add_argument(
        "--model",
        type=Path,
        action="append",
        default=None,
        help="a model folder (model.onnx + model.json); repeat for several; default: the registry's",
    )
    segment.add_argument(
        "--lesions", type=Path, default=None, help="lesion mask (NIfTI) or CSV of x_mm,y_mm,z_mm"
    )
    segment.add_argument(
        "--organs", type=Path, default=None, help="organ label map of an earlier run, for a tumor-only run"
    )
    segment.add_argument("--min-lesion-mm3", type=float, default=None, help="smallest lesion kept (mm^3)")
    segment.add_argument(
        "--intensity",
        choices=INTENSITY_MODES,
        default="auto",
        help="auto: check that the values are Hounsfield units, else calibrate them from the scan's air "
        "and soft-tissue peaks (default); hu: take them as Hounsfield units unchecked",
    )
    segment.add_argument(
        "--orient",
        choices=ORIENT_CHOICES,
        default="anatomy",
        help="anatomy: turn the scan when its anatomy (spine, lungs, skull) shows the mouse lying "
        "otherwise than the header says (default); header: trust the header's orientation",
    )
    segment.add_argument("--quiet", action="store_true", help="no progress lines")

    allocate_cmd = commands.add_parser("allocate", help="allocate lesions to the organs of a label map")
    allocate_cmd.add_argument("--organs", type=Path, required=True, help="organ label map (NIfTI)")
    allocate_cmd.add_argument("--lesions", type=Path, required=True, help="lesion mask (NIfTI) or CSV")
    allocate_cmd.add_argument(
        "--out", type=Path, required=True, help="folder for lesions.csv and metastases.json"
    )

    models = commands.add_parser("models", help="list the model registry")
    models.add_argument("--root", type=Path, default=DEFAULT_MODELS_DIR)
    models.add_argument("--json", action="store_true", help="print the cards as JSON")
    return parser


def _progress(quiet: bool):  # type: ignore[no-untyped-def]
    if quiet:
        return None

    def show(percent: int, stage: str) -> None:
        sys.stderr.write(f"{percent:3d}% {stage}\n")

    return show


def run_segment(args: argparse.Namespace) -> int:
    if not args.scan.is_file():
        raise BadInputError(f"no such scan: {args.scan}")
    cards = [load_card(folder) for folder in args.model] if args.model else None
    if cards is not None:
        cards = [card for card in cards if card.task in args.task]
        if not cards:
            raise BadInputError(f"none of the given models is for the task(s) {', '.join(args.task)}")
    extra = {} if args.min_lesion_mm3 is None else {"min_lesion_volume_mm3": args.min_lesion_mm3}
    result = segment_file(
        args.scan,
        args.out,
        cards=cards,
        tasks=args.task,
        device=args.device,
        threads=args.threads,
        progress=_progress(args.quiet),
        lesions_from=args.lesions,
        organs_from=args.organs,
        intensity=args.intensity,
        orient=args.orient,
        **extra,
    )
    seconds = result.manifest["seconds"]
    providers = sorted({m["provider"] for m in result.manifest["models"]})
    print(f"wrote {result.labels_path.parent} in {seconds['total']:.2f} s on {', '.join(providers)}")
    intensity = result.manifest.get("intensity") or {}
    if intensity.get("units") == "calibrated":
        print(f"  intensity calibrated: HU = {intensity['slope']:.6g} x value {intensity['intercept']:+.6g}")
    orientation = result.manifest.get("orientation") or {}
    if orientation.get("agrees_with_header") is False:
        print(f"  orientation: {orientation['summary']}")
    for model in result.manifest["models"]:
        if model.get("size_scale", 1.0) < 1.0:
            print(
                f"  {model['name']} {model['version']}: a mouse larger than those it learned, read again "
                f"shrunk to {model['size_scale']:.2f} of its size and the two readings averaged"
            )
    qc = result.manifest.get("qc") or {}
    for line in volume_lines(result.volumes, qc.get("cut_by_field", [])):
        print(line)
    print(f"  lesions: {len(result.lesions)}")
    if qc:
        print(f"  quality check: {str(qc['status']).replace('_', ' ')}")
        for reason in qc.get("reasons", []):
            print(f"    - {reason['message']}")
    return 0


def volume_lines(volumes: Sequence[VolumeRow], cut: Collection[str]) -> list[str]:
    """One printed line per structure: its volume and range, or why there is none (``judge_volume``:
    an organ not found is never "0 mm3", the scan may not hold it)."""
    lines = []
    for row in volumes:
        found, assessment = judge_volume(row.structure_id, row.voxels, cut)
        if found:
            low_high = f"{row.volume_low_mm3:.2f}-{row.volume_high_mm3:.2f}"
            lines.append(f"  {row.name:<14} {row.volume_mm3:12.2f} mm3  ({low_high})")
        else:
            lines.append(f"  {row.name:<14} {'-':>12}      {assessment}")
    return lines


def run_allocate(args: argparse.Namespace) -> int:
    organs = load_label_map(args.organs)
    data, structure_id = read_lesion_source(args.lesions, organs)
    options = {} if structure_id is None else {"default_structure_id": structure_id}
    lesions = allocate(organs.data, organs.affine, data, **options)
    counts = metastasis_counts(lesions)
    args.out.mkdir(parents=True, exist_ok=True)
    write_lesions_csv(args.out / "lesions.csv", lesions)
    (args.out / "metastases.json").write_text(json.dumps({"metastasis_counts": counts}, indent=2))
    print(f"{len(lesions)} lesions written to {args.out / 'lesions.csv'}")
    for organ, count in counts.items():
        if count:
            print(f"  {organ:<20} {count}")
    return 0


def run_models(args: argparse.Namespace) -> int:
    cards = discover_models(args.root)
    if args.json:
        print(json.dumps([card.as_json() for card in cards], indent=2))
        return 0
    if not cards:
        print(f"no models in {args.root}")
        return 0
    for card in cards:
        flag = " (default)" if card.default else ""
        spacing = "x".join(f"{s:g}" for s in card.input_spacing_mm)
        print(f"{card.task:<7} {card.key:<32} {spacing} mm  sha256 {card.sha256[:12]}{flag}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handlers = {"segment": run_segment, "allocate": run_allocate, "models": run_models}
    try:
        return handlers[args.command](args)
    except (BadInputError, *_BAD_INPUT) as error:
        sys.stderr.write(f"error: {error}\n")
        return EXIT_BAD_INPUT
