"""``python -m inference.training.refiner --model DIR --structure intestine``: train an outline refiner.

An outline refiner (``pipeline.refiner``) redraws one structure's outline at the scan's resolution
from the scan and the organ model's upsampled outline. It is trained here on the training
phantoms: the organ model segments each one as the pipeline does (its other ``refine`` rules in
force, none for this structure), and the refiner learns, on 32-voxel patches centred on the band
of ``MARGIN_VOXELS`` around that outline, which band voxels the ground truth puts inside (binary
cross-entropy over the band voxels that are background or the structure in both maps). It is
checked on the validation phantoms (Dice of the structure with and without it), exported to
``refine-<structure>.onnx`` in the model folder (ONNX Runtime checked against torch on the same
input) and written into ``model.json`` as a ``refine`` rule that replaces any earlier rule for
the structure.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
import torch.nn.functional as F  # noqa: N812 (the idiom every PyTorch reader knows)
from scipy import ndimage
from torch import nn

from inference.jsonsafe import finite_or_null
from inference.metrics import dice
from inference.phantom.synth import (
    AIR,
    FAT,
    HU_RANGES,
    N_IDS,
    SOFT,
    lean_body_hu,
    tissue_from_ct,
    tissue_levels,
)
from inference.pipeline import predict_volume
from inference.pipeline.geometry import bounding_box
from inference.pipeline.refiner import outline_shell, refine_by_network, refiner_input, spacing_fits
from inference.registry import ModelCard, file_sha256, load_card
from inference.structures import BY_NAME
from inference.training.data import find_cases
from inference.training.evaluate import load_canonical
from inference.training.share_weights import share_if_stored, unshare

log = logging.getLogger(__name__)

#: Band of scan voxels (face-neighbour steps) around the organ model's outline that a refiner
#: redraws: a 0.63 mm model voxel is three 0.21 mm phantom voxels.
MARGIN_VOXELS = 3
#: Scan intensity scaling: HU / 100 clipped to +-5 keeps fat (-100), soft tissue (30-60) and the
#: wall-to-fat step in the linear range and squashes air and bone.
SCALE_HU, CLIP = 100.0, 5.0
PATCH = 32


@dataclass(frozen=True)
class Jitter:
    """Per-patch intensity augmentation: the scan channel is multiplied by a factor drawn from
    ``1 +- scale`` and shifted by a normal draw of ``offset_hu`` SD. The intestine's refiner was
    trained with the default (5 % and 5 HU) until ``mouse-organs/2.12.0``, whose gut refiner takes
    ``LEVEL_JITTER``. A liver refiner takes more (``JITTER_BY_STRUCTURE``),
    since another lab's CT puts the liver anywhere from 50 to 85 HU
    (``robustness.TISSUE_RANGES_HU``), not at the phantoms' 62.

    ``redraw`` is the share of patches whose scan is drawn anew from the phantom's labels
    (``redraw_patch``: every tissue at a random level in CT's order, sometimes no fat between the
    organs, random blur and noise). Trained on the phantoms' own scans alone, a liver refiner
    learned "liver until the fat" and grew the atlas' liver, whose neighbours sit a few HU away
    (the model card's "A liver refiner learned on the phantoms" section).

    ``truth_outline`` is the share of patches whose outline channel is not the organ model's
    outline but the true one moved by a random smooth amount (``shifted_outline``). A refiner
    that only sees the model's outlines on the phantoms also learns that model's habits there
    (the kidneys drawn a voxel small, since 2.4.2 lowers their scores for the atlas' sake) and
    applies them where the model has other habits: on the atlas it grew both kidneys by 7-8 %
    where no edge shows. The heart's refiner learns from the model's own outlines: measured on
    the atlas, that one found more of the heart's outline against the lungs, and the one trained
    on true outlines lost 0.004-0.012 on four of five renders (the model card's
    "`mouse-organs/2.4.3`: a heart refiner" section)."""

    scale: float = 0.05
    offset_hu: float = 5.0
    redraw: float = 0.0
    truth_outline: float = 0.0


#: Organs whose refiner is trained with another jitter than the default: their level differs
#: between labs, and the phantoms' fat around them is not every mouse's.
WIDE_JITTER = Jitter(scale=0.15, offset_hu=15.0, redraw=0.5, truth_outline=1.0)
#: The gut's refiner tells wall from fat and content by their levels, and a lab's scan may read
#: 60 HU off ours (the robustness report's +-60 HU): trained at 5 HU of jitter, an 8-channel gut
#: refiner lost 0.09 of the gut's Dice on the test phantoms 60 HU darker (``mouse-organs/2.12.0``).
LEVEL_JITTER = Jitter(scale=0.1, offset_hu=40.0)
JITTER_BY_STRUCTURE = {
    "intestine": LEVEL_JITTER,
    **{name: WIDE_JITTER for name in ("liver", "kidney_left", "kidney_right")},
    "heart": dataclasses.replace(WIDE_JITTER, truth_outline=0.0),
}
DEFAULT_JITTER = Jitter()
#: Bumped when the cached arrays change (2: with the scan's voxel size).
CACHE_FORMAT = 2
OPSET = 17


class RefinerNet(nn.Module):
    """Four 3D convolutions (the second dilated): a 9-voxel receptive field; ~15k weights at 16
    channels per layer, ~4k at 8.

    The outline channel is added to the output with a learned weight, so an untrained refiner
    returns the network's outline and training learns only the corrections."""

    #: Channels per layer. The inner layers cost ``channels ** 2`` per voxel: at 8 the gut's
    #: refiner takes 0.17 s of one core on the bench scan's gut box, at 16 0.46 s.
    default_channels = 16

    def __init__(self, channels: int = default_channels) -> None:
        super().__init__()
        if channels < 1:
            raise ValueError(f"a refiner needs at least one channel per layer, not {channels}")
        self.first = nn.Conv3d(2, channels, 3, padding=1)
        self.wide = nn.Conv3d(channels, channels, 3, padding=2, dilation=2)
        self.last = nn.Conv3d(channels, channels, 3, padding=1)
        self.head = nn.Conv3d(channels, 1, 1)
        self.prior = nn.Parameter(torch.tensor(2.0))

    #: Voxels on each side that influence one output voxel (1 + 2 + 1).
    context_voxels = 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.first(x))
        h = F.relu(self.wide(h))
        h = F.relu(self.last(h))
        return self.head(h) + self.prior * x[:, 1:2]


@dataclass
class RefinerCase:
    """One phantom cut to the box around the structure: inputs, target and the trained band."""

    name: str
    inputs: np.ndarray  # [2, x, y, z] float32
    target: np.ndarray  # bool, ground truth of the structure
    band: np.ndarray  # bool, voxels whose loss counts
    centres: np.ndarray  # [n, 3] band voxel indices
    spacing_mm: float  # mean voxel size of the scan
    tissues: np.ndarray  # uint8, what ``redraw_patch`` draws: the truth's ids, else N_IDS + AIR/FAT/SOFT
    free: np.ndarray  # bool, voxels a refiner may move: background or the structure in both maps


def base_card(card: ModelCard, structure_id: int) -> ModelCard:
    """``card`` without its rules for ``structure_id`` (the outline a refiner starts from)."""
    rules = [r for r in card.postprocess.get("refine", []) if int(r["structure"]) != structure_id]
    return dataclasses.replace(card, postprocess={**card.postprocess, "refine": rules})


def prepare_case(
    folder: Path, base: ModelCard, structure_id: int, cache: Path, *, threads: int
) -> RefinerCase:
    """The outline of ``structure_id`` that ``base`` (``base_card``) draws on one phantom, cached
    under ``cache``."""
    path = cache / f"{folder.name}.npz"
    if not path.exists():
        ct, affine = load_canonical(folder / "ct.nii.gz")
        truth, _ = load_canonical(folder / "labels.nii.gz")
        ct = ct.astype(np.float32)
        # Training scans are HU phantoms by construction: no intensity check (intensity.py).
        labels = predict_volume(ct, affine, [base], threads=threads, intensity="hu").labels
        box = bounding_box((labels == structure_id) | (truth == structure_id), MARGIN_VOXELS + PATCH // 2)
        if box is None:
            box = tuple(slice(0, 1) for _ in range(3))
        spacing = float(np.sqrt((affine[:3, :3] ** 2).sum(axis=0)).mean())
        np.savez_compressed(path, ct=ct[box], labels=labels[box], truth=truth[box], spacing_mm=spacing)
    with np.load(path) as z:
        ct, labels, truth, spacing_mm = z["ct"], z["labels"], z["truth"], float(z["spacing_mm"])
    own = labels == structure_id
    free = ((labels == 0) | own) & ((truth == 0) | (truth == structure_id))
    band = outline_shell(own, MARGIN_VOXELS) & free
    # The unlabelled body's tissue, read from the scan smoothed past its noise (one voxel SD).
    background = N_IDS + tissue_from_ct(ndimage.gaussian_filter(ct.astype(np.float32), 1.0))
    return RefinerCase(
        name=folder.name,
        inputs=refiner_input(ct, own, scale_hu=SCALE_HU, clip=CLIP),
        target=truth == structure_id,
        band=band,
        centres=np.argwhere(band),
        spacing_mm=spacing_mm,
        tissues=np.where(truth > 0, truth, background).astype(np.uint8),
        free=free,
    )


def shifted_outline(truth: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``truth`` (bool) with its outline moved by a random smooth amount: out or in by a normal
    draw of 1 voxel SD overall, plus up to 1.5 voxels (SD) varying over about 4 voxels, never
    further than the band a refiner redraws (``MARGIN_VOXELS``). As likely too large as too
    small, so a refiner trained on it learns where the scan puts the edge and, where the scan
    shows none, to keep the outline it is given."""
    if truth.all() or not truth.any():
        return truth.copy()
    # Signed distance to the outline, half a voxel either side of it for the voxels that touch it.
    inside, outside = ndimage.distance_transform_edt(truth), ndimage.distance_transform_edt(~truth)
    signed = np.where(truth, 0.5 - inside, outside - 0.5)
    field = ndimage.gaussian_filter(rng.standard_normal(truth.shape).astype(np.float32), 4.0, mode="wrap")
    field /= max(float(field.std()), 1e-6)
    shift = np.clip(rng.normal(0.0, 1.0) + rng.uniform(0.0, 1.5) * field, -MARGIN_VOXELS, MARGIN_VOXELS)
    return signed < shift


def redraw_patch(tissues: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A scan (HU, float32) drawn anew from a patch's tissue map (``RefinerCase.tissues``), as
    ``inference.phantom.synth`` draws its training volumes but at the scan's own resolution: each
    structure (``synth.tissue_levels``) and the body's air, fat and muscle at a random level in
    CT's order, a third of the time no fat between them (``synth.lean_body_hu``), then a blur of
    0.3-1.5 voxels and 5-60 HU of noise."""
    means = tissue_levels(rng)
    lut = np.zeros(N_IDS + 3, np.float32)
    for sid, level in means.items():
        lut[sid] = level
    lut[N_IDS + AIR] = rng.uniform(*HU_RANGES["air"])
    lut[N_IDS + FAT] = rng.uniform(*HU_RANGES["fat"])
    lut[N_IDS + SOFT] = rng.uniform(*HU_RANGES["soft"])
    if rng.random() < 1 / 3:
        lut[N_IDS + FAT] = lut[N_IDS + SOFT] = lean_body_hu(means, rng)
    image = ndimage.gaussian_filter(lut[tissues], rng.uniform(0.3, 1.5), mode="nearest")
    return image + rng.normal(0.0, rng.uniform(5.0, 60.0), image.shape).astype(np.float32)


def sample_batch(
    cases: list[RefinerCase], rng: np.random.Generator, size: int, jitter: Jitter = DEFAULT_JITTER
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Patches centred on band voxels, with intensity scale/offset/noise and left-right flips."""
    xs, ys, ms = [], [], []
    usable = [c for c in cases if len(c.centres)]
    for _ in range(size):
        case = usable[int(rng.integers(len(usable)))]
        centre = case.centres[int(rng.integers(len(case.centres)))]
        shape = case.target.shape
        lo = [int(np.clip(c - PATCH // 2, 0, max(s - PATCH, 0))) for c, s in zip(centre, shape, strict=True)]
        box = tuple(slice(a, a + PATCH) for a in lo)
        x = np.zeros((2, PATCH, PATCH, PATCH), np.float32)
        y = np.zeros((PATCH,) * 3, np.float32)
        m = np.zeros((PATCH,) * 3, np.float32)
        part = case.inputs[(slice(None), *box)]
        fit = tuple(slice(0, n) for n in part.shape[1:])
        x[(slice(None), *fit)] = part
        if jitter.redraw and rng.random() < jitter.redraw:
            drawn = redraw_patch(case.tissues[box], rng)
            x[0][fit] = np.clip(drawn / SCALE_HU, -CLIP, CLIP)
        band = case.band[box]
        if jitter.truth_outline and rng.random() < jitter.truth_outline:
            given = shifted_outline(case.target[box], rng)
            x[1][fit] = np.where(given, np.float32(1.0), np.float32(-1.0))
            band = outline_shell(given, MARGIN_VOXELS) & case.free[box]
        x[1][x[1] == 0] = -1.0
        y[fit] = case.target[box]
        m[fit] = band
        gain = rng.uniform(1 - jitter.scale, 1 + jitter.scale)
        x[0] = x[0] * gain + rng.normal(0, jitter.offset_hu / SCALE_HU)
        x[0] += rng.normal(0, rng.uniform(0, 0.15), x[0].shape).astype(np.float32)
        if rng.random() < 0.5:
            x, y, m = x[:, ::-1], y[::-1], m[::-1]
        xs.append(np.ascontiguousarray(x))
        ys.append(np.ascontiguousarray(y))
        ms.append(np.ascontiguousarray(m))
    return (
        torch.from_numpy(np.stack(xs)),
        torch.from_numpy(np.stack(ys))[:, None],
        torch.from_numpy(np.stack(ms))[:, None],
    )


def train_refiner(
    cases: list[RefinerCase],
    *,
    minutes: float,
    seed: int,
    batch: int = 8,
    lr: float = 2e-3,
    jitter: Jitter = DEFAULT_JITTER,
    channels: int = RefinerNet.default_channels,
) -> tuple[RefinerNet, list[dict[str, float]]]:
    """Train a refiner of ``channels`` channels per layer for ``minutes`` of wall clock (Adam,
    cosine-decayed learning rate)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    net = RefinerNet(channels)
    optimiser = torch.optim.Adam(net.parameters(), lr=lr)
    history: list[dict[str, float]] = []
    started, step, running = time.monotonic(), 0, 0.0
    budget = minutes * 60.0
    while (elapsed := time.monotonic() - started) < budget:
        for group in optimiser.param_groups:
            group["lr"] = lr * 0.5 * (1.0 + np.cos(np.pi * min(elapsed / budget, 1.0)))
        x, y, m = sample_batch(cases, rng, batch, jitter)
        loss = (F.binary_cross_entropy_with_logits(net(x), y, reduction="none") * m).sum() / m.sum().clamp(
            min=1
        )
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        step += 1
        value = loss.item()
        running = 0.98 * running + 0.02 * value if step > 1 else value
        if step % 200 == 0:
            history.append({"step": step, "loss": round(running, 4), "minutes": round(elapsed / 60, 2)})
            log.info("refiner step %d loss %.4f (%.1f min)", step, running, elapsed / 60)
    return net.eval(), history


def export_refiner(net: RefinerNet, path: Path) -> str:
    """Write ``net`` to ONNX (any box size), check ONNX Runtime against torch; returns its sha256."""
    example = torch.zeros(1, 2, 24, 24, 24)
    axes = {2: "x", 3: "y", 4: "z"}
    torch.onnx.export(
        net.cpu().eval(),
        (example,),
        str(unshare(path)),
        input_names=["scan_outline"],
        output_names=["logit"],
        dynamic_axes={"scan_outline": axes, "logit": axes},
        opset_version=OPSET,
        do_constant_folding=True,
        dynamo=False,
    )
    probe = np.random.default_rng(0).normal(0, 1, (1, 2, 20, 28, 36)).astype(np.float32)
    with torch.no_grad():
        expected = net(torch.from_numpy(probe)).numpy()
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"scan_outline": probe}
    )[0]
    if not np.allclose(got, expected, atol=1e-4):
        raise RuntimeError(
            f"ONNX Runtime and torch disagree on {path.name} by {np.abs(got - expected).max():g}"
        )
    return file_sha256(path)


def refiner_rule(structure_id: int, file_name: str, sha256: str, spacing_mm: float) -> dict:
    """The ``refine`` rule of a refiner trained on scans of ``spacing_mm`` voxels."""
    return {
        "structure": structure_id,
        "network": file_name,
        "sha256": sha256,
        "margin_mm": round(MARGIN_VOXELS * spacing_mm, 4),
        "spacing_mm": round(spacing_mm, 4),
        "scale_hu": SCALE_HU,
        "clip": CLIP,
        "context_voxels": RefinerNet.context_voxels,
    }


def with_refiner(rules: list[dict], rule: dict) -> list[dict]:
    """``rules`` with the refiner network ``rule`` for its structure, after every other
    structure's rules. The structure's earlier rules other than a network follow it as stand-ins
    (``unless_refined``): they still apply on scans whose voxels are too far from the network's to
    be resampled to them (``pipeline.refiner.RESAMPLE_LIMIT``).
    An air-edge rule is dropped instead: it runs after the lesion search
    (``predict.settle_air_edges``), where no refiner has run, so it cannot stand in.

    A refiner retrained for a structure whose rules already end in a network (the structure's own
    rules after it being its stand-ins) takes that network's place, and every rule keeps its
    turn: where two structures' rules reach for the same background voxel, the order decides,
    so a new network changes only what its own weights change."""
    sid = int(rule["structure"])
    own_at = [k for k, r in enumerate(rules) if int(r["structure"]) == sid]
    networks = [k for k in own_at if "network" in rules[k]]
    if len(networks) == 1:
        at = networks[0]
        # Already in the shape this function writes: stand-ins after the network, air edges aside.
        if all(
            "air_edge" in rules[k] or (k > at and rules[k].get("unless_refined")) for k in own_at if k != at
        ):
            return [rule if k == at else r for k, r in enumerate(rules)]
    others = [r for r in rules if int(r["structure"]) != sid]
    own = [r for r in rules if int(r["structure"]) == sid and "network" not in r and "air_edge" not in r]
    return [*others, rule, *({**r, "unless_refined": True} for r in own)]


def validate(net: RefinerNet, cases: list[RefinerCase], structure_id: int, path: Path) -> dict[str, float]:
    """Median Dice of the structure on the validation cases without and with the exported refiner."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    before, after = [], []
    for case in cases:
        own = case.inputs[1] > 0
        labels = np.where(own, np.uint8(structure_id), np.uint8(0))
        before.append(dice(own, case.target))
        refine_by_network(
            labels,
            case.inputs[0] * SCALE_HU,
            structure_id,
            session,
            margin_voxels=MARGIN_VOXELS,
            scale_hu=SCALE_HU,
            clip=CLIP,
            context_voxels=net.context_voxels,
        )
        after.append(dice(labels == structure_id, case.target))
    return {
        "dice_before": round(float(np.median(before)), 4),
        "dice_after": round(float(np.median(after)), 4),
    }


def make_refiner(
    folder: Path,
    structure: str,
    data: Path,
    *,
    minutes: float,
    seed: int = 0,
    threads: int = 2,
    channels: int = RefinerNet.default_channels,
) -> dict:
    """Train, check and export the refiner of ``structure`` for the model in ``folder``; returns
    its rule, written into ``model.json`` in place of any earlier rule for the structure."""
    torch.set_num_threads(threads)
    card = load_card(folder)
    sid = BY_NAME[structure].id
    base = base_card(card, sid)
    # The outlines depend on the weights and on the post-processing before the refiner.
    setting = json.dumps({k: v for k, v in base.postprocess.items() if k != "calibration"}, sort_keys=True)
    key = hashlib.sha256(f"{CACHE_FORMAT}{card.sha256}{setting}".encode()).hexdigest()[:12]
    folders = {part: find_cases(data / part) for part in ("train", "val")}
    empty = [str(data / part) for part, found in folders.items() if not found]
    if empty:
        raise ValueError(
            f"a refiner trains on phantoms under {data / 'train'} and is checked on {data / 'val'}: "
            f"{' and '.join(empty)} hold no case (folders with ct.nii.gz and labels.nii.gz); "
            "write them with `python -m inference.phantom --out DIR --n N --seed S` (the seeds: "
            "make_models.SETS)"
        )
    cache = data / ".cache" / f"refiner-{card.name}-{key}-{structure}"
    cache.mkdir(parents=True, exist_ok=True)
    train_cases = [prepare_case(f, base, sid, cache, threads=threads) for f in folders["train"]]
    val_cases = [prepare_case(f, base, sid, cache, threads=threads) for f in folders["val"]]
    # The kernels count voxels: one refiner serves one voxel size, the training scans'.
    spacing = float(np.median([c.spacing_mm for c in train_cases]))
    trained = {"spacing_mm": spacing}
    odd = [c.name for c in train_cases + val_cases if not spacing_fits(trained, [c.spacing_mm])]
    if odd:
        raise ValueError(
            f"a refiner learns one voxel size: {', '.join(odd)} are more than 25 % off the "
            f"training scans' {spacing:.3f} mm; resample them or train them apart"
        )
    log.info("refiner %s: %d training and %d validation cases", structure, len(train_cases), len(val_cases))
    jitter = JITTER_BY_STRUCTURE.get(structure, DEFAULT_JITTER)
    net, history = train_refiner(train_cases, minutes=minutes, seed=seed, jitter=jitter, channels=channels)
    file_name = f"refine-{structure.replace('_', '-')}.onnx"
    sha = export_refiner(net, folder / file_name)
    rule = refiner_rule(sid, file_name, sha, spacing)
    report = validate(net, val_cases, sid, folder / file_name)
    log.info("refiner %s on validation: Dice %s", structure, report)
    card_path = folder / "model.json"
    raw = json.loads(card_path.read_text())
    post = raw.setdefault("postprocess", {})
    post["refine"] = with_refiner(post.get("refine", []), rule)
    raw.setdefault("refiners", {})[structure] = {
        "command": f"python -m inference.training.refiner --model {folder} --structure {structure} "
        f"--minutes {minutes:g} --seed {seed} --threads {threads} --channels {channels}",
        "training": f"{len(train_cases)} phantoms under {data / 'train'}",
        "validation": report,
        "intensity_jitter": dataclasses.asdict(jitter),
        "channels": channels,
        "parameters": sum(p.numel() for p in net.parameters()),
        "history": history,
    }
    card_path.write_text(json.dumps(finite_or_null(raw), indent=1, allow_nan=False) + "\n")
    load_card(folder)  # the card still reads, with the refiner's sha256
    share_if_stored(folder)
    return rule


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m inference.training.refiner", description=__doc__)
    parser.add_argument("--model", type=Path, required=True, help="the organ model folder")
    parser.add_argument("--structure", required=True, choices=sorted(BY_NAME))
    parser.add_argument("--data", type=Path, default=Path("data/phantoms"))
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--channels",
        type=int,
        default=RefinerNet.default_channels,
        help="channels per layer (default %(default)s); fewer cost less CPU in every run",
    )
    args = parser.parse_args(argv)
    if args.channels < 1:
        parser.error(f"--channels must be 1 or more, not {args.channels}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    try:
        make_refiner(
            args.model,
            args.structure,
            args.data,
            minutes=args.minutes,
            seed=args.seed,
            threads=args.threads,
            channels=args.channels,
        )
    except ValueError as error:  # no phantoms, or another voxel size: the model is untouched
        parser.error(str(error))


if __name__ == "__main__":
    main()
