"""Voxels that hold no number (NaN, infinite: some exporters write NaN outside the reconstructed
circle) are read as air and named in the manifest; a scan of nothing but such voxels is refused in
plain words, never a crash on "range [nan, nan]"."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from inference.metrics import dice
from inference.phantom import generate_phantom
from inference.pipeline.intensity import IntensityCalibrationError, fill_unreadable
from inference.structures import BY_NAME
from inference.training.robustness import Case
from tests.inference.pipeline.segmented import segment_case

LIVER = BY_NAME["liver"].id


def test_numbers_pass_untouched() -> None:
    whole = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    real = whole.astype(np.float32)

    assert fill_unreadable(whole) == (whole, None)
    filled, sentence = fill_unreadable(real)
    assert filled is real and sentence is None


def test_unreadable_voxels_read_as_the_lowest_value_and_are_counted() -> None:
    scan = np.full((4, 5, 6), 40.0, np.float32)
    scan[0, 0, 0] = -1000.0
    scan[1, :, :] = np.nan
    scan[2, 0, 0] = np.inf

    filled, sentence = fill_unreadable(scan)

    assert np.isfinite(filled).all() and filled.dtype == scan.dtype
    assert np.all(filled[1] == -1000.0) and filled[2, 0, 0] == -1000.0
    assert np.isnan(scan[1]).all()  # the caller's array is left as it was
    assert sentence is not None and "31 voxels" in sentence and "as air" in sentence


def test_a_scan_of_no_numbers_is_refused_in_plain_words() -> None:
    with pytest.raises(IntensityCalibrationError, match="holds no image"):
        fill_unreadable(np.full((4, 4, 4), np.nan, np.float32))


def test_a_scan_with_nan_outside_its_circle_is_segmented(tmp_path: Path) -> None:
    phantom = generate_phantom(9002, spacing_mm=0.42, n_annotators=0)
    ct = phantom.ct.astype(np.float32)
    nx, ny, _ = ct.shape
    x, y = np.meshgrid(np.arange(nx) - nx / 2, np.arange(ny) - ny / 2, indexing="ij")
    outside = np.hypot(x, y) > 0.55 * max(nx, ny)  # the corners, beyond the reconstructed circle
    assert not np.any(phantom.labels[outside])
    ct[outside] = np.nan
    base = Case(name="p", ct=phantom.ct, labels=phantom.labels, affine=phantom.affine, meta=phantom.meta)

    manifest, labels = segment_case(replace(base, ct=ct), tmp_path / "nan")

    assert any("held no number" in f for f in manifest["intensity"]["findings"])
    assert dice(labels == LIVER, phantom.labels == LIVER) > 0.85
