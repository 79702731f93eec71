"""Simulated annotators: how people really draw on micro-CT.

Each annotator has a systematic bias (a little generous or strict), wobbles at boundaries in
proportion to how hard the boundary is to see, draws on every 5th axial slice and lets the tool
interpolate in between (as the tumor database's annotators did), and sometimes misses small
structures. Arrays are (x, y, z) label maps with canonical ids, z being the axial slice axis.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from inference.structures import BY_NAME

#: How hard each boundary is to see in native CT (0 = crisp air/bone edge, 1 = soft tissue
#: against soft tissue). Scales the boundary noise.
DIFFICULTY = {
    "heart": 0.6,
    "lung_left": 0.15,
    "lung_right": 0.15,
    "liver": 0.7,
    "kidney_left": 0.6,
    "kidney_right": 0.6,
    "spleen": 1.0,
    "bladder": 0.5,
    "stomach": 0.6,
    "intestine": 0.9,
    "bones": 0.1,
    "brain": 0.4,
    "spinal_cord": 0.8,
    "tumor": 0.45,
    "metastasis": 0.5,
}

#: Structures an annotator can overlook entirely when they are small (mm^3 below which).
MISSABLE_BELOW_MM3 = {"tumor": 30.0, "metastasis": 5.0}


@dataclass(frozen=True)
class Annotator:
    name: str
    bias: float  # > 0 draws generously (outline pushed outwards), < 0 strictly
    wobble: float  # boundary noise amplitude at the hardest boundaries
    slice_offset: int
    miss_rate: float


def sample_annotators(rng: np.random.Generator, k: int) -> list[Annotator]:
    return [
        Annotator(
            name=chr(ord("A") + i),
            bias=float(rng.uniform(-0.22, 0.22)),
            wobble=float(rng.uniform(0.3, 0.5)),
            slice_offset=int(rng.integers(0, 5)),
            miss_rate=float(rng.uniform(0.05, 0.2)),
        )
        for i in range(k)
    ]


def _components(mask: np.ndarray) -> list[tuple[tuple[slice, ...], np.ndarray]]:
    lab, n = ndimage.label(mask)
    out = []
    for i, sl in enumerate(ndimage.find_objects(lab), start=1):
        if sl is not None:
            out.append((sl, lab[sl] == i))
    return out


def _pad(sl: tuple[slice, ...], shape: tuple[int, ...], pad: int) -> tuple[slice, ...]:
    return tuple(slice(max(s.start - pad, 0), min(s.stop + pad, n)) for s, n in zip(sl, shape, strict=True))


def _draw(
    mask: np.ndarray,
    annotator: Annotator,
    difficulty: float,
    z0: int,
    rng: np.random.Generator,
    *,
    every_slice: bool,
) -> np.ndarray:
    """One annotator's outline of ``mask`` (a padded box whose first z index is ``z0``)."""
    nz = mask.shape[2]
    if every_slice or nz < 6:
        keys = np.arange(nz)
    else:
        keys = np.flatnonzero((np.arange(nz) + z0 - annotator.slice_offset) % 5 == 0)
        keys = np.unique(np.concatenate([[0], keys, [nz - 1]]))
    smooth = ndimage.gaussian_filter(mask[:, :, keys].astype(np.float32), sigma=(1.5, 1.5, 0.0))
    # Smooth 2D wobble: coarse random field, upsampled, so the boundary error is spatially coherent.
    coarse = rng.standard_normal((max(mask.shape[0] // 6, 2), max(mask.shape[1] // 6, 2), len(keys)))
    wobble = ndimage.zoom(
        coarse, (mask.shape[0] / coarse.shape[0], mask.shape[1] / coarse.shape[1], 1), order=1
    )
    wobble = wobble[: mask.shape[0], : mask.shape[1]]
    level = smooth - 0.5 + annotator.bias + annotator.wobble * difficulty * wobble.astype(np.float32)
    if len(keys) == nz:
        return level > 0
    # Linear interpolation of the signed level between drawn slices: the tool's shape interpolation.
    out = np.empty(mask.shape, dtype=bool)
    pos = np.searchsorted(keys, np.arange(nz), side="right") - 1
    pos = np.clip(pos, 0, len(keys) - 2)
    lo, hi = keys[pos], keys[pos + 1]
    frac = ((np.arange(nz) - lo) / np.maximum(hi - lo, 1)).astype(np.float32)
    interp = level[:, :, pos] * (1 - frac) + level[:, :, pos + 1] * frac
    out[:] = interp > 0
    return out


def annotate(
    labels: np.ndarray,
    annotator: Annotator,
    spacing_mm: float,
    rng: np.random.Generator,
    structures: list[str] | None = None,
) -> np.ndarray:
    """One annotator's label map of the ground truth ``labels`` (only ``structures`` if given)."""
    out = np.zeros_like(labels)
    names = structures or [n for n in DIFFICULTY if np.any(labels == BY_NAME[n].id)]
    voxel_mm3 = spacing_mm**3
    for name in names:
        sid = BY_NAME[name].id
        mask = labels == sid
        if not mask.any():
            continue
        lesion = name in MISSABLE_BELOW_MM3
        # A lesion is judged piece by piece; an organ is one box with no separate piece mask.
        pieces: Sequence[tuple[tuple[slice, ...], np.ndarray | None]] = (
            [*_components(mask)] if lesion else [(ndimage.find_objects(mask.astype(np.uint8))[0], None)]
        )
        for sl, piece in pieces:
            if lesion and piece is not None:
                volume = float(piece.sum()) * voxel_mm3
                if volume < MISSABLE_BELOW_MM3[name] and rng.random() < annotator.miss_rate:
                    continue
            box = _pad(sl, labels.shape, 4)
            sub = labels[box] == sid
            if lesion and piece is not None:
                # Only this component, not a neighbour sharing the padded box.
                only = np.zeros_like(sub)
                inner = tuple(
                    slice(s.start - b.start, s.stop - b.start) for s, b in zip(sl, box, strict=True)
                )
                only[inner] = piece
                sub = only
            # Bones are drawn with a threshold tool on every slice; everything else by hand.
            drawn = _draw(sub, annotator, DIFFICULTY[name], box[2].start, rng, every_slice=name == "bones")
            region = out[box]
            region[drawn] = sid
    return out
