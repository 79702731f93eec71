"""Analytic shapes painted into a voxel canvas, each evaluated only inside its own bounding box.

Array contract: ``hu`` (float32, Hounsfield units) and ``labels`` (uint8, canonical structure ids)
have axes (x, y, z) in closest-canonical RAS order: x grows towards the mouse's right, y towards
its ventral (anterior) side and z towards its head. Voxel centres are at ``index * spacing_mm``;
every shape is described in millimetres in that frame.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

Vec3 = tuple[float, float, float]


@dataclass
class Canvas:
    """A phantom under construction: intensities and labels on one isotropic grid."""

    hu: np.ndarray
    labels: np.ndarray
    spacing_mm: float

    @classmethod
    def empty(cls, shape: tuple[int, int, int], spacing_mm: float, fill_hu: float = -1000.0) -> Canvas:
        return cls(
            hu=np.full(shape, fill_hu, dtype=np.float32),
            labels=np.zeros(shape, dtype=np.uint8),
            spacing_mm=spacing_mm,
        )

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.hu.shape  # type: ignore[return-value]

    def box(self, low_mm: np.ndarray, high_mm: np.ndarray) -> tuple[slice, slice, slice] | None:
        """Index slices covering the millimetre box, clipped to the canvas (None when outside)."""
        lo = np.maximum(np.floor(np.asarray(low_mm) / self.spacing_mm).astype(int), 0)
        hi = np.minimum(np.ceil(np.asarray(high_mm) / self.spacing_mm).astype(int) + 1, self.shape)
        if np.any(hi <= lo):
            return None
        return (slice(lo[0], hi[0]), slice(lo[1], hi[1]), slice(lo[2], hi[2]))

    def grid(self, box: tuple[slice, slice, slice]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Open (broadcastable) millimetre coordinates of the voxel centres inside ``box``."""
        s = self.spacing_mm
        x = np.arange(box[0].start, box[0].stop, dtype=np.float32) * s
        y = np.arange(box[1].start, box[1].stop, dtype=np.float32) * s
        z = np.arange(box[2].start, box[2].stop, dtype=np.float32) * s
        return x[:, None, None], y[None, :, None], z[None, None, :]

    def paint(
        self,
        box: tuple[slice, slice, slice],
        mask: np.ndarray,
        *,
        hu: float | np.ndarray | None,
        label: int | None,
        within: Sequence[int] | np.ndarray | None = None,
    ) -> None:
        """Set intensity and/or label where ``mask`` (shaped like ``box``) holds.

        ``within`` optionally restricts painting to voxels whose current label is in that list,
        which is how organs are kept inside the body and lesions inside their host organ.
        """
        if within is not None:
            mask = mask & np.isin(self.labels[box], within)
        if hu is not None:
            region = self.hu[box]
            region[mask] = hu if np.isscalar(hu) else np.asarray(hu)[mask]
        if label is not None:
            self.labels[box][mask] = label


def rotation(rng_angles_rad: Sequence[float] | np.ndarray) -> np.ndarray:
    """Rotation matrix from three Euler angles (about x, then y, then z), radians."""
    ax, ay, az = rng_angles_rad
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


@dataclass(frozen=True)
class Blob:
    """A smoothly deformed ellipsoid.

    ``semi_axes_mm`` along the rotated axes; ``bumps`` are (amplitude, frequency vector, phase)
    triples that modulate the normalised radius, giving organ-like irregular outlines.
    """

    centre_mm: Vec3
    semi_axes_mm: Vec3
    rot: np.ndarray
    bumps: tuple[tuple[float, Vec3, float], ...] = ()

    def scaled(self, factor: float) -> Blob:
        a = tuple(v * factor for v in self.semi_axes_mm)
        return Blob(self.centre_mm, a, self.rot, self.bumps)  # type: ignore[arg-type]

    def grown(self, margin_mm: float) -> Blob:
        a = tuple(max(v + margin_mm, 0.05) for v in self.semi_axes_mm)
        return Blob(self.centre_mm, a, self.rot, self.bumps)  # type: ignore[arg-type]

    @property
    def volume_mm3(self) -> float:
        a, b, c = self.semi_axes_mm
        return float(4.0 / 3.0 * np.pi * a * b * c)

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        # The bumps can push the outline out by their summed amplitude (radius grows ~ 1/sqrt(1-A)).
        amp = sum(abs(b[0]) for b in self.bumps)
        reach = float(max(self.semi_axes_mm)) / np.sqrt(max(1.0 - amp, 0.3)) + 0.5
        c = np.asarray(self.centre_mm)
        return c - reach, c + reach

    def mask(self, canvas: Canvas) -> tuple[tuple[slice, slice, slice], np.ndarray] | None:
        box = canvas.box(*self.bounds())
        if box is None:
            return None
        x, y, z = canvas.grid(box)
        c = self.centre_mm
        dx, dy, dz = x - c[0], y - c[1], z - c[2]
        r = self.rot.astype(np.float32)
        a = self.semi_axes_mm
        u = (r[0, 0] * dx + r[1, 0] * dy + r[2, 0] * dz) / a[0]
        v = (r[0, 1] * dx + r[1, 1] * dy + r[2, 1] * dz) / a[1]
        w = (r[0, 2] * dx + r[1, 2] * dy + r[2, 2] * dz) / a[2]
        r2 = u * u + v * v + w * w
        for amp, freq, phase in self.bumps:
            r2 = r2 * (1.0 + amp * np.sin(freq[0] * u + freq[1] * v + freq[2] * w + phase))
        return box, r2 < 1.0


def random_blob(
    rng: np.random.Generator,
    centre_mm: Vec3,
    semi_axes_mm: Vec3,
    *,
    tilt_rad: float = 0.25,
    bumpiness: float = 0.12,
    n_bumps: int = 3,
) -> Blob:
    """An ellipsoid with a random small rotation and ``n_bumps`` smooth surface undulations."""
    rot = rotation(rng.uniform(-tilt_rad, tilt_rad, size=3))
    bumps = tuple(
        (
            float(rng.uniform(-bumpiness, bumpiness)),
            tuple(float(f) for f in rng.normal(0.0, 2.2, size=3)),
            float(rng.uniform(0, 2 * np.pi)),
        )
        for _ in range(n_bumps)
    )
    return Blob(centre_mm, semi_axes_mm, rot, bumps)  # type: ignore[arg-type]


def tube_masks(
    canvas: Canvas, points_mm: np.ndarray, radii_mm: Sequence[float] | np.ndarray | float
) -> list[tuple[tuple[slice, slice, slice], np.ndarray]]:
    """Masks of a tube (chain of capsules) along ``points_mm`` (P x 3) with per-point radii."""
    pts = np.asarray(points_mm, dtype=np.float32)
    radii = np.broadcast_to(np.asarray(radii_mm, dtype=np.float32), (len(pts),))
    out = []
    for i in range(len(pts) - 1):
        p, q = pts[i], pts[i + 1]
        r = float(max(radii[i], radii[i + 1]))
        box = canvas.box(np.minimum(p, q) - r - 0.3, np.maximum(p, q) + r + 0.3)
        if box is None:
            continue
        x, y, z = canvas.grid(box)
        d = q - p
        length2 = float(d @ d) or 1e-6
        t = ((x - p[0]) * d[0] + (y - p[1]) * d[1] + (z - p[2]) * d[2]) / length2
        t = np.clip(t, 0.0, 1.0)
        rad = radii[i] + (radii[i + 1] - radii[i]) * t
        dist2 = (x - p[0] - t * d[0]) ** 2 + (y - p[1] - t * d[1]) ** 2 + (z - p[2] - t * d[2]) ** 2
        out.append((box, dist2 < rad * rad))
    return out


def smooth_path(
    rng: np.random.Generator,
    start_mm: np.ndarray,
    n_steps: int,
    step_mm: float,
    centre_mm: np.ndarray,
    half_extent_mm: np.ndarray,
    turn: float = 0.6,
) -> np.ndarray:
    """A tortuous random walk with momentum, reflected back into an ellipsoidal region."""
    pts = [np.asarray(start_mm, dtype=np.float64)]
    direction = rng.normal(size=3)
    direction /= np.linalg.norm(direction)
    for _ in range(n_steps):
        direction = direction + rng.normal(scale=turn, size=3)
        rel = (pts[-1] - centre_mm) / half_extent_mm
        if float(rel @ rel) > 0.8:
            # Steer back towards the region's centre: the gut stays inside the abdomen.
            direction -= 1.5 * rel / np.linalg.norm(rel)
        direction /= np.linalg.norm(direction)
        pts.append(pts[-1] + step_mm * direction)
    return np.asarray(pts)
