"""A mouse lying obliquely in the scanner, turned so that its long axis lies along the scan's.

The orientation finder (``orientation.py``) puts the mouse in the canonical pose by whole axes
(which end is cranial, which side dorsal). A mouse lying 10-30 degrees off the scanner's axis
(diagonal on its bed, or its head raised) stays oblique after that, and the networks were trained
on mice within a few degrees of the axis (``inference/phantom/synth.py``: rotations of 4-6
degrees). On the Digimouse CT tilted in the scan (inference/models/README.md, Orientation) the
right kidney fell from 0.86 to 0.72-0.78 at 20 degrees and the tumor network drew 13-1,900 mm^3 of
"tumor" at the body's oblique cut from 20-30 degrees of pitch.

When the body's axis (the line through its cross-sections' centres, limbs, tail and bed opened
away, on the orientation finder's ~1 mm pooled copy) lies more than ``MIN_TILT_DEG`` off the
canonical z axis, the scan is resampled (linearly, on its own voxel size) turned about the
body's centre so that the axis lies along z; the models run on that, and every map is put back on
the scan's grid (``Straightening.undo``: a label map by a vote of the eight straightened voxels
around each scan voxel, weighted as linear interpolation weighs them, so a label map stays a
label map and a thin structure keeps its width; the uncertainty map linearly). The turn is the
smallest rotation that takes the axis onto z, so it never mirrors nor spins the mouse about its
own axis. A mouse within ``MIN_TILT_DEG`` is left as it is: the resampling would cost more than it
gives there.

A mouse rolled part-way onto its side (10-40 degrees about its long axis, the orientation finder
having already put its back as near dorsal as whole axes can) is a second case: rolled 20 degrees,
2.4.0's liver fell to 0.88 and the spleen to 0.50 on held-out phantoms (the card's Robustness
table). The roll is read off the spine (``read_roll``): in the straightened frame, the bone that
sits at the same place relative to the trunk's centre along the whole trunk. A mouse rolled
``MIN_ROLL_DEG`` or more is turned about its long axis until the spine lies straight dorsal; less
is left as it lies, since the models learned the Digimouse atlas, which lies rolled 6-11 degrees.

Array contract: ``[x, y, z]`` header-canonical arrays (after the orientation finder's turn),
``spacing_mm`` their voxel size; HU in.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from inference.pipeline.geometry import bounding_box
from inference.pipeline.orientation import block_max, block_mean, largest, open_mm, work_factors

#: Tilts below this (degrees between the body's axis and z) are left alone: the networks learned
#: mice turned by up to 4-6 degrees.
MIN_TILT_DEG = 7.0
#: Beyond this the finder's whole-axis answer is itself unsure (a supine Digimouse tilted 35
#: degrees keeps its header); a tilt this large is left as it is rather than guessed.
MAX_TILT_DEG = 40.0
#: Matter (mouse, bed) above this HU.
MATTER_HU = -400.0
#: Opening radius that takes the bed, legs and tail off the body before its axis is read.
TRUNK_OPEN_MM = 2.5
#: A body must be at least this elongated (principal axes' length ratio) for its axis to mean much.
MIN_ELONGATION = 1.4
#: Air kept round the turned matter's box.
MARGIN_MM = 2.0
#: Rolls (degrees about the long axis, read off the spine) below this are left alone: the
#: Digimouse atlas, which the models train on, reads 6.1-10.5 as it lies (0.14-0.42 mm voxels,
#: whole and torso), upright held-out phantoms -1.4 to 0.4.
MIN_ROLL_DEG = 15.0
#: A roll past this would have been a quarter turn of the orientation finder's: left as it is.
MAX_ROLL_DEG = 45.0
#: Voxel size (mm) of the copy the spine is found on: the ~1 mm pooled copy averages it away.
ROLL_WORK_MM = 0.4
#: Bone above this HU on that copy.
BONE_HU = 400.0
#: Slabs along the long axis, and the cells of the offsets from a slab's centre, in mm.
SLAB_MM = 1.0
CELL_MM = 0.5
#: Offsets are binned up to this many cells (20 mm) either way of a slab's centre.
HALF_CELLS = 40
#: Slabs with less trunk than this share of the median slab's are the thin ends, left out.
MIN_SLAB_SHARE = 0.3
#: The spine's cell must hold bone in at least this share of the trunk's slabs (ribs, skull and
#: pelvis hold bone in a few slabs at any one place).
MIN_SPINE_SHARE = 0.3


@dataclass(frozen=True)
class Straightening:
    """The turn applied: ``rotation`` takes a direction of the scan's canonical frame (mm) into the
    straightened frame; a point ``p`` (mm from the first voxel) lands at ``rotation @ (p - centre_mm)
    - origin_mm``, in mm from the straightened grid's first voxel of ``shape``."""

    rotation: np.ndarray
    centre_mm: np.ndarray
    origin_mm: np.ndarray
    shape: tuple[int, int, int]
    source_shape: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]
    tilt_deg: float
    #: Degrees the mouse was turned back about its long axis (0: not rolled, or left as it lay).
    roll_deg: float = 0.0

    def _matrix(self, forward: bool) -> tuple[np.ndarray, np.ndarray]:
        """``affine_transform``'s (matrix, offset) from output voxel indices to input ones."""
        s = np.asarray(self.spacing_mm, dtype=np.float64)
        if forward:  # straightened voxel j <- scan voxel i = (R^T (o + j s) + c) / s
            matrix = (self.rotation.T * s[None, :]) / s[:, None]
            offset = (self.rotation.T @ self.origin_mm + self.centre_mm) / s
        else:  # scan voxel i <- straightened voxel j = (R (i s - c) - o) / s
            matrix = (self.rotation * s[None, :]) / s[:, None]
            offset = (-self.rotation @ self.centre_mm - self.origin_mm) / s
        return matrix, offset

    def apply(self, volume: np.ndarray) -> np.ndarray:
        """``volume`` (the scan's canonical grid) resampled linearly onto the straightened grid.
        Beyond the scan's edge its edge voxels repeat: a body cut by the field of view runs on
        into the straightened grid's edge, as the networks saw cut scans, and does not end in a
        face of air that reads as skin (lesions would be drawn on it). Linear, not cubic: cubic
        keeps thin bone 0.01 better (Dice) for twice the time."""
        matrix, offset = self._matrix(forward=True)
        out = ndimage.affine_transform(
            np.asarray(volume, dtype=np.float32), matrix, offset, self.shape, order=1, mode="nearest"
        )
        return out.astype(volume.dtype) if np.issubdtype(volume.dtype, np.integer) else out

    def undo(self, array: np.ndarray, *, labels: bool = True) -> np.ndarray:
        """A map on the straightened grid put back on the scan's grid (0 outside what it covers).

        A label map (``labels``) takes, at each scan voxel, the label with the most weight among
        the eight straightened voxels around it, each weighted as linear interpolation would
        weigh it: the nearest voxel alone shifts every outline by up to half a voxel at random,
        which thins a spinal cord or a cortical bone a few voxels across (rolled phantoms,
        medians of four: bones 0.848 -> 0.874 Dice with the vote, cord 0.875 -> 0.883; the model
        card's first section). Where the nearest voxel's whole neighbourhood holds one label,
        the vote cannot differ from it and it is kept as it is. Any other map (uncertainty) is
        put back linearly.
        """
        matrix, offset = self._matrix(forward=False)
        out = np.zeros(self.source_shape, dtype=array.dtype)
        # Only the scan voxels the straightened grid covers can be anything but 0.
        corners = np.array(list(np.ndindex(2, 2, 2)), dtype=np.float64) * (np.array(self.shape) - 1)
        back = self._corners_in_scan(corners)
        lo = np.clip(np.floor(back.min(axis=0)).astype(int) - 1, 0, None)
        hi = np.minimum(np.ceil(back.max(axis=0)).astype(int) + 2, self.source_shape)
        if np.any(hi <= lo):
            return out
        region = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
        shifted = offset + matrix @ lo
        box = tuple(int(v) for v in hi - lo)
        if labels:
            nearest = ndimage.affine_transform(array, matrix, shifted, box, order=0, cval=0)
            vote_at_borders(nearest, array, matrix, shifted)
            out[region] = nearest
        else:
            smooth = ndimage.affine_transform(
                np.asarray(array, dtype=np.float32), matrix, shifted, box, order=1, cval=0.0
            )
            integer = np.issubdtype(array.dtype, np.integer)
            out[region] = np.rint(smooth).astype(array.dtype) if integer else smooth
        return out

    def _corners_in_scan(self, indices: np.ndarray) -> np.ndarray:
        """Straightened voxel indices as (fractional) scan voxel indices."""
        matrix, offset = self._matrix(forward=True)
        return indices @ matrix.T + offset

    def as_json(self) -> dict[str, object]:
        return {
            "tilt_deg": round(self.tilt_deg, 1),
            "roll_deg": round(self.roll_deg, 1),
            "rotation": [[round(float(v), 4) for v in row] for row in self.rotation],
            "straightened_shape": list(self.shape),
        }

    @property
    def finding(self) -> str:
        lay = []
        if self.tilt_deg >= MIN_TILT_DEG:
            lay.append(f"its long axis lay {self.tilt_deg:.0f} degrees off the scan's")
        if self.roll_deg:
            side = "right" if self.roll_deg > 0 else "left"
            lay.append(
                f"it lay rolled {abs(self.roll_deg):.0f} degrees onto its {side} side (read off its spine)"
            )
        return (
            f"The mouse lay obliquely ({'; '.join(lay)}): the scan was resampled with the mouse "
            "straightened for the models, and the results were put back on the scan's grid."
        )


#: Scan voxels voted on at a time: eight corners of three int64 indices and float64 weights
#: each, about 150 MB of working arrays at once.
VOTE_CHUNK = 1 << 18


def vote_at_borders(nearest: np.ndarray, source: np.ndarray, matrix: np.ndarray, offset: np.ndarray) -> None:
    """Relabel, in place, the voxels of ``nearest`` (``source`` resampled by nearest voxel through
    ``affine_transform``'s ``matrix`` and ``offset``) that sit next to another label: each takes
    the label whose share of the eight ``source`` voxels around its point, weighted linearly, is
    largest. Points beyond ``source`` count as label 0, as ``nearest`` took them."""
    box = bounding_box(nearest, 1)  # labels and the layer of background round them
    if box is None:
        return
    labelled = nearest[box]
    border = ndimage.maximum_filter(labelled, size=3) != ndimage.minimum_filter(labelled, size=3)
    where = np.argwhere(border) + np.array([b.start for b in box])
    steps = np.array(list(np.ndindex(2, 2, 2)), dtype=np.int64)  # the eight corners' offsets
    size = np.array(source.shape, dtype=np.int64)
    for start in range(0, len(where), VOTE_CHUNK):
        index = where[start : start + VOTE_CHUNK]
        point = index @ matrix.T + offset
        base = np.floor(point).astype(np.int64)
        frac = point - base
        # [n, 8]: each corner's label (0 beyond the source) and linear weight.
        corner = base[:, None, :] + steps[None, :, :]
        inside = np.all((corner >= 0) & (corner < size), axis=2)
        clipped = np.clip(corner, 0, size - 1)
        votes = np.where(inside, source[clipped[..., 0], clipped[..., 1], clipped[..., 2]], 0)
        weight = np.prod(np.where(steps[None, :, :] == 1, frac[:, None, :], 1.0 - frac[:, None, :]), axis=2)
        # Each corner's label scored by the weight of every corner that carries it.
        share = np.zeros(weight.shape, dtype=np.float64)
        for k in range(8):
            share += weight[:, k : k + 1] * (votes == votes[:, k : k + 1])
        winner = votes[np.arange(len(votes)), np.argmax(share, axis=1)]
        nearest[index[:, 0], index[:, 1], index[:, 2]] = winner


def _rotation_onto_z(axis: np.ndarray) -> np.ndarray:
    """The smallest rotation taking the unit vector ``axis`` (with a positive z) onto +z."""
    z = np.array([0.0, 0.0, 1.0])
    k = np.cross(axis, z)
    sin, cos = float(np.linalg.norm(k)), float(axis @ z)
    if sin < 1e-9:
        return np.eye(3)
    kx = np.array([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]])
    return np.eye(3) + kx + kx @ kx * ((1.0 - cos) / sin**2)


def _rotation_about_z(degrees: float) -> np.ndarray:
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def read_roll(
    volume: np.ndarray,
    spacing_mm: Sequence[float],
    trunk_mm: np.ndarray,
    rotation: np.ndarray,
    centre: np.ndarray,
    body: np.ndarray,
    step: np.ndarray,
) -> float | None:
    """Degrees the mouse lies rolled about its long axis, positive onto its right side (its spine
    towards +x), or None where no spine stands out.

    ``trunk_mm``: the trunk's points (mm from the scan's first voxel); ``rotation`` and ``centre``:
    the turn that lays the long axis along z; ``body``: the trunk's mask on the pooled grid of
    voxel size ``step``, grown by one voxel: only bone in it counts (a bed as dense as bone runs
    the mouse's whole length at one place, as the spine does, but the trunk's opening took it off).
    In the turned frame the trunk is cut into ``SLAB_MM`` slabs; the offsets of a slab's bone (on
    a ``ROLL_WORK_MM`` copy, block maxima over ``BONE_HU``) from its trunk's centre are binned in
    ``CELL_MM`` cells, each cell counting the slabs it holds bone in. The spine is the plateau of
    cells round the best one, and the roll is the angle between straight dorsal (-y) and the
    plateau's count-weighted centre."""
    spacing = np.asarray(spacing_mm, dtype=np.float64)
    factors = [max(1, round(ROLL_WORK_MM / float(s))) for s in spacing]
    peak = block_max(volume, factors)
    bone = (np.argwhere(peak > BONE_HU) + 0.5) * spacing * np.asarray(factors) - 0.5 * spacing
    cell = np.floor((bone + 0.5 * spacing) / step).astype(np.int64)
    in_body = np.all((cell >= 0) & (cell < np.array(body.shape)), axis=1)
    in_body[in_body] = body[cell[in_body, 0], cell[in_body, 1], cell[in_body, 2]]
    bone = bone[in_body]
    trunk = (trunk_mm - centre) @ rotation.T
    bone = (bone - centre) @ rotation.T
    # Slabs indexed from the trunk's first one; each slab's trunk centre (x, y).
    trunk_slab = np.floor(trunk[:, 2] / SLAB_MM).astype(np.int64)
    first = int(trunk_slab.min())
    trunk_slab -= first
    counts = np.bincount(trunk_slab)
    # The trunk's own slabs: not the thin ends (snout, tail root) where a centre means little.
    kept = counts >= MIN_SLAB_SHARE * np.median(counts[counts > 0])
    if kept.sum() < 8 or len(bone) == 0:
        return None
    centres = np.stack(
        [np.bincount(trunk_slab, weights=trunk[:, i]) / np.maximum(counts, 1) for i in (0, 1)], axis=1
    )
    bone_slab = np.floor(bone[:, 2] / SLAB_MM).astype(np.int64) - first
    on_trunk = (bone_slab >= 0) & (bone_slab < len(counts))
    on_trunk[on_trunk] = kept[bone_slab[on_trunk]]
    bone, bone_slab = bone[on_trunk], bone_slab[on_trunk]
    cells = np.floor((bone[:, :2] - centres[bone_slab]) / CELL_MM).astype(np.int64) + HALF_CELLS
    near = ((cells >= 0) & (cells < 2 * HALF_CELLS)).all(axis=1)
    # Each (slab, cell) once: a cell's count is the number of slabs it holds bone in. The pair is
    # one integer (a unique over rows costs several times more).
    side = 2 * HALF_CELLS
    slab_cells = np.unique((bone_slab[near] * side + cells[near, 0]) * side + cells[near, 1])
    grid = (
        np.bincount(slab_cells % (side * side), minlength=side * side).reshape(side, side).astype(np.float64)
    )
    best = np.unravel_index(int(np.argmax(grid)), grid.shape)
    if grid[best] < MIN_SPINE_SHARE * kept.sum():
        return None
    # The spine is 1.5-2 mm across: its cells form a plateau of near-equal counts, whose argmax is
    # any of them. Its centre is the count-weighted centre of the cells joined to the best that
    # hold bone in at least 3/4 as many slabs.
    plateau, _ = ndimage.label(grid >= 0.75 * grid[best], structure=np.ones((3, 3), bool))
    weights = np.where(plateau == plateau[best], grid, 0.0)
    offset_mm = (np.indices(grid.shape) - HALF_CELLS + 0.5) * CELL_MM
    x, y = (float((axis_mm * weights).sum() / weights.sum()) for axis_mm in offset_mm)
    if math.hypot(x, y) < 1.0:
        return None
    return math.degrees(math.atan2(x, -y))


def find_tilt(volume: np.ndarray, spacing_mm: Sequence[float]) -> Straightening | None:
    """The turn that straightens the mouse in ``volume`` (HU, canonical pose by whole axes), or
    None when its long axis lies within ``MIN_TILT_DEG`` of the z axis and it is rolled less than
    ``MIN_ROLL_DEG``, when the axis lies further than ``MAX_TILT_DEG`` from z, or when the body has
    no clear long axis."""
    factors = work_factors(volume.shape, spacing_mm)
    pooled = block_mean(volume, factors)
    step = np.asarray(spacing_mm, dtype=np.float64) * np.asarray(factors)
    if pooled.size == 0:
        return None
    matter = pooled > MATTER_HU
    trunk, size = largest(open_mm(matter, TRUNK_OPEN_MM, step))
    if size < 100:
        return None
    # Pooled voxel centres, in mm from the scan's first voxel.
    points = (np.argwhere(trunk) + 0.5) * step - 0.5 * np.asarray(spacing_mm)
    centre = points.mean(axis=0)
    values = np.linalg.eigvalsh(np.cov((points - centre).T))
    if values[1] <= 0 or math.sqrt(values[2] / values[1]) < MIN_ELONGATION:
        return None
    # The axis through the cross-sections' centres (a line fitted to x and y against z), not the
    # body's principal axis: a torso cut by the scanner's axial field of view ends in oblique
    # faces, which pull a principal axis further from z (13-35 degrees read for a Digimouse
    # torso turned 10-30; its cross-sections' centres say 10-29).
    dz = points[:, 2] - centre[2]
    slope = (points[:, :2] - centre[:2]).T @ dz / max(float(dz @ dz), 1e-9)
    axis = np.array([slope[0], slope[1], 1.0])
    axis /= np.linalg.norm(axis)
    tilt = math.degrees(math.acos(min(1.0, float(axis[2]))))
    if tilt > MAX_TILT_DEG:
        return None
    rotation = _rotation_onto_z(axis) if tilt >= MIN_TILT_DEG else np.eye(3)
    body = ndimage.binary_dilation(trunk, structure=np.ones((3, 3, 3), bool))
    roll = read_roll(volume, spacing_mm, points, rotation, centre, body, step)
    roll_deg = roll if roll is not None and MIN_ROLL_DEG <= abs(roll) <= MAX_ROLL_DEG else 0.0
    if tilt < MIN_TILT_DEG and not roll_deg:
        return None
    # Turned back about the long axis until the spine lies straight dorsal.
    rotation = _rotation_about_z(-roll_deg) @ rotation
    # The straightened grid holds every bit of matter (a second mouse, the bed) turned, with air round.
    box = bounding_box(matter, 0)
    assert box is not None
    lo = np.array([b.start for b in box], dtype=np.float64) * step
    hi = np.array([b.stop for b in box], dtype=np.float64) * step
    corners = np.array([[(lo, hi)[c][i] for i, c in enumerate(bits)] for bits in np.ndindex(2, 2, 2)])
    turned = (corners - centre) @ rotation.T
    spacing = np.asarray(spacing_mm, dtype=np.float64)
    origin = turned.min(axis=0) - MARGIN_MM
    shape = tuple(int(v) for v in np.ceil((turned.max(axis=0) + MARGIN_MM - origin) / spacing) + 1)
    return Straightening(
        rotation=rotation,
        centre_mm=centre,
        origin_mm=origin,
        shape=(shape[0], shape[1], shape[2]),
        source_shape=(int(volume.shape[0]), int(volume.shape[1]), int(volume.shape[2])),
        spacing_mm=(float(spacing[0]), float(spacing[1]), float(spacing[2])),
        tilt_deg=tilt,
        roll_deg=roll_deg,
    )
