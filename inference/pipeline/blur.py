"""How sharp a scan is: the blur of its edges, read where the skin meets the air.

A reconstruction's point-spread function sets how far an edge spreads. The lungs' air-edge rule
(``postprocess.refine_air_edge``) puts a lung's outline half-way between its own level and soft
tissue. That is right for a flat edge at any blur. But a lobe thinner than about 1.4 times the
blur (sigma) never reaches half-way, and the rule's trim would peel it off. On the Digimouse
torso rendered at 0.21 mm (the card's "how blur and smoothing move the atlas' organs"), trimming
gained the lungs 0.019 / 0.009 Dice at 0.05 mm of blur and cost them from 0.2 mm on (-0.017 /
-0.015 at 0.25 mm, -0.049 / -0.042 at 0.45 mm), while growing the lungs into their air gained at
every blur. On validation phantoms, whose lungs have no thin lobes, trimming gained 0.009 /
0.005 at their own blur and nothing once blurred by 0.3 mm more. So past ``SHARP_MM`` the rule
grows and does not trim (``predict.settle_air_edges``).

The read: where the body's outline in an axial slice has clear air outside it and body inside it
(``CLEAR_MM``), a blurred step of height ``delta`` has a peak gradient of
``delta / (sqrt(2 pi) * s)`` with ``s`` the blur and the derivative's own smoothing added in
quadrature. ``delta`` is read per slice, from the body's level just inside against the air's just
outside. The median over the outline's points, less the spread of the voxel's own box (a third of
its width, as a sharp edge sampled on the grid has), is the scan's blur. A coarse grid alone is
no blur: a lobe narrower than half a voxel is lost to the grid whatever the rule does.

Array contract: ``hu`` float32 HU ``[x, y, z]``, z the long axis (canonical axes).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from inference.pipeline.geometry import bounding_box

#: Above this blur (mm, Gaussian sigma) the air-edge rule grows a lung and does not trim it.
SHARP_MM = 0.2
#: What attenuates (HU): the body is everything above, holes filled per slice.
BODY_HU = -400.0
#: Axial slices read, evenly spaced over the body's extent.
SAMPLE_SLICES = 12
#: An outline point is read only with nothing but air this far outside and nothing but body this far
#: inside it (mm): a bed, a paw or a second mouse nearby would shorten the step.
CLEAR_MM = 1.2
#: The levels each side of the step are read this far from the outline (mm, from-to).
LEVEL_RING_MM = (0.6, 1.2)
#: The gradient's own smoothing (voxels): it quietens the noise, and is taken out of the read.
DERIVATIVE_VOXELS = 1.0
#: A voxel's own spread (voxels): the standard deviation of a box one voxel wide, which every
#: scan holds whatever its reconstruction; taken out, so the read is the blur beyond the grid.
VOXEL_SPREAD = float(np.sqrt(1.0 / 12.0))
#: Outline points the read needs before it says anything.
MIN_POINTS = 200


def blur_mm(hu: np.ndarray, spacing_mm: Sequence[float]) -> float | None:
    """The scan's in-plane blur (mm, Gaussian sigma) read at the skin; None when too little
    outline borders clear air (a scan cut inside the body, or one without air around it)."""
    if hu.ndim != 3 or min(hu.shape[:2]) < 8:
        return None
    pixel = float(np.mean(spacing_mm[:2]))
    clear = max(int(np.ceil(CLEAR_MM / pixel)), 3)
    near, far = (max(round(mm / pixel), 1) for mm in LEVEL_RING_MM)
    far = max(far, near + 1)
    held = np.flatnonzero((hu > BODY_HU).any(axis=(0, 1)))
    if held.size == 0:
        return None
    picks = np.unique(np.linspace(held[0], held[-1], SAMPLE_SLICES).round().astype(int))
    reads: list[np.ndarray] = []
    for z in picks:
        read = _read_slice(np.asarray(hu[:, :, z], dtype=np.float32), clear, near, far)
        if read is not None:
            reads.append(read)
    values = np.concatenate(reads) if reads else np.empty(0)
    if values.size < MIN_POINTS:
        return None
    return float(np.median(values)) * pixel


def _read_slice(plane: np.ndarray, clear: int, near: int, far: int) -> np.ndarray | None:
    """The blur (voxels) at each clear outline point of one axial slice, or None."""
    box = bounding_box(plane > BODY_HU, clear + far + 3)
    if box is None:
        return None
    plane = plane[box]
    body = ndimage.binary_fill_holes(plane > BODY_HU)
    if body.all():
        return None
    inside = ndimage.distance_transform_edt(body)
    outside = ndimage.distance_transform_edt(~body)
    tissue = plane[(inside >= near) & (inside <= far)]
    air = plane[(outside >= near) & (outside <= far)]
    if tissue.size < 20 or air.size < 20:
        return None
    delta = float(np.median(tissue) - np.median(air))
    if delta <= 0:
        return None
    # A point is read where the body runs at least ``clear`` inwards and the air outwards, and no
    # other body (a bed, a paw, a neighbour) lies within ``clear`` beyond it: the body grown by
    # ``clear`` and shrunk back closes every gap narrower than twice that.
    deep = ndimage.maximum_filter(inside, size=2 * clear + 1) >= clear
    airy = ndimage.maximum_filter(outside, size=2 * clear + 1) >= clear
    closed = ndimage.distance_transform_edt(outside <= clear) > clear
    gaps = ndimage.distance_transform_edt(~(closed & ~body)) <= 2
    outline = body & (inside <= 1) & deep & airy & ~gaps
    if not outline.any():
        return None
    gradient = ndimage.gaussian_gradient_magnitude(plane, DERIVATIVE_VOXELS)
    peak = ndimage.maximum_filter(gradient, size=5)[outline]
    peak = peak[peak > 0]
    spread = delta / (np.sqrt(2.0 * np.pi) * peak)
    return np.sqrt(np.clip(spread**2 - DERIVATIVE_VOXELS**2 - VOXEL_SPREAD**2, 0.0, None))


def is_blurred(blur: float | None) -> bool:
    """Whether a scan read at ``blur`` mm is past ``SHARP_MM`` (an unread scan is not)."""
    return blur is not None and blur > SHARP_MM


def blur_finding(blur: float | None) -> str | None:
    """The manifest's sentence for a scan past ``SHARP_MM`` (None for a sharper or unread one)."""
    if blur is None or not is_blurred(blur):
        return None
    return (
        f"The scan's edges are blurred (about {blur:.2f} mm, read at the skin; the lung rule trims "
        f"outlines only up to {SHARP_MM:.2f} mm): the lungs' outlines were grown into the air they "
        "hold but not trimmed to it, so that their thin edges are kept. Organ outlines are less "
        "certain than on a sharper scan."
    )
