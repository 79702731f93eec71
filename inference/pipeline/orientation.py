"""Orientation from the anatomy: which way the mouse lies in a scan, read from the image itself.

The models were trained on prone mice in closest-canonical RAS (geometry's module docstring): x to
the mouse's Right, y Anterior (= ventral in a mouse), z Superior (= cranial). The header only says
how the scanner's axes lie; a mouse scanned supine or on its side, or a file whose exporter dropped
the orientation, reaches the models upside down or sideways. This module finds the mouse's own axes
in the header-canonical array and returns the one of the 48 axis permutations with flips
(:class:`AxisTransform`) that puts it in the canonical pose.

Array contract: the input is the header-canonical scan ``[x, y, z]`` (float or integer, any units:
HU or 8-bit rescaled; only relative intensities are used) with its voxel size ``spacing_mm`` along
those axes. Everything is measured on a block-pooled copy (means and maxima) of about 1 mm voxels
(finer for a small field of view such as a head): about 0.2 s for a 192 x 192 x 438 scan.

The evidence, in the order it is used:

- body: matter vs air by a three-class Otsu threshold (air / soft tissue / bone, so 8-bit scans
  whose soft tissue lies near air work too), opened by a 1.5 mm ball (which removes the animal bed,
  a thin plastic plate or shell, and a neighbour's thin flank), kept as its largest component;
- long (cranio-caudal) axis: the body's principal axis, snapped to the nearest array axis;
- bone: the brightest class (Otsu among the body's voxels above its median, on block maxima so
  thin bone survives the pooling);
- body scans (45 mm or longer): the spine, bone at one place in most cross-sections relative to
  the body's centre, lies dorsal; the head end gets four votes: the lungs (the largest air-density
  region deep inside the body), the braincase (where the skull is closed), the body's volume
  centre (caudal of the middle) and the bone at the two ends (the skull's end has more);
  left/right from the stomach's gas (air just caudal to the lungs, on the mouse's left);
- a trunk without its head (shoulders to hips, thorax and abdomen: shorter than a whole body,
  no braincase, lungs in view): the spine as in a body; the head end from the lungs alone, which
  fill the cranial part of a trunk (the other body votes need the head in view);
- head scans: the braincase (the largest space with bone on all six sides, at least 120 mm3)
  lies dorsal and caudal in the skull, the teeth (the densest voxels) ventral and at the cranial
  end; a head is left/right symmetric, so its handedness is kept from the header.

Weak evidence is never guessed from: without a confident long axis, dorsal and cranial direction
the header is kept; without confident left/right evidence the header's handedness is kept (the
transform is then a rotation, never a mirror).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from nibabel import orientations
from scipy import ndimage

if TYPE_CHECKING:
    from inference.pipeline.straighten import Straightening


#: ``predict_volume(orient=...)``: read the pose from the anatomy, or trust the header alone.
ORIENT_CHOICES = ("anatomy", "header")
#: Confidence (0..1) a decision needs before the anatomy overrules the header.
MIN_CONFIDENCE = 0.5
#: Left/right from soft-tissue asymmetry is weaker evidence: a mirror needs more.
MIN_LEFT_RIGHT_CONFIDENCE = 0.6
#: Voxel size of the working copy; small fields of view (a head) use a finer one (see _grid).
WORK_MM = 1.0
#: The smallest enclosed space taken for a braincase (the atlas heads measure 180-330 mm3 here).
MIN_BRAINCASE_MM3 = 120.0
#: A field of view no longer than this (mm along the body) that holds a braincase is a head
#: alone: a mouse's head is 20-25 mm from nose to the back of the skull, and its neck puts the
#: lungs' apex about 8-10 mm further, so nothing of the trunk is in such a scan.
HEAD_ONLY_MAX_MM = 30.0
#: ... and whose braincase is filled with soft tissue: at most this share of it air- or lung-dark
#: (a thorax cut short looks like a skull at 1 mm, its ribs closing round the lungs' air).
HEAD_ONLY_MAX_DARK = 0.2
#: The length at each end of a head whose mean cross-section tells the nose (narrow) from the neck.
HEAD_END_MM = 1.5
#: A scan shorter than a whole body, with no braincase, is read as a trunk (shoulders to hips,
#: the field of view of a torso scan) from this length on ...
TRUNK_MIN_MM = 20.0
#: ... when its lungs hold at least this much air-dark volume, more than a bowel's gas pocket (the
#: Digimouse torso's lungs measure 323-331 mm3 here at 0.1-0.35 mm voxels; the gas that our
#: phantoms' abdomens alone hold, 15-34 mm3).
TRUNK_MIN_LUNGS_MM3 = 150.0
#: ... and whose lungs' centre lies this far from its middle (a share of its length: unsure at the
#: first, sure at the second). A trunk cut mostly through the thorax has its sternum in as many
#: cross-sections as its spine and can be read upside down (the Digimouse torso's cranial 25-30
#: mm, lungs at 0.56-0.64 of its length); shoulders to hips, with the abdomen in view, puts the
#: lungs' centre at 0.75 (Digimouse) to 0.87 (our phantoms).
TRUNK_LUNGS_OFF_MIDDLE = (0.17, 0.22)
#: Length of a whole body: the head end is voted by the braincase, the volume centre and the bone
#: at the ends as well as the lungs.
BODY_MIN_MM = 45.0
#: Opening radius that removes the animal bed (plates 0.8-1.6 mm thick in our phantoms).
BED_OPEN_MM = 1.5

_AXIS = "xyz"
#: Mouse direction named by each canonical axis end, for the plain-words findings.
_DIRECTION = {("x", 1): "right", ("x", -1): "left", ("y", 1): "ventral", ("y", -1): "dorsal",
              ("z", 1): "cranial", ("z", -1): "caudal"}  # fmt: skip


@dataclass(frozen=True)
class AxisTransform:
    """One of the 48 axis permutations with flips, in nibabel's ``ornt`` convention.

    ``ornt[i] = (j, s)``: input axis ``i`` becomes output axis ``j``, reversed when ``s == -1``.
    Lossless both ways: :meth:`apply` and :meth:`inverse` give views, and
    ``t.inverse().apply(t.apply(a))`` is ``a`` exactly.
    """

    ornt: tuple[tuple[int, int], tuple[int, int], tuple[int, int]] = ((0, 1), (1, 1), (2, 1))

    @classmethod
    def from_array(cls, ornt: np.ndarray) -> AxisTransform:
        rows = [(int(ornt[i][0]), 1 if ornt[i][1] > 0 else -1) for i in range(3)]
        if sorted(r[0] for r in rows) != [0, 1, 2]:
            raise ValueError(f"not an axis permutation: {rows}")
        return cls((rows[0], rows[1], rows[2]))

    @classmethod
    def every(cls) -> list[AxisTransform]:
        """All 48: 6 permutations x 8 flip patterns (24 rotations, 24 mirror images)."""
        return [
            cls.from_array(np.array([[p[i], s[i]] for i in range(3)]))
            for p in itertools.permutations(range(3))
            for s in itertools.product((1, -1), repeat=3)
        ]

    @property
    def array(self) -> np.ndarray:
        return np.array(self.ornt, dtype=float)

    @property
    def matrix(self) -> np.ndarray:
        """3x3 signed permutation ``M``: a direction ``d`` of the input is ``M @ d`` in the output."""
        m = np.zeros((3, 3), dtype=int)
        for i, (j, s) in enumerate(self.ornt):
            m[j, i] = s
        return m

    @property
    def is_identity(self) -> bool:
        return self.ornt == ((0, 1), (1, 1), (2, 1))

    @property
    def is_mirror(self) -> bool:
        """True for an improper transform (determinant -1): it swaps left and right."""
        return round(float(np.linalg.det(self.matrix))) < 0

    def apply(self, array: np.ndarray) -> np.ndarray:
        """Transform the first three axes of ``array`` (a view, no copy)."""
        return orientations.apply_orientation(array, self.array)

    def inverse(self) -> AxisTransform:
        rows: list[tuple[int, int]] = [(0, 1)] * 3
        for i, (j, s) in enumerate(self.ornt):
            rows[j] = (i, s)
        return AxisTransform((rows[0], rows[1], rows[2]))

    def then(self, other: AxisTransform) -> AxisTransform:
        """This transform followed by ``other``."""
        rows = [(other.ornt[j][0], s * other.ornt[j][1]) for j, s in self.ornt]
        return AxisTransform((rows[0], rows[1], rows[2]))

    def shape(self, shape: Sequence[int]) -> tuple[int, int, int]:
        """The output shape for an input of ``shape`` (also right for voxel sizes)."""
        out = [0, 0, 0]
        for i, (j, _) in enumerate(self.ornt):
            out[j] = int(shape[i])
        return (out[0], out[1], out[2])

    def spacing(self, spacing_mm: Sequence[float]) -> tuple[float, float, float]:
        out = [0.0, 0.0, 0.0]
        for i, (j, _) in enumerate(self.ornt):
            out[j] = float(spacing_mm[i])
        return (out[0], out[1], out[2])

    def describe(self) -> str:
        """Plain words, e.g. ``"+x stays right, +y becomes caudal, +z becomes ventral"``."""
        if self.is_identity:
            return "no change"
        parts = []
        for i, (j, s) in enumerate(self.ornt):
            verb = "stays" if (i, s) == (j, 1) else "becomes"
            parts.append(f"+{_AXIS[i]} {verb} {_DIRECTION[(_AXIS[j], s)]}")
        return ", ".join(parts)

    def as_json(self) -> dict[str, object]:
        return {
            "ornt": [list(row) for row in self.ornt],
            "matrix": self.matrix.tolist(),
            "mirror": self.is_mirror,
            "in_words": self.describe(),
        }


@dataclass
class OrientationFinding:
    """What the anatomy says about a header-canonical scan.

    ``anatomy``: the transform the evidence supports (may be weak); ``transform``: the one to apply
    (``anatomy`` where confident, else the header's pose, partly or wholly). ``confidence`` is 0..1
    per decision (``long_axis``, ``dorsal``, ``cranial``, ``left_right``); ``findings`` are plain
    sentences for the run's manifest.
    """

    transform: AxisTransform
    anatomy: AxisTransform
    confidence: dict[str, float]
    findings: list[str]
    kept: str  # "nothing" (anatomy used whole), "left-right" (header's handedness) or "header"
    seconds: float = 0.0
    measures: dict[str, float] = field(default_factory=dict)
    #: The turn that straightened an oblique mouse after the whole-axis one (``straighten.py``).
    straightening: Straightening | None = None

    @property
    def agrees_with_header(self) -> bool | None:
        """Whether the anatomy confirms the header's pose; None when the evidence is too weak."""
        return None if self.kept == "header" else self.anatomy.is_identity

    @property
    def head_only(self) -> bool:
        """Whether the field of view holds a head and nothing of the trunk (``HEAD_ONLY_MAX_MM``)."""
        return bool(self.measures.get("head_only", 0.0))

    @property
    def overall_confidence(self) -> float:
        keys = ("long_axis", "dorsal", "cranial")
        return round(min(self.confidence.get(k, 0.0) for k in keys), 3)

    def as_json(self, header_axcodes: Sequence[str] | None = None) -> dict[str, object]:
        entry: dict[str, object] = {
            "header": "".join(header_axcodes) if header_axcodes else None,
            "anatomy": self.anatomy.as_json(),
            "applied": self.transform.as_json(),
            "agrees_with_header": self.agrees_with_header,
            "kept_from_header": self.kept,
            "confidence": round(self.overall_confidence, 3),
            "confidence_by_decision": {k: round(v, 3) for k, v in self.confidence.items()},
            "findings": list(self.findings),
            "head_only": self.head_only,
            "straightened": self.straightening.as_json() if self.straightening is not None else None,
            "seconds": round(self.seconds, 4),
        }
        return entry


# ----------------------------------------------------------------------------------------------
# Measurements on the working copy
# ----------------------------------------------------------------------------------------------


def work_factors(shape: Sequence[int], spacing_mm: Sequence[float]) -> tuple[int, int, int]:
    """Whole block sizes that give about ``WORK_MM`` voxels, finer for a small field of view
    (at least ~96 voxels along the longest side, so a 25 mm head is measured at ~0.26 mm)."""
    fov = max(n * s for n, s in zip(shape, spacing_mm, strict=True))
    target = min(WORK_MM, max(fov / 96.0, min(spacing_mm)))
    f = [max(1, min(int(n), round(target / s))) for n, s in zip(shape, spacing_mm, strict=True)]
    return (f[0], f[1], f[2])


def pool(volume: np.ndarray, factors: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Block mean and block maximum (float32) over whole blocks of ``factors`` voxels."""
    mean, peak = _pool(volume, factors, mean=True, peak=True)
    assert mean is not None and peak is not None
    return mean, peak


def block_max(volume: np.ndarray, factors: Sequence[int]) -> np.ndarray:
    """``pool``'s block maximum alone (half the work where the mean is not read)."""
    peak = _pool(volume, factors, mean=False, peak=True)[1]
    assert peak is not None
    return peak


def block_mean(volume: np.ndarray, factors: Sequence[int]) -> np.ndarray:
    """``pool``'s block mean alone."""
    mean = _pool(volume, factors, mean=True, peak=False)[0]
    assert mean is not None
    return mean


def _pool(
    volume: np.ndarray, factors: Sequence[int], *, mean: bool, peak: bool
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """``pool``, computing the block mean and the block maximum only where asked.

    One axis at a time, as sums and maxima of strided views (a reshape to six axes and one
    reduction is several times slower: numpy walks the small block axes with large strides).
    """
    volume = np.asarray(volume)
    if volume.flags.f_contiguous and not volume.flags.c_contiguous:
        # A scan from nibabel is Fortran-ordered: pooled as its C-ordered transpose, every
        # strided view below reads whole runs of memory (about 6 times faster).
        means, peaks = _pool(volume.T, tuple(reversed(factors)), mean=mean, peak=peak)
        return (None if means is None else means.T), (None if peaks is None else peaks.T)
    n = [int(s) // f for s, f in zip(volume.shape, factors, strict=True)]
    cut = volume[: n[0] * factors[0], : n[1] * factors[1], : n[2] * factors[2]]
    total = cut if mean else None
    biggest = cut if peak else None
    # Largest factor first: every later pass reads less.
    for axis in sorted(range(3), key=lambda a: -factors[a]):
        f = factors[axis]
        if f == 1:
            continue
        views = [(slice(None),) * axis + (slice(k, None, f),) for k in range(f)]
        if total is not None:
            summed = total[views[0]].astype(np.float32)
            for view in views[1:]:
                summed += total[view]
            total = summed
        if biggest is not None:
            most = biggest[views[0]].copy()
            for view in views[1:]:
                np.maximum(most, biggest[view], out=most)
            biggest = most
    means = None
    if total is not None:
        means = np.asarray(total, dtype=np.float32) * np.float32(1.0 / float(np.prod(factors)))
    return means, None if biggest is None else np.asarray(biggest, dtype=np.float32)


def _otsu(values: np.ndarray, bins: int = 256) -> float:
    """The threshold that splits ``values`` into two classes with the largest between-class
    variance (Otsu's criterion on a ``bins`` histogram)."""
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return low
    hist, edges = np.histogram(values, bins=bins, range=(low, high))
    p = hist.astype(np.float64) / max(hist.sum(), 1)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(p)[:-1]
    m0 = np.cumsum(p * centres)[:-1]
    total = float(np.sum(p * centres))
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (total * w0 - m0) ** 2 / (w0 * (1.0 - w0))
    between = np.where((w0 > 0) & (w0 < 1), between, -np.inf)
    return float(edges[int(np.argmax(between)) + 1])


def _otsu3_low(values: np.ndarray, bins: int = 128) -> float:
    """The lower of the two thresholds that split ``values`` into three classes with the largest
    between-class variance (Otsu's criterion, exhaustive on a ``bins`` histogram): air against
    everything else, also where soft tissue is close to air next to the range of bone (8-bit
    rescaled micro-CT, where a two-class split falls between soft tissue and bone)."""
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return low
    hist, edges = np.histogram(values, bins=bins, range=(low, high))
    p = hist.astype(np.float64) / max(hist.sum(), 1)
    centres = (edges[:-1] + edges[1:]) / 2
    w = np.concatenate([[0.0], np.cumsum(p)])  # w[i]: mass of the bins below i
    m = np.concatenate([[0.0], np.cumsum(p * centres)])
    i, j = np.meshgrid(np.arange(1, bins), np.arange(1, bins), indexing="ij")
    w0, w1, w2 = w[i], w[j] - w[i], 1.0 - w[j]
    m0, m1, m2 = m[i], m[j] - m[i], m[-1] - m[j]
    with np.errstate(divide="ignore", invalid="ignore"):
        score = m0**2 / w0 + m1**2 / w1 + m2**2 / w2
    score = np.where((j > i) & (w0 > 0) & (w1 > 0) & (w2 > 0), score, -np.inf)
    a, _ = np.unravel_index(int(np.argmax(score)), score.shape)
    return float(edges[a + 1])


def open_mm(mask: np.ndarray, radius_mm: float, step_mm: Sequence[float] | np.ndarray) -> np.ndarray:
    """Morphological opening by a ball of about ``radius_mm`` (an octahedron of whole voxels:
    cheaper than a Euclidean ball and as good at removing thin plates)."""
    iterations = max(1, round(radius_mm / min(step_mm)))
    return ndimage.binary_opening(mask, ndimage.generate_binary_structure(3, 1), iterations=iterations)


def largest(mask: np.ndarray) -> tuple[np.ndarray, int]:
    labels, count = ndimage.label(mask)
    if count == 0:
        return mask, 0
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes)), int(sizes.max())


def _ramp(value: float, low: float, high: float) -> float:
    """0 at ``low``, 1 at ``high``, linear between (the confidence of one measurement)."""
    return float(np.clip((value - low) / (high - low), 0.0, 1.0))


def _window_hits(bone: np.ndarray, axis: int, reach: int, forward: bool) -> np.ndarray:
    """True where bone lies within ``reach`` voxels along ``axis`` (ahead or behind)."""
    counts = np.cumsum(bone, axis=axis, dtype=np.int32)
    pad = [(0, 0)] * 3
    pad[axis] = (1, 0)
    counts = np.pad(counts, pad)  # counts[i] = bone voxels before index i
    n = bone.shape[axis]
    index = np.arange(n)
    if forward:
        start, stop = index + 1, np.minimum(index + 1 + reach, n)
    else:
        start, stop = np.maximum(index - reach, 0), index
    return (np.take(counts, stop, axis=axis) - np.take(counts, start, axis=axis)) > 0


@dataclass
class _Work:
    """The block-pooled scan with the long axis first: ``mean`` / ``peak`` are ``[L, P, Q]``,
    ``axes`` the header-canonical axis of each, ``step`` their voxel size in mm."""

    mean: np.ndarray
    peak: np.ndarray
    matter: np.ndarray
    body: np.ndarray
    bone: np.ndarray
    axes: tuple[int, int, int]
    step: np.ndarray
    air: float
    soft: float
    lo: int
    hi: int

    @property
    def length_mm(self) -> float:
        return float((self.hi - self.lo + 1) * self.step[0])


@dataclass
class _Votes:
    """A direction decision in the work frame: ``axis`` (0 long, 1 or 2) and ``sign``."""

    axis: int
    sign: int
    confidence: float


def _covariance_mm2(mask: np.ndarray, step_mm: np.ndarray) -> np.ndarray:
    """3x3 covariance (mm^2) of the voxel positions in ``mask``, from its 2D projections."""
    coords = [np.arange(n, dtype=np.float64) * s for n, s in zip(mask.shape, step_mm, strict=True)]
    count = float(mask.sum())
    cov = np.zeros((3, 3))
    for a, b in ((0, 1), (0, 2), (1, 2)):
        plane = mask.sum(axis=3 - a - b, dtype=np.float64)  # the projection onto axes a, b
        ea = (plane.sum(axis=1) @ coords[a]) / count
        eb = (plane.sum(axis=0) @ coords[b]) / count
        cov[a, b] = cov[b, a] = coords[a] @ plane @ coords[b] / count - ea * eb
        for axis, e, profile in ((a, ea, plane.sum(axis=1)), (b, eb, plane.sum(axis=0))):
            cov[axis, axis] = (profile @ coords[axis] ** 2) / count - e * e
    return cov


def _prepare(volume: np.ndarray, spacing_mm: Sequence[float], measures: dict[str, float]) -> _Work | None:
    """Pool, split air / soft tissue / bone, find the body and its long axis (moved first)."""
    factors = work_factors(volume.shape, spacing_mm)
    mean, peak = pool(volume, factors)
    step = np.array([s * f for s, f in zip(spacing_mm, factors, strict=True)], dtype=np.float64)
    t_air = _otsu3_low(mean.ravel()[:: max(1, mean.size // 400_000)])
    matter = mean > t_air
    body, count = largest(open_mm(matter, BED_OPEN_MM, step))
    if count < 0.5 * matter.sum():
        # Thin everywhere (a bare skull, as in an atlas template): nothing to open away.
        body, count = largest(matter)
        measures["body_not_opened"] = 1.0
    measures["body_mm3"] = round(count * float(np.prod(step)), 1)
    if count * np.prod(step) < 50.0:
        return None
    eigenvalues, eigenvectors = np.linalg.eigh(_covariance_mm2(body, step))
    principal = eigenvectors[:, 2]
    long_axis = int(np.argmax(np.abs(principal)))
    measures["long_alignment"] = round(float(abs(principal[long_axis])), 3)
    measures["elongation"] = round(float(np.sqrt(eigenvalues[2] / max(eigenvalues[1], 1e-9))), 3)
    axes = (long_axis, *[a for a in range(3) if a != long_axis])
    order = (axes[0], axes[1], axes[2])
    mean, peak, body, matter = (np.transpose(a, order) for a in (mean, peak, body, matter))
    soft = float(np.median(mean[body]))
    # Bone is the brightest class: Otsu among the body's voxels at or above its median (below
    # it lie the lungs and fat, which would otherwise be the split found).
    t_bone = _otsu(peak[body & (mean >= soft)])
    bone = (peak > t_bone) & ndimage.binary_dilation(body, iterations=2)
    occupied = np.flatnonzero(body.any(axis=(1, 2)))
    return _Work(
        mean=mean,
        peak=peak,
        matter=matter,
        body=body,
        bone=bone,
        axes=order,
        step=step[list(order)],
        air=float(np.median(mean[~matter])) if (~matter).any() else t_air,
        soft=soft,
        lo=int(occupied[0]),
        hi=int(occupied[-1]),
    )


def _slice_centres(work: _Work) -> np.ndarray:
    """Body centroid (P, Q voxel index) of every slice across the long axis (NaN where empty)."""
    area = work.body.sum(axis=(1, 2)).astype(np.float64)
    p = np.arange(work.body.shape[1])[None, :, None]
    q = np.arange(work.body.shape[2])[None, None, :]
    with np.errstate(invalid="ignore", divide="ignore"):
        cp = (work.body * p).sum(axis=(1, 2)) / area
        cq = (work.body * q).sum(axis=(1, 2)) / area
    return np.stack([cp, cq], axis=1)


def _spine(work: _Work, centres: np.ndarray, measures: dict[str, float]) -> _Votes:
    """Dorsal from the spine: the bone found at the same place (relative to each slice's body
    centre) in most cross-sections of the middle of the body."""
    n = work.hi - work.lo + 1
    first, last = work.lo + int(0.15 * n), work.hi - int(0.15 * n)
    l, p, q = np.nonzero(work.bone[first : last + 1])
    if l.size == 0:
        measures["spine_presence"] = 0.0
        return _Votes(1, 1, 0.0)
    l = l + first
    bin_mm = 1.5
    dp = (p - centres[l, 0]) * work.step[1]
    dq = (q - centres[l, 1]) * work.step[2]
    bp = np.floor(dp / bin_mm).astype(np.int64) + 64
    bq = np.floor(dq / bin_mm).astype(np.int64) + 64
    keys = np.unique((l * 128 + bp) * 128 + bq)
    cells = keys % (128 * 128)
    tally = np.bincount(cells, minlength=128 * 128).reshape(128, 128).astype(np.float64)
    # A 2x2 neighbourhood: the spine may straddle two bins as the body bends.
    tally = ndimage.maximum_filter(tally, size=2)
    best = np.unravel_index(int(np.argmax(tally)), tally.shape)
    presence = float(tally[best]) / max(last - first + 1, 1)
    # The vertebral ring fills several bins equally: take the centre of the cluster around the best.
    cluster, _ = ndimage.label(tally >= 0.8 * tally[best])
    peak_bins = cluster == cluster[best]
    centre = np.array(ndimage.center_of_mass(tally * peak_bins))
    offset = (centre - 64 + 0.5) * bin_mm
    area = work.body[first : last + 1].sum(axis=(1, 2)).mean() * work.step[1] * work.step[2]
    radius = float(np.sqrt(area / np.pi))
    distance = float(np.hypot(*offset))
    axis = int(np.argmax(np.abs(offset)))
    alignment = float(abs(offset[axis]) / max(distance, 1e-9))
    measures.update(
        spine_presence=round(presence, 3),
        spine_offset=round(distance / max(radius, 1e-9), 3),
        spine_alignment=round(alignment, 3),
    )
    confidence = min(
        _ramp(presence, 0.3, 0.55),
        _ramp(distance / max(radius, 1e-9), 0.15, 0.3),
        _ramp(alignment, 0.8, 0.93),
    )
    return _Votes(axis + 1, 1 if offset[axis] > 0 else -1, confidence)


def _trunk(work: _Work) -> np.ndarray:
    """The body filled and without its limbs: the matter within the bed-removing opening's reach
    of the body (so thin walls over the stomach's gas are back), 3D holes filled (the lungs and
    the gas; at this voxel size the airway is mostly shut), then opened by a 3 mm ball (legs).
    Pockets of air that legs resting on a bed close under the belly are filled too; they lie
    near the surface, which is why the lungs and the gas are looked for 2.5 mm deep."""
    reach = max(1, round(BED_OPEN_MM / float(min(work.step))))
    near = ndimage.binary_dilation(work.body, ndimage.generate_binary_structure(3, 1), iterations=reach)
    return open_mm(ndimage.binary_fill_holes(work.matter & near), 3.0, work.step)


def _lungs(work: _Work, trunk: np.ndarray, measures: dict[str, float]) -> np.ndarray | None:
    """The lungs: the largest air-density region inside the body, away from its surface."""
    inner = ndimage.distance_transform_edt(trunk, sampling=work.step) > 2.5
    air = inner & (work.mean < work.air + 0.7 * (work.soft - work.air))
    labels, count = ndimage.label(air)
    if count == 0:
        measures["lungs_mm3"] = 0.0
        return None
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    # Both lungs (they may part at this voxel size): regions of at least 0.3 x the largest whose
    # centre lies within 8 mm of its centre along the body, not the gut's gas or the air held
    # between the belly and a bed.
    centres = np.zeros(count + 1)
    centres[1:] = np.asarray(ndimage.center_of_mass(air, labels, np.arange(1, count + 1)))[:, 0]
    largest = int(np.argmax(sizes))
    near = np.abs(centres - centres[largest]) * work.step[0] <= 8.0
    keep = np.flatnonzero((sizes >= 0.3 * sizes.max()) & near)
    lungs = np.isin(labels, keep)
    volume = float(sizes[keep].sum() * np.prod(work.step))
    measures["lungs_mm3"] = round(volume, 1)
    return lungs if volume >= 30.0 else None


def _trunk_cranial(
    work: _Work, lungs: np.ndarray | None, measures: dict[str, float], *, whole_body: bool = True
) -> _Votes:
    """Cranial along the long axis, four votes (each 0..1 towards one end, summed): the lungs lie
    in the cranial part of the body; the braincase, where the skull is closed, at the cranial
    end; the body's volume centre lies caudal of its middle (the abdomen is the widest part, the
    head and neck the narrowest; Digimouse 0.44 of its length from the tail end, our phantoms
    0.42-0.43); the skull makes more bone at the cranial end than pelvis and hind legs at the
    other (strong in our phantoms, even in Digimouse). A trunk without its head (``whole_body``
    False) has only the lungs' vote: it has no skull, and its widest part and its bonier end
    depend on where the field of view cuts it."""
    n = work.hi - work.lo + 1

    def vote(fraction: float, low: float, high: float) -> float:
        """Towards the high end (+1) when ``fraction`` of the length lies above the middle."""
        return (1.0 if fraction > 0.5 else -1.0) * _ramp(abs(fraction - 0.5), low, high)

    score = 0.0
    if lungs is not None:
        fraction = (float(np.nonzero(lungs)[0].mean()) - work.lo) / max(n - 1, 1)
        measures["lungs_along_body"] = round(fraction, 3)
        score += vote(fraction, *((0.03, 0.10) if whole_body else TRUNK_LUNGS_OFF_MIDDLE))
    if not whole_body:
        measures["cranial_score"] = round(score, 3)
        return _Votes(0, 1 if score > 0 else -1, _ramp(abs(score), 0.3, 1.0))
    braincase, braincase_mm3 = _enclosed(work.bone, work.step)
    if braincase_mm3 >= MIN_BRAINCASE_MM3:
        fraction = (float(np.nonzero(braincase)[0].mean()) - work.lo) / max(n - 1, 1)
        measures.update(braincase_mm3=round(braincase_mm3, 1), braincase_along_body=round(fraction, 3))
        score += vote(fraction, 0.15, 0.3)
    area = work.body.sum(axis=(1, 2)).astype(np.float64)
    fraction = (float(area @ np.arange(area.size)) / float(area.sum()) - work.lo) / max(n - 1, 1)
    measures["volume_centre_along_body"] = round(fraction, 3)
    score -= vote(fraction, 0.03, 0.07)  # the head is at the end away from the volume centre
    quarter = max(1, n // 4)
    weight = np.clip(work.peak - work.peak[work.bone].min(initial=0.0), 0, None) * work.bone
    per_slice = weight.sum(axis=(1, 2))
    low_end = float(per_slice[work.lo : work.lo + quarter].sum())
    high_end = float(per_slice[work.hi - quarter + 1 : work.hi + 1].sum())
    ratio = np.log((high_end + 1e-6) / (low_end + 1e-6))
    measures["bone_end_ratio_log"] = round(float(ratio), 3)
    score += (1.0 if ratio > 0 else -1.0) * _ramp(abs(float(ratio)), np.log(1.2), np.log(2.0))
    measures["cranial_score"] = round(score, 3)
    return _Votes(0, 1 if score > 0 else -1, _ramp(abs(score), 0.3, 1.0))


def _body(
    work: _Work, measures: dict[str, float], *, whole_body: bool
) -> tuple[_Votes, _Votes, _Votes | None]:
    """Dorsal, cranial and (where the lungs and the stomach's gas tell it) right in a body or, with
    ``whole_body`` False, a trunk without its head."""
    centres = _slice_centres(work)
    dorsal = _spine(work, centres, measures)
    trunk = _trunk(work)
    lungs = _lungs(work, trunk, measures)
    cranial = _trunk_cranial(work, lungs, measures, whole_body=whole_body)
    right = None
    if lungs is not None and dorsal.confidence > 0:
        right = _trunk_left_right(work, trunk, lungs, centres, cranial, dorsal, measures)
    return dorsal, cranial, right


def _trunk_left_right(
    work: _Work,
    trunk: np.ndarray,
    lungs: np.ndarray,
    centres: np.ndarray,
    cranial: _Votes,
    dorsal: _Votes,
    measures: dict[str, float],
) -> _Votes:
    """Right from the stomach's gas: air-density voxels inside the body just caudal to the lungs
    (the upper abdomen, where the stomach lies on the left and the liver on the right) sit on the
    mouse's left. Without such gas (a fifth of our phantoms, some real mice) there is no vote."""
    axis = 3 - dorsal.axis  # the cross-section axis that is not dorso-ventral (1 or 2)
    n = work.hi - work.lo + 1
    slices = np.flatnonzero(lungs.any(axis=(1, 2)))
    caudal_end = int(slices.min() if cranial.sign > 0 else slices.max())
    reach = caudal_end - cranial.sign * round(0.22 * n)
    first, last = sorted((caudal_end - cranial.sign, reach))
    first, last = max(first, work.lo), min(last, work.hi)
    if last < first:
        return _Votes(axis, 1, 0.0)
    slab = slice(first, last + 1)
    inner = ndimage.distance_transform_edt(trunk[slab], sampling=work.step) > 2.5
    gas = inner & (work.mean[slab] < work.air + 0.5 * (work.soft - work.air)) & ~lungs[slab]
    points = np.argwhere(gas)
    volume = float(len(points) * np.prod(work.step))
    measures["abdominal_gas_mm3"] = round(volume, 1)
    if volume == 0:
        return _Votes(axis, 1, 0.0)
    side_mm = (points[:, axis] - centres[points[:, 0] + first, axis - 1]) * work.step[axis]
    offset = float(side_mm.mean())
    one_sided = abs(float(np.mean(side_mm > 0)) - float(np.mean(side_mm < 0)))
    measures.update(abdominal_gas_offset_mm=round(offset, 2), abdominal_gas_one_sided=round(one_sided, 3))
    confidence = min(_ramp(abs(offset), 1.5, 3.5), _ramp(volume, 3.0, 10.0), _ramp(one_sided, 0.5, 0.8))
    # The gas is on the left: +axis is the mouse's right when the gas lies on the - side.
    return _Votes(axis, 1 if offset < 0 else -1, confidence)


def _enclosed(shell: np.ndarray, step_mm: np.ndarray, reach_mm: float = 8.0) -> tuple[np.ndarray, float]:
    """The largest region outside ``shell`` with shell within ``reach_mm`` on all six sides
    (a braincase), and its volume in mm^3."""
    enclosed = ~shell
    for axis in range(3):
        reach = max(2, round(reach_mm / step_mm[axis]))
        enclosed &= _window_hits(shell, axis, reach, True) & _window_hits(shell, axis, reach, False)
    cavity, size = largest(enclosed)
    return cavity, size * float(np.prod(step_mm))


def _head(work: _Work, measures: dict[str, float]) -> tuple[_Votes, _Votes]:
    """Dorsal and cranial in a head: the braincase (the largest cavity with bone on all six
    sides) lies dorsal and caudal in the skull; the teeth (densest voxels) ventral and cranial."""
    # The skull's whole shell: Otsu over all of the head's voxels (soft tissue against bone). A
    # bare-skull template has no soft tissue (its braincase is as dark as air): there the shell
    # is all of the matter, tried when the first shell encloses no braincase.
    shell = (work.peak > _otsu(work.peak[work.body])) & ndimage.binary_dilation(work.body, iterations=2)
    cavity, cavity_mm3 = _enclosed(shell, work.step)
    bone = shell
    if cavity_mm3 < MIN_BRAINCASE_MM3:
        bare, bare_mm3 = _enclosed(work.body, work.step)
        if bare_mm3 > cavity_mm3:
            cavity, cavity_mm3, bone = bare, bare_mm3, work.body
            measures["head_shell_is_matter"] = 1.0
    measures["braincase_mm3"] = round(cavity_mm3, 1)
    if cavity.any():
        # What fills it: a brain is soft tissue; a rib cage cut short encloses the lungs' air.
        # Lungs sit at -250..-800 HU, a third of the way from soft tissue to air or more.
        dark = work.mean[cavity] < work.soft - 0.3 * (work.soft - work.air)
        measures["braincase_dark_fraction"] = round(float(dark.mean()), 3)
    # A mouse's brain is ~400-450 mm3; a smaller enclosed space is a nasal or oral cavity, or a
    # skull with gaps (our phantoms' skull is left open where skin and fat come close).
    if cavity_mm3 < MIN_BRAINCASE_MM3:
        return _Votes(1, 1, 0.0), _Votes(0, 1, 0.0)
    values = work.peak[bone]
    teeth = bone & (work.peak >= np.quantile(values, 0.99))
    c_bone = np.argwhere(bone).mean(axis=0) * work.step
    c_teeth = np.argwhere(teeth).mean(axis=0) * work.step
    c_cavity = np.argwhere(cavity).mean(axis=0) * work.step
    extent = np.ptp(np.argwhere(bone), axis=0) * work.step
    radius = float(np.mean(extent[1:])) / 2
    # Dorsal: cavity above the bone's centre and above the teeth.
    toward = (c_cavity - c_bone)[1:] / radius + (c_cavity - c_teeth)[1:] / radius
    axis = int(np.argmax(np.abs(toward)))
    alignment = float(abs(toward[axis]) / max(np.hypot(*toward), 1e-9))
    measures.update(
        head_dorsal_offset=round(float(abs(toward[axis])), 3), head_dorsal_alignment=round(alignment, 3)
    )
    dorsal = _Votes(
        axis + 1,
        1 if toward[axis] > 0 else -1,
        min(_ramp(abs(toward[axis]), 0.15, 0.4), _ramp(alignment, 0.8, 0.93)),
    )
    # Cranial, four votes: the teeth ahead of the braincase; the snout the far end of the bone
    # from it (fooled when the neck and shoulders are in view: their bone reaches further); the
    # nose the narrower end (the body tapers to it, while a field of view or a dissection cuts the
    # neck wide); the body's volume centre behind the middle. In the real Digimouse head and neck
    # cut 16-40 mm long, the teeth and snout votes point backwards from 22-24 mm on and the other
    # two hold (end widths 0.18-0.28 against 0.70-0.77 of the widest section; volume centre
    # 0.41-0.44): tests/inference/pipeline/test_orientation.py.
    half = float(extent[0]) / 2
    teeth_ahead = (c_teeth - c_cavity)[0] / half
    bones = np.argwhere(bone)[:, 0] * work.step[0]
    far = (bones.max() - c_cavity[0]) - (c_cavity[0] - bones.min())
    snout = far / half
    area = work.body.sum(axis=(1, 2)).astype(np.float64)
    end = max(1, round(HEAD_END_MM / work.step[0]))
    taper = float(
        np.log(
            (area[work.lo : work.lo + end].mean() + 1.0)
            / (area[work.hi - end + 1 : work.hi + 1].mean() + 1.0)
        )
    )
    n = work.hi - work.lo + 1
    centre = (float(area @ np.arange(area.size)) / float(area.sum()) - work.lo) / max(n - 1, 1)
    measures.update(
        head_teeth_ahead=round(float(teeth_ahead), 3),
        head_snout=round(float(snout), 3),
        head_taper_log=round(taper, 3),
        head_volume_centre=round(centre, 3),
    )
    score = (
        np.sign(teeth_ahead) * _ramp(abs(teeth_ahead), 0.1, 0.4)
        + np.sign(snout) * _ramp(abs(snout), 0.1, 0.4)
        + np.sign(taper) * _ramp(abs(taper), np.log(1.3), np.log(2.5))
        - np.sign(centre - 0.5) * _ramp(abs(centre - 0.5), 0.03, 0.07)
    )
    measures["head_cranial_score"] = round(float(score), 3)
    cranial = _Votes(0, 1 if score > 0 else -1, _ramp(abs(float(score)), 0.3, 1.0))
    return dorsal, cranial


def _compose(work: _Work, cranial: _Votes, dorsal: _Votes, right: _Votes | None) -> AxisTransform:
    """The transform that sends cranial to +z, dorsal to -y and the mouse's right to +x. Without
    ``right`` the sign of x is the one that makes a rotation (the header's handedness kept)."""
    rows: list[list[int]] = [[0, 1], [0, 1], [0, 1]]
    rows[work.axes[0]] = [2, cranial.sign]
    rows[work.axes[dorsal.axis]] = [1, -dorsal.sign]
    side = 3 - dorsal.axis
    rows[work.axes[side]] = [0, right.sign if right is not None else 1]
    transform = AxisTransform.from_array(np.array(rows))
    if right is None and transform.is_mirror:
        rows[work.axes[side]][1] *= -1
        transform = AxisTransform.from_array(np.array(rows))
    return transform


_HEADER_WORDS = {
    (0, 1): "+x (the header's right)",
    (0, -1): "-x (the header's left)",
    (1, 1): "+y (the header's anterior)",
    (1, -1): "-y (the header's posterior)",
    (2, 1): "+z (the header's superior)",
    (2, -1): "-z (the header's inferior)",
}


def _towards(work: _Work, axis: int, sign: int) -> str:
    """Plain words for a work-frame direction, in the header-canonical frame."""
    return _HEADER_WORDS[(work.axes[axis], sign)]


def _pose(anatomy: AxisTransform) -> str:
    """How the mouse lies in the header's frame, e.g. "on its back (supine)"."""
    back = anatomy.matrix.T @ np.array([0, -1, 0])
    axis = int(np.argmax(np.abs(back)))
    if axis == 1:
        return "on its belly (prone)" if back[1] < 0 else "on its back (supine)"
    if axis == 0:
        return "on its side"
    return "upright along the scanner's z axis"


def _words(
    work: _Work,
    regime: str,
    cranial: _Votes,
    dorsal: _Votes,
    right: _Votes | None,
    confidence: dict[str, float],
    measures: dict[str, float],
) -> list[str]:
    """The findings, one plain sentence per piece of evidence."""
    axis_name = _AXIS[work.axes[0]]
    shape = f"(elongation {measures['elongation']:.2f}, alignment {measures['long_alignment']:.2f})"
    said = [
        f"A head alone, with no clear long axis along one of the scan's axes {shape}: its nose axis, "
        f"nearest the scan's {axis_name} axis, is taken from its braincase, teeth and snout."
        if measures.get("long_axis_from_head")
        else f"The body's long axis runs along the scan's {axis_name} axis {shape}."
        if confidence["long_axis"] >= MIN_CONFIDENCE
        else f"The body has no clear long axis along one of the scan's axes {shape}: a short or oblique "
        "field of view."
    ]
    if regime == "trunk":
        said.append(
            f"A trunk without its head ({work.length_mm:.0f} mm long, no braincase in view): the head "
            "end is read from the lungs alone."
        )
    if regime in ("body", "trunk"):
        said.append(
            f"The spine (bone at one place in {100 * measures.get('spine_presence', 0):.0f} % of the "
            f"cross-sections) lies towards {_towards(work, dorsal.axis, dorsal.sign)}: the mouse's back."
        )
        cues = []
        if "lungs_along_body" in measures:
            cues.append(f"the lungs ({measures['lungs_mm3']:.0f} mm3 of air inside the body)")
        if "braincase_along_body" in measures:
            cues.append(f"the braincase ({measures['braincase_mm3']:.0f} mm3)")
        if regime == "body":
            cues += ["the body's narrower end", "the bone at the ends"]
        said.append(
            f"The head end is towards {_towards(work, 0, cranial.sign)}, weighing {', '.join(cues)} "
            f"(score {abs(measures.get('cranial_score', 0.0)):.2f})."
        )
        if right is None:
            said.append("No lungs found, so left and right cannot be told from the anatomy.")
        elif "abdominal_gas_offset_mm" in measures:
            side = _towards(work, right.axis, -right.sign)
            said.append(
                f"Gas just caudal to the lungs ({measures['abdominal_gas_mm3']:.0f} mm3, "
                f"{abs(measures['abdominal_gas_offset_mm']):.1f} mm off the midline) lies towards {side}: "
                "the stomach, on the mouse's left."
            )
        else:
            said.append(
                "No gas in the upper abdomen (the stomach's, on the left): left and right cannot be told."
            )
    else:
        braincase = measures.get("braincase_mm3", 0.0)
        if braincase >= MIN_BRAINCASE_MM3:
            said.append(
                f"Head only ({work.length_mm:.0f} mm long): the braincase ({braincase:.0f} mm3) lies "
                f"towards {_towards(work, dorsal.axis, dorsal.sign)} (the top of the head) and the "
                f"teeth and snout towards {_towards(work, 0, cranial.sign)} (the nose)."
            )
            if measures.get("head_only"):
                said.append(
                    "Nothing of the trunk fits in a field of view this short: its organs are not in "
                    "view and are not assessed."
                )
        else:
            said.append(
                f"Head only ({work.length_mm:.0f} mm long), but no braincase found (the largest space "
                f"enclosed by bone is {braincase:.0f} mm3): its top and nose cannot be told."
            )
        said.append("A head is left/right symmetric: its handedness cannot be told from the image.")
    return said


def find_orientation(volume: np.ndarray, spacing_mm: Sequence[float]) -> OrientationFinding:
    """How to turn the header-canonical ``volume`` ``[x, y, z]`` (voxel size ``spacing_mm`` along
    those axes) so that the mouse lies in the canonical pose: x right, y ventral, z cranial."""
    start = time.perf_counter()
    measures: dict[str, float] = {}
    identity = AxisTransform()
    work = _prepare(np.asarray(volume), spacing_mm, measures)
    if work is None:
        return OrientationFinding(
            transform=identity,
            anatomy=identity,
            confidence={"long_axis": 0.0, "dorsal": 0.0, "cranial": 0.0, "left_right": 0.0},
            findings=[
                "No body found (too little matter above the air level): the header's orientation is kept."
            ],
            kept="header",
            seconds=time.perf_counter() - start,
            measures=measures,
        )
    confidence = {
        "long_axis": min(
            _ramp(measures["elongation"], 1.15, 1.4), _ramp(measures["long_alignment"], 0.8, 0.93)
        )
    }
    measures["body_length_mm"] = round(work.length_mm, 1)
    right: _Votes | None = None
    if work.length_mm >= BODY_MIN_MM:
        dorsal, cranial, right = _body(work, measures, whole_body=True)
        regime = "body"
    else:
        dorsal, cranial = _head(work, measures)
        regime = "head"
        if (
            measures.get("braincase_mm3", 0.0) >= MIN_BRAINCASE_MM3
            and measures.get("braincase_dark_fraction", 1.0) <= HEAD_ONLY_MAX_DARK
            and work.length_mm <= HEAD_ONLY_MAX_MM
        ):
            measures["head_only"] = 1.0
            # A head alone is nearly as wide as it is long, and often lies obliquely: the body's
            # elongation says little there. Its own landmarks do: when the braincase (dorsal) and
            # the nose end (cranial, measured along the long axis) both point clearly, that
            # axis is the nose's, and the nearest axis-aligned pose is taken (the models find
            # 1.3-15x more brain in the real 8-bit heads so turned: inference/models/README.md).
            head_axis = min(dorsal.confidence, cranial.confidence)
            if confidence["long_axis"] < MIN_CONFIDENCE <= head_axis:
                confidence["long_axis"] = head_axis
                measures["long_axis_from_head"] = 1.0
        elif work.length_mm >= TRUNK_MIN_MM and (
            measures.get("braincase_mm3", 0.0) < MIN_BRAINCASE_MM3
            or measures.get("braincase_dark_fraction", 1.0) > HEAD_ONLY_MAX_DARK
        ):
            # No skull in view (a dark "braincase" is the rib cage round the lungs): a trunk, when
            # its lungs say so (a torso scan cut shoulders to hips).
            trunk_measures = dict(measures)
            votes = _body(work, trunk_measures, whole_body=False)
            if trunk_measures.get("lungs_mm3", 0.0) >= TRUNK_MIN_LUNGS_MM3:
                (dorsal, cranial, right), regime = votes, "trunk"
                measures.update(trunk_measures)
    confidence["dorsal"] = dorsal.confidence
    confidence["cranial"] = cranial.confidence
    confidence["left_right"] = right.confidence if right is not None else 0.0
    findings = _words(work, regime, cranial, dorsal, right, confidence, measures)
    sure_right = right if right is not None and right.confidence >= MIN_LEFT_RIGHT_CONFIDENCE else None
    anatomy = _compose(work, cranial, dorsal, sure_right)
    weakest = min(("long_axis", "dorsal", "cranial"), key=lambda k: confidence[k])
    if confidence[weakest] < MIN_CONFIDENCE:
        transform, kept = identity, "header"
        findings.append(
            f"The evidence is too weak (confidence {confidence[weakest]:.2f} for the "
            f"{weakest.replace('_', ' ')}): the header's orientation is kept."
        )
    else:
        transform, kept = anatomy, ("nothing" if sure_right is not None else "left-right")
        if kept == "left-right":
            findings.append(
                "Left and right are taken from the header (the turn applied is a rotation, never a mirror)."
            )
        if anatomy.is_identity:
            findings.append("The anatomy agrees with the header: the mouse lies as the models expect.")
        else:
            findings.append(
                f"The anatomy disagrees with the header: the mouse lies {_pose(anatomy)} in the header's "
                f"frame{' and mirrored' if anatomy.is_mirror else ''}. The scan is turned "
                f"({anatomy.describe()}) before the models run, and the results are turned back "
                "onto the scan's grid."
            )
    return OrientationFinding(
        transform=transform,
        anatomy=anatomy,
        confidence={k: round(v, 3) for k, v in confidence.items()},
        findings=findings,
        kept=kept,
        seconds=time.perf_counter() - start,
        measures=measures,
    )
