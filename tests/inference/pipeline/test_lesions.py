"""Lesions are allocated to the organ that holds them: constructed cases with known answers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from inference.pipeline.lesions import (
    SUBCUTANEOUS,
    LesionInputError,
    allocate,
    max_diameter_mm,
    metastasis_assessed_organs,
    metastasis_counts,
    read_points_csv,
)
from inference.pipeline.volumes import labels_present
from inference.structures import BY_NAME

LIVER = BY_NAME["liver"].id
KIDNEY = BY_NAME["kidney_left"].id
TUMOR = BY_NAME["tumor"].id
METASTASIS = BY_NAME["metastasis"].id
# 0.2 mm voxels, LPS-like flips and an offset, so world and index coordinates differ.
AFFINE = np.array([[-0.2, 0, 0, 10.0], [0, -0.2, 0, 5.0], [0, 0, 0.2, -3.0], [0, 0, 0, 1]])


def organs() -> np.ndarray:
    """Liver: x 5..24; left kidney: x 30..39 (a 4-voxel = 0.8 mm gap between them)."""
    labels = np.zeros((50, 30, 30), dtype=np.uint8)
    labels[5:25, 5:25, 5:25] = LIVER
    labels[29:40, 5:25, 5:25] = KIDNEY
    return labels


def world(index: tuple[float, float, float]) -> list[float]:
    return list((AFFINE @ [*index, 1])[:3])


def test_a_metastasis_inside_an_organ_is_allocated_at_its_centroid() -> None:
    mask = np.zeros((50, 30, 30), dtype=np.uint8)
    mask[10:13, 10:13, 10:13] = 1

    [row] = allocate(organs(), AFFINE, mask)

    assert (row.organ_id, row.organ_name, row.allocation) == (LIVER, "liver", "centroid")
    assert row.structure_id == METASTASIS
    assert row.voxels == 27
    assert row.volume_mm3 == pytest.approx(27 * 0.008)
    assert np.allclose(row.centroid_mm, world((11, 11, 11)))


def test_a_lesion_on_the_border_goes_to_the_organ_it_touches_within_1_mm() -> None:
    mask = np.zeros((50, 30, 30), dtype=np.uint8)
    # Centroid just outside the liver (x = 26..28, liver ends at 24): 2-4 voxels = 0.4-0.8 mm away.
    mask[26:29, 10:13, 10:13] = 1

    [row] = allocate(organs(), AFFINE, mask)

    # Kidney starts at x = 29, right next to the lesion; the liver is 2 voxels away: both within
    # 1 mm, but the kidney overlaps the grown lesion more.
    assert (row.organ_name, row.allocation) == ("kidney_left", "overlap")


def test_a_lesion_outside_every_organ_is_subcutaneous() -> None:
    mask = np.zeros((50, 30, 30), dtype=np.uint8)
    mask[44:48, 26:29, 26:29] = TUMOR

    [row] = allocate(organs(), AFFINE, mask)

    assert row.organ_id is None
    assert (row.organ_name, row.allocation, row.structure_id) == (SUBCUTANEOUS, "none", TUMOR)


def test_lesion_labels_keep_their_structure_and_are_counted_per_organ() -> None:
    labels = np.zeros((50, 30, 30), dtype=np.uint8)
    labels[10:12, 10:12, 10:12] = METASTASIS
    labels[18:20, 18:20, 18:20] = METASTASIS
    labels[33:35, 10:12, 10:12] = METASTASIS
    labels[44:49, 26:29, 26:29] = TUMOR

    rows = allocate(organs(), AFFINE, labels)

    assert [r.index for r in rows] == [1, 2, 3, 4]
    counts = metastasis_counts(rows)
    assert counts["liver"] == 2 and counts["kidney_left"] == 1 and counts[SUBCUTANEOUS] == 0
    assert sum(count or 0 for count in counts.values()) == 3  # every organ assessed: no None
    assert [r.structure_id for r in rows].count(TUMOR) == 1


def test_a_combined_label_map_allocates_by_overlap_when_the_lesion_replaced_the_organ() -> None:
    labels = organs()
    labels[10:13, 10:13, 10:13] = METASTASIS

    [row] = allocate(labels, AFFINE, labels == METASTASIS)

    assert (row.organ_name, row.allocation) == ("liver", "overlap")


def test_coordinates_from_a_csv_are_allocated_the_same_way(tmp_path: Path) -> None:
    inside, near, far = world((11, 11, 11)), world((26.5, 11, 11)), world((46, 27, 27))
    path = tmp_path / "points.csv"
    path.write_text(
        "x_mm,y_mm,z_mm,diameter_mm\n"
        f"{inside[0]},{inside[1]},{inside[2]},0.5\n"
        f"{near[0]},{near[1]},{near[2]},\n"
        f"{far[0]},{far[1]},{far[2]},1.0\n"
    )

    points, structure = read_points_csv(path)
    rows = allocate(organs(), AFFINE, points)

    assert structure is None
    assert [(r.organ_name, r.allocation) for r in rows] == [
        ("liver", "coordinates"),
        ("kidney_left", "overlap"),
        (SUBCUTANEOUS, "none"),
    ]
    assert rows[0].max_diameter_mm == 0.5
    assert rows[0].volume_mm3 == pytest.approx(np.pi / 6 * 0.125)
    assert metastasis_counts(rows)["liver"] == 1


def test_a_csv_without_coordinates_is_refused_in_plain_words(tmp_path: Path) -> None:
    path = tmp_path / "points.csv"
    path.write_text("x,y,z\n1,2,3\n")

    with pytest.raises(LesionInputError, match="needs columns x_mm, y_mm, z_mm"):
        read_points_csv(path)


def test_a_mask_on_another_grid_is_refused() -> None:
    with pytest.raises(LesionInputError, match="same grid"):
        allocate(organs(), AFFINE, np.zeros((10, 10, 10), dtype=np.uint8))


def test_the_largest_diameter_of_a_ball_is_its_diameter() -> None:
    x, y, z = np.ogrid[:41, :41, :41]
    ball = (x - 20) ** 2 + (y - 20) ** 2 + (z - 20) ** 2 <= 15**2

    diameter = max_diameter_mm(ball, np.zeros(3), np.diag([0.1, 0.1, 0.1, 1.0]))

    assert diameter == pytest.approx(3.0, abs=0.1)


def test_organs_not_assessed_are_none_not_zero() -> None:
    labels = np.zeros((50, 30, 30), dtype=np.uint8)
    labels[10:12, 10:12, 10:12] = METASTASIS  # in the liver
    labels[33:35, 10:12, 10:12] = METASTASIS  # in the left kidney
    rows = allocate(organs(), AFFINE, labels)
    lungs_only_model = ("lung_left", "lung_right")

    assessed = metastasis_assessed_organs(labels_present(organs()), {"liver", *lungs_only_model})
    counts = metastasis_counts(rows, assessed)

    # The liver was searched and shown: its one metastasis counts. The kidney's metastasis was not
    # looked for, and the lungs, though searched, are not in this scan: neither is a 0.
    assert assessed == ["liver"]
    assert counts["liver"] == 1
    assert counts["kidney_left"] is None and counts["lung_left"] is None and counts["brain"] is None
    assert counts[SUBCUTANEOUS] == 0
    assert metastasis_counts(rows, [])[SUBCUTANEOUS] is None
    assert metastasis_assessed_organs(None, {"liver"}) == []


def test_a_curved_lesion_is_anchored_on_its_own_voxel_nearest_the_centroid() -> None:
    # A "C" around an empty middle: its centroid lies in the hole, outside the lesion.
    labels = np.zeros((50, 30, 30), dtype=np.uint8)
    labels[10:20, 10:12, 10:20] = TUMOR
    labels[10:12, 10:20, 10:20] = TUMOR
    labels[18:20, 10:20, 10:20] = TUMOR
    [row] = allocate(np.zeros_like(labels), AFFINE, labels)

    inverse = np.linalg.inv(AFFINE)
    centroid = np.rint(inverse[:3, :3] @ np.array(row.centroid_mm) + inverse[:3, 3]).astype(int)
    anchor = np.rint(inverse[:3, :3] @ np.array(row.anchor_mm) + inverse[:3, 3]).astype(int)

    assert labels[tuple(centroid)] == 0  # "Go to" the centroid would land in the hole
    assert labels[tuple(anchor)] == TUMOR
    assert np.linalg.norm(np.array(row.anchor_mm) - np.array(row.centroid_mm)) < 2.0
