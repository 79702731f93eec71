"""Scan file formats: what labseg reads (single-file NIfTI), and how to convert what it does not.

Light on purpose (no numpy, no pipeline): the upload checks (``scans.validation``) and the
pipeline's reader (``inference.pipeline.io``) both refuse other formats with the same hint.
"""

from __future__ import annotations

#: What a scanner or a tool exports instead of NIfTI, and how to turn it into one: said with the
#: refusal, so that a researcher holding such a file knows the next step.
CONVERT_HINTS: tuple[tuple[tuple[str, ...], str], ...] = (
    (
        (".dcm", ".dicom", ".ima"),
        "a DICOM series converts to one .nii.gz with dcm2niix (`dcm2niix -z y FOLDER`) or 3D Slicer "
        "(load the series, then Save as .nii.gz)",
    ),
    (
        (".zip", ".tar", ".tgz", ".7z", ".rar"),
        "unpack the archive and give labseg the .nii.gz scans in it one by one (a DICOM series in it "
        "converts to one .nii.gz with dcm2niix: `dcm2niix -z y FOLDER`)",
    ),
    (
        (".nrrd", ".nhdr", ".mha", ".mhd", ".hdr", ".img"),
        "3D Slicer or ITK-SNAP opens this format and saves it as .nii.gz (File > Save, NIfTI)",
    ),
    (
        (".tif", ".tiff", ".bmp", ".png", ".jpg"),
        "a stack of slice images holds no voxel size: export the reconstruction as NIfTI or DICOM "
        "from the scanner's software, or build a .nii.gz in Fiji (File > Save As > NIfTI-1) with "
        "the voxel size set",
    ),
)


def convert_hint(filename: str) -> str | None:
    """How to turn ``filename``, by its suffix, into the single-file NIfTI labseg reads
    (``CONVERT_HINTS``); None for a suffix of no known format."""
    lower = filename.lower().removesuffix(".gz")
    return next((hint for suffixes, hint in CONVERT_HINTS if lower.endswith(suffixes)), None)
