"""Slicer .seg.nrrd and ITK-SNAP label files: canonical names, colours, values and geometry survive
the round trip, Slicer's LPS space and layered files are read, unknown segments are refused."""

from __future__ import annotations

import io
from typing import Any

import nrrd
import numpy as np
import pytest

from inference.pipeline.exchange import LabelMapFormatError, itksnap_label_file, read_seg_nrrd, seg_nrrd_bytes
from inference.structures import BY_NAME

AFFINE = np.array([[-0.2, 0, 0, 10.0], [0, 0.2, 0, -5.0], [0, 0, 0.3, 2.0], [0, 0, 0, 1]])
LIVER, TUMOR = BY_NAME["liver"].id, BY_NAME["tumor"].id


def labels() -> np.ndarray:
    data = np.zeros((20, 16, 12), dtype=np.uint8)
    data[2:10, 3:9, 2:8] = LIVER
    data[12:15, 10:14, 5:9] = TUMOR
    return data


def test_a_label_map_goes_to_slicer_and_back_unchanged() -> None:
    content = seg_nrrd_bytes(labels(), AFFINE)
    header = nrrd.read_header(io.BytesIO(content))
    read, affine = read_seg_nrrd(content)

    assert np.array_equal(read, labels())
    assert np.allclose(affine, AFFINE)
    names = {header[f"Segment{n}_Name"]: header[f"Segment{n}_LabelValue"] for n in range(2)}
    assert names == {"liver": str(LIVER), "tumor": str(TUMOR)}
    colour = [float(c) for c in header["Segment0_Color"].split()]
    assert colour == pytest.approx([c / 255 for c in BY_NAME["liver"].colour], abs=1e-5)
    assert header["space"] == "right-anterior-superior"
    assert header["Segment0_Extent"] == "2 9 3 8 2 7"


def test_slicer_files_in_lps_with_layers_and_display_names_are_read() -> None:
    # As Slicer saves overlapping segments: two layers along the first axis, space LPS, its own
    # label values, names as a person typed them.
    layers = np.zeros((2, 20, 16, 12), dtype=np.uint8)
    layers[0][labels() == LIVER] = 1
    layers[1][labels() == TUMOR] = 1
    lps = np.diag([-1.0, -1.0, 1.0]) @ AFFINE[:3, :3]
    header = {
        "space": "left-posterior-superior",
        "kinds": ["list", "domain", "domain", "domain"],
        "space directions": np.vstack([np.full(3, np.nan), lps.T]),
        "space origin": np.diag([-1.0, -1.0, 1.0]) @ AFFINE[:3, 3],
        "Segment0_Name": "Liver",
        "Segment0_LabelValue": "1",
        "Segment0_Layer": "0",
        "Segment1_Name": "tumor",
        "Segment1_LabelValue": "1",
        "Segment1_Layer": "1",
    }
    buffer = io.BytesIO()
    nrrd.write(buffer, layers, header, index_order="F")

    read, affine = read_seg_nrrd(buffer.getvalue())

    assert np.array_equal(read, labels())
    assert np.allclose(affine, AFFINE)


def test_an_unknown_segment_and_a_broken_file_are_refused_in_plain_words() -> None:
    header: dict[str, Any] = {
        "Segment0_Name": "Segment_1",
        "Segment0_LabelValue": "1",
        "space": "right-anterior-superior",
    }
    header["space directions"] = np.eye(3)
    buffer = io.BytesIO()
    nrrd.write(buffer, labels(), header, index_order="F")

    with pytest.raises(LabelMapFormatError, match="'Segment_1' is not a structure labseg knows: rename it"):
        read_seg_nrrd(buffer.getvalue())
    with pytest.raises(LabelMapFormatError, match="not a readable NRRD"):
        read_seg_nrrd(b"NIFTI? no")


def test_the_itksnap_label_file_lists_every_structure_with_its_colour() -> None:
    text = itksnap_label_file()
    liver = next(line for line in text.splitlines() if line.strip().startswith(f"{LIVER} "))

    assert text.startswith("################################################")
    assert liver.split()[1:4] == [str(c) for c in BY_NAME["liver"].colour]
    assert liver.endswith('"Liver"')
