"""Intensity calibration: are a scan's numbers Hounsfield units (HU), and if not, a linear map to them.

The models were trained on HU: their normalisation windows are HU ranges (``model.json``) and the
lesion rules use HU thresholds. Many real files are not in HU (8- or 16-bit exports, attenuation
coefficients in arbitrary units); segmented as if they were, they give meaningless volumes (an 8-bit
head scan came back with a 6.6-9.2 mL "tumor"). This module reads the scan's histogram and either
confirms HU or fits ``HU = slope * value + intercept`` from two anchors every mouse scan has:

- air around the animal, -1000 HU (:data:`AIR_HU`);
- soft tissue, the largest tissue class of a mouse (muscle, organs, brain), +50 HU
  (:data:`SOFT_TISSUE_HU`): where the training phantoms' soft tissue peaks (35-59 HU, mean 48, over
  6 native and 6 contrast phantoms; their muscle is 48 HU, brain 38, liver 62, fat -100), so a
  calibrated scan puts tissue where the models learned it.

A fit is used only when it is credible (see :func:`calibrate_intensity`); otherwise
:class:`IntensityCalibrationError` says why in plain words, because segmenting raw numbers as HU is
never better than no answer.

Array contract: ``volume`` is any 3D numeric array (any axis order; the histogram ignores geometry).
Everything is measured on a strided subsample of about :data:`SAMPLE_VOXELS` voxels, so a
192 x 192 x 520 scan takes a few hundredths of a second.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from scipy.ndimage import gaussian_filter1d
from scipy.signal import find_peaks

from inference.pipeline.geometry import bounding_box

Units = Literal["HU", "calibrated"]
Mode = Literal["auto", "hu"]
MODES: tuple[Mode, ...] = ("auto", "hu")

AIR_HU = -1000.0
SOFT_TISSUE_HU = 50.0
#: A fit whose one quantisation step spans more than this cannot tell fat (about -100 HU) from soft
#: tissue (+40 to +60 HU), the contrast the organ outlines rest on.
MAX_STEP_HU = 140.0
#: Voxels the histogram is measured on (a strided subsample).
SAMPLE_VOXELS = 1_000_000
#: Fewer distinct values than this is a label map or a mask, not a scan.
MIN_DISTINCT_VALUES = 32
#: Histogram bins over the robust range: at most this many (fewer when the data are coarsely
#: quantised), and about sqrt(voxels) for a small scan, whose finer bins would be noise.
BINS = 512
MIN_BINS = 64
#: A peak must hold this share of the histogram's voxels (within its half-height width) ...
MIN_PEAK_SHARE = 0.01
#: ... and the air peak this share: the air around the animal, not a gas bubble in the gut.
MIN_AIR_SHARE = 0.02
#: A peak must rise this much (share of its height) above the valley towards any higher peak ...
MIN_PROMINENCE = 0.25
#: ... and be narrower than this share of the histogram's range (a flat histogram is no peak).
MAX_PEAK_WIDTH = 0.15
#: The valley between air and soft tissue must fall below this share of the soft-tissue peak.
MAX_VALLEY = 0.5
#: A pile in the lowest bin is a clipped tail only if the bin beside it holds this share of it.
TAIL_RATIO = 0.05
#: After a fit, at most this share of voxels may lie far below air (bone mapped there: inverted).
MAX_BELOW_AIR = 0.01
BELOW_AIR_HU = -1250.0
#: After a fit, the brightest 0.1 % of voxels must reach bone-like values.
MIN_BONE_HU = 300.0
#: Mapped values above this (the brightest 0.1 %) are beyond bone and teeth (phantom teeth 1800 HU).
MAX_PLAUSIBLE_HU = 4000.0

# What a scan already in HU looks like: soft tissue where soft tissue is, something air- or
# lung-like below -300 HU (air, lungs, or the -400 HU clip of the tumor database), nothing far
# outside the range of matter. Scanners offset by tens of HU (+-60 are accepted) stay "HU".
HU_TISSUE_RANGE = (-150.0, 160.0)
HU_LOW_BELOW = -300.0
HU_MIN = -1200.0
HU_MAX = 5000.0
#: Air within this range is taken as air in HU (used for the offset finding).
HU_AIR_RANGE = (-1150.0, -850.0)
#: Values below this at the minimum, a spike: padding outside the reconstruction circle.
PADDING_BELOW = -1100.0
#: A scan whose every sampled voxel lies at or above ``HU_MIN`` and below this holds air only (in
#: HU): no soft tissue, no lung (inflated lungs read -300 to -700 HU, ../shared/science.md). It is
#: an empty bed or the wrong file, and is refused as such rather than as "not in HU".
AIR_ONLY_BELOW_HU = -500.0


class IntensityCalibrationError(ValueError):
    """The scan's numbers are not HU and cannot be mapped to HU credibly; the message says why."""


@dataclass(frozen=True)
class Peak:
    """One histogram peak, in the scan's own units."""

    value: float
    #: Smoothed histogram height at the peak (voxels per bin).
    height: float
    #: Share of the histogram's voxels within the peak's half-height width.
    share: float
    #: A spike at the lowest value: everything below it was cut off when the scan was exported.
    clipped: bool = False
    #: Bin of the histogram it was found in.
    index: int = 0


@dataclass(frozen=True)
class IntensityCalibration:
    """How a scan's values relate to HU: ``HU = slope * value + intercept``.

    ``units`` is "HU" (values used as they are; slope 1, intercept 0) or "calibrated" (the fit).
    ``air_peak`` / ``tissue_peak`` are in the scan's own units (None where not found); ``findings``
    are plain-words sentences for the run manifest and the researcher. ``depth_drift_hu``: how far
    the level drifts from the body's outline to its centre (``drift.measure_drift``; None until
    the organ model has run, or where it cannot tell). ``blur_mm``: the scan's blur read at the
    skin (``blur.blur_mm``; None until read, or where too little skin borders clear air).
    ``bone_level_hu`` / ``bone_peak_hu``: how bright the scan's bone reads, its level and its peak
    (``bone_level.read_bone_level``; None with no bone in view); ``bone_stretched_to_hu``: the peak
    the models read it at when it was too dim for them (None when the scan was read as it is).
    """

    units: Units
    slope: float
    intercept: float
    air_peak: float | None
    tissue_peak: float | None
    findings: tuple[str, ...]
    mode: Mode = "auto"
    depth_drift_hu: float | None = None
    blur_mm: float | None = None
    bone_level_hu: float | None = None
    bone_peak_hu: float | None = None
    bone_stretched_to_hu: float | None = None

    def apply(self, volume: np.ndarray) -> np.ndarray:
        """``volume`` in HU: the same array for "HU", a float32 copy for "calibrated"."""
        if self.units == "HU":
            return volume
        result = np.asarray(volume, dtype=np.float32) * np.float32(self.slope)
        result += np.float32(self.intercept)
        return result

    def as_json(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "units": self.units,
            # Significant digits: a float export's peaks can be 1e-5 apart, a 16-bit one's 1e4.
            "slope": _significant(self.slope),
            "intercept": _significant(self.intercept),
            "air_peak": None if self.air_peak is None else _significant(self.air_peak),
            "tissue_peak": None if self.tissue_peak is None else _significant(self.tissue_peak),
            "findings": list(self.findings),
            "depth_drift_hu": None if self.depth_drift_hu is None else round(self.depth_drift_hu, 1),
            "blur_mm": None if self.blur_mm is None else round(self.blur_mm, 3),
            "bone_level_hu": None if self.bone_level_hu is None else round(self.bone_level_hu),
            "bone_peak_hu": None if self.bone_peak_hu is None else round(self.bone_peak_hu),
            "bone_stretched_to_hu": None
            if self.bone_stretched_to_hu is None
            else round(self.bone_stretched_to_hu),
        }


def assume_hu() -> IntensityCalibration:
    """The record for ``intensity="hu"``: the values are taken as HU without a check."""
    return IntensityCalibration(
        units="HU",
        slope=1.0,
        intercept=0.0,
        air_peak=None,
        tissue_peak=None,
        findings=("Taken as Hounsfield units as asked (intensity 'hu'); not checked.",),
        mode="hu",
    )


def fill_unreadable(volume: np.ndarray) -> tuple[np.ndarray, str | None]:
    """``volume`` with its voxels that hold no number (NaN, infinite) read as its lowest value, and
    the manifest's sentence saying how many; ``volume`` itself and None when every voxel is a
    number. Some exporters write NaN outside the reconstructed circle: that is air, not a reason to
    fail the run. A scan with no number at all is refused (``IntensityCalibrationError``)."""
    if volume.dtype.kind != "f":
        return volume, None
    finite = np.isfinite(volume)
    if finite.all():
        return volume, None
    count = int(finite.size - np.count_nonzero(finite))
    if count == finite.size:
        raise IntensityCalibrationError(
            "Every voxel of this scan is NaN or infinite: it holds no image. Export the scan again "
            "from the scanner's software and try again."
        )
    lowest = volume[finite].min()
    filled = np.where(finite, volume, lowest).astype(volume.dtype, copy=False)
    return filled, (
        f"{count:,} voxels ({100.0 * count / finite.size:.1f} %) held no number (NaN or infinite, as "
        f"some exporters write outside the reconstructed field); they were read as the scan's lowest "
        f"value ({_num(float(lowest))}), as air."
    )


def intensity_for(volume: np.ndarray, mode: str) -> IntensityCalibration:
    """``mode`` "auto": :func:`calibrate_intensity`; "hu": :func:`assume_hu`."""
    if mode == "hu":
        return assume_hu()
    if mode == "auto":
        return calibrate_intensity(volume)
    raise ValueError(f"intensity must be one of {', '.join(MODES)}, not {mode!r}")


@dataclass(frozen=True)
class _Survey:
    """What the histogram of a scan's subsample shows (values in the scan's own units)."""

    content: np.ndarray
    low: float
    p05: float
    p1: float
    p999: float
    distinct: int
    quantum: float
    #: Share of the voxels at exactly ``low`` (a clip when large) and of padding dropped below it.
    at_low: float
    padding: float
    peaks: list[Peak]
    smooth: np.ndarray
    air: Peak | None
    tissue: Peak | None

    @property
    def span(self) -> str:
        return f"values {_num(self.low)} to {_num(self.p999)}"


def calibrate_intensity(volume: np.ndarray) -> IntensityCalibration:
    """Confirm that ``volume`` is in HU, or fit a linear map to HU from its air and soft-tissue peaks.

    HU: a peak holding 2 % of the voxels lies within -150..160 HU (soft tissue), 1 % of the voxels
    lie below -300 HU (air, lungs or a -400 HU clip) and the bulk lies within -1200..5000 HU; such a
    scan is used as it is. Otherwise a fit (air peak -> -1000 HU, soft-tissue peak -> +50 HU) is
    used only when it is credible: the scan holds many distinct values (not a label map); two
    peaks, air below soft tissue, each holding a real share of the voxels, with a clear valley
    between them; one quantisation step stays finer than the fat/soft-tissue contrast; after the
    map, little lies far below air (else the scan may be inverted) and the brightest voxels reach
    bone-like values. Raises :class:`IntensityCalibrationError` otherwise.
    """
    survey = _survey(volume)
    # In HU, soft tissue is the tallest peak where soft tissue lies (it need not be the tallest of
    # all: a crop can be mostly organ or bed).
    in_range = [
        peak
        for peak in survey.peaks
        if HU_TISSUE_RANGE[0] <= peak.value <= HU_TISSUE_RANGE[1] and peak.share >= MIN_AIR_SHARE
    ]
    tissue = max(in_range, key=lambda peak: peak.height) if in_range else None
    if tissue is not None and survey.p1 <= HU_LOW_BELOW and survey.p05 >= HU_MIN and survey.p999 <= HU_MAX:
        return IntensityCalibration(
            units="HU",
            slope=1.0,
            intercept=0.0,
            air_peak=None if survey.air is None else survey.air.value,
            tissue_peak=tissue.value,
            findings=tuple(_hu_findings(survey, tissue)),
        )
    return _fit(survey)


def _survey(volume: np.ndarray) -> _Survey:
    """The histogram's story: of the whole field of view, or of the animal's box within it when
    the animal fills little of it. A head in a 75 mm field of view is 3 % of its voxels: its
    soft-tissue peak then holds too few of them to count, and its bone none of the brightest
    0.1 %, so a scan in HU was refused (measured on a padded phantom; ``tests/inference/pipeline
    /test_intensity.py``). The animal's box keeps air round it, so both peaks stay."""
    whole = _survey_of(_sample(volume))
    if whole.p05 >= HU_MIN and float(whole.content.max()) < AIR_ONLY_BELOW_HU:
        raise IntensityCalibrationError(
            f"This scan holds no animal: every voxel reads as air in Hounsfield units ({whole.span}, "
            f"none above {_num(AIR_ONLY_BELOW_HU)} HU, where a mouse's lungs and soft tissue lie). "
            "It may be a scan of the empty bed, or another file than the one meant. Check that the "
            "animal lies in the field of view and try again."
        )
    box = _animal_box(np.asarray(volume), whole)
    return whole if box is None else _survey_of(_sample(np.asarray(volume)[box]))


def _animal_box(volume: np.ndarray, whole: _Survey) -> tuple[slice, ...] | None:
    """The box of the voxels brighter than halfway from the air peak (the one holding most voxels)
    to the next peak above it, or to the brightest 0.1 % when no other peak stands out, with a
    tenth of each extent around it; None unless it holds under half the scan."""
    air = max(whole.peaks, key=lambda peak: peak.share, default=None)
    if air is None or air.share < 0.5 or volume.ndim != 3:
        return None
    above = min((peak.value for peak in whole.peaks if peak.value > air.value), default=whole.p999)
    threshold = (air.value + above) / 2
    step = max(1, int(np.ceil((volume.size / SAMPLE_VOXELS) ** (1.0 / 3))))
    sampled = bounding_box(volume[::step, ::step, ::step] > threshold, 0)
    if sampled is None:
        return None
    box = []
    for part, n in zip(sampled, volume.shape, strict=True):
        start, stop = part.start * step, part.stop * step
        margin = (stop - start) // 10 + step
        box.append(slice(max(start - margin, 0), min(stop + margin, n)))
    if np.prod([s.stop - s.start for s in box]) > 0.5 * volume.size:
        return None
    return tuple(box)


def _survey_of(sample: np.ndarray) -> _Survey:
    if sample.size == 0:
        raise _refuse("the scan holds no finite values")
    content, padding = _without_padding(sample)
    # Percentiles and distinct values from every few voxels of the sample (about 200k) are as good.
    few = content[:: max(1, content.size // 200_000)]
    p05, p1, p999 = (float(v) for v in np.percentile(few, [0.5, 1, 99.9]))
    low = float(content.min())
    if float(content.max()) == low:
        # No histogram to read (and none numpy can bin): an empty or blank volume.
        raise _refuse(
            f"every voxel holds the same value ({_num(low)}), so it is a blank volume, not a CT scan"
        )
    distinct, quantum = _distinct(few)
    # A handful of values (a label map, a noiseless test volume) is no quantisation: bin them finely.
    peaks, smooth = _find_peaks(
        content, low, max(p999, low), quantum if distinct >= MIN_DISTINCT_VALUES else 0.0
    )
    air, tissue = _anchors(peaks)
    return _Survey(
        content=content,
        low=low,
        p05=p05,
        p1=p1,
        p999=p999,
        distinct=distinct,
        quantum=quantum,
        at_low=float(np.mean(content == low)),
        padding=padding,
        peaks=peaks,
        smooth=smooth,
        air=air,
        tissue=tissue,
    )


def _fit(survey: _Survey) -> IntensityCalibration:
    air, tissue = survey.air, survey.tissue
    if survey.distinct < MIN_DISTINCT_VALUES:
        raise _refuse(
            f"it holds only {survey.distinct} distinct value{'s' if survey.distinct != 1 else ''}, "
            "which is a label map or a mask, not a CT scan"
        )
    if tissue is None:
        raise _refuse(f"its histogram ({survey.span}) shows no clear peak at all")
    if air is None:
        if len(survey.peaks) == 1:
            raise _refuse(
                f"its histogram ({survey.span}) shows only one clear peak (at {_num(tissue.value)}) where a "
                "mouse scan shows two, air and soft tissue: the field of view may hold too little air, "
                "or no soft tissue"
            )
        raise _refuse(
            f"the lowest of its clear peaks (at {_values(survey.peaks)}) holds only "
            f"{survey.peaks[0].share:.1%} of the voxels, too few for the air around an animal"
        )
    gap = survey.smooth[air.index + 1 : tissue.index]
    if (float(gap.min()) if gap.size else tissue.height) > MAX_VALLEY * tissue.height:
        raise _refuse(
            f"the candidate air ({_num(air.value)}) and soft-tissue ({_num(tissue.value)}) peaks are not "
            "separated by a clear valley"
        )
    slope = (SOFT_TISSUE_HU - AIR_HU) / (tissue.value - air.value)
    intercept = AIR_HU - slope * air.value
    step_hu = slope * survey.quantum
    if step_hu > MAX_STEP_HU:
        raise _refuse(
            f"the candidate air ({_num(air.value)}) and soft-tissue ({_num(tissue.value)}) peaks are only "
            f"{(tissue.value - air.value) / survey.quantum:.1f} steps apart, so one step would be "
            f"{step_hu:.0f} HU, coarser than the {MAX_STEP_HU:.0f} HU between fat and soft tissue"
        )
    mapped = survey.content.astype(np.float32) * np.float32(slope) + np.float32(intercept)
    below = float(np.mean(mapped < BELOW_AIR_HU))
    anchors = f"with air at {_num(air.value)} and soft tissue at {_num(tissue.value)}"
    if below > MAX_BELOW_AIR:
        raise _refuse(
            f"{anchors}, {below:.1%} of the voxels would lie far below air (under {BELOW_AIR_HU:.0f} HU): "
            "the scan may be inverted (bone dark) or these peaks are not air and soft tissue"
        )
    top_hu = float(np.percentile(mapped, 99.9))
    if top_hu < MIN_BONE_HU:
        raise _refuse(
            f"{anchors}, nothing would be brighter than {top_hu:.0f} HU: there are no bone-like values "
            "above soft tissue"
        )
    findings = [
        f"Not in Hounsfield units ({survey.span}): air peaks at {_num(air.value)} and soft tissue at "
        f"{_num(tissue.value)}; mapped linearly to HU = {slope:.6g} x value {intercept:+.6g} "
        f"(air -> {AIR_HU:.0f} HU, soft tissue -> {SOFT_TISSUE_HU:+.0f} HU; one step = {step_hu:.3g} HU)."
    ]
    if air.clipped:
        findings.append(
            f"Air is cut off at the scan's lowest value {_num(air.value)} ({survey.at_low:.0%} of the voxels "
            "sit there): the true air level may lie below it, so the slope may be too steep and the "
            "noise looks larger than it is."
        )
    if top_hu > MAX_PLAUSIBLE_HU:
        findings.append(
            f"The brightest 0.1% of the voxels map to {top_hu:.0f} HU or more, beyond bone and teeth: "
            "the export may not be linear above soft tissue or air was cut off; densities above "
            "1000 HU are only relative."
        )
    if survey.padding:
        findings.append(
            f"{survey.padding:.1%} of the voxels hold a padding value below {_num(survey.low)}; "
            "they were ignored."
        )
    return IntensityCalibration(
        units="calibrated",
        slope=float(slope),
        intercept=float(intercept),
        air_peak=air.value,
        tissue_peak=tissue.value,
        findings=tuple(findings),
    )


def _hu_findings(survey: _Survey, tissue: Peak) -> list[str]:
    air = survey.air
    findings = [f"Hounsfield units: soft tissue peaks at {tissue.value:.0f} HU."]
    if air is not None and HU_AIR_RANGE[0] <= air.value <= HU_AIR_RANGE[1]:
        findings.append(f"Air peaks at {air.value:.0f} HU.")
        if abs(air.value - AIR_HU) > 30:
            findings.append(
                f"Air sits {air.value - AIR_HU:+.0f} HU off -1000 HU: the scanner's calibration may be off; "
                "the values are used as they are."
            )
    elif survey.at_low >= MIN_PEAK_SHARE:
        findings.append(
            f"Values are clipped at {survey.low:.0f} HU ({survey.at_low:.0%} of the voxels sit there), as in "
            "exports windowed to [-400, 1000] HU."
        )
    else:
        findings.append(
            "No air peak near -1000 HU (the field of view holds little air); "
            f"values reach {survey.low:.0f} HU."
        )
    if survey.padding:
        findings.append(
            f"{survey.padding:.1%} of the voxels hold a padding value below {PADDING_BELOW:.0f} HU; "
            "they were ignored."
        )
    return findings


def _sample(volume: np.ndarray) -> np.ndarray:
    """A strided subsample (about SAMPLE_VOXELS voxels) as a flat float64 array of finite values."""
    data = np.asarray(volume)
    if data.ndim == 0 or data.size == 0:
        return np.zeros(0)
    step = max(1, int(np.ceil((data.size / SAMPLE_VOXELS) ** (1.0 / data.ndim))))
    sample = np.asarray(data[(slice(None, None, step),) * data.ndim], dtype=np.float64).ravel()
    if not np.issubdtype(data.dtype, np.integer):
        sample = sample[np.isfinite(sample)]
    return sample


def _without_padding(sample: np.ndarray) -> tuple[np.ndarray, float]:
    """Drop a padding spike (one value far below air, e.g. -3024 outside the reconstruction circle)."""
    low = float(sample.min())
    if low >= PADDING_BELOW:
        return sample, 0.0
    at_low = sample == low
    share = float(np.mean(at_low))
    if share < 0.005:
        return sample, 0.0
    return sample[~at_low], share


def _distinct(sample: np.ndarray) -> tuple[int, float]:
    """Distinct values and the quantisation step (smallest gap between them)."""
    values = np.unique(sample)
    gaps = np.diff(values)
    return int(values.size), float(gaps.min()) if gaps.size else 0.0


def _find_peaks(sample: np.ndarray, low: float, high: float, quantum: float) -> tuple[list[Peak], np.ndarray]:
    """Peaks of the (lightly smoothed) histogram over [low, high], lowest value first, and that
    smoothed histogram (voxels per bin; ``Peak.index`` points into it).

    Bins are whole multiples of the quantisation step, centred on the data's values, so an 8-bit
    scan gets one bin per level and no comb of alternately full and empty bins. A pile-up in the
    lowest bin is a clip (an export that cut off everything below, or a scanner's -1024 floor):
    the histogram beyond it is searched as if it fell to zero on its left, and the pile is the air
    peak itself when the counts only fall away from it, the cut-off tail of the first peak when they
    rise into that peak, and a peak of its own when a valley separates the two.
    """
    span = max(high - low, quantum, 1e-12)
    width = span / int(np.clip(np.sqrt(sample.size), MIN_BINS, BINS))
    if quantum > 0 and quantum * 64 > width:
        width = quantum * max(1.0, float(np.ceil(width / quantum)))
    count = max(3, int(np.floor(span / width)) + 1)
    # A bin count and range (not an array of edges) takes numpy's fast path for equal bins.
    start = low - width / 2
    counts = np.histogram(sample, bins=count, range=(start, start + count * width))[0].astype(np.float64)
    total = counts.sum()
    pile = int(counts[0] > counts[1] and counts[0] >= MIN_PEAK_SHARE * total)
    # The pile is left out of the smoothing: spread over its neighbours it would fill the valley.
    smooth = counts.copy()
    smooth[pile:] = gaussian_filter1d(counts[pile:], 1.0, mode="nearest")
    if total == 0:
        return [], smooth
    # No voxel lies below the lowest value, so the histogram is searched with a zero on its left:
    # a peak at the lowest values (or cut off by a clip) still counts as a peak.
    searched = np.concatenate([[0.0], smooth[pile:]])
    shift = pile - 1  # searched bin + shift == bin of ``smooth``
    found, props = find_peaks(searched, prominence=0.0, width=0.0, rel_height=0.5)
    peaks: list[Peak] = []
    for i, at in enumerate(found):
        position = int(at) + shift
        height = float(smooth[position])
        if props["prominences"][i] < MIN_PROMINENCE * height or props["widths"][i] > MAX_PEAK_WIDTH * count:
            continue
        left = max(pile, int(np.floor(props["left_ips"][i])) + shift)
        right = int(np.ceil(props["right_ips"][i])) + shift
        share = float(counts[left : right + 1].sum() / total)
        if share < MIN_PEAK_SHARE:
            continue
        value = low + (position + _vertex(smooth, position, pile)) * width
        peaks.append(Peak(value=float(value), height=height, share=share, index=position))
    if pile:
        share = float(counts[0] / total)
        if peaks and peaks[0].index == 1:
            # The counts only fall away from the pile: the mode is at (or below) the clip.
            peaks[0] = Peak(low, float(counts[0]), share + peaks[0].share, True, 0)
        elif peaks and _pile_is_tail(counts, smooth, peaks[0]):
            # No valley: the pile is the cut-off lower tail of the first peak, which keeps its place.
            head = peaks[0]
            peaks[0] = Peak(head.value, head.height, head.share + share, False, head.index)
        else:
            peaks.insert(0, Peak(low, float(counts[0]), share, True, 0))
    return peaks, smooth


def _pile_is_tail(counts: np.ndarray, smooth: np.ndarray, first: Peak) -> bool:
    """Whether a pile in bin 0 is the cut-off lower tail of the ``first`` peak (a scanner's -1024 HU
    floor under air at -1000) rather than a peak of its own (air cut off by an 8-bit export, the
    -400 HU clip of the tumor database): the bin beside it is a real flank (at least TAIL_RATIO of
    the pile; a Gaussian cut anywhere on its rising side leaves more) and the counts rise from there
    into the peak without dipping far below where they start."""
    if counts[1] < TAIL_RATIO * counts[0]:
        return False
    rise = smooth[1 : first.index + 1]
    return float(rise.min()) >= min(0.8 * float(rise[0]), MAX_VALLEY * first.height)


def _vertex(values: np.ndarray, i: int, first: int = 0) -> float:
    """Sub-bin offset of a peak at ``i`` from a parabola through it and its neighbours (bins before
    ``first`` do not count)."""
    if i <= first or i >= values.size - 1:
        return 0.0
    a, b, c = values[i - 1], values[i], values[i + 1]
    curvature = a - 2 * b + c
    return float(0.5 * (a - c) / curvature) if curvature < 0 else 0.0


def _anchors(peaks: list[Peak]) -> tuple[Peak | None, Peak | None]:
    """Air: the lowest peak when it holds enough voxels and another peak lies above it; soft tissue:
    the tallest peak above air (the tallest of all without air)."""
    if not peaks:
        return None, None
    air = peaks[0] if len(peaks) >= 2 and peaks[0].share >= MIN_AIR_SHARE else None
    above = peaks[1:] if air is not None else peaks
    return air, max(above, key=lambda p: p.height)


def _refuse(reason: str) -> IntensityCalibrationError:
    return IntensityCalibrationError(
        "The intensities of this scan are not in Hounsfield units (HU) and could not be calibrated "
        f"to them from its air and soft-tissue peaks: {reason}. Segmenting the raw numbers as HU "
        "would give meaningless volumes. Export the scan in HU (most scanner software can), with "
        "air around the animal in the field of view, and try again."
    )


def _significant(value: float) -> float:
    return float(f"{value:.7g}")


def _num(value: float) -> str:
    return f"{value:.0f}" if abs(value) >= 1000 else f"{value:.4g}"


def _values(peaks: list[Peak]) -> str:
    return ", ".join(_num(p.value) for p in peaks)
