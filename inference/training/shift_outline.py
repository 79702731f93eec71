"""``python -m inference.training.shift_outline --model DIR --structure NAME [...] --data VAL_DIR``.

Chooses one common shift of some organs' class scores (``postprocess.score_offsets``, added to
what the card already has) on the Dice of the whole pipeline. It writes the shift into the
folder's ``model.json``, in place, as ``calibrate`` does, so copy the folder to a new version
first. The trials go to ``postprocess.calibration.outline_shift``, under the structures' names.

Why it exists. A network trained on class-balanced crops can draw an organ too large wherever no
edge in the image stops it. ``offsets.py`` looks for such a bias on the coarse model grid, on
validation phantoms as generated. There every kidney is wrapped in a fat capsule and its edge rule
snaps the outline onto that fat, so a bias cannot show. It shows where the capsule does not:

- the real Digimouse anatomy rendered as CT, where a kidney meets soft tissue 5 HU brighter than
  itself with no fat between them;
- a phantom 60 HU brighter or three times as noisy, where the fat edge is faint.

So this tool scores each candidate shift on two sources, each weighing half:

- the validation phantoms (never the test ones) as generated, 60 HU brighter, and three times as
  noisy;
- the atlas rendered whole, as a torso, noisy, and as a smaller and a larger mouse
  (``ATLAS_RENDERS``).

The shift kept is the smallest within ``TOLERANCE`` of the best mean Dice. The atlas is a source
the networks trained on, so its gains are not held-out evidence. The held-out test phantoms and
their variants, in ``robustness.py``, are.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from inference.registry import ModelCard, ModelCardError, load_card
from inference.structures import BY_NAME
from inference.training.calibrate import write_postprocess
from inference.training.data import find_cases
from inference.training.robustness import (
    DIGIMOUSE_VARIANTS,
    Case,
    digimouse_case,
    more_noise,
    offset_hu,
    read_phantom,
    score_case,
)

log = logging.getLogger(__name__)

#: Shifts tried (added to a softmax logit: -1 divides the structure's odds by e).
CANDIDATES = (-2.0, -1.5, -1.0, -0.6, -0.3, 0.0, 0.3, 0.6, 1.0)
#: Mean Dice that a larger shift must gain over a smaller one to be preferred.
TOLERANCE = 0.002
#: The atlas renders scored (``robustness.digimouse_case``).
ATLAS_RENDERS = (
    "digimouse",
    "digimouse_torso",
    "digimouse_torso_noisy",
    "digimouse_torso_small",
    "digimouse_torso_large",
)
#: How many validation phantoms are used, each three ways.
DEFAULT_PHANTOMS = 4


def tuning_cases(data: Path, *, phantoms: int, atlas: Sequence[str] = ATLAS_RENDERS) -> dict[str, list[Case]]:
    """The scans a shift is chosen on, by source: validation phantoms (as generated, +60 HU, three
    times the noise) and, unless ``atlas`` is empty, the atlas renders it names."""
    folders = find_cases(data)[:phantoms]
    if not folders:
        raise ValueError(f"no phantoms in {data}: write the validation set first (make_models)")
    drawn: list[Case] = []
    for folder in folders:
        base = read_phantom(folder)
        seed = int(base.meta.get("seed", 0))
        drawn += [
            base,
            replace(offset_hu(base, 60.0), name=f"{base.name}+60HU"),
            replace(more_noise(base, 3.0, seed), name=f"{base.name}x3noise"),
        ]
    spacing = float(drawn[0].spacing_mm[0])
    sources = {"phantoms": drawn}
    if atlas:
        sources["atlas"] = [replace(digimouse_case(v, spacing), name=v) for v in atlas]
    return sources


def shifted(card: ModelCard, structure_ids: Sequence[int], shift: float) -> ModelCard:
    """``card`` with ``shift`` added to the score offsets of ``structure_ids``."""
    post = dict(card.postprocess)
    offsets = {str(k): float(v) for k, v in post.get("score_offsets", {}).items()}
    for sid in structure_ids:
        value = offsets.get(str(sid), 0.0) + shift
        if value:
            offsets[str(sid)] = round(value, 4)
        else:
            offsets.pop(str(sid), None)
    post["score_offsets"] = offsets
    return replace(card, postprocess=post)


def source_dice(
    card: ModelCard, cases: Sequence[Case], names: Sequence[str], threads: int
) -> dict[str, float]:
    """Per structure in ``names``, the mean Dice over the ``cases`` that hold it."""
    found: dict[str, list[float]] = {name: [] for name in names}
    for case in cases:
        dice = score_case(case, [card], threads=threads)["dice"]
        for name in names:
            if name in dice:
                found[name].append(float(dice[name]))
    return {name: round(statistics.fmean(v), 4) for name, v in found.items() if v}


def choose_shift(
    card: ModelCard,
    names: Sequence[str],
    sources: Mapping[str, Sequence[Case]],
    *,
    candidates: Sequence[float] = CANDIDATES,
    threads: int = 2,
) -> tuple[float, dict[str, Any]]:
    """``(shift, report)``: the smallest shift of ``names``' scores within ``TOLERANCE`` of the best
    mean Dice (the mean over sources, of each source's mean over structures). Raises
    ``ValueError`` when no case's truth holds any of ``names``."""
    ids = [BY_NAME[name].id for name in names]
    trials: dict[str, dict[str, Any]] = {}
    means: dict[float, float] = {}
    for shift in sorted(candidates, key=abs):
        trial = shifted(card, ids, shift)
        by_source = {src: source_dice(trial, cases, names, threads) for src, cases in sources.items()}
        # A source whose truth holds none of the structures (the atlas has no gut) has no say.
        scored = [statistics.fmean(d.values()) for d in by_source.values() if d]
        if not scored:
            raise ValueError(f"no scan holds {', '.join(names)} in its truth: nothing to choose a shift on")
        means[shift] = statistics.fmean(scored)
        trials[f"{shift:g}"] = {"mean_dice": round(means[shift], 4), **by_source}
        log.info("shift %+.2f: mean Dice %.4f %s", shift, means[shift], by_source)
    best = max(means.values())
    chosen = min((s for s, m in means.items() if m >= best - TOLERANCE), key=abs)
    report = {
        "structures": list(names),
        "chosen": chosen,
        "tolerance": TOLERANCE,
        "cases": {src: [c.name for c in cases] for src, cases in sources.items()},
        "trials": trials,
    }
    return chosen, report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m inference.training.shift_outline", description=__doc__)
    parser.add_argument("--model", type=Path, required=True, help="organ model folder, tuned in place")
    parser.add_argument(
        "--structure", action="append", required=True, help="structure name (repeat; one common shift)"
    )
    parser.add_argument("--data", type=Path, required=True, help="validation phantoms (flat layout)")
    parser.add_argument("--phantoms", type=int, default=DEFAULT_PHANTOMS, help="validation phantoms used")
    parser.add_argument(
        "--atlas",
        default=",".join(ATLAS_RENDERS),
        help="comma-separated atlas renders (robustness variants); empty: phantoms only",
    )
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.phantoms < 1:
        parser.error(f"--phantoms must be 1 or more, not {args.phantoms}")
    try:
        card = load_card(args.model)
    except ModelCardError as error:
        parser.error(str(error))
    names = list(dict.fromkeys(args.structure))  # a name given twice is shifted once
    unknown = [n for n in names if n not in BY_NAME or BY_NAME[n].id not in card.structures]
    if unknown:
        parser.error(f"{card.name}/{card.version} draws no structure named {', '.join(unknown)}")
    renders = [v.strip() for v in args.atlas.split(",") if v.strip()]
    wrong = [v for v in renders if v not in DIGIMOUSE_VARIANTS]
    if wrong:
        known = ", ".join(DIGIMOUSE_VARIANTS)
        parser.error(f"--atlas takes Digimouse renders ({known}), not {', '.join(wrong)}")
    try:
        sources = tuning_cases(args.data, phantoms=args.phantoms, atlas=renders)
        shift, report = choose_shift(card, names, sources, threads=args.threads)
    except ValueError as error:
        parser.error(str(error))
    post = dict(shifted(card, [BY_NAME[n].id for n in names], shift).postprocess)
    calibration = dict(post.get("calibration", {}))
    # One entry per set of structures shifted together, so a later run keeps an earlier one's trials.
    calibration["outline_shift"] = {**calibration.get("outline_shift", {}), ",".join(names): report}
    post["calibration"] = calibration
    write_postprocess(args.model, post)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
