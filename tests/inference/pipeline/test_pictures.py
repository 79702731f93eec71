"""Pictures are valid PNGs of the documented size, with organ colours where organs are."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from inference.pipeline.pictures import coronal_slice_png, nifti_projection_png, picture_size, projection_png
from inference.structures import BY_NAME

LIVER = BY_NAME["liver"]


def volume_and_labels() -> tuple[np.ndarray, np.ndarray]:
    volume = np.zeros((40, 30, 60), dtype=np.int16)
    volume[10:30, 5:25, 10:50] = 400
    labels = np.zeros(volume.shape, dtype=np.uint8)
    labels[12:20, 8:20, 30:45] = LIVER.id
    return volume, labels


def open_png(data: bytes) -> Image.Image:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def test_projection_has_square_pixels_and_superior_at_the_top() -> None:
    volume, _ = volume_and_labels()

    image = open_png(projection_png(volume, (0.2, 0.2, 0.4)))

    # x: 40 voxels of 0.2 mm = 40 px; z: 60 voxels of 0.4 mm = 120 px at 0.2 mm per pixel.
    assert image.size == (40, 120) == picture_size(volume.shape, (0.2, 0.2, 0.4), 1024)
    assert image.mode == "RGB"


def test_organ_fills_use_the_canonical_colour() -> None:
    volume, labels = volume_and_labels()

    image = np.asarray(open_png(projection_png(volume, (0.2, 0.2, 0.2), labels)))

    # Liver spans x 12..19 and z 30..44: rows count from Superior (z = 59) down.
    pixel = image[59 - 37, 15].astype(int)
    plain = np.asarray(open_png(projection_png(volume, (0.2, 0.2, 0.2))))[59 - 37, 15].astype(int)
    towards_liver = (
        np.abs(pixel - np.array(LIVER.colour)).sum() < np.abs(plain - np.array(LIVER.colour)).sum()
    )
    assert towards_liver
    assert np.array_equal(image[0, 0], [0, 0, 0])


def test_coronal_slice_fills_labels_and_outlines_annotations() -> None:
    volume, labels = volume_and_labels()
    annotation = np.zeros_like(labels)
    annotation[11:21, 8:20, 29:46] = LIVER.id

    image = open_png(coronal_slice_png(volume, (0.2, 0.2, 0.2), labels, annotation))
    pixels = np.asarray(image)

    assert image.size == (40, 60)
    # The outline is drawn opaque in the liver colour at the annotation's border (x = 11).
    assert np.array_equal(pixels[59 - 37, 11], LIVER.colour)


def test_large_pictures_shrink_to_the_maximum_size() -> None:
    volume = np.zeros((300, 4, 200), dtype=np.uint8)

    image = open_png(projection_png(volume, (0.1, 0.1, 0.1), max_size_px=150))

    assert image.size == (150, 100)


def test_mismatched_labels_are_refused() -> None:
    volume, labels = volume_and_labels()

    with pytest.raises(ValueError, match="labels shape"):
        projection_png(volume, (0.2, 0.2, 0.2), labels[:-1])


def test_a_real_scan_makes_a_thumbnail(realdata: Path) -> None:
    image = open_png(nifti_projection_png(realdata / "C57BL6_J_.nii.gz", max_size_px=128))

    assert max(image.size) == 128
    assert np.asarray(image).std() > 5
