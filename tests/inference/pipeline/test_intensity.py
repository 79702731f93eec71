"""Intensity calibration: HU scans are left alone, 8/16-bit and float exports are mapped back to HU,
scans without credible air and soft-tissue peaks are refused with a plain message."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from inference.cli import EXIT_BAD_INPUT, main
from inference.phantom import Phantom, generate_phantom
from inference.pipeline import predict_volume, segment_file
from inference.pipeline.intensity import (
    AIR_HU,
    SOFT_TISSUE_HU,
    IntensityCalibrationError,
    calibrate_intensity,
    intensity_for,
)
from inference.registry import DEFAULT_MODELS_DIR, ModelCard, load_card
from tests.nifti import load_nifti

REFUSAL = "The intensities of this scan are not in Hounsfield units"


@pytest.fixture(scope="module")
def phantom() -> Phantom:
    """One whole-body phantom at a coarse 0.6 mm (67 x 67 x 160 voxels, int16 HU)."""
    return generate_phantom(3, spacing_mm=0.6, n_annotators=1)


def torso(ct: np.ndarray) -> np.ndarray:
    """The body's bounding box in x/y and the second quarter of its length (thorax to abdomen)."""
    body = np.argwhere(ct > -500)
    low, high = body.min(axis=0), body.max(axis=0) + 1
    nz = ct.shape[2]
    return ct[low[0] : high[0], low[1] : high[1], nz // 4 : nz // 2]


def inside(ct: np.ndarray) -> np.ndarray:
    """A block in the middle of the body: soft tissue and organs, no air around."""
    x, y, z = (round(c) for c in np.argwhere(ct > -500).mean(axis=0))
    return ct[x - 12 : x + 12, y - 6 : y + 6, z - 40 : z + 40]


#: HU scans as they arrive: plain, clipped as the tumor database is, offset by a miscalibrated
#: scanner, cropped to the torso.
HU_VARIANTS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "plain": lambda ct: ct,
    "clipped to [-400, 1000]": lambda ct: np.clip(ct, -400, 1000),
    "+60 HU": lambda ct: ct + 60,
    "-60 HU": lambda ct: ct - 60,
    "torso crop": torso,
    "clipped torso crop": lambda ct: np.clip(torso(ct), -400, 1000),
}

#: Exports in arbitrary units: (the export of an HU array, (HU per unit, HU at value 0)).
ARBITRARY: dict[str, tuple[Callable[[np.ndarray], np.ndarray], tuple[float, float]]] = {
    "8-bit, window -1000..2000 HU": (
        lambda hu: np.clip(np.rint((hu + 1000) * 255 / 3000), 0, 255).astype(np.uint8),
        (3000 / 255, -1000.0),
    ),
    "8-bit, window -1100..2400 HU": (
        lambda hu: np.clip(np.rint((hu + 1100) * 255 / 3500), 0, 255).astype(np.uint8),
        (3500 / 255, -1100.0),
    ),
    "16-bit, 7.3 units per HU + 12000": (
        lambda hu: np.rint(hu * 7.3 + 12000).astype(np.uint16),
        (1 / 7.3, -12000 / 7.3),
    ),
    "16-bit, HU + 1024": (lambda hu: (hu + 1024).astype(np.uint16), (1.0, -1024.0)),
    "float, attenuation per mm": (
        lambda hu: ((hu + 1000) / 1000 * 0.0205).astype(np.float32),
        (1000 / 0.0205, -1000.0),
    ),
}


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * np.sum(a & b) / max(int(np.sum(a) + np.sum(b)), 1))


@pytest.mark.parametrize("name", list(HU_VARIANTS))
def test_hu_scans_are_left_alone(phantom: Phantom, name: str) -> None:
    volume = HU_VARIANTS[name](phantom.ct)

    calibration = calibrate_intensity(volume)

    assert calibration.units == "HU"
    assert (calibration.slope, calibration.intercept) == (1.0, 0.0)
    assert calibration.apply(volume) is volume
    assert calibration.tissue_peak is not None and -20 <= calibration.tissue_peak <= 120


def test_an_offset_hu_scan_is_used_as_it_is_with_a_finding(phantom: Phantom) -> None:
    calibration = calibrate_intensity(phantom.ct + 60)

    assert calibration.units == "HU"
    assert calibration.air_peak == pytest.approx(-940, abs=10)
    assert any("+60 HU off -1000 HU" in finding for finding in calibration.findings)


@pytest.mark.parametrize("name", list(ARBITRARY))
def test_arbitrary_units_are_mapped_back_to_hu(phantom: Phantom, name: str) -> None:
    export, (hu_per_unit, hu_at_zero) = ARBITRARY[name]
    volume = export(phantom.ct.astype(np.float64))

    calibration = calibrate_intensity(volume)

    assert calibration.units == "calibrated"
    # The fit recovers the export's own scale within 3 % (air and tissue peaks are read to a bin).
    assert calibration.slope == pytest.approx(hu_per_unit, rel=0.03)

    def fitted(true_hu: float) -> float:
        return calibration.slope * (true_hu - hu_at_zero) / hu_per_unit + calibration.intercept

    assert fitted(-1000) == pytest.approx(-1000, abs=20)
    assert fitted(50) == pytest.approx(50, abs=20)
    assert fitted(1000) == pytest.approx(1000, abs=40)
    assert calibration.apply(volume).dtype == np.float32


@pytest.mark.parametrize("pad", [40, 80])
def test_a_mouse_small_in_a_wide_field_of_view_is_read_as_it_is(phantom: Phantom, pad: int) -> None:
    # 4 % and 1.5 % of the voxels are mouse: before the survey looked at the animal's box, the
    # HU scan was "calibrated" at the first width and refused at the second (no peak of tissue).
    widths = ((pad, pad), (pad, pad), (0, 0))
    wide = np.pad(phantom.ct, widths, constant_values=-1000)
    export, (hu_per_unit, _) = ARBITRARY["8-bit, window -1000..2000 HU"]
    wide_8_bit = np.pad(export(phantom.ct.astype(np.float64)), widths, constant_values=0)
    assert (wide > -500).mean() < 0.05

    assert calibrate_intensity(wide).units == "HU"
    assert calibrate_intensity(wide_8_bit).slope == pytest.approx(hu_per_unit, rel=0.03)


def test_the_fit_maps_the_peaks_to_air_and_soft_tissue(phantom: Phantom) -> None:
    volume = (phantom.ct.astype(np.int32) + 1024).astype(np.uint16)

    calibration = calibrate_intensity(volume)

    assert calibration.air_peak is not None and calibration.tissue_peak is not None
    assert calibration.slope * calibration.air_peak + calibration.intercept == pytest.approx(AIR_HU)
    tissue_hu = calibration.slope * calibration.tissue_peak + calibration.intercept
    assert tissue_hu == pytest.approx(SOFT_TISSUE_HU)
    assert calibration.as_json()["units"] == "calibrated"
    assert calibration.findings[0].startswith("Not in Hounsfield units")


@pytest.mark.parametrize(
    ("name", "make", "reason"),
    [
        ("uniform noise", lambda p: np.random.default_rng(0).uniform(0, 1000, p.ct.shape), "no clear peak"),
        ("label map 0-14", lambda p: p.labels, "distinct values"),
        ("inverted (bone dark)", lambda p: (3000 - p.ct.astype(np.int32)).astype(np.int16), "peaks"),
        ("inside the body, no air", lambda p: inside(p.ct).astype(np.int32) + 1024, "peak"),
        ("all air (a blank volume)", lambda p: np.full(p.ct.shape, -1000, np.int16), "same value (-1000)"),
    ],
)
def test_scans_without_credible_peaks_are_refused_in_plain_words(
    phantom: Phantom, name: str, make: Callable[[Phantom], np.ndarray], reason: str
) -> None:
    with pytest.raises(IntensityCalibrationError) as refused:
        calibrate_intensity(make(phantom))

    message = str(refused.value)
    assert message.startswith(REFUSAL)
    assert reason in message
    assert "Export the scan in HU" in message


@pytest.mark.parametrize("noise_hu", [5.0, 60.0])
def test_a_scan_of_air_alone_is_refused_as_holding_no_animal(phantom: Phantom, noise_hu: float) -> None:
    # The empty bed's scan, in HU: air and its noise, nothing a mouse is made of.
    air = np.random.default_rng(1).normal(-1000.0, noise_hu, phantom.ct.shape).astype(np.int16)

    with pytest.raises(IntensityCalibrationError) as refused:
        calibrate_intensity(air)

    message = str(refused.value)
    assert message.startswith("This scan holds no animal: every voxel reads as air")
    assert "none above -500 HU" in message and "field of view" in message
    assert not message.startswith(REFUSAL)  # the scan is in HU: that is not what is wrong


def test_a_mouse_in_a_wide_field_of_air_is_still_read(phantom: Phantom) -> None:
    # The air-only check reads the brightest voxel of the subsample, not its percentiles: a mouse
    # that fills a small share of the field of view is still seen.
    wide = np.pad(phantom.ct, [(120, 120), (120, 120), (0, 0)], constant_values=-1000)

    assert calibrate_intensity(wide).units == "HU"


def test_hu_mode_takes_the_values_unchecked_and_other_modes_are_rejected() -> None:
    labels = np.arange(15, dtype=np.uint8).repeat(100).reshape(10, 10, 15)

    assert intensity_for(labels, "hu").units == "HU"
    assert intensity_for(labels, "hu").mode == "hu"
    with pytest.raises(ValueError, match="intensity must be one of auto, hu"):
        intensity_for(labels, "raw")


def test_the_check_is_fast_on_a_full_size_scan(phantom: Phantom) -> None:
    # 192 x 192 x 520 voxels, the size of a tumor database scan.
    big = np.resize(phantom.ct, (192, 192, 520))
    export = (big.astype(np.int32) + 1024).astype(np.uint16)

    seconds = []
    for volume in (big, export) * 3:
        # CPU seconds of this process: the wall clock of a shared test machine says little.
        start = time.process_time()
        calibrate_intensity(volume)
        seconds.append(time.process_time() - start)

    assert min(seconds[0::2]) < 0.2 and min(seconds[1::2]) < 0.2


# --- through the pipeline -------------------------------------------------------------------


def test_calibrated_exports_give_the_hu_scans_labels(
    phantom: Phantom, organ_model: ModelCard, tumor_model: ModelCard
) -> None:
    reference = predict_volume(phantom.ct, phantom.affine, [organ_model, tumor_model], threads=1)

    for name, (export, _) in ARBITRARY.items():
        output = predict_volume(
            export(phantom.ct.astype(np.float64)), phantom.affine, [organ_model, tumor_model], threads=1
        )

        assert output.intensity is not None and output.intensity.units == "calibrated", name
        assert np.mean(output.labels == reference.labels) > 0.999, name
        for structure in (12, 14):  # the tiny models' dense classes (> 600 and > 850 HU)
            assert dice(output.labels == structure, reference.labels == structure) > 0.9, (name, structure)
    assert reference.intensity is not None and reference.intensity.units == "HU"
    assert {12, 14} <= set(np.unique(reference.labels))


def test_hu_mode_segments_the_raw_numbers(phantom: Phantom, organ_model: ModelCard) -> None:
    export = ARBITRARY["16-bit, HU + 1024"][0](phantom.ct.astype(np.float64))

    raw = predict_volume(export, phantom.affine, [organ_model], threads=1, intensity="hu")

    assert raw.intensity is not None and raw.intensity.mode == "hu"
    # Read as HU, soft tissue (about 1074) lands above the tiny model's 600 HU "brain" threshold.
    assert np.mean(raw.labels == 12) > 0.1


def test_a_refused_scan_stops_before_any_model_runs(phantom: Phantom, organ_model: ModelCard) -> None:
    progress: list[str] = []

    with pytest.raises(IntensityCalibrationError, match=REFUSAL):
        predict_volume(
            phantom.labels,
            phantom.affine,
            [organ_model],
            threads=1,
            progress=lambda _, stage: progress.append(stage),
        )

    assert progress == []


def _save(volume: np.ndarray, affine: np.ndarray, path: Path) -> Path:
    nib.save(nib.Nifti1Image(volume, affine), str(path))
    return path


def test_the_manifest_records_the_fit(phantom: Phantom, organ_model: ModelCard, tmp_path: Path) -> None:
    export = (phantom.ct.astype(np.int32) + 1024).astype(np.uint16)
    scan = _save(export, phantom.affine, tmp_path / "export16.nii.gz")
    hu_scan = _save(phantom.ct, phantom.affine, tmp_path / "hu.nii.gz")

    calibrated = segment_file(scan, tmp_path / "calibrated", cards=[organ_model], threads=1)
    plain = segment_file(hu_scan, tmp_path / "plain", cards=[organ_model], threads=1)

    entry = calibrated.manifest["intensity"]
    assert (entry["mode"], entry["units"]) == ("auto", "calibrated")
    assert entry["slope"] == pytest.approx(1.0, rel=0.03)
    assert entry["air_peak"] == pytest.approx(24, abs=10)
    assert entry["findings"] and entry["findings"][0].startswith("Not in Hounsfield units")
    assert plain.manifest["intensity"]["units"] == "HU"
    assert (plain.manifest["intensity"]["slope"], plain.manifest["intensity"]["intercept"]) == (1.0, 0.0)


def test_the_command_line_refuses_a_label_map_in_one_sentence(
    phantom: Phantom, organ_model: ModelCard, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scan = _save(phantom.labels, phantom.affine, tmp_path / "labels.nii.gz")
    model = ["--model", str(organ_model.folder)]

    code = main(["segment", str(scan), "--out", str(tmp_path / "out"), "--quiet", *model])
    forced = main(
        ["segment", str(scan), "--out", str(tmp_path / "forced"), "--quiet", "--intensity", "hu", *model]
    )

    assert code == EXIT_BAD_INPUT
    assert capsys.readouterr().err.startswith(f"error: {REFUSAL}")
    assert not (tmp_path / "out" / "labels.nii.gz").exists()
    assert forced == 0 and (tmp_path / "forced" / "labels.nii.gz").exists()


# --- real 8-bit head scans ------------------------------------------------------------------

#: A box inside each head's braincase (x, y, z voxel ranges), picked on its slices.
BRAIN_BOXES = {
    "BALB_CJ_.nii.gz": (slice(100, 120), slice(115, 145), slice(65, 85)),
    "C57BL6_J_.nii.gz": (slice(50, 75), slice(35, 70), slice(52, 64)),
}


@pytest.mark.parametrize("name", list(BRAIN_BOXES))
def test_real_8_bit_head_scans_are_calibrated_to_plausible_hu(realdata: Path, name: str) -> None:
    raw = np.asanyarray(load_nifti(str(realdata / name)).dataobj)

    calibration = calibrate_intensity(raw)
    hu = calibration.apply(raw)

    assert raw.dtype == np.uint8 and calibration.units == "calibrated"
    assert calibration.air_peak == 0 and 7.5 <= (calibration.tissue_peak or 0) <= 10
    assert float(np.median(hu[:10, :10, :10])) == pytest.approx(-1000, abs=1)  # the corner is air
    # Brain within one 8-bit step (about 120 HU) of soft tissue's +50 HU.
    assert abs(float(hu[BRAIN_BOXES[name]].mean()) - SOFT_TISSUE_HU) < calibration.slope
    assert float(np.percentile(hu[hu > 0], 99)) > 2000  # skull and teeth, well above soft tissue
    assert any(finding.startswith("Air is cut off") for finding in calibration.findings)


def test_the_bone_only_head_template_is_refused(realdata: Path) -> None:
    template = np.asanyarray(load_nifti(str(realdata / "low_res_template_UCHAR.nii.gz")).dataobj)
    labels = np.asanyarray(load_nifti(str(realdata / "low_res_template_UCHAR-label.nii.gz")).dataobj)

    with pytest.raises(IntensityCalibrationError, match=REFUSAL):
        calibrate_intensity(template)

    # Why refusing is right: the template shows bone only; its braincase (label 15) is as dark
    # as the air around the skull, so no soft-tissue peak exists to calibrate from.
    assert float(template[labels == 15].mean()) < 2 and float(template[labels == 0].mean()) < 2


# --- the real committed organ model ---------------------------------------------------------


@pytest.mark.slow
def test_the_committed_organ_model_gives_the_same_organs_on_calibrated_exports() -> None:
    card = load_card(DEFAULT_MODELS_DIR / "mouse-organs" / "1.9.0")
    small = generate_phantom(3, spacing_mm=0.42, n_annotators=1)
    hu = small.ct.astype(np.float64)
    present = [int(s) for s in np.unique(small.labels) if s and np.sum(small.labels == s) > 500]

    reference = predict_volume(small.ct, small.affine, [card], threads=2).labels
    for name in ("8-bit, window -1000..2000 HU", "16-bit, 7.3 units per HU + 12000"):
        export = ARBITRARY[name][0](hu)
        calibrated = predict_volume(export, small.affine, [card], threads=2).labels
        for structure in present:
            assert dice(calibrated == structure, reference == structure) > 0.98, (name, structure)
    as_hu = ARBITRARY["8-bit, window -1000..2000 HU"][0](hu)
    raw = predict_volume(as_hu, small.affine, [card], threads=2, intensity="hu").labels
    liver = small.labels == 4
    assert dice(raw == 4, liver) < 0.5 < dice(reference == 4, liver)
