"""The QC picture per scan: a mean-intensity projection beside the mid-coronal slice, with the
newest predictions' labels drawn over both (``inference.pipeline.pictures`` draws
each panel; this module picks the data, joins the panels and caches the PNG in storage).

Drawn from the viewer's previews (at most ``layers.preview_max_voxels()`` voxels), so a 2 GB scan
costs the same as a small one. Volumes handed to the drawing functions are in closest-canonical
RAS axis order with ``spacing_mm`` per axis, as the pipeline's contract says.
"""

from __future__ import annotations

import gzip
import io

import nibabel as nib
import numpy as np
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from PIL import Image

from frontend import layers, results
from inference.pipeline import pictures as drawing
from scans.models import Scan

THUMB_HEIGHT_PX = 144
_GAP_PX = 8


def _canonical(name: str) -> tuple[np.ndarray, tuple[float, float, float]]:
    """A stored preview (small by construction) in closest-canonical RAS order, with its spacing."""
    with default_storage.open(name, "rb") as handle:
        data = handle.read()
    image = nib.Nifti1Image.from_bytes(gzip.decompress(data) if name.endswith(".gz") else data)
    image = nib.as_closest_canonical(image)
    spacing = tuple(float(z) for z in image.header.get_zooms()[:3])
    return np.asarray(image.dataobj), spacing  # type: ignore[return-value]


def _labels(scan: Scan) -> tuple[np.ndarray | None, list[int]]:
    """The newest predictions' label previews merged (later tasks drawn over earlier ones)."""
    merged: np.ndarray | None = None
    ids: list[int] = []
    for prediction in results.latest_predictions(scan):
        layer = layers.resolve_layer(scan, f"pred-{prediction.pk}")
        data, _ = _canonical(layers.preview_file(scan, layer))
        data = data.astype(np.uint8)
        merged = data if merged is None else np.where(data > 0, data, merged)
        ids.append(prediction.pk)
    return merged, ids


def _join(panels: list[bytes]) -> bytes:
    images = [Image.open(io.BytesIO(p)).convert("RGB") for p in panels]
    height = max(i.height for i in images)
    width = sum(i.width for i in images) + _GAP_PX * (len(images) - 1)
    canvas = Image.new("RGB", (width, height), (17, 17, 17))
    x = 0
    for image in images:
        canvas.paste(image, (x, (height - image.height) // 2))
        x += image.width + _GAP_PX
    out = io.BytesIO()
    canvas.save(out, format="PNG", optimize=True)
    return out.getvalue()


def _thumbnail(png: bytes) -> bytes:
    image = Image.open(io.BytesIO(png)).convert("RGB")
    width = max(1, round(image.width * THUMB_HEIGHT_PX / image.height))
    image = image.resize((width, THUMB_HEIGHT_PX), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=True)
    return out.getvalue()


def _outlines(scan: Scan) -> tuple[np.ndarray | None, str]:
    """The consensus of the scan's annotations (or its one annotation), drawn as outlines."""
    keys = [row["key"] for row in layers.viewer_layers(scan) if row["kind"] in ("annotation", "consensus")]
    if not keys:
        return None, ""
    layer = layers.resolve_layer(scan, "consensus" if "consensus" in keys else keys[0])
    data, _ = _canonical(layers.preview_file(scan, layer))
    # The layer's stem names the approved annotations a consensus is made of.
    return data.astype(np.uint8), "_" + "-".join(k.removeprefix("ann-") for k in keys) + "_" + layer.stem


def qc_picture(scan: Scan, *, thumbnail: bool = False) -> str:
    """Storage name of the scan's QC PNG (made once per set of predictions and annotations)."""
    labels, ids = _labels(scan)
    outlines, outline_tag = _outlines(scan) if not thumbnail else (None, "")
    tag = ("-".join(map(str, ids)) or "none") + outline_tag
    name = f"previews/scan_{scan.pk}/qc_{tag}_{'thumb' if thumbnail else 'full'}.png"
    if default_storage.exists(name):
        return name
    volume, spacing_mm = _canonical(layers.preview_file(scan, layers.resolve_layer(scan, "ct")))
    volume = volume.astype(np.float32)
    projection = drawing.projection_png(volume, spacing_mm, labels=labels)
    if thumbnail:
        png = _thumbnail(projection)
    else:
        coronal = drawing.coronal_slice_png(volume, spacing_mm, labels=labels, outlines=outlines)
        png = _join([projection, coronal])
    if not default_storage.exists(name):
        default_storage.save(name, ContentFile(png))
    return name
