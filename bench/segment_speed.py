"""How fast is labseg's organ + tumor pipeline, against the AIMOS architecture on the same volumes?

Two whole-body volumes: 192 x 192 x 520 voxels at 0.21 mm (the tumor database's
shape) and 288 x 206 x 396 at 0.14 mm (the organ CT database's field of view). They come from the
phantom generator (``inference.phantom``) when it is importable, else from a synthetic body.
labseg is timed from loading the file to writing every output (``segment_file``: label and
uncertainty maps, volumes, lesions, manifest), on the CPU with ``--threads`` threads, cold (first
run in the process, sessions created) and warm (sessions cached, as in a worker); the AIMOS
reference (``bench/aimos_reference.py``) from loading to writing its label map, with the same
threads. Models: the registry's defaults; when ``inference/models/`` has none, networks of the
architecture engineer B trains (``inference.training``) with random weights, which cost the same.

    python bench/segment_speed.py [--threads 2] [--repeat 3] [--device cpu|cuda] [--gpu]
                                  [--no-reference] [--model DIR ...]

``--device cuda`` times labseg on ONNX Runtime's CUDA provider (onnxruntime-gpu, requirements-gpu.txt)
instead of the CPU, and stops at once, measuring nothing, on a machine without it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import cast

import nibabel as nib
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from inference.pipeline import segment_file
from inference.pipeline.runtime import CUDA, clear_sessions
from inference.registry import ModelCard, ModelCardError, default_model, load_card

try:  # torch is a training/bench dependency only; the labseg timings do not need it.
    from bench.aimos_reference import build_model, segment_reference
except ImportError:  # pragma: no cover
    build_model = segment_reference = None  # type: ignore[assignment]

VOLUMES = {
    "tumor-db 192x192x520 @0.21mm": ((192, 192, 520), 0.21),
    "organ-db 288x206x396 @0.14mm": ((288, 206, 396), 0.14),
}


def fit(array: np.ndarray, shape: tuple[int, int, int], fill: int) -> np.ndarray:
    """Crop or pad ``array`` to ``shape`` around the centre of the body (voxels above -500 HU)."""
    body = np.argwhere(array > -500)
    centre = body.mean(axis=0).round().astype(int) if len(body) else np.array(array.shape) // 2
    out = np.full(shape, fill, dtype=array.dtype)
    source, target = [], []
    for n_in, n_out, c in zip(array.shape, shape, centre, strict=True):
        start = int(np.clip(c - n_out // 2, 0, max(n_in - n_out, 0)))
        length = min(n_in, n_out)
        offset = (n_out - length) // 2
        source.append(slice(start, start + length))
        target.append(slice(offset, offset + length))
    out[tuple(target)] = array[tuple(source)]
    return out


def synthetic_body(shape: tuple[int, int, int], spacing_mm: float, seed: int = 0) -> np.ndarray:
    """int16 HU: an elliptic body with lungs, organs, a spine and two flank tumors, plus noise."""
    rng = np.random.default_rng(seed)
    x, y, z = (np.arange(n, dtype=np.float32) * spacing_mm for n in shape)
    X, Y, Z = np.meshgrid(x - x.mean(), y - y.mean(), z - z.mean(), indexing="ij", sparse=True)
    volume = np.full(shape, -1000.0, dtype=np.float32)
    half_length = 0.45 * shape[2] * spacing_mm
    body = (X / 12.0) ** 2 + (Y / 10.0) ** 2 + (Z / half_length) ** 2 < 1
    volume[np.broadcast_to(body, shape)] = 30.0

    def ball(cx: float, cy: float, cz: float, r: float) -> np.ndarray:
        return np.asarray((X - cx) ** 2 + (Y - cy) ** 2 + (Z - cz) ** 2 < r**2)

    for side in (-1, 1):
        volume[ball(side * 4.5, 0, 12, 5.0)] = -700.0  # lungs
        volume[ball(side * 4.0, -3, -8, 2.5)] = 60.0  # kidneys
        volume[ball(side * 11.0, 2, -4, 3.0)] = 70.0  # flank tumors
    volume[ball(0, 1, 5, 6.0)] = 65.0  # liver
    volume[ball(0, -1, 15, 3.0)] = 50.0  # heart
    spine = (X / 1.2) ** 2 + ((Y + 7) / 1.2) ** 2 < 1
    volume[np.broadcast_to(spine, shape) & np.broadcast_to(body, shape)] = 700.0
    volume += rng.normal(0, 25, size=shape).astype(np.float32)
    return np.clip(volume, -1024, 3000).astype(np.int16)


def make_volumes(work: Path, synthetic: bool) -> dict[str, Path]:
    paths = {}
    for number, (name, (shape, spacing)) in enumerate(VOLUMES.items()):
        path = work / f"volume{number}.nii.gz"
        # The bench writes these volumes itself as NIfTI-1.
        if path.is_file() and cast(nib.Nifti1Image, nib.load(str(path))).shape == shape:
            print(f"{name}: reusing {path}")
            paths[name] = path
            continue
        source = "synthetic"
        if not synthetic:
            try:
                from inference.phantom.generator import generate_phantom

                ct = fit(generate_phantom(100 + number, spacing_mm=spacing, n_annotators=1).ct, shape, -1000)
                source = "phantom"
            except ImportError:
                ct = synthetic_body(shape, spacing)
        else:
            ct = synthetic_body(shape, spacing)
        nib.save(nib.Nifti1Image(ct, np.diag([spacing, spacing, spacing, 1.0])), str(path))
        print(f"{name}: {source} volume written to {path}")
        paths[name] = path
    return paths


def bench_models(work: Path, checkpoints: Path) -> tuple[list[ModelCard], str]:
    """The registry's defaults; else networks of the trained architecture, with the weights of
    an in-progress training checkpoint (``<checkpoints>/<task>/checkpoint.pt``) when there is one,
    else random weights (seeded). Random weights cost the same in the network but make noisy
    label maps, so lesions and volumes then take longer than with a real model."""
    try:
        return [default_model("organs"), default_model("tumor")], "registry defaults (trained)"
    except ModelCardError:
        pass
    import torch

    from inference.training.export import export_model
    from inference.training.network import UNet3D
    from inference.training.tasks import TASKS

    cards, origins = [], []
    for task, spec in TASKS.items():
        torch.manual_seed(0)
        network = UNet3D(len(spec.structures), base=spec.base_channels)
        origin = "random weights"
        checkpoint = checkpoints / task / "checkpoint.pt"
        if checkpoint.is_file():
            try:
                state = torch.load(checkpoint, map_location="cpu", weights_only=True)
                network.load_state_dict(state["state"])
                origin = f"training checkpoint, epoch {state.get('epoch')}"
            except (RuntimeError, KeyError, EOFError, OSError):
                origin = "random weights (checkpoint unreadable)"
        folder = work / "models" / spec.name
        export_model(network, spec, folder, version="bench", training={"data": origin})
        cards.append(load_card(folder))
        origins.append(f"{task}: {origin}")
    return cards, "architecture of inference/training, " + "; ".join(origins)


def time_labseg(
    scan: Path, out: Path, cards: list[ModelCard], *, device: str, threads: int, repeat: int
) -> tuple[float, list[float], list[float], dict[str, float]]:
    """(cold seconds, warm wall seconds per run, warm CPU seconds per run, stages of the last run).

    CPU seconds (all threads of this process) are reported beside wall seconds because a shared
    machine's load stretches wall time but not the work done."""
    clear_sessions()
    start = time.perf_counter()
    segment_file(scan, out, cards=cards, device=device, threads=threads)
    cold = time.perf_counter() - start
    warm, cpu, stages = [], [], {}
    for _ in range(repeat):
        start, start_cpu = time.perf_counter(), time.process_time()
        result = segment_file(scan, out, cards=cards, device=device, threads=threads)
        warm.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
        stages = result.manifest["seconds"]
    return cold, warm, cpu, stages


def require_cuda() -> None:
    """Stop with a plain message when this ONNX Runtime cannot run on CUDA (no GPU figure is faked)."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if CUDA not in available:
        sys.exit(
            f"--device cuda: this ONNX Runtime ({ort.__version__}) has no CUDA provider "
            f"(it has {', '.join(available)}). Install requirements-gpu.txt (onnxruntime-gpu) on a "
            "machine with an NVIDIA GPU and its driver, or use --device cpu. Nothing was measured."
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3, help="warm runs per volume")
    parser.add_argument("--gpu", action="store_true", help="also time ONNX Runtime's CUDA provider")
    parser.add_argument(
        "--device", choices=("cpu", "cuda"), default="cpu", help="where labseg's main timings run"
    )
    parser.add_argument("--no-reference", action="store_true", help="skip the AIMOS reference")
    parser.add_argument("--synthetic", action="store_true", help="synthetic bodies, not phantoms")
    parser.add_argument("--work", type=Path, default=None, help="folder for volumes and outputs")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures as JSON")
    parser.add_argument(
        "--model", type=Path, action="append", help="model folder(s) to time (else the registry's)"
    )
    parser.add_argument(
        "--checkpoints",
        type=Path,
        default=Path(__file__).resolve().parents[1] / "data" / "runs",
        help="training checkpoints to use while inference/models/ has no model",
    )
    args = parser.parse_args()
    if args.device == "cuda":
        require_cuda()

    work = args.work or Path(tempfile.mkdtemp(prefix="labseg-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    volumes = make_volumes(work, args.synthetic)
    if args.model:
        cards, origin = [load_card(folder) for folder in args.model], "model folders given with --model"
    else:
        cards, origin = bench_models(work, args.checkpoints)
    print(f"models: {', '.join(c.key for c in cards)} ({origin})")
    print(f"threads: {args.threads}")
    reference_model = None
    if not args.no_reference:
        reference_model = build_model()

    figures: dict[str, dict[str, object]] = {}
    for name, scan in volumes.items():
        cold, warm, cpu, stages = time_labseg(
            scan, work / "out", cards, device=args.device, threads=args.threads, repeat=args.repeat
        )
        best = statistics.median(warm)
        row: dict[str, object] = {
            "labseg_cold_s": cold,
            "labseg_warm_s": warm,
            "labseg_warm_cpu_s": cpu,
            "labseg_stages_s": stages,
        }
        print(f"\n{name}")
        runs = ", ".join(f"{w:.2f}" for w in warm)
        print(f"  labseg  cold {cold:6.2f} s   warm median {best:6.2f} s  (runs {runs})")
        print(f"          CPU seconds per warm run (all threads): median {statistics.median(cpu):.2f}")
        print("          stages " + ", ".join(f"{k} {v:.2f}" for k, v in stages.items()))
        if args.threads != 1:
            # predict_volume runs the organ and tumor tasks side by side (``_segment_task``).
            print("          (the two models' stages overlap in time, so they add up to more than the total)")
        print(f"          one worker: {3600 / best:,.0f} scans per hour")
        if reference_model is not None:
            start_cpu = time.process_time()
            reference = segment_reference(
                scan, work / "aimos.nii.gz", model=reference_model, threads=args.threads
            )
            reference["cpu"] = time.process_time() - start_cpu
            row["aimos_reference_s"] = reference
            print("  AIMOS   " + ", ".join(f"{k} {v:.2f}" for k, v in reference.items()))
            ratio_warm, ratio_cold = reference["total"] / best, reference["total"] / cold
            ratio_cpu = reference["cpu"] / statistics.median(cpu)
            ratios = f"{ratio_warm:6.1f}x faster (warm), {ratio_cold:.1f}x (cold), {ratio_cpu:.1f}x (CPU)"
            print(f"  ratio   {ratios}")
        if args.gpu:
            import onnxruntime as ort

            if CUDA in ort.get_available_providers():
                gpu_cold, gpu_warm, _, gpu_stages = time_labseg(
                    scan, work / "out-gpu", cards, device="cuda", threads=args.threads, repeat=args.repeat
                )
                row.update({"gpu_cold_s": gpu_cold, "gpu_warm_s": gpu_warm, "gpu_stages_s": gpu_stages})
                print(f"  GPU     cold {gpu_cold:6.2f} s   warm median {statistics.median(gpu_warm):6.3f} s")
                print("          stages " + ", ".join(f"{k} {v:.3f}" for k, v in gpu_stages.items()))
            else:
                print("  GPU     no CUDA provider in this ONNX Runtime (install onnxruntime-gpu)")
        figures[name] = row
    load = os.getloadavg()[0]
    print(f"\nload average at the end: {load:.1f} on {os.cpu_count()} CPUs")
    if args.json:
        summary = {"models": origin, "threads": args.threads, "load_average": load, "volumes": figures}
        args.json.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
