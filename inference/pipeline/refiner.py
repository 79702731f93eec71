"""Outline refiner networks: a structure's outline redrawn at the scan's own resolution.

The organ model draws on a 0.63 mm grid. For a thin, tortuous structure (the intestine: a tube
about 2.5 mm across with a 0.45 mm wall) the upsampled outline is off by up to a scan voxel all
along its large surface, and the scan's noise (12-40 HU against a 90 HU wall-to-fat step) is too
strong for a per-voxel intensity threshold to put it right. A refiner is a small 3D network at
the scan's resolution that reads the scan and the network's outline (receptive field a few
voxels) and decides, in a band of ``margin_mm`` around the outline, which voxels belong to the
structure. It only moves voxels between the structure and background: other structures are never
touched.

A ``model.json`` ``refine`` rule names it: ``{"structure", "network" (file in the model folder),
"sha256", "margin_mm", "spacing_mm", "scale_hu", "clip", "context_voxels"}``. The network's input
is ``[1, 2, x, y, z]``: the scan as ``clip(HU / scale_hu, -clip, clip)`` and the outline as +1
inside / -1 outside; its output ``[1, 1, x, y, z]`` is the structure's logit. It runs on tiles of
the structure's bounding box with ``context_voxels`` of overlap, so tiles match one whole pass.

On a scan whose voxels are not the refiner's (0.1 mm, 0.35 mm, thick slices) the structure's box is
resampled to the refiner's voxels, decided there, and the logits resampled back
(``resampled_logits``): the kernels count voxels, so they must see the voxels they were trained on.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnxruntime as ort
from scipy import ndimage

from inference.pipeline.geometry import bounding_box, resample_linear, resampled_shape
from inference.pipeline.postprocess import FACE_NEIGHBOURS, voxels_across
from inference.pipeline.runtime import get_file_session
from inference.registry import ModelCard
from inference.structures import BY_ID

log = logging.getLogger(__name__)

#: A refiner runs on the scan's own voxels where they are within this factor of the spacing it was
#: trained at (its kernels count voxels, not millimetres).
SPACING_TOLERANCE = 1.25
#: Beyond that and within this factor, on the structure's box resampled to its training spacing
#: (``resampled_logits``); further off (a 0.05 mm or a 1 mm scan) the network's outline stays.
RESAMPLE_LIMIT = 2.5
#: Output voxels per tile, in whole planes across the first axis (bounds the memory of one pass:
#: 16 float32 channels, 128 MB a layer). A gut's box is about 0.8 M voxels: one tile, since
#: every cut costs ``2 * context`` planes computed twice.
TILE_VOXELS = 2_000_000


def spacing_fits(
    rule: dict[str, Any], spacing_mm: Sequence[float], tolerance: float = SPACING_TOLERANCE
) -> bool:
    """Whether the scan's voxels are within ``tolerance`` of the refiner's training spacing."""
    trained = float(rule["spacing_mm"])
    return all(trained / tolerance <= float(s) <= trained * tolerance for s in spacing_mm)


def resampled_logits(
    session: ort.InferenceSession,
    intensity: np.ndarray,
    mask: np.ndarray,
    zoom: Sequence[float],
    *,
    scale_hu: float,
    clip: float,
    context: int,
) -> np.ndarray:
    """The refiner's logits on ``intensity`` / ``mask`` (one box of the scan) resampled by ``zoom``
    (scan voxel / training voxel, per axis) to its training voxels, then back to the box's shape.

    The pipeline's own resampling (``geometry.resample_linear``): a finer scan is box-averaged to
    the refiner's voxels, so it sees a 0.21 mm scan's noise; the mask goes as a share cut at one
    half, so its outline stays where it was; the logits come back linearly.
    """
    shape = resampled_shape(mask.shape, zoom, (1.0, 1.0, 1.0))
    scan = resample_linear(intensity, shape, antialias=True)
    outline = resample_linear(mask.astype(np.float32), shape, antialias=True) >= np.float32(0.5)
    logits = refiner_logits(
        session, refiner_input(scan, outline, scale_hu=scale_hu, clip=clip), context=context
    )
    return resample_linear(logits, mask.shape)


def outline_shell(mask: np.ndarray, voxels: int) -> np.ndarray:
    """Voxels within ``voxels`` face-neighbour steps of the outline of ``mask``, on either side."""
    outer = ndimage.binary_dilation(mask, structure=FACE_NEIGHBOURS, iterations=voxels)
    inner = ndimage.binary_erosion(mask, structure=FACE_NEIGHBOURS, iterations=voxels, border_value=1)
    return outer & ~inner


def refiner_input(intensity: np.ndarray, mask: np.ndarray, *, scale_hu: float, clip: float) -> np.ndarray:
    """The refiner's two input channels ``[2, x, y, z]`` (float32)."""
    scan = np.clip(intensity.astype(np.float32) / np.float32(scale_hu), -clip, clip)
    outline = np.where(mask, np.float32(1.0), np.float32(-1.0))
    return np.stack([scan, outline])


#: Planes across z of one cropped slab (``cropped_tiles``). The bench scan's gut band, in slabs of
#: 32-64 planes each cropped across x and y, needs 0.75 of its box: on one thread 450 -> 360 ms of
#: CPU, the same logits. Thinner slabs pay more for their context planes.
SLAB_PLANES = 48
#: Cropped slabs are used where they read at most this share of the box.
CROP_WORTH = 0.85

Tile = tuple[tuple[slice, slice, slice], tuple[slice, slice, slice]]


def refiner_logits(
    session: ort.InferenceSession,
    inputs: np.ndarray,
    *,
    context: int,
    needed: np.ndarray | None = None,
) -> np.ndarray:
    """The refiner's logit map over ``inputs`` ``[2, x, y, z]``, computed in tiles along x.

    ``needed`` (bool, ``inputs``' spatial shape): the voxels whose logits are read (the band round
    the outline). Where slabs across z cropped to them read fewer voxels (``cropped_tiles``), only
    those are computed, and the logits elsewhere are ``-inf``. A logit depends on the inputs within
    ``context`` voxels, and a crop reaches that far round the voxels it keeps, so the logits
    computed are those of one whole pass."""
    if needed is not None:
        tiles = cropped_tiles(needed, context)
        if tiles is not None:
            return _tile_logits(session, inputs, tiles)
    n, ny, nz = inputs.shape[1:]
    planes = max(1, TILE_VOXELS // max(1, ny * nz))
    across = (slice(0, ny), slice(0, nz))
    whole: list[Tile] = []
    for start in range(0, n, planes):
        stop = min(start + planes, n)
        reach = slice(max(start - context, 0), min(stop + context, n))
        whole.append(((reach, *across), (slice(start, stop), *across)))
    return _tile_logits(session, inputs, whole)


def cropped_tiles(needed: np.ndarray, context: int) -> list[Tile] | None:
    """Tiles (what the network reads, what is kept of its output; slices of the box) that cover
    ``needed`` in slabs of ``SLAB_PLANES`` across z, each cropped across x and y to the needed
    voxels and ``context`` round them; None where they would read more than ``CROP_WORTH`` of
    the box (a compact organ's band fills its box)."""
    shape = needed.shape
    tiles: list[Tile] = []
    read = 0
    for start in range(0, shape[2], SLAB_PLANES):
        stop = min(start + SLAB_PLANES, shape[2])
        box = bounding_box(needed[:, :, start:stop], 0)
        if box is None:
            continue
        keep = (box[0], box[1], slice(start, stop))
        reach = tuple(
            slice(max(k.start - context, 0), min(k.stop + context, n))
            for k, n in zip(keep, shape, strict=True)
        )
        read += math.prod(r.stop - r.start for r in reach)
        tiles.append(((reach[0], reach[1], reach[2]), keep))
    if read > CROP_WORTH * needed.size:
        return None
    return tiles


def _tile_logits(session: ort.InferenceSession, inputs: np.ndarray, tiles: Sequence[Tile]) -> np.ndarray:
    """The logits of each tile's kept voxels (``-inf`` where no tile keeps a voxel)."""
    name = session.get_inputs()[0].name
    out = np.full(inputs.shape[1:], -np.inf, dtype=np.float32)
    for reach, keep in tiles:
        tile = np.ascontiguousarray(inputs[(slice(None), *reach)][None])
        logits = session.run(None, {name: tile})[0][0, 0]
        inner = tuple(slice(k.start - r.start, k.stop - r.start) for k, r in zip(keep, reach, strict=True))
        out[keep] = logits[inner]
    return out


@dataclass(frozen=True)
class RefinerDecision:
    """What a refiner decided for one structure, before it is written into a label map.

    ``own`` is the structure's mask and ``shell`` the band around its outline (inside ``box``);
    ``inside`` where the network puts the structure. Computed from the structure's mask alone, so
    it can be worked out while other rules, which move only their own structure's voxels, run.
    """

    structure_id: int
    box: tuple[slice, ...]
    own: np.ndarray
    shell: np.ndarray
    inside: np.ndarray


def refiner_decision(
    own_any: np.ndarray,
    intensity: np.ndarray,
    structure_id: int,
    session: ort.InferenceSession,
    *,
    margin_voxels: int,
    scale_hu: float,
    clip: float,
    context_voxels: int,
    zoom: Sequence[float] | None = None,
) -> RefinerDecision | None:
    """The refiner's decision on the outline of the structure whose mask is ``own_any``; None when
    the structure is absent or the margin is nothing. ``zoom`` (scan voxel / training voxel, per
    axis): decide on the box resampled to the refiner's voxels (``resampled_logits``); None: on the
    scan's own voxels. ``margin_voxels`` counts the scan's voxels either way."""
    # The box holds the refiner's context in the scan's voxels, whichever way they are counted.
    context = context_voxels if zoom is None else math.ceil(context_voxels / min(zoom)) + 1
    box = bounding_box(own_any, margin_voxels + context)
    if box is None or margin_voxels <= 0:
        return None
    own = own_any[box]
    shell = outline_shell(own, margin_voxels)
    if zoom is None:
        logits = refiner_logits(
            session,
            refiner_input(intensity[box], own, scale_hu=scale_hu, clip=clip),
            context=context_voxels,
            needed=shell,
        )
    else:
        logits = resampled_logits(
            session, intensity[box], own, zoom, scale_hu=scale_hu, clip=clip, context=context_voxels
        )
    return RefinerDecision(structure_id, box, own, shell, logits > 0)


def apply_decision(labels: np.ndarray, decision: RefinerDecision | None) -> int:
    """Write ``decision`` into ``labels`` (in place): in the band, only voxels that are background
    or the structure's own change. Returns the number changed."""
    if decision is None:
        return 0
    sub = labels[decision.box]
    own = decision.own
    band = decision.shell & ((sub == 0) | own)
    decided = band & decision.inside
    grow = decided & ~own
    shed = band & own & ~decided
    sub[grow] = decision.structure_id
    sub[shed] = 0
    return int(grow.sum() + shed.sum())


def refine_by_network(
    labels: np.ndarray,
    intensity: np.ndarray,
    structure_id: int,
    session: ort.InferenceSession,
    *,
    margin_voxels: int,
    scale_hu: float,
    clip: float,
    context_voxels: int,
) -> int:
    """Redraw ``structure_id`` within ``margin_voxels`` of its outline with a refiner (in place).

    Only voxels labelled background or ``structure_id`` change. Returns the number changed."""
    decision = refiner_decision(
        labels == structure_id,
        intensity,
        structure_id,
        session,
        margin_voxels=margin_voxels,
        scale_hu=scale_hu,
        clip=clip,
        context_voxels=context_voxels,
    )
    return apply_decision(labels, decision)


#: Where a refiner ran (``refiner_voxels``): on the scan's own voxels, on its structure's box
#: resampled to the refiner's, or not at all (the scan's voxels are too far off).
ON_SCAN, RESAMPLED, SKIPPED = "scan voxels", "resampled", "skipped"


def refiner_voxels(rule: dict[str, Any], spacing_mm: Sequence[float]) -> tuple[str, list[float] | None]:
    """Where the refiner of ``rule`` runs on a scan of ``spacing_mm``: ``ON_SCAN``, ``RESAMPLED``
    (with the zoom, scan voxel / training voxel per axis) or ``SKIPPED``."""
    if spacing_fits(rule, spacing_mm):
        return ON_SCAN, None
    if spacing_fits(rule, spacing_mm, RESAMPLE_LIMIT):
        return RESAMPLED, [float(s) / float(rule["spacing_mm"]) for s in spacing_mm]
    return SKIPPED, None


@dataclass(frozen=True)
class RefinerRun:
    """What one refiner network did on a scan (the manifest's ``postprocess.refiners``).

    ``ran_on``: ``ON_SCAN``, ``RESAMPLED``, ``SKIPPED``, or "absent" (the model drew no such
    structure, so there was no outline to redraw)."""

    structure_id: int
    network: str
    trained_spacing_mm: float
    scan_spacing_mm: tuple[float, ...]
    ran_on: str
    voxels_changed: int = 0

    @property
    def finding(self) -> str | None:
        """In plain words, where the outline is not the one the refiner draws on a scan of its
        own voxels; None where it ran as trained (or had nothing to redraw)."""
        name = BY_ID[self.structure_id].display_name
        scan = " x ".join(f"{s:.3g}" for s in self.scan_spacing_mm)
        if self.ran_on == RESAMPLED:
            return (
                f"{name}: outline redrawn on the scan resampled from {scan} mm voxels to the "
                f"{self.trained_spacing_mm:.3g} mm the refiner was trained at, and back."
            )
        if self.ran_on == SKIPPED:
            return (
                f"{name}: outline not redrawn (the scan's {scan} mm voxels are too far from the "
                f"refiner's {self.trained_spacing_mm:.3g} mm); the model's coarser outline stands."
            )
        return None

    def as_json(self) -> dict[str, Any]:
        return {
            "structure": BY_ID[self.structure_id].name,
            "network": self.network,
            "trained_spacing_mm": self.trained_spacing_mm,
            "scan_spacing_mm": [round(s, 4) for s in self.scan_spacing_mm],
            "ran_on": self.ran_on,
            "voxels_changed": self.voxels_changed,
            "finding": self.finding,
        }


def refiner_run(
    rule: dict[str, Any], spacing_mm: Sequence[float], decision: RefinerDecision | None, changed: int
) -> RefinerRun:
    """The record of one refiner rule's turn: where it ran (``refiner_voxels``) and what it changed."""
    ran_on = refiner_voxels(rule, spacing_mm)[0]
    return RefinerRun(
        structure_id=int(rule["structure"]),
        network=str(rule["network"]),
        trained_spacing_mm=float(rule["spacing_mm"]),
        scan_spacing_mm=tuple(float(s) for s in spacing_mm),
        ran_on="absent" if decision is None and ran_on != SKIPPED else ran_on,
        voxels_changed=changed,
    )


def decide_refiner(
    own_any: np.ndarray,
    canonical: np.ndarray,
    card: ModelCard,
    rule: dict,
    spacing_mm: Sequence[float],
    device: str,
    threads: int,
) -> RefinerDecision | None:
    """The decision of one refiner-network ``refine`` rule of ``card`` on the mask ``own_any`` of
    its structure: on the scan's voxels where they fit the refiner's training spacing, on the box
    resampled to it within ``RESAMPLE_LIMIT``; None (the network's outline stays) further off."""
    ran_on, zoom = refiner_voxels(rule, spacing_mm)
    if ran_on == SKIPPED:
        log.info(
            "refiner %s skipped: scan voxels %s mm, trained at %s mm",
            rule["network"],
            [round(float(s), 3) for s in spacing_mm],
            rule["spacing_mm"],
        )
        return None
    session = get_file_session(
        card.folder / str(rule["network"]), str(rule["sha256"]), device=device, threads=threads
    )
    return refiner_decision(
        own_any,
        canonical,
        int(rule["structure"]),
        session,
        margin_voxels=voxels_across(float(rule["margin_mm"]), spacing_mm),
        scale_hu=float(rule["scale_hu"]),
        clip=float(rule["clip"]),
        context_voxels=int(rule["context_voxels"]),
        zoom=zoom,
    )


def run_refiner(
    labels: np.ndarray,
    canonical: np.ndarray,
    card: ModelCard,
    rule: dict,
    spacing_mm: Sequence[float],
    device: str,
    threads: int,
) -> int:
    """Apply one refiner-network ``refine`` rule of ``card``, in place (``decide_refiner``, then
    ``apply_decision``). Returns the number of voxels changed."""
    own_any = labels == int(rule["structure"])
    return apply_decision(labels, decide_refiner(own_any, canonical, card, rule, spacing_mm, device, threads))
