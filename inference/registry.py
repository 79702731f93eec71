"""The model registry on disk: every trained model is a self-describing folder.

``inference/models/<name>/<version>/`` holds ``model.onnx`` and ``model.json`` (their fields are
described in ``inference/models/README.md``). This module reads and checks those folders; it is
pure Python (no Django, no numpy, no onnxruntime), so the command line, the worker, training and the
database sync all share it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from inference.structures import BY_ID, ORGAN_NAMES, by_id, by_name

DEFAULT_MODELS_DIR = Path(__file__).resolve().parent / "models"
TASKS = ("organs", "tumor")
ACTIVATIONS = ("softmax", "sigmoid")
NORMALISATIONS = ("window", "zscore")

_REQUIRED = (
    "name",
    "version",
    "task",
    "structures",
    "activation",
    "input_spacing_mm",
    "normalisation",
    "layout",
    "input_name",
    "output_names",
    "sha256",
)


class ModelCardError(ValueError):
    """A model folder is missing, malformed, or its weights do not match the recorded sha256."""


@dataclass(frozen=True)
class SizePass:
    """``layout.size_pass``: the drawn volume of ``structures`` (mm^3, on the network's grid) of
    the largest mice the network learned, ``reference_mm3``. A mouse drawn larger is read once
    more, shrunk by the cube root of the ratio (not below ``min_scale``), and that pass's logits
    weigh ``weight`` in the answer (``infer.run_model``). Where the first reading draws one of
    ``kept`` (thin structures such as bone, which a shrunk grid cannot hold), its answer stands."""

    reference_mm3: float
    structures: frozenset[int]
    weight: float = 0.5
    min_scale: float = 0.8
    kept: frozenset[int] = frozenset()


@dataclass(frozen=True)
class ModelCard:
    """One model version as described by its ``model.json``; ``folder`` is where it lives."""

    name: str
    version: str
    task: str
    structures: tuple[int, ...]
    activation: str
    input_spacing_mm: tuple[float, float, float]
    normalisation: dict[str, Any]
    layout: dict[str, Any]
    input_name: str
    output_names: dict[str, str | None]
    sha256: str
    folder: Path
    opset: int | None = None
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    default: bool = False
    #: Optional post-processing tuned on validation scans (``model.json`` ``"postprocess"``):
    #: ``uncertainty_threshold`` (head probability shown as 50 %), ``refine`` and ``detect`` rules.
    postprocess: dict[str, Any] = field(default_factory=dict)

    @property
    def metastasis_organs(self) -> tuple[str, ...]:
        """Organs in which this model looks for metastases: ``postprocess.metastases_assessed_in``
        when the card names them (measured per organ on validation), else the host organs of its
        metastasis ``detect`` rules, else every organ (the network's own output, everywhere);
        none for a model without a metastasis output."""
        metastasis = by_name("metastasis").id
        if metastasis not in self.structures:
            return ()
        named = self.postprocess.get("metastases_assessed_in")
        if named is not None:
            return tuple(str(name) for name in named)
        hosts = {
            int(host)
            for rule in self.postprocess.get("detect", [])
            if int(rule.get("structure", -1)) == metastasis
            for host in rule.get("hosts", [])
        }
        if not hosts:
            return tuple(ORGAN_NAMES)
        return tuple(by_id(host).name for host in sorted(hosts))

    @property
    def metastases_found_from_mm(self) -> dict[str, float]:
        """Host organ -> the smallest metastasis (diameter, mm) its ``detect`` rule was measured to
        find on held-out scans (the rule's ``found_from_mm``): smaller ones are not found, so the
        organ's 0 means "none this size or larger". Organs without the figure are left out."""
        metastasis = by_name("metastasis").id
        return {
            by_id(int(host)).name: float(rule["found_from_mm"])
            for rule in self.postprocess.get("detect", [])
            if int(rule.get("structure", -1)) == metastasis and rule.get("found_from_mm") is not None
            for host in rule.get("hosts", [])
        }

    @property
    def uncertainty_threshold(self) -> float:
        """Disagreement-head probability calibrated to mean "uncertain" (shown as 50 %)."""
        return float(self.postprocess.get("uncertainty_threshold", 0.5))

    @property
    def uncertainty_outlines(self) -> list[tuple[list[float], dict[int, float]]]:
        """``(smoothing_mm, {structure id: level})`` groups of the outline bands marked uncertain
        (``pipeline.postprocess.outline_band``), empty without bands: one group for the card's
        ``smoothing_mm`` and one per smoothing that ``smoothing_by_structure`` gives a structure
        of its own (bones drawn slice by slice with a threshold tool part differently from organs
        drawn on every fifth slice and interpolated)."""
        outline = self.postprocess.get("uncertainty_outline")
        if not outline:
            return []
        default = tuple(float(v) for v in outline["smoothing_mm"])
        own = {
            int(k): tuple(float(v) for v in s) for k, s in outline.get("smoothing_by_structure", {}).items()
        }
        groups: dict[tuple[float, ...], dict[int, float]] = {}
        for key, level in outline["levels"].items():
            groups.setdefault(own.get(int(key), default), {})[int(key)] = float(level)
        return [(list(smoothing), levels) for smoothing, levels in groups.items()]

    @property
    def score_offsets(self) -> list[float]:
        """Per output channel, the calibrated shift of its class score (``postprocess.score_offsets``,
        keyed by structure id): a prior that corrects a structure drawn systematically too small
        or too large. 0 for channels without one."""
        offsets = {int(k): float(v) for k, v in self.postprocess.get("score_offsets", {}).items()}
        return [offsets.get(int(sid), 0.0) for sid in self.structures]

    @property
    def refinements(self) -> list[dict[str, Any]]:
        """Full-resolution rules, in order: ``{"structure", "min_hu", "margin_mm"[, "connected"]}``
        (a bright structure), ``{"structure", "enclosed_by", "max_hu", "margin_mm"}`` (a canal),
        ``{"structure", "edge_hu", "margin_mm"}`` (an outline onto its edge with fat),
        ``{"structure", "contrast_edge", "margin_mm"}`` (an outline onto the edge between its own
        level and its neighbours'), ``{"structure", "interface_with", "min_contrast_hu",
        "margin_mm"}`` (the outline it shares with each organ listed onto the edge between their
        levels), ``{"structure", "air_edge", "margin_mm"}`` (a lung's outline onto the edge its
        air draws) or
        ``{"structure", "network", "sha256", "margin_mm", ...}`` (an outline refiner network,
        ``pipeline.refiner``). Any rule but a network or an air edge may say ``"unless_refined": true``: it
        stands in for its structure's refiner network (an earlier rule) on scans whose voxels are
        too far from that network's to be resampled to them, and stands down where the network ran."""
        return list(self.postprocess.get("refine", []))

    @property
    def detections(self) -> list[dict[str, Any]]:
        """Lesion rules: ``{"structure": id, "hosts": [ids], "min_hu", "erode_mm", "min_volume_mm3"}``."""
        return list(self.postprocess.get("detect", []))

    @property
    def onnx_path(self) -> Path:
        return self.folder / "model.onnx"

    @property
    def key(self) -> str:
        """``name@version``: how logs, manifests and the command line name a model."""
        return f"{self.name}@{self.version}"

    @property
    def logits_name(self) -> str:
        return str(self.output_names["logits"])

    @property
    def disagreement_name(self) -> str | None:
        name = self.output_names.get("disagreement")
        return str(name) if name else None

    @property
    def divisible_by(self) -> int:
        return int(self.layout.get("divisible_by", 1))

    @property
    def cut_face_extension_mm(self) -> float:
        """How far the scan is continued past a cranial or caudal end that cuts through the
        body (``layout.extend_cut_faces_mm``; 0: not at all), by repeating the end slice, so that
        the network sees a limb or neck cut by the field of view run on instead of ending in a
        stump (``infer.cut_faces``)."""
        return float(self.layout.get("extend_cut_faces_mm", 0.0))

    @property
    def shifted_passes(self) -> tuple[tuple[int, int, int], ...]:
        """Voxel shifts of the extra passes whose logits are averaged with the plain one
        (``layout.shifted_passes``; none: one pass). A network that pools by 2 three times reads
        a scan differently at each of the 8 phases of its grid, most at the odd ones; the mean
        over phases is steadier on anatomy it never saw (``infer.run_model``)."""
        return tuple((int(s[0]), int(s[1]), int(s[2])) for s in self.layout.get("shifted_passes", []))

    @property
    def shifted_passes_over(self) -> frozenset[int]:
        """Structure ids round which the shifted passes run (``layout.shifted_passes_over``, with a
        margin: ``infer.SHIFTED_MARGIN_VOXELS``); empty: over the whole scan."""
        return frozenset(int(s) for s in self.layout.get("shifted_passes_over", []))

    @property
    def size_pass(self) -> SizePass | None:
        """A pass over the scan shrunk towards the size of the mice the network learned, for a
        mouse drawn larger than them (``layout.size_pass``; None: none); ``infer.run_model``."""
        raw = self.layout.get("size_pass")
        if not raw:
            return None
        return SizePass(
            reference_mm3=float(raw["reference_mm3"]),
            structures=frozenset(int(s) for s in raw["structures"]),
            weight=float(raw.get("weight", 0.5)),
            min_scale=float(raw.get("min_scale", 0.8)),
            kept=frozenset(int(s) for s in raw.get("kept", [])),
        )

    @property
    def patch_size(self) -> tuple[int, int, int] | None:
        patch = self.layout.get("patch_size")
        return (int(patch[0]), int(patch[1]), int(patch[2])) if patch else None

    @property
    def overlap(self) -> float:
        return float(self.layout.get("overlap", 0.25))

    def as_json(self) -> dict[str, Any]:
        """The card as written in ``model.json`` plus its folder (for manifests and the database)."""
        return {
            "name": self.name,
            "version": self.version,
            "task": self.task,
            "structures": list(self.structures),
            "activation": self.activation,
            "input_spacing_mm": list(self.input_spacing_mm),
            "normalisation": self.normalisation,
            "layout": self.layout,
            "input_name": self.input_name,
            "output_names": self.output_names,
            "opset": self.opset,
            "sha256": self.sha256,
            "training": self.training,
            "metrics": self.metrics,
            "default": self.default,
            "postprocess": self.postprocess,
            "folder": str(self.folder),
        }


# sha256 of model.onnx keyed by (path, size, mtime): a worker checks each file once, not per scan.
_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _SHA_CACHE:
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        _SHA_CACHE[key] = digest.hexdigest()
    return _SHA_CACHE[key]


def _problem(folder: Path, message: str) -> ModelCardError:
    return ModelCardError(f"model folder {folder}: {message}")


#: Extra shifted passes a card may ask for, and how far each may shift (voxels on its grid).
MAX_SHIFTED_PASSES = 7
#: The most a size pass may shrink a scan (``layout.size_pass.min_scale``): half its size.
MIN_SIZE_SCALE = 0.5
MAX_SHIFT_VOXELS = 15


def _is_shift(shift: Any) -> bool:
    return (
        isinstance(shift, list)
        and len(shift) == 3
        and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= MAX_SHIFT_VOXELS for v in shift)
        and any(shift)
    )


def _check_layout(folder: Path, raw: dict[str, Any]) -> None:
    structures = raw["structures"]
    if not isinstance(structures, list) or len(structures) < 2:
        raise _problem(folder, "'structures' must list one structure id per output channel (at least 2)")
    if structures[0] != 0:
        raise _problem(folder, "output channel 0 must be structure 0 (background)")
    unknown = [s for s in structures if s not in BY_ID]
    if unknown:
        raise _problem(folder, f"unknown structure ids {unknown}; see inference/structures.py")
    if len(set(structures)) != len(structures):
        raise _problem(folder, "a structure id appears twice in 'structures'")
    if raw["task"] not in TASKS:
        raise _problem(folder, f"task {raw['task']!r} is not one of {', '.join(TASKS)}")
    if raw["activation"] not in ACTIVATIONS:
        raise _problem(folder, f"activation {raw['activation']!r} is not one of {', '.join(ACTIVATIONS)}")
    spacing = raw["input_spacing_mm"]
    if not (isinstance(spacing, list) and len(spacing) == 3 and all(float(s) > 0 for s in spacing)):
        raise _problem(folder, "'input_spacing_mm' must be three positive voxel sizes in mm")
    kind = raw["normalisation"].get("kind")
    if kind not in NORMALISATIONS:
        raise _problem(folder, f"normalisation kind {kind!r} is not one of {', '.join(NORMALISATIONS)}")
    if kind == "window" and not float(raw["normalisation"]["high_hu"]) > float(
        raw["normalisation"]["low_hu"]
    ):
        raise _problem(folder, "window normalisation needs high_hu > low_hu")
    if raw["layout"].get("kind", "3d") != "3d":
        raise _problem(folder, f"layout kind {raw['layout'].get('kind')!r} is not supported (only '3d')")
    extension = raw["layout"].get("extend_cut_faces_mm", 0.0)
    if isinstance(extension, bool) or not (isinstance(extension, int | float) and 0.0 <= extension <= 20.0):
        raise _problem(folder, "layout 'extend_cut_faces_mm' must be a length in mm from 0 to 20")
    shifts = raw["layout"].get("shifted_passes", [])
    if (
        not isinstance(shifts, list)
        or len(shifts) > MAX_SHIFTED_PASSES
        or not all(_is_shift(s) for s in shifts)
    ):
        raise _problem(
            folder,
            f"layout 'shifted_passes' must list at most {MAX_SHIFTED_PASSES} shifts of three whole voxels "
            f"from 0 to {MAX_SHIFT_VOXELS}, none all 0",
        )
    over = raw["layout"].get("shifted_passes_over", [])
    if not isinstance(over, list) or any(isinstance(s, bool) or s not in structures[1:] for s in over):
        raise _problem(folder, "layout 'shifted_passes_over' must list output structure ids (not 0)")
    _check_size_pass(folder, raw["layout"].get("size_pass"), structures)
    if not raw["output_names"].get("logits"):
        raise _problem(folder, "'output_names' must name the logits output")
    _check_postprocess(folder, raw.get("postprocess") or {}, structures)


def _is_number(value: Any, low: float, high: float) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and low <= value <= high


def _check_size_pass(folder: Path, raw: Any, structures: list[int]) -> None:
    if raw is None:
        return
    if not isinstance(raw, dict) or set(raw) - {"reference_mm3", "structures", "weight", "min_scale", "kept"}:
        raise _problem(
            folder,
            "layout 'size_pass' must be an object of reference_mm3, structures, weight, min_scale and kept",
        )
    if not _is_number(raw.get("reference_mm3"), 1.0, 1e6):
        raise _problem(folder, "layout 'size_pass' needs reference_mm3, a volume in mm^3 from 1 to 1,000,000")
    named = raw.get("structures")
    if (
        not isinstance(named, list)
        or not named
        or any(isinstance(s, bool) or s not in structures[1:] for s in named)
    ):
        raise _problem(folder, "layout 'size_pass' structures must list output structure ids (not 0)")
    kept = raw.get("kept", [])
    if not isinstance(kept, list) or any(isinstance(s, bool) or s not in structures[1:] for s in kept):
        raise _problem(folder, "layout 'size_pass' kept must list output structure ids (not 0)")
    if not _is_number(raw.get("weight", 0.5), 0.0, 1.0) or raw.get("weight", 0.5) == 0:
        raise _problem(folder, "layout 'size_pass' weight must lie above 0 and at most 1")
    if not _is_number(raw.get("min_scale", 0.8), MIN_SIZE_SCALE, 1.0) or raw.get("min_scale", 0.8) == 1:
        raise _problem(folder, f"layout 'size_pass' min_scale must lie from {MIN_SIZE_SCALE} to below 1")


def _check_postprocess(folder: Path, post: dict[str, Any], structures: list[int]) -> None:
    threshold = float(post.get("uncertainty_threshold", 0.5))
    if not 0.0 < threshold < 1.0:
        raise _problem(folder, "postprocess 'uncertainty_threshold' must lie strictly between 0 and 1")
    for sid, offset in post.get("score_offsets", {}).items():
        if int(sid) not in structures[1:]:
            raise _problem(folder, f"postprocess score_offsets names {sid}, not an output structure")
        if not math.isfinite(float(offset)):
            raise _problem(folder, "postprocess score_offsets must be finite numbers")
    outline = post.get("uncertainty_outline")
    if outline:
        own = outline.get("smoothing_by_structure", {})
        for smoothing in [outline["smoothing_mm"], *own.values()]:
            if len(smoothing) != 3 or any(float(s) < 0 for s in smoothing):
                raise _problem(folder, "postprocess uncertainty_outline smoothings need three values >= 0")
        for sid in own:
            if int(sid) not in structures[1:]:
                raise _problem(
                    folder,
                    f"postprocess uncertainty_outline smoothing_by_structure names {sid}, not an output",
                )
        for sid, level in outline["levels"].items():
            if int(sid) not in structures[1:]:
                raise _problem(
                    folder, f"postprocess uncertainty_outline names {sid}, not an output structure"
                )
            if not 0 < float(level) <= 0.5:
                raise _problem(folder, "postprocess uncertainty_outline levels must lie in (0, 0.5]")
    networks: set[int] = set()
    for rule in post.get("refine", []):
        if int(rule["structure"]) not in structures[1:]:
            raise _problem(folder, f"postprocess refine names structure {rule['structure']}, not an output")
        if "unless_refined" in rule and (
            not isinstance(rule["unless_refined"], bool)
            or "network" in rule
            or "air_edge" in rule
            or int(rule["structure"]) not in networks
        ):
            raise _problem(
                folder,
                "postprocess refine 'unless_refined' (true or false) stands in for a refiner network: "
                f"structure {rule['structure']} needs its network rule before it, and neither a network "
                "nor an air-edge rule (applied after the lesion search) can stand in",
            )
        if "network" in rule:
            networks.add(int(rule["structure"]))
        if float(rule["margin_mm"]) < 0:
            raise _problem(folder, "postprocess refine 'margin_mm' must be >= 0")
        if "enclosed_by" in rule:
            wall = int(rule["enclosed_by"])
            if wall not in structures[1:] or wall == int(rule["structure"]):
                raise _problem(folder, f"postprocess refine 'enclosed_by' names {wall}, not another output")
            float(rule["max_hu"])
        elif "edge_hu" in rule:
            float(rule["edge_hu"])
        elif "interface_with" in rule:
            _check_interface(folder, rule, structures)
        elif "contrast_edge" in rule:
            if not float(rule["contrast_edge"]) >= 0:
                raise _problem(folder, "postprocess refine 'contrast_edge' is a contrast in HU: 0 or more")
        elif "air_edge" in rule:
            if not 0.0 < float(rule["air_edge"]) < 1.0:
                raise _problem(
                    folder, "postprocess refine 'air_edge' is a place between two levels: between 0 and 1"
                )
        elif "network" in rule:
            _check_refiner(folder, rule)
        else:
            float(rule["min_hu"])
    for rule in post.get("detect", []):
        if int(rule["structure"]) not in structures[1:]:
            raise _problem(folder, f"postprocess detect names structure {rule['structure']}, not an output")
        unknown = [h for h in rule["hosts"] if int(h) not in BY_ID or int(h) == 0]
        if unknown or not rule["hosts"]:
            raise _problem(
                folder, f"postprocess detect needs host organ ids from the structure table, got {unknown}"
            )
        lengths = ("erode_mm", "min_volume_mm3", "reach_mm", "wall_mm", "found_from_mm")
        if any(float(rule.get(key) or 0.0) < 0 for key in lengths):
            raise _problem(folder, f"postprocess detect {', '.join(repr(k) for k in lengths)} must be >= 0")
        if "min_dim_shell" in rule and not 0.0 <= float(rule["min_dim_shell"]) <= 1.0:
            raise _problem(folder, "postprocess detect 'min_dim_shell' is a share: between 0 and 1")
        if rule.get("smooth_to_hu") is not None and not float(rule["smooth_to_hu"]) > 0:
            raise _problem(folder, "postprocess detect 'smooth_to_hu' is a noise in HU: above 0, or null")
        if float(rule.get("peak_snr", 0.0)) < 0:
            raise _problem(folder, "postprocess detect 'peak_snr' counts noise deviations: 0 or more")
        float(rule["min_hu"])


def _check_interface(folder: Path, rule: dict[str, Any], structures: list[int]) -> None:
    """A ``refine`` rule that moves the outlines a structure shares with others onto the edge
    between their levels (``postprocess.refine_interface``)."""
    others = rule["interface_with"]
    sid = int(rule["structure"])
    if (
        not isinstance(others, list)
        or not others
        or any(isinstance(o, bool) or not isinstance(o, int) for o in others)
        or any(o not in structures[1:] or o == sid for o in others)
    ):
        raise _problem(
            folder,
            f"postprocess refine 'interface_with' must list other output structures' ids, got {others!r}",
        )
    if not float(rule["min_contrast_hu"]) >= 0:
        raise _problem(folder, "postprocess refine 'min_contrast_hu' is a contrast in HU: 0 or more")


def _check_refiner(folder: Path, rule: dict[str, Any]) -> None:
    """A ``refine`` rule that names an outline refiner network (``pipeline.refiner``)."""
    name = str(rule["network"])
    if Path(name).name != name or not name.endswith(".onnx"):
        raise _problem(
            folder, f"postprocess refine 'network' must be an .onnx file in the model folder, got {name!r}"
        )
    if not (folder / name).is_file():
        raise _problem(
            folder, f"postprocess refine names the refiner {name}, which is not in the model folder"
        )
    if not re.fullmatch(r"[0-9a-f]{64}", str(rule["sha256"])):
        raise _problem(folder, f"postprocess refine {name} needs the sha256 of its weights")
    if not (float(rule["spacing_mm"]) > 0 and float(rule["scale_hu"]) > 0 and float(rule["clip"]) > 0):
        raise _problem(folder, f"postprocess refine {name}: spacing_mm, scale_hu and clip must be > 0")
    if int(rule["context_voxels"]) < 0:
        raise _problem(folder, f"postprocess refine {name}: context_voxels must be >= 0")


def _verify_refiners(folder: Path, post: dict[str, Any]) -> None:
    for rule in post.get("refine", []):
        if "network" in rule:
            actual = file_sha256(folder / str(rule["network"]))
            if actual != rule["sha256"]:
                raise _problem(
                    folder,
                    f"{rule['network']} has sha256 {actual} but model.json records {rule['sha256']}; "
                    "the refiner was changed or the card is stale",
                )


#: Parsed ``model.json`` contents by folder and digest of the file's bytes. A worker reads every
#: card of the registry for each scan (``default_model``), and parsing them took 20 ms a scan; the
#: bytes are still read and the card checked each time, so an edited card or a missing file is
#: seen. Cards share what is cached (``ModelCard`` is frozen; nothing writes into its dicts).
_PARSED: dict[tuple[str, str], Any] = {}


def _checked_card(folder: Path, text: bytes) -> dict[str, Any]:
    """``model.json``'s ``text`` parsed and checked (``_REQUIRED``, ``_check_layout``)."""
    content = (str(folder), hashlib.sha256(text).hexdigest())
    if content not in _PARSED:
        try:
            _PARSED[content] = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise _problem(folder, f"model.json is not valid JSON ({error})") from None
    raw = _PARSED[content]
    if not isinstance(raw, dict):
        raise _problem(folder, "model.json is not a JSON object")
    missing = [key for key in _REQUIRED if key not in raw]
    if missing:
        raise _problem(folder, f"model.json lacks {', '.join(missing)}")
    try:
        _check_layout(folder, raw)
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        if isinstance(error, ModelCardError):
            raise
        raise _problem(folder, f"model.json is malformed ({error!r})") from None
    return raw


def load_card(folder: Path, *, verify_sha256: bool = True) -> ModelCard:
    """Read and check ``folder/model.json``; with ``verify_sha256`` the weights must match it."""
    folder = Path(folder).resolve()
    card_path = folder / "model.json"
    if not card_path.is_file():
        raise _problem(folder, "no model.json")
    raw = _checked_card(folder, card_path.read_bytes())
    onnx_path = folder / "model.onnx"
    if onnx_path.is_symlink() and not onnx_path.exists():
        # inference/training/share_weights.py: committed versions link to shared weights.
        raise _problem(
            folder,
            f"model.onnx links to {os.readlink(onnx_path)}, which is missing; "
            "restore it from git, or remake the weights",
        )
    if not onnx_path.is_file():
        raise _problem(folder, "no model.onnx")
    if verify_sha256:
        actual = file_sha256(onnx_path)
        if actual != raw["sha256"]:
            raise _problem(
                folder,
                f"model.onnx has sha256 {actual} but model.json records {raw['sha256']}; "
                "the weights were changed or the card is stale",
            )
        _verify_refiners(folder, raw.get("postprocess") or {})
    return ModelCard(
        name=str(raw["name"]),
        version=str(raw["version"]),
        task=str(raw["task"]),
        structures=tuple(int(s) for s in raw["structures"]),
        activation=str(raw["activation"]),
        input_spacing_mm=(
            float(raw["input_spacing_mm"][0]),
            float(raw["input_spacing_mm"][1]),
            float(raw["input_spacing_mm"][2]),
        ),
        normalisation=dict(raw["normalisation"]),
        layout=dict(raw["layout"]),
        input_name=str(raw["input_name"]),
        output_names=dict(raw["output_names"]),
        sha256=str(raw["sha256"]),
        folder=folder,
        opset=int(raw["opset"]) if raw.get("opset") is not None else None,
        training=dict(raw.get("training") or {}),
        metrics=dict(raw.get("metrics") or {}),
        default=bool(raw.get("default", False)),
        postprocess=dict(raw.get("postprocess") or {}),
    )


def _version_key(version: str) -> tuple[tuple[int, str], ...]:
    """Natural order for versions: 1.10.0 after 1.9.2; numeric parts before text parts."""
    return tuple((int(part), "") if part.isdigit() else (-1, part) for part in re.split(r"[.\-_+]", version))


def discover_models(root: Path = DEFAULT_MODELS_DIR) -> list[ModelCard]:
    """Every ``<root>/<name>/<version>/model.json``, checked, sorted by task, name and version."""
    root = Path(root)
    if not root.is_dir():
        return []
    cards = [load_card(path.parent) for path in sorted(root.glob("*/*/model.json"))]
    return sorted(cards, key=lambda c: (c.task, c.name, _version_key(c.version)))


def default_model(task: str, root: Path = DEFAULT_MODELS_DIR) -> ModelCard:
    """The model a task uses unless told otherwise.

    A card with ``"default": true`` wins (the newest such version); otherwise the newest version of
    any model for the task.
    """
    if task not in TASKS:
        raise ModelCardError(f"unknown task {task!r}; tasks are {', '.join(TASKS)}")
    cards = [card for card in discover_models(root) if card.task == task]
    if not cards:
        raise ModelCardError(
            f"no model for the {task} task in {root}; add a model folder or pass one explicitly"
        )
    flagged = [card for card in cards if card.default] or cards
    return max(flagged, key=lambda c: (_version_key(c.version), c.name))


def find_model(name: str, version: str | None = None, root: Path = DEFAULT_MODELS_DIR) -> ModelCard:
    """A model by name (and version; the newest when omitted)."""
    cards = [c for c in discover_models(root) if c.name == name and (version is None or c.version == version)]
    if not cards:
        wanted = f"{name}@{version}" if version else name
        raise ModelCardError(f"no model {wanted} in {root}")
    return max(cards, key=lambda c: _version_key(c.version))
