"""A scan's blur read at the skin (pipeline/blur.py), and the lungs' air-edge rule that grows and
no longer trims on a blurred scan, where a lobe thinner than the blur never reaches its edge."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from inference.metrics import dice
from inference.phantom import generate_phantom
from inference.pipeline.blur import NODULES_MAX_MM, SHARP_MM, blur_finding, blur_mm, is_blurred
from inference.pipeline.postprocess import SOFT_TISSUE_HU, refine_air_edge
from inference.structures import BY_NAME
from inference.training.robustness import Case, blur
from tests.inference.pipeline.segmented import segment_case

LUNG = BY_NAME["lung_left"].id
HEART = BY_NAME["heart"].id
SPACING = 0.1


def _body(sigma_mm: float, *, seed: int = 0) -> np.ndarray:
    """An elliptic body (40 HU, 20 HU of noise) in air, point-sampled at 0.1 mm, blurred in-plane."""
    x, y = np.meshgrid(np.arange(160) - 80.0, np.arange(140) - 70.0, indexing="ij")
    inside = (x / 55.0) ** 2 + (y / 45.0) ** 2 <= 1.0
    hu = np.where(inside, 40.0, -1000.0).astype(np.float32)[:, :, None].repeat(12, axis=2)
    if sigma_mm > 0:
        hu = ndimage.gaussian_filter(hu, (sigma_mm / SPACING, sigma_mm / SPACING, 0.0))
    return hu + np.random.default_rng(seed).normal(0.0, 20.0, hu.shape).astype(np.float32)


@pytest.mark.parametrize("sigma_mm", [0.1, 0.2, 0.35])
def test_the_blur_is_read_at_the_skin(sigma_mm: float) -> None:
    read = blur_mm(_body(sigma_mm), [SPACING] * 3)

    assert read == pytest.approx(sigma_mm, abs=0.03)


def test_a_sharp_edge_reads_as_sharp_and_the_reads_rise_with_the_blur() -> None:
    reads = [blur_mm(_body(sigma), [SPACING] * 3) for sigma in (0.0, 0.15, 0.25, 0.4)]
    values = [r for r in reads if r is not None]

    assert len(values) == len(reads) and values[0] < 0.05
    assert values == sorted(values)


def test_a_scan_without_air_round_the_body_says_nothing() -> None:
    solid = np.full((60, 60, 8), 40.0, np.float32)
    empty = np.full((60, 60, 8), -1000.0, np.float32)

    assert blur_mm(solid, [SPACING] * 3) is None
    assert blur_mm(empty, [SPACING] * 3) is None
    assert blur_mm(solid[:, :, 0], [SPACING] * 3) is None  # not 3D


def test_a_blurred_scan_is_named_in_plain_words() -> None:
    assert not is_blurred(None) and not is_blurred(SHARP_MM) and is_blurred(SHARP_MM + 0.01)
    assert blur_finding(None) is None and blur_finding(0.1) is None
    sentence = blur_finding(0.22)
    assert sentence is not None and "0.22 mm" in sentence and "not trimmed" in sentence
    assert "not assessed" not in sentence
    further = blur_finding(NODULES_MAX_MM + 0.05)
    assert further is not None and "metastases are not looked for" in further


def _lung_with_a_thin_lobe() -> tuple[np.ndarray, np.ndarray]:
    """A lung (-700 HU) in soft tissue, a lobe one voxel thin off its x face that blur has lifted
    above half-way to soft tissue, and a pocket of its air the network left out."""
    hu = np.full((24, 16, 16), SOFT_TISSUE_HU, np.float32)
    hu[4:14, 4:12, 4:12] = -700.0
    hu[14:20, 7, 4:12] = -250.0  # the thin lobe: brighter than the half-way mark (-330 HU)
    hu[4:14, 12, 6:10] = -650.0  # air beyond the network's outline
    labels = np.zeros(hu.shape, np.uint8)
    labels[4:14, 4:12, 4:12] = LUNG
    labels[14:20, 7, 4:12] = LUNG
    return hu, labels


def test_untrimmed_the_lung_keeps_its_thin_lobe_and_still_grows_into_its_air() -> None:
    hu, drawn = _lung_with_a_thin_lobe()
    trimmed, grown = drawn.copy(), drawn.copy()

    refine_air_edge(trimmed, hu, LUNG, fraction=0.5, margin_voxels=3)  # trims by default
    changed = refine_air_edge(grown, hu, LUNG, fraction=0.5, margin_voxels=3, trim=False)

    assert not np.any(trimmed[14:20, 7, 4:12] == LUNG)  # trimmed: the lobe peeled away
    assert np.all(grown[14:20, 7, 4:12] == LUNG)  # untrimmed: the lobe kept whole
    assert np.all(grown[4:14, 12, 6:10] == LUNG) and np.all(trimmed[4:14, 12, 6:10] == LUNG)
    assert changed == int((grown != drawn).sum()) == 10 * 4  # only the air pocket joined
    assert np.all(grown[drawn == LUNG] == LUNG)  # nothing shed


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[dict, float]]:
    """A test phantom at 0.42 mm segmented as generated and blurred by a further 0.45 mm."""
    tmp = tmp_path_factory.mktemp("blur")
    phantom = generate_phantom(9003, spacing_mm=0.42, n_annotators=0)
    base = Case(name="p", ct=phantom.ct, labels=phantom.labels, affine=phantom.affine, meta=phantom.meta)
    out: dict[str, tuple[dict, float]] = {}
    for name, scan in (("plain", base), ("blurred", blur(base, 0.45))):
        manifest, labels = segment_case(scan, tmp / name)
        out[name] = (manifest, dice(labels == LUNG, phantom.labels == LUNG))
    return out


def test_the_manifest_records_the_blur_and_names_a_blurred_scan(runs: dict[str, tuple[dict, float]]) -> None:
    plain, _ = runs["plain"]
    blurred, lung = runs["blurred"]

    assert plain["intensity"]["blur_mm"] <= SHARP_MM
    assert not any("blurred" in f for f in plain["intensity"]["findings"])
    # On a grid of 0.42 mm the read is coarse, but 0.45 mm more blur reads as such.
    assert blurred["intensity"]["blur_mm"] > max(NODULES_MAX_MM, plain["intensity"]["blur_mm"] + 0.1)
    assert any("blurred" in f for f in blurred["intensity"]["findings"])
    assert lung > 0.9


def test_a_blurred_scans_lungs_are_not_assessed_for_metastases(runs: dict[str, tuple[dict, float]]) -> None:
    plain, _ = runs["plain"]
    blurred, _ = runs["blurred"]

    assert {"lung_left", "lung_right"} <= set(plain["metastases_assessed_in"])
    assert plain["metastasis_counts"]["lung_left"] is not None
    assert plain["metastases_found_from_mm"] == {"lung_left": 0.5, "lung_right": 0.5}
    assert blurred["metastases_found_from_mm"] == {}  # a size is said only where it searched
    assert not {"lung_left", "lung_right"} & set(blurred["metastases_assessed_in"])
    assert blurred["metastasis_counts"]["lung_left"] is None  # "not assessed", never 0
    assert blurred["metastasis_counts"]["lung_right"] is None
    assert any("not assessed" in f for f in blurred["intensity"]["findings"])
