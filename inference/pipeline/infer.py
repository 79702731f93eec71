"""Run one model on one normalised volume: a whole-volume pass when it fits, else sliding windows.

Array contract: ``image`` is float32 ``[x, y, z]`` (canonical RAS, already at the model's spacing and
normalised). The network takes ``[N, 1, x, y, z]`` and returns logits ``[N, K, x, y, z]`` and,
optionally, a disagreement logit ``[N, 1, x, y, z]``. Results here are logits ``[K, x, y, z]`` and
``[x, y, z]`` on the image's own grid (padding removed).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np
import onnxruntime as ort

from inference.pipeline.geometry import bounding_box, channel_argmax, resample_linear
from inference.registry import ModelCard

#: A volume up to this many voxels (after padding) goes through the network in one pass.
DEFAULT_MAX_WHOLE_VOXELS = 12_000_000
#: Denser than air (HU, on the model grid): what ``content_box`` keeps in view.
CONTENT_HU = -500.0
#: Share of an end slice denser than air from which the field of view counts as cutting the body.
CUT_FACE_MIN_SHARE = 0.01
#: ``content_box`` crops only when that leaves out at least this share of the voxels.
CROP_MIN_SAVING = 0.2


@dataclass
class RawOutput:
    """Network output on the image grid: logits ``[K, x, y, z]``, disagreement logit ``[x, y, z]``."""

    logits: np.ndarray
    disagreement_logit: np.ndarray | None
    passes: int
    #: The size pass's scale (``layout.size_pass``); 1.0 where none ran.
    size_scale: float = 1.0
    #: Per structure id: how alike the shifted passes draw it (``pass_agreement``); empty where
    #: none ran.
    pass_agreement: dict[int, float] = field(default_factory=dict)


def _round_up(value: int, multiple: int) -> int:
    return int(math.ceil(value / multiple) * multiple)


def _pad(image: np.ndarray, shape: tuple[int, ...], value: float) -> np.ndarray:
    if image.shape == shape:
        return np.ascontiguousarray(image, dtype=np.float32)
    padded = np.full(shape, value, dtype=np.float32)
    padded[: image.shape[0], : image.shape[1], : image.shape[2]] = image
    return padded


def _outputs(card: ModelCard) -> list[str]:
    return [card.logits_name] + ([card.disagreement_name] if card.disagreement_name else [])


def _whole(session: ort.InferenceSession, card: ModelCard, image: np.ndarray, pad_value: float) -> RawOutput:
    k = card.divisible_by
    shape = tuple(_round_up(n, k) for n in image.shape)
    batch = _pad(image, shape, pad_value)[None, None]
    results = session.run(_outputs(card), {card.input_name: batch})
    nx, ny, nz = image.shape
    logits = results[0][0, :, :nx, :ny, :nz]
    disagreement = results[1][0, 0, :nx, :ny, :nz] if card.disagreement_name else None
    return RawOutput(logits=logits, disagreement_logit=disagreement, passes=1)


def gaussian_weights(patch: tuple[int, int, int], sigma_scale: float = 0.125) -> np.ndarray:
    """Importance map for sliding windows: a Gaussian peaking at the patch centre (nnU-Net's 1/8)."""
    grids = []
    for n in patch:
        centre = (n - 1) / 2.0
        sigma = max(n * sigma_scale, 1e-3)
        grids.append(np.exp(-0.5 * ((np.arange(n) - centre) / sigma) ** 2))
    weights = grids[0][:, None, None] * grids[1][None, :, None] * grids[2][None, None, :]
    weights /= weights.max()
    # Never exactly zero, so voxels seen only at a patch edge still get a defined average.
    return np.maximum(weights, 1e-3).astype(np.float32)


def window_starts(length: int, patch: int, overlap: float) -> list[int]:
    """Start indices of patches covering ``length`` with at least ``overlap`` between neighbours."""
    if length <= patch:
        return [0]
    step = max(1, int(patch * (1.0 - overlap)))
    count = math.ceil((length - patch) / step) + 1
    return sorted({round(i * (length - patch) / (count - 1)) for i in range(count)})


def _sliding(
    session: ort.InferenceSession, card: ModelCard, image: np.ndarray, pad_value: float, batch_size: int
) -> RawOutput:
    k = card.divisible_by
    wanted = card.patch_size or (128, 128, 128)
    patch = tuple(min(_round_up(p, k), _round_up(n, k)) for p, n in zip(wanted, image.shape, strict=True))
    shape = tuple(max(_round_up(n, k), p) for n, p in zip(image.shape, patch, strict=True))
    padded = _pad(image, shape, pad_value)
    weights = gaussian_weights((patch[0], patch[1], patch[2]))
    starts = [
        (x, y, z)
        for x in window_starts(shape[0], patch[0], card.overlap)
        for y in window_starts(shape[1], patch[1], card.overlap)
        for z in window_starts(shape[2], patch[2], card.overlap)
    ]
    logits: np.ndarray | None = None
    disagreement = np.zeros(shape, dtype=np.float32) if card.disagreement_name else None
    norm = np.zeros(shape, dtype=np.float32)
    for first in range(0, len(starts), batch_size):
        group = starts[first : first + batch_size]
        batch = np.stack([padded[x : x + patch[0], y : y + patch[1], z : z + patch[2]] for x, y, z in group])[
            :, None
        ]
        results = session.run(_outputs(card), {card.input_name: batch})
        if logits is None:
            logits = np.zeros((results[0].shape[1], *shape), dtype=np.float32)
        for i, (x, y, z) in enumerate(group):
            window = (slice(x, x + patch[0]), slice(y, y + patch[1]), slice(z, z + patch[2]))
            logits[(slice(None), *window)] += results[0][i] * weights
            if disagreement is not None:
                disagreement[window] += results[1][i, 0] * weights
            norm[window] += weights
    assert logits is not None
    nx, ny, nz = image.shape
    logits = logits[:, :nx, :ny, :nz] / norm[None, :nx, :ny, :nz]
    if disagreement is not None:
        disagreement = disagreement[:nx, :ny, :nz] / norm[:nx, :ny, :nz]
    return RawOutput(logits=logits, disagreement_logit=disagreement, passes=len(starts))


#: The logit given outside the box the network saw: background certain, annotators agreeing.
OUTSIDE_LOGIT = 20.0


def content_box(hu: np.ndarray, margin: int, multiple: int = 1) -> tuple[slice, ...] | None:
    """The box around every voxel denser than air (``CONTENT_HU``) of ``hu``, ``margin`` voxels
    wider, grown (within the array) to a multiple of ``multiple`` along each axis; None when it
    would hold nearly the whole array anyway (``CROP_MIN_SAVING``) or nothing is there."""
    dense = np.asarray(hu) > CONTENT_HU
    tight = bounding_box(dense, margin)
    if tight is None:
        return None
    box = _grown_to(tight, dense.shape, multiple)
    if math.prod(s.stop - s.start for s in box) > (1.0 - CROP_MIN_SAVING) * dense.size:
        return None
    return box


def _grown_to(tight: tuple[slice, ...], shape: tuple[int, ...], multiple: int) -> tuple[slice, ...]:
    """``tight`` grown about its centre, within ``shape``, to a multiple of ``multiple`` along
    each axis: with more of the scan, not with padding."""
    box = []
    for part, n in zip(tight, shape, strict=True):
        length = min(_round_up(part.stop - part.start, multiple), n)
        start = min(max(part.start - (length - (part.stop - part.start)) // 2, 0), n - length)
        box.append(slice(start, start + length))
    return tuple(box)


def cut_faces(hu: np.ndarray, box: tuple[slice, ...] | None, voxels: int) -> tuple[int, int]:
    """Slices to add below the first and above the last z slice of ``hu`` (within ``box``): ``voxels``
    at each end where the body reaches it (more than ``CUT_FACE_MIN_SHARE`` of the end slice denser
    than air), as where the field of view cuts through the neck, the shoulders or the hips."""
    if voxels <= 0:
        return (0, 0)
    inside = hu if box is None else hu[box]

    def cut(end: np.ndarray) -> int:
        return voxels if float((end > CONTENT_HU).mean()) > CUT_FACE_MIN_SHARE else 0

    return cut(inside[:, :, 0]), cut(inside[:, :, -1])


def run_model(
    session: ort.InferenceSession,
    card: ModelCard,
    image: np.ndarray,
    *,
    pad_value: float = 0.0,
    max_whole_voxels: int = DEFAULT_MAX_WHOLE_VOXELS,
    batch_size: int = 2,
    box: tuple[slice, ...] | None = None,
    extend: tuple[int, int] = (0, 0),
    animals: int = 1,
) -> RawOutput:
    """Logits of ``card``'s network for ``image``: one pass when the padded volume has at most
    ``max_whole_voxels`` voxels, else Gaussian-weighted sliding windows of the card's patch size.

    With ``box`` (``content_box``: the animal and whatever lies near it, with air all round) the
    network sees only that part of ``image``; outside it every voxel is background, certain
    (``OUTSIDE_LOGIT``). ``extend`` (``cut_faces``) continues the part it sees past its first and
    last z slices by repeating them, at least that many slices and up to the network's multiple;
    the logits are of ``image``'s own slices. A card's ``shifted_passes`` add passes over
    ``image`` moved by whole voxels; the logits returned are the mean over all passes. A card's
    ``size_pass`` adds a pass over ``image`` shrunk, for a mouse drawn larger than those the network
    learned (``animals``: how many the scan holds; their size is the mean)."""
    if image.ndim != 3:
        raise ValueError(f"the network input must be 3D, got shape {image.shape}")
    if box is not None:
        inner = run_model(
            session,
            card,
            image[box],
            pad_value=pad_value,
            max_whole_voxels=max_whole_voxels,
            batch_size=batch_size,
            extend=extend,
            animals=animals,
        )
        logits = np.full((inner.logits.shape[0], *image.shape), -OUTSIDE_LOGIT, dtype=np.float32)
        logits[0] = 0.0
        logits[(slice(None), *box)] = inner.logits
        disagreement = None
        if inner.disagreement_logit is not None:
            disagreement = np.full(image.shape, -OUTSIDE_LOGIT, dtype=np.float32)
            disagreement[box] = inner.disagreement_logit
        return replace(inner, logits=logits, disagreement_logit=disagreement)
    below, above = extend
    if below or above:
        # The network's multiple is made up with more of the continued body, not with air, which
        # would end it in a stump again a few slices on.
        extra = -(image.shape[2] + below + above) % card.divisible_by
        below, above = (below, above + extra) if above else (below + extra, above)
        inner = run_model(
            session,
            card,
            np.pad(image, ((0, 0), (0, 0), (below, above)), mode="edge"),
            pad_value=pad_value,
            max_whole_voxels=max_whole_voxels,
            batch_size=batch_size,
            animals=animals,
        )
        keep = slice(below, below + image.shape[2])
        return replace(
            inner,
            logits=np.ascontiguousarray(inner.logits[:, :, :, keep]),
            disagreement_logit=None
            if inner.disagreement_logit is None
            else np.ascontiguousarray(inner.disagreement_logit[:, :, keep]),
        )
    out = _one_pass(session, card, image, pad_value, max_whole_voxels, batch_size)
    if card.shifted_passes:
        out = _with_shifted_passes(session, card, image, out, pad_value, max_whole_voxels, batch_size)
    if card.size_pass is not None:
        out = _with_size_pass(session, card, image, out, max_whole_voxels, batch_size, animals)
    return out


def drawn_among(card: ModelCard, drawn: np.ndarray, structure_ids: frozenset[int]) -> np.ndarray:
    """Where ``drawn`` (``card``'s channel indices, ``channel_argmax`` of its logits) holds one of
    ``structure_ids``."""
    among = np.zeros(len(card.structures), dtype=bool)
    among[[c for c, sid in enumerate(card.structures) if sid in structure_ids]] = True
    return among[drawn]


#: How far past the structures it is for (``layout.shifted_passes_over``) a shifted pass reads the
#: scan, in voxels of the network's grid (10 mm at 0.63 mm): enough context that their logits
#: are those of a pass over the whole scan.
SHIFTED_MARGIN_VOXELS = 16
#: Drawn volume of those structures under which a scan holds none of them (mm^3): less than the
#: heart and lungs of the smallest mouse. A real head scan's plain pass draws about 80 mm^3 of
#: specks of "lung" and "heart" (which the rules after it drop); passes over the head for them
#: only moved its brain (the model card's "`mouse-organs/2.8.0`").
SHIFTED_MIN_MM3 = 200.0


def _with_shifted_passes(
    session: ort.InferenceSession,
    card: ModelCard,
    image: np.ndarray,
    plain: RawOutput,
    pad_value: float,
    max_whole_voxels: int,
    batch_size: int,
) -> RawOutput:
    """``plain`` averaged with the passes of ``card.shifted_passes``, over the box round the
    structures of ``card.shifted_passes_over`` as the plain pass draws them (the whole image when
    the card names none); outside that box the plain pass is the answer, and it is the only one
    where it draws under ``SHIFTED_MIN_MM3`` of them. ``plain``'s arrays are written in place."""
    box = tuple(slice(0, n) for n in image.shape)
    drawn = channel_argmax(plain.logits)
    if card.shifted_passes_over:
        wanted = drawn_among(card, drawn, card.shifted_passes_over)
        if float(np.count_nonzero(wanted)) * math.prod(card.input_spacing_mm) < SHIFTED_MIN_MM3:
            return plain
        tight = bounding_box(wanted, SHIFTED_MARGIN_VOXELS)
        assert tight is not None
        box = _grown_to(tight, image.shape, card.divisible_by)
    part = image[box]
    passes = len(card.shifted_passes) + 1
    # The sums live on the box alone: outside it the plain pass's values are returned as they are.
    # Each pass starts as the plain one; a shifted pass then replaces it where it saw the scan.
    plain_logits = plain.logits[(slice(None), *box)]
    plain_disagreement = None if plain.disagreement_logit is None else plain.disagreement_logit[box]
    logits = plain_logits * np.float32(passes)
    disagreement = None if plain_disagreement is None else plain_disagreement * np.float32(passes)
    ran = plain.passes
    plain_drawn = drawn[box]
    agreements: list[dict[int, float]] = []
    for shift in card.shifted_passes:
        # The part moved by ``shift`` voxels on the network's grid, its first planes repeated
        # (as ``extend`` continues a cut face) and as many of its last left out, so that the pass
        # costs what the plain one does over the part. The left-out planes lie in the margin:
        # there the plain pass stands in.
        kept = [max(n - v, 0) for v, n in zip(shift, part.shape, strict=True)]
        if not all(kept):
            continue  # a part thinner than the shift: the pass would read only repeated planes
        moved = np.pad(part, [(v, 0) for v in shift], mode="edge")[tuple(slice(0, n) for n in part.shape)]
        raw = _one_pass(session, card, moved, pad_value, max_whole_voxels, batch_size)
        seen = tuple(slice(v, v + k) for v, k in zip(shift, kept, strict=True))
        back = tuple(slice(0, k) for k in kept)
        logits[(slice(None), *back)] += raw.logits[(slice(None), *seen)] - plain_logits[(slice(None), *back)]
        if disagreement is not None and raw.disagreement_logit is not None:
            assert plain_disagreement is not None
            disagreement[back] += raw.disagreement_logit[seen] - plain_disagreement[back]
        ran += raw.passes
        agreements.append(
            pass_agreement(card, plain_drawn[back], channel_argmax(raw.logits[(slice(None), *seen)]))
        )
    share = np.float32(1.0 / passes)
    logits *= share
    plain.logits[(slice(None), *box)] = logits
    if disagreement is not None and plain.disagreement_logit is not None:
        disagreement *= share
        plain.disagreement_logit[box] = disagreement
    agreement = {
        sid: round(float(np.mean([a[sid] for a in agreements if sid in a])), 4)
        for sid in sorted({sid for a in agreements for sid in a})
    }
    return RawOutput(
        logits=plain.logits, disagreement_logit=plain.disagreement_logit, passes=ran, pass_agreement=agreement
    )


#: A structure is compared between passes only where the plain pass draws at least this many voxels
#: of the network's grid (about 2 mm^3 at 0.63 mm): a few voxels' Dice says nothing.
AGREEMENT_MIN_VOXELS = 8


def pass_agreement(card: ModelCard, first: np.ndarray, second: np.ndarray) -> dict[int, float]:
    """Per structure id, the Dice between two passes' argmax maps (channel indices, same grid).

    On anatomy the network learned, moving the scan by a few voxels of its grid barely moves an
    outline: the served model's big organs agree at 0.87 or more between passes. Where it reads
    anatomy it does not know, its answer depends on where the grid falls: the phantom-only network
    draws the Digimouse heart at 0.06-0.78 between passes. ``qc.py`` (``unstable``) reads this."""
    channels = len(card.structures)
    pairs = np.bincount(
        (first.astype(np.int32) * channels + second).ravel(), minlength=channels * channels
    ).reshape(channels, channels)
    drawn_first, drawn_second = pairs.sum(axis=1), pairs.sum(axis=0)
    return {
        sid: 2.0 * float(pairs[ch, ch]) / float(drawn_first[ch] + drawn_second[ch])
        for ch, sid in enumerate(card.structures)
        if sid and drawn_first[ch] >= AGREEMENT_MIN_VOXELS
    }


#: A size pass runs only where it would shrink the scan by more than this share: a mouse a few
#: percent larger than the reference reads as the network learned it.
SIZE_MIN_CHANGE = 0.03


def size_scale(card: ModelCard, drawn: np.ndarray, animals: int = 1) -> float:
    """How much ``card``'s size pass would shrink the image on which it draws ``drawn`` (channel
    indices, ``channel_argmax`` of its logits): the cube root of the reference volume over the
    drawn one (per animal), not below the card's ``min_scale``; 1.0 for a mouse drawn no larger
    than the reference, or a card without one."""
    size = card.size_pass
    if size is None:
        return 1.0
    volume = float(np.count_nonzero(drawn_among(card, drawn, size.structures))) * math.prod(
        card.input_spacing_mm
    )
    volume /= max(int(animals), 1)
    if volume <= size.reference_mm3:
        return 1.0
    return max((size.reference_mm3 / volume) ** (1.0 / 3.0), size.min_scale)


def _with_size_pass(
    session: ort.InferenceSession,
    card: ModelCard,
    image: np.ndarray,
    out: RawOutput,
    max_whole_voxels: int,
    batch_size: int,
    animals: int,
) -> RawOutput:
    """``out`` and a pass over ``image`` shrunk by ``size_scale``, weighed by the card's
    ``size_pass.weight``, except where ``out`` draws one of its ``kept`` structures; ``out`` alone
    where the mouse is not drawn larger than the reference by more than ``SIZE_MIN_CHANGE``.

    The shrunk image is box-averaged (``resample_linear``) and continued by its edge planes to the
    network's multiple (a cut face runs on, as ``extend`` continues it); the pass's logits are
    cut back to the shrunk image and resampled to ``image``'s grid."""
    size = card.size_pass
    drawn = channel_argmax(out.logits)
    scale = size_scale(card, drawn, animals)
    if size is None or scale > 1.0 - SIZE_MIN_CHANGE:
        return out
    k = card.divisible_by
    shape = [max(k, round(n * scale)) for n in image.shape]
    shrunk = resample_linear(image, shape, antialias=True)
    shrunk = np.pad(shrunk, [(0, -n % k) for n in shape], mode="edge")
    raw = _one_pass(session, card, shrunk, 0.0, max_whole_voxels, batch_size)
    inside = tuple(slice(0, n) for n in shape)
    weight = np.float32(size.weight)
    keep = np.float32(1.0) - weight
    # Where the first reading draws a kept structure (bone), its answer stands.
    stands = drawn_among(card, drawn, size.kept) if size.kept else None
    logits = resample_linear(
        np.ascontiguousarray(raw.logits[(slice(None), *inside)]), image.shape, first_axis=1
    )
    blended = out.logits * keep + weight * logits
    if stands is not None:
        np.copyto(blended, out.logits, where=stands[None])
    mixed = out.disagreement_logit
    if out.disagreement_logit is not None and raw.disagreement_logit is not None:
        disagreement = resample_linear(np.ascontiguousarray(raw.disagreement_logit[inside]), image.shape)
        mixed = out.disagreement_logit * keep + weight * disagreement
        if stands is not None:
            np.copyto(mixed, out.disagreement_logit, where=stands)
    return replace(
        out, logits=blended, disagreement_logit=mixed, passes=out.passes + raw.passes, size_scale=scale
    )


def _one_pass(
    session: ort.InferenceSession,
    card: ModelCard,
    image: np.ndarray,
    pad_value: float,
    max_whole_voxels: int,
    batch_size: int,
) -> RawOutput:
    k = card.divisible_by
    padded_voxels = math.prod(_round_up(n, k) for n in image.shape)
    if padded_voxels <= max_whole_voxels:
        return _whole(session, card, image, pad_value)
    return _sliding(session, card, image, pad_value, max(1, batch_size))
