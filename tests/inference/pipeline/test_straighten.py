"""An oblique mouse (pipeline/straighten.py): its tilt and its roll are read from the anatomy, the
scan is straightened for the models and every map is put back on the scan's grid."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from inference.metrics import dice
from inference.phantom import Phantom, generate_phantom
from inference.phantom import digimouse as atlas
from inference.pipeline import predict_volume
from inference.pipeline.manifest import orientation_entry
from inference.pipeline.straighten import MIN_ROLL_DEG, MIN_TILT_DEG, find_tilt
from inference.registry import ModelCard
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
