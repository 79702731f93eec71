"""The viewer's layers (CT, prediction labels, uncertainty, annotations, consensus) as NIfTI files:
previews cached in storage, full resolution of a small scan, and full-resolution regions.

Layer keys: ``ct``; ``pred-<prediction id>`` (labels), ``unc-<prediction id>`` (uncertainty,
uint8 0-255); ``ann-<annotation id>`` (relabelled to canonical ids); ``consensus`` (label chosen by
more than half of the scan's approved annotations: ``review.services.consensus_annotations``, the
one meaning of consensus, shared with the review app's majority and STAPLE maps). Label layers are
uint8 .nii.gz with the NIfTI label intent. Previews live under ``previews/scan_<id>/`` in storage,
one per level (``first``: a small grid the viewer draws at once; ``preview``: the grid it refines to
next); they are made by a worker when a scan, prediction or annotation is stored
(``frontend/apps.py``, ``make_previews``), else on first request, and never change because
predictions and uploaded files are immutable, and a consensus is stored under the ids of the
annotations it was made of.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
from django.conf import settings
from django.core.files import File
from django.core.files.storage import default_storage
from django.db.models.fields.files import FieldFile
from django.urls import reverse

from frontend import previews, results
from inference.structures import BY_NAME, LESION_NAMES, as_json
from labseg.refusals import Refused
from labseg.storage import local_path
from review.files import annotation_values
from review.services import consensus_annotations
from scans.levels import LEVELS, first_max_voxels, level_factor, preview_max_voxels
from scans.models import Annotation, Scan
from segmentation.corrections import corrections, source_label
from segmentation.models import Prediction

LESION_IDS = tuple(BY_NAME[name].id for name in LESION_NAMES)

#: Window presets in HU (low, high): soft tissue W400/L40, bone W1800/L400, lung W1500/L-600;
#: "auto" is the 2nd-98th percentile range NiiVue computes, for scans not in HU.
WINDOWS = {
    "soft": {"label": "Soft tissue", "low": -160.0, "high": 240.0},
    "bone": {"label": "Bone", "low": -500.0, "high": 1300.0},
    "lung": {"label": "Lung", "low": -1350.0, "high": 150.0},
    "auto": {"label": "Auto", "low": None, "high": None},
}


def default_window(scan: Scan) -> str:
    """Soft tissue for CT in Hounsfield units (air near -1000 HU), else the data's own range."""
    return "soft" if scan.intensity_min <= -500 else "auto"


class LayerNotFoundError(Refused):
    """The layer does not exist for this scan (a plain message for the researcher)."""

    status = 404


class RegionRefusedError(Refused):
    """The requested full-resolution view is too large; the message says what to do instead."""

    status = 413


def auto_full(scan: Scan) -> bool:
    """Whether the viewer refines to full resolution on its own, after the previews."""
    voxels = int(np.prod([int(s) for s in scan.shape[:3]]))
    return full_allowed(scan) and voxels <= int(settings.LABSEG_VIEWER_AUTO_FULL_VOXELS)


def full_allowed(scan: Scan) -> bool:
    """Whether the whole scan may be sent at full resolution (else only regions)."""
    return int(scan.size_bytes) <= int(settings.LABSEG_PREVIEW_MAX_BYTES)


def scan_factor(scan: Scan) -> int:
    return previews.preview_factor(scan.shape, max_voxels=preview_max_voxels())


@dataclass(frozen=True)
class Layer:
    key: str
    kind: str  # ct | labels | uncertainty | annotation | consensus
    title: str
    files: tuple[FieldFile, ...]
    is_label: bool
    relabel: tuple[dict[int, int], ...] = ()
    stored_as: str = ""  # the cached files' name stem; the key unless the layer's content can change

    @property
    def stem(self) -> str:
        return self.stored_as or self.key


#: What the viewer's consensus layer is, for its label's tooltip.
CONSENSUS_TITLE = "Consensus (majority of approved)"
CONSENSUS_DESCRIPTION = (
    "Each voxel takes the label drawn by more than half of this scan's approved annotations "
    "(the review app's majority; its STAPLE map is on the review page). Submitted and rejected "
    "annotations are not counted."
)


def _annotation_mapping(annotation: Annotation) -> dict[int, int]:
    """File value -> canonical id, from the annotation's stored table (``review.files``)."""
    return {value: structure_id for structure_id, value in annotation_values(annotation.structures).items()}


def _annotations(scan: Scan) -> list[Annotation]:
    """The annotation layers: every annotation a reviewer has not rejected."""
    return list(scan.annotations.exclude(status=Annotation.Status.REJECTED).order_by("annotator_name", "pk"))


def _consensus_key(annotations: list[Annotation]) -> str:
    """Where a consensus is cached: it changes whenever the set of approved annotations does."""
    return "consensus_" + "-".join(str(a.pk) for a in annotations)


def resolve_layer(scan: Scan, key: str) -> Layer:
    """The layer ``key`` of ``scan``; raises LayerNotFoundError with a plain message."""
    if key == "ct":
        return Layer("ct", "ct", "CT", (scan.file,), is_label=False)
    kind, _, ident = key.partition("-")
    if kind in ("pred", "unc") and ident.isdigit():
        prediction = (
            Prediction.objects.filter(scan=scan, pk=int(ident)).select_related("model_version").first()
        )
        if prediction is None:
            raise LayerNotFoundError(f"scan {scan.pk} has no prediction {ident}")
        if kind == "pred":
            title = f"{prediction.model_version.get_task_display()} ({prediction.model_version.label})"
            # A model's layer shows only that model's structures: a lesion run's file also holds the
            # organ map its lesions were allocated with, which belongs to the organ layer.
            own = {int(s): int(s) for s in prediction.model_version.structures if int(s) != 0}
            return Layer(
                key,
                "labels",
                title,
                (prediction.labels,),
                is_label=True,
                relabel=(own,),
                stored_as=f"{key}.own",
            )
        return Layer(key, "uncertainty", "Uncertainty", (prediction.uncertainty,), is_label=False)
    if kind == "ann" and ident.isdigit():
        annotation = scan.annotations.filter(pk=int(ident)).first()
        if annotation is None:
            raise LayerNotFoundError(f"scan {scan.pk} has no annotation {ident}")
        mapping = _annotation_mapping(annotation)
        title = f"Annotator {annotation.annotator_name}"
        return Layer(key, "annotation", title, (annotation.file,), is_label=True, relabel=(mapping,))
    if key == "consensus":
        annotations = consensus_annotations(scan)
        if len(annotations) < 2:
            raise LayerNotFoundError("a consensus needs at least two approved annotations of this scan")
        return Layer(
            key,
            "consensus",
            CONSENSUS_TITLE,
            tuple(a.file for a in annotations),
            is_label=True,
            relabel=tuple(_annotation_mapping(a) for a in annotations),
            stored_as=_consensus_key(annotations),
        )
    raise LayerNotFoundError(f"unknown layer {key!r}")


def _relabeller(mapping: dict[int, int]) -> Callable[[np.ndarray], np.ndarray]:
    return lambda data: previews.remap_labels(data, mapping)


def _store(name: str, make: Callable[[Path], None]) -> str:
    """Make the file ``name`` in storage with ``make(local_path)`` unless it is there already."""
    if default_storage.exists(name):
        return name
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "layer.nii.gz"
        make(path)
        if default_storage.exists(name):  # another request made it meanwhile
            return name
        with path.open("rb") as handle:
            saved = default_storage.save(name, File(handle))
    if saved != name:  # lost a race: keep the first one
        default_storage.delete(saved)
    return name


def _consensus(layer: Layer, make_one: Callable[[Path, Path, Callable[[np.ndarray], np.ndarray]], None]):  # type: ignore[no-untyped-def]
    """Build a majority map from the annotations, each written by ``make_one`` to a temp file."""
    import nibabel as nib

    def make(target: Path) -> None:
        maps = []
        affines = []
        with tempfile.TemporaryDirectory() as tmp:
            for i, (field, mapping) in enumerate(zip(layer.files, layer.relabel, strict=True)):
                part = Path(tmp) / f"{i}.nii.gz"
                with local_path(field.name) as source:
                    make_one(source, part, _relabeller(mapping))
                image = cast(nib.Nifti1Image, nib.load(str(part)))  # written by make_one as NIfTI-1
                maps.append(np.asarray(image.dataobj).astype(np.uint8))
                affines.append(image.affine)
        # majority_labels refuses an empty list first, so there is a last affine.
        previews.write_nifti_gz(target, previews.majority_labels(maps), affines[-1])

    return make


def _store_layer(name: str, layer: Layer, make_one: Callable[..., None]) -> str:
    """Store ``name`` made by ``make_one(source, target, relabel)`` from the layer's file (or, for
    the consensus, from its annotations' files), unless it is stored already."""
    if layer.kind == "consensus":
        return _store(name, _consensus(layer, make_one))

    def make(target: Path) -> None:
        with local_path(layer.files[0].name) as source:
            make_one(source, target, _relabeller(layer.relabel[0]) if layer.relabel else None)

    return _store(name, make)


def preview_name(scan: Scan, layer: Layer, factor: int) -> str:
    return f"previews/scan_{scan.pk}/{layer.stem}.f{factor}.nii.gz"


def preview_file(scan: Scan, layer: Layer, level: str = "preview") -> str:
    """Storage name of the layer's preview at ``level`` (``LEVELS``; made now unless stored)."""
    factor = level_factor(scan, level)
    budget = first_max_voxels() if level == "first" else preview_max_voxels()
    name = preview_name(scan, layer, factor)

    def make_one(source: Path, target: Path, relabel: Callable[[np.ndarray], np.ndarray] | None) -> None:
        if layer.is_label:
            previews.make_label_preview(
                source,
                target,
                factor=factor,
                keep_ids=LESION_IDS,
                relabel=relabel,
                label_intent=layer.kind == "annotation",
            )
        else:
            previews.make_intensity_preview(source, target, max_voxels=budget)

    return _store_layer(name, layer, make_one)


def make_previews(scan: Scan, keys: list[str]) -> list[str]:
    """Store every level's preview of the layers ``keys`` of ``scan`` (the worker's job when a scan,
    prediction or annotation is stored, so that no viewer waits for one); returns their names."""
    names = []
    for key in keys:
        layer = resolve_layer(scan, key)
        for level in LEVELS:
            names.append(preview_file(scan, layer, level))
    return names


def parse_region(scan: Scan, text: str) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """``"x,y,z"`` (a point in world mm, RAS+) -> a clamped full-resolution box of the scan's own
    voxel grid around it. The viewer sends mm because its preview voxels are not the scan's."""
    message = "the region centre must be a point in mm such as 12.5,-3.0,40.2"
    try:
        point_mm = [float(v) for v in text.split(",")]
    except ValueError:
        raise RegionRefusedError(message) from None
    if len(point_mm) != 3 or not all(np.isfinite(point_mm)):
        raise RegionRefusedError(message)
    voxel = np.linalg.inv(np.asarray(scan.affine, dtype=float)) @ np.array([*point_mm, 1.0])
    shape = tuple(int(s) for s in scan.shape[:3])
    centre = tuple(round(float(v)) for v in voxel[:3])
    return previews.clamp_region(shape, centre, max_voxels=preview_max_voxels())  # type: ignore[arg-type]


def region_file(scan: Scan, layer: Layer, start: tuple[int, int, int], stop: tuple[int, int, int]) -> str:
    """Storage name of the full-resolution box ``[start, stop)`` of the layer (cached)."""
    box = "_".join(f"{a}-{b}" for a, b in zip(start, stop, strict=True))
    name = f"previews/scan_{scan.pk}/{layer.stem}.region_{box}.nii.gz"

    def make_one(source: Path, target: Path, relabel: Callable[[np.ndarray], np.ndarray] | None) -> None:
        previews.crop_volume(
            source,
            target,
            start=start,
            stop=stop,
            is_label=layer.is_label,
            relabel=relabel,
            label_intent=layer.kind == "annotation",
        )

    return _store_layer(name, layer, make_one)


def full_file(scan: Scan, layer: Layer) -> str:
    """Storage name of the layer at full resolution (the stored file itself when no relabelling)."""
    if not full_allowed(scan):
        raise RegionRefusedError(
            f"this scan is {scan.size_bytes / 1024**2:.0f} MB, more than a browser can show whole; "
            "use 'Full resolution of this region' instead"
        )
    if layer.kind in ("ct", "uncertainty") or (layer.kind == "labels" and not layer.relabel):
        return layer.files[0].name or ""  # an empty name is refused as missing (404)
    shape = tuple(int(s) for s in scan.shape[:3])
    return region_file(scan, layer, (0, 0, 0), shape)  # type: ignore[arg-type]


def _layer_url(scan: Scan, key: str) -> str:
    return reverse("frontend:scan-layer", kwargs={"pk": scan.pk, "key": key})


def _provider(manifest: dict[str, Any]) -> str:
    """The execution provider(s) named in the run manifest (``models[].provider``), if any."""
    found = [
        str(m.get("provider"))
        for m in manifest.get("models", [])
        if isinstance(m, dict) and m.get("provider")
    ]
    return ", ".join(dict.fromkeys(found)) or str(manifest.get("provider", ""))


def _model_info(prediction: Prediction) -> dict[str, Any]:
    job = prediction.job
    manifest = prediction.manifest or {}
    seconds = None
    if job.started_at and job.finished_at:
        seconds = round((job.finished_at - job.started_at).total_seconds(), 2)
    elif job.stage_seconds:
        seconds = round(sum(float(v) for v in job.stage_seconds.values()), 2)
    return {
        "label": prediction.model_version.label,
        "task": prediction.model_version.get_task_display(),
        "seconds": seconds,
        "provider": _provider(manifest),
        "created": prediction.created_at.isoformat(),
    }


def viewer_layers(scan: Scan, predictions: list[Prediction] | None = None) -> list[dict[str, Any]]:
    """The layers the viewer offers for ``scan``: key, kind, title and preview URL."""
    if predictions is None:
        predictions = results.latest_predictions(scan)
    layer_rows: list[dict[str, Any]] = [{"key": "ct", "kind": "ct", "title": "CT"}]
    for prediction in predictions:
        layer_rows.append(
            {
                "key": f"pred-{prediction.pk}",
                "kind": "labels",
                "title": f"{prediction.model_version.get_task_display()} · {prediction.model_version.label}",
            }
        )
    for prediction in predictions:
        layer_rows.append(
            {
                "key": f"unc-{prediction.pk}",
                "kind": "uncertainty",
                "title": f"Uncertainty · {prediction.model_version.get_task_display()}",
            }
        )
    annotations = _annotations(scan)
    for annotation in annotations:
        layer_rows.append(
            {
                "key": f"ann-{annotation.pk}",
                "kind": "annotation",
                "title": f"Annotator {annotation.annotator_name}",
            }
        )
    if len(consensus_annotations(scan)) >= 2:
        layer_rows.append(
            {
                "key": "consensus",
                "kind": "consensus",
                "title": CONSENSUS_TITLE,
                "description": CONSENSUS_DESCRIPTION,
            }
        )
    for row in layer_rows:
        row["url"] = _layer_url(scan, row["key"])
    return layer_rows


def viewer_config(scan: Scan, predictions: list[Prediction]) -> dict[str, Any]:
    """Everything the viewer's ES module needs, as JSON-ready data."""
    layer_rows = viewer_layers(scan, predictions)
    downloads = []
    for prediction in predictions:
        task = prediction.model_version.get_task_display()
        for prefix, what in (("pred", "labels"), ("unc", "uncertainty")):
            url = _layer_url(scan, f"{prefix}-{prediction.pk}") + "?download=1"
            downloads.append({"title": f"{task} {what} (NIfTI)", "url": url})
        slicer = reverse("review-api:prediction-seg-nrrd", args=[prediction.pk])
        downloads.append({"title": f"{task} labels (3D Slicer .seg.nrrd)", "url": slicer})
    if predictions:
        itksnap = reverse("review-api:itksnap-labels")
        downloads.append({"title": "Label names and colours (ITK-SNAP)", "url": itksnap})
    return {
        "scanId": scan.pk,
        "shape": list(scan.shape)[:3],
        "spacingMm": list(scan.spacing_mm)[:3],
        "factor": scan_factor(scan),
        # Loaded in this order, each replacing the last once drawn; then full resolution when
        # autoFull (else on request, or by region).
        "levels": [{"level": level, "factor": level_factor(scan, level)} for level in LEVELS],
        "autoFull": auto_full(scan),
        "fullAllowed": full_allowed(scan),
        "sizeBytes": scan.size_bytes,
        "layers": layer_rows,
        "structures": as_json(),
        "windows": WINDOWS,
        "defaultWindow": default_window(scan),
        "volumes": results.scan_volumes(predictions),
        "lesions": results.scan_lesions(predictions),
        "metastasisCounts": results.metastasis_counts(predictions),
        "metastasesFoundFromMm": results.metastases_found_from_mm(predictions),
        "models": [_model_info(p) for p in predictions],
        "downloads": downloads,
        "volumeSources": results.volume_sources(predictions),
        "corrections": correction_config(scan, predictions),
    }


def correction_config(scan: Scan, predictions: list[Prediction]) -> list[dict[str, Any]]:
    """What the viewer's drawing tools need per prediction: the labels it may draw (the model's
    structures), the layer to start from (the newest correction, else the prediction) at full
    resolution, and where to save (``review.corrections``)."""
    newest = corrections(predictions)
    rows = []
    for prediction in predictions:
        found = newest.get(prediction.pk)
        start = f"ann-{found.annotation_id}" if found else f"pred-{prediction.pk}"
        rows.append(
            {
                "predictionId": prediction.pk,
                "task": prediction.model_version.get_task_display(),
                "model": prediction.model_version.label,
                "structureIds": sorted(int(s) for s in prediction.model_version.structures if int(s) != 0),
                "startUrl": _layer_url(scan, start) + "?level=full",
                "version": found.version if found else 0,
                "source": source_label(prediction, found),
                "saveUrl": reverse("review-api:corrections", args=[prediction.pk]),
            }
        )
    return rows
