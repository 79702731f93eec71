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

The lung-nodule rule (the tumor card's ``detect``) was tuned on phantoms at 0.10-0.19 mm. Blur
fades a small nodule into the lung and smears the rim, a rib or a thin septum into blobs that look
like one. On validation phantoms 8000-8007 it found 20 of 27 lung nodules as generated, 13 where
the blur read 0.22-0.28 mm and 8 at 0.32-0.36 mm; on the tumor-free Digimouse torso it found
none up to a read of 0.254 mm and 3 at 0.276 mm. Past ``NODULES_MAX_MM`` the rule is not run and
the lungs' metastasis counts are "not assessed" (``predict.detect_lesions``), never a 0.

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
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from inference.pipeline.drift import BODY_HU
from inference.pipeline.geometry import bounding_box

#: Above this blur (mm, Gaussian sigma) the air-edge rule grows a lung and does not trim it.
SHARP_MM = 0.2
#: Above this blur (mm) the lungs are not searched for metastases, and say "not assessed".
NODULES_MAX_MM = 0.25
#: Axial slices read, evenly spaced over the body's extent.
SAMPLE_SLICES = 12
#: An outline point is read only with nothing but air this far outside and nothing but body this far
#: inside it (mm): a bed, a paw or a second mouse nearby would shorten the step.
CLEAR_MM = 1.2
#: The levels each side of the step are read in a ring this wide (mm, at least 3 voxels) from
#: ``RING_SIGMAS`` times the edge's spread on (the scan's blur as last read, the derivative's
#: smoothing and the voxel's own box), in up to ``RING_ROUNDS`` reads, never beyond ``MAX_RING_MM``.
RING_WIDTH_MM = 0.6
RING_SIGMAS = 3.0
RING_ROUNDS = 3
MAX_RING_MM = 3.0
#: The gradient's own smoothing (voxels): it quietens the noise, and is taken out of the read.
DERIVATIVE_VOXELS = 1.0
#: A voxel's own spread (voxels): the standard deviation of a box one voxel wide, which every
#: scan holds whatever its reconstruction; taken out, so the read is the blur beyond the grid.
VOXEL_SPREAD = float(np.sqrt(1.0 / 12.0))
#: The step's peak gradient is sought this far from the outline (mm), away from bone (above
#: ``BONE_HU``), whose edges are steeper than the skin's.
PEAK_REACH_MM = 0.5
BONE_HU = 300.0
#: Outline points the read needs before it says anything.
MIN_POINTS = 200


def blur_mm(hu: np.ndarray, spacing_mm: Sequence[float]) -> float | None:
    """The scan's in-plane blur (mm, Gaussian sigma) read at the skin; None when too little
    outline borders clear air (a scan cut inside the body, or one without air around it)."""
    if hu.ndim != 3 or min(hu.shape[:2]) < 8:
        return None
    pixel = float(np.mean(spacing_mm[:2]))
    clear = max(int(np.ceil(CLEAR_MM / pixel)), 3)
    held = np.flatnonzero((hu > BODY_HU).any(axis=(0, 1)))
    if held.size == 0:
        return None
    picks = np.unique(np.linspace(held[0], held[-1], SAMPLE_SLICES).round().astype(int))
    pad = clear + int(np.ceil(MAX_RING_MM / pixel)) + 3
    reach = max(round(PEAK_REACH_MM / pixel), 1)
    edges = [
        e for z in picks if (e := _Edge.of(np.asarray(hu[:, :, z], dtype=np.float32), clear, pad, reach))
    ]
    if sum(e.peak.size for e in edges) < MIN_POINTS:
        return None
    # The levels each side must be read beyond the edge's spread (the blur, the derivative's
    # smoothing and the voxel's box together); a blurred scan's first read is short of its blur
    # (its levels are read inside the spread), so the ring moves out until it is clear.
    width = max(round(RING_WIDTH_MM / pixel), 3)
    limit = max(round(MAX_RING_MM / pixel) - width, 1)
    near, read = 0, 0.0
    for _ in range(RING_ROUNDS):
        spread = np.sqrt((read / pixel) ** 2 + DERIVATIVE_VOXELS**2 + VOXEL_SPREAD**2)
        wanted = min(int(np.ceil(RING_SIGMAS * spread)), limit)
        if wanted <= near:
            break
        near = wanted
        reads = [r for e in edges if (r := e.read(near, near + width)) is not None]
        values = np.concatenate(reads) if reads else np.empty(0)
        if values.size < MIN_POINTS:
            return None
        read = float(np.median(values)) * pixel
    return read


@dataclass(frozen=True)
class _Edge:
    """One axial slice's body outline where it meets clear air: the slice (cropped round the
    body), each voxel's distance inside and outside the body, and the peak gradient at each clear
    outline point."""

    plane: np.ndarray
    inside: np.ndarray
    outside: np.ndarray
    peak: np.ndarray

    @classmethod
    def of(cls, plane: np.ndarray, clear: int, pad: int, reach: int) -> _Edge | None:
        box = bounding_box(plane > BODY_HU, pad)
        if box is None:
            return None
        plane = plane[box]
        body = ndimage.binary_fill_holes(plane > BODY_HU)
        if body.all():
            return None
        inside = ndimage.distance_transform_edt(body)
        outside = ndimage.distance_transform_edt(~body)
        # A point is read where the body runs at least ``clear`` inwards and the air outwards, and
        # no other body (a bed, a paw, a neighbour) lies within ``clear`` beyond it: the body grown
        # by ``clear`` and shrunk back closes every gap narrower than twice that.
        deep = ndimage.maximum_filter(inside, size=2 * clear + 1) >= clear
        airy = ndimage.maximum_filter(outside, size=2 * clear + 1) >= clear
        closed = ndimage.distance_transform_edt(outside <= clear) > clear
        gaps = ndimage.distance_transform_edt(~(closed & ~body)) <= 2
        outline = body & (inside <= 1) & deep & airy & ~gaps
        if not outline.any():
            return None
        gradient = ndimage.gaussian_gradient_magnitude(plane, DERIVATIVE_VOXELS)
        # The step's own peak, within half a millimetre of the outline: bone's steeper edges
        # (a skull or a rib under the skin) are left out.
        gradient[ndimage.binary_dilation(plane > BONE_HU, iterations=2)] = 0.0
        peak = ndimage.maximum_filter(gradient, size=2 * reach + 1)[outline]
        return cls(plane, inside, outside, peak[peak > 0])

    def read(self, near: int, far: int) -> np.ndarray | None:
        """The blur (voxels) at each point, the step's levels read ``near``-``far`` voxels each side."""
        tissue = self.plane[(self.inside >= near) & (self.inside <= far)]
        air = self.plane[(self.outside >= near) & (self.outside <= far)]
        if tissue.size < 20 or air.size < 20 or self.peak.size == 0:
            return None
        delta = float(np.median(tissue) - np.median(air))
        if delta <= 0:
            return None
        spread = delta / (np.sqrt(2.0 * np.pi) * self.peak)
        return np.sqrt(np.clip(spread**2 - DERIVATIVE_VOXELS**2 - VOXEL_SPREAD**2, 0.0, None))


def is_blurred(blur: float | None, limit: float = SHARP_MM) -> bool:
    """Whether a scan read at ``blur`` mm is past ``limit`` (an unread scan is not)."""
    return blur is not None and blur > limit


def blur_finding(blur: float | None) -> str | None:
    """The manifest's sentence for a scan past ``SHARP_MM`` (None for a sharper or unread one)."""
    if blur is None or not is_blurred(blur):
        return None
    sentence = (
        f"The scan's edges are blurred (about {blur:.2f} mm, read at the skin; the lung rule trims "
        f"outlines only up to {SHARP_MM:.2f} mm): the lungs' outlines were grown into the air they "
        "hold but not trimmed to it, so that their thin edges are kept. Organ outlines are less "
        "certain than on a sharper scan."
    )
    if is_blurred(blur, NODULES_MAX_MM):
        sentence += (
            f' Past {NODULES_MAX_MM:.2f} mm lung metastases are not looked for (they read "not '
            'assessed"): small nodules fade into the lung and blurred ribs and rims look like nodules.'
        )
    return sentence
