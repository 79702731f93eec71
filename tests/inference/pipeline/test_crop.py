"""The networks see the animal and the air near it (infer.content_box): what they draw does not change."""

from __future__ import annotations

import numpy as np
import pytest

import inference.pipeline.predict as predict
from inference.phantom import generate_phantom
from inference.pipeline.infer import content_box
from inference.registry import default_model
from inference.structures import BY_NAME


def test_the_box_holds_every_dense_voxel_with_its_margin_on_the_networks_multiple() -> None:
    hu = np.full((64, 64, 100), -1000.0, dtype=np.float32)
    hu[10:20, 5:30, 40:50] = 40.0
    hu[30, 31, 45] = 900.0  # a bright speck apart from the block: kept in view too

    box = content_box(hu, margin=4, multiple=8)

    assert box is not None
    lengths = [s.stop - s.start for s in box]
    assert all(n % 8 == 0 for n in lengths)
    assert box[0].start <= 10 - 4 and box[0].stop >= 31 + 4
    assert box[1].start == 0 and box[1].stop >= 32 + 4  # the margin reaches the array's edge
    assert box[2].start <= 40 - 4 and box[2].stop >= 50 + 4
    assert all(0 <= s.start < s.stop <= n for s, n in zip(box, hu.shape, strict=True))


def test_no_box_for_air_alone_or_for_an_animal_filling_the_view() -> None:
    air = np.full((40, 40, 40), -1000.0, dtype=np.float32)
    filled = air.copy()
    filled[2:38, 2:38, 2:38] = 40.0

    assert content_box(air, margin=4) is None
    assert content_box(filled, margin=4) is None


def test_a_wider_field_of_view_gives_the_same_labels(monkeypatch: pytest.MonkeyPatch) -> None:
    # Without the box the networks' answer moves with the air around the mouse (heart Dice 0.992,
    # spleen 0.981 between these two fields of view); with it they see the same input either way.
    phantom = generate_phantom(9002, spacing_mm=0.42, n_annotators=0)
    cards = [default_model("organs"), default_model("tumor")]
    boxes: list[tuple[slice, ...] | None] = []

    def recorded(*args: object, **kwargs: object) -> tuple[slice, ...] | None:
        boxes.append(content_box(*args, **kwargs))  # type: ignore[arg-type]
        return boxes[-1]

    monkeypatch.setattr(predict, "content_box", recorded)
    labels = {}
    for pad in (30, 60):  # multiples of 3 voxels (1.26 mm): the model grid stays aligned
        widths = ((pad, pad), (pad, pad), (0, 0))
        ct = np.pad(phantom.ct, widths, constant_values=-1000)
        out = predict.predict_volume(ct, phantom.affine, cards, threads=2)
        labels[pad] = out.labels[pad:-pad, pad:-pad]
        assert not out.labels[:pad].any() and not out.labels[-pad:].any()

    assert len(boxes) == 4 and all(box is not None for box in boxes)
    assert np.array_equal(labels[30], labels[60])
    assert (labels[30] == BY_NAME["heart"].id).sum() > 1000
