"""``predict_volume``: one scan array in, label and uncertainty maps on the scan's own grid out.

Stages, each timed: preprocess (reorient to canonical, resample to the model's spacing, normalise),
inference (ONNX Runtime), postprocess (class scores, ensemble mean, component rules, uncertainty),
restore (upsample to the canonical scan grid, undo the reorientation). Models of the same task are an
ensemble (mean of their probabilities); the organ map is drawn first and lesions (tumor task) on top.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import partial

import numpy as np

from inference.pipeline.animals import find_animals
from inference.pipeline.blur import NODULES_MAX_MM, VOXEL_SPREAD, blur_finding, blur_mm, is_blurred
from inference.pipeline.bone_level import BoneLevel, bone_level_finding, read_bone_level
from inference.pipeline.braincase import BRAIN, BraincaseFill, fill_braincase
from inference.pipeline.drift import drift_finding, drifts, measure_drift
from inference.pipeline.geometry import (
    Geometry,
    channel_argmax,
    fortran_copy,
    from_canonical,
    record_geometry,
    resample_linear,
    resampled_shape,
    to_canonical,
    turned,
    upsample_argmax,
    upsample_to_uint8,
)
from inference.pipeline.infer import DEFAULT_MAX_WHOLE_VOXELS, content_box, cut_faces, run_model
from inference.pipeline.intensity import IntensityCalibration, fill_unreadable, intensity_for
from inference.pipeline.nodules import MIN_DIM_SHELL, detect_bright_lesions
from inference.pipeline.noise import for_threshold_rules, noise_hu, threshold_rules_finding
from inference.pipeline.normalise import normalise, pad_value
from inference.pipeline.orientation import ORIENT_CHOICES, OrientationFinding, find_orientation
from inference.pipeline.parallel import beside, workers_for
from inference.pipeline.postprocess import (
    BONES,
    DEFAULT_MIN_LESION_VOLUME_MM3,
    CleanReport,
    apply_outline_rule,
    apply_refinement,
    calibrate_uncertainty,
    clean,
    ensemble_scores,
    label_mask,
    mark_outlines,
    outline_band,
    sigmoid,
    uncertainty_from,
    voxels_across,
    voxels_along,
    voxels_within,
)
from inference.pipeline.qc import organ_centres
from inference.pipeline.refiner import (
    RefinerDecision,
    RefinerRun,
    apply_decision,
    decide_refiner,
    refiner_run,
)
from inference.pipeline.runtime import get_session, session_provider
from inference.pipeline.straighten import find_tilt
from inference.pipeline.volumes import labels_present
from inference.registry import TASKS, ModelCard
from inference.structures import BY_ID

Progress = Callable[[int, str], None]

#: Air kept in view around the animals when the networks run (``infer.content_box``): they see
#: the same input whatever the scanner's field of view (the model card's "Field of view").
CROP_MARGIN_MM = 5.0


class StageTimer:
    """Seconds per named stage, summed over repeated entries."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - start


@dataclass
class PipelineOutput:
    """Results on the scan's grid (same shape and axis order as the input ``volume``).

    ``labels``: uint8 structure ids (organs, with tumor/metastasis drawn over them);
    ``uncertainty``: uint8, 0 certain .. 255 maximally uncertain; ``organ_labels`` /
    ``lesion_labels``: each task's own map (None when that task did not run).
    """

    labels: np.ndarray
    uncertainty: np.ndarray
    organ_labels: np.ndarray | None
    lesion_labels: np.ndarray | None
    geometry: Geometry
    seconds: dict[str, float]
    providers: dict[str, str]
    cards: list[ModelCard]
    structure_ids: list[int]
    cleaning: dict[str, CleanReport] = field(default_factory=dict)
    #: With ``keep_scores``: each task's class scores on its model grid (canonical axes, turned
    #: and straightened as ``orientation`` says), after the card's ``score_offsets`` and before
    #: the component rules (for calibration).
    scores: dict[str, np.ndarray] = field(default_factory=dict)
    #: How the scan's values were read as HU (confirmed, or calibrated from air and soft tissue).
    intensity: IntensityCalibration | None = None
    #: What the anatomy said about the mouse's pose and the turn applied before the models ran
    #: (None with ``orient="header"``); ``geometry`` stays the header's.
    orientation: OrientationFinding | None = None
    #: Animals found in the field of view (``animals.find_animals``; 0 when no tissue was).
    animals: int = 1
    #: The ids the organ map holds (None without one): where metastases were looked for.
    organ_ids: frozenset[int] | None = None
    #: Each organ's centre (mm) in the canonical pose, for the QC's layout check (qc.organ_centres).
    organ_centres: dict[str, tuple[float, float, float]] = field(default_factory=dict)
    #: The brain measured against its braincase, and grown into it where drawn short
    #: (braincase.py; None where no brain or no bone near it was drawn).
    braincase: BraincaseFill | None = None
    #: What each refiner network did: on the scan's voxels, on resampled ones, or skipped
    #: (``refiner.RefinerRun``), organs first.
    refiners: list[RefinerRun] = field(default_factory=list)
    #: Organs whose metastasis search did not run on this scan (too blurred: ``blur.py``).
    unsearched: tuple[str, ...] = ()
    #: By model key, the scale its size pass read the scan at (``infer.run_model``; 1.0: none ran).
    size_scales: dict[str, float] = field(default_factory=dict)
    #: By structure name, how alike the network's shifted passes drew it (``infer.pass_agreement``;
    #: only models whose card asks for shifted passes), for the QC's ``unstable`` check.
    pass_agreement: dict[str, float] = field(default_factory=dict)


def group_by_task(cards: Sequence[ModelCard]) -> dict[str, list[ModelCard]]:
    """Cards per task in pipeline order; members of one task must agree to form an ensemble."""
    if not cards:
        raise ValueError("no model given: pass at least one model card")
    groups: dict[str, list[ModelCard]] = {task: [] for task in TASKS}
    for card in cards:
        groups.setdefault(card.task, []).append(card)
    for task, members in groups.items():
        lead = members[0] if members else None
        for other in members[1:]:
            if (other.structures, other.input_spacing_mm, other.normalisation) != (
                lead.structures,  # type: ignore[union-attr]
                lead.input_spacing_mm,  # type: ignore[union-attr]
                lead.normalisation,  # type: ignore[union-attr]
            ):
                raise ValueError(
                    f"models {lead.key} and {other.key} of the {task} task cannot be ensembled: "  # type: ignore[union-attr]
                    "they differ in structures, spacing or normalisation"
                )
    return {task: members for task, members in groups.items() if members}


def _report(progress: Progress | None, percent: float, stage: str) -> None:
    if progress is not None:
        progress(round(percent), stage)


#: What a head-only field of view can show (``OrientationFinding.head_only``); anything else the
#: organ model draws there (the middle ear's air taken for lung, the neck's muscle for heart) is
#: out of view by the anatomy's own measure, so it is taken out and reported as not in view.
IN_A_HEAD = frozenset({"bones", "brain", "spinal_cord"})


def drop_out_of_view(organs: np.ndarray, structures: Sequence[int]) -> list[int]:
    """Clear the organ map's trunk organs in place (a head-only scan); returns their ids."""
    outside = [
        int(sid)
        for sid in structures
        if sid and BY_ID[int(sid)].kind != "lesion" and BY_ID[int(sid)].name not in IN_A_HEAD
    ]
    organs[label_mask(organs, outside)] = 0
    return outside


def detect_lesions(
    task_labels: dict[str, np.ndarray],
    groups: dict[str, list[ModelCard]],
    canonical: np.ndarray,
    spacing_mm: Sequence[float],
    noise_hu: float = 0.0,
    blur: float | None = None,
) -> tuple[str, ...]:
    """Apply the lesion model's ``detect`` rules (bright nodules inside organs) to its label map.

    Needs the organ map of the same call for the host organs; without one the rules are skipped.
    ``noise_hu``: the noise of ``canonical`` (``noise.noise_hu``), for the rules' ``smooth_to_hu``
    and ``peak_snr``. On a scan blurred past ``blur.NODULES_MAX_MM`` (``blur``, mm), or whose
    thickest voxel side spreads that far (0.87 mm slices), no rule runs;
    returns the host organs (names) left unsearched so, which the run reports "not assessed".
    """
    organs = task_labels.get("organs")
    lesions = task_labels.get("tumor")
    if organs is None or lesions is None:
        return ()
    rules = groups["tumor"][0].detections
    # A slice's own thickness spreads a nodule across it as blur does (its box's spread): at 1.12 mm
    # slices the atlas torso got 5 "metastases" at the lungs' cranial and caudal rims.
    thickest = VOXEL_SPREAD * max(float(s) for s in spacing_mm)
    if is_blurred(max(blur or 0.0, thickest), NODULES_MAX_MM):
        return tuple(sorted({BY_ID[int(h)].name for rule in rules for h in rule["hosts"]}))
    for rule in rules:
        found = detect_bright_lesions(
            organs,
            canonical,
            hosts=[int(h) for h in rule["hosts"]],
            min_hu=float(rule["min_hu"]),
            erode_voxels=voxels_along(float(rule["erode_mm"]), spacing_mm),
            min_voxels=voxels_within(float(rule["min_volume_mm3"]), spacing_mm),
            reach_voxels=voxels_along(float(rule.get("reach_mm", 0.0)), spacing_mm),
            wall_voxels=voxels_along(float(rule.get("wall_mm", 0.0)), spacing_mm),
            min_dim_shell=float(rule.get("min_dim_shell", MIN_DIM_SHELL)),
            noise_hu=noise_hu,
            smooth_to_hu=None if rule.get("smooth_to_hu") is None else float(rule["smooth_to_hu"]),
            peak_snr=float(rule.get("peak_snr", 0.0)),
        )
        np.copyto(lesions, np.uint8(rule["structure"]), where=found & (lesions == 0))
    return ()


def spacing_on(geometry: Geometry, grid: Sequence[int]) -> list[float]:
    """Voxel size (mm, canonical axes) of the model grid ``grid`` over the scan's field of view."""
    return [s * n / g for s, n, g in zip(geometry.spacing_mm, geometry.canonical_shape, grid, strict=True)]


@dataclass
class _TaskOutput:
    """One task's share of ``predict_volume``: its label map on the canonical grid, its
    uncertainty on its model grid, and the seconds its stages took (in its own thread)."""

    labels: np.ndarray
    uncertainty: np.ndarray
    grid: tuple[int, int, int]
    providers: dict[str, str]
    cleaning: CleanReport
    scores: np.ndarray | None
    seconds: dict[str, float]
    #: The organ task's drift of the level with depth in the body (``drift.depth_drift_hu``).
    drift_hu: float | None = None
    #: What each of its refiner networks did (``refine``).
    refiners: list[RefinerRun] = field(default_factory=list)
    #: By model key, the scale of its size pass (1.0: none ran), for cards that have one.
    size_scales: dict[str, float] = field(default_factory=dict)
    #: By structure name, how alike the shifted passes drew it (the lowest over an ensemble).
    pass_agreement: dict[str, float] = field(default_factory=dict)


def _segment_task(
    task: str,
    members: Sequence[ModelCard],
    *,
    canonical: np.ndarray,
    rules_hu: np.ndarray,
    bone: BoneLevel | None,
    geometry: Geometry,
    resampled: Mapping[tuple[int, int, int], np.ndarray],
    animals: Mapping[tuple[int, int, int], tuple[np.ndarray, int]],
    device: str,
    threads: int,
    min_lesion_volume_mm3: float,
    max_whole_voxels: int,
    batch_size: int,
    keep_scores: bool,
) -> _TaskOutput:
    """Inference, component rules and restore for one task's ensemble ``members``. ``rules_hu`` is
    what the intensity threshold rules read (``noise.for_threshold_rules``); ``bone`` the scan's
    bone level (``bone_level.read_bone_level``), which sets the bone rule's threshold; ``animals``
    by model grid, ``animals.find_animals``'s label map and count."""
    timer = StageTimer()
    lead = members[0]
    providers: dict[str, str] = {}
    size_scales: dict[str, float] = {}
    agreement: dict[str, float] = {}
    with timer("preprocess"):
        grid = resampled_shape(geometry.canonical_shape, geometry.spacing_mm, lead.input_spacing_mm)
        image = normalise(resampled[grid], lead.normalisation)
        fill = pad_value(lead.normalisation, image)
        # The network sees the animals and what lies near them; the air beyond is background.
        box = content_box(
            resampled[grid],
            voxels_across(CROP_MARGIN_MM, spacing_on(geometry, grid)),
            lead.divisible_by,
        )
        extend = cut_faces(
            resampled[grid], box, round(lead.cut_face_extension_mm / spacing_on(geometry, grid)[2])
        )
    members_logits: list[np.ndarray] = []
    disagreement: np.ndarray | None = None
    for card in members:
        with timer("inference"):
            session = get_session(card, device=device, threads=threads)
            providers[card.key] = session_provider(session)
            raw = run_model(
                session,
                card,
                image,
                pad_value=fill,
                max_whole_voxels=max_whole_voxels,
                batch_size=batch_size,
                box=box,
                extend=extend,
                animals=animals[grid][1],
            )
        if card.size_pass is not None:
            size_scales[card.key] = raw.size_scale
        for sid, value in raw.pass_agreement.items():
            name = BY_ID[sid].name
            agreement[name] = min(value, agreement.get(name, value))
        members_logits.append(raw.logits)
        if raw.disagreement_logit is not None:
            odds = calibrate_uncertainty(sigmoid(raw.disagreement_logit), card.uncertainty_threshold)
            odds /= len(members)
            disagreement = odds if disagreement is None else disagreement + odds
    with timer("postprocess"):
        scores = ensemble_scores(members_logits, lead.activation)
        del members_logits
        for channel, offset in enumerate(lead.score_offsets):
            if offset:
                scores[channel] += np.float32(offset)
        kept = scores.copy() if keep_scores else None
        grid_spacing = spacing_on(geometry, grid)
        cleaning = clean(
            scores,
            lead.structures,
            grid_spacing,
            min_lesion_volume_mm3=min_lesion_volume_mm3,
            animals=animals[grid][0],
        )
        uncertainty = uncertainty_from(scores, disagreement)
        # The model-grid labels the drift and the refinement rules read, taken once.
        coarse = channel_argmax(scores) if task == "organs" or lead.refinements else None
    drift, drift_across = None, None
    contrast = {int(rule["structure"]) for rule in lead.refinements if "contrast_edge" in rule}
    with timer("restore"), beside(threads, "labseg-drift") as side:
        # The drift is read on the model grid while the labels are put on the scan's (only the
        # refinement rules need it): one core, beside the slabs of the upsampling.
        measured = None
        if task == "organs" and coarse is not None:
            channels = {BY_ID[int(sid)].name: k for k, sid in enumerate(lead.structures)}
            names = [BY_ID[sid].name for sid in contrast]
            measured = side.submit(measure_drift, resampled[grid], coarse, channels, spans_of=names)
        labels = upsample_argmax(
            scores, geometry.canonical_shape, lead.structures, workers=workers_for(threads)
        )
        drift = None if measured is None else measured.result()
        if drift is not None and drifts(drift.hu):
            drift_across = {sid: drift.across(BY_ID[sid].name) for sid in contrast}
        refiners: list[RefinerRun] = []
        if lead.refinements and coarse is not None:
            refiners = refine(
                labels,
                coarse,
                canonical,
                rules_hu,
                lead,
                grid_spacing,
                geometry.spacing_mm,
                device,
                threads,
                drift_across=drift_across,
                bone=bone,
            )
    return _TaskOutput(
        labels=labels,
        uncertainty=uncertainty,
        grid=grid,
        providers=providers,
        cleaning=cleaning,
        scores=kept,
        seconds=timer.seconds,
        drift_hu=None if drift is None else drift.hu,
        refiners=refiners,
        size_scales=size_scales,
        pass_agreement=agreement,
    )


def merge_tasks(task_labels: Mapping[str, np.ndarray], shape: Sequence[int]) -> np.ndarray:
    """The written label map: the organ map (or background) with every other task's labels on top."""
    organs = task_labels.get("organs")
    merged = organs.copy() if organs is not None else np.zeros(tuple(shape), dtype=np.uint8)
    for task, labels in task_labels.items():
        if task != "organs":
            np.copyto(merged, labels, where=labels > 0)
    return merged


def _full_uncertainty(low_res: Sequence[np.ndarray], shape: Sequence[int]) -> np.ndarray:
    """The tasks' uncertainty maps on the scan's grid as uint8, the highest of them per voxel."""
    full = upsample_to_uint8(low_res[0], shape)
    for other in low_res[1:]:
        np.maximum(full, upsample_to_uint8(other, shape), out=full)
    return full


def refine(
    labels: np.ndarray,
    coarse: np.ndarray,
    canonical: np.ndarray,
    rules_hu: np.ndarray,
    card: ModelCard,
    grid_spacing_mm: Sequence[float],
    spacing_mm: Sequence[float],
    device: str,
    threads: int,
    *,
    drift_across: Mapping[int, float] | None = None,
    bone: BoneLevel | None = None,
) -> list[RefinerRun]:
    """Apply ``card``'s ``refine`` rules to the full-resolution ``labels``, in their order (in place);
    returns what each refiner network did (``refiner.RefinerRun``), in the rules' order.

    Every rule moves voxels only between its own structure and background, so a refiner network
    whose structure no earlier rule touches sees the same mask now as in its turn: its network
    runs beside the earlier rules (on the core they leave idle), and its decision is written in
    its turn, against the background the earlier rules left (on one thread, in the order given).
    Refiner networks read ``canonical``; the threshold rules ``rules_hu`` (``canonical`` itself, or
    its median-filtered copy when the scan is very noisy: ``noise.for_threshold_rules``). The
    air-edge rules are not applied here but after the lesion search (``settle_air_edges``).
    ``drift_across``: by structure id, how many HU the scan's level drifts across it (a scan whose
    level drifts with depth: ``drift.py``); a contrast-edge rule stands down for a structure whose
    contrast with its neighbours is no larger. ``coarse``: the model grid's labels, as channel
    indices (``channel_argmax`` of the scores). ``bone``: the scan's bone level, whose
    ``threshold`` a ``min_hu`` rule uses where it is below the card's. A rule marked
    ``unless_refined`` is skipped for a structure whose refiner network ran (it stands in where
    the scan's voxels are too far from the network's to be resampled to them:
    ``refiner.RESAMPLE_LIMIT``).
    """
    touched: set[int] = set()
    refined: set[int] = set()
    runs: list[RefinerRun] = []
    # Air-edge rules wait for the lesion search (``settle_air_edges``).
    rules = [rule for rule in card.refinements if "air_edge" not in rule]
    thresholds = {
        int(rule["structure"]): bone.threshold(float(rule["min_hu"]))
        for rule in rules
        if "min_hu" in rule and bone is not None
    }
    with beside(threads, "refiner") as ahead:
        decisions: dict[int, Future[RefinerDecision | None]] = {}
        for index, rule in enumerate(rules):
            sid = int(rule["structure"])
            if "network" in rule and sid not in touched:
                own = labels == sid
                decisions[index] = ahead.submit(
                    decide_refiner, own, canonical, card, rule, spacing_mm, device, threads
                )
            touched.add(sid)
        for index, rule in enumerate(rules):
            sid = int(rule["structure"])
            if rule.get("unless_refined") and sid in refined:
                continue
            if "network" in rule:
                decision = (
                    decisions[index].result()
                    if index in decisions
                    else decide_refiner(labels == sid, canonical, card, rule, spacing_mm, device, threads)
                )
                runs.append(refiner_run(rule, spacing_mm, decision, apply_decision(labels, decision)))
                if decision is not None:
                    refined.add(sid)
            else:
                apply_refinement(
                    labels,
                    coarse,
                    rules_hu,
                    rule,
                    card.structures,
                    grid_spacing_mm,
                    spacing_mm,
                    drift_hu=(drift_across or {}).get(int(rule["structure"]), 0.0),
                    thresholds_hu=thresholds,
                )
    return runs


def settle_air_edges(
    organs: np.ndarray,
    rules_hu: np.ndarray,
    card: ModelCard,
    spacing_mm: Sequence[float],
    *,
    blur: float | None = None,
) -> None:
    """Apply ``card``'s air-edge rules (the lungs' outlines onto the edge their air draws) to the
    final organ map, in place, in their order. On a scan blurred past ``blur.SHARP_MM`` (``blur``,
    mm, as ``blur.blur_mm`` read it) they grow the lungs into their air and trim nothing.

    They run after the lesion search: a nodule against the chest wall is no lung, and put where
    the air ends the lung's outline leaves it outside; but the nodule rule looks for nodules in
    the lungs as the network drew them, nodules included (``detect_lesions``), and was tuned so.
    """
    trim = not is_blurred(blur)
    for rule in card.refinements:
        if "air_edge" in rule:
            apply_outline_rule(organs, rules_hu, rule, spacing_mm, trim_air=trim)


def predict_volume(
    volume: np.ndarray,
    affine: np.ndarray,
    cards: Sequence[ModelCard],
    *,
    device: str = "auto",
    threads: int = 0,
    progress: Progress | None = None,
    min_lesion_volume_mm3: float = DEFAULT_MIN_LESION_VOLUME_MM3,
    max_whole_voxels: int = DEFAULT_MAX_WHOLE_VOXELS,
    batch_size: int = 2,
    keep_scores: bool = False,
    intensity: str = "auto",
    orient: str = "anatomy",
) -> PipelineOutput:
    """Segment ``volume`` (3D, the file's axis order, in its own units, e.g. HU) with ``cards``.

    ``affine`` is the voxel-to-world matrix (mm). ``progress(percent, stage)`` is called as stages
    finish (0-100 over this call). ``intensity``: "auto" checks that the values are HU and maps
    them to HU from the scan's air and soft-tissue peaks when they are not (raising
    ``IntensityCalibrationError`` when no credible map exists); "hu" takes them as HU unchecked.
    ``orient``: "anatomy" turns the scan so the mouse lies as the models expect when its anatomy
    says so confidently (``pipeline/orientation.py``; undone exactly on the outputs); "header"
    trusts the header's orientation alone.
    """
    if orient not in ORIENT_CHOICES:
        raise ValueError(f"orient must be one of {', '.join(ORIENT_CHOICES)}, not {orient!r}")
    if np.ndim(volume) != 3:
        raise ValueError(f"expected a 3D volume, got shape {np.shape(volume)}")
    groups = group_by_task(cards)
    timer = StageTimer()
    geometry = header_geometry = record_geometry(volume.shape, affine)
    with timer("preprocess"):
        # Every later stage (normalisation windows, lesion and refiner rules) reads HU.
        volume, unreadable = fill_unreadable(np.asarray(volume))
        calibration = intensity_for(volume, intensity)
        if unreadable:
            calibration = replace(calibration, findings=(*calibration.findings, unreadable))
        canonical = to_canonical(calibration.apply(volume), geometry)
    orientation: OrientationFinding | None = None
    if orient == "anatomy":
        with timer("preprocess"):  # its own seconds are in the finding
            orientation = find_orientation(canonical, geometry.spacing_mm)
        if not orientation.transform.is_identity:
            # One more lossless turn on top of the header's; from_canonical undoes both.
            geometry = turned(geometry, orientation.transform.array)
            canonical = orientation.transform.apply(canonical)
    # An oblique mouse is straightened (resampled) for the models and its maps put back after.
    scan_geometry, scan_canonical = geometry, canonical
    # The scan's blur is read on the scan as it came (a straightened copy is resampled, so a
    # little blurrier); only the rules after the models need it. It is read while the scan is
    # prepared, which keeps one core: beside the models, it took the core they run on.
    blur_reader = beside(threads, "labseg-blur")
    reading = blur_reader.submit(blur_mm, scan_canonical, scan_geometry.spacing_mm)
    blur_reader.shutdown(wait=False)
    straightening = None
    if orientation is not None and not orientation.head_only:
        with timer("preprocess"):
            straightening = find_tilt(canonical, geometry.spacing_mm)
            if straightening is not None:
                canonical = straightening.apply(canonical)
                geometry = replace(geometry, canonical_shape=straightening.shape)
                orientation = replace(
                    orientation,
                    findings=[*orientation.findings, straightening.finding],
                    straightening=straightening,
                )
    resampled: dict[tuple[int, int, int], np.ndarray] = {}
    with timer("preprocess"):
        rules_hu, noise, width = for_threshold_rules(canonical)
        if width:
            calibration = replace(
                calibration, findings=(*calibration.findings, threshold_rules_finding(noise, width))
            )
        # The noise of the image the rules read (the median's, if taken).
        rules_noise = noise_hu(rules_hu) if width else noise
        # Bone dimmer than the models learned: they and the rules read it stretched to that level.
        # Read where a model that draws bone runs (whose skeleton is what the level stands for);
        # ``intensity="hu"`` takes the values as they are, bone included.
        draws_bone = any(BONES in card.structures for members in groups.values() for card in members)
        bone = read_bone_level(rules_hu, rules_noise) if draws_bone and calibration.mode != "hu" else None
        if bone is not None:
            stretched = bone_level_finding(bone)
            calibration = replace(
                calibration,
                bone_level_hu=bone.level_hu,
                bone_peak_hu=bone.peak_hu,
                bone_stretched_to_hu=bone.stretched_to_hu,
                findings=(*calibration.findings, stretched) if stretched else calibration.findings,
            )
            if bone.stretched_to_hu is not None:
                stretched_scan = bone.apply(canonical)
                rules_hu = bone.apply(rules_hu) if width else stretched_scan
                canonical = stretched_scan
        for members in groups.values():
            grid = resampled_shape(geometry.canonical_shape, geometry.spacing_mm, members[0].input_spacing_mm)
            if grid not in resampled:
                resampled[grid] = resample_linear(canonical, grid, antialias=True)
        animals = {grid: find_animals(hu, spacing_on(geometry, grid)) for grid, hu in resampled.items()}
    run = partial(
        _segment_task,
        canonical=canonical,
        rules_hu=rules_hu,
        bone=bone,
        geometry=geometry,
        resampled=resampled,
        animals=animals,
        device=device,
        threads=threads,
        min_lesion_volume_mm3=min_lesion_volume_mm3,
        max_whole_voxels=max_whole_voxels,
        batch_size=batch_size,
        keep_scores=keep_scores,
    )
    keys = ", ".join(card.key for members in groups.values() for card in members)
    _report(progress, 5, f"inference {keys}")
    outputs: dict[str, _TaskOutput] = {}
    if len(groups) > 1 and threads != 1:
        # The tasks are independent until their maps are merged. Side by side, one task's
        # single-threaded numpy and scipy work (restore, rules) fills the core that the other's
        # ONNX Runtime session leaves idle; with ``threads=1`` they stay one after the other.
        with ThreadPoolExecutor(max_workers=len(groups), thread_name_prefix="labseg-task") as pool:
            futures = {pool.submit(run, task, members): task for task, members in groups.items()}
            for done, future in enumerate(as_completed(futures), start=1):
                outputs[futures[future]] = future.result()
                _report(progress, 5 + 90 * done / len(groups), f"restore {futures[future]}")
    else:
        for done, (task, members) in enumerate(groups.items(), start=1):
            outputs[task] = run(task, members)
            _report(progress, 5 + 90 * done / len(groups), f"restore {task}")
    blur = reading.result()
    blurred = blur_finding(blur)
    calibration = replace(
        calibration,
        blur_mm=blur,
        findings=(*calibration.findings, blurred) if blurred else calibration.findings,
    )
    task_labels = {task: outputs[task].labels for task in groups}  # pipeline order: organs first
    providers = {key: name for out in outputs.values() for key, name in out.providers.items()}
    cleaning = {task: out.cleaning for task, out in outputs.items()}
    drift = outputs["organs"].drift_hu if "organs" in outputs else None
    if drift is not None:
        calibration = replace(
            calibration,
            depth_drift_hu=drift,
            findings=(*calibration.findings, drift_finding(drift)) if drifts(drift) else calibration.findings,
        )
    kept = {task: out.scores for task, out in outputs.items() if out.scores is not None}
    uncertainty_by_grid: dict[tuple[int, int, int], np.ndarray] = {}
    for out in outputs.values():
        for stage, seconds in out.seconds.items():
            timer.seconds[stage] = timer.seconds.get(stage, 0.0) + seconds
        previous = uncertainty_by_grid.get(out.grid)
        uncertainty_by_grid[out.grid] = (
            out.uncertainty if previous is None else np.maximum(previous, out.uncertainty)
        )
    with beside(threads, "labseg-side") as side:
        organs = task_labels.get("organs")
        with timer("postprocess"):
            if orientation is not None and orientation.head_only and organs is not None:
                drop_out_of_view(organs, groups["organs"][0].structures)
            # The braincase fill turns background into brain only, and the lesion search reads its
            # host organs and bone only (``nodules.nodule_candidates``): unless the brain hosts lesions,
            # neither sees what the other changes, so they run side by side.
            filling = (
                side.submit(fill_braincase, organs, rules_hu, geometry.spacing_mm)
                if organs is not None
                else None
            )
            hosts = {
                int(h) for card in groups.get("tumor", []) for rule in card.detections for h in rule["hosts"]
            }
            if filling is not None and BRAIN in hosts:
                filling.result()  # the search reads the brain: it waits for the fill
            # The uncertainty map needs no labels: it is upsampled while the lesions are looked for.
            upsampled = side.submit(
                _full_uncertainty, list(uncertainty_by_grid.values()), geometry.canonical_shape
            )
            unsearched = detect_lesions(task_labels, groups, rules_hu, geometry.spacing_mm, rules_noise, blur)
            braincase = filling.result() if filling is not None else None
            if organs is not None and straightening is None:
                settle_air_edges(organs, rules_hu, groups["organs"][0], geometry.spacing_mm, blur=blur)
            # The organ map is final here (lesions go into their own map; a straightened mouse's
            # lungs settle once back on the scan's grid, below): its centres and ids are read
            # beside the rest.
            centres = side.submit(organ_centres, organs, geometry.spacing_mm) if organs is not None else None
            organ_ids = side.submit(labels_present, organs) if organs is not None else None
        _report(progress, 95, "restore uncertainty")
        with timer("restore"):
            uncertainty_u8 = upsampled.result()
        with timer("restore"):
            merged = merge_tasks(task_labels, geometry.canonical_shape)
            outlines = [group for card in cards for group in card.uncertainty_outlines]
            if outlines:
                band = outline_band(merged, geometry.spacing_mm, outlines, workers=workers_for(threads))
                mark_outlines(uncertainty_u8, band)

            if straightening is not None:
                # Each task's map is put back once and the merged map made again from them.
                task_labels = {task: straightening.undo(labels) for task, labels in task_labels.items()}
                uncertainty_u8 = straightening.undo(uncertainty_u8, labels=False)
                geometry = scan_geometry
                if "organs" in task_labels:
                    # On the scan's own voxels: put back by a vote, a lung's outline is rounded.
                    scan_rules_hu = for_threshold_rules(scan_canonical)[0]
                    settle_air_edges(
                        task_labels["organs"],
                        scan_rules_hu,
                        groups["organs"][0],
                        geometry.spacing_mm,
                        blur=blur,
                    )
                merged = merge_tasks(task_labels, geometry.canonical_shape)
            organs, lesions = task_labels.get("organs"), task_labels.get("tumor")

            def back(array: np.ndarray | None) -> np.ndarray | None:
                return None if array is None else from_canonical(array, geometry)

            # The two maps that get written are copied to Fortran order, as NIfTI stores voxels
            # (writing a C-ordered map costs a slower transposed copy inside nibabel), side by
            # side; the per-task maps, used only for lesion allocation, stay views.
            labels_written = side.submit(fortran_copy, from_canonical(merged, geometry))
            uncertainty_written = fortran_copy(from_canonical(uncertainty_u8, geometry))
            result = PipelineOutput(
                labels=labels_written.result(),
                uncertainty=uncertainty_written,
                organ_labels=back(organs),
                lesion_labels=back(lesions),
                geometry=header_geometry,
                seconds=timer.seconds,
                providers=providers,
                cards=list(cards),
                structure_ids=sorted({s for card in cards for s in card.structures if s != 0}),
                cleaning=cleaning,
                scores=kept,
                intensity=calibration,
                orientation=orientation,
                animals=max(count for _, count in animals.values()),
                organ_ids=organ_ids.result() if organ_ids is not None else None,
                organ_centres=centres.result() if centres is not None else {},
                braincase=braincase,
                unsearched=unsearched,
                refiners=[run for task in groups for run in outputs[task].refiners],
                size_scales={
                    key: scale for out in outputs.values() for key, scale in out.size_scales.items()
                },
                pass_agreement={
                    name: value for out in outputs.values() for name, value in out.pass_agreement.items()
                },
            )
    _report(progress, 100, "done")
    return result
