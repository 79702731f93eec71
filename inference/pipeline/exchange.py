"""Label maps for desktop tools: 3D Slicer's ``.seg.nrrd`` and ITK-SNAP's label description file.

A lab corrects a segmentation in the tool it knows and brings it back. Both directions keep the
canonical names, colours and values of ``inference.structures`` and the scan's exact grid:

- :func:`seg_nrrd_bytes`: a label map (canonical ids) as a Slicer segmentation: one layer, one
  ``SegmentN_*`` block per structure present (name, colour, label value, extent), space
  ``right-anterior-superior`` with the NIfTI affine as directions and origin.
- :func:`read_seg_nrrd`: a ``.seg.nrrd`` (one layer or several, as Slicer writes them) back as a
  canonical-id label map and its RAS affine; segments are matched by name (canonical name or
  display name, any case), so a segment renamed to something labseg does not know is refused
  with its name.
- :func:`itksnap_label_file`: the canonical table as ITK-SNAP's label description text, to open a
  NIfTI label map with its names and colours.

Array contract: label maps are 3D integer arrays in the file's own voxel order; ``affine`` is the
4x4 voxel-to-world matrix in RAS millimetres (NIfTI's convention).
"""

from __future__ import annotations

import io
import re
from collections.abc import Mapping
from typing import Any

import nrrd
import numpy as np

from inference.structures import BY_ID, STRUCTURES

SPACE = "right-anterior-superior"
#: LPS to RAS: Slicer may save in left-posterior-superior; x and y change sign.
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


class LabelMapFormatError(ValueError):
    """A label map file that cannot be read as asked; the message says why in plain words."""


def _extent(mask: np.ndarray) -> str:
    idx = np.argwhere(mask)
    low, high = idx.min(axis=0), idx.max(axis=0)
    return " ".join(f"{int(a)} {int(b)}" for a, b in zip(low, high, strict=True))


def seg_nrrd_bytes(labels: np.ndarray, affine: np.ndarray) -> bytes:
    """``labels`` (canonical ids) as the bytes of a Slicer ``.seg.nrrd`` file."""
    data = np.asarray(labels).astype(np.uint8)
    header: dict[str, Any] = {
        "type": "unsigned char",
        "dimension": 3,
        "space": SPACE,
        "space directions": np.asarray(affine, dtype=float)[:3, :3].T,
        "space origin": np.asarray(affine, dtype=float)[:3, 3],
        "kinds": ["domain", "domain", "domain"],
        "encoding": "gzip",
        "Segmentation_MasterRepresentation": "Binary labelmap",
        "Segmentation_ContainedRepresentationNames": "Binary labelmap|",
        "Segmentation_ReferenceImageExtentOffset": "0 0 0",
    }
    present = [int(v) for v in np.unique(data) if v != 0 and int(v) in BY_ID]
    for n, value in enumerate(present):
        structure = BY_ID[value]
        key = f"Segment{n}_"
        header[key + "ID"] = structure.name
        header[key + "Name"] = structure.name
        header[key + "Color"] = " ".join(f"{c / 255:.6g}" for c in structure.colour)
        header[key + "LabelValue"] = str(value)
        header[key + "Layer"] = "0"
        header[key + "Extent"] = _extent(data == value)
        header[key + "Tags"] = f"labseg.display_name:{structure.display_name}|"
    buffer = io.BytesIO()
    nrrd.write(buffer, data, header, index_order="F")
    return buffer.getvalue()


def _canonical_id(name: str) -> int:
    wanted = re.sub(r"[\s_-]+", " ", name).strip().lower()
    for structure in STRUCTURES:
        if wanted in (structure.name.replace("_", " ").lower(), structure.display_name.lower()):
            return structure.id
    known = ", ".join(s.name for s in STRUCTURES if s.id)
    raise LabelMapFormatError(
        f"the segment {name!r} is not a structure labseg knows: rename it to one of {known}"
    )


def _segments(header: Mapping[str, Any]) -> list[tuple[int, int, int]]:
    """(layer, label value, canonical id) of every segment in the header."""
    found = []
    n = 0
    while f"Segment{n}_Name" in header:
        key = f"Segment{n}_"
        found.append(
            (
                int(header.get(key + "Layer", 0)),
                int(header.get(key + "LabelValue", n + 1)),
                _canonical_id(str(header[key + "Name"])),
            )
        )
        n += 1
    return found


def read_seg_nrrd(content: bytes) -> tuple[np.ndarray, np.ndarray]:
    """A ``.seg.nrrd`` file's bytes as (canonical-id uint8 label map, RAS affine)."""
    try:
        stream = io.BytesIO(content)  # the data follows the header in the same stream
        header = nrrd.read_header(stream)
        data = nrrd.read_data(header, stream, index_order="F")
        header = dict(header)
    except Exception as error:  # pynrrd raises several types for a damaged file
        raise LabelMapFormatError(f"the file is not a readable NRRD segmentation: {error}") from None
    segments = _segments(header)
    if not segments:
        raise LabelMapFormatError("the file holds no segments (no Segment0_Name in its header)")
    data = np.asarray(data)
    if data.ndim == 4:  # Slicer's layers: one 3D layer per overlapping group, along the first axis
        layers = data
    elif data.ndim == 3:
        layers = data[np.newaxis]
    else:
        raise LabelMapFormatError(
            f"a segmentation is 3D (or 4D with layers), this one has {data.ndim} dimensions"
        )
    labels = np.zeros(layers.shape[1:], dtype=np.uint8)
    for layer, value, canonical in segments:
        if not 0 <= layer < layers.shape[0]:
            raise LabelMapFormatError(f"a segment names layer {layer}, but the file has {layers.shape[0]}")
        labels[layers[layer] == value] = canonical
    directions = np.asarray(header["space directions"], dtype=float)
    directions = directions[-3:] if directions.shape[0] == 4 else directions
    origin = np.asarray(header.get("space origin", np.zeros(3)), dtype=float)
    space = str(header.get("space", SPACE)).lower()
    if space in ("left-posterior-superior", "lps"):
        directions, origin = directions @ _LPS_TO_RAS, _LPS_TO_RAS @ origin
    elif space not in (SPACE, "ras"):
        raise LabelMapFormatError(f"the segmentation's space {space!r} is neither RAS nor LPS")
    affine = np.eye(4)
    affine[:3, :3] = directions.T
    affine[:3, 3] = origin
    return labels, affine


def itksnap_label_file() -> str:
    """The canonical table as an ITK-SNAP label description file (IDX R G B A VIS MSH LABEL)."""
    lines = [
        "################################################",
        "# ITK-SnAP Label Description File (labseg's canonical structures)",
        "# Fields: IDX -R- -G- -B- -A-- VIS MSH LABEL",
        "################################################",
        '    0     0    0    0        0  0  0    "Clear Label"',
    ]
    for s in STRUCTURES:
        if s.id == 0:
            continue
        r, g, b = s.colour
        lines.append(f'{s.id:5d} {r:5d} {g:4d} {b:4d}        1  1  1    "{s.display_name}"')
    return "\n".join(lines) + "\n"
