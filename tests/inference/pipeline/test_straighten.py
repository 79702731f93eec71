"""An oblique mouse (pipeline/straighten.py): its tilt and its roll are read from the anatomy, the
scan is straightened for the models and every map is put back on the scan's grid."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pytest
from scipy import ndimage

from inference.metrics import dice
from inference.phantom import Phantom, generate_phantom
from inference.phantom import digimouse as atlas
from inference.pipeline import predict_volume
from inference.pipeline.manifest import orientation_entry
from inference.pipeline.straighten import MIN_ROLL_DEG, MIN_TILT_DEG, Straightening, find_tilt
from inference.registry import ModelCard
from inference.training import robustness
from tests.conftest import SHARED
from tests.inference.pipeline.conftest import voxelwise_model

SPACING_MM = 0.42
AFFINE = np.diag([SPACING_MM, SPACING_MM, SPACING_MM, 1.0])


@pytest.fixture(scope="module")
def real_mouse() -> Phantom:
    """CT of the real Digimouse anatomy, whole body, at 0.42 mm."""
    return atlas.render_ct(atlas.load(SHARED / "realdata" / "digimouse"), seed=0, spacing_mm=SPACING_MM)


def tilted(volume: np.ndarray, degrees: float, axes: tuple[int, int], fill: float) -> np.ndarray:
    order = 0 if volume.dtype == np.uint8 else 1
    out = ndimage.rotate(volume.astype(np.float32), degrees, axes=axes, reshape=True, order=order, cval=fill)
    return np.rint(out).astype(volume.dtype)


@pytest.mark.parametrize("degrees", [10, 20, 30])
@pytest.mark.parametrize("axes", [(1, 2), (0, 2)], ids=["head raised", "diagonal on the bed"])
def test_the_tilt_of_a_real_mouse_is_read_from_its_body(
    real_mouse: Phantom, degrees: int, axes: tuple[int, int]
) -> None:
    ct = tilted(real_mouse.ct, degrees, axes, -1000)
    whole = find_tilt(ct, (SPACING_MM,) * 3)
    # A torso cut by the scanner's axial field of view: its faces are oblique to the body.
    labels = tilted(real_mouse.labels, degrees, axes, 0)
    z0, z1 = atlas.torso_range(labels, SPACING_MM)
    torso = find_tilt(ct[:, :, z0:z1], (SPACING_MM,) * 3)

    assert whole is not None and abs(whole.tilt_deg - degrees) < 3.5
    assert torso is not None and abs(torso.tilt_deg - degrees) < 3.5


@pytest.mark.parametrize("degrees", [0, 4])
def test_a_mouse_along_the_scan_is_left_as_it_is(real_mouse: Phantom, degrees: int) -> None:
    ct = tilted(real_mouse.ct, degrees, (0, 2), -1000) if degrees else real_mouse.ct
    assert degrees < MIN_TILT_DEG
    assert find_tilt(ct, (SPACING_MM,) * 3) is None
    assert find_tilt(generate_phantom(9000, spacing_mm=0.84, n_annotators=0).ct, (0.84,) * 3) is None


@pytest.fixture(scope="module")
def upright_phantom() -> Phantom:
    return generate_phantom(9000, spacing_mm=SPACING_MM, n_annotators=0)


@pytest.mark.parametrize("degrees", [20, -25, 35])
def test_a_mouse_rolled_onto_its_side_is_read_off_its_spine_and_turned_back(
    upright_phantom: Phantom, degrees: int
) -> None:
    # Turned about the scan's z axis (its long axis): positive turns put the spine towards +x,
    # the mouse onto its right side.
    ct = tilted(upright_phantom.ct, degrees, (0, 1), -1000)
    turn = find_tilt(ct, (SPACING_MM,) * 3)

    assert turn is not None and abs(turn.roll_deg - degrees) < 4.0
    assert turn.tilt_deg < MIN_TILT_DEG
    assert ("right" if degrees > 0 else "left") + " side" in turn.finding
    # Turned back, the same reading finds it upright.
    assert find_tilt(turn.apply(ct), (SPACING_MM,) * 3) is None


@pytest.mark.parametrize("bright", [False, True], ids=["plastic bed", "bed as dense as bone"])
@pytest.mark.parametrize("degrees", [0, 20, -25])
def test_the_roll_is_read_off_the_spine_with_a_bed_under_the_mouse(
    upright_phantom: Phantom, degrees: int, bright: bool
) -> None:
    # A rolled mouse on a level curved bed (the robustness report's bed, drawn after the roll).
    ct = tilted(upright_phantom.ct, degrees, (0, 1), -1000) if degrees else upright_phantom.ct
    labels = np.zeros(ct.shape, np.uint8)
    case = robustness.add_bed(robustness.Case("bed", ct, labels, AFFINE), seed=9000)
    bed = case.ct != ct
    assert case.meta["bed_added"] and np.count_nonzero(bed) > 1000
    scan = case.ct.astype(np.float32)
    if bright:
        # Bone-bright along the mouse's whole length, as the spine is: outside the trunk, not read.
        scan[bed & (scan > -200)] = 1200.0

    turn = find_tilt(scan, (SPACING_MM,) * 3)

    if degrees:
        assert turn is not None and abs(turn.roll_deg - degrees) < 4.0
    else:
        assert turn is None


def test_a_mouse_rolled_less_than_the_models_learned_is_left_as_it_lies(
    upright_phantom: Phantom, real_mouse: Phantom
) -> None:
    assert MIN_ROLL_DEG >= 10
    assert find_tilt(tilted(upright_phantom.ct, 8, (0, 1), -1000), (SPACING_MM,) * 3) is None
    # The atlas lies rolled a few degrees (the models learned it so): rolled 20 degrees further it
    # is read at more than 20 and turned back past its own pose, to the spine straight dorsal.
    turn = find_tilt(tilted(real_mouse.ct, 20, (0, 1), -1000), (SPACING_MM,) * 3)
    assert turn is not None and 20 < turn.roll_deg < 32


def test_a_straightened_map_goes_back_onto_the_scan_grid(real_mouse: Phantom) -> None:
    ct = tilted(real_mouse.ct, 20, (0, 2), -1000)
    turn = find_tilt(ct, (SPACING_MM,) * 3)
    assert turn is not None
    liver = tilted(real_mouse.labels, 20, (0, 2), 0) == 4

    straight = turn.apply(liver.astype(np.float32)) >= 0.5
    back = turn.undo(straight.astype(np.uint8)) > 0

    assert straight.shape == turn.shape and back.shape == ct.shape
    assert dice(back, liver) > 0.97
    # Straightened, the liver's own long axis lies nearer the scan's z axis than it did.
    assert abs(ndimage.center_of_mass(straight)[2] - turn.shape[2] / 2) < turn.shape[2] / 2


def rolled_about_centre(shape: tuple[int, int, int], spacing: float, degrees: float) -> Straightening:
    """A grid of ``shape`` turned by ``degrees`` about z through its centre, onto a grid as large."""
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    centre = (np.array(shape) - 1) * spacing / 2
    return Straightening(
        rotation=np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]),
        centre_mm=centre,
        origin_mm=-centre,
        shape=shape,
        source_shape=shape,
        spacing_mm=(spacing,) * 3,
        tilt_deg=0.0,
        roll_deg=-degrees,
    )


def cord_and_ball(points: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """Label 13 in a cylinder 1 mm across along z, 2 mm off ``centre``; label 4 in a ball beside it."""
    x, y, z = (points[..., a] - centre[a] for a in range(3))
    out = np.zeros(points.shape[:-1], np.uint8)
    out[(x - 2.0) ** 2 + y**2 <= 0.5**2] = 13
    out[(x + 1.5) ** 2 + (y - 1.0) ** 2 + z**2 <= 1.2**2] = 4
    return out


@pytest.mark.parametrize("degrees", [10, 20, 35])
def test_a_label_map_goes_back_by_a_vote_that_keeps_thin_structures(degrees: int) -> None:
    spacing, shape = 0.2, (60, 60, 30)
    turn = rolled_about_centre(shape, spacing, -degrees)
    grid = np.stack(np.meshgrid(*[np.arange(n) * spacing for n in shape], indexing="ij"), axis=-1)
    truth = cord_and_ball(grid, turn.centre_mm)
    # Each straightened voxel drawn from the same shapes at its own point: p = R^T (o + j s) + c.
    straight = cord_and_ball((grid + turn.origin_mm) @ turn.rotation + turn.centre_mm, turn.centre_mm)
    # What the nearest straightened voxel alone would give, for comparison.
    index = np.rint(((grid - turn.centre_mm) @ turn.rotation.T - turn.origin_mm) / spacing).astype(int)
    inside = np.all((index >= 0) & (index < np.array(shape)), axis=-1)
    clipped = np.clip(index, 0, np.array(shape) - 1)
    nearest = np.where(inside, straight[clipped[..., 0], clipped[..., 1], clipped[..., 2]], 0)

    back = turn.undo(straight)

    assert back.dtype == np.uint8 and set(np.unique(back)) <= {0, 4, 13}
    assert dice(back == 4, truth == 4) > max(0.955, dice(nearest == 4, truth == 4))
    assert dice(back == 13, truth == 13) >= max(0.84, dice(nearest == 13, truth == 13))
    # Away from any outline the vote is the nearest voxel's label.
    far = ndimage.minimum_filter(nearest, size=5) == ndimage.maximum_filter(nearest, size=5)
    assert np.array_equal(back[far], nearest[far])


def test_an_uncertainty_map_goes_back_linearly() -> None:
    turn = rolled_about_centre((40, 40, 10), 0.2, 30)
    ramp = np.broadcast_to(np.linspace(0, 240, 40, dtype=np.float32)[None, :, None], (40, 40, 10))
    back = turn.undo(np.rint(ramp).astype(np.uint8), labels=False)
    # The ramp rises along the straightened y axis: back on the scan grid it still rises evenly,
    # with no steps a nearest voxel would leave (at most one grey level off a plane fitted to it).
    core = back[10:30, 10:30, 5].astype(np.float64)
    along_x, along_y = np.mgrid[10:30, 10:30]
    design = np.stack([along_x.ravel(), along_y.ravel(), np.ones(along_x.size)], axis=1)
    fit, *_ = np.linalg.lstsq(design, core.ravel(), rcond=None)
    assert np.abs(design @ fit - core.ravel()).max() <= 1.0
    assert fit[0] != 0 and fit[1] != 0


@pytest.fixture(scope="module")
def voxelwise(tmp_path_factory: pytest.TempPathFactory) -> ModelCard:
    return voxelwise_model(tmp_path_factory.mktemp("straighten-model"), SPACING_MM)


def ball_in_the_liver(
    mouse: Phantom, degrees: float, axes: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, tuple[slice, ...]]:
    """The mouse turned, with a ball of 450 HU, 12 mm across, in its liver: (ct, ball, the box round
    it). A voxelwise threshold draws the ball as "liver" (and keeps it as the largest such part):
    run on the straightened scan and put back, it must lie where the scan's own voxels are."""
    ct = tilted(mouse.ct, degrees, axes, -1000)
    centre = np.argwhere(tilted(mouse.labels, degrees, axes, 0) == 4).mean(axis=0)
    grid = np.indices(ct.shape, dtype=np.float32)
    ball = sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True)) <= (6.0 / SPACING_MM) ** 2
    ct[ball] = 450
    return ct, ball, tuple(slice(int(c) - 20, int(c) + 21) for c in centre)


def test_the_pipeline_straightens_an_oblique_mouse_and_says_so(
    real_mouse: Phantom, voxelwise: ModelCard
) -> None:
    ct, ball, near = ball_in_the_liver(real_mouse, 20, (0, 2))

    out = predict_volume(ct, AFFINE, [voxelwise], threads=1)
    header = predict_volume(ct, AFFINE, [voxelwise], threads=1, orient="header")

    assert out.orientation is not None and out.orientation.straightening is not None
    assert abs(out.orientation.straightening.tilt_deg - 20) < 3.5
    assert out.labels.shape == ct.shape
    assert dice(out.labels[near] == 4, ball[near]) > 0.95
    assert dice(header.labels[near] == 4, ball[near]) > 0.95
    entry = orientation_entry(out.orientation, ("R", "A", "S"))
    assert entry["straightened"]["tilt_deg"] == pytest.approx(out.orientation.straightening.tilt_deg, abs=0.1)
    assert "degrees off the scan's" in " ".join(entry["findings"])
    assert "straightened for the models" in str(entry["summary"])
    assert header.orientation is None


def test_the_pipeline_turns_a_rolled_mouse_back_and_says_so(
    real_mouse: Phantom, voxelwise: ModelCard
) -> None:
    # The mouse rolled 25 degrees onto its right side.
    ct, ball, near = ball_in_the_liver(real_mouse, 25, (0, 1))

    out = predict_volume(ct, AFFINE, [voxelwise], threads=1)

    assert out.orientation is not None and out.orientation.straightening is not None
    assert out.orientation.straightening.roll_deg > MIN_ROLL_DEG
    assert out.labels.shape == ct.shape
    assert dice(out.labels[near] == 4, ball[near]) > 0.95
    entry = orientation_entry(out.orientation, ("R", "A", "S"))
    assert entry["straightened"]["roll_deg"] == pytest.approx(out.orientation.straightening.roll_deg, abs=0.1)
    assert "onto its right side (read off its spine)" in " ".join(entry["findings"])


def test_a_straightened_mouses_lungs_settle_on_the_scans_own_voxels(
    real_mouse: Phantom, voxelwise: ModelCard, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Put back by a vote, a lung's outline is rounded: the air-edge rules run once, on the organ
    # map back on the scan's grid, reading the scan's own (unstraightened) intensities.
    from inference.pipeline import predict as pipeline

    calls: list[tuple[tuple[int, ...], tuple[int, ...]]] = []
    settle = pipeline.settle_air_edges

    def record(
        organs: np.ndarray,
        rules_hu: np.ndarray,
        card: ModelCard,
        spacing_mm: Sequence[float],
        *,
        blur: float | None = None,
    ) -> None:
        calls.append((organs.shape, rules_hu.shape))
        settle(organs, rules_hu, card, spacing_mm, blur=blur)

    monkeypatch.setattr(pipeline, "settle_air_edges", record)
    ct, _, _ = ball_in_the_liver(real_mouse, 20, (0, 2))

    out = predict_volume(ct, AFFINE, [voxelwise], threads=1)
    straight = predict_volume(real_mouse.ct, AFFINE, [voxelwise], threads=1)

    assert out.orientation is not None and out.orientation.straightening is not None
    assert straight.orientation is not None and straight.orientation.straightening is None
    assert calls == [(ct.shape, ct.shape), (real_mouse.ct.shape, real_mouse.ct.shape)]
    assert out.orientation.straightening.shape != ct.shape  # the models ran on another grid
